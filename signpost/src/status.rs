//! What `signpost status` shows: both sets, the running set and the set that boots next.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::state::SetState;
use bootpart::SetId;

/// Version of the [`Status`] JSON object; bumped on any incompatible change.
pub const STATUS_FORMAT_VERSION: u32 = 1;

/// The state of the disk's boot selection, as printed by `signpost status [--json]`.
///
/// JSON shape (`format_version` 1):
///
/// ```json
/// {"format_version":1,"disk":"/dev/nvme0n1","active":"A","next_boot":"A",
///  "boot_has_ever_succeeded":true,
///  "a":{"set":"A","boot_partition":2,"root_partition":3,"hash_partition":4,
///       "priority":1,"tries_left":0,"successful":true,"bootable":true},
///  "b":{...} or null,
///  "gpt":{"used":"primary","primary_valid":true,"backup_valid":true}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// [`STATUS_FORMAT_VERSION`].
    pub format_version: u32,
    /// The disk (device node or image file).
    pub disk: PathBuf,
    /// The running set.
    pub active: SetId,
    /// The set the bootloader picks next; `null` if none would boot.
    pub next_boot: Option<SetId>,
    /// PRIVATE bit 57; `null` without a PRIVATE partition.
    pub boot_has_ever_succeeded: Option<bool>,
    /// Set A.
    pub a: SetStatus,
    /// Set B; `null` on a single-set disk.
    pub b: Option<SetStatus>,
    /// Which GPT copy was read and whether each copy is intact.
    pub gpt: GptHealth,
}

/// One partition set in a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SetStatus {
    /// Which set.
    pub set: SetId,
    /// BOOT partition number (carries the attribute bits).
    pub boot_partition: u32,
    /// ROOT partition number.
    pub root_partition: u32,
    /// HASH partition number.
    pub hash_partition: u32,
    /// 0-15.
    pub priority: u8,
    /// 0-15.
    pub tries_left: u8,
    /// Marked as having booted successfully.
    pub successful: bool,
    /// Whether the bootloader would consider it at all.
    pub bootable: bool,
}

impl SetStatus {
    /// The state part of this set.
    pub fn state(&self) -> SetState {
        SetState {
            priority: self.priority,
            tries_left: self.tries_left,
            successful: self.successful,
        }
    }
}

/// Health of the two GPT copies when the status was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GptHealth {
    /// `"primary"` or `"backup"`.
    pub used: &'static str,
    /// The primary copy is valid and current.
    pub primary_valid: bool,
    /// The backup copy is valid and current.
    pub backup_valid: bool,
}

impl Status {
    /// The status of `set`, if the disk has it.
    pub fn set(&self, set: SetId) -> Option<&SetStatus> {
        match set {
            SetId::A => Some(&self.a),
            SetId::B => self.b.as_ref(),
        }
    }
}

impl fmt::Display for SetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot={} root={} hash={} {}",
            self.boot_partition,
            self.root_partition,
            self.hash_partition,
            self.state()
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "OS disk: {}", self.disk.display())?;
        writeln!(f, "Set A:   {}", self.a)?;
        match &self.b {
            Some(b) => writeln!(f, "Set B:   {b}")?,
            None => writeln!(f, "Set B:   (none: single-set disk)")?,
        }
        writeln!(f, "Active:  Set {}", self.active)?;
        match self.next_boot {
            Some(next) => writeln!(f, "Next:    Set {next}")?,
            None => writeln!(f, "Next:    None (no set would boot)")?,
        }
        match self.boot_has_ever_succeeded {
            // A set built as successful (as OS images are) next to a disk that never marked a
            // boot: the disk's bit (PRIVATE bit 57) is set by the first mark-successful-boot.
            Some(false) => writeln!(
                f,
                "Boot has ever succeeded: false (this disk has not yet run \
                 `signpost mark-successful-boot`; sets may be built as successful)"
            )?,
            Some(true) => writeln!(f, "Boot has ever succeeded: true")?,
            None => {}
        }
        if !(self.gpt.primary_valid && self.gpt.backup_valid) {
            writeln!(
                f,
                "GPT:     read from {} copy; primary {}, backup {} (the next change rewrites both)",
                self.gpt.used,
                if self.gpt.primary_valid {
                    "ok"
                } else {
                    "damaged or stale"
                },
                if self.gpt.backup_valid {
                    "ok"
                } else {
                    "damaged or stale"
                },
            )?;
        }
        Ok(())
    }
}
