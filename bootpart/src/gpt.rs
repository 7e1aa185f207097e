//! Reading and writing the GUID partition table, with CRC checks, backup fallback and a
//! crash-safe write order.
//!
//! Reading checks both copies (signature, revision, header size, header CRC, location fields,
//! entry size 128, entry-array CRC, entries inside the usable range and not overlapping, every
//! referenced sector inside the disk). The primary copy is used when it is valid; otherwise the
//! backup is used and [`GptRead::used`] says so. When neither is valid the error names what was
//! wrong with each copy.
//!
//! Writing ([`write_gpt`]) writes the full primary copy (entry array, then header), flushes, then
//! the full backup copy (entry array, then header) and flushes again. A power cut at any point
//! leaves at least one copy with valid CRCs holding either the old or the new table.

use std::fmt;
use std::io;

use crate::guid::Guid;
use crate::io::BlockIo;

/// The 8-byte signature at the start of a GPT header.
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// GPT revision 1.0, the only one written.
pub const REVISION_1_0: u32 = 0x0001_0000;
/// The size of a partition entry; other sizes are rejected.
pub const ENTRY_SIZE: u32 = 128;
/// The most entry slots accepted in a table (bounds the entry-array allocation to 512 KiB).
pub const MAX_ENTRIES: u32 = 4096;
/// The size of the header fields we write (the rest of the header sector is zero).
const HEADER_SIZE: u32 = 92;

/// Which of the two GPT copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum GptCopy {
    /// The copy at LBA 1 (header) and LBA 2.. (entries).
    Primary,
    /// The copy at the end of the disk.
    Backup,
}

impl fmt::Display for GptCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary",
            GptCopy::Backup => "backup",
        })
    }
}

/// A partition name: 36 UTF-16LE code units, kept exactly as stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionName([u16; 36]);

impl PartitionName {
    /// The name as text (stops at the first NUL; invalid UTF-16 is replaced).
    pub fn to_string_lossy(&self) -> String {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        String::from_utf16_lossy(&self.0[..end])
    }

    /// The raw UTF-16 code units.
    pub fn as_units(&self) -> &[u16; 36] {
        &self.0
    }
}

impl From<&str> for PartitionName {
    /// Encodes as UTF-16, truncating to 36 code units.
    fn from(s: &str) -> Self {
        let mut units = [0u16; 36];
        for (slot, u) in units.iter_mut().zip(s.encode_utf16()) {
            *slot = u;
        }
        PartitionName(units)
    }
}

impl fmt::Display for PartitionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl fmt::Debug for PartitionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

impl serde::Serialize for PartitionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string_lossy())
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// 1-based partition number (the entry's slot in the array).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub unique_guid: Guid,
    /// First sector (inclusive).
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// The 64 attribute bits, exactly as stored.
    pub attributes: u64,
    /// Partition name.
    pub name: PartitionName,
}

impl GptEntry {
    /// Number of sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }

    fn parse(number: u32, raw: &[u8]) -> Option<GptEntry> {
        let type_guid = Guid::from_disk_bytes(arr16(raw, 0));
        if type_guid.is_zero() {
            return None;
        }
        let mut units = [0u16; 36];
        for (i, u) in units.iter_mut().enumerate() {
            *u = u16::from_le_bytes([raw[56 + 2 * i], raw[57 + 2 * i]]);
        }
        Some(GptEntry {
            number,
            type_guid,
            unique_guid: Guid::from_disk_bytes(arr16(raw, 16)),
            first_lba: le64(raw, 32),
            last_lba: le64(raw, 40),
            attributes: le64(raw, 48),
            name: PartitionName(units),
        })
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.type_guid.to_disk_bytes());
        out[16..32].copy_from_slice(&self.unique_guid.to_disk_bytes());
        out[32..40].copy_from_slice(&self.first_lba.to_le_bytes());
        out[40..48].copy_from_slice(&self.last_lba.to_le_bytes());
        out[48..56].copy_from_slice(&self.attributes.to_le_bytes());
        for (i, u) in self.name.0.iter().enumerate() {
            out[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
}

/// A partition table: the header fields that matter plus the used entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptTable {
    /// Logical sector size in bytes (512 or 4096).
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First sector partitions may use.
    pub first_usable_lba: u64,
    /// Last sector partitions may use.
    pub last_usable_lba: u64,
    /// Where the primary entry array starts (normally 2).
    pub primary_entries_lba: u64,
    /// Where the backup header is (normally the last sector).
    pub backup_header_lba: u64,
    /// Where the backup entry array starts.
    pub backup_entries_lba: u64,
    /// Number of entry slots in the array (partition numbers go up to this).
    pub entry_slots: u32,
    /// Used entries, ordered by partition number.
    pub entries: Vec<GptEntry>,
}

impl GptTable {
    /// The entry with this 1-based partition number.
    pub fn entry(&self, number: u32) -> Option<&GptEntry> {
        self.entries.iter().find(|e| e.number == number)
    }

    /// The entry with this 1-based partition number, mutably.
    pub fn entry_mut(&mut self, number: u32) -> Option<&mut GptEntry> {
        self.entries.iter_mut().find(|e| e.number == number)
    }

    /// Sectors taken by one entry array.
    pub fn entry_array_sectors(&self) -> u64 {
        entry_array_sectors(self.entry_slots, self.sector_size)
    }

    /// The entry array, `entry_slots * 128` bytes.
    pub fn encode_entries(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.entry_slots as usize * ENTRY_SIZE as usize];
        for e in &self.entries {
            // Entries whose number is outside 1..=entry_slots have no slot (and `validate`
            // rejects them before any write).
            let Some(index) = (e.number as usize).checked_sub(1) else {
                continue;
            };
            let start = index * ENTRY_SIZE as usize;
            if let Some(slot) = buf.get_mut(start..start + ENTRY_SIZE as usize) {
                e.encode(slot);
            }
        }
        buf
    }

    /// Check the table is consistent before it is written (or after it was read): sector size,
    /// slot count, usable range, entries inside it and not overlapping, numbers unique and in
    /// range, and every structure inside a disk of `disk_len` bytes.
    pub fn validate(&self, disk_len: u64) -> Result<(), TableProblem> {
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(TableProblem::SectorSize(self.sector_size));
        }
        if self.entry_slots == 0 || self.entry_slots > MAX_ENTRIES {
            return Err(TableProblem::EntrySlots(self.entry_slots));
        }
        let disk_sectors = disk_len / self.sector_size;
        let array = self.entry_array_sectors();
        let check_in_disk =
            |what: &'static str, first: u64, count: u64| match first.checked_add(count) {
                Some(end) if first >= 1 && end <= disk_sectors => Ok(()),
                _ => Err(TableProblem::BeyondDisk {
                    what,
                    lba: first.saturating_add(count).saturating_sub(1),
                    disk_sectors,
                }),
            };
        check_in_disk("backup header", self.backup_header_lba, 1)?;
        check_in_disk("primary entry array", self.primary_entries_lba, array)?;
        check_in_disk("backup entry array", self.backup_entries_lba, array)?;
        if self.primary_entries_lba < 2 || self.primary_entries_lba + array > self.first_usable_lba
        {
            return Err(TableProblem::Layout(format!(
                "primary entry array at LBA {} ({} sectors) overlaps LBA 0-1 or the usable range starting at {}",
                self.primary_entries_lba, array, self.first_usable_lba
            )));
        }
        if self.first_usable_lba > self.last_usable_lba {
            return Err(TableProblem::Layout(format!(
                "first usable LBA {} is after last usable LBA {}",
                self.first_usable_lba, self.last_usable_lba
            )));
        }
        if self.backup_entries_lba <= self.last_usable_lba
            || self.backup_entries_lba + array > self.backup_header_lba
        {
            return Err(TableProblem::Layout(format!(
                "backup entry array at LBA {} ({} sectors) overlaps the usable range ending at {} or the backup header at {}",
                self.backup_entries_lba, array, self.last_usable_lba, self.backup_header_lba
            )));
        }
        let mut sorted: Vec<&GptEntry> = self.entries.iter().collect();
        for e in &sorted {
            if e.number == 0 || e.number > self.entry_slots {
                return Err(TableProblem::EntryNumber {
                    number: e.number,
                    slots: self.entry_slots,
                });
            }
            if e.type_guid.is_zero() {
                return Err(TableProblem::ZeroType(e.number));
            }
            if e.first_lba > e.last_lba
                || e.first_lba < self.first_usable_lba
                || e.last_lba > self.last_usable_lba
            {
                return Err(TableProblem::OutsideUsable {
                    number: e.number,
                    first: e.first_lba,
                    last: e.last_lba,
                    usable_first: self.first_usable_lba,
                    usable_last: self.last_usable_lba,
                });
            }
        }
        sorted.sort_by_key(|e| e.number);
        for w in sorted.windows(2) {
            if w[0].number == w[1].number {
                return Err(TableProblem::DuplicateNumber(w[0].number));
            }
        }
        sorted.sort_by_key(|e| (e.first_lba, e.number));
        for w in sorted.windows(2) {
            if w[1].first_lba <= w[0].last_lba {
                return Err(TableProblem::Overlap {
                    a: w[0].number,
                    a_range: (w[0].first_lba, w[0].last_lba),
                    b: w[1].number,
                    b_range: (w[1].first_lba, w[1].last_lba),
                });
            }
        }
        Ok(())
    }

    /// Whether two tables describe the same partitions (ignoring where the copies live).
    fn same_content(&self, other: &GptTable) -> bool {
        self.disk_guid == other.disk_guid
            && self.first_usable_lba == other.first_usable_lba
            && self.last_usable_lba == other.last_usable_lba
            && self.entry_slots == other.entry_slots
            && self.entries == other.entries
    }

    fn header_bytes(&self, copy: GptCopy, entries_crc: u32) -> Vec<u8> {
        let (my_lba, alt_lba, entries_lba) = match copy {
            GptCopy::Primary => (1, self.backup_header_lba, self.primary_entries_lba),
            GptCopy::Backup => (self.backup_header_lba, 1, self.backup_entries_lba),
        };
        let mut h = vec![0u8; self.sector_size as usize];
        h[0..8].copy_from_slice(&SIGNATURE);
        h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&u64::to_le_bytes(my_lba));
        h[32..40].copy_from_slice(&u64::to_le_bytes(alt_lba));
        h[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_disk_bytes());
        h[72..80].copy_from_slice(&u64::to_le_bytes(entries_lba));
        h[80..84].copy_from_slice(&self.entry_slots.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// What is inconsistent in a partition table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableProblem {
    /// Only 512- and 4096-byte sectors are supported.
    #[error("unsupported sector size {0} (expected 512 or 4096)")]
    SectorSize(u64),
    /// The number of entry slots is zero or above [`MAX_ENTRIES`].
    #[error("{0} partition entry slots (expected 1..={MAX_ENTRIES})")]
    EntrySlots(u32),
    /// A structure lies (partly) beyond the end of the disk.
    #[error(
        "the {what} reaches LBA {lba} but the disk has only {disk_sectors} sectors (truncated disk?)"
    )]
    BeyondDisk {
        /// Which structure.
        what: &'static str,
        /// The last sector it needs.
        lba: u64,
        /// Sectors on the disk.
        disk_sectors: u64,
    },
    /// Header areas, entry arrays and the usable range do not fit together.
    #[error("inconsistent layout: {0}")]
    Layout(String),
    /// An entry's number is 0 or above the slot count.
    #[error("partition number {number} is outside 1..={slots}")]
    EntryNumber {
        /// The number.
        number: u32,
        /// Slots in the table.
        slots: u32,
    },
    /// Two entries share a number.
    #[error("partition number {0} appears twice")]
    DuplicateNumber(u32),
    /// A used entry with the zero type GUID.
    #[error("partition {0} has the all-zero type GUID")]
    ZeroType(u32),
    /// An entry outside the usable range (or with first > last).
    #[error(
        "partition {number} spans LBA {first}-{last}, outside the usable range {usable_first}-{usable_last}"
    )]
    OutsideUsable {
        /// Partition number.
        number: u32,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
        /// First usable LBA.
        usable_first: u64,
        /// Last usable LBA.
        usable_last: u64,
    },
    /// Two partitions share sectors.
    #[error("partitions {a} (LBA {}-{}) and {b} (LBA {}-{}) overlap", a_range.0, a_range.1, b_range.0, b_range.1)]
    Overlap {
        /// One partition.
        a: u32,
        /// Its range.
        a_range: (u64, u64),
        /// The other partition.
        b: u32,
        /// Its range.
        b_range: (u64, u64),
    },
}

/// Why one GPT copy was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CopyProblem {
    /// No "EFI PART" signature where the header should be.
    #[error("no GPT signature at LBA {0}")]
    BadSignature(u64),
    /// Revision other than 1.x.
    #[error("unsupported GPT revision {0:#010x}")]
    Revision(u32),
    /// Header size below 92 or above the sector size.
    #[error("header size {0} is outside 92..=sector size")]
    HeaderSize(u32),
    /// Header CRC mismatch.
    #[error("header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of what is on disk.
        computed: u32,
    },
    /// The header's own LBA field does not match where it was found.
    #[error("header at LBA {found_at} says it lives at LBA {claims}")]
    WrongLba {
        /// Where it was read.
        found_at: u64,
        /// What its `my_lba` says.
        claims: u64,
    },
    /// The backup header does not point back at LBA 1.
    #[error("backup header points at LBA {0} for the primary header instead of 1")]
    WrongAlternate(u64),
    /// Entry size other than 128.
    #[error("partition entry size {0} is not supported (expected 128)")]
    EntrySize(u32),
    /// Entry-array CRC mismatch.
    #[error(
        "partition entry array CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    EntriesCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of what is on disk.
        computed: u32,
    },
    /// Read error or the disk ended.
    #[error("reading it failed: {0}")]
    Io(String),
    /// The table it describes is inconsistent.
    #[error(transparent)]
    Table(#[from] TableProblem),
}

/// State of one copy as found by [`read_gpt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStatus {
    /// Valid and identical in content to the table in use.
    Valid,
    /// Valid CRCs but a different table than the one in use (an interrupted write).
    Stale,
    /// Not usable, and why.
    Invalid(CopyProblem),
}

/// The result of reading a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptRead {
    /// The table in use.
    pub table: GptTable,
    /// Which copy it came from.
    pub used: GptCopy,
    /// State of the primary copy.
    pub primary: CopyStatus,
    /// State of the backup copy.
    pub backup: CopyStatus,
}

impl GptRead {
    /// Whether the primary copy must be rewritten (it was invalid or stale).
    pub fn primary_needs_repair(&self) -> bool {
        self.primary != CopyStatus::Valid
    }

    /// Whether the backup copy must be rewritten (it was invalid or stale).
    pub fn backup_needs_repair(&self) -> bool {
        self.backup != CopyStatus::Valid
    }
}

/// Errors from reading or writing a GPT.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// Neither copy is usable.
    #[error("no valid GPT: primary copy: {primary}; backup copy: {backup}")]
    NoValidGpt {
        /// Why the primary was rejected.
        primary: CopyProblem,
        /// Why the backup was rejected.
        backup: CopyProblem,
    },
    /// The disk is too small to hold a GPT at all.
    #[error("disk of {len} bytes is too small to hold a GPT")]
    TooSmall {
        /// Disk length.
        len: u64,
    },
    /// The table handed to a write is inconsistent; nothing was written.
    #[error("refusing to write an inconsistent GPT (nothing written)")]
    InvalidTable(#[from] TableProblem),
    /// An I/O error while writing or flushing.
    #[error("GPT I/O failed while {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GptError {
    let what = what.into();
    move |source| GptError::Io { what, source }
}

fn crc32(data: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(data)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

fn entry_array_sectors(slots: u32, sector_size: u64) -> u64 {
    (u64::from(slots) * u64::from(ENTRY_SIZE)).div_ceil(sector_size)
}

/// The fields of a header that passed signature and CRC checks.
struct Header {
    my_lba: u64,
    alt_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    slots: u32,
    entries_crc: u32,
}

fn parse_header(sector: &[u8], at_lba: u64) -> Result<Header, CopyProblem> {
    if sector.len() < HEADER_SIZE as usize || sector[0..8] != SIGNATURE {
        return Err(CopyProblem::BadSignature(at_lba));
    }
    let revision = le32(sector, 8);
    if revision >> 16 != 1 {
        return Err(CopyProblem::Revision(revision));
    }
    let header_size = le32(sector, 12);
    if header_size < HEADER_SIZE || header_size as usize > sector.len() {
        return Err(CopyProblem::HeaderSize(header_size));
    }
    let stored = le32(sector, 16);
    let mut copy = sector[..header_size as usize].to_vec();
    copy[16..20].fill(0);
    let computed = crc32(&copy);
    if stored != computed {
        return Err(CopyProblem::HeaderCrc { stored, computed });
    }
    let my_lba = le64(sector, 24);
    if my_lba != at_lba {
        return Err(CopyProblem::WrongLba {
            found_at: at_lba,
            claims: my_lba,
        });
    }
    let entry_size = le32(sector, 84);
    if entry_size != ENTRY_SIZE {
        return Err(CopyProblem::EntrySize(entry_size));
    }
    let slots = le32(sector, 80);
    if slots == 0 || slots > MAX_ENTRIES {
        return Err(TableProblem::EntrySlots(slots).into());
    }
    Ok(Header {
        my_lba,
        alt_lba: le64(sector, 32),
        first_usable: le64(sector, 40),
        last_usable: le64(sector, 48),
        disk_guid: Guid::from_disk_bytes(arr16(sector, 56)),
        entries_lba: le64(sector, 72),
        slots,
        entries_crc: le32(sector, 88),
    })
}

fn read_sectors<D: BlockIo + ?Sized>(
    io: &D,
    lba: u64,
    count: u64,
    ss: u64,
) -> Result<Vec<u8>, CopyProblem> {
    let len = count
        .checked_mul(ss)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| CopyProblem::Io(format!("{count} sectors is too many")))?;
    let off = lba
        .checked_mul(ss)
        .ok_or_else(|| CopyProblem::Io(format!("LBA {lba} overflows")))?;
    let mut buf = vec![0u8; len];
    io.read_exact_at(&mut buf, off)
        .map_err(|e| CopyProblem::Io(format!("{count} sectors at LBA {lba}: {e}")))?;
    Ok(buf)
}

/// Read and check one copy whose header is at `header_lba`.
fn read_copy<D: BlockIo + ?Sized>(
    io: &D,
    copy: GptCopy,
    header_lba: u64,
    ss: u64,
    disk_len: u64,
) -> Result<(GptTable, Header), CopyProblem> {
    let disk_sectors = disk_len / ss;
    if header_lba >= disk_sectors {
        return Err(TableProblem::BeyondDisk {
            what: "header",
            lba: header_lba,
            disk_sectors,
        }
        .into());
    }
    let sector = read_sectors(io, header_lba, 1, ss)?;
    let h = parse_header(&sector, header_lba)?;
    if copy == GptCopy::Backup && h.alt_lba != 1 {
        return Err(CopyProblem::WrongAlternate(h.alt_lba));
    }
    let array = entry_array_sectors(h.slots, ss);
    match h.entries_lba.checked_add(array) {
        Some(end) if h.entries_lba >= 1 && end <= disk_sectors => {}
        _ => {
            return Err(TableProblem::BeyondDisk {
                what: "entry array",
                lba: h.entries_lba.saturating_add(array).saturating_sub(1),
                disk_sectors,
            }
            .into());
        }
    }
    let raw = read_sectors(io, h.entries_lba, array, ss)?;
    let array_bytes = h.slots as usize * ENTRY_SIZE as usize;
    let computed = crc32(&raw[..array_bytes]);
    if computed != h.entries_crc {
        return Err(CopyProblem::EntriesCrc {
            stored: h.entries_crc,
            computed,
        });
    }
    let entries: Vec<GptEntry> = raw[..array_bytes]
        .chunks_exact(ENTRY_SIZE as usize)
        .zip(1u32..)
        .filter_map(|(chunk, n)| GptEntry::parse(n, chunk))
        .collect();
    let (primary_entries_lba, backup_header_lba, backup_entries_lba) = match copy {
        // The primary header does not say where the backup entries are; the usual place is
        // right before the backup header. Overridden below when the backup copy is valid.
        GptCopy::Primary => (h.entries_lba, h.alt_lba, h.alt_lba.saturating_sub(array)),
        GptCopy::Backup => (2, h.my_lba, h.entries_lba),
    };
    let table = GptTable {
        sector_size: ss,
        disk_guid: h.disk_guid,
        first_usable_lba: h.first_usable,
        last_usable_lba: h.last_usable,
        primary_entries_lba,
        backup_header_lba,
        backup_entries_lba,
        entry_slots: h.slots,
        entries,
    };
    table.validate(disk_len)?;
    Ok((table, h))
}

/// Find the sector size by looking for a header signature (primary, then backup) at 512 and
/// 4096 bytes per sector; 512 when none is found.
fn detect_sector_size<D: BlockIo + ?Sized>(io: &D, disk_len: u64) -> u64 {
    let has_sig = |off: u64| {
        let mut sig = [0u8; 8];
        io.read_exact_at(&mut sig, off).is_ok() && sig == SIGNATURE
    };
    for ss in [512u64, 4096] {
        if disk_len >= 2 * ss && has_sig(ss) {
            return ss;
        }
    }
    for ss in [512u64, 4096] {
        if disk_len >= 2 * ss && has_sig((disk_len / ss - 1) * ss) {
            return ss;
        }
    }
    512
}

/// Read the GPT, detecting the sector size (512 or 4096) from where the signature is.
///
/// # Example
///
/// ```no_run
/// use bootpart::gpt::{read_gpt, GptCopy};
///
/// let file = std::fs::File::open("disk.img")?;
/// let read = read_gpt(&file)?;
/// if read.used == GptCopy::Backup {
///     eprintln!("primary GPT is damaged: {:?}", read.primary);
/// }
/// for e in &read.table.entries {
///     println!("{} {} {}-{}", e.number, e.type_guid, e.first_lba, e.last_lba);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_gpt<D: BlockIo + ?Sized>(io: &D) -> Result<GptRead, GptError> {
    let len = io.len().map_err(io_err("getting the disk size"))?;
    let ss = detect_sector_size(io, len);
    read_gpt_with_sector_size(io, ss)
}

/// Read the GPT assuming this sector size.
pub fn read_gpt_with_sector_size<D: BlockIo + ?Sized>(
    io: &D,
    sector_size: u64,
) -> Result<GptRead, GptError> {
    let len = io.len().map_err(io_err("getting the disk size"))?;
    // Protective MBR, primary header, one entry sector, one usable sector, backup entries and
    // header: anything smaller cannot hold a GPT.
    if sector_size == 0 || len / sector_size < 6 {
        return Err(GptError::TooSmall { len });
    }
    let last_lba = len / sector_size - 1;
    let primary = read_copy(io, GptCopy::Primary, 1, sector_size, len);
    // The backup header is where the primary says it is; when the primary cannot be trusted,
    // at the last sector.
    let backup_lba = match &primary {
        Ok((_, h)) => h.alt_lba,
        Err(_) => last_lba,
    };
    let backup = read_copy(io, GptCopy::Backup, backup_lba, sector_size, len);
    match (primary, backup) {
        (Ok((mut p, _)), Ok((b, _))) => {
            let backup_status = if p.same_content(&b) {
                p.backup_entries_lba = b.backup_entries_lba;
                CopyStatus::Valid
            } else {
                CopyStatus::Stale
            };
            Ok(GptRead {
                table: p,
                used: GptCopy::Primary,
                primary: CopyStatus::Valid,
                backup: backup_status,
            })
        }
        (Ok((p, _)), Err(e)) => Ok(GptRead {
            table: p,
            used: GptCopy::Primary,
            primary: CopyStatus::Valid,
            backup: CopyStatus::Invalid(e),
        }),
        (Err(e), Ok((b, _))) => Ok(GptRead {
            table: b,
            used: GptCopy::Backup,
            primary: CopyStatus::Invalid(e),
            backup: CopyStatus::Valid,
        }),
        (Err(primary), Err(backup)) => Err(GptError::NoValidGpt { primary, backup }),
    }
}

/// Write one full copy (entry array, then header) without flushing.
fn write_copy<D: BlockIo + ?Sized>(
    io: &mut D,
    table: &GptTable,
    copy: GptCopy,
    entries: &[u8],
) -> Result<(), GptError> {
    let ss = table.sector_size;
    let mut array = entries.to_vec();
    array.resize((table.entry_array_sectors() * ss) as usize, 0);
    let entries_crc = crc32(entries);
    let header = table.header_bytes(copy, entries_crc);
    let (header_lba, entries_lba) = match copy {
        GptCopy::Primary => (1, table.primary_entries_lba),
        GptCopy::Backup => (table.backup_header_lba, table.backup_entries_lba),
    };
    io.write_all_at(&array, entries_lba * ss)
        .map_err(io_err(format!("writing the {copy} entry array")))?;
    io.write_all_at(&header, header_lba * ss)
        .map_err(io_err(format!("writing the {copy} header")))?;
    Ok(())
}

fn checked_table<D: BlockIo + ?Sized>(io: &D, table: &GptTable) -> Result<(), GptError> {
    let len = io.len().map_err(io_err("getting the disk size"))?;
    table.validate(len)?;
    Ok(())
}

/// Write both copies crash-safely: primary entry array, primary header, flush; backup entry
/// array, backup header, flush. CRCs are computed here. The table is validated first; when it
/// is inconsistent nothing is written.
///
/// # Example
///
/// ```no_run
/// use bootpart::gpt::{read_gpt, write_gpt};
///
/// let mut file = std::fs::OpenOptions::new().read(true).write(true).open("disk.img")?;
/// let mut table = read_gpt(&file)?.table;
/// if let Some(boot) = table.entry_mut(2) {
///     boot.attributes |= 1 << 56;
/// }
/// write_gpt(&mut file, &table)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_gpt<D: BlockIo + ?Sized>(io: &mut D, table: &GptTable) -> Result<(), GptError> {
    checked_table(io, table)?;
    let entries = table.encode_entries();
    write_copy(io, table, GptCopy::Primary, &entries)?;
    io.sync_data()
        .map_err(io_err("flushing the primary copy"))?;
    write_copy(io, table, GptCopy::Backup, &entries)?;
    io.sync_data().map_err(io_err("flushing the backup copy"))?;
    Ok(())
}

/// Rewrite only the primary copy from `table` (after [`read_gpt`] had to use the backup), then
/// flush.
pub fn repair_primary<D: BlockIo + ?Sized>(io: &mut D, table: &GptTable) -> Result<(), GptError> {
    checked_table(io, table)?;
    write_copy(io, table, GptCopy::Primary, &table.encode_entries())?;
    io.sync_data()
        .map_err(io_err("flushing the repaired primary copy"))
}

/// Rewrite only the backup copy from `table` (when it was invalid or stale), then flush.
pub fn repair_backup<D: BlockIo + ?Sized>(io: &mut D, table: &GptTable) -> Result<(), GptError> {
    checked_table(io, table)?;
    write_copy(io, table, GptCopy::Backup, &table.encode_entries())?;
    io.sync_data()
        .map_err(io_err("flushing the repaired backup copy"))
}

/// Repair whichever copy [`read_gpt`] found invalid or stale, from the copy in use. Does nothing
/// when both are valid. Returns the copies rewritten.
pub fn repair<D: BlockIo + ?Sized>(io: &mut D, read: &GptRead) -> Result<Vec<GptCopy>, GptError> {
    let mut fixed = Vec::new();
    if read.primary_needs_repair() {
        repair_primary(io, &read.table)?;
        fixed.push(GptCopy::Primary);
    }
    if read.backup_needs_repair() {
        repair_backup(io, &read.table)?;
        fixed.push(GptCopy::Backup);
    }
    Ok(fixed)
}

/// A fresh, empty table filling a disk of `disk_len` bytes with the usual layout: 128 slots,
/// primary entries at LBA 2, backup entries right before the backup header in the last sector.
pub fn new_table(disk_len: u64, sector_size: u64, disk_guid: Guid) -> Result<GptTable, GptError> {
    let slots = 128u32;
    let array = entry_array_sectors(slots, sector_size);
    let sectors = disk_len / sector_size.max(1);
    if sector_size == 0 || sectors < 2 * array + 4 {
        return Err(GptError::TooSmall { len: disk_len });
    }
    let table = GptTable {
        sector_size,
        disk_guid,
        first_usable_lba: 2 + array,
        last_usable_lba: sectors - 2 - array,
        primary_entries_lba: 2,
        backup_header_lba: sectors - 1,
        backup_entries_lba: sectors - 1 - array,
        entry_slots: slots,
        entries: Vec::new(),
    };
    table.validate(disk_len)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guid::PartitionType;
    use crate::io::MemDisk;

    fn sample(len: u64) -> (MemDisk, GptTable) {
        let mut t = new_table(len, 512, Guid::from_u128(0x1234)).unwrap();
        let start = t.first_usable_lba;
        for (i, ty) in PartitionType::ALL.into_iter().enumerate() {
            let i = i as u64;
            t.entries.push(GptEntry {
                number: i as u32 + 1,
                type_guid: ty.guid(),
                unique_guid: Guid::from_u128(0xabc0 + u128::from(i)),
                first_lba: start + i * 16,
                last_lba: start + i * 16 + 15,
                attributes: 0xdead_0000_0000_0001 ^ (i << 48),
                name: ty.name().into(),
            });
        }
        let mut d = MemDisk::new(len as usize);
        write_gpt(&mut d, &t).unwrap();
        (d, t)
    }

    #[test]
    fn round_trip_and_both_copies_valid() {
        let (d, t) = sample(1 << 20);
        let r = read_gpt(&d).unwrap();
        assert_eq!(r.used, GptCopy::Primary);
        assert_eq!(r.primary, CopyStatus::Valid);
        assert_eq!(r.backup, CopyStatus::Valid);
        assert_eq!(r.table, t);
        assert_eq!(r.table.entry(1).unwrap().name.to_string_lossy(), "BOOT");
    }

    #[test]
    fn bad_primary_header_crc_uses_backup() {
        let (mut d, t) = sample(1 << 20);
        d.as_bytes_mut()[512 + 40] ^= 1;
        let r = read_gpt(&d).unwrap();
        assert_eq!(r.used, GptCopy::Backup);
        assert!(matches!(
            r.primary,
            CopyStatus::Invalid(CopyProblem::HeaderCrc { .. })
        ));
        assert!(r.primary_needs_repair());
        assert_eq!(r.table, t);
        repair(&mut d, &r).unwrap();
        let r2 = read_gpt(&d).unwrap();
        assert_eq!(r2.used, GptCopy::Primary);
        assert_eq!(r2.primary, CopyStatus::Valid);
        assert_eq!(r2.backup, CopyStatus::Valid);
    }

    #[test]
    fn bad_primary_entries_crc_uses_backup() {
        let (mut d, _) = sample(1 << 20);
        d.as_bytes_mut()[1024 + 48] ^= 0x80;
        let r = read_gpt(&d).unwrap();
        assert_eq!(r.used, GptCopy::Backup);
        assert!(matches!(
            r.primary,
            CopyStatus::Invalid(CopyProblem::EntriesCrc { .. })
        ));
    }

    #[test]
    fn stale_backup_is_reported() {
        let (mut d, mut t) = sample(1 << 20);
        t.entries[0].attributes ^= 1 << 56;
        let entries = t.encode_entries();
        write_copy(&mut d, &t, GptCopy::Primary, &entries).unwrap();
        let r = read_gpt(&d).unwrap();
        assert_eq!(r.used, GptCopy::Primary);
        assert_eq!(r.backup, CopyStatus::Stale);
        assert_eq!(r.table, t);
    }

    #[test]
    fn both_bad_names_both() {
        let (mut d, _) = sample(1 << 20);
        d.as_bytes_mut()[512] = b'X';
        let len = d.as_bytes().len();
        d.as_bytes_mut()[len - 512 + 40] ^= 1;
        let err = read_gpt(&d).unwrap_err().to_string();
        assert!(
            err.contains("primary copy: no GPT signature at LBA 1"),
            "{err}"
        );
        assert!(err.contains("backup copy: header CRC mismatch"), "{err}");
    }

    #[test]
    fn write_refuses_overlap_and_writes_nothing() {
        let (mut d, mut t) = sample(1 << 20);
        let before = d.clone();
        t.entries[1].first_lba = t.entries[0].last_lba;
        let err = write_gpt(&mut d, &t).unwrap_err();
        assert!(fixtures::error_chain(&err).contains("overlap"), "{err}");
        assert_eq!(d, before);
    }
}
