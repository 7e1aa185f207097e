//! `cargo bench -p updog --bench debian_pair`: bytes on the wire, host wall time and peak RSS,
//! and the publisher's cost, of a full image, chunks only and patches against the running
//! release, for two pairs of ext4 images side by side:
//!
//! - **Debian**: two 1 GiB root file systems of a container host built with `mmdebstrap` by
//!   `scripts/bench-debian-images` (old: Debian 13 "trixie" main; new: the same packages with
//!   trixie-security and trixie-updates), cached under `$CARGO_TARGET_DIR/bench-debian/`;
//! - **synthetic**: the small-change pair of the `delta` bench (96 MiB, cached under
//!   `$CARGO_TARGET_DIR/bench-delta/images-2/`).
//!
//! For each pair the publisher side runs the release binaries (`updata compress`, `make-index`
//! of both images into one store, `make-patch` of the new against the old) under
//! `/usr/bin/time`, `casync make` of each image into its own store (casync's new chunks: the
//! compressed chunk files of the new store that the old store lacks), `lz4 -9`, and
//! `zstd -19 --long=30 --patch-from=old new` as the floor. The host side stages the new image on
//! set B of a GPT disk whose set A holds the old one, in a child process (its VmHWM is its peak
//! RSS), from a loopback HTTP server, unthrottled and through the server's shared 100 Mbit/s
//! token bucket:
//!
//! - full: the lz4 -9 image through the staging pipeline;
//! - chunks: the new index, seeded with the old index, through `updog::delta::assemble`;
//! - patches: what `updog::delta::stage` does when the update lists a patch for the running
//!   version: the patch index parsed against both indexes, the patch data streamed through
//!   `casync::patch::apply_stream` (windows read from set A and verified against the old index,
//!   chunks that earlier entries produced read back from set B and verified against the new one,
//!   every chunk verified against the new index before it is written) on a thread of its own,
//!   beside the assembly (`assemble_beside`), which copies and fetches the rest meanwhile and
//!   takes each entry's chunks as in place once reported written (read back against the xxh3
//!   of what was written). The child's last line gives where the time went (`phases_secs`: when
//!   the patch pass ended, when the writing ended, and the read-back after it). The TUF reads
//!   of the real host are left out (the indexes and patch files are fetched as plain files).
//!
//! Set B is compared with the new image after every run. `BENCH_PAIRS=debian` or `synthetic` runs
//! one pair only. `BENCH_RUNS` (default 1) runs of each path per link; the median wall time and
//! the highest peak RSS are reported. `updata` must be built first:
//! `cargo build --release -p updata`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fixtures::disk::{DiskImageBuilder, PartKind};
use fixtures::http::TestServer;
use sha2::{Digest, Sha256};
use updog::delta::assemble::assemble_beside;
use updog::delta::patch::{NewImage, PatchIndex, apply_stream};
use updog::delta::{
    AssembleOptions, AssembleProgress, Beside, BesideReport, BlobIndex, ChunkFetcher, Region,
};
use updog::transport::{HttpOptions, HttpTransport, Transport};

mod common;
#[path = "common/host.rs"]
mod host;
#[path = "common/synthetic.rs"]
mod synthetic;

use host::{Measured, child, child_full, median, mib, report, run_cmd};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The size of each Debian image.
const DEBIAN_IMAGE: u64 = 1 << 30;
const MBIT_100: f64 = 100e6 / 8.0;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !common::should_run(&args, "debian_pair") {
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("--child-full") => child_full(&args[1..]),
        Some("--child-delta") => child_delta(&args[1..]),
        _ => run(),
    }
}

/// Stages the new image from chunks (and first from a patch, when its two URLs are given).
fn child_delta(a: &[String]) -> Res<()> {
    let (index_url, store_url, seed_index, disk, patch) = match a {
        [i, s, seed, d] => (i, s, seed, d, None),
        [i, s, seed, d, pi, pd] => (i, s, seed, d, Some((pi, pd))),
        _ => {
            return Err(
                "usage: --child-delta INDEX_URL STORE_URL SEED_INDEX DISK [PATCH_INDEX_URL PATCH_DATA_URL]"
                    .into(),
            );
        }
    };
    let disk = Path::new(disk);
    let d = bootpart::Disk::open(disk)?;
    let (a_root, b_root) = (
        d.layout().set(bootpart::SetId::A)?.root.clone(),
        d.layout().set(bootpart::SetId::B)?.root.clone(),
    );
    let transport: Arc<dyn Transport> = Arc::new(HttpTransport::new(HttpOptions::default())?);
    let get = |url: &str| -> Res<Vec<u8>> {
        let mut bytes = Vec::new();
        transport
            .fetch(&url::Url::parse(url)?)?
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let t = Instant::now();
    let index_bytes = get(index_url)?;
    let index = BlobIndex::parse(&index_bytes)?;
    let seed = BlobIndex::parse(&fs::read(seed_index)?)?;
    let active = Region::open(disk, a_root.byte_offset(), a_root.byte_len(), false)?;
    let inactive = Region::open(disk, b_root.byte_offset(), b_root.byte_len(), true)?;
    let fetcher = ChunkFetcher::new(Arc::clone(&transport), url::Url::parse(store_url)?);
    let mut read_back_from = None;
    let mut on_progress = |p: &AssembleProgress| {
        if matches!(p, AssembleProgress::Verifying { .. }) && read_back_from.is_none() {
            read_back_from = Some(t.elapsed().as_secs_f64());
        }
    };
    // As the host does: the patch pass on its own thread beside the assembly, each entry's
    // chunks reported once written.
    let mut patch_bytes = 0;
    let mut patched = serde_json::Value::Null;
    let mut patch_done = 0.0;
    let done = std::thread::scope(|scope| -> Res<_> {
        let mut beside = None;
        let mut applying = None;
        if let Some((patch_index_url, data_url)) = patch {
            let patch_index = get(patch_index_url)?;
            let parsed = PatchIndex::parse(&patch_index, &seed, &index)?;
            let mut data = transport.fetch(&url::Url::parse(data_url)?)?;
            let (reports, reports_rx) = std::sync::mpsc::channel();
            beside = Some(Beside {
                ranges: parsed.entries.iter().map(|e| e.chunks.clone()).collect(),
                reports: reports_rx,
            });
            let (active, inactive, seed, index) = (&active, &inactive, &seed, &index);
            applying = Some(scope.spawn(move || {
                let applied = apply_stream(
                    &parsed,
                    seed,
                    index,
                    &mut data,
                    |offset, buf| active.read_at(buf, offset),
                    NewImage {
                        write: |offset, bytes: &[u8]| {
                            inactive.write_at(bytes, offset)?;
                            if let Some(report) = BesideReport::written(index, offset, bytes) {
                                let _ = reports.send(report);
                            }
                            Ok(())
                        },
                        read: |offset, buf: &mut [u8]| inactive.read_at(buf, offset),
                    },
                    &|| false,
                );
                (applied, patch_index.len(), t.elapsed().as_secs_f64())
            }));
        }
        let done = assemble_beside(
            &inactive,
            &index,
            Some((&active, &seed)),
            &fetcher,
            &AssembleOptions::default(),
            beside,
            &AtomicBool::new(false),
            &mut on_progress,
        )?;
        if let Some(applying) = applying {
            let (applied, index_len, at) =
                applying.join().map_err(|_| "the patch pass panicked")?;
            let applied = applied?;
            if !applied.failed.is_empty() {
                return Err(format!("patch entries failed: {:?}", applied.failed).into());
            }
            patch_bytes = index_len as u64 + applied.data_read;
            patched = serde_json::json!({"chunks": applied.chunks(), "data": applied.data_read, "index": index_len});
            patch_done = at;
        }
        Ok(done)
    })?;
    let secs = t.elapsed().as_secs_f64();
    let read_back_from = read_back_from.unwrap_or(secs);
    report(&Measured {
        secs,
        downloaded: done.downloaded + index_bytes.len() as u64 + patch_bytes,
        extra: serde_json::json!({
            "fetched_chunks": done.fetched_chunks,
            "compressed_chunk_bytes": done.downloaded,
            "index_bytes": index_bytes.len(),
            "patch": patched,
            // Where the time went: the patch pass (beside the chunk writing), the chunk writing
            // (with the read-back of finished stretches beside it), and the rest of the
            // read-back.
            "phases_secs": {"patch_pass": patch_done, "writing": read_back_from, "read_back_tail": secs - read_back_from},
        }),
        ..Measured::default()
    });
    Ok(())
}

/// A pair of raw images: the running release and the next one.
struct Pair {
    name: &'static str,
    old: PathBuf,
    new: PathBuf,
}

/// Builds the Debian pair's images from the trees of `scripts/bench-debian-images` when they
/// are not there yet, then removes the trees.
fn debian_images(dir: &Path) -> Res<Pair> {
    let pair = Pair {
        name: "Debian trixie → + security/updates",
        old: dir.join("old.img"),
        new: dir.join("new.img"),
    };
    if pair.old.exists() && pair.new.exists() {
        return Ok(pair);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-debian-images");
    run_cmd(Command::new(script).arg(dir))?;
    for (name, img) in [("old", &pair.old), ("new", &pair.new)] {
        let tree = dir.join(format!("{name}-root"));
        eprintln!("bench: mkfs.ext4 -d {}", tree.display());
        let part = dir.join(format!("{name}.img.part"));
        fixtures::ext4::build_image(&tree, DEBIAN_IMAGE, &part)?;
        fs::rename(&part, img)?;
        fs::remove_dir_all(&tree)?;
        let _ = fs::remove_file(dir.join(format!("{name}.done")));
    }
    Ok(pair)
}

/// The packages (name → version) listed in a `dpkg-query -W` output.
fn packages(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// How the Debian pair's package lists differ.
fn package_diff(dir: &Path) -> String {
    let (old, new) = (
        packages(&dir.join("old.packages")),
        packages(&dir.join("new.packages")),
    );
    let changed: Vec<String> = new
        .iter()
        .filter(|(n, v)| old.get(*n).is_some_and(|o| o != *v))
        .map(|(n, v)| format!("{n} {} → {v}", old[n]))
        .collect();
    let added: Vec<&String> = new.keys().filter(|n| !old.contains_key(*n)).collect();
    let removed: Vec<&String> = old.keys().filter(|n| !new.contains_key(*n)).collect();
    format!(
        "{} packages in new, {} upgraded: {}; added: {:?}; removed: {:?}",
        new.len(),
        changed.len(),
        changed.join(", "),
        added,
        removed
    )
}

/// Wall time and peak RSS of a command, from `/usr/bin/time`.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    secs: f64,
    rss_kib: u64,
}

fn timed(cmd: &mut Command, scratch: &Path) -> Res<Cost> {
    let out = scratch.join("time.txt");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    run_cmd(&mut timed)?;
    let text = fs::read_to_string(&out)?;
    let mut words = text.split_whitespace();
    let secs = words.next().ok_or("no time")?.parse()?;
    let rss_kib = words.next().ok_or("no rss")?.parse()?;
    Ok(Cost { secs, rss_kib })
}

/// Files under `dir` (relative path → length).
fn files(dir: &Path) -> Res<BTreeMap<PathBuf, u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir)?.to_owned(), e.metadata()?.len());
            }
        }
    }
    Ok(out)
}

/// What the publisher side made and measured for one pair.
#[derive(Debug, Default)]
struct Published {
    image_len: u64,
    lz4: u64,
    lz4_cost: Cost,
    updata_compress: u64,
    compress_cost: Cost,
    index_cost: Cost,
    patch_cost: Cost,
    patch_data: u64,
    patch_index: u64,
    casync_new: u64,
    casync_new_chunks: usize,
    casync_cost: Cost,
    zstd_floor: u64,
    zstd_cost: Cost,
}

fn publish(pair: &Pair, serve: &Path, updata: &Path) -> Res<Published> {
    let _ = fs::remove_dir_all(serve);
    fs::create_dir_all(serve)?;
    let scratch = serve.join("scratch");
    fs::create_dir_all(&scratch)?;
    let mut p = Published {
        image_len: fs::metadata(&pair.new)?.len(),
        ..Published::default()
    };
    eprintln!("bench: {}: lz4 -9, updata compress", pair.name);
    p.lz4_cost = timed(
        Command::new("lz4")
            .args(["-9", "-q", "-f"])
            .arg(&pair.new)
            .arg(serve.join("new.img.lz4")),
        &scratch,
    )?;
    p.lz4 = fs::metadata(serve.join("new.img.lz4"))?.len();
    let compressed = scratch.join("new.updata.lz4");
    p.compress_cost = timed(
        Command::new(updata)
            .arg("compress")
            .arg(&pair.new)
            .arg(&compressed),
        &scratch,
    )?;
    p.updata_compress = fs::metadata(&compressed)?.len();
    fs::remove_file(&compressed)?;
    eprintln!("bench: {}: updata make-index, make-patch", pair.name);
    let store = serve.join("chunks");
    let index = |img: &Path, out: &str| {
        timed(
            Command::new(updata)
                .arg("make-index")
                .arg("--index")
                .arg(serve.join(out))
                .arg("--store")
                .arg(&store)
                .arg(img),
            &scratch,
        )
    };
    index(&pair.old, "old.caibx")?;
    p.index_cost = index(&pair.new, "new.caibx")?;
    p.patch_cost = timed(
        Command::new(updata)
            .arg("make-patch")
            .arg("--from-image")
            .arg(&pair.old)
            .arg("--from-index")
            .arg(serve.join("old.caibx"))
            .arg("--image")
            .arg(&pair.new)
            .arg("--index")
            .arg(serve.join("new.caibx"))
            .arg("--out")
            .arg(serve.join("new.patch"))
            .arg("--patch-index")
            .arg(serve.join("new.patch.json")),
        &scratch,
    )?;
    p.patch_data = fs::metadata(serve.join("new.patch"))?.len();
    p.patch_index = fs::metadata(serve.join("new.patch.json"))?.len();

    eprintln!("bench: {}: casync make (default chunk sizes)", pair.name);
    let casync = |img: &Path, name: &str| {
        timed(
            Command::new("casync")
                .arg("make")
                .arg(format!("--store={}", scratch.join(name).display()))
                .arg(scratch.join(format!("{name}.caibx")))
                .arg(img),
            &scratch,
        )
    };
    casync(&pair.old, "casync-old")?;
    p.casync_cost = casync(&pair.new, "casync-new")?;
    let old_store = files(&scratch.join("casync-old"))?;
    for (path, len) in files(&scratch.join("casync-new"))? {
        if !old_store.contains_key(&path) {
            p.casync_new += len;
            p.casync_new_chunks += 1;
        }
    }
    fs::remove_dir_all(scratch.join("casync-old"))?;
    fs::remove_dir_all(scratch.join("casync-new"))?;

    eprintln!("bench: {}: zstd -19 --long=30 --patch-from", pair.name);
    let floor = scratch.join("new.zst");
    p.zstd_cost = timed(
        Command::new("zstd")
            .args(["-19", "--long=30", "-q", "-f", "-T1"])
            .arg(format!("--patch-from={}", pair.old.display()))
            .arg(&pair.new)
            .arg("-o")
            .arg(&floor),
        &scratch,
    )?;
    p.zstd_floor = fs::metadata(&floor)?.len();
    fs::remove_file(&floor)?;
    Ok(p)
}

/// The host side of one pair: medians of each path on each link.
struct Staged {
    link: &'static str,
    full: Measured,
    chunks: Measured,
    patches: Measured,
}

fn stage_all(pair: &Pair, serve: &Path, dir: &Path, runs: usize) -> Res<Vec<Staged>> {
    let (old, new) = (fs::read(&pair.old)?, fs::read(&pair.new)?);
    let lz4_bytes = fs::read(serve.join("new.img.lz4"))?;
    let sha = hex::encode(Sha256::digest(&lz4_bytes));
    let disk_path = dir.join("disk.img");
    let disk = DiskImageBuilder::new()
        .root_size(new.len() as u64 + (8 << 20))
        .build(&disk_path)?;
    let a_root = disk.partition(PartKind::Root, 0).ok_or("no root A")?;
    let b_root = disk.partition(PartKind::Root, 1).ok_or("no root B")?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)?;
    f.write_all_at(&old, a_root.byte_offset(disk.sector_size))?;
    let server = TestServer::serve_dir(serve)?;
    server.set_keep_alive(true);
    let disk_arg = disk_path.display().to_string();
    let seed = serve.join("old.caibx").display().to_string();
    let delta = vec![
        "--child-delta".to_string(),
        server.url_for("/new.caibx"),
        server.url_for("/chunks/"),
        seed,
        disk_arg.clone(),
    ];
    let mut patch = delta.clone();
    patch.push(server.url_for("/new.patch.json"));
    patch.push(server.url_for("/new.patch"));
    let full = vec![
        "--child-full".to_string(),
        server.url_for("/new.img.lz4"),
        lz4_bytes.len().to_string(),
        sha,
        disk_arg,
    ];
    let paths = [("full", full), ("chunks", delta), ("patches", patch)];
    let mut out = Vec::new();
    for (link, rate) in [("unthrottled", None), ("100 Mbit/s", Some(MBIT_100))] {
        let mut measured: Vec<Vec<Measured>> = vec![Vec::new(); paths.len()];
        // The paths take turns, so a change in the machine's load hits all of them.
        for turn in 0..paths.len() * runs {
            let (name, args) = &paths[turn % paths.len()];
            // Set B starts from the old image (stale bytes), with cold caches.
            f.write_all_at(&old, b_root.byte_offset(disk.sector_size))?;
            f.sync_all()?;
            server.set_rate_limit(rate);
            eprintln!("bench: {}: {name}, {link}", pair.name);
            let m = child(args)?;
            let mut got = vec![0u8; new.len()];
            f.read_exact_at(&mut got, b_root.byte_offset(disk.sector_size))?;
            if got != new {
                return Err(
                    format!("{} {name} {link}: set B is not the new image", pair.name).into(),
                );
            }
            measured[turn % paths.len()].push(m);
        }
        let mut medians = measured.into_iter().map(median);
        let (Some(full), Some(chunks), Some(patches)) =
            (medians.next(), medians.next(), medians.next())
        else {
            return Err("no runs".into());
        };
        out.push(Staged {
            link,
            full,
            chunks,
            patches,
        });
    }
    drop(server);
    fs::remove_file(&disk_path)?;
    Ok(out)
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

fn run() -> Res<()> {
    for tool in ["mkfs.ext4", "lz4", "casync", "zstd", "/usr/bin/time"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is needed").into());
        }
    }
    let target = synthetic::target_dir();
    let updata = target.join("release/updata");
    if !updata.exists() {
        return Err(format!(
            "{} is needed: cargo build --release -p updata",
            updata.display()
        )
        .into());
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // `BENCH_PAIRS=synthetic` (or `debian`) runs one pair only.
    let only = std::env::var("BENCH_PAIRS").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    let debian_dir = target.join("bench-debian");
    fs::create_dir_all(&debian_dir)?;
    let mut pairs = Vec::new();
    let mut notes = String::new();
    if wanted("debian") {
        pairs.push(debian_images(&debian_dir)?);
        notes = package_diff(&debian_dir);
    }
    if wanted("synthetic") {
        let synthetic = synthetic::build_images(&target.join("bench-delta/images-2"))?;
        pairs.push(Pair {
            name: "synthetic small changes",
            old: synthetic.v1,
            new: synthetic.v2,
        });
    }
    let mut results = Vec::new();
    for pair in &pairs {
        let serve = debian_dir.join(format!("serve-{}", pair.name.replace(' ', "-")));
        let published = publish(pair, &serve, &updata)?;
        let staged = stage_all(pair, &serve, &debian_dir, runs)?;
        results.push((published, staged));
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
    println!("Debian pair: {notes}");
    println!();
    println!(
        "| pair | image | full lz4 -9 | `updata compress` | casync new chunks | ours, chunks only | ours, with patches | zstd floor | patches / casync | patches / floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (pair, (p, staged)) in pairs.iter().zip(&results) {
        let s = &staged[0];
        println!(
            "| {} | {:.0} MiB | {:.1} MiB | {:.1} MiB ({:.4}x) | {:.1} MiB ({} chunks, {:.3}x) | {:.1} MiB ({:.3}x) | {:.1} MiB ({:.3}x) | {:.1} MiB ({:.3}x) | {:.3}x | {:.3}x |",
            pair.name,
            mib(p.image_len),
            mib(p.lz4),
            mib(p.updata_compress),
            ratio(p.updata_compress, p.lz4),
            mib(p.casync_new),
            p.casync_new_chunks,
            ratio(p.casync_new, p.lz4),
            mib(s.chunks.downloaded),
            ratio(s.chunks.downloaded, p.lz4),
            mib(s.patches.downloaded),
            ratio(s.patches.downloaded, p.lz4),
            mib(p.zstd_floor),
            ratio(p.zstd_floor, p.lz4),
            ratio(s.patches.downloaded, p.casync_new),
            ratio(s.patches.downloaded, p.zstd_floor),
        );
    }
    println!();
    println!(
        "| pair | link | full | chunks only | with patches | patches / full | peak RSS full / chunks / patches |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (pair, (_, staged)) in pairs.iter().zip(&results) {
        for s in staged {
            println!(
                "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2}x | {:.1} / {:.1} / {:.1} MiB |",
                pair.name,
                s.link,
                s.full.secs,
                s.chunks.secs,
                s.patches.secs,
                s.patches.secs / s.full.secs,
                s.full.rss_kib as f64 / 1024.0,
                s.chunks.rss_kib as f64 / 1024.0,
                s.patches.rss_kib as f64 / 1024.0,
            );
        }
    }
    println!();
    println!(
        "| pair | lz4 -9 | `updata compress` | `updata make-index` (new) | `updata make-patch` | `casync make` (new) | zstd floor |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cost = |c: &Cost| format!("{:.1} s, {:.0} MiB", c.secs, c.rss_kib as f64 / 1024.0);
    for (pair, (p, _)) in pairs.iter().zip(&results) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            pair.name,
            cost(&p.lz4_cost),
            cost(&p.compress_cost),
            cost(&p.index_cost),
            cost(&p.patch_cost),
            cost(&p.casync_cost),
            cost(&p.zstd_cost),
        );
    }
    println!();
    for (pair, (p, staged)) in pairs.iter().zip(&results) {
        let s = &staged[0];
        println!(
            "{}: patch data {} bytes + index {} bytes; full run {}; chunks-only run {}; patches run {}",
            pair.name, p.patch_data, p.patch_index, s.full.extra, s.chunks.extra, s.patches.extra
        );
    }
    Ok(())
}
