//! [`Signpost`]: the state machine bound to a disk. Every change is a fresh read of the GPT, one
//! transition on the attribute bits, and a crash-safe write of both GPT copies through
//! [`bootpart::gpt::write_gpt`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootpart::SetId;
use bootpart::gpt::{CopyStatus, GptCopy, GptRead, GptTable, read_gpt, write_gpt};
use bootpart::io::BlockIo;
use bootpart::{Layout, PartitionSet};

use crate::error::Error;
use crate::lock::DiskLock;
use crate::state::{BootFlags, PartitionFlags, SetState, Transition};
use crate::status::{GptHealth, STATUS_FORMAT_VERSION, SetStatus, Status};

/// Partition numbers of one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetNumbers {
    boot: u32,
    root: u32,
    hash: u32,
}

/// The partition numbers signpost cares about, from the disk's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Numbers {
    a: SetNumbers,
    b: Option<SetNumbers>,
    private: Option<u32>,
}

impl Numbers {
    fn from_layout(layout: &Layout) -> Self {
        let set = |s: &PartitionSet| SetNumbers {
            boot: s.boot.number,
            root: s.root.number,
            hash: s.hash.number,
        };
        Numbers {
            a: set(&layout.a),
            b: layout.b.as_ref().map(set),
            private: layout.private.as_ref().map(|p| p.number),
        }
    }
}

/// The boot-selection state of one disk, and the operations that change it.
///
/// Generic over the block device so tests can run it on a fault-injecting disk; the default is a
/// plain file (block device or disk image).
///
/// A `Signpost` opened read-write owns the disk: [`Signpost::open`] takes the disk's
/// [`DiskLock`] and holds it until the `Signpost` is dropped, so two changes (from this process,
/// another signpost, or updog) cannot interleave. A caller that already holds the lock for a
/// longer operation uses [`Signpost::locked`].
///
/// ```no_run
/// use signpost::{SetId, Signpost};
///
/// let mut sp = Signpost::open("disk.img", Some(SetId::A))?;
/// sp.clear_inactive()?;
/// // ... write and verify the images of set B ...
/// sp.mark_inactive_valid()?;
/// sp.upgrade_to_inactive()?;
/// assert_eq!(sp.next_boot(), Some(SetId::B));
/// println!("{}", sp.status());
/// # Ok::<(), signpost::Error>(())
/// ```
#[derive(Debug)]
pub struct Signpost<D: BlockIo = File> {
    io: D,
    disk: PathBuf,
    active: SetId,
    numbers: Numbers,
    read: GptRead,
    flags: BootFlags,
    /// The disk lock, when this `Signpost` took it itself.
    owner: Option<DiskLock>,
}

impl Signpost<File> {
    /// Opens a disk (block device or image file) read-write, taking its [`DiskLock`] (waiting
    /// up to [`crate::lock::DEFAULT_WAIT`] for another owner) and holding it until dropped.
    /// `active` names the running set; `None` finds it from the running root filesystem (which
    /// only works for the host's own OS disk).
    pub fn open(disk: impl AsRef<Path>, active: Option<SetId>) -> Result<Self, Error> {
        Self::open_waiting(disk, active, crate::lock::DEFAULT_WAIT)
    }

    /// Like [`Signpost::open`], waiting at most `wait` for the disk lock.
    pub fn open_waiting(
        disk: impl AsRef<Path>,
        active: Option<SetId>,
        wait: Duration,
    ) -> Result<Self, Error> {
        let lock = DiskLock::acquire(disk.as_ref(), wait)?;
        let mut sp = Self::locked(&lock, active)?;
        sp.owner = Some(lock);
        Ok(sp)
    }

    /// Opens the disk of a [`DiskLock`] the caller holds (for an operation longer than one
    /// change: updog holds the lock from clearing the inactive set to the flip). Reads and
    /// writes go through the locked handle.
    pub fn locked(lock: &DiskLock, active: Option<SetId>) -> Result<Self, Error> {
        let path = lock.path();
        let active = match active {
            Some(a) => a,
            None => running_set(path)?,
        };
        let file = lock.try_clone_file().map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_io(file, path, active)
    }

    /// Like [`Signpost::open`], but read-only and without the lock: for `status` and
    /// `has-boot-ever-succeeded`, which change nothing. Changes fail with an I/O error.
    pub fn open_read_only(disk: impl AsRef<Path>, active: Option<SetId>) -> Result<Self, Error> {
        let path = disk.as_ref();
        let active = match active {
            Some(a) => a,
            None => running_set(path)?,
        };
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new().read(true).open(path).map_err(open_err)?;
        // A directory opens read-only, and would fail later as a read "at LBA 1".
        if file.metadata().map_err(open_err)?.is_dir() {
            return Err(open_err(nix::errno::Errno::EISDIR.into()));
        }
        Self::from_io(file, path, active)
    }

    /// Opens the disk holding the running root filesystem read-write (taking its lock, see
    /// [`Signpost::open`]); `active` overrides the running set found there.
    pub fn open_host(active: Option<SetId>) -> Result<Self, Error> {
        Self::open_host_waiting(active, crate::lock::DEFAULT_WAIT)
    }

    /// Like [`Signpost::open_host`], waiting at most `wait` for the disk lock.
    pub fn open_host_waiting(active: Option<SetId>, wait: Duration) -> Result<Self, Error> {
        let (disk, running) = host_disk()?;
        Self::open_waiting(&disk, Some(active.unwrap_or(running)), wait)
    }

    /// Like [`Signpost::open_host`], but read-only and without the lock.
    pub fn open_host_read_only(active: Option<SetId>) -> Result<Self, Error> {
        let (disk, running) = host_disk()?;
        Self::open_read_only(&disk, Some(active.unwrap_or(running)))
    }
}

/// The running set on `path`, found from the running root filesystem.
fn running_set(path: &Path) -> Result<SetId, Error> {
    let discovery = |source| Error::Discovery {
        disk: Some(path.to_path_buf()),
        source: Box::new(source),
    };
    let d = bootpart::Disk::open(path).map_err(discovery)?;
    bootpart::running::find_running_set(&d).map_err(discovery)
}

/// The disk holding the running root filesystem, and the running set.
fn host_disk() -> Result<(PathBuf, SetId), Error> {
    bootpart::running::discover_root_disk().map_err(|source| Error::Discovery {
        disk: None,
        source: Box::new(source),
    })
}

impl<D: BlockIo> Signpost<D> {
    /// Reads the GPT from `io` and finds the partition sets. `disk` is only used in messages and
    /// in [`Status::disk`]. Takes no lock: the caller owns `io` (a locked disk, or a private
    /// one such as a test's fault-injecting disk).
    pub fn from_io(io: D, disk: impl Into<PathBuf>, active: SetId) -> Result<Self, Error> {
        let disk = disk.into();
        let (read, numbers, flags) = load(&io, &disk, active)?;
        Ok(Self {
            io,
            disk,
            active,
            numbers,
            read,
            flags,
            owner: None,
        })
    }

    /// The disk's path (as given; used in messages).
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The partitions of `set` (BOOT, ROOT, HASH numbers and byte ranges) as last read, from
    /// the same GPT read as the flags.
    pub fn layout(&self) -> Result<Layout, Error> {
        Layout::from_table(&self.read.table, &|_| None).map_err(|source| Error::Layout {
            disk: self.disk.clone(),
            source,
        })
    }

    /// The running set.
    pub fn active(&self) -> SetId {
        self.active
    }

    /// The set that is not running.
    pub fn inactive(&self) -> SetId {
        self.active.other()
    }

    /// The attribute bits as last read or written.
    pub fn flags(&self) -> BootFlags {
        self.flags
    }

    /// The state of `set` as last read or written; `None` when the disk does not have it.
    pub fn state(&self, set: SetId) -> Option<SetState> {
        self.flags.state(set)
    }

    /// The set the bootloader boots next (see [`BootFlags::next_boot`]).
    pub fn next_boot(&self) -> Option<SetId> {
        self.flags.next_boot()
    }

    /// PRIVATE bit 57: whether a boot has ever succeeded on this disk.
    pub fn has_boot_ever_succeeded(&self) -> Result<bool, Error> {
        self.flags.has_boot_ever_succeeded()
    }

    /// Both sets, the running set, the next boot and the health of the GPT copies.
    pub fn status(&self) -> Status {
        let set = |id: SetId, n: SetNumbers| {
            let state = self.flags.state(id).unwrap_or_default();
            SetStatus {
                set: id,
                boot_partition: n.boot,
                root_partition: n.root,
                hash_partition: n.hash,
                priority: state.priority,
                tries_left: state.tries_left,
                successful: state.successful,
                bootable: state.is_bootable(),
            }
        };
        Status {
            format_version: STATUS_FORMAT_VERSION,
            disk: self.disk.clone(),
            active: self.active,
            next_boot: self.flags.next_boot(),
            boot_has_ever_succeeded: self.flags.boot_ever_succeeded(),
            a: set(SetId::A, self.numbers.a),
            b: self.numbers.b.map(|n| set(SetId::B, n)),
            gpt: GptHealth {
                used: match self.read.used {
                    GptCopy::Primary => "primary",
                    GptCopy::Backup => "backup",
                },
                primary_valid: self.read.primary == CopyStatus::Valid,
                backup_valid: self.read.backup == CopyStatus::Valid,
            },
        }
    }

    /// Re-reads the GPT (another process, or the bootloader, may have changed it).
    pub fn refresh(&mut self) -> Result<(), Error> {
        let (read, numbers, flags) = load(&self.io, &self.disk, self.active)?;
        self.read = read;
        self.numbers = numbers;
        self.flags = flags;
        Ok(())
    }

    /// Applies one transition: re-reads the GPT, checks the transition's preconditions against
    /// what is on disk, and writes both GPT copies crash-safely (primary, flush, backup, flush).
    /// When a precondition fails nothing is written. A damaged or stale GPT copy is rewritten as
    /// part of it. When a write or flush fails part-way the GPT is read again and
    /// [`Error::WriteFailed`] says what the disk reads now (the change may be in effect).
    pub fn apply(&mut self, transition: Transition) -> Result<(), Error> {
        self.refresh()?;
        let mut flags = self.flags;
        flags.apply(transition)?;
        self.write_checked(transition.name(), flags)
    }

    /// Like [`Signpost::apply`], but first checks on the fresh read that `set` is still in the
    /// state `expected` (as this operation left it); otherwise nothing is written and the error
    /// is [`Error::SetChanged`].
    pub fn apply_expecting(
        &mut self,
        transition: Transition,
        set: SetId,
        expected: SetState,
    ) -> Result<(), Error> {
        self.refresh()?;
        if let Some(found) = self.flags.state(set).filter(|found| *found != expected) {
            return Err(Error::SetChanged {
                transition,
                set,
                expected,
                found,
            });
        }
        let mut flags = self.flags;
        flags.apply(transition)?;
        self.write_checked(transition.name(), flags)
    }

    /// Writes `flags` and reads them back; on a failed write, reads the disk again and reports
    /// what it holds.
    fn write_checked(&mut self, what: &'static str, flags: BootFlags) -> Result<(), Error> {
        match self.write_flags(flags) {
            Ok(()) => {
                self.refresh()?;
                let show = |set: SetId| {
                    self.flags
                        .state(set)
                        .map_or_else(|| "absent".to_string(), |s| s.to_string())
                };
                log::info!(
                    "{what} on {}: set A {}, set B {}",
                    self.disk.display(),
                    show(SetId::A),
                    show(SetId::B)
                );
                Ok(())
            }
            Err(Error::Gpt { source, .. }) => {
                let now = self.refresh().ok().map(|()| self.flags);
                Err(Error::WriteFailed {
                    transition: what,
                    source,
                    took_effect: now == Some(flags),
                    now,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Writes the attribute words of `flags` into the last-read table and writes it out.
    fn write_flags(&mut self, flags: BootFlags) -> Result<(), Error> {
        let mut table = self.read.table.clone();
        let mut parts = vec![flags.a];
        parts.extend(flags.b);
        parts.extend(flags.private);
        for p in parts {
            set_attributes(&mut table, p, &self.disk)?;
        }
        write_gpt(&mut self.io, &table).map_err(|source| Error::Gpt {
            disk: self.disk.clone(),
            source: Box::new(source),
        })
    }

    /// `clear-inactive`; see [`BootFlags::clear_inactive`].
    pub fn clear_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::ClearInactive)
    }

    /// `mark-inactive-valid`; see [`BootFlags::mark_inactive_valid`].
    pub fn mark_inactive_valid(&mut self) -> Result<(), Error> {
        self.apply(Transition::MarkInactiveValid)
    }

    /// `upgrade-to-inactive`; see [`BootFlags::upgrade_to_inactive`].
    pub fn upgrade_to_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::UpgradeToInactive)
    }

    /// `cancel-upgrade`; see [`BootFlags::cancel_upgrade`].
    pub fn cancel_upgrade(&mut self) -> Result<(), Error> {
        self.apply(Transition::CancelUpgrade)
    }

    /// `rollback-to-inactive`; see [`BootFlags::rollback_to_inactive`].
    pub fn rollback_to_inactive(&mut self) -> Result<(), Error> {
        self.apply(Transition::RollbackToInactive)
    }

    /// `mark-successful-boot`; see [`BootFlags::mark_successful_boot`].
    pub fn mark_successful_boot(&mut self) -> Result<(), Error> {
        self.apply(Transition::MarkSuccessfulBoot)
    }

    /// Rewrites both GPT copies from the table in use, changing no bits (the reference's
    /// `rewrite-table`): repairs a damaged or stale copy. Returns whether a copy needed it.
    pub fn rewrite_table(&mut self) -> Result<bool, Error> {
        self.refresh()?;
        let needed =
            self.read.primary != CopyStatus::Valid || self.read.backup != CopyStatus::Valid;
        self.write_checked("rewrite-table", self.flags)?;
        Ok(needed)
    }

    /// Plays the bootloader: applies [`BootFlags::simulate_boot`] to what is on disk and writes
    /// the GPT (crash-safely, like every change), then treats the booted set as the running
    /// one. Returns the set booted, `None` (and nothing written) when no set is bootable.
    ///
    /// For tests and demos that "reboot" a disk image; a real host's bootloader does this
    /// itself.
    pub fn simulate_boot(&mut self) -> Result<Option<SetId>, Error> {
        self.refresh()?;
        let mut flags = self.flags;
        let Some(booted) = flags.simulate_boot() else {
            return Ok(None);
        };
        self.write_checked("boot", flags)?;
        self.active = booted;
        self.refresh()?;
        Ok(Some(booted))
    }

    /// Gives back the block device.
    pub fn into_inner(self) -> D {
        self.io
    }
}

/// Reads the GPT, the layout and the attribute bits.
fn load<D: BlockIo>(
    io: &D,
    disk: &Path,
    active: SetId,
) -> Result<(GptRead, Numbers, BootFlags), Error> {
    let read = read_gpt(io).map_err(|source| Error::Gpt {
        disk: disk.to_path_buf(),
        source: Box::new(source),
    })?;
    let layout = Layout::from_table(&read.table, &|_| None).map_err(|source| Error::Layout {
        disk: disk.to_path_buf(),
        source,
    })?;
    let numbers = Numbers::from_layout(&layout);
    let flags = flags_from_table(&read.table, numbers, active, disk)?;
    if flags.partition(active).is_none() {
        return Err(Error::ActiveSetMissing { active });
    }
    Ok((read, numbers, flags))
}

fn flags_from_table(
    table: &GptTable,
    n: Numbers,
    active: SetId,
    disk: &Path,
) -> Result<BootFlags, Error> {
    let get = |number: u32| -> Result<PartitionFlags, Error> {
        let e = table.entry(number).ok_or_else(|| Error::PartitionMissing {
            disk: disk.to_path_buf(),
            number,
        })?;
        Ok(PartitionFlags {
            number,
            attributes: e.attributes,
        })
    };
    Ok(BootFlags {
        active,
        a: get(n.a.boot)?,
        b: n.b.map(|s| get(s.boot)).transpose()?,
        private: n.private.map(get).transpose()?,
    })
}

fn set_attributes(table: &mut GptTable, p: PartitionFlags, disk: &Path) -> Result<(), Error> {
    let e = table
        .entry_mut(p.number)
        .ok_or_else(|| Error::PartitionMissing {
            disk: disk.to_path_buf(),
            number: p.number,
        })?;
    e.attributes = p.attributes;
    Ok(())
}
