//! Disks and A/B partition sets: GPT reading, set discovery by partition type GUID, the running
//! set, bounded partition readers and writers.
//!
//! - [`gpt`]: read the GUID partition table with CRC checks and backup fallback, write it in a
//!   crash-safe order.
//! - [`io`]: the [`io::BlockIo`] trait that GPT code reads and writes through.
//! - [`guid`]: GUIDs in GPT byte order and the partition type GUIDs of the reference layout.

pub mod gpt;
pub mod guid;
pub mod io;

mod set_id;

pub use guid::{Guid, PartitionType};
pub use set_id::{ParseSetIdError, SetId};
