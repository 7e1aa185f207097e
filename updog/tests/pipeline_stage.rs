//! Staging images onto a partition of a disk-image file: correct bytes for the frame shapes
//! images come in, and each way a stream can be wrong is refused.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
use sha2::{Digest, Sha256};
use updog::pipeline::{
    CancelHandle, FrameError, IoMode, PartitionSink, Phase, Progress, Sink, StageError,
    StageOptions, StagedImage, TargetInfo, stage_image,
};

/// Bytes before the partition in the disk image, and the partition's size by default.
const PART_OFFSET: u64 = 1 << 20;
const FILL: u8 = 0xA5;

/// Deterministic data that compresses like a file system: text lines from a small vocabulary,
/// a repeated pseudo-random chunk (matches reaching across 64 KiB blocks) and an incompressible
/// run (stored blocks).
fn image_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = [
        "partition",
        "update",
        "lz4",
        "frame",
        "block",
        "kernel",
        "usr",
        "lib",
        "share",
        "etc",
        "bottlerocket",
        "signed",
        "target",
        "rollback",
        "wave",
    ];
    let mut out = Vec::with_capacity(len);
    let mut chunk = vec![0u8; 40 << 10];
    for b in &mut chunk {
        *b = next() as u8;
    }
    while out.len() < len {
        match next() % 8 {
            0 => out.extend_from_slice(&chunk),
            1 => {
                for _ in 0..(next() % 9000) {
                    out.push(next() as u8);
                }
            }
            _ => {
                for _ in 0..200 {
                    out.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
                    out.push(if next() % 10 == 0 { b'\n' } else { b' ' });
                }
            }
        }
    }
    out.truncate(len);
    out
}

fn compress(data: &[u8], info: FrameInfo) -> Vec<u8> {
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn expected_for(stream: &[u8]) -> TargetInfo {
    TargetInfo {
        length: stream.len() as u64,
        sha256: Sha256::digest(stream).into(),
    }
}

/// A disk image with one partition at `PART_OFFSET` of `part_len` bytes, everything filled
/// with `FILL`, and `after` more bytes past the partition.
struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    part_len: u64,
}

impl Disk {
    fn new(part_len: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let total = PART_OFFSET + part_len + (1 << 20);
        std::fs::write(&path, vec![FILL; total as usize]).unwrap();
        Self {
            _dir: dir,
            path,
            part_len,
        }
    }

    fn partition(&self, mode: IoMode) -> PartitionSink {
        // Partition 1, in 512-byte sectors (the test sizes are multiples of 512).
        let part = bootpart::Partition {
            number: 1,
            type_guid: bootpart::PartitionType::Root.guid(),
            unique_guid: bootpart::Guid::ZERO,
            name: "root".into(),
            first_lba: PART_OFFSET / 512,
            last_lba: (PART_OFFSET + self.part_len) / 512 - 1,
            attributes: 0,
            sector_size: 512,
            device_node: None,
        };
        PartitionSink::open_path(&self.path, &part, mode).unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// The disk outside `[PART_OFFSET, PART_OFFSET + written)` is still `FILL`.
    fn assert_untouched_outside(&self, written: u64) {
        let disk = self.bytes();
        let start = PART_OFFSET as usize;
        assert!(
            disk[..start].iter().all(|&b| b == FILL),
            "bytes before the partition changed"
        );
        let end = start + written as usize;
        if let Some(pos) = disk[end..].iter().position(|&b| b != FILL) {
            panic!(
                "byte {} after the written range changed (partition ends {} bytes after it)",
                pos,
                self.part_len - written
            );
        }
    }
}

fn stage(
    stream: Vec<u8>,
    expected: &TargetInfo,
    sink: &mut dyn Sink,
    opts: &StageOptions,
) -> Result<StagedImage, StageError> {
    stage_image(
        Box::new(io::Cursor::new(stream)),
        expected,
        sink,
        opts,
        &|_| {},
    )
}

fn stage_ok(data: &[u8], stream: Vec<u8>, part_len: u64, mode: IoMode, opts: &StageOptions) {
    let disk = Disk::new(part_len);
    let expected = expected_for(&stream);
    let mut part = disk.partition(mode);
    let staged = stage(stream, &expected, &mut part, opts).unwrap();
    assert_eq!(staged.decoded_len, data.len() as u64);
    assert_eq!(staged.compressed_len, expected.length);
    assert_eq!(staged.sha256, expected.sha256);
    assert_eq!(staged.digest, xxhash_rust::xxh3::xxh3_128(data));
    let on_disk = disk.bytes();
    let start = PART_OFFSET as usize;
    assert!(
        on_disk[start..start + data.len()] == *data,
        "partition content differs from the image"
    );
    disk.assert_untouched_outside(data.len() as u64);
}

#[test]
fn independent_blocks_decode_in_parallel_onto_the_partition() {
    let data = image_data(3 << 20, 1);
    for (block, checks, threads) in [
        (BlockSize::Max64KB, true, 2),
        (BlockSize::Max256KB, false, 3),
        (BlockSize::Max4MB, false, 1),
    ] {
        let info = FrameInfo::new()
            .block_size(block)
            .block_mode(BlockMode::Independent)
            .block_checksums(checks)
            .content_checksum(true)
            .content_size(checks.then_some(data.len() as u64));
        let opts = StageOptions {
            decode_threads: threads,
            ..StageOptions::default()
        };
        stage_ok(&data, compress(&data, info), 8 << 20, IoMode::Auto, &opts);
    }
}

#[test]
fn linked_blocks_decode_with_the_previous_window() {
    // 64 KiB linked blocks: the repeated 40 KiB chunk makes blocks reference the previous one.
    let data = image_data(2 << 20, 2);
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Linked)
        .content_checksum(true);
    let stream = compress(&data, info);
    // The frame really is linked (FLG bit 5 clear).
    assert_eq!(stream[4] & 0x20, 0);
    stage_ok(
        &data,
        stream,
        4 << 20,
        IoMode::Auto,
        &StageOptions::default(),
    );
}

#[test]
fn unaligned_image_size_and_buffered_mode() {
    // Not a multiple of 4096: the tail goes through the unaligned path; bytes after the image
    // inside the partition stay as they were.
    let data = image_data(1_000_003, 3);
    let info = FrameInfo::new().block_size(BlockSize::Max256KB);
    for mode in [IoMode::Auto, IoMode::Buffered] {
        stage_ok(
            &data,
            compress(&data, info.clone()),
            2 << 20,
            mode,
            &StageOptions::default(),
        );
    }
}

#[test]
fn empty_image() {
    let stream = compress(&[], FrameInfo::new());
    stage_ok(&[], stream, 1 << 20, IoMode::Auto, &StageOptions::default());
}

fn lz4_cli() -> Option<PathBuf> {
    let out = std::process::Command::new("lz4")
        .arg("--version")
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from("lz4"))
}

fn lz4_cli_compress(lz4: &Path, data: &[u8], args: &[&str]) -> Vec<u8> {
    let mut child = std::process::Command::new(lz4)
        .args(args)
        .args(["-c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    out
}

#[test]
fn frames_from_the_lz4_cli() {
    let Some(lz4) = lz4_cli() else {
        fixtures::gate::skip("the lz4 CLI is not installed");
        return;
    };
    let data = image_data(5 << 20, 4);
    // Default (independent 4 MiB blocks, content checksum), as images are built; linked
    // blocks; small blocks with block checksums and content size.
    for args in [
        &["-9"][..],
        &["-1", "-BD"][..],
        &["-B4", "-BX", "--content-size"][..],
        &["-B4", "-BD", "--no-frame-crc"][..],
    ] {
        let stream = lz4_cli_compress(&lz4, &data, args);
        stage_ok(
            &data,
            stream,
            6 << 20,
            IoMode::Auto,
            &StageOptions::default(),
        );
    }
}

fn expect_err(stream: Vec<u8>, expected: &TargetInfo, part_len: u64) -> (StageError, Disk) {
    let disk = Disk::new(part_len);
    let mut part = disk.partition(IoMode::Auto);
    let err = stage(stream, expected, &mut part, &StageOptions::default()).unwrap_err();
    (err, disk)
}

#[test]
fn truncated_streams_are_refused() {
    let data = image_data(1 << 20, 5);
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .content_checksum(true);
    let stream = compress(&data, info);
    let len = stream.len();
    // In the magic, in the descriptor, in a block, before the end mark, in the content checksum.
    for (cut, what) in [
        (2, "frame magic"),
        (5, "frame descriptor"),
        (len / 2, "block data"),
        (len - 8, "block header"),
        (len - 2, "content checksum"),
    ] {
        let truncated = stream[..cut].to_vec();
        let expected = expected_for(&truncated);
        let (err, _) = expect_err(truncated, &expected, 2 << 20);
        match err {
            StageError::Frame(FrameError::Truncated { what: w, .. }) if w == what => {}
            StageError::Frame(FrameError::Truncated { what: w, .. })
                if what == "block data" && w == "block header" => {}
            other => panic!("cut at {cut}: expected truncation in {what}, got {other:?}"),
        }
    }
    let (err, _) = expect_err(Vec::new(), &expected_for(&[]), 1 << 20);
    assert!(matches!(
        err,
        StageError::Frame(FrameError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn trailing_data_and_a_second_frame_are_refused() {
    let data = image_data(300_000, 6);
    let stream = compress(&data, FrameInfo::new());

    let mut garbage = stream.clone();
    garbage.extend_from_slice(b"\0\0\0\0 trailing");
    let (err, _) = expect_err(garbage.clone(), &expected_for(&garbage), 1 << 20);
    assert!(
        matches!(
            err,
            StageError::Frame(FrameError::TrailingData { offset, second_frame: false })
                if offset == stream.len() as u64
        ),
        "{err:?}"
    );

    let mut two = stream.clone();
    two.extend_from_slice(&compress(b"another frame", FrameInfo::new()));
    let (err, _) = expect_err(two.clone(), &expected_for(&two), 1 << 20);
    assert!(
        matches!(
            err,
            StageError::Frame(FrameError::TrailingData {
                second_frame: true,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn hash_and_length_mismatches_are_refused() {
    let data = image_data(700_000, 7);
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max64KB));
    let good = expected_for(&stream);

    let mut wrong_hash = good;
    wrong_hash.sha256[0] ^= 1;
    let (err, _) = expect_err(stream.clone(), &wrong_hash, 1 << 20);
    assert!(matches!(err, StageError::HashMismatch { .. }), "{err:?}");

    // A tampered byte in the middle makes the frame corrupt too, but what is reported is the
    // hash mismatch: the stream is hashed to its end before a frame error is reported.
    let mut tampered = stream.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    let (err, _) = expect_err(tampered, &good, 1 << 20);
    assert!(matches!(err, StageError::HashMismatch { .. }), "{err:?}");

    let longer = TargetInfo {
        length: good.length + 10,
        ..good
    };
    let (err, _) = expect_err(stream.clone(), &longer, 1 << 20);
    assert!(
        matches!(err, StageError::TooShort { expected, actual } if expected == good.length + 10 && actual == good.length),
        "{err:?}"
    );

    let shorter = TargetInfo {
        length: good.length - 10,
        ..good
    };
    let (err, _) = expect_err(stream, &shorter, 1 << 20);
    assert!(matches!(err, StageError::TooLong { .. }), "{err:?}");
}

#[test]
fn signed_but_corrupt_frames_are_refused() {
    let data = image_data(600_000, 8);
    // Content checksum: flip a literal inside the last block's payload.
    let stream = compress(&data, FrameInfo::new().content_checksum(true));
    let mut bad = stream.clone();
    // The last bytes of a block are literals; the frame ends with end mark (4) + checksum (4).
    let pos = bad.len() - 8 - 3;
    bad[pos] ^= 0x01;
    let (err, _) = expect_err(bad.clone(), &expected_for(&bad), 1 << 20);
    assert!(
        matches!(
            err,
            StageError::Frame(FrameError::ContentChecksum { .. } | FrameError::Corrupt { .. })
        ),
        "{err:?}"
    );

    // Block checksums catch it per block.
    let stream = compress(
        &data,
        FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_checksums(true),
    );
    let mut bad = stream.clone();
    bad[100] ^= 0x01;
    let (err, _) = expect_err(bad.clone(), &expected_for(&bad), 1 << 20);
    assert!(
        matches!(
            err,
            StageError::Frame(FrameError::BlockChecksum { index: 0 })
        ),
        "{err:?}"
    );

    // A declared content size that is not the real one.
    let mut stream = compress(
        &data,
        FrameInfo::new().content_size(Some(data.len() as u64)),
    );
    // FLG, BD, 8-byte content size, header checksum: declare one byte more and re-checksum.
    stream[6..14].copy_from_slice(&(data.len() as u64 + 1).to_le_bytes());
    stream[14] = (xxhash_rust::xxh32::xxh32(&stream[4..14], 0) >> 8) as u8;
    let (err, _) = expect_err(stream.clone(), &expected_for(&stream), 1 << 20);
    assert!(
        matches!(err, StageError::Frame(FrameError::ContentSize { .. })),
        "{err:?}"
    );

    // Not lz4 at all.
    let junk = b"this is not an lz4 frame".to_vec();
    let (err, _) = expect_err(junk.clone(), &expected_for(&junk), 1 << 20);
    assert!(
        matches!(err, StageError::Frame(FrameError::BadMagic { .. })),
        "{err:?}"
    );
}

#[test]
fn images_larger_than_the_partition_write_nothing_past_its_end() {
    let data = image_data(3 << 20, 9);
    let part_len = (2 << 20) + 4096;

    // Size only discovered while decoding.
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max256KB));
    let (err, disk) = expect_err(stream.clone(), &expected_for(&stream), part_len);
    assert!(
        matches!(err, StageError::TooLarge { capacity, .. } if capacity == part_len),
        "{err:?}"
    );
    disk.assert_untouched_outside(part_len);

    // Declared in the frame header: refused before the first byte is written.
    let stream = compress(
        &data,
        FrameInfo::new().content_size(Some(data.len() as u64)),
    );
    let (err, disk) = expect_err(stream.clone(), &expected_for(&stream), part_len);
    assert!(
        matches!(err, StageError::TooLarge { needed, .. } if needed == data.len() as u64),
        "{err:?}"
    );
    disk.assert_untouched_outside(0);
}

/// A source that yields 4 KiB of a valid stream per read and stalls (30 s, far longer than
/// the test waits) once `stall_after` bytes were given.
struct SlowSource {
    data: Vec<u8>,
    pos: usize,
    stall_after: usize,
    given: &'static AtomicU64,
}

impl Read for SlowSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.stall_after {
            // Stall (much longer than the test waits for the cancellation to work).
            std::thread::sleep(Duration::from_secs(30));
            return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"));
        }
        let n = buf.len().min(4096).min(self.stall_after - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.given.store(self.pos as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn cancellation_returns_promptly_even_when_the_source_blocks() {
    static GIVEN: AtomicU64 = AtomicU64::new(0);
    let data = image_data(2 << 20, 10);
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max64KB));
    let expected = expected_for(&stream);
    let disk = Disk::new(4 << 20);
    let mut part = disk.partition(IoMode::Auto);
    let cancel = CancelHandle::new();
    let opts = StageOptions {
        cancel: cancel.clone(),
        progress_interval: Duration::from_millis(5),
        ..StageOptions::default()
    };
    let half = stream.len() / 2;
    let source = SlowSource {
        data: stream,
        pos: 0,
        stall_after: half,
        given: &GIVEN,
    };
    let canceller = std::thread::spawn(move || {
        while GIVEN.load(Ordering::SeqCst) < half as u64 {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        cancel.cancel();
        Instant::now()
    });
    let seen = Mutex::new(Vec::<Progress>::new());
    let err = stage_image(Box::new(source), &expected, &mut part, &opts, &|p| {
        seen.lock().unwrap().push(p);
    })
    .unwrap_err();
    let returned = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert!(matches!(err, StageError::Cancelled), "{err:?}");
    assert!(
        returned.duration_since(cancelled_at) < Duration::from_millis(500),
        "took {:?} to return after cancel",
        returned.duration_since(cancelled_at)
    );
    // Progress was reported while the stream was flowing.
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.iter()
            .any(|p| p.phase == Phase::Writing && p.done > 0 && p.total == expected.length),
        "{seen:?}"
    );
}

#[test]
fn read_errors_are_reported() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let disk = Disk::new(1 << 20);
    let mut part = disk.partition(IoMode::Auto);
    let expected = TargetInfo {
        length: 10_000,
        sha256: [0; 32],
    };
    let err = stage_image(
        Box::new(Failing(1000)),
        &expected,
        &mut part,
        &StageOptions::default(),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, StageError::Read { offset: 1000, source } if source.kind() == io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
}

/// A disk that loses a write: after the flush, one byte on the medium is not what was
/// written (a fake of a failing disk, acting on the real file underneath).
struct FlippingDisk {
    inner: PartitionSink,
    path: PathBuf,
    flip_at: u64,
}

impl Sink for FlippingDisk {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()?;
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, self.flip_at)?;
        b[0] ^= 0x80;
        f.write_all_at(&b, self.flip_at)?;
        f.sync_data()?;
        // Make sure the read-back cannot be served from the page cache either.
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
}

#[test]
fn read_back_detects_a_disk_that_lost_a_write() {
    let data = image_data(1 << 20, 11);
    let stream = compress(&data, FrameInfo::new());
    let expected = expected_for(&stream);
    let disk = Disk::new(2 << 20);
    let mut sink = FlippingDisk {
        inner: disk.partition(IoMode::Auto),
        path: disk.path.clone(),
        flip_at: PART_OFFSET + 123_456,
    };
    let phases = Mutex::new(Vec::new());
    let err = stage_image(
        Box::new(io::Cursor::new(stream)),
        &expected,
        &mut sink,
        &StageOptions::default(),
        &|p| phases.lock().unwrap().push(p.phase),
    )
    .unwrap_err();
    assert!(
        matches!(err, StageError::ReadBackMismatch { .. }),
        "{err:?}"
    );
    let phases = phases.into_inner().unwrap();
    assert!(phases.contains(&Phase::Syncing) && phases.contains(&Phase::Verifying));
}

#[test]
fn progress_reports_phases_in_order_and_the_final_counts() {
    let data = image_data(2 << 20, 12);
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max256KB));
    let expected = expected_for(&stream);
    let disk = Disk::new(4 << 20);
    let mut part = disk.partition(IoMode::Auto);
    let seen = Mutex::new(Vec::<Progress>::new());
    let opts = StageOptions {
        progress_interval: Duration::from_millis(1),
        ..StageOptions::default()
    };
    stage_image(
        Box::new(io::Cursor::new(stream)),
        &expected,
        &mut part,
        &opts,
        &|p| seen.lock().unwrap().push(p),
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    let rank = |p: Phase| match p {
        Phase::Writing => 0,
        Phase::Syncing => 1,
        Phase::Verifying => 2,
    };
    assert!(
        seen.windows(2)
            .all(|w| rank(w[0].phase) <= rank(w[1].phase))
    );
    let last_write = seen
        .iter()
        .rev()
        .find(|p| p.phase == Phase::Writing)
        .unwrap();
    assert_eq!(last_write.done, expected.length);
    assert_eq!(last_write.written, data.len() as u64);
    let last = seen.last().unwrap();
    assert_eq!(
        (last.phase, last.done, last.total),
        (Phase::Verifying, data.len() as u64, data.len() as u64)
    );
}

/// A disk whose writes start failing after `ok_writes` writes, on the serial path and on the
/// concurrent handle alike (a fake of a disk going bad mid-image).
struct FailingDisk {
    inner: PartitionSink,
    left: std::sync::Arc<AtomicU64>,
}

struct FailingHandle {
    inner: std::sync::Arc<dyn updog::pipeline::ParallelWrite>,
    left: std::sync::Arc<AtomicU64>,
}

fn take_write(left: &AtomicU64) -> io::Result<()> {
    if left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_err()
    {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

impl updog::pipeline::ParallelWrite for FailingHandle {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        take_write(&self.left)?;
        self.inner.write_all_at(buf, offset)
    }
}

impl Sink for FailingDisk {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        take_write(&self.left)?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn parallel_writer(&self) -> Option<std::sync::Arc<dyn updog::pipeline::ParallelWrite>> {
        let inner = self.inner.parallel_writer()?;
        Some(std::sync::Arc::new(FailingHandle {
            inner,
            left: std::sync::Arc::clone(&self.left),
        }))
    }
}

#[test]
fn write_errors_stop_staging_with_parallel_and_serial_writes() {
    let data = image_data(6 << 20, 13);
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max64KB));
    let expected = expected_for(&stream);
    for queue_depth in [1, 2] {
        let disk = Disk::new(8 << 20);
        let mut sink = FailingDisk {
            inner: disk.partition(IoMode::Auto),
            left: std::sync::Arc::new(AtomicU64::new(1)),
        };
        let opts = StageOptions {
            write_queue_depth: queue_depth,
            ..StageOptions::default()
        };
        let started = Instant::now();
        let err = stage(stream.clone(), &expected, &mut sink, &opts).unwrap_err();
        assert!(
            matches!(&err, StageError::Write { source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "queue depth {queue_depth}: {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// What a [`Recording`] sink saw: the writes that returned, the flushes of the read-back
/// handle, and its reads.
#[derive(Default)]
struct Log {
    /// Returned writes, `(offset, end)`.
    writes: Vec<(u64, u64)>,
    /// Every write below this had returned when the handle's last flush started.
    flushed: u64,
    /// Reads through the read-back handle, `(offset, end, flushed at the time)`.
    reads: Vec<(u64, u64, u64)>,
}

impl Log {
    fn returned_prefix(&self) -> u64 {
        let mut w = self.writes.clone();
        w.sort_unstable();
        let mut prefix = 0;
        for (start, end) in w {
            if start > prefix {
                break;
            }
            prefix = prefix.max(end);
        }
        prefix
    }
}

/// A real partition whose writes and read-back handle are recorded; optionally its read-back
/// handle returns one flipped bit, or fails, at a partition offset (a fake of a disk that
/// lost a write or cannot read it back).
struct Recording {
    inner: PartitionSink,
    log: std::sync::Arc<Mutex<Log>>,
    flip_at: Option<u64>,
    fail_at: Option<u64>,
}

struct RecordingWrites {
    inner: std::sync::Arc<dyn updog::pipeline::ParallelWrite>,
    log: std::sync::Arc<Mutex<Log>>,
}

impl updog::pipeline::ParallelWrite for RecordingWrites {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        self.log.lock().unwrap().writes.push((offset, end));
        Ok(())
    }
}

struct RecordingReadBack {
    inner: Box<dyn updog::pipeline::ReadBack>,
    log: std::sync::Arc<Mutex<Log>>,
    flip_at: Option<u64>,
    fail_at: Option<u64>,
}

impl updog::pipeline::ReadBack for RecordingReadBack {
    fn sync_data(&mut self) -> io::Result<()> {
        let prefix = self.log.lock().unwrap().returned_prefix();
        self.inner.sync_data()?;
        self.log.lock().unwrap().flushed = prefix;
        Ok(())
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let in_range = |at: Option<u64>| at.filter(|&a| a >= offset && a < end);
        if in_range(self.fail_at).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read_exact_at(buf, offset)?;
        if let Some(a) = in_range(self.flip_at) {
            buf[(a - offset) as usize] ^= 0x01;
        }
        let mut log = self.log.lock().unwrap();
        let flushed = log.flushed;
        log.reads.push((offset, end, flushed));
        Ok(())
    }
}

impl Sink for Recording {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        self.log.lock().unwrap().writes.push((offset, end));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn parallel_writer(&self) -> Option<std::sync::Arc<dyn updog::pipeline::ParallelWrite>> {
        let inner = self.inner.parallel_writer()?;
        Some(std::sync::Arc::new(RecordingWrites {
            inner,
            log: std::sync::Arc::clone(&self.log),
        }))
    }
    fn read_back_handle(&self) -> Option<Box<dyn updog::pipeline::ReadBack>> {
        let inner = self.inner.read_back_handle()?;
        Some(Box::new(RecordingReadBack {
            inner,
            log: std::sync::Arc::clone(&self.log),
            flip_at: self.flip_at,
            fail_at: self.fail_at,
        }))
    }
}

fn recording(disk: &Disk, mode: IoMode) -> Recording {
    Recording {
        inner: disk.partition(mode),
        log: std::sync::Arc::default(),
        flip_at: None,
        fail_at: None,
    }
}

/// Small regions so that a few-MiB image is read back in many pieces while it is written.
fn overlapped() -> StageOptions {
    StageOptions {
        read_back_region: 256 << 10,
        ..StageOptions::default()
    }
}

#[test]
fn read_back_overlaps_the_writes_and_reads_only_flushed_ranges() {
    let data = image_data(6 << 20, 17);
    for (mode, info) in [
        (
            IoMode::Auto,
            FrameInfo::new().block_size(BlockSize::Max64KB),
        ),
        (IoMode::Auto, FrameInfo::new().block_size(BlockSize::Max4MB)),
        (
            IoMode::Buffered,
            FrameInfo::new().block_size(BlockSize::Max256KB),
        ),
        (
            IoMode::Auto,
            FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_mode(BlockMode::Linked),
        ),
    ] {
        let stream = compress(&data, info);
        let expected = expected_for(&stream);
        let disk = Disk::new(8 << 20);
        let mut sink = recording(&disk, mode);
        let log = std::sync::Arc::clone(&sink.log);
        let staged = stage(stream, &expected, &mut sink, &overlapped()).unwrap();
        assert_eq!(staged.digest, xxhash_rust::xxh3::xxh3_128(&data));
        let start = PART_OFFSET as usize;
        assert!(disk.bytes()[start..start + data.len()] == *data);
        let log = log.lock().unwrap();
        // Most of the image was read back through the concurrent handle, in order, each
        // range only after every write below its end had returned and been flushed.
        let read: u64 = log.reads.iter().map(|r| r.1 - r.0).sum();
        assert!(
            read >= (data.len() as u64) / 2,
            "{mode:?}: only {read} bytes read back while writing"
        );
        let mut next = 0;
        for &(offset, end, flushed) in &log.reads {
            assert_eq!(offset, next, "{mode:?}: read-back out of order");
            assert!(
                end <= flushed,
                "{mode:?}: read [{offset}, {end}) before it was flushed (flushed up to {flushed})"
            );
            next = end;
        }
    }
}

#[test]
fn overlapped_read_back_detects_a_lost_write_and_reports_read_errors() {
    let data = image_data(4 << 20, 19);
    let stream = compress(&data, FrameInfo::new().block_size(BlockSize::Max64KB));
    let expected = expected_for(&stream);

    let disk = Disk::new(8 << 20);
    let mut sink = recording(&disk, IoMode::Auto);
    sink.flip_at = Some(300_000);
    let err = stage(stream.clone(), &expected, &mut sink, &overlapped()).unwrap_err();
    assert!(
        matches!(err, StageError::ReadBackMismatch { .. }),
        "{err:?}"
    );
    assert!(
        !sink.log.lock().unwrap().reads.is_empty(),
        "the flipped byte was not read through the concurrent handle"
    );

    let disk = Disk::new(8 << 20);
    let mut sink = recording(&disk, IoMode::Auto);
    sink.fail_at = Some(600_000);
    let err = stage(stream, &expected, &mut sink, &overlapped()).unwrap_err();
    assert!(
        matches!(&err, StageError::ReadBack { offset, source }
            if *offset <= 600_000 && source.raw_os_error() == Some(libc::EIO)),
        "{err:?}"
    );
}
