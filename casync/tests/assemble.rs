//! Delta assembly end to end over HTTP on 127.0.0.1: two reproducible ext4 releases, a chunk
//! store served by a real loopback server, a disk file with the running set (v1) and the inactive
//! partition (holding stale bytes), and `casync::assemble` building v2 on it.
//!
//! Covered: the result equals the raw v2 image byte for byte with only the changed chunks
//! downloaded; a changed seed block is fetched instead; a corrupt chunk is refetched or refused
//! and never written; a chunk that inflates past its cap is refused; a store that 404s fails in a
//! way that asks for the full image; a process killed with SIGKILL at two points is resumed by a
//! run that downloads only what was missing (the server's request log shows it).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_128;

use casync::store::{ChunkError, chunk_path};
use casync::{
    AssembleError, AssembleOptions, AssembleProgress, Assembled, Beside, BesideReport, BlobIndex,
    ChunkFetcher, Chunker, Region, StoreWriter, assemble, assemble_beside,
};
use fixtures::http::{Fault, TestServer};
use tuf::transport::{HttpOptions, HttpTransport};

const PART: u64 = 16 << 20;
const IMAGE: u64 = 12 << 20;
const ACTIVE_AT: u64 = 1 << 20;
const INACTIVE_AT: u64 = ACTIVE_AT + PART;

struct Setup {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    v2: Vec<u8>,
    v1_index: BlobIndex,
    v2_index: BlobIndex,
    store: PathBuf,
    server: TestServer,
}

fn have_tools() -> bool {
    let ok = fixtures::ext4::have_mkfs();
    if !ok {
        fixtures::gate::skip("mkfs.ext4 is not installed");
    }
    ok
}

fn image(dir: &Path, version: u32) -> Vec<u8> {
    let tree = dir.join(format!("tree{version}"));
    fixtures::ext4::write_tree(&tree, &fixtures::ext4::release_tree(version, 30)).unwrap();
    let img = dir.join(format!("v{version}.img"));
    fixtures::ext4::build_image(&tree, IMAGE, &img).unwrap();
    fs::read(&img).unwrap()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (image(dir.path(), 1), image(dir.path(), 2));
    let store = dir.path().join("repo/chunks");
    let writer = StoreWriter::new(&store).unwrap();
    let index = |data: &[u8]| {
        Chunker::casync_default()
            .index(data, |id, c| writer.put(id, c).map(|_| ()))
            .unwrap()
    };
    let (v1_index, v2_index) = (index(&v1), index(&v2));
    // The disk: padding, the running partition (v1, then stale bytes), the inactive partition
    // (stale bytes from some older release).
    let mut disk = vec![0u8; (INACTIVE_AT + PART) as usize];
    let mut rng = fastrand::Rng::with_seed(3);
    rng.fill(&mut disk);
    disk[ACTIVE_AT as usize..ACTIVE_AT as usize + v1.len()].copy_from_slice(&v1);
    let disk_path = dir.path().join("disk.img");
    fs::write(&disk_path, &disk).unwrap();
    let server = TestServer::serve_dir(dir.path().join("repo")).unwrap();
    Setup {
        _dir: dir,
        disk: disk_path,
        v2,
        v1_index,
        v2_index,
        store,
        server,
    }
}

impl Setup {
    fn fetcher(&self) -> ChunkFetcher {
        let transport = HttpTransport::new(HttpOptions {
            retries: 1,
            ..HttpOptions::default()
        })
        .unwrap();
        let url = url::Url::parse(&self.server.url_for("/chunks/")).unwrap();
        ChunkFetcher::new(Arc::new(transport), url)
    }

    fn inactive(&self) -> Region {
        Region::open(&self.disk, INACTIVE_AT, PART, true).unwrap()
    }

    fn active(&self) -> Region {
        Region::open(&self.disk, ACTIVE_AT, PART, false).unwrap()
    }

    fn run(&self, options: &AssembleOptions) -> Result<Assembled, AssembleError> {
        let (inactive, active) = (self.inactive(), self.active());
        assemble(
            &inactive,
            &self.v2_index,
            Some((&active, &self.v1_index)),
            &self.fetcher(),
            options,
            &AtomicBool::new(false),
            &mut |_| {},
        )
    }

    fn inactive_bytes(&self) -> Vec<u8> {
        let disk = fs::read(&self.disk).unwrap();
        disk[INACTIVE_AT as usize..(INACTIVE_AT + IMAGE) as usize].to_vec()
    }

    /// Chunk files requested from the server since the log was last cleared.
    fn chunk_requests(&self) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/chunks/"))
            .map(|r| r.path)
            .collect()
    }

    fn chunk_file(&self, number: usize) -> PathBuf {
        let chunk = self.v2_index.chunk(number).unwrap();
        self.store.join(chunk_path(&chunk.id))
    }

    /// A chunk of v2 that must be fetched (not in v1, not zero).
    fn fetched_chunk(&self) -> usize {
        let v1: HashSet<_> = self.v1_index.chunks().map(|c| c.id).collect();
        let zero = self.v2_index.chunks().filter(|c| {
            self.v2[c.offset as usize..c.end() as usize]
                .iter()
                .all(|&b| b == 0)
        });
        let zero: HashSet<_> = zero.map(|c| c.number).collect();
        self.v2_index
            .chunks()
            .find(|c| !v1.contains(&c.id) && !zero.contains(&c.number))
            .unwrap()
            .number
    }
}

#[test]
fn delta_update_equals_v2_and_downloads_only_what_changed() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let done = s.run(&AssembleOptions::default()).unwrap();
    assert!(
        s.inactive_bytes() == s.v2,
        "inactive partition differs from the v2 image"
    );
    let p = done.plan;
    assert_eq!(p.image.bytes, IMAGE);
    let data = IMAGE - p.zero.bytes;
    assert!(p.zero.bytes > 0 && data > IMAGE / 4, "{p:?}");
    assert!(p.seed.bytes > data / 2, "reused {p:?}");
    assert!(p.fetch.bytes < data / 3, "fetched {p:?}");
    assert!(p.fetch.chunks > 0);
    assert_eq!(p.zero.bytes + p.seed.bytes + p.fetch.bytes, IMAGE);
    // Exactly the planned chunks went over the wire, each once.
    let requests = s.chunk_requests();
    assert_eq!(requests.len(), p.fetch.chunks);
    assert_eq!(
        requests.iter().collect::<HashSet<_>>().len(),
        requests.len()
    );
    assert_eq!(done.fetched_chunks, p.fetch.chunks);
    assert_eq!((done.seed_mismatches, done.refetched), (0, 0));
}

#[test]
fn seed_chunked_on_the_host_gives_the_same_result() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let active = s.active();
    // What a host without a published or cached index of its running set does: chunk it.
    let chunker = Chunker::new(s.v2_index.sizes()).unwrap();
    let reader = std::io::BufReader::with_capacity(1 << 20, active.reader());
    let seed_index = chunker.index(reader, |_, _| Ok(())).unwrap();
    let inactive = s.inactive();
    let done = assemble(
        &inactive,
        &s.v2_index,
        Some((&active, &seed_index)),
        &s.fetcher(),
        &AssembleOptions::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert!(s.inactive_bytes() == s.v2);
    assert!(
        done.plan.seed.bytes > (IMAGE - done.plan.zero.bytes) / 2,
        "{:?}",
        done.plan
    );
}

#[test]
fn a_changed_seed_block_is_fetched_instead() {
    if !have_tools() {
        return;
    }
    let s = setup();
    // Damage a chunk of v1 that v2 reuses, on the running partition.
    let v1_ids: HashSet<_> = s.v1_index.chunks().map(|c| c.id).collect();
    let reused = s
        .v2_index
        .chunks()
        .filter(|c| v1_ids.contains(&c.id))
        .find(|c| {
            s.v2[c.offset as usize..c.end() as usize]
                .iter()
                .any(|&b| b != 0)
        })
        .unwrap();
    let seed_chunk = s.v1_index.chunks().find(|c| c.id == reused.id).unwrap();
    let mut disk = fs::read(&s.disk).unwrap();
    disk[(ACTIVE_AT + seed_chunk.offset + 100) as usize] ^= 0xff;
    fs::write(&s.disk, &disk).unwrap();

    let done = s.run(&AssembleOptions::default()).unwrap();
    assert!(s.inactive_bytes() == s.v2);
    assert!(done.seed_mismatches >= 1);
    let wanted = format!("/chunks/{}", chunk_path(&reused.id));
    assert!(
        s.chunk_requests().contains(&wanted),
        "the damaged seed chunk was not fetched"
    );
}

#[test]
fn a_corrupt_chunk_is_refetched_or_refused_and_never_written() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let number = s.fetched_chunk();
    let chunk = s.v2_index.chunk(number).unwrap();
    let path = s.chunk_file(number);
    let good = fs::read(&path).unwrap();
    // Valid zstd of bytes of the right length that are not the chunk.
    let wrong = vec![0x5au8; chunk.len as usize];
    let bad = zstd::bulk::compress(&wrong, 3).unwrap();
    fs::write(&path, &bad).unwrap();

    let err = s
        .run(&AssembleOptions {
            attempts: 3,
            ..AssembleOptions::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, AssembleError::Chunk { number: n, source: ChunkError::HashMismatch { .. }, .. } if *n == number),
        "{err}"
    );
    assert!(err.should_fall_back());
    let wanted = format!("/chunks/{}", chunk_path(&chunk.id));
    assert_eq!(
        s.chunk_requests().iter().filter(|p| **p == wanted).count(),
        3,
        "three attempts"
    );
    let on_disk = s.inactive_bytes();
    let at = chunk.offset as usize..chunk.end() as usize;
    assert!(
        on_disk[at.clone()] != wrong[..],
        "the corrupt chunk was written"
    );

    // Bad on the first request only (an endless body, past the compressed cap): refused,
    // fetched again, and the update works.
    fs::write(&path, &good).unwrap();
    s.server.clear_log();
    s.server.fault_times(&wanted, Fault::Endless, 1);
    let done = s.run(&AssembleOptions::default()).unwrap();
    assert!(s.inactive_bytes() == s.v2);
    assert_eq!(done.refetched, 1);
    assert_eq!(
        s.chunk_requests().iter().filter(|p| **p == wanted).count(),
        2
    );
}

#[test]
fn a_chunk_that_inflates_past_its_cap_is_refused() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let number = s.fetched_chunk();
    let chunk = s.v2_index.chunk(number).unwrap();
    // 64 MiB of zeros in a few kilobytes.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < 64 * 1024);
    fs::write(s.chunk_file(number), &bomb).unwrap();
    let err = s.run(&AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            AssembleError::Chunk {
                source: ChunkError::Decompress { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        fixtures::error_chain(&err).contains(&format!("at most {} bytes", chunk.len)),
        "{err}"
    );
    let on_disk = s.inactive_bytes();
    assert!(
        on_disk[chunk.offset as usize..chunk.end() as usize]
            .iter()
            .any(|&b| b != 0)
    );
}

#[test]
fn a_store_that_404s_asks_for_the_full_image() {
    if !have_tools() {
        return;
    }
    let s = setup();
    fs::remove_dir_all(&s.store).unwrap();
    let err = s.run(&AssembleOptions::default()).unwrap_err();
    assert!(err.should_fall_back(), "{err}");
    assert!(
        matches!(&err, AssembleError::Chunk { source, .. } if source.is_not_found()),
        "{err}"
    );
    // Not retried: a store without the chunk does not grow it.
    assert!(s.chunk_requests().len() <= 4, "{:?}", s.chunk_requests());
}

/// Runs `assemble` in a child process (this test binary) that the parent kills.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var("DELTA_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [disk, v1, v2, url, resumed] = parts[..] else {
        panic!("bad DELTA_CHILD {spec}");
    };
    let index = |p: &str| BlobIndex::parse(&fs::read(p).unwrap()).unwrap();
    let (v1, v2) = (index(v1), index(v2));
    let transport = HttpTransport::new(HttpOptions::default()).unwrap();
    let fetcher = ChunkFetcher::new(Arc::new(transport), url::Url::parse(url).unwrap());
    let inactive = Region::open(Path::new(disk), INACTIVE_AT, PART, true).unwrap();
    let active = Region::open(Path::new(disk), ACTIVE_AT, PART, false).unwrap();
    let options = AssembleOptions {
        in_flight: 2,
        resumed: resumed == "1",
        ..AssembleOptions::default()
    };
    assemble(
        &inactive,
        &v2,
        Some((&active, &v1)),
        &fetcher,
        &options,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
}

#[test]
fn killed_runs_resume_and_fetch_only_what_is_missing() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let dir = s.disk.parent().unwrap();
    let (v1_path, v2_path) = (dir.join("v1.caibx"), dir.join("v2.caibx"));
    fs::write(&v1_path, s.v1_index.to_bytes()).unwrap();
    fs::write(&v2_path, s.v2_index.to_bytes()).unwrap();
    let full_plan = casync::plan::Planned::new(&s.v2_index, Some(&s.v1_index)).plan;
    assert!(full_plan.fetch.chunks >= 8, "{full_plan:?}");
    // Slow enough that a kill lands in the middle of the downloads.
    s.server.fault_all(Fault::Delay(Duration::from_millis(40)));

    // Chunks to fetch that are already intact at their place on the inactive partition: the
    // kills wait for written chunks, not for requests (under load a child can be killed after
    // its requests and before any write, which leaves nothing to resume).
    let fetched_on_disk = || {
        let on_disk = s.inactive_bytes();
        let planned = casync::plan::Planned::new(&s.v2_index, Some(&s.v1_index));
        s.v2_index
            .chunks()
            .filter(|c| planned.sources[c.number] == casync::plan::Source::Fetch)
            .filter(|c| casync::ChunkId::of(&on_disk[c.offset as usize..c.end() as usize]) == c.id)
            .count()
    };
    let mut requested_before = 0;
    let mut written_before = fetched_on_disk();
    for (round, kill_after) in [(0, 2), (1, full_plan.fetch.chunks / 3)] {
        let spec = format!(
            "{}|{}|{}|{}|{}",
            s.disk.display(),
            v1_path.display(),
            v2_path.display(),
            s.server.url_for("/chunks/"),
            if round == 0 { "0" } else { "1" }
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_process_entry", "--nocapture"])
            .env("DELTA_CHILD", spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while s.chunk_requests().len() < requested_before + kill_after
            || fetched_on_disk() <= written_before
        {
            assert!(
                child.try_wait().unwrap().is_none(),
                "child finished before the kill"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        requested_before = s.chunk_requests().len();
        written_before = fetched_on_disk();
    }
    s.server.clear_faults();

    // What a verified resume may keep: every chunk of v2 intact at its place, computed here.
    let on_disk = s.inactive_bytes();
    let intact: HashSet<usize> = s
        .v2_index
        .chunks()
        .filter(|c| casync::ChunkId::of(&on_disk[c.offset as usize..c.end() as usize]) == c.id)
        .map(|c| c.number)
        .collect();
    let planned = casync::plan::Planned::new(&s.v2_index, Some(&s.v1_index));
    let missing: HashSet<String> = planned
        .sources
        .iter()
        .enumerate()
        .filter(|(n, src)| **src == casync::plan::Source::Fetch && !intact.contains(n))
        .map(|(n, _)| format!("/chunks/{}", chunk_path(&s.v2_index.chunk(n).unwrap().id)))
        .collect();
    assert!(
        !missing.is_empty() && missing.len() < full_plan.fetch.chunks,
        "{} missing",
        missing.len()
    );

    s.server.clear_log();
    let done = s
        .run(&AssembleOptions {
            resumed: true,
            ..AssembleOptions::default()
        })
        .unwrap();
    assert!(s.inactive_bytes() == s.v2);
    let fetched: HashSet<String> = s.chunk_requests().into_iter().collect();
    assert_eq!(
        fetched, missing,
        "the resumed run fetched something other than what was missing"
    );
    assert_eq!(done.plan.fetch.chunks, missing.len());
    assert!(done.plan.in_place.chunks > 0);
}

#[test]
fn a_chunk_at_several_places_is_downloaded_once() {
    // An image that repeats itself (like identical files): content-defined chunks of the copies
    // are identical once the chunker has resynchronised, so the index names them several times.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut block = vec![0u8; 1 << 20];
    rng.fill(&mut block);
    let image: Vec<u8> = block.repeat(3);
    let writer = StoreWriter::new(dir.path().join("repo/chunks")).unwrap();
    let index = Chunker::casync_default()
        .index(&image[..], |id, c| writer.put(id, c).map(|_| ()))
        .unwrap();
    let disk = dir.path().join("disk.img");
    fs::write(&disk, vec![0xa5u8; image.len()]).unwrap();
    let server = TestServer::serve_dir(dir.path().join("repo")).unwrap();
    server.set_keep_alive(true);
    let transport = HttpTransport::new(HttpOptions::default()).unwrap();
    let url = url::Url::parse(&server.url_for("/chunks/")).unwrap();
    let fetcher = ChunkFetcher::new(Arc::new(transport), url);
    let target = Region::open(&disk, 0, image.len() as u64, true).unwrap();
    let done = assemble(
        &target,
        &index,
        None,
        &fetcher,
        &AssembleOptions::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert!(fs::read(&disk).unwrap() == image, "the image differs");
    let p = done.plan;
    assert_eq!(p.fetch.chunks, index.len());
    let distinct: HashSet<_> = index.chunks().map(|c| c.id).collect();
    assert!(
        distinct.len() < index.len() * 2 / 3,
        "{} of {}",
        distinct.len(),
        index.len()
    );
    assert_eq!(p.download.chunks, distinct.len());
    let requests: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(requests.len(), distinct.len(), "{requests:?}");
    assert_eq!(
        requests.iter().collect::<HashSet<_>>().len(),
        requests.len()
    );
    assert_eq!(done.fetched_chunks, distinct.len());
    // Several chunks in flight over a few kept-alive connections, not one connection a chunk.
    // Not `<= in_flight`: the client's pool hands a finished connection back on its own task,
    // and under load a worker's next request can come first and open one more (seen in CI).
    let connections = server.connection_count();
    assert!(
        connections * 2 <= requests.len(),
        "{connections} connections for {} requests",
        requests.len()
    );
}

/// Chunks the caller already wrote and verified (a patch's output) are neither read first nor
/// fetched; a caller that claims a chunk it did not write is caught by the read-back.
#[test]
fn chunks_the_caller_wrote_are_not_fetched_and_a_false_claim_fails_the_read_back() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let n = s.fetched_chunk();
    let chunk = s.v2_index.chunk(n).unwrap();
    let claimed = AssembleOptions {
        written: std::iter::once(n as u64..n as u64 + 1).collect(),
        ..AssembleOptions::default()
    };
    let wanted = format!("/chunks/{}", chunk_path(&chunk.id));

    // Claimed and not written: the partition holds stale bytes there, and the read-back says so.
    let err = s.run(&claimed).unwrap_err();
    assert!(
        !s.chunk_requests().contains(&wanted),
        "a chunk the caller claimed was fetched"
    );
    let text = error_chain(&err);
    assert!(text.contains(&format!("chunk {n}")), "{text}");

    // Written by the caller first: the run leaves it alone and the image is v2.
    let at = (INACTIVE_AT + chunk.offset) as usize;
    let mut disk = fs::read(&s.disk).unwrap();
    disk[at..at + chunk.len as usize]
        .copy_from_slice(&s.v2[chunk.offset as usize..chunk.end() as usize]);
    fs::write(&s.disk, &disk).unwrap();
    s.server.clear_log();
    let done = s.run(&claimed).unwrap();
    assert!(s.inactive_bytes() == s.v2);
    assert!(!s.chunk_requests().contains(&wanted));
    assert!(done.plan.in_place.chunks >= 1, "{:?}", done.plan);

    // With the digest of what the caller wrote, the read-back compares against it: the right
    // bytes under a digest of other bytes fail, the right digest passes.
    let good = &s.v2[chunk.offset as usize..chunk.end() as usize];
    let with = |digest: u128| AssembleOptions {
        written_digests: vec![(n as u64, digest)],
        ..claimed.clone()
    };
    let mut other = good.to_vec();
    other[0] ^= 1;
    let err = s.run(&with(xxh3_128(&other))).unwrap_err();
    let text = error_chain(&err);
    assert!(text.contains(&format!("read-back of chunk {n}")), "{text}");
    s.run(&with(xxh3_128(good))).unwrap();
    assert!(s.inactive_bytes() == s.v2);
}

/// A writer beside the assembly (as a patch pass is) writes some ranges while it runs and
/// reports them; ranges it reports failed, or never reports, are placed by the assembly from
/// the seed or the store; a range reported written but not written fails the read-back.
#[test]
fn chunks_written_beside_the_assembly_are_taken_and_the_rest_placed_anyway() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let v1: HashSet<_> = s.v1_index.chunks().map(|c| c.id).collect();
    let data = |n: usize| {
        let c = s.v2_index.chunk(n).unwrap();
        !s.v2[c.offset as usize..c.end() as usize]
            .iter()
            .all(|&b| b == 0)
    };
    let new: Vec<usize> = (0..s.v2_index.len())
        .filter(|&n| data(n) && !v1.contains(&s.v2_index.chunk(n).unwrap().id))
        .collect();
    let seed = (0..s.v2_index.len())
        .find(|&n| data(n) && v1.contains(&s.v2_index.chunk(n).unwrap().id))
        .unwrap();
    assert!(new.len() >= 4, "{new:?}");
    // Written and reported; reported failed; never reported; a seed chunk reported failed.
    let (written, failed, silent) = (new[0], new[1], new[2]);
    let range = |n: usize| n as u64..n as u64 + 1;
    let path = |n: usize| format!("/chunks/{}", chunk_path(&s.v2_index.chunk(n).unwrap().id));
    // `early`: the writer is done before the assembly starts (a patch pass ahead of the
    // writing loop), else part way through it.
    let run = |write: bool, early: bool| {
        let (reports, reports_rx) = std::sync::mpsc::channel();
        let beside = Beside {
            ranges: vec![range(written), range(failed), range(silent), range(seed)],
            reports: reports_rx,
        };
        let (inactive, active) = (s.inactive(), s.active());
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let reports = reports;
                if !early {
                    std::thread::sleep(Duration::from_millis(30));
                }
                let c = s.v2_index.chunk(written).unwrap();
                let bytes = &s.v2[c.offset as usize..c.end() as usize];
                if write {
                    s.inactive().write_at(bytes, c.offset).unwrap();
                }
                let report = BesideReport::written(&s.v2_index, c.offset, bytes).unwrap();
                assert_eq!(
                    report,
                    BesideReport::Written {
                        chunks: range(written),
                        digests: vec![xxh3_128(bytes)]
                    }
                );
                reports.send(report).unwrap();
                for n in [failed, seed] {
                    reports
                        .send(BesideReport::Failed { chunks: range(n) })
                        .unwrap();
                }
                // Closed without a word on `silent`.
            });
            if early {
                writer.join().unwrap();
            }
            // The most image bytes the progress ever reported placed.
            let mut most = 0;
            let done = assemble_beside(
                &inactive,
                &s.v2_index,
                Some((&active, &s.v1_index)),
                &s.fetcher(),
                &AssembleOptions::default(),
                Some(beside),
                &AtomicBool::new(false),
                &mut |p| {
                    if let AssembleProgress::Writing { done, .. } = *p {
                        most = most.max(done);
                    }
                },
            );
            (done, most)
        })
    };

    for early in [true, false] {
        s.server.clear_log();
        let (done, most) = run(true, early);
        let done = done.unwrap();
        assert!(s.inactive_bytes() == s.v2, "the image differs");
        // Each chunk counted once, whether reported before the loop got to it or after.
        assert_eq!(most, IMAGE, "early: {early}");
        let requests = s.chunk_requests();
        assert!(
            !requests.contains(&path(written)),
            "a written chunk was fetched"
        );
        assert!(!requests.contains(&path(seed)), "a seed chunk was fetched");
        for n in [failed, silent] {
            assert!(requests.contains(&path(n)), "chunk {n} was not fetched");
        }
        assert_eq!(done.plan.in_place.chunks, 1, "{:?}", done.plan);
        assert_eq!(done.plan.fetch.chunks, new.len() - 1, "{:?}", done.plan);
    }

    // Reported written and not written: the partition is back to stale bytes there.
    let c = s.v2_index.chunk(written).unwrap();
    let mut disk = fs::read(&s.disk).unwrap();
    let at = (INACTIVE_AT + c.offset) as usize;
    disk[at..at + c.len as usize].fill(0x5a);
    fs::write(&s.disk, &disk).unwrap();
    let err = run(false, false).0.unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.contains(&format!("read-back of chunk {written}")),
        "{text}"
    );
    // Bytes that do not end at a chunk boundary make no report.
    let past_the_end = &s.v2[c.offset as usize..=c.end() as usize];
    assert!(BesideReport::written(&s.v2_index, c.offset, past_the_end).is_none());
    assert!(BesideReport::written(&s.v2_index, c.offset + 1, &[0]).is_none());
}

/// A resumed run: chunks the writer beside hands back (failed, or never reported) that a
/// stopped run already put in place are checked there and kept, not fetched again; one that
/// is not right there is fetched.
#[test]
fn a_resumed_run_keeps_in_place_the_chunks_the_writer_beside_hands_back() {
    if !have_tools() {
        return;
    }
    let s = setup();
    let v1: HashSet<_> = s.v1_index.chunks().map(|c| c.id).collect();
    let new: Vec<usize> = (0..s.v2_index.len())
        .filter(|&n| {
            let c = s.v2_index.chunk(n).unwrap();
            !v1.contains(&c.id)
                && s.v2[c.offset as usize..c.end() as usize]
                    .iter()
                    .any(|&b| b != 0)
        })
        .collect();
    assert!(new.len() >= 3, "{new:?}");
    let (failed, silent, damaged) = (new[0], new[1], new[2]);
    let path = |n: usize| format!("/chunks/{}", chunk_path(&s.v2_index.chunk(n).unwrap().id));
    // What a stopped run left: the whole new image, but one of the handed-back chunks damaged.
    let mut disk = fs::read(&s.disk).unwrap();
    let at = INACTIVE_AT as usize;
    disk[at..at + s.v2.len()].copy_from_slice(&s.v2);
    let c = s.v2_index.chunk(damaged).unwrap();
    disk[at + c.offset as usize] ^= 0x01;
    fs::write(&s.disk, &disk).unwrap();
    let run = |resumed: bool| {
        s.server.clear_log();
        let (reports, reports_rx) = std::sync::mpsc::channel();
        let range = |n: usize| n as u64..n as u64 + 1;
        let beside = Beside {
            ranges: vec![range(failed), range(silent), range(damaged)],
            reports: reports_rx,
        };
        for n in [failed, damaged] {
            reports
                .send(BesideReport::Failed { chunks: range(n) })
                .unwrap();
        }
        drop(reports);
        let done = assemble_beside(
            &s.inactive(),
            &s.v2_index,
            Some((&s.active(), &s.v1_index)),
            &s.fetcher(),
            &AssembleOptions {
                resumed,
                ..AssembleOptions::default()
            },
            Some(beside),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert!(s.inactive_bytes() == s.v2, "the image differs");
        (done, s.chunk_requests())
    };
    let (done, requests) = run(true);
    for n in [failed, silent] {
        assert!(!requests.contains(&path(n)), "chunk {n} was fetched again");
    }
    assert!(
        requests.contains(&path(damaged)),
        "the damaged chunk was kept"
    );
    assert!(done.plan.in_place.chunks >= 2, "{:?}", done.plan);
    // A run that is not resumed does not look: it fetches what it is handed back.
    let (_, requests) = run(false);
    for n in [failed, silent, damaged] {
        assert!(requests.contains(&path(n)), "chunk {n} was not fetched");
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}
