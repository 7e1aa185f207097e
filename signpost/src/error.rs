//! Typed errors: each names the set, partition, file or operation that was wrong.

use std::io;
use std::path::PathBuf;

use crate::state::SetState;
use bootpart::SetId;

/// Everything that can go wrong in signpost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `upgrade-to-inactive` on an inactive set that already has a priority or is marked
    /// successful (already upgraded, or never cleared).
    #[error(
        "inactive set {set} is already marked for boot ({state}); run clear-inactive and write a new image first"
    )]
    InactiveAlreadyMarked {
        /// The inactive set.
        set: SetId,
        /// Its state.
        state: SetState,
    },
    /// `upgrade-to-inactive` on an inactive set that was not marked valid (no tries left).
    #[error("inactive set {set} is not marked valid ({state}); run mark-inactive-valid first")]
    InactiveNotValid {
        /// The inactive set.
        set: SetId,
        /// Its state.
        state: SetState,
    },
    /// `rollback-to-inactive` to a set that never booted successfully and has no tries left.
    #[error("cannot roll back to inactive set {set}: it would not boot ({state})")]
    InactiveNotBootable {
        /// The inactive set.
        set: SetId,
        /// Its state.
        state: SetState,
    },
    /// The transition would leave the disk with no set the bootloader could boot, or take away
    /// the last set that booted successfully and that the bootloader would fall back to.
    #[error(
        "{operation} refused: afterwards (set A {a}; set B {b}) {}; nothing was changed. Mark the running set {active} good first (signpost mark-successful-boot, run by mark-successful-boot.service once the health checks pass)",
        if *.no_set_boots { "no set would boot" } else { "no set that booted successfully would be left to fall back to if the next boot fails" }
    )]
    WouldLeaveNoFallback {
        /// The CLI name of the transition.
        operation: &'static str,
        /// The running set.
        active: SetId,
        /// Set A as the transition would leave it.
        a: SetState,
        /// Set B as the transition would leave it.
        b: SetState,
        /// Whether no set at all would boot (else: only unconfirmed ones would).
        no_set_boots: bool,
    },
    /// An operation on the inactive set of a disk that has only one set.
    #[error("{operation} needs set {inactive}, but the disk has a single partition set")]
    SingleSet {
        /// The CLI name of the operation.
        operation: &'static str,
        /// The inactive set that does not exist.
        inactive: SetId,
    },
    /// The active set chosen does not exist on the disk.
    #[error("active set {active} does not exist on this disk")]
    ActiveSetMissing {
        /// The set named active.
        active: SetId,
    },
    /// An operation that needs the PRIVATE partition on a disk without one.
    #[error("{operation} needs the PRIVATE partition, and the disk has none")]
    NoPrivatePartition {
        /// The CLI name of the operation.
        operation: &'static str,
    },
    /// A priority or tries-left value above 15.
    #[error("{field} {value} is out of range 0-15")]
    FieldOutOfRange {
        /// `priority` or `tries_left`.
        field: &'static str,
        /// The value given.
        value: u8,
    },
    /// Opening the disk failed.
    #[error("cannot open disk {path}")]
    Open {
        /// The disk path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The disk could not be locked (another process owns it, or it cannot be opened).
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// Before a change, the set was not as this operation left it: something that does not
    /// honour the disk lock changed it. Nothing was written.
    #[error("set {set} changed under us before {transition}: expected {expected}, found {found}")]
    SetChanged {
        /// The transition that was about to run.
        transition: crate::state::Transition,
        /// The set checked.
        set: SetId,
        /// Its state as this operation left it.
        expected: SetState,
        /// Its state on disk now.
        found: SetState,
    },
    /// Writing or flushing the GPT failed part-way; `now` is what the disk reads afterwards (re-read
    /// after the failure), so the caller reports the state the disk is actually in.
    #[error("{transition} failed ({})", describe_now(now.as_ref()))]
    WriteFailed {
        /// The transition (or `rewrite-table`) that was being written.
        transition: &'static str,
        /// What failed.
        source: Box<bootpart::gpt::GptError>,
        /// The boot flags read back after the failure; `None` when the disk could not be read.
        now: Option<crate::state::BootFlags>,
        /// Whether the re-read shows the change in effect.
        took_effect: bool,
    },
    /// Reading or writing the GPT failed (nothing was changed when a write was refused).
    #[error("GPT of {disk}")]
    Gpt {
        /// The disk.
        disk: PathBuf,
        /// The cause.
        source: Box<bootpart::gpt::GptError>,
    },
    /// The disk's partitions do not form the expected layout.
    #[error("disk {disk}")]
    Layout {
        /// The disk.
        disk: PathBuf,
        /// What is wrong.
        source: bootpart::LayoutError,
    },
    /// Finding the running disk or set failed.
    #[error("{}", disk.as_ref().map_or_else(
        || "finding the running disk".to_string(),
        |d| format!("finding the running set on {}", d.display())
    ))]
    Discovery {
        /// The disk, when one was given.
        disk: Option<PathBuf>,
        /// What went wrong.
        source: Box<bootpart::Error>,
    },
    /// A partition the layout named is not in the table.
    #[error("disk {disk}: partition {number} is missing from the GPT")]
    PartitionMissing {
        /// The disk.
        disk: PathBuf,
        /// The partition number.
        number: u32,
    },
}

fn describe_now(now: Option<&crate::state::BootFlags>) -> String {
    let Some(flags) = now else {
        return "the GPT cannot be read back; its state is unknown".to_string();
    };
    let set = |id: SetId| {
        flags
            .state(id)
            .map(|s| format!("; set {id}: {s}"))
            .unwrap_or_default()
    };
    let next = flags
        .next_boot()
        .map_or_else(|| "no bootable set".to_string(), |s| format!("set {s}"));
    format!(
        "the disk now reads: next boot {next}{}{}",
        set(SetId::A),
        set(SetId::B)
    )
}
