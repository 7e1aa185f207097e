//! The `updog` command's exit codes, shared with agents that run it.
//!
//! As in the reference, callers such as thar-be-updates treat any non-zero code as a failure;
//! the distinct codes let a script tell a busy or interrupted updater from a broken one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; also `update`/`update-image` with nothing to do ("No update required"), and `whats --all` with an empty list |
//! | 1 | failure (one line on stderr says what); also `check-update` when no update is available, and `update-apply` with nothing staged |
//! | 2 | bad command line |
//! | 4 | another update is in progress (the lock is held) |
//! | 5 | interrupted by SIGINT/SIGTERM: while staging (the inactive set was left cleared), before the flip of `update`/`update-apply` (the set stays staged), or during `check-update` (nothing changed) |
//!
//! Code 3 ("nothing to do") was retired to match the reference; it is not used.

/// Success.
pub const SUCCESS: u8 = 0;
/// A failure; stderr names it. Also "no update available" from `check-update`.
pub const FAILURE: u8 = 1;
/// The command line was not understood.
pub const USAGE: u8 = 2;
/// Another update is in progress (the update lock is held).
pub const LOCKED: u8 = 4;
/// The operation was interrupted by a signal (or cancelled through the library) and stopped
/// cleanly.
pub const INTERRUPTED: u8 = 5;
