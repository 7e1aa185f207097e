//! The `updog` and `signpost` programs, as thin shells over the `updog` and `signpost`
//! libraries: parse the command line (clap), call the library, print, map errors to exit codes.
//!
//! They live in a package of their own so that the libraries stay free of clap and of
//! `cli-support`: an agent that embeds `updog` or `signpost` compiles neither. Each module has
//! a `main` (what the binary runs, including `__generate-docs DIR` for the man pages and shell
//! completions) and a `run_from_iter` that runs one command line given as arguments.
//!
//! The binaries `src/bin/updog.rs` and `src/bin/signpost.rs` call `main` and nothing else.

pub mod signpost;
pub mod updog;
