//! The boot-selection state machine on GPT attribute bits, with crash-safe GPT writes, and the
//! disk lock. A library: the `signpost` binary is a thin shell over it in the `updog-cli`
//! package (`cli/`), so that embedders do not compile clap.
//!
//! * [`state`]: the pure state machine ([`SetState`], [`BootFlags`], [`Transition`],
//!   [`BootFlags::next_boot`]), no I/O.
//! * [`Signpost`]: the state machine bound to a disk (block device, image file, or any
//!   [`bootpart::io::BlockIo`]); each change re-reads the GPT, applies one transition and
//!   writes both GPT copies crash-safely through [`bootpart::gpt::write_gpt`].
//! * [`Target`]: the disk and running set an operation works on (an explicit disk, or the
//!   host's own), and a one-shot change on it: lock, open, apply ([`Target::apply`]).
//! * [`Status`]: what `signpost status [--json]` prints.
//! * [`DiskLock`]: one owner per disk, the exclusive `flock` on the disk itself that every
//!   change holds ([`Signpost::open`] takes it).

pub mod disk;
pub mod error;
pub mod lock;
pub mod state;
pub mod status;
pub mod target;

pub use bootpart::SetId;
pub use disk::Signpost;
pub use error::Error;
pub use lock::{DiskLock, LockError};
pub use state::{BootFlags, PartitionFlags, SetState, Transition};
pub use status::{SetStatus, Status};
pub use target::Target;
