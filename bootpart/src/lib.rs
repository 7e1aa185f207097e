//! Disks and A/B partition sets: GPT reading and crash-safe writing, set discovery by partition
//! type GUID, the running set, and the one partition-I/O stack (bounded, aligned, direct) for
//! block devices and image files alike.
//!
//! - [`gpt`]: read the GUID partition table with CRC checks and backup fallback, write it in a
//!   crash-safe order.
//! - [`io`]: the [`io::BlockIo`] trait that GPT code reads and writes through, and the one
//!   partition-I/O stack: [`io::PartitionWriter`] (with [`io::DirectWriter`] for parallel
//!   writes) and [`io::PartitionReader`], bounded, direct I/O aligned to the disk's logical
//!   block size (asked from the kernel), used by updog's staging as well as by tests.
//! - [`Disk`]: a block device or image file with its [`Layout`] of partition sets A and B.
//! - [`SetId`] and [`ImageKind`]: which set, and which of its three images (`root`, `boot`,
//!   `hash`), the one type for each across the workspace.
//! - [`running`]: which set the running system booted from (mountinfo, sysfs, dm slaves).
//! - [`sys`]: device numbers and sysfs lookups (injectable roots).
//! - [`guid`]: GUIDs in GPT byte order and the partition type GUIDs of the reference layout.
//!
//! [`io::PartitionWriter::write_all_at`] returns this crate's [`Result`] (with
//! [`Error::OutOfBounds`] for writes past the end) while `sync` returns `io::Result`;
//! [`gpt::GptRead`] reports each copy's state ([`gpt::CopyStatus`]) and has
//! `primary_needs_repair()` / `backup_needs_repair()`; [`Layout`] also carries `data`, and
//! [`PartitionSet`] the optional `reserved` partition.

pub mod gpt;
pub mod guid;
pub mod io;
pub mod running;
pub mod sys;

mod disk;
mod error;
mod image_kind;
mod layout;
mod set_id;

pub use disk::Disk;
pub use error::{Error, LayoutError, Result};
pub use guid::{Guid, PartitionType};
pub use image_kind::{ImageKind, ParseImageKindError};
pub use layout::{Layout, Partition, PartitionSet};
pub use set_id::{ParseSetIdError, SetId};
