//! Man pages and shell completions generated from a binary's clap definition, so they cannot
//! drift from its `--help`.
//!
//! Each binary calls [`generate_if_asked`] first thing in `main`; `BINARY __generate-docs DIR`
//! then writes, and nothing else happens:
//!
//! - `DIR/man/BINARY.1` and one page per subcommand (`BINARY-SUBCOMMAND.1`),
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
    let mut cmd = cmd;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&man)? {
        written.push(entry?.path());
    }
    written.sort();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            name.clone(),
            &completions,
        )?);
    }
    Ok(written)
}

/// If this process was started as `PROGRAM __generate-docs DIR`, writes the documentation of
/// `cmd` (built lazily) to `DIR` and exits: 0 when written, 1 with a message when not.
/// Otherwise returns and the program runs normally.
pub fn generate_if_asked(cmd: impl FnOnce() -> clap::Command) {
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
    match write_docs(cmd, Path::new(&dir)) {
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
