//! Staging benchmark: our pipeline against this machine's limits and a one-thread baseline
//! shaped like the reference updater, on a realistic image, in one run.
//!
//! Run: `cargo bench -p updog --bench staging` (release build). Options after `--`:
//! `--size-mib N` (image size, default 1024), `--no-4g` (skip the 4 GiB RSS comparison),
//! `--no-loop` (skip the loop device even as root), `--json PATH`, `--prepare` (only build the
//! images).
//!
//! The image is an ext4 file system built with `mkfs.ext4 -d` from copies of real files
//! (`/usr/share`, `/usr/lib`), compressed with `lz4 -9`; both are cached under
//! `target/bench-data/`. Everything reads the compressed image from the page cache (it is read
//! once before the measurements), so the source is never the bottleneck of a `file://` run.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootpart::io::AlignedBuf;
use sha2::{Digest, Sha256};
use updog::pipeline::{IoMode, PartitionSink, Phase, Sink, StageOptions, TargetInfo, stage_image};
use updog::transport::{FileTransport, HttpOptions, HttpTransport, Transport};

const MIB: f64 = 1024.0 * 1024.0;
const WRITE_CHUNK: usize = 4 << 20;

mod common;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    size_mib: u64,
    four_gib: bool,
    loop_dev: bool,
    prepare: bool,
    json: Option<PathBuf>,
}

fn main() -> Res<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !common::should_run(&argv, "staging") {
        return Ok(());
    }
    if argv.first().map(String::as_str) == Some("--child-stage") {
        return child_stage(&argv[1..]);
    }
    let mut args = Args {
        size_mib: 1024,
        four_gib: true,
        loop_dev: true,
        prepare: false,
        json: None,
    };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => args.size_mib = it.next().ok_or("--size-mib N")?.parse()?,
            "--no-4g" => args.four_gib = false,
            "--no-loop" => args.loop_dev = false,
            "--prepare" => args.prepare = true,
            "--json" => args.json = Some(it.next().ok_or("--json PATH")?.into()),
            // cargo bench passes --bench; anything else is a filter we do not use.
            _ => {}
        }
    }
    run(&args)
}

fn data_dir() -> PathBuf {
    // <target>/tmp -> <target>/bench-data
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("bench-data"), |t| t.join("bench-data"))
}

/// A compressed image and what is known about it.
struct Image {
    lz4: PathBuf,
    compressed_len: u64,
    decoded_len: u64,
    expected: TargetInfo,
}

/// Build (or reuse) an ext4 image of `size_mib` MiB filled to ~85% with copies of real files,
/// compressed with `lz4 -9`.
fn ensure_image(dir: &Path, size_mib: u64) -> Res<Image> {
    fs::create_dir_all(dir)?;
    let name = format!("ext4-{size_mib}m");
    let lz4 = dir.join(format!("{name}.img.lz4"));
    let meta = dir.join(format!("{name}.meta"));
    if !(lz4.exists() && meta.exists()) {
        let tree = dir.join(format!("{name}-files"));
        let img = dir.join(format!("{name}.img"));
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree)?;
        // Counted in 4 KiB blocks per file; the rest is inodes, directories and the journal.
        let budget = size_mib * 1024 * 1024 * 85 / 100;
        eprintln!(
            "bench: copying ~{} MiB of real files into {}",
            budget >> 20,
            tree.display()
        );
        let mut copied = 0u64;
        for src in ["/usr/share", "/usr/lib", "/usr/libexec", "/usr/bin"] {
            copy_tree(
                Path::new(src),
                &tree.join(src.trim_start_matches('/')),
                budget,
                &mut copied,
            )?;
            if copied >= budget {
                break;
            }
        }
        eprintln!("bench: mkfs.ext4 -d ({} MiB of files)", copied >> 20);
        let _ = fs::remove_file(&img);
        run_cmd(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-d"])
                .arg(&tree)
                .arg(&img)
                .arg(format!("{size_mib}M")),
        )?;
        eprintln!("bench: lz4 -9");
        run_cmd(
            Command::new("lz4")
                .args(["-9", "-q", "-f"])
                .arg(&img)
                .arg(&lz4),
        )?;
        let decoded_len = fs::metadata(&img)?.len();
        fs::write(&meta, format!("{decoded_len}\n"))?;
        fs::remove_file(&img)?;
        fs::remove_dir_all(&tree)?;
    }
    let decoded_len: u64 = fs::read_to_string(&meta)?.trim().parse()?;
    // Hash once (also warms the page cache).
    let mut sha = Sha256::new();
    let mut f = File::open(&lz4)?;
    let compressed_len = io::copy(&mut f, &mut sha)?;
    let expected = TargetInfo {
        length: compressed_len,
        sha256: sha.finalize().into(),
    };
    Ok(Image {
        lz4,
        compressed_len,
        decoded_len,
        expected,
    })
}

fn copy_tree(src: &Path, dst: &Path, budget: u64, copied: &mut u64) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(src) else {
        return Ok(());
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        if *copied >= budget {
            return Ok(());
        }
        let Ok(ft) = e.file_type() else { continue };
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &to, budget, copied)?;
        } else if ft.is_file() {
            let Ok(len) = e.metadata().map(|m| m.len()) else {
                continue;
            };
            let len = len.div_ceil(4096) * 4096 + 4096;
            if *copied + len > budget {
                continue;
            }
            fs::create_dir_all(dst)?;
            if fs::copy(e.path(), &to).is_ok() {
                *copied += len;
            }
        }
    }
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> Res<()> {
    let st = cmd.status()?;
    if !st.success() {
        return Err(format!("{cmd:?} failed: {st}").into());
    }
    Ok(())
}

/// Where the image goes: a GPT disk image with the reference layout (fixtures), ROOT-B sized
/// for the image and written through once so its blocks are allocated like a real partition's.
struct TargetDisk {
    path: PathBuf,
    part: bootpart::Partition,
}

fn ensure_target(dir: &Path, name: &str, part_len: u64) -> Res<TargetDisk> {
    let path = dir.join(name);
    let stamp = dir.join(format!("{name}.ready"));
    if fs::read_to_string(&stamp).ok().as_deref() != Some(&part_len.to_string()) {
        eprintln!(
            "bench: building {} (ROOT-B {} MiB)",
            path.display(),
            part_len >> 20
        );
        fixtures::disk::DiskImageBuilder::new()
            .root_size(part_len)
            .build(&path)?;
        let disk = bootpart::Disk::open(&path)?;
        let part = disk.layout().set(bootpart::SetId::B)?.root.clone();
        let f = OpenOptions::new().write(true).open(&path)?;
        let zero = vec![0u8; 8 << 20];
        let mut off = 0;
        while off < part.byte_len() {
            let n = (part.byte_len() - off).min(zero.len() as u64) as usize;
            f.write_all_at(&zero[..n], part.byte_offset() + off)?;
            off += n as u64;
        }
        f.sync_all()?;
        fs::write(&stamp, part_len.to_string())?;
    }
    let disk = bootpart::Disk::open(&path)?;
    let part = disk.layout().set(bootpart::SetId::B)?.root.clone();
    Ok(TargetDisk { path, part })
}

/// A loop device over a disk image (direct I/O to the backing file), detached on drop.
struct LoopDev(PathBuf);

impl LoopDev {
    fn attach(backing: &Path) -> Res<Self> {
        let out = Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(backing)
            .output()?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(Self(PathBuf::from(String::from_utf8(out.stdout)?.trim())))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

const REPEATS: usize = 3;

fn repeat<T>(mut f: impl FnMut() -> Res<T>) -> Res<Vec<T>> {
    (0..REPEATS).map(|_| f()).collect()
}

fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.swap_remove(runs.len() / 2)
}

fn median(runs: Vec<f64>) -> f64 {
    median_by(runs, |x| *x)
}

/// Start every run with none of the partition in the page cache.
fn drop_cache(device: &Path, part: &bootpart::Partition) -> Res<()> {
    let f = File::open(device)?;
    f.sync_data()?;
    nix::fcntl::posix_fadvise(
        &f,
        part.byte_offset() as libc::off_t,
        part.byte_len() as libc::off_t,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )?;
    Ok(())
}

struct Row {
    name: String,
    secs: f64,
    /// MB/s of decoded image (MiB/s).
    mbps: f64,
    note: String,
}

fn row(name: &str, decoded: u64, secs: f64, note: impl Into<String>) -> Row {
    let r = Row {
        name: name.into(),
        secs,
        mbps: decoded as f64 / MIB / secs,
        note: note.into(),
    };
    eprintln!(
        "  {:<46} {:>8.1} MiB/s  {:>7.3} s  {}",
        r.name, r.mbps, r.secs, r.note
    );
    r
}

struct OursResult {
    total: f64,
    write_phase: f64,
    verify_phase: f64,
    direct: bool,
    cpu: f64,
}

fn ours(
    img: &Image,
    source: Box<dyn Read + Send>,
    device: &Path,
    part: &bootpart::Partition,
    opts: &StageOptions,
) -> Res<OursResult> {
    // What `Updater::stage_full` opens: the partition found in the GPT, through bootpart.
    let mut sink = PartitionSink::open_path(device, part, IoMode::Auto)?;
    let marks = Mutex::new(Vec::<(Phase, Instant)>::new());
    let cpu = cpu_secs();
    let start = Instant::now();
    let staged = stage_image(source, &img.expected, &mut sink, opts, &|p| {
        let mut m = marks.lock().unwrap();
        if m.last().map(|l| l.0) != Some(p.phase) {
            m.push((p.phase, Instant::now()));
        }
    })?;
    let total = start.elapsed().as_secs_f64();
    let end = Instant::now();
    let cpu = cpu_secs() - cpu;
    assert_eq!(staged.decoded_len, img.decoded_len);
    let marks = marks.into_inner().unwrap();
    let at = |ph| marks.iter().find(|m| m.0 == ph).map_or(end, |m| m.1);
    Ok(OursResult {
        total,
        write_phase: (at(Phase::Verifying) - start).as_secs_f64(),
        verify_phase: (end - at(Phase::Verifying)).as_secs_f64(),
        direct: staged.direct_io,
        cpu,
    })
}

/// The reference's shape: one thread reads, frame-decodes, `io::copy`s into the partition
/// through the page cache, `fsync` at the end.
/// CPU seconds (user + system) used by this process so far, all threads (clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall time and CPU time of one baseline run.
fn baseline(
    source: Box<dyn Read + Send>,
    device: &Path,
    part: &bootpart::Partition,
) -> Res<(f64, f64)> {
    let cpu = cpu_secs();
    let start = Instant::now();
    let mut dec = lz4_flex::frame::FrameDecoder::new(source);
    let mut f = OpenOptions::new().write(true).open(device)?;
    f.seek(SeekFrom::Start(part.byte_offset()))?;
    io::copy(&mut dec, &mut f)?;
    f.sync_all()?;
    Ok((start.elapsed().as_secs_f64(), cpu_secs() - cpu))
}

/// Write the decoded image with `depth` threads each writing every `depth`-th 4 MiB chunk
/// (`depth` writes in flight), then one fdatasync.
fn write_limit(
    decoded: &AlignedBuf,
    device: &Path,
    p: &bootpart::Partition,
    depth: usize,
) -> Res<(f64, bool)> {
    let mut part = PartitionSink::open_path(device, p, IoMode::Auto)?;
    let handle = part.parallel_writer();
    let start = Instant::now();
    let data = &decoded[..];
    let chunks: Vec<(usize, &[u8])> = data
        .chunks(WRITE_CHUNK)
        .enumerate()
        .map(|(i, c)| (i * WRITE_CHUNK, c))
        .collect();
    match (&handle, depth) {
        (Some(h), d) if d > 1 => std::thread::scope(|s| -> Res<()> {
            let workers: Vec<_> = (0..d)
                .map(|t| {
                    let chunks = &chunks;
                    s.spawn(move || -> io::Result<()> {
                        for (off, c) in chunks.iter().skip(t).step_by(d) {
                            h.write_all_at(c, *off as u64)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| "writer panicked")??;
            }
            Ok(())
        })?,
        _ => {
            for (off, c) in &chunks {
                part.write_all_at(c, *off as u64)?;
            }
        }
    }
    part.sync()?;
    Ok((start.elapsed().as_secs_f64(), part.is_direct()))
}

/// What the invariant costs without any decoding: the decoded image written as in
/// [`write_limit`] (2 in flight), while a second thread flushes and reads back (through the
/// sink's own [`Sink::read_back_handle`], xxh3 digest) each `region` once all its writes have
/// returned; then the final flush and the read-back of the rest. `region` 0: write everything,
/// flush, then read everything back.
fn write_verify_limit(
    decoded: &AlignedBuf,
    device: &Path,
    p: &bootpart::Partition,
    region: u64,
) -> Res<f64> {
    let mut part = PartitionSink::open_path(device, p, IoMode::Auto)?;
    let writer = part.parallel_writer().ok_or("no parallel writer")?;
    let mut handle = part.read_back_handle().ok_or("no read-back handle")?;
    let data = &decoded[..];
    let len = data.len() as u64;
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(WRITE_CHUNK)
        .enumerate()
        .map(|(i, c)| ((i * WRITE_CHUNK) as u64, c))
        .collect();
    // done[i]: chunk i's write returned.
    let done = Mutex::new(vec![false; chunks.len()]);
    let changed = std::sync::Condvar::new();
    let start = Instant::now();
    let verified = std::thread::scope(|s| -> Res<(u64, xxhash_rust::xxh3::Xxh3)> {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (chunks, done, changed, writer) = (&chunks, &done, &changed, &writer);
                s.spawn(move || -> io::Result<()> {
                    for (i, (off, c)) in chunks.iter().enumerate().skip(t).step_by(2) {
                        let r = writer.write_all_at(c, *off);
                        let mut d = done.lock().unwrap();
                        if r.is_err() {
                            // Release the reader; the error is reported at the join.
                            d.fill(true);
                        }
                        d[i] = true;
                        drop(d);
                        changed.notify_all();
                        r?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        let mut at = 0u64;
        let mut buf = AlignedBuf::new(WRITE_CHUNK, 4096);
        if region > 0 {
            // Only whole regions before the last chunk; the rest after the final flush.
            let last = len - len % WRITE_CHUNK as u64;
            while at + region <= last {
                let upto = at + region;
                let need = usize::try_from(upto / WRITE_CHUNK as u64)?;
                let mut d = done.lock().unwrap();
                while !d[..need].iter().all(|&x| x) {
                    d = changed.wait(d).unwrap();
                }
                drop(d);
                handle.sync_data()?;
                while at < upto {
                    let n = (upto - at).min(WRITE_CHUNK as u64) as usize;
                    handle.read_exact_at(&mut buf[..][..n], at)?;
                    digest.update(&buf[..n]);
                    at += n as u64;
                }
            }
        }
        for w in workers {
            w.join().map_err(|_| "writer panicked")??;
        }
        Ok((at, digest))
    })?;
    let (mut at, mut digest) = verified;
    part.sync()?;
    let mut buf = AlignedBuf::new(WRITE_CHUNK, 4096);
    while at < len {
        let n = (len - at).min(WRITE_CHUNK as u64) as usize;
        part.read_exact_at(&mut buf[..][..n], at)?;
        digest.update(&buf[..n]);
        at += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    if digest.digest128() != xxhash_rust::xxh3::xxh3_128(data) {
        return Err("write+read-back limit: read back other bytes than written".into());
    }
    Ok(secs)
}

fn read_limit(len: u64, device: &Path, p: &bootpart::Partition) -> Res<f64> {
    let mut part = PartitionSink::open_path(device, p, IoMode::Auto)?;
    part.sync()?;
    let mut buf = AlignedBuf::new(WRITE_CHUNK, 4096);
    let start = Instant::now();
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(WRITE_CHUNK as u64) as usize;
        part.read_exact_at(&mut buf[..][..n], off)?;
        off += n as u64;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Block boundaries of an independent-block frame (for the parallel decode limit).
/// (start, length, stored uncompressed)
type Blocks = Vec<(usize, usize, bool)>;

fn frame_blocks(c: &[u8]) -> Res<(Blocks, usize)> {
    let flg = c[4];
    let bd = c[5];
    if flg & 0x20 == 0 {
        return Err("the bench image must have independent blocks".into());
    }
    let block_max = 1usize << (8 + 2 * ((bd >> 4) & 7));
    let mut pos = 4 + 2 + usize::from(flg & 0x08 != 0) * 8 + usize::from(flg & 0x01 != 0) * 4 + 1;
    let mut blocks = Vec::new();
    loop {
        let w = u32::from_le_bytes(c[pos..pos + 4].try_into()?);
        pos += 4;
        if w == 0 {
            break;
        }
        let len = (w & 0x7FFF_FFFF) as usize;
        blocks.push((pos, len, w & 0x8000_0000 != 0));
        pos += len + if flg & 0x10 != 0 { 4 } else { 0 };
    }
    Ok((blocks, block_max))
}

fn decode_limit_parallel(c: &[u8], threads: usize) -> Res<f64> {
    let (blocks, block_max) = frame_blocks(c)?;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let blocks = &blocks;
            s.spawn(move || {
                let mut out = vec![0u8; block_max];
                for (i, &(pos, len, raw)) in blocks.iter().enumerate() {
                    if i % threads != t {
                        continue;
                    }
                    let data = &c[pos..pos + len];
                    if raw {
                        out[..len].copy_from_slice(data);
                    } else {
                        lz4_flex::block::decompress_into(data, &mut out).unwrap();
                    }
                }
            });
        }
    });
    Ok(start.elapsed().as_secs_f64())
}

fn rss_child(img: &Image, target: &TargetDisk) -> Res<u64> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--child-stage")
        .arg(&img.lz4)
        .arg(&target.path)
        .arg(img.expected.length.to_string())
        .arg(hex::encode(img.expected.sha256))
        .output()?;
    if !out.status.success() {
        return Err(format!("child: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("child printed no VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Child process: stage the image from file:// and print the peak RSS.
fn child_stage(a: &[String]) -> Res<()> {
    let [lz4, target, length, sha] = a else {
        return Err("usage: --child-stage LZ4 DISK LENGTH SHA256".into());
    };
    let expected = TargetInfo::from_hex(length.parse()?, sha).ok_or("bad sha256")?;
    let disk = bootpart::Disk::open(target)?;
    let root_b = &disk.layout().set(bootpart::SetId::B)?.root;
    let mut part = PartitionSink::open(&disk, root_b, IoMode::Auto)?;
    let url = url::Url::from_file_path(fs::canonicalize(lz4)?).map_err(|()| "url")?;
    let source = FileTransport.fetch(&url)?;
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let defaults = StageOptions::default();
    let opts = StageOptions {
        read_chunk: env("BENCH_READ_CHUNK").unwrap_or(defaults.read_chunk),
        read_buffers: env("BENCH_READ_BUFFERS").unwrap_or(defaults.read_buffers),
        write_queue_depth: env("BENCH_QD").unwrap_or(defaults.write_queue_depth),
        decode_threads: env("BENCH_DECODERS").unwrap_or(defaults.decode_threads),
        buffers_per_decoder: env("BENCH_BUFS").unwrap_or(defaults.buffers_per_decoder),
        ..defaults
    };
    let t = Instant::now();
    stage_image(source, &expected, &mut part, &opts, &|_| {})?;
    eprintln!("staged in {:.3} s", t.elapsed().as_secs_f64());
    let status = fs::read_to_string("/proc/self/status")?;
    for l in status
        .lines()
        .filter(|l| l.starts_with("VmHWM:") || l.starts_with("VmRSS:"))
    {
        println!("{l}");
    }
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let sha_ni = cpu
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "cpu": model,
        "sha_ni": sha_ni,
        "rustc": rustc,
        "kernel": kernel.trim(),
        "loadavg_start": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

fn run(args: &Args) -> Res<()> {
    let dir = data_dir();
    let mut json = serde_json::Map::new();
    json.insert("machine".into(), machine());
    eprintln!("bench: machine {}", json["machine"]);
    let img = ensure_image(&dir, args.size_mib)?;
    if args.prepare {
        if args.four_gib {
            ensure_image(&dir, args.size_mib * 4)?;
        }
        eprintln!("bench: images ready");
        return Ok(());
    }
    let part_len = img.decoded_len.div_ceil(1 << 20) * (1 << 20) + (16 << 20);
    let target = ensure_target(&dir, &format!("target-{}m.disk", args.size_mib), part_len)?;
    let dec = img.decoded_len;
    eprintln!(
        "bench: image {} MiB decoded, {} MiB compressed (ratio {:.2}), partition {} MiB",
        dec >> 20,
        img.compressed_len >> 20,
        dec as f64 / img.compressed_len as f64,
        part_len >> 20
    );
    json.insert(
        "image".into(),
        serde_json::json!({
            "decoded_bytes": dec, "compressed_bytes": img.compressed_len,
            "kind": "ext4 (mkfs.ext4 -d, real files from /usr) compressed with lz4 -9",
        }),
    );
    let mut rows = Vec::new();
    let compressed = fs::read(&img.lz4)?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);

    // --- limits ---------------------------------------------------------------------------
    eprintln!("bench: limits (median of {REPEATS} runs each)");
    let mut decoded = AlignedBuf::new(dec as usize, 4096);
    lz4_flex::frame::FrameDecoder::new(&compressed[..]).read_exact(&mut decoded[..])?;
    let decode1 = median(repeat(|| {
        let t = Instant::now();
        io::copy(
            &mut lz4_flex::frame::FrameDecoder::new(&compressed[..]),
            &mut io::sink(),
        )?;
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "decode only, FrameDecoder, 1 thread",
        dec,
        decode1,
        "memory to nowhere, content checksum checked",
    ));
    let decode_n = median(repeat(|| decode_limit_parallel(&compressed, threads))?);
    rows.push(row(
        &format!("decode only, lz4 blocks on {threads} threads"),
        dec,
        decode_n,
        "memory to memory, no checksums",
    ));
    let sha = median(repeat(|| {
        let t = Instant::now();
        std::hint::black_box(Sha256::digest(&compressed));
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "sha256 of the compressed bytes only",
        dec,
        sha,
        format!(
            "{:.0} MiB/s of compressed bytes",
            img.compressed_len as f64 / MIB / sha
        ),
    ));
    let data = &decoded[..];
    let xxh3 = median(repeat(|| {
        let t = Instant::now();
        std::hint::black_box(xxhash_rust::xxh3::xxh3_128(data));
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "xxh3-128 of the decoded bytes only",
        dec,
        xxh3,
        "our read-back digest",
    ));
    let sha_dec = median(repeat(|| {
        let t = Instant::now();
        std::hint::black_box(Sha256::digest(data));
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "sha256 of the decoded bytes only",
        dec,
        sha_dec,
        "the alternative read-back digest",
    ));
    let xxh32 = median(repeat(|| {
        let t = Instant::now();
        std::hint::black_box(xxhash_rust::xxh32::xxh32(data, 0));
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "xxh32 of the decoded bytes only",
        dec,
        xxh32,
        "lz4 content checksum",
    ));

    let mut targets: Vec<(String, PathBuf, Option<LoopDev>)> =
        vec![("disk-image file".into(), target.path.clone(), None)];
    let is_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if args.loop_dev && is_root {
        match LoopDev::attach(&target.path) {
            Ok(l) => {
                let p = l.0.clone();
                targets.push(("loop device".into(), p, Some(l)));
            }
            Err(e) => eprintln!("bench: no loop device: {e}"),
        }
    }

    let server_dir = img.lz4.parent().unwrap_or(Path::new("."));
    let server = fixtures::http::TestServer::serve_dir(server_dir)?;
    let name = img.lz4.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    let http_url = url::Url::parse(&server.url_for(&format!("/{name}")))?;
    let file_url = url::Url::from_file_path(fs::canonicalize(&img.lz4)?).map_err(|()| "url")?;
    let http = Arc::new(HttpTransport::new(HttpOptions {
        stall_timeout: Duration::from_secs(60),
        ..HttpOptions::default()
    })?);
    let http_only = median(repeat(|| {
        let t = Instant::now();
        io::copy(&mut http.fetch(&http_url)?, &mut io::sink())?;
        Ok(t.elapsed().as_secs_f64())
    })?);
    rows.push(row(
        "HTTP loopback download only",
        dec,
        http_only,
        format!(
            "{:.0} MiB/s of compressed bytes",
            img.compressed_len as f64 / MIB / http_only
        ),
    ));

    let mut summary = serde_json::Map::new();
    let phases = |o: &OursResult| {
        format!(
            "until the final flush returned {:.3} s, read-back of the rest {:.3} s, CPU {:.2} s, direct={}",
            o.write_phase, o.verify_phase, o.cpu, o.direct
        )
    };
    for (tname, tpath, _guard) in &targets {
        eprintln!("bench: target {tname} ({})", tpath.display());
        let part = &target.part;
        let mut direct = false;
        let w1 = median(repeat(|| {
            drop_cache(tpath, part)?;
            let (t, d) = write_limit(&decoded, tpath, part, 1)?;
            direct = d;
            Ok(t)
        })?);
        rows.push(row(
            &format!("[{tname}] direct write only, 1 in flight"),
            dec,
            w1,
            if direct {
                "O_DIRECT 4 MiB writes + fdatasync"
            } else {
                "buffered (no O_DIRECT) + fdatasync"
            },
        ));
        let w2 = median(repeat(|| {
            drop_cache(tpath, part)?;
            Ok(write_limit(&decoded, tpath, part, 2)?.0)
        })?);
        rows.push(row(
            &format!("[{tname}] direct write only, 2 in flight"),
            dec,
            w2,
            "O_DIRECT 4 MiB writes from 2 threads + fdatasync",
        ));
        // The limit is the best this target does.
        let w = w1.min(w2);
        let r = median(repeat(|| {
            drop_cache(tpath, part)?;
            read_limit(dec, tpath, part)
        })?);
        rows.push(row(
            &format!("[{tname}] direct read only"),
            dec,
            r,
            "O_DIRECT 4 MiB reads: what the read-back costs",
        ));
        let region = StageOptions::default().read_back_region;
        let wv = median(repeat(|| {
            drop_cache(tpath, part)?;
            write_verify_limit(&decoded, tpath, part, region)
        })?);
        rows.push(row(
            &format!("[{tname}] write + flush + read-back only, overlapped"),
            dec,
            wv,
            format!(
                "2 writes in flight; flush + O_DIRECT read-back of each {} MiB region while \
                 later ones are written; no decoding: what the invariant costs",
                region >> 20
            ),
        ));
        let wv_seq = median(repeat(|| {
            drop_cache(tpath, part)?;
            write_verify_limit(&decoded, tpath, part, 0)
        })?);
        rows.push(row(
            &format!("[{tname}] write + flush + read-back only, one after the other"),
            dec,
            wv_seq,
            "write all (2 in flight), fdatasync, then read all back",
        ));
        let (b_file, b_file_cpu) = median_by(
            repeat(|| {
                drop_cache(tpath, part)?;
                baseline(FileTransport.fetch(&file_url)?, tpath, part)
            })?,
            |b| b.0,
        );
        rows.push(row(
            &format!("[{tname}] baseline 1 thread, file://"),
            dec,
            b_file,
            format!("FrameDecoder + io::copy + fsync, CPU {b_file_cpu:.2} s"),
        ));
        let (b_http, b_http_cpu) = median_by(
            repeat(|| {
                drop_cache(tpath, part)?;
                baseline(http.fetch(&http_url)?, tpath, part)
            })?,
            |b| b.0,
        );
        rows.push(row(
            &format!("[{tname}] baseline 1 thread, HTTP"),
            dec,
            b_http,
            format!(
                "FrameDecoder + io::copy + fsync, CPU {b_http_cpu:.2} s (incl. server + reqwest threads)"
            ),
        ));
        let o_file = median_by(
            repeat(|| {
                drop_cache(tpath, part)?;
                ours(
                    &img,
                    FileTransport.fetch(&file_url)?,
                    tpath,
                    part,
                    &StageOptions::default(),
                )
            })?,
            |o| o.total,
        );
        rows.push(row(
            &format!("[{tname}] ours, file://"),
            dec,
            o_file.total,
            phases(&o_file),
        ));
        let o_http = median_by(
            repeat(|| {
                drop_cache(tpath, part)?;
                ours(
                    &img,
                    http.fetch(&http_url)?,
                    tpath,
                    part,
                    &StageOptions::default(),
                )
            })?,
            |o| o.total,
        );
        rows.push(row(
            &format!("[{tname}] ours, HTTP"),
            dec,
            o_http.total,
            phases(&o_http),
        ));
        let o_seq = median_by(
            repeat(|| {
                drop_cache(tpath, part)?;
                ours(
                    &img,
                    FileTransport.fetch(&file_url)?,
                    tpath,
                    part,
                    &StageOptions {
                        read_back_region: 0,
                        ..StageOptions::default()
                    },
                )
            })?,
            |o| o.total,
        );
        rows.push(row(
            &format!("[{tname}] ours, file://, read-back only after the end"),
            dec,
            o_seq.total,
            format!(
                "read_back_region 0 (the previous design); {}",
                phases(&o_seq)
            ),
        ));
        summary.insert(
            tname.clone(),
            serde_json::json!({
                "ours_over_baseline_file": b_file / o_file.total,
                "ours_over_baseline_http": b_http / o_http.total,
                "ours_over_direct_write_limit": w / o_file.total,
                "ours_over_direct_write_plus_read_limit": (w + r) / o_file.total,
                "ours_over_write_flush_read_back_overlapped_limit": wv / o_file.total,
                "ours_over_direct_read_floor": r / o_file.total,
                "ours_over_write_flush_read_back_sequential_limit": wv_seq / o_file.total,
                "ours_over_decode_limit": decode_n / o_file.total,
                "ours_write_phase_over_baseline_file": b_file / o_file.write_phase,
                "ours_write_phase_over_direct_write_limit": w / o_file.write_phase,
                "ours_write_phase_over_decode_limit": decode_n / o_file.write_phase,
            }),
        );
    }
    drop(targets);

    // --- peak RSS ----------------------------------------------------------------------------
    eprintln!("bench: peak RSS (child processes)");
    let rss1 = rss_child(&img, &target)?;
    eprintln!(
        "  peak RSS staging {} MiB image: {:.1} MiB",
        dec >> 20,
        rss1 as f64 / MIB
    );
    let mut rss = serde_json::json!({ format!("{}MiB", dec >> 20): rss1 });
    if args.four_gib {
        let big = ensure_image(&dir, args.size_mib * 4)?;
        let big_part = big.decoded_len.div_ceil(1 << 20) * (1 << 20) + (16 << 20);
        let big_target = ensure_target(
            &dir,
            &format!("target-{}m.disk", args.size_mib * 4),
            big_part,
        )?;
        let rss4 = rss_child(&big, &big_target)?;
        eprintln!(
            "  peak RSS staging {} MiB image: {:.1} MiB",
            big.decoded_len >> 20,
            rss4 as f64 / MIB
        );
        rss[format!("{}MiB", big.decoded_len >> 20)] = rss4.into();
        rss["ratio_large_over_small"] = (rss4 as f64 / rss1 as f64).into();
    }
    json.insert("peak_rss_bytes".into(), rss);
    json.insert(
        "rows".into(),
        rows.iter()
            .map(|r| serde_json::json!({"name": r.name, "seconds": r.secs, "decoded_mib_per_s": r.mbps, "note": r.note}))
            .collect(),
    );
    json.insert("ratios".into(), summary.into());
    let mut m = machine();
    json.insert("loadavg_end".into(), m["loadavg_start"].take());

    // --- table -------------------------------------------------------------------------------
    let mut table = String::new();
    writeln!(
        table,
        "\n| measurement | MiB/s (decoded) | seconds | note |"
    )?;
    writeln!(table, "|---|---:|---:|---|")?;
    for r in &rows {
        writeln!(
            table,
            "| {} | {:.1} | {:.3} | {} |",
            r.name, r.mbps, r.secs, r.note
        )?;
    }
    writeln!(
        table,
        "\nratios: {}",
        serde_json::to_string_pretty(&json["ratios"])?
    )?;
    writeln!(table, "peak RSS: {}", json["peak_rss_bytes"])?;
    println!("{table}");
    let out = args
        .json
        .clone()
        .unwrap_or_else(|| dir.join("staging.json"));
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    println!("JSON written to {}", out.display());
    Ok(())
}
