//! Crash-safety proof: every GPT write signpost makes is recorded, then replayed with the power
//! cut at every point (between writes, inside a write at every sector boundary, and with any
//! subset of the writes since the last flush lost). Each cut must read back as the old or the
//! new state, never as "no set bootable" and never with a half-prepared set bootable; and a
//! damaged primary copy must be repairable from the backup.

use std::cell::RefCell;
use std::io;

use bootpart::SetId;
use bootpart::gpt::{CopyStatus, GptEntry, read_gpt, repair, write_gpt};
use bootpart::io::BlockIo;
use signpost::{BootFlags, SetState, Signpost, Transition};

const SECTOR: usize = 512;

/// One recorded operation.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Sync,
}

/// A disk in memory that records every write and flush.
#[derive(Debug, Clone)]
struct RecordingDisk {
    data: Vec<u8>,
    ops: RefCell<Vec<Op>>,
}

impl BlockIo for RecordingDisk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .data
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        let dst = self
            .data
            .get_mut(start..start + buf.len())
            .ok_or(io::ErrorKind::WriteZero)?;
        dst.copy_from_slice(buf);
        self.ops.borrow_mut().push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.ops.borrow_mut().push(Op::Sync);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

/// What survived a power cut: a base image plus the writes (or parts of writes) that reached
/// the medium, applied in order. Reads never copy the whole image.
#[derive(Debug, Clone)]
struct CutDisk<'a> {
    base: &'a [u8],
    patches: Vec<(u64, Vec<u8>)>,
}

impl BlockIo for CutDisk<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        let src = self
            .base
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        for (off, data) in &self.patches {
            let (p0, p1) = (*off, *off + data.len() as u64);
            let (b0, b1) = (offset, offset + buf.len() as u64);
            let (lo, hi) = (p0.max(b0), p1.min(b1));
            if lo < hi {
                buf[(lo - b0) as usize..(hi - b0) as usize]
                    .copy_from_slice(&data[(lo - p0) as usize..(hi - p0) as usize]);
            }
        }
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset as usize + buf.len() > self.base.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.patches.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.base.len() as u64)
    }
}

/// One power-cut scenario: a description and the writes that reached the disk.
struct Cut {
    what: String,
    patches: Vec<(u64, Vec<u8>)>,
}

/// Every scenario for one recorded operation log.
///
/// * after each operation, with the writes since the last flush persisted in every subset
///   (all, none, each prefix and everything in between: epochs here are at most a few writes);
/// * inside each write, at every 512-byte sector boundary, with the first part persisted
///   (sequential device) or only the last part (reordering device), and the earlier writes of
///   the same epoch either all persisted or all lost.
fn enumerate_cuts(ops: &[Op]) -> Vec<Cut> {
    let mut cuts = Vec::new();
    let mut durable: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
    // The state before the first operation.
    cuts.push(Cut {
        what: "before any write".into(),
        patches: Vec::new(),
    });
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Sync => {
                durable.append(&mut pending);
                cuts.push(Cut {
                    what: format!("after op {i} (flush)"),
                    patches: durable.clone(),
                });
            }
            Op::Write { offset, data } => {
                let sectors = data.len() / SECTOR;
                for earlier in [true, false] {
                    let mut base = durable.clone();
                    if earlier {
                        base.extend(pending.iter().cloned());
                    }
                    for b in 1..sectors {
                        let split = b * SECTOR;
                        let mut head = base.clone();
                        head.push((*offset, data[..split].to_vec()));
                        cuts.push(Cut {
                            what: format!(
                                "inside op {i}: first {b}/{sectors} sectors persisted, earlier unflushed writes {}",
                                if earlier { "kept" } else { "lost" }
                            ),
                            patches: head,
                        });
                        let mut tail = base.clone();
                        tail.push((*offset + split as u64, data[split..].to_vec()));
                        cuts.push(Cut {
                            what: format!(
                                "inside op {i}: last {}/{sectors} sectors persisted, earlier unflushed writes {}",
                                sectors - b,
                                if earlier { "kept" } else { "lost" }
                            ),
                            patches: tail,
                        });
                    }
                }
                pending.push((*offset, data.clone()));
                assert!(
                    pending.len() <= 12,
                    "epoch too long to enumerate every subset"
                );
                for mask in 0u32..(1 << pending.len()) {
                    let mut p = durable.clone();
                    for (j, w) in pending.iter().enumerate() {
                        if mask & (1 << j) != 0 {
                            p.push(w.clone());
                        }
                    }
                    cuts.push(Cut {
                        what: format!(
                            "after op {i}: unflushed writes persisted mask {mask:0width$b}",
                            width = pending.len()
                        ),
                        patches: p,
                    });
                }
            }
        }
    }
    cuts
}

fn bootable(f: &BootFlags, set: SetId) -> bool {
    f.state(set).is_some_and(SetState::is_bootable)
}

/// One transition as recorded: the image before, the operations, and both states.
struct Recorded {
    before: Vec<u8>,
    after: Vec<u8>,
    ops: Vec<Op>,
    active: SetId,
    transition: Transition,
    old: BootFlags,
    new: BootFlags,
    old_entries: Vec<GptEntry>,
    new_entries: Vec<GptEntry>,
}

/// Runs `t` on `image` (active `active`) on a recording disk.
fn record(image: Vec<u8>, active: SetId, t: Transition) -> Recorded {
    let old_entries = read_gpt(&CutDisk {
        base: &image,
        patches: vec![],
    })
    .unwrap()
    .table
    .entries;
    let disk = RecordingDisk {
        data: image.clone(),
        ops: RefCell::new(Vec::new()),
    };
    let mut sp = Signpost::from_io(disk, "recorded.img", active).unwrap();
    let old = sp.flags();
    sp.apply(t)
        .unwrap_or_else(|e| panic!("{t} from {old:?}: {e}"));
    let new = sp.flags();
    assert_ne!(old, new, "{t} changed nothing: the proof would be vacuous");
    let disk = sp.into_inner();
    let ops = disk.ops.borrow().clone();
    let new_entries = read_gpt(&disk).unwrap().table.entries;
    Recorded {
        before: image,
        after: disk.data,
        ops,
        active,
        transition: t,
        old,
        new,
        old_entries,
        new_entries,
    }
}

/// Checks one cut; `Err` describes the violation.
fn check_cut(r: &Recorded, cut: &Cut) -> Result<(bool, bool), String> {
    let ctx = format!("{} (active {}), {}", r.transition, r.active, cut.what);
    let mut cd = CutDisk {
        base: &r.before,
        patches: cut.patches.clone(),
    };
    let read = read_gpt(&cd).map_err(|e| format!("{ctx}: unreadable: {e}"))?;
    let is_old = read.table.entries == r.old_entries;
    let is_new = read.table.entries == r.new_entries;
    if !(is_old || is_new) {
        return Err(format!("{ctx}: reads as neither the old nor the new table"));
    }
    let got = Signpost::from_io(&mut cd, "cut.img", r.active)
        .map_err(|e| format!("{ctx}: signpost cannot open: {e}"))?
        .flags();
    if got != r.old && got != r.new {
        return Err(format!("{ctx}: flags {got:?}"));
    }
    if got.next_boot().is_none() {
        return Err(format!("{ctx}: no set bootable"));
    }
    for set in [SetId::A, SetId::B] {
        if !bootable(&r.old, set) && !bootable(&r.new, set) && bootable(&got, set) {
            return Err(format!("{ctx}: set {set} bootable half-way"));
        }
    }
    // Recovery: whatever copy is damaged or stale is rewritten from the one in use, after
    // which both copies are valid and still hold the same table.
    if read.primary != CopyStatus::Valid || read.backup != CopyStatus::Valid {
        repair(&mut cd, &read).map_err(|e| format!("{ctx}: repair: {e}"))?;
        let again = read_gpt(&cd).map_err(|e| format!("{ctx}: after repair: {e}"))?;
        if again.primary != CopyStatus::Valid || again.backup != CopyStatus::Valid {
            return Err(format!(
                "{ctx}: copies still damaged after repair: {again:?}"
            ));
        }
        if again.table.entries != read.table.entries {
            return Err(format!("{ctx}: repair changed the table"));
        }
    }
    Ok((is_old && !is_new, is_new && !is_old))
}

/// Enumerates every cut of a recorded transition; returns (cuts checked, violations).
fn verify(r: &Recorded) -> (usize, Vec<String>) {
    let cuts = enumerate_cuts(&r.ops);
    let mut violations = Vec::new();
    let (mut saw_old, mut saw_new) = (false, false);
    for cut in &cuts {
        match check_cut(r, cut) {
            Ok((o, n)) => {
                saw_old |= o;
                saw_new |= n;
            }
            Err(v) => violations.push(v),
        }
    }
    if violations.is_empty() && !(saw_old && saw_new) {
        violations.push(format!(
            "{}: cuts never showed both the old and the new state",
            r.transition
        ));
    }
    (cuts.len(), violations)
}

/// Records `t`, checks every cut, and returns the image after it and the number of cuts.
fn check_transition(image: Vec<u8>, active: SetId, t: Transition) -> (Vec<u8>, usize) {
    let r = record(image, active, t);
    let writes = r
        .ops
        .iter()
        .filter(|o| matches!(o, Op::Write { .. }))
        .count();
    let syncs = r.ops.len() - writes;
    assert!(
        writes >= 4 && syncs >= 2,
        "{t}: expected two copies and two flushes, got {writes} writes {syncs} flushes"
    );
    let (n, violations) = verify(&r);
    assert!(
        violations.is_empty(),
        "{} violations, first: {}",
        violations.len(),
        violations[0]
    );
    (r.after, n)
}

/// Sets BOOT A/B and PRIVATE attribute words directly (the installer's or the test's doing),
/// with unrelated bits set everywhere to prove they survive.
fn seed_state(image: &mut Vec<u8>, a: SetState, b: SetState) {
    let mut disk = RecordingDisk {
        data: std::mem::take(image),
        ops: RefCell::new(Vec::new()),
    };
    let sp = Signpost::from_io(&mut disk, "seed.img", SetId::A).unwrap();
    let f = sp.flags();
    drop(sp);
    let mut table = read_gpt(&disk).unwrap().table;
    for (number, word) in [
        (f.a.number, a.apply_to(0x8000_0000_0000_0005)),
        (f.b.unwrap().number, b.apply_to(0x4000_0000_0000_0004)),
        (f.private.unwrap().number, 0x2000_0000_0000_0001),
    ] {
        table.entry_mut(number).unwrap().attributes = word;
    }
    write_gpt(&mut disk, &table).unwrap();
    *image = disk.data;
}

/// GRUB's side of a boot: pick the next set, decrement its tries, write the GPT.
fn grub_boot(image: &mut Vec<u8>) -> SetId {
    let mut disk = RecordingDisk {
        data: std::mem::take(image),
        ops: RefCell::new(Vec::new()),
    };
    let flags = Signpost::from_io(&mut disk, "grub.img", SetId::A)
        .unwrap()
        .flags();
    let next = flags.next_boot().expect("GRUB found no bootable set");
    let p = flags.partition(next).unwrap();
    let mut s = SetState::from_attributes(p.attributes);
    s.tries_left = s.tries_left.saturating_sub(1);
    let mut table = read_gpt(&disk).unwrap().table;
    table.entry_mut(p.number).unwrap().attributes = s.apply_to(p.attributes);
    write_gpt(&mut disk, &table).unwrap();
    *image = disk.data;
    next
}

fn base_image() -> Vec<u8> {
    base_image_with(512)
}

fn base_image_with(sector_size: u64) -> Vec<u8> {
    let img = fixtures::disk::DiskImageBuilder::new()
        .sector_size(sector_size)
        .build_temp()
        .unwrap();
    img.bytes().unwrap()
}

#[test]
fn every_power_cut_in_every_transition_reads_as_old_or_new() {
    lifecycle(base_image());
}

/// The same proof on a 4096-byte-sector disk (a GPT sector is then torn at eight 512-byte
/// boundaries).
#[test]
fn every_power_cut_on_a_4k_sector_disk_reads_as_old_or_new() {
    lifecycle(base_image_with(4096));
}

fn lifecycle(mut image: Vec<u8>) {
    seed_state(
        &mut image,
        SetState::new(2, 0, true).unwrap(),
        // The previous version, which booted fine once.
        SetState::new(1, 0, true).unwrap(),
    );
    // The update lifecycle, with the bootloader's own writes in between; every transition is
    // covered at least once, from both sides.
    let mut active = SetId::A;
    let mut total = 0;
    let mut covered = std::collections::BTreeSet::new();
    let steps: &[Option<Transition>] = &[
        Some(Transition::ClearInactive),
        Some(Transition::MarkInactiveValid),
        Some(Transition::UpgradeToInactive),
        Some(Transition::CancelUpgrade),
        Some(Transition::UpgradeToInactive),
        None, // reboot into B
        Some(Transition::MarkSuccessfulBoot),
        Some(Transition::RollbackToInactive),
        None, // reboot into A (already marked successful before)
        Some(Transition::ClearInactive),
        Some(Transition::MarkInactiveValid),
        Some(Transition::UpgradeToInactive),
        None, // reboot into B, which never marks itself successful
        Some(Transition::RollbackToInactive),
    ];
    for step in steps {
        match step {
            Some(t) => {
                let (next, n) = check_transition(std::mem::take(&mut image), active, *t);
                image = next;
                total += n;
                covered.insert(t.name());
                println!("{t} (active {active}): {n} cut points checked");
            }
            None => active = grub_boot(&mut image),
        }
    }
    assert_eq!(
        covered.len(),
        Transition::ALL.len(),
        "not every transition covered"
    );
    println!("total: {total} cut points checked, each old-or-new with a bootable set");
    assert!(total > 500, "suspiciously few cut points: {total}");
}

/// The proof can fail: the same enumeration on a writer that skips the flush between the two
/// copies (so both copies may be half-written at once) finds cuts with no readable GPT.
#[test]
fn the_checker_catches_a_writer_without_the_middle_flush() {
    let mut image = base_image();
    seed_state(
        &mut image,
        SetState::new(2, 0, true).unwrap(),
        SetState::new(1, 0, true).unwrap(),
    );
    let mut r = record(image, SetId::A, Transition::ClearInactive);
    let first_sync = r.ops.iter().position(|o| matches!(o, Op::Sync)).unwrap();
    r.ops.remove(first_sync);
    let (n, violations) = verify(&r);
    println!(
        "unsafe writer: {} of {n} cuts violate the invariant",
        violations.len()
    );
    assert!(
        violations.iter().any(|v| v.contains("unreadable")),
        "an unsafe write order went unnoticed: {violations:?}"
    );
}
