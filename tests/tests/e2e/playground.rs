//! The README's "Five-minute playground", run line by line as a reader would: `updog-playground`
//! makes the disk image and the repository, then the real `signpost` and `updog` binaries work
//! on them. The first two lines (building, and putting `target/debug` on `PATH`) are done the
//! test's way: the binaries the test harness built are put on `PATH`.

use std::path::Path;
use std::process::Command;

use e2e_tests::{bin_dir, describe};

/// The first `sh` block of the README section `heading`.
fn readme_block(heading: &str) -> String {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let start = section.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_string()
}

#[test]
fn the_readme_playground_works_word_for_word() {
    let block = readme_block("Five-minute playground");
    let lines: Vec<&str> = block.lines().collect();
    assert!(
        lines[0].starts_with("cargo build ") && lines[1].starts_with("export PATH="),
        "the block starts with the build and PATH lines: {block}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("updog-playground");
    let script = lines[2..]
        .join("\n")
        .replace("/tmp/updog-playground", &dir.display().to_string());
    assert_ne!(
        script,
        lines[2..].join("\n"),
        "the block names /tmp/updog-playground"
    );

    let playground = Path::new(env!("CARGO_BIN_EXE_updog-playground"));
    let path = std::env::join_paths(
        [
            bin_dir(),
            playground.parent().expect("bin dir"),
            Path::new("/usr/bin"),
            Path::new("/bin"),
        ]
        .iter(),
    )
    .expect("PATH");
    let out = Command::new("sh")
        .args(["-e", "-c", &script])
        .env("PATH", path)
        .current_dir(tmp.path())
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // What the comments promise, in order: A boots next; 1.1.0 on offer; B boots next; Ready;
    // B successful next to A; back to A.
    let expect = [
        "Next:    Set A",
        "demo-variant 1.1.0",
        "Next:    Set B",
        "state:   Ready",
        "Set B:   boot=5 root=6 hash=7 priority=2 tries_left=1 successful=true",
        "Next:    Set B",
        "rollback-to-inactive: done; next boot: set A",
    ];
    let mut rest = &text[..];
    for e in expect {
        let at = rest
            .find(e)
            .unwrap_or_else(|| panic!("{e:?} not in order in: {text}"));
        rest = &rest[at + e.len()..];
    }
    // The fresh disk explains its "never succeeded" bit; after mark-successful-boot it is set.
    assert!(text.contains("Boot has ever succeeded: false (this disk has not yet run"));
    assert!(text.contains("Boot has ever succeeded: true"), "{text}");
    // Nothing is written outside the directory, and a second run refuses to overwrite it.
    let again = Command::new(playground).arg(&dir).output().expect("again");
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
}
