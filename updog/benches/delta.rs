//! `cargo bench -p updog --bench delta`: a delta update against the full lz4 image, side by side.
//!
//! Two versions of an ext4 root image are built reproducibly (fixed UUID, hash seed, clock and
//! mtimes): v1 from copies of real files (`/usr/share`, `/usr/lib`), v2 the same with about 5% of
//! the files replaced by other real files, a few added, and 1 MiB in the middle of the largest
//! file rewritten. Set A of a GPT disk image holds v1; each run builds v2 on set B's root, in a
//! child process (so its peak RSS is its own), from a loopback HTTP server:
//!
//! - full: the lz4 -9 image through the staging pipeline (download, hash, decode, direct
//!   writes, read-back), as `updog update` does without an index;
//! - delta, twice: with casync's default chunk sizes (16K:64K:256K) and with 4K:16K:64K
//!   (`updata make-index --chunk-size`), each the v2 index (+ the v1 index cut with the same
//!   sizes as seed, as when the repository still lists the running version) and the chunks it
//!   lacks from its own store, through `updog::delta::assemble` (re-hash of every seed chunk,
//!   fetches 4 at a time, read-back).
//!
//! Each runs unthrottled and throttled to 100 Mbit/s: one token bucket in the test server paces
//! the bodies of all connections together, so the delta's several requests in flight share the
//! same link as the full image's one. Connections are kept alive between requests.
//! Reported: bytes downloaded, wall time (median of 3 runs, full and the deltas taking turns),
//! peak RSS (the highest of the runs), and the plan's estimate against what was fetched; then,
//! from the plan alone, what two other kinds of change would cost with each chunk size. The images live under
//! `$CARGO_TARGET_DIR/bench-delta/images-2` and are reused.

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
use updog::delta::plan::{Planned, Source};
use updog::delta::store::chunk_path;
use updog::delta::{
    AssembleOptions, BlobIndex, ChunkFetcher, ChunkSizes, Chunker, Plan, Region, StoreWriter,
    assemble,
};
use updog::transport::{HttpOptions, HttpTransport, Transport};

mod common;
#[path = "common/host.rs"]
mod host;
#[path = "common/synthetic.rs"]
mod synthetic;

use host::{Measured, child, child_full, median, mib, report, run_cmd};
use synthetic::{IMAGE_MIB, build_images};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const MBIT_100: f64 = 100e6 / 8.0;
const IN_FLIGHT: usize = 4;
/// Runs of each path per link (the median is reported).
const RUNS: usize = 3;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !common::should_run(&args, "delta") {
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("--child-full") => child_full(&args[1..]),
        Some("--child-delta") => child_delta(&args[1..]),
        _ => run(),
    }
}

fn child_delta(a: &[String]) -> Res<()> {
    let [index_url, store_url, seed_index, disk] = a else {
        return Err("usage: --child-delta INDEX_URL STORE_URL SEED_INDEX DISK".into());
    };
    let disk = Path::new(disk);
    let d = bootpart::Disk::open(disk)?;
    let (a_root, b_root) = (
        d.layout().set(bootpart::SetId::A)?.root.clone(),
        d.layout().set(bootpart::SetId::B)?.root.clone(),
    );
    let transport: Arc<dyn Transport> = Arc::new(HttpTransport::new(HttpOptions::default())?);
    let t = Instant::now();
    let mut index_bytes = Vec::new();
    transport
        .fetch(&url::Url::parse(index_url)?)?
        .read_to_end(&mut index_bytes)?;
    let index = BlobIndex::parse(&index_bytes)?;
    let seed = BlobIndex::parse(&fs::read(seed_index)?)?;
    let estimate = Planned::new(&index, Some(&seed)).plan;
    let active = Region::open(disk, a_root.byte_offset(), a_root.byte_len(), false)?;
    let inactive = Region::open(disk, b_root.byte_offset(), b_root.byte_len(), true)?;
    let fetcher = ChunkFetcher::new(transport, url::Url::parse(store_url)?);
    let options = AssembleOptions {
        in_flight: IN_FLIGHT,
        ..AssembleOptions::default()
    };
    let done = assemble(
        &inactive,
        &index,
        Some((&active, &seed)),
        &fetcher,
        &options,
        &AtomicBool::new(false),
        &mut |_| {},
    )?;
    report(&Measured {
        secs: t.elapsed().as_secs_f64(),
        downloaded: done.downloaded + index_bytes.len() as u64,
        extra: serde_json::json!({
            "plan_estimate": estimate,
            "plan_done": done.plan,
            "fetched_chunks": done.fetched_chunks,
            "seed_mismatches": done.seed_mismatches,
            "refetched": done.refetched,
            "compressed_chunk_bytes": done.downloaded,
            "index_bytes": index_bytes.len(),
        }),
        ..Measured::default()
    });
    Ok(())
}

/// lz4 -9 of `image` into `out`; its length.
fn lz4(image: &Path, out: &Path) -> Res<u64> {
    run_cmd(
        Command::new("lz4")
            .args(["-9", "-q", "-f"])
            .arg(image)
            .arg(out),
    )?;
    Ok(fs::metadata(out)?.len())
}

/// For a variant of v2, without staging it: the full lz4 image's bytes, and for each seed (an
/// index of v1) the plan of the variant's index cut with the seed's sizes and the compressed
/// bytes of the chunks it would download (each distinct chunk once).
fn plan_only(image: &Path, seeds: &[&BlobIndex], scratch: &Path) -> Res<(u64, Vec<(Plan, u64)>)> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch)?;
    let data = fs::read(image)?;
    let full = lz4(image, &scratch.join("image.lz4"))?;
    let mut out = Vec::new();
    for (n, seed) in seeds.iter().enumerate() {
        let store = StoreWriter::new(scratch.join(format!("chunks-{n}")))?;
        let index =
            Chunker::new(seed.sizes())?.index(&data[..], |id, c| store.put(id, c).map(|_| ()))?;
        let planned = Planned::new(&index, Some(seed));
        let mut ids = std::collections::HashSet::new();
        let mut bytes = 0;
        for chunk in index.chunks() {
            if planned.sources[chunk.number] == Source::Fetch && ids.insert(chunk.id) {
                bytes += fs::metadata(store.root().join(chunk_path(&chunk.id)))?.len();
            }
        }
        out.push((planned.plan, bytes));
    }
    fs::remove_dir_all(scratch)?;
    Ok((full, out))
}

/// One delta path of the bench: v1 and v2 indexed with one set of chunk sizes.
struct Arm {
    sizes: ChunkSizes,
    /// v1's index (the seed), on disk for the child.
    seed_path: PathBuf,
    seed: BlobIndex,
    /// v2's index, served at `/{name}.caibx`, with its chunks under `/{name}-chunks/`.
    name: String,
    v2_index: BlobIndex,
}

impl Arm {
    fn build(sizes: ChunkSizes, v1: &[u8], v2: &[u8], dir: &Path, serve: &Path) -> Res<Arm> {
        let name = format!("v2-{}-{}-{}", sizes.min, sizes.avg, sizes.max);
        let store = StoreWriter::new(serve.join(format!("{name}-chunks")))?;
        let chunker = Chunker::new(sizes)?;
        let seed = chunker.index(v1, |_, _| Ok(()))?;
        let v2_index = chunker.index(v2, |id, c| store.put(id, c).map(|_| ()))?;
        let seed_path = dir.join(format!(
            "v1-{}-{}-{}.caibx",
            sizes.min, sizes.avg, sizes.max
        ));
        fs::write(&seed_path, seed.to_bytes())?;
        fs::write(serve.join(format!("{name}.caibx")), v2_index.to_bytes())?;
        Ok(Arm {
            sizes,
            seed_path,
            seed,
            name,
            v2_index,
        })
    }

    fn label(&self) -> String {
        format!("delta {}", self.sizes)
    }
}

fn run() -> Res<()> {
    for tool in ["mkfs.ext4", "lz4"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Err(format!("{tool} is needed").into());
        }
    }
    let dir = synthetic::target_dir().join("bench-delta");
    fs::create_dir_all(&dir)?;
    // The images of this version of the builder (an older builder's images are not reused).
    let images = build_images(&dir.join("images-2"))?;
    let (v1, v2) = (fs::read(&images.v1)?, fs::read(&images.v2)?);
    let serve = dir.join("serve");
    let _ = fs::remove_dir_all(&serve);
    fs::create_dir_all(&serve)?;
    eprintln!("bench: lz4 -9 of v2");
    let lz4_path = serve.join("v2.img.lz4");
    lz4(&images.v2, &lz4_path)?;
    let lz4_bytes = fs::read(&lz4_path)?;
    let sha = hex::encode(Sha256::digest(&lz4_bytes));
    eprintln!("bench: indexes and chunk stores");
    let small = ChunkSizes {
        min: 4 << 10,
        avg: 16 << 10,
        max: 64 << 10,
    };
    let arms = [ChunkSizes::CASYNC_DEFAULT, small]
        .into_iter()
        .map(|sizes| Arm::build(sizes, &v1, &v2, &dir, &serve))
        .collect::<Res<Vec<Arm>>>()?;

    let disk_path = dir.join("disk.img");
    let disk = DiskImageBuilder::new()
        .root_size((IMAGE_MIB + 8) << 20)
        .build(&disk_path)?;
    let a_root = disk.partition(PartKind::Root, 0).ok_or("no root A")?;
    let b_root = disk.partition(PartKind::Root, 1).ok_or("no root B")?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)?;
    f.write_all_at(&v1, a_root.byte_offset(disk.sector_size))?;
    let server = TestServer::serve_dir(&serve)?;
    server.set_keep_alive(true);
    let disk_arg = disk_path.display().to_string();

    let mut rows = Vec::new();
    let mut fetch_lines = Vec::new();
    let mut json = serde_json::Map::new();
    for (label, rate) in [("unthrottled", None), ("100 Mbit/s", Some(MBIT_100))] {
        // Full and each delta take turns, RUNS times each, so a change in the machine's load
        // hits all of them; each reports its median run. Path 0 is the full image, path k the
        // delta of arms[k - 1].
        let paths = arms.len() + 1;
        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); paths];
        for turn in 0..paths * RUNS {
            let path = turn % paths;
            // Set B starts from stale bytes every time (the other version), and cold caches.
            f.write_all_at(&v1, b_root.byte_offset(disk.sector_size))?;
            f.sync_all()?;
            server.set_rate_limit(rate);
            let (mode, args): (String, Vec<String>) = match path.checked_sub(1) {
                None => (
                    "full".into(),
                    vec![
                        "--child-full".into(),
                        server.url_for("/v2.img.lz4"),
                        lz4_bytes.len().to_string(),
                        sha.clone(),
                        disk_arg.clone(),
                    ],
                ),
                Some(k) => (
                    arms[k].label(),
                    vec![
                        "--child-delta".into(),
                        server.url_for(&format!("/{}.caibx", arms[k].name)),
                        server.url_for(&format!("/{}-chunks/", arms[k].name)),
                        arms[k].seed_path.display().to_string(),
                        disk_arg.clone(),
                    ],
                ),
            };
            eprintln!("bench: {mode}, {label}, run {}", turn / paths + 1);
            let m = child(&args)?;
            // The result must be v2, whatever the path.
            let mut got = vec![0u8; v2.len()];
            f.read_exact_at(&mut got, b_root.byte_offset(disk.sector_size))?;
            if got != v2 {
                return Err(format!("{mode} {label}: set B root is not v2").into());
            }
            runs[path].push(m);
        }
        let medians: Vec<Measured> = runs.into_iter().map(median).collect();
        let full = &medians[0];
        let mut entry = serde_json::Map::new();
        entry.insert(
            "full".into(),
            serde_json::json!({"secs": full.secs, "downloaded": full.downloaded, "rss_kib": full.rss_kib}),
        );
        for (arm, delta) in arms.iter().zip(&medians[1..]) {
            rows.push(format!(
                "| {label} | {} | {:.1} MiB | {:.1} MiB | {:.2}x | {:.2} s | {:.2} s | {:.2}x | {:.1} MiB | {:.1} MiB |",
                arm.sizes,
                mib(full.downloaded),
                mib(delta.downloaded),
                delta.downloaded as f64 / full.downloaded as f64,
                full.secs,
                delta.secs,
                delta.secs / full.secs,
                full.rss_kib as f64 / 1024.0,
                delta.rss_kib as f64 / 1024.0,
            ));
            let x = &delta.extra;
            let tally = |v: &serde_json::Value| {
                format!(
                    "{} chunks ({:.1} MiB)",
                    v["chunks"].as_u64().unwrap_or(0),
                    mib(v["bytes"].as_u64().unwrap_or(0))
                )
            };
            fetch_lines.push(format!(
                "{label}, {}: index {} chunks ({:.0} KiB); plan: zero {}, seed {}, download {}; fetched {} chunks, {:.2} MiB compressed; seed mismatches {}, refetched {}",
                arm.sizes,
                arm.v2_index.len(),
                x["index_bytes"].as_u64().unwrap_or(0) as f64 / 1024.0,
                tally(&x["plan_estimate"]["zero"]),
                tally(&x["plan_estimate"]["seed"]),
                tally(&x["plan_estimate"]["download"]),
                x["fetched_chunks"],
                mib(x["compressed_chunk_bytes"].as_u64().unwrap_or(0)),
                x["seed_mismatches"],
                x["refetched"],
            ));
            entry.insert(
                arm.label(),
                serde_json::json!({"secs": delta.secs, "downloaded": delta.downloaded, "rss_kib": delta.rss_kib, "detail": delta.extra}),
            );
        }
        json.insert(label.to_string(), serde_json::Value::Object(entry));
    }
    println!(
        "image: ext4 {} MiB, v2 lz4 -9 {:.1} MiB; v2 index {}",
        IMAGE_MIB,
        mib(lz4_bytes.len() as u64),
        arms.iter()
            .map(|a| format!("{} chunks at {}", a.v2_index.len(), a.sizes))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| link | chunk sizes | full bytes | delta bytes | ratio | full time | delta time | ratio | full peak RSS | delta peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    for l in fetch_lines {
        println!("{l}");
    }
    // What the same bench gives for other kinds of change, from the plan alone (the rows above
    // show that the plan is what gets fetched).
    let seeds: Vec<&BlobIndex> = arms.iter().map(|a| &a.seed).collect();
    let mut other = Vec::new();
    for (what, image) in &images.variants {
        eprintln!("bench: plan only, v2 with {what}");
        let (full, plans) = plan_only(image, &seeds, &dir.join("scratch"))?;
        for (arm, (plan, bytes)) in arms.iter().zip(plans) {
            other.push(format!(
                "| {what} | {} | {:.1} MiB | {:.1} MiB | {:.2}x | {} of {} |",
                arm.sizes,
                mib(full),
                mib(bytes),
                bytes as f64 / full as f64,
                plan.download.chunks,
                plan.image.chunks,
            ));
            json.insert(
                format!("plan only: {what}, {}", arm.sizes),
                serde_json::json!({"full": full, "delta": bytes, "plan": plan}),
            );
        }
    }
    println!();
    println!(
        "| v2 instead with | chunk sizes | full bytes | delta bytes (plan) | ratio | chunks to download |"
    );
    println!("|---|---|---|---|---|---|");
    for r in other {
        println!("{r}");
    }
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
