//! Delta updates through `updog update`, end to end over HTTP on 127.0.0.1: a signed repository
//! whose 1.1.0 release lists a casync index for its root image (an ordinary TUF target) and a
//! chunk store, a host running 1.0.0 (a real ext4 root image on set A), and the binary staging
//! set B.
//!
//! Covered: set B's root equals the raw v2 image byte for byte with only the changed chunks
//! downloaded and the full root image never requested; the running version's index is used as
//! the seed when listed, else the running partition is chunked and the index cached; a store
//! that 404s, a tampered index (TUF refuses it) and `delta = false` each end in the full image,
//! with a clear line for the fallbacks; `check-update` shows the plan (JSON field `delta_plan`,
//! a text line on stderr) and `update` then downloads exactly that; `updog update` killed with
//! SIGKILL at two points among the chunk downloads leaves set B cleared, and each later run
//! downloads only chunks not yet in place (the server's request log against set B's bytes).

use std::collections::HashSet;
use std::fs;

use bootpart::SetId;
use e2e_tests::{Host, Migration, Release, RepoSpec, describe};
use fixtures::disk::{DiskImageBuilder, PartKind};
use updog::delta::{BlobIndex, Chunk, ChunkSizes, Chunker, StoreWriter};

const IMAGE: u64 = 8 << 20;

fn ext4(dir: &std::path::Path, version: u32, extra: &[fixtures::ext4::TreeFile]) -> Vec<u8> {
    let tree = dir.join(format!("tree{version}"));
    let mut files = fixtures::ext4::release_tree(version, 20);
    files.extend_from_slice(extra);
    fixtures::ext4::write_tree(&tree, &files).unwrap();
    let img = dir.join(format!("v{version}.img"));
    fixtures::ext4::build_image(&tree, IMAGE, &img).unwrap();
    fs::read(&img).unwrap()
}

fn index_name(version: &str) -> String {
    format!("delta-test-v{version}-root.caibx")
}

struct Delta {
    host: Host,
    v2: Vec<u8>,
    /// v2's index.
    index: BlobIndex,
    /// Chunk files of v2 that v1 does not have (what a delta must download).
    new_chunks: HashSet<String>,
    /// The patch of v2's root against v1's, when the repository lists one.
    patch: Option<updog::delta::patch::PatchIndex>,
}

/// Publishes 1.0.0 and 1.1.0 with ext4 roots, indexed with casync's default sizes;
/// `with_v1_index`: the repository also lists the running version's index.
fn setup(with_v1_index: bool) -> Option<Delta> {
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    setup_sized(with_v1_index.then_some(sizes), sizes)
}

/// [`setup`] with 1.1.0's index cut with `v2_sizes`, and 1.0.0's listed (cut with `v1_sizes`)
/// when given. `new_chunks` is what a seed cut with `v2_sizes` leaves to download.
fn setup_sized(v1_sizes: Option<ChunkSizes>, v2_sizes: ChunkSizes) -> Option<Delta> {
    setup_signing(v1_sizes, v2_sizes, BlobIndex::to_bytes)
}

/// [`setup_sized`], signing `signed(v2's index)` as 1.1.0's index target (the chunk store
/// holds v2's chunks whatever it says).
fn setup_signing(
    v1_sizes: Option<ChunkSizes>,
    v2_sizes: ChunkSizes,
    signed: impl Fn(&BlobIndex) -> Vec<u8>,
) -> Option<Delta> {
    setup_all(v1_sizes, v2_sizes, signed, None, &[])
}

/// [`setup_signing`]; `patch_from`: 1.1.0 also lists a patch of its root against 1.0.0's
/// (made with the library, as `updata make-patch` makes it), as two targets, saying it is for
/// hosts running `patch_from`.
fn setup_all(
    v1_sizes: Option<ChunkSizes>,
    v2_sizes: ChunkSizes,
    signed: impl Fn(&BlobIndex) -> Vec<u8>,
    patch_from: Option<&str>,
    v2_extra: &[fixtures::ext4::TreeFile],
) -> Option<Delta> {
    if !fixtures::ext4::have_mkfs() {
        fixtures::gate::skip("mkfs.ext4 is not installed");
        return None;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (v1, v2) = (
        ext4(scratch.path(), 1, &[]),
        ext4(scratch.path(), 2, v2_extra),
    );
    let store_dir = scratch.path().join("chunks");
    let store = StoreWriter::new(&store_dir).unwrap();
    let index = |data: &[u8], sizes| {
        Chunker::new(sizes)
            .unwrap()
            .index(data, |id, c| store.put(id, c).map(|_| ()))
            .unwrap()
    };
    let (i1, i2) = (index(&v1, v2_sizes), index(&v2, v2_sizes));
    let old: HashSet<_> = i1.chunks().map(|c| c.id).collect();
    let new_chunks = i2
        .chunks()
        .filter(|c| !old.contains(&c.id))
        .filter(|c| {
            v2[c.offset as usize..c.end() as usize]
                .iter()
                .any(|&b| b != 0)
        })
        .map(|c| chunk_url_path(&c))
        .collect();

    let mut r1 = Release::new("1.0.0");
    r1.root.clone_from(&v1);
    let mut r2 = Release::new("1.1.0");
    r2.root.clone_from(&v2);
    let delta =
        |v: &str| serde_json::json!({"store": "chunks/", "indexes": {"root": index_name(v)}});
    r2.delta = Some(delta("1.1.0"));
    let mut patch = None;
    if let Some(from) = patch_from {
        let read = |data: &[u8]| {
            let data = data.to_vec();
            move |offset: u64, buf: &mut [u8]| {
                let at = offset as usize;
                buf.copy_from_slice(&data[at..at + buf.len()]);
                Ok(())
            }
        };
        let mut bytes = Vec::new();
        let (made, _) =
            updog::delta::patch::make_patch(&i1, read(&v1), &i2, read(&v2), &mut bytes).unwrap();
        assert!(!made.entries.is_empty(), "the releases differ");
        r2.delta.as_mut().unwrap()["patches"] = serde_json::json!([{
            "from": from, "image": "root",
            "index": PATCH_INDEX, "data": PATCH_DATA,
        }]);
        let spec_targets = serde_json::to_vec(&made).unwrap();
        patch = Some((made, spec_targets, bytes));
    }
    let mut spec = RepoSpec::new(vec![r1, r2]);
    spec.migrations.push(Migration {
        from: "1.0.0".parse().unwrap(),
        to: "1.1.0".parse().unwrap(),
        name: "migrate_v1.1.0_delta.lz4".to_string(),
        content: b"migration 1.0.0 -> 1.1.0".to_vec(),
    });
    spec.extra_targets.push((index_name("1.1.0"), signed(&i2)));
    let patch = patch.map(|(made, index_bytes, data)| {
        spec.extra_targets
            .push((PATCH_INDEX.to_string(), index_bytes));
        spec.extra_targets.push((PATCH_DATA.to_string(), data));
        made
    });
    if let Some(sizes) = v1_sizes {
        let listed = if sizes == v2_sizes {
            i1
        } else {
            Chunker::new(sizes)
                .unwrap()
                .index(&v1[..], |_, _| Ok(()))
                .unwrap()
        };
        spec.releases[0].delta = Some(delta("1.0.0"));
        spec.extra_targets
            .push((index_name("1.0.0"), listed.to_bytes()));
    }
    let host = Host::with_disk(&spec, "1.0.0", DiskImageBuilder::new().root_size(12 << 20));
    // The chunk store next to the targets (chunks are not TUF targets).
    let served = host.repo.dir.join(host.repo.targets_path).join("chunks");
    fs::rename(&store_dir, &served)
        .or_else(|_| fixtures_copy(&store_dir, &served))
        .unwrap();
    // Set A runs 1.0.0: its root partition holds the v1 image.
    let part = host.disk.partition(PartKind::Root, 0).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&host.disk_path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &v1, part.byte_offset(host.disk.sector_size))
        .unwrap();
    Some(Delta {
        host,
        v2,
        index: i2,
        new_chunks,
        patch,
    })
}

const PATCH_INDEX: &str = "delta-test-v1.1.0-root.from-1.0.0.patch.json";
const PATCH_DATA: &str = "delta-test-v1.1.0-root.from-1.0.0.patch";

fn chunk_url_path(chunk: &Chunk) -> String {
    format!(
        "/targets/chunks/{}",
        updog::delta::store::chunk_path(&chunk.id)
    )
}

fn fixtures_copy(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&dest)?;
            fixtures_copy(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

impl Delta {
    fn chunk_requests(&self) -> Vec<String> {
        self.host
            .server
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/targets/chunks/"))
            .map(|r| r.path)
            .collect()
    }

    fn full_root_requested(&self) -> bool {
        let name = Release::new("1.1.0").target_name("root");
        let paths = self.host.repo.target_url_paths(&name);
        self.host
            .server
            .requests()
            .iter()
            .any(|r| paths.contains(&r.path))
    }

    fn b_root(&self) -> Vec<u8> {
        self.host
            .partition_bytes(PartKind::Root, SetId::B, self.v2.len())
    }

    fn update(&self) -> std::process::Output {
        let out = self.host.updog(&["update"]);
        assert!(out.status.success(), "{}", describe(&out));
        out
    }

    /// The chunk files that set B's root still lacks somewhere (a new chunk not yet at one of
    /// its places): what a resumed run must download, no more.
    fn missing_chunks(&self) -> HashSet<String> {
        let b = self.b_root();
        self.index
            .chunks()
            .map(|c| (chunk_url_path(&c), c))
            .filter(|(path, _)| self.new_chunks.contains(path))
            .filter(|(_, c)| {
                let range = c.offset as usize..c.end() as usize;
                b[range.clone()] != self.v2[range]
            })
            .map(|(path, _)| path)
            .collect()
    }

    /// `updog check-update --json`.
    fn check_json(&self) -> serde_json::Value {
        let out = self.host.updog(&["check-update", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `updog update --progress json`: the events.
    fn update_json(&self) -> Vec<serde_json::Value> {
        let out = self.host.updog(&["update", "--progress", "json"]);
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[test]
fn root_is_built_from_chunks_with_the_repository_seed() {
    let Some(d) = setup(true) else { return };
    let events = d.update_json();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    assert!(
        !d.full_root_requested(),
        "the full root image was downloaded"
    );
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    assert_eq!(
        fetched, d.new_chunks,
        "downloaded chunks other than the changed ones"
    );
    // The plan, in the progress events: what is reused and what is downloaded.
    let plan = events
        .iter()
        .find(|e| e["event"] == "delta_plan" && e["image"] == "root")
        .expect("a delta_plan event");
    assert_eq!(plan["plan"]["fetch"]["chunks"], d.new_chunks.len());
    assert_eq!(plan["plan"]["image"]["bytes"], IMAGE);
    assert!(plan["plan"]["seed"]["bytes"].as_u64().unwrap() > 0);
    // Set B is valid to boot once: the delta path marked it like the full one does.
    assert_eq!(d.host.signpost().state(SetId::B).unwrap().tries_left, 1);
}

#[test]
fn without_the_running_index_the_host_chunks_its_partition_and_caches_it() {
    let Some(d) = setup(false) else { return };
    d.update();
    assert!(d.b_root() == d.v2);
    assert!(!d.full_root_requested());
    let cache = d
        .host
        .dir
        .path()
        .join("state/delta/seed-A-root-1.0.0-16384-65536-262144.caibx");
    assert!(cache.exists(), "no cached seed index");
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    // The partition is larger than the image: its last chunk differs, everything else is reused.
    assert!(
        fetched.len() <= d.new_chunks.len() + 2,
        "{} vs {}",
        fetched.len(),
        d.new_chunks.len()
    );
}

#[test]
fn a_release_with_small_chunks_is_seeded_with_its_own_sizes() {
    // 1.1.0 is indexed with 4K:16K:64K; the repository's index of the running 1.0.0 has the
    // default 16K:64K:256K, whose boundaries the new index does not share: the host chunks its
    // partition with the release's sizes instead, and caches that under those sizes.
    let small: ChunkSizes = "4K:16K:64K".parse().unwrap();
    let Some(d) = setup_sized(Some(ChunkSizes::CASYNC_DEFAULT), small) else {
        return;
    };
    assert_eq!(d.index.sizes(), small);
    let check = d.check_json();
    d.update();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    assert!(!d.full_root_requested());
    let state = d.host.dir.path().join("state/delta");
    assert!(
        state
            .join("seed-A-root-1.0.0-4096-16384-65536.caibx")
            .exists(),
        "no seed cached under the release's sizes"
    );
    assert!(
        !state
            .join("seed-A-root-1.0.0-16384-65536-262144.caibx")
            .exists()
    );
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    // The partition is larger than the image: its last chunk differs, everything else is reused.
    assert!(
        fetched.len() <= d.new_chunks.len() + 2,
        "{} fetched, {} new",
        fetched.len(),
        d.new_chunks.len()
    );
    assert!(
        fetched.len() * 4 < d.index.len(),
        "{} of {} chunks fetched: the seed was not reused",
        fetched.len(),
        d.index.len()
    );
    // The plan before staging knew no usable seed (the listed one has other sizes), so it did not
    // count the default-size index as one.
    assert_eq!(check["delta_plan"]["images"][0]["seed"], "none", "{check}");
}

#[test]
fn a_store_that_404s_falls_back_to_the_full_image() {
    let Some(d) = setup(true) else { return };
    fs::remove_dir_all(d.host.repo.dir.join("targets/chunks")).unwrap();
    let out = d.update();
    assert!(d.b_root() == d.v2);
    assert!(d.full_root_requested());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("downloading the full image"), "{text}");
}

#[test]
fn a_tampered_index_is_refused_by_tuf_and_the_full_image_used() {
    let Some(d) = setup(true) else { return };
    for file in d.host.repo.target_files(&index_name("1.1.0")) {
        let mut bytes = fs::read(&file).unwrap();
        let at = bytes.len() - 60;
        bytes[at] ^= 1; // an id byte: still a well-formed index
        fs::write(&file, bytes).unwrap();
    }
    let json = d.check_json();
    let unusable = &json["delta_plan"]["unusable"][0];
    assert_eq!(unusable["image"], "root", "{json}");
    assert!(
        unusable["reason"]
            .as_str()
            .unwrap()
            .contains(&index_name("1.1.0")),
        "{json}"
    );
    let out = d.update();
    assert!(d.b_root() == d.v2);
    assert!(
        d.chunk_requests().is_empty(),
        "chunks fetched from a tampered index"
    );
    assert!(d.full_root_requested());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("downloading the full image") && text.contains(&index_name("1.1.0")),
        "{text}"
    );
}

#[test]
fn delta_false_turns_it_off() {
    let Some(mut d) = setup(true) else { return };
    d.host.configure("delta = false");
    d.update();
    assert!(d.b_root() == d.v2);
    assert!(d.chunk_requests().is_empty());
    assert!(d.full_root_requested());
}

#[test]
fn check_update_shows_the_plan_that_update_then_carries_out() {
    let Some(mut d) = setup(true) else { return };
    let json = d.check_json();
    let plan = &json["delta_plan"];
    let root = &plan["images"][0];
    assert_eq!(root["image"], "root", "{plan}");
    assert_eq!(root["index"], index_name("1.1.0"));
    assert_eq!(root["seed"], "running_index");
    assert_eq!(root["image_bytes"], IMAGE);
    assert_eq!(root["download_chunks"], d.new_chunks.len(), "{plan}");
    let (reused, download) = (
        root["reused_bytes"].as_u64().unwrap(),
        root["download_bytes"].as_u64().unwrap(),
    );
    assert!(reused > download && download > 0, "{plan}");
    assert_eq!(plan["total"]["download_chunks"], d.new_chunks.len());
    assert_eq!(plan["total"]["image_bytes"], IMAGE);

    // In text, the plan goes to stderr; stdout keeps the reference's one line.
    let out = d.host.updog(&["check-update"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} 1.1.0", e2e_tests::VARIANT)
    );
    let text = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "Delta root: {:.1} MiB to download ({} chunks",
        download as f64 / 1048576.0,
        d.new_chunks.len()
    );
    assert!(text.contains(&want), "{text}");

    // Staging downloads exactly what the plan said.
    d.update();
    assert!(d.b_root() == d.v2);
    let fetched = d.chunk_requests();
    assert_eq!(fetched.len(), d.new_chunks.len(), "{fetched:?}");

    // The reference's fields are untouched: without delta the same object, minus the plan.
    d.host.configure("delta = false");
    let plain = d.check_json();
    assert!(plain.get("delta_plan").is_none(), "{plain}");
    let mut with = json.clone();
    with.as_object_mut().unwrap().remove("delta_plan");
    assert_eq!(with, plain);
}

#[test]
fn killed_delta_staging_resumes_and_fetches_only_what_was_missing() {
    let Some(d) = setup(true) else { return };
    let release = Release::new("1.1.0");
    let old_b = d.host.signpost().state(SetId::B).unwrap();
    // A slow link (shared by all connections), so the kills land among the chunk downloads.
    d.host.server.set_rate_limit(Some(96.0 * 1024.0));
    let total = d.new_chunks.len();
    assert!(
        total >= 3,
        "too few changed chunks to kill in between: {total}"
    );
    let mut in_place_before = 0;
    for (round, placed) in [(0, 1), (1, total / 2 + 1)] {
        let missing_before = d.missing_chunks();
        d.host.server.clear_log();
        let mut cmd = d.host.updog_cmd();
        cmd.arg("update");
        let (mut child, _stdout) = d.host.spawn_updog_until(cmd, "\"event\":\"delta_plan\"");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Kill (SIGKILL) once `placed` changed chunks are on set B.
        while total - d.missing_chunks().len() < placed {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: updog finished first"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: too slow"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        e2e_tests::assert_consistent_after_stop(&d.host, &release, old_b, &format!("kill {round}"));
        // A resumed run downloads none of what an earlier run left in place.
        let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
        assert!(
            fetched.is_subset(&missing_before),
            "round {round}: fetched {fetched:?}, missing {missing_before:?}"
        );
        let in_place = total - d.missing_chunks().len();
        assert!(
            in_place >= placed && in_place >= in_place_before,
            "round {round}"
        );
        in_place_before = in_place;
    }
    let missing = d.missing_chunks();
    assert!(
        !missing.is_empty() && missing.len() < total,
        "{} of {total}",
        missing.len()
    );
    d.host.server.set_rate_limit(None);
    d.host.server.clear_log();
    let events = d.update_json();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    assert!(!d.full_root_requested());
    let fetched = d.chunk_requests();
    assert_eq!(
        fetched.iter().cloned().collect::<HashSet<_>>(),
        missing,
        "the last run fetched other chunks than the missing ones"
    );
    assert_eq!(
        fetched.len(),
        missing.len(),
        "a chunk fetched twice: {fetched:?}"
    );
    let plan = events
        .iter()
        .find(|e| e["event"] == "delta_plan")
        .expect("a delta_plan event");
    assert_eq!(plan["plan"]["download"]["chunks"], missing.len(), "{plan}");
    assert!(
        plan["plan"]["in_place"]["chunks"].as_u64().unwrap() > 0,
        "{plan}"
    );
    assert_eq!(d.host.signpost().state(SetId::B).unwrap().tries_left, 1);
}

/// v2's index cut to its first `keep` chunks, then `extra` made-up chunks of 256 KiB appended.
fn reindexed(index: &BlobIndex, keep: usize, extra: usize) -> Vec<u8> {
    let mut out = BlobIndex::new(index.sizes());
    for c in index.chunks().take(keep) {
        out.push(u64::from(c.len), c.id);
    }
    for n in 0..extra {
        out.push(256 << 10, updog::delta::ChunkId::of(&n.to_le_bytes()));
    }
    out.to_bytes()
}

/// Issue 24, findings 1 and 6: a signed index that covers nothing, half the image, or more
/// than the partition does not decide what is written: the image's signed decompressed_length
/// does. Each falls back to the full image, and set B holds v2 exactly (never the running
/// version's bytes under a valid mark).
#[test]
fn an_index_of_another_length_than_the_signed_image_falls_back_to_the_full_image() {
    type Cut = fn(&BlobIndex) -> Vec<u8>;
    let cases: [(&str, Cut); 3] = [
        ("empty", |i| reindexed(i, 0, 0)),
        ("half", |i| reindexed(i, i.len() / 2, 0)),
        // 8 MiB of the image and 8 MiB more: past the 12 MiB partition.
        ("past the partition", |i| reindexed(i, i.len(), 32)),
    ];
    for (what, cut) in cases {
        let Some(d) = setup_signing(
            Some(ChunkSizes::CASYNC_DEFAULT),
            ChunkSizes::CASYNC_DEFAULT,
            cut,
        ) else {
            return;
        };
        let out = d.host.updog(&["update", "--progress", "json"]);
        assert!(out.status.success(), "{what}: {}", describe(&out));
        assert!(d.b_root() == d.v2, "{what}: set B root is not the v2 image");
        assert!(
            d.full_root_requested(),
            "{what}: the full image was not used"
        );
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let fallback = events
            .iter()
            .find(|e| e["event"] == "delta_fallback")
            .unwrap_or_else(|| panic!("{what}: no delta_fallback event: {events:?}"));
        assert!(
            fallback["reason"]
                .as_str()
                .is_some_and(|r| r.contains("decompressed_length")),
            "{what}: {fallback}"
        );
        let done = events
            .iter()
            .find(|e| e["event"] == "image_done" && e["image"] == "root")
            .expect("image_done");
        assert_eq!(done["written"], IMAGE, "{what}: {done}");
        assert_eq!(d.host.signpost().state(SetId::B).unwrap().tries_left, 1);
    }
}

/// Issue 24, finding 6: a chunk store that trickles (64 bytes a second: never silent for the
/// stall timeout) meets the per-chunk time limit (stall timeout plus the chunk's size at
/// `metadata_min_bytes_per_sec`), and the update falls back to the full image instead of
/// holding the delta for as long as the store likes.
#[test]
fn a_chunk_store_that_trickles_falls_back_to_the_full_image() {
    let Some(mut d) = setup(true) else { return };
    for path in &d.new_chunks {
        d.host.server.fault(
            path,
            fixtures::http::Fault::Slow {
                bytes: 64,
                every: std::time::Duration::from_secs(1),
            },
        );
    }
    d.host
        .configure("stall_timeout_secs = 2\nmetadata_min_bytes_per_sec = 1048576");
    let started = std::time::Instant::now();
    let mut cmd = d.host.updog_cmd();
    cmd.arg("update")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Today's limit is about 3 s a chunk, 4 at a time; without one, this takes many minutes.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("updog still waits on the trickling store after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(d.b_root() == d.v2, "set B root is not the v2 image");
    assert!(d.full_root_requested(), "no fallback to the full image");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("downloading the full image") && text.contains("did not arrive within"),
        "{text}"
    );
}

/// The chunk files a patch produces.
fn patched_chunks(d: &Delta) -> HashSet<String> {
    let patch = d.patch.as_ref().expect("a patch");
    patch
        .entries
        .iter()
        .flat_map(|e| e.chunks.clone())
        .map(|n| chunk_url_path(&d.index.chunk(n as usize).unwrap()))
        .collect()
}

/// Issue 22: with a patch against the running release, the chunks it produces are not fetched
/// from the store; the partition is the new image byte for byte.
#[test]
fn a_patch_against_the_running_release_replaces_chunk_downloads() {
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    let Some(d) = setup_all(Some(sizes), sizes, BlobIndex::to_bytes, Some("1.0.0"), &[]) else {
        return;
    };
    let patched = patched_chunks(&d);
    assert!(!patched.is_empty());
    // check-update shows what the patch saves before anything is written.
    let check = d.check_json();
    let plan = &check["delta_plan"]["images"][0];
    let patch = d.patch.as_ref().unwrap();
    assert_eq!(plan["patch"]["download_bytes"], patch.data_len, "{check}");
    let entry_chunks: u64 = patch
        .entries
        .iter()
        .map(|e| e.chunks.end - e.chunks.start)
        .sum();
    assert_eq!(plan["patch"]["chunks"], entry_chunks, "{check}");
    assert_eq!(plan["patch"]["from"], "1.0.0");
    assert!(plan.get("patch_not_used").is_none(), "{check}");
    let events = d.update_json();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    // The progress stream says what the patch did, before the image is done.
    let at = |name: &str| {
        events
            .iter()
            .position(|e| e["event"] == name && e["image"] == "root")
            .unwrap_or_else(|| panic!("no {name} event: {events:?}"))
    };
    let used = &events[at("delta_patch")];
    assert_eq!(used["from"], "1.0.0", "{used}");
    assert_eq!(used["chunks"], entry_chunks, "{used}");
    assert_eq!(used["downloaded"], patch.data_len, "{used}");
    assert_eq!(used["not_used"], serde_json::json!([]), "{used}");
    assert!(at("delta_patch") < at("image_done"));
    assert!(
        !d.full_root_requested(),
        "the full root image was downloaded"
    );
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    assert!(
        fetched.is_disjoint(&patched),
        "chunks the patch produces were fetched: {:?}",
        fetched.intersection(&patched).collect::<Vec<_>>()
    );
    let expected: HashSet<String> = d.new_chunks.difference(&patched).cloned().collect();
    assert_eq!(fetched, expected);
    let data_paths = d.host.repo.target_url_paths(PATCH_DATA);
    assert!(
        d.host
            .server
            .requests()
            .iter()
            .any(|r| data_paths.contains(&r.path)),
        "the patch data was not fetched"
    );
    assert_eq!(d.host.signpost().state(SetId::B).unwrap().tries_left, 1);
}

/// Issue 22, patch format 3: 1.1.0 adds a file of incompressible bytes and a bundle that holds
/// it again, lightly edited and off the file system's block boundaries (like kernel modules and
/// the initrd that carries them). The patch makes the bundle from what it wrote for the file,
/// which the host reads back from set B and verifies; `updog update` ends with the new image and
/// fetches none of the patched chunks.
#[test]
fn a_patch_that_repeats_new_content_reads_it_back_from_the_partition_being_written() {
    // Like a binary: incompressible stretches between runs of text.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let module: Vec<u8> = (0..300usize << 10)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (i >> 10) % 3 == 0 {
                b"symbol_table "[i % 13]
            } else {
                state as u8
            }
        })
        .collect();
    let mut bundle = b"070701 a cpio-like header, not a multiple of a block".to_vec();
    bundle.extend_from_slice(&module);
    for at in (1000..bundle.len()).step_by(61_000) {
        bundle[at..at + 4].copy_from_slice(b"EDIT");
    }
    // The bundle takes the place of the tree's 1 MiB file: the test image has no room to spare.
    let extra = vec![
        ("usr/lib/pkg00/module.ko.xz".to_string(), module.clone()),
        ("usr/lib/large.so".to_string(), bundle),
    ];
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    let Some(d) = setup_all(
        Some(sizes),
        sizes,
        BlobIndex::to_bytes,
        Some("1.0.0"),
        &extra,
    ) else {
        return;
    };
    let patch = d.patch.as_ref().unwrap();
    assert_eq!(patch.format, updog::delta::patch::PATCH_FORMAT_3);
    // The entries that take from what was written cost a small part of what they make.
    let repeating: Vec<_> = patch
        .entries
        .iter()
        .filter(|e| !e.produced.is_empty())
        .collect();
    assert!(!repeating.is_empty(), "{:?}", patch.entries);
    let made: u64 = repeating
        .iter()
        .flat_map(|e| e.chunks.clone())
        .map(|n| u64::from(d.index.chunk(n as usize).unwrap().len))
        .sum();
    let cost: u64 = repeating.iter().map(|e| e.len).sum();
    assert!(cost * 4 < made, "{cost} bytes of patch for {made} bytes");
    let events = d.update_json();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    let used = events
        .iter()
        .find(|e| e["event"] == "delta_patch")
        .expect("a delta_patch event");
    assert_eq!(used["not_used"], serde_json::json!([]), "{used}");
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    let patched = patched_chunks(&d);
    assert!(
        fetched.is_disjoint(&patched),
        "chunks the patch produces were fetched"
    );
    assert!(
        !d.full_root_requested(),
        "the full root image was downloaded"
    );
}

/// Issue 22: a run killed while it streams a patch resumes: the next run ends with the new image,
/// fetches from the store only the chunks the patch does not produce, and reads the patch data
/// only from the first entry the killed run did not finish (the entries it finished are
/// verified in place and kept).
#[test]
fn a_run_killed_while_patching_resumes_and_ends_with_the_new_image() {
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    let Some(d) = setup_all(Some(sizes), sizes, BlobIndex::to_bytes, Some("1.0.0"), &[]) else {
        return;
    };
    let release = Release::new("1.1.0");
    let old_b = d.host.signpost().state(SetId::B).unwrap();
    let patch = d.patch.as_ref().unwrap();
    assert!(
        patch.entries.len() >= 2,
        "too few patch entries to kill in between: {}",
        patch.entries.len()
    );
    let patched = patched_chunks(&d);
    // What shows the pass has written something: a chunk of its output that v1 does not have
    // (a chunk it shares with v1 is not missing to begin with).
    let patched_new: HashSet<String> = patched.intersection(&d.new_chunks).cloned().collect();
    let mut cmd = d.host.updog_cmd();
    cmd.arg("update");
    let (mut child, _stdout) = d
        .host
        .spawn_updog_until(cmd, "\"event\":\"clearing_inactive\"");
    // The patch data then trickles in over about eight seconds.
    d.host
        .server
        .set_rate_limit(Some((patch.data_len as f64 / 8.0).max(64.0)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let missing = d.missing_chunks();
        if patched_new.iter().any(|c| !missing.contains(c)) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "updog finished before a patched chunk was in place"
        );
        assert!(std::time::Instant::now() < deadline, "too slow");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let missing = d.missing_chunks();
    assert!(
        patched_new.iter().any(|c| missing.contains(c)),
        "the patch was not stopped part-way"
    );
    e2e_tests::assert_consistent_after_stop(&d.host, &release, old_b, "kill while patching");
    // The entries the killed run finished: the pass writes each entry whole and in order.
    let b = d.b_root();
    let finished = patch
        .entries
        .iter()
        .take_while(|e| {
            e.chunks.clone().all(|n| {
                let c = d.index.chunk(n as usize).unwrap();
                let at = c.offset as usize..c.end() as usize;
                b[at.clone()] == d.v2[at]
            })
        })
        .count();
    assert!(finished >= 1, "no entry was finished before the kill");
    let from: u64 = patch.entries[..finished].iter().map(|e| e.len).sum();

    d.host.server.set_rate_limit(None);
    d.host.server.clear_log();
    let events = d.update_json();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    assert!(!d.full_root_requested());
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    let expected: HashSet<String> = d.new_chunks.difference(&patched).cloned().collect();
    assert_eq!(fetched, expected, "the resumed run fetched patched chunks");
    let used = events
        .iter()
        .find(|e| e["event"] == "delta_patch")
        .expect("a delta_patch event");
    assert_eq!(used["not_used"], serde_json::json!([]), "{used}");
    // It found those entries in place and asked only for the patch data after them.
    let data_paths = d.host.repo.target_url_paths(PATCH_DATA);
    let asked: Vec<_> = d
        .host
        .server
        .requests()
        .into_iter()
        .filter(|r| data_paths.contains(&r.path))
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].range, Some(format!("bytes={from}-")), "{asked:?}");
    assert_eq!(used["downloaded"], patch.data_len - from, "{used}");
    assert_eq!(used["chunks"], patched.len() as u64, "{used}");
}

/// A running partition whose bytes under a patch window are not the running release's: that
/// entry is skipped (its chunks come from the store), the rest of the patch is used, and the
/// update ends with the new image.
#[test]
fn a_patch_window_that_does_not_verify_falls_back_to_the_store_for_its_chunks() {
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    let Some(d) = setup_all(Some(sizes), sizes, BlobIndex::to_bytes, Some("1.0.0"), &[]) else {
        return;
    };
    let patch = d.patch.as_ref().unwrap();
    let entry = &patch.entries[0];
    // Damage one byte of the entry's first reference chunk on set A's root.
    let i1_bytes = fs::read(d.host.repo.target_files(&index_name("1.0.0"))[0].clone()).unwrap();
    let i1 = BlobIndex::parse(&i1_bytes).unwrap();
    let victim = i1.chunk(entry.reference.start as usize).unwrap();
    let part = d.host.disk.partition(PartKind::Root, 0).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&d.host.disk_path)
        .unwrap();
    let at = part.byte_offset(d.host.disk.sector_size) + victim.offset;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, at).unwrap();
    byte[0] ^= 0xff;
    std::os::unix::fs::FileExt::write_all_at(&f, &byte, at).unwrap();
    drop(f);

    let out = d.update();
    assert!(d.b_root() == d.v2, "set B root differs from the v2 image");
    let text = describe(&out);
    assert!(
        text.contains("not patched") && text.contains("reference chunk"),
        "{text}"
    );
    let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
    let skipped: HashSet<String> = entry
        .chunks
        .clone()
        .map(|n| chunk_url_path(&d.index.chunk(n as usize).unwrap()))
        .filter(|p| d.new_chunks.contains(p))
        .collect();
    assert!(!skipped.is_empty());
    assert!(
        skipped.is_subset(&fetched),
        "the skipped entry's chunks were not fetched"
    );
}

/// Replaces the served file of target `name` (every copy the repository holds) with `bytes`.
fn replace_served(d: &Delta, name: &str, bytes: &[u8]) {
    let files = d.host.repo.target_files(name);
    assert!(!files.is_empty(), "{name} is not served");
    for f in files {
        fs::write(f, bytes).unwrap();
    }
}

/// A patch that cannot be used, each way it can fail: the update still ends with the new image,
/// its chunks all from the store, and the output says why the patch was not used.
#[test]
fn a_patch_that_cannot_be_used_falls_back_to_the_store_for_every_failure_kind() {
    let sizes = ChunkSizes::CASYNC_DEFAULT;
    type Break = fn(&Delta);
    let kinds: [(&str, Option<&str>, Break, &str); 4] = [
        (
            "the patch data is missing from the server",
            Some("1.0.0"),
            |d| {
                for f in d.host.repo.target_files(PATCH_DATA) {
                    fs::remove_file(f).unwrap();
                }
            },
            "not used",
        ),
        (
            "the patch data is not what was signed",
            Some("1.0.0"),
            |d| {
                let mut data = fs::read(&d.host.repo.target_files(PATCH_DATA)[0]).unwrap();
                let mid = data.len() / 2;
                data[mid] ^= 0x10;
                replace_served(d, PATCH_DATA, &data);
            },
            "patch",
        ),
        (
            "the patch index is not what was signed",
            Some("1.0.0"),
            |d| replace_served(d, PATCH_INDEX, b"{\"format\":\"forged\"}"),
            "not used",
        ),
        (
            "the only patch is for another running version",
            Some("0.9.0"),
            |_| {},
            "",
        ),
    ];
    for (what, from, break_it, says) in kinds {
        let Some(d) = setup_all(Some(sizes), sizes, BlobIndex::to_bytes, from, &[]) else {
            return;
        };
        break_it(&d);
        // check-update knows what the patch index tells: a forged one is named with why.
        let check = d.check_json();
        let planned = &check["delta_plan"]["images"][0];
        if what.contains("index") {
            assert!(planned.get("patch").is_none(), "{what}: {check}");
            let reason = planned["patch_not_used"].as_str().unwrap_or_default();
            assert!(reason.contains("not used"), "{what}: {check}");
        } else if what.contains("another running version") {
            assert!(
                planned.get("patch").is_none() && planned.get("patch_not_used").is_none(),
                "{what}: {check}"
            );
        }
        let out = d.host.updog(&["update", "--progress", "json"]);
        let text = describe(&out);
        assert!(out.status.success(), "{what}: {text}");
        // The stream says why the patch was not (wholly) used; no patch listed for the running
        // version, no event.
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let event = events.iter().find(|e| e["event"] == "delta_patch");
        if what.contains("another running version") {
            assert!(event.is_none(), "{what}: {events:?}");
        } else {
            let event = event.unwrap_or_else(|| panic!("{what}: no delta_patch event: {text}"));
            let not_used = event["not_used"].as_array().cloned().unwrap_or_default();
            assert!(!not_used.is_empty(), "{what}: {event}");
        }
        assert!(
            d.b_root() == d.v2,
            "{what}: set B root differs from the v2 image"
        );
        assert!(text.contains(says), "{what}: {text}");
        let fetched: HashSet<String> = d.chunk_requests().into_iter().collect();
        let patched = patched_chunks(&d);
        // Whatever the patch did not produce came from the store (a tampered frame may still
        // produce its other entries' chunks; each is verified).
        let from_store: HashSet<String> = d.new_chunks.difference(&fetched).cloned().collect();
        assert!(
            from_store.is_subset(&patched),
            "{what}: chunks neither fetched nor patched: {from_store:?}"
        );
        if what.contains("missing")
            || what.contains("index")
            || what.contains("another running version")
        {
            assert_eq!(
                fetched, d.new_chunks,
                "{what}: every new chunk from the store"
            );
        }
    }
}
