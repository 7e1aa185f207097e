//! The boot-selection state machine on GPT attribute bits, with crash-safe GPT writes; library
//! and the `signpost` CLI.
//!
//! * [`state`]: the pure state machine ([`SetState`], [`BootFlags`], [`Transition`],
//!   [`BootFlags::next_boot`]), no I/O.
//! * [`LockFile`]: the advisory lock mutating callers take around read-modify-write.

pub mod error;
pub mod lock;
pub mod state;

pub use error::Error;
pub use lock::LockFile;
pub use state::{BootFlags, PartitionFlags, SetState, Transition};

// TEMPORARY until bootpart lands: replaced by `pub use bootpart::SetId`.
/// A partition set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SetId {
    /// Set A.
    A,
    /// Set B.
    B,
}
impl std::fmt::Display for SetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SetId::A => "A",
            SetId::B => "B",
        })
    }
}
