//! The boot-selection state machine on GPT attribute bits, with crash-safe GPT writes; library
//! and the `signpost` CLI.
//!
//! * [`state`]: the pure state machine ([`SetState`], [`BootFlags`], [`Transition`],
//!   [`BootFlags::next_boot`]), no I/O.
//! * [`Signpost`]: the state machine bound to a disk (block device, image file, or any
//!   [`bootpart::io::BlockIo`]); each change re-reads the GPT, applies one transition and
//!   writes both GPT copies crash-safely through [`bootpart::gpt::write_gpt`].
//! * [`Status`]: what `signpost status [--json]` prints.
//! * [`LockFile`]: the advisory lock mutating callers take around read-modify-write.

pub mod disk;
pub mod error;
pub mod lock;
pub mod state;
pub mod status;

pub use bootpart::SetId;
pub use disk::Signpost;
pub use error::Error;
pub use lock::{DEFAULT_LOCK_FILE, LockFile};
pub use state::{BootFlags, PartitionFlags, SetState, Transition};
pub use status::{SetStatus, Status};
