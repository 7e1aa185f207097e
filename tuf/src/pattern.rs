//! Delegation path patterns.
//!
//! A pattern and a target path are split on `/`; they match when they have the same number of
//! segments and each pattern segment matches its target segment shell-style: `*` is any run of
//! characters, `?` one character, `[abc]` / `[a-z]` / `[!abc]` a class. So `*` never crosses `/`.

use sha2::{Digest, Sha256};

/// Whether the delegation `paths` / `path_hash_prefixes` admit `target` (the rule of the
/// client's delegation search; the publisher checks its delegated targets with it).
pub fn delegation_matches(
    paths: Option<&[String]>,
    path_hash_prefixes: Option<&[String]>,
    target: &str,
) -> bool {
    if let Some(paths) = paths {
        return paths.iter().any(|p| path_matches(p, target));
    }
    if let Some(prefixes) = path_hash_prefixes {
        let digest = hex::encode(Sha256::digest(target.as_bytes()));
        return prefixes
            .iter()
            .any(|p| digest.starts_with(&p.to_ascii_lowercase()));
    }
    false
}

/// Whether `pattern` matches `target` segment by segment.
pub(crate) fn path_matches(pattern: &str, target: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let tgt: Vec<&str> = target.split('/').collect();
    pat.len() == tgt.len()
        && pat.iter().zip(&tgt).all(|(p, t)| {
            let p: Vec<char> = p.chars().collect();
            let t: Vec<char> = t.chars().collect();
            segment_matches(&p, &t)
        })
}

/// Iterative glob with single-star backtracking (linear-ish, no recursion blow-up).
fn segment_matches(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class_matches(&p[pi..], t[ti]) {
                Some((true, consumed)) => Some(consumed),
                Some((false, _)) => None,
                // An unclosed '[' is a literal.
                None => (t[ti] == '[').then_some(1),
            },
            Some(&c) => (c == t[ti]).then_some(1),
            None => None,
        };
        if let Some(consumed) = step {
            pi += consumed;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// Matches a `[...]` class at the start of `p` against `c`: `Some((matched, pattern chars
/// consumed))`, or `None` when the class is not closed.
fn class_matches(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &ch = p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let end = p[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn star_does_not_cross_slash() {
        assert!(path_matches("*", "a.txt"));
        assert!(!path_matches("*", "dir/a.txt"));
        assert!(path_matches("dir/*", "dir/a.txt"));
        assert!(!path_matches("dir/*", "dir/sub/a.txt"));
        assert!(path_matches("*/*.tgz", "x/y.tgz"));
        assert!(!path_matches("*.tgz", "x/y.tgz"));
    }

    #[test]
    fn question_and_classes() {
        assert!(path_matches("file?.txt", "file1.txt"));
        assert!(!path_matches("file?.txt", "file12.txt"));
        assert!(path_matches("v[0-9].img", "v7.img"));
        assert!(!path_matches("v[!0-9].img", "v7.img"));
        assert!(path_matches("v[!0-9].img", "vx.img"));
        assert!(path_matches("a[b", "a[b"));
        assert!(path_matches("*a*b*", "xxaxxbxx"));
        assert!(!path_matches("*a*b", "xxaxxbxx"));
        assert!(path_matches("", ""));
    }
}
