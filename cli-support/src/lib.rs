//! What the `updog`, `signpost` and `updata` binaries share as programs on a host, so each
//! stays a thin shell over its library:
//!
//! - [`logging`]: `--log-level` / `RUST_LOG`, lines on stderr, priorities on the systemd
//!   journal;
//! - [`docs`]: man pages and shell completions generated from the clap definitions;
//! - [`error_chain`]: an error and its causes on one line, as the binaries print them.

pub mod docs;
pub mod logging;

/// The error and its causes on one line, outermost first, joined by `": "`: what a binary
/// prints for a failure. Each layer's Display names only its own layer, so nothing is dropped.
/// (`updog::advice::error_chain` is the same for embedders of the `updog` library, which does
/// not depend on this crate.)
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// #[error("reading {0}")]
/// struct Reading(&'static str, #[source] std::io::Error);
///
/// let err = Reading("keys/root.pem", std::io::ErrorKind::NotFound.into());
/// assert_eq!(cli_support::error_chain(&err), "reading keys/root.pem: entity not found");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |&e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
