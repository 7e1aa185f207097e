//! The `updog` command's exit codes, shared with agents that run it.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure (one line on stderr says what) |
//! | 2 | bad command line |
//! | 3 | nothing to do: no update available, not eligible yet, or nothing staged |
//! | 4 | another update is in progress (the lock is held) |
//! | 5 | interrupted by SIGINT/SIGTERM while staging; the inactive set was left cleared |

/// Success.
pub const SUCCESS: u8 = 0;
/// A failure; stderr names it.
pub const FAILURE: u8 = 1;
/// The command line was not understood.
pub const USAGE: u8 = 2;
/// Nothing to do: no update, not eligible yet, or nothing staged to apply.
pub const NOTHING_TO_DO: u8 = 3;
/// Another update is in progress (the update lock is held).
pub const LOCKED: u8 = 4;
/// Staging was interrupted by a signal and stopped cleanly.
pub const INTERRUPTED: u8 = 5;
