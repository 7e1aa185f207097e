//! Man pages and shell completions generated from a binary's clap definition, so they cannot
//! drift from its `--help`.
//!
//! Each binary calls [`generate_if_asked`] first thing in `main`; `BINARY __generate-docs DIR`
//! then writes, and nothing else happens:
//!
//! - `DIR/man/BINARY.1` and one page per subcommand (`BINARY-SUBCOMMAND.1`), and with
//!   [`generate_if_asked_with`] the pages of its configuration files (`DIR/man/FILE.5`),
//! - `DIR/completions/BINARY.bash`, `DIR/completions/_BINARY` (zsh),
//!   `DIR/completions/BINARY.fish`.
//!
//! The argument is not part of the clap definition, so it appears in no help text and no page.
//! `packaging/build-deb` runs it for `updog`, `signpost` and `updata`.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let cmd = clap::Command::new("demo")
//!     .about("A demo")
//!     .subcommand(clap::Command::new("run").about("Run it"));
//! let written = cli_support::docs::write_docs(cmd, dir.path())?;
//! assert!(dir.path().join("man/demo.1").is_file());
//! assert!(dir.path().join("man/demo-run.1").is_file());
//! assert!(dir.path().join("completions/_demo").is_file());
//! // No page for clap's `help` subcommand.
//! assert_eq!(written.len(), 5, "{written:?}");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::path::{Path, PathBuf};

use std::fmt::Write as _;

use clap_complete::Shell;

/// The first argument that asks a binary for its documentation.
pub const GENERATE_DOCS_ARG: &str = "__generate-docs";

/// Writes the man pages (section 1) and the bash, zsh and fish completions of `cmd` under
/// `out_dir` (`man/`, `completions/`), returning the files written.
pub fn write_docs(cmd: clap::Command, out_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out_dir.join("man");
    let completions = out_dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&man)? {
        written.push(entry?.path());
    }
    written.sort();
    // Completions offer what `--help` shows: hidden options and subcommands are left out.
    let mut visible = visible_only(&cmd);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut visible,
            name.clone(),
            &completions,
        )?);
    }
    Ok(written)
}

/// `cmd` without its hidden arguments and subcommands, at every level (clap's completion
/// generators list hidden options too). Its names are leaked: this runs once, in a process that
/// exits when the documentation is written.
fn visible_only(cmd: &clap::Command) -> clap::Command {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let mut out = clap::Command::new(leak(cmd.get_name()))
        .disable_help_subcommand(cmd.is_disable_help_subcommand_set())
        .disable_help_flag(cmd.is_disable_help_flag_set())
        .disable_version_flag(cmd.is_disable_version_flag_set());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(leak(version));
    }
    for alias in cmd.get_visible_aliases() {
        out = out.visible_alias(leak(alias));
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        out = out.arg(arg.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible_only(sub));
    }
    out
}

/// One key of a configuration file, for its man page ([`write_config_page`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Its default (or "required").
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Writes `DIR/man/FILE.5`, the section-5 page of a TOML configuration file: `about` (one
/// paragraph) and each key with its default and meaning, in the order given.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let keys = [cli_support::docs::KeyDoc { key: "seed", default: "required", meaning: "Where." }];
/// let page = cli_support::docs::write_config_page(dir.path(), "demo.toml", "demo", "About.", &keys)?;
/// let text = std::fs::read_to_string(page)?;
/// assert!(text.contains(".TH DEMO.TOML 5") && text.contains("\\fBseed\\fR"), "{text}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_config_page(
    out_dir: &Path,
    file: &str,
    program: &str,
    about: &str,
    keys: &[KeyDoc],
) -> std::io::Result<PathBuf> {
    let man = out_dir.join("man");
    std::fs::create_dir_all(&man)?;
    let mut page = format!(
        ".TH {} 5 \"\" \"{program}\"\n.SH NAME\n{} \\- configuration of {}\n.SH DESCRIPTION\n{}\n.SH KEYS\n",
        roff(&file.to_uppercase()),
        roff(file),
        roff(program),
        roff(about)
    );
    for k in keys {
        let _ = write!(
            page,
            ".TP\n\\fB{}\\fR (default: {})\n{}\n",
            roff(k.key),
            roff(k.default),
            roff(k.meaning)
        );
    }
    let _ = write!(page, ".SH SEE ALSO\n\\fB{}\\fR(1)\n", roff(program));
    let path = man.join(format!("{file}.5"));
    std::fs::write(&path, page)?;
    Ok(path)
}

/// Text escaped for roff: backslashes and dashes, and a leading dot or quote that would start
/// a request.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// If this process was started as `PROGRAM __generate-docs DIR`, writes the documentation of
/// `cmd` (built lazily) to `DIR` and exits: 0 when written, 1 with a message when not.
/// Otherwise returns and the program runs normally.
pub fn generate_if_asked(cmd: impl FnOnce() -> clap::Command) {
    generate_if_asked_with(cmd, |_| Ok(Vec::new()));
}

/// Like [`generate_if_asked`], also writing the pages `more` writes into `DIR` (a
/// configuration file's section-5 page, [`write_config_page`]).
pub fn generate_if_asked_with(
    cmd: impl FnOnce() -> clap::Command,
    more: impl FnOnce(&Path) -> std::io::Result<Vec<PathBuf>>,
) {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != GENERATE_DOCS_ARG) {
        return;
    }
    let cmd = cmd();
    let name = cmd.get_name().to_string();
    let Some(dir) = args.next() else {
        eprintln!("{name}: usage: {name} {GENERATE_DOCS_ARG} DIR");
        std::process::exit(1);
    };
    let written = write_docs(cmd, Path::new(&dir)).and_then(|mut files| {
        files.extend(more(Path::new(&dir))?);
        Ok(files)
    });
    match written {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!(
                "{name}: cannot write documentation to {}: {e}",
                Path::new(&dir).display()
            );
            std::process::exit(1);
        }
    }
}
