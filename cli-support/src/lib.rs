//! What the `updog`, `signpost` and `updata` binaries share as programs on a host, so each
//! stays a thin shell over its library:
//!
//! - [`logging`]: `--log-level` / `RUST_LOG`, lines on stderr, priorities on the systemd
//!   journal;
//! - [`docs`]: man pages and shell completions generated from the clap definitions.

pub mod docs;
pub mod logging;
