//! GPT reading and writing against real disk images built by `fixtures::disk` (written with
//! gptman), cross-checked with `sgdisk` and `cgpt` where they are installed.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::process::Command;

use bootpart::gpt::{CopyStatus, GptCopy, read_gpt, write_gpt};
use bootpart::io::{BlockIo, MemDisk};
use bootpart::{Guid, PartitionType};
use fixtures::disk::{DiskImageBuilder, PartKind, sgdisk_verify_ok};

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn tool_output(cmd: &str, args: &[&str], path: &Path) -> Option<String> {
    match Command::new(cmd).args(args).arg(path).output() {
        Ok(out) => Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fixtures::gate::skip(format!("{cmd} is not installed: no {cmd} check"));
            None
        }
        Err(e) => panic!("{cmd}: {e}"),
    }
}

fn kind_type(kind: PartKind) -> PartitionType {
    match kind {
        PartKind::Boot => PartitionType::Boot,
        PartKind::Root => PartitionType::Root,
        PartKind::Hash => PartitionType::Hash,
        PartKind::Reserved => PartitionType::Reserved,
        PartKind::Private => PartitionType::Private,
        PartKind::Data => PartitionType::Data,
    }
}

#[test]
fn reads_what_gptman_wrote() {
    let img = DiskImageBuilder::new()
        .attributes(1, 0x8001_0000_0000_0004)
        .attributes(9, 1 << 57)
        .build_temp()
        .unwrap();
    let read = read_gpt(&File::open(&img.path).unwrap()).unwrap();
    assert_eq!(read.used, GptCopy::Primary);
    assert_eq!(read.primary, CopyStatus::Valid);
    assert_eq!(read.backup, CopyStatus::Valid);
    let t = &read.table;
    assert_eq!(t.sector_size, 512);
    assert_eq!(t.entries.len(), img.partitions.len());
    for (e, p) in t.entries.iter().zip(&img.partitions) {
        assert_eq!(e.number, p.number);
        assert_eq!(
            e.type_guid,
            kind_type(p.kind).guid(),
            "partition {}",
            p.number
        );
        assert_eq!((e.first_lba, e.last_lba), (p.first_lba, p.last_lba));
        assert_eq!(e.attributes, p.attributes);
        assert_eq!(e.name.to_string_lossy(), p.name);
    }
    assert_eq!(t.entry(1).unwrap().attributes, 0x8001_0000_0000_0004);
}

#[test]
fn reads_4k_sector_images() {
    let img = DiskImageBuilder::new()
        .sector_size(4096)
        .build_temp()
        .unwrap();
    let read = read_gpt(&File::open(&img.path).unwrap()).unwrap();
    assert_eq!(read.table.sector_size, 4096);
    assert_eq!(read.table.entries.len(), 10);
    assert_eq!(
        read.table.entry(5).unwrap().first_lba,
        img.partitions[4].first_lba
    );
}

#[test]
fn written_table_passes_sgdisk_and_gptman_reads_exact_bits() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let mut f = rw(&img.path);
    let mut table = read_gpt(&f).unwrap().table;
    // Every attribute bit pattern survives: set odd bits everywhere, including 48-57.
    let pattern = 0xa5a5_5a5a_c3c3_3c3c_u64;
    for e in &mut table.entries {
        e.attributes = pattern.rotate_left(e.number);
    }
    write_gpt(&mut f, &table).unwrap();
    drop(f);
    sgdisk_verify_ok(&img.path).unwrap();

    let mut f = File::open(&img.path).unwrap();
    let g = gptman::GPT::read_from(&mut f, 512).unwrap();
    for (n, e) in g.iter().filter(|(_, e)| e.is_used()) {
        assert_eq!(e.attribute_bits, pattern.rotate_left(n), "partition {n}");
    }
    // And the backup copy independently: read it as gptman sees it when the primary is gone.
    let read = read_gpt(&f).unwrap();
    assert_eq!(read.table, table);
    assert_eq!(read.backup, CopyStatus::Valid);
}

#[test]
fn cgpt_reads_our_bits_and_we_read_cgpts() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let mut f = rw(&img.path);
    let mut table = read_gpt(&f).unwrap().table;
    // BOOT-A: priority 9, tries 4, successful.
    table.entry_mut(1).unwrap().attributes = (9 << 48) | (4 << 52) | (1 << 56);
    write_gpt(&mut f, &table).unwrap();
    drop(f);
    let Some(p) = tool_output("cgpt", &["show", "-i", "1", "-P"], &img.path) else {
        return;
    };
    assert_eq!(p.trim(), "9");
    let t = tool_output("cgpt", &["show", "-i", "1", "-T"], &img.path).unwrap();
    assert_eq!(t.trim(), "4");
    let s = tool_output("cgpt", &["show", "-i", "1", "-S"], &img.path).unwrap();
    assert_eq!(s.trim(), "1");

    // cgpt writes, we read.
    let out = tool_output(
        "cgpt",
        &["add", "-i", "5", "-P", "3", "-T", "15", "-S", "0"],
        &img.path,
    )
    .unwrap();
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let read = read_gpt(&File::open(&img.path).unwrap()).unwrap();
    assert_eq!(read.primary, CopyStatus::Valid);
    assert_eq!(read.backup, CopyStatus::Valid);
    let bits = read.table.entry(5).unwrap().attributes;
    assert_eq!((bits >> 48) & 0xf, 3);
    assert_eq!((bits >> 52) & 0xf, 15);
    assert_eq!((bits >> 56) & 1, 0);
    // cgpt left BOOT-A's bits alone.
    assert_eq!(
        read.table.entry(1).unwrap().attributes,
        (9 << 48) | (4 << 52) | (1 << 56)
    );
}

/// Records the order of writes and flushes.
struct Recorder {
    disk: MemDisk,
    log: Vec<String>,
}

impl BlockIo for Recorder {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.log
            .push(format!("write {} {}", offset / 512, buf.len() / 512));
        self.disk.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.log.push("sync".into());
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.disk.len()
    }
}

#[test]
fn write_order_is_primary_entries_header_sync_backup_entries_header_sync() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let mut rec = Recorder {
        disk: MemDisk::from_bytes(img.bytes().unwrap()),
        log: Vec::new(),
    };
    let table = read_gpt(&rec).unwrap().table;
    write_gpt(&mut rec, &table).unwrap();
    let last = img.len / 512 - 1;
    assert_eq!(
        rec.log,
        vec![
            "write 2 32".to_owned(),
            "write 1 1".into(),
            "sync".into(),
            format!("write {} 32", last - 32),
            format!("write {last} 1"),
            "sync".into(),
        ]
    );
    // Writing back what was read changes no byte (attribute bits, names, GUIDs all preserved).
    assert_eq!(rec.disk.as_bytes(), &img.bytes().unwrap()[..]);
}

#[test]
fn damaged_primary_falls_back_to_backup_and_repairs() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let mut f = rw(&img.path);
    // Zero the primary header.
    BlockIo::write_all_at(&mut f, &[0u8; 512], 512).unwrap();
    let read = read_gpt(&f).unwrap();
    assert_eq!(read.used, GptCopy::Backup);
    assert!(read.primary_needs_repair());
    assert!(!read.backup_needs_repair());
    assert_eq!(read.table.entries.len(), 10);
    assert!(sgdisk_verify_ok(&img.path).is_err() || which_absent("sgdisk"));
    bootpart::gpt::repair(&mut f, &read).unwrap();
    let again = read_gpt(&f).unwrap();
    assert_eq!(again.used, GptCopy::Primary);
    assert_eq!(again.primary, CopyStatus::Valid);
    assert_eq!(again.table, read.table);
    sgdisk_verify_ok(&img.path).unwrap();
}

fn which_absent(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_err()
}

#[test]
fn guid_type_is_what_sgdisk_prints() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let Some(text) = tool_output("sgdisk", &["-i", "9"], &img.path) else {
        return;
    };
    let guid: Guid = PartitionType::Private.guid();
    assert!(text.to_lowercase().contains(&guid.to_string()), "{text}");
}
