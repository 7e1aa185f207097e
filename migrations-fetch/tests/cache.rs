//! Crate-level tests of plan, fetch, space, pruning and offline verification over a
//! directory-backed `MigrationSource`: real files on disk, a "publisher" that records each
//! target's length and sha256 as its signed description, and readers that can fail midway.
//! The same cases run over the real TUF client and HTTP server in `tests/tests/migrations_*.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fixtures::fs::file_names;
use migrations_fetch::{
    BoxError, CacheDirs, FetchError, FetchOptions, FetchReport, FixedSpace, MetadataFile,
    MigrationPlan, MigrationSource, OfflineLoader, PlanError, ProblemKind, Space, TargetInfo,
    TargetLookup, VerifiedCache, VerifyError, fetch, verify_offline,
};
use semver::Version;
use sha2::{Digest, Sha256};

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A published repository in a plain directory: target files plus what "targets.json" signs.
struct Published {
    _dir: tempfile::TempDir,
    targets_dir: PathBuf,
    signed: BTreeMap<String, TargetInfo>,
    metadata_version: u64,
}

impl Published {
    /// Publishes `migrations` (name -> bytes) and a manifest with the given chain entries.
    fn new(migrations: &[(&str, Vec<u8>)], chain: &[(&str, &str, &[&str])], version: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let targets_dir = dir.path().join("targets");
        fs::create_dir(&targets_dir).unwrap();
        let mut signed = BTreeMap::new();
        let mut publish = |name: &str, bytes: &[u8]| {
            fs::write(targets_dir.join(name), bytes).unwrap();
            signed.insert(
                name.to_owned(),
                TargetInfo {
                    length: bytes.len() as u64,
                    sha256: Sha256::digest(bytes).into(),
                },
            );
        };
        for (name, bytes) in migrations {
            publish(name, bytes);
        }
        let mut map = serde_json::Map::new();
        for (from, to, targets) in chain {
            map.insert(format!("({from}, {to})"), serde_json::json!(targets));
        }
        let manifest = serde_json::json!({ "updates": [], "migrations": map });
        publish(
            "manifest.json",
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        );
        Self {
            _dir: dir,
            targets_dir,
            signed,
            metadata_version: version,
        }
    }

    fn manifest(&self) -> manifest::Manifest {
        manifest::Manifest::from_slice(&fs::read(self.targets_dir.join("manifest.json")).unwrap())
            .unwrap()
    }

    fn source(&self) -> DirSource<'_> {
        DirSource {
            repo: self,
            opened: Mutex::new(Vec::new()),
            fail: None,
            lie: None,
            broken_lookup: None,
        }
    }

    /// The metadata files, in the reference layout. `<v>.targets.json` carries the signed map so
    /// that the test loader can read it back offline.
    fn metadata(&self) -> Vec<MetadataFile> {
        let targets: BTreeMap<&String, serde_json::Value> = self
            .signed
            .iter()
            .map(|(n, i)| {
                (
                    n,
                    serde_json::json!({"length": i.length, "sha256": i.sha256_hex()}),
                )
            })
            .collect();
        let v = self.metadata_version;
        vec![
            file("timestamp.json", format!("{{\"version\":{v}}}")),
            file(
                &format!("{v}.targets.json"),
                serde_json::to_string(&targets).unwrap(),
            ),
            file("2.root.json", "{\"root\":2}".to_owned()),
            file(
                &format!("{v}.snapshot.json"),
                format!("{{\"snapshot\":{v}}}"),
            ),
            file("1.root.json", "{\"root\":1}".to_owned()),
        ]
    }
}

fn file(name: &str, body: String) -> MetadataFile {
    MetadataFile {
        name: name.to_owned(),
        bytes: body.into_bytes(),
    }
}

/// Reads `limit` bytes of `inner`, then fails like a dropped connection.
struct FailingReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for FailingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection dropped",
            ));
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

struct DirSource<'a> {
    repo: &'a Published,
    opened: Mutex<Vec<String>>,
    /// Fail reading this target after this many bytes.
    fail: Option<(String, u64)>,
    /// Serve these bytes instead of the published file for this target.
    lie: Option<(String, Vec<u8>)>,
    /// Looking this target up fails (like a delegated role that cannot be fetched).
    broken_lookup: Option<String>,
}

impl DirSource<'_> {
    fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap().clone()
    }
}

impl TargetLookup for DirSource<'_> {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        if self.broken_lookup.as_deref() == Some(name) {
            return Err("delegated role 'migrations' could not be fetched".into());
        }
        Ok(self.repo.signed.get(name).copied())
    }
}

impl MigrationSource for DirSource<'_> {
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError> {
        self.opened.lock().unwrap().push(name.to_owned());
        if let Some((lie_name, bytes)) = &self.lie {
            if lie_name == name {
                return Ok(Box::new(io::Cursor::new(bytes.clone())));
            }
        }
        let f = fs::File::open(self.repo.targets_dir.join(name))?;
        match &self.fail {
            Some((fail_name, after)) if fail_name == name => Ok(Box::new(FailingReader {
                inner: f,
                left: *after,
            })),
            _ => Ok(Box::new(f)),
        }
    }

    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError> {
        Ok(self.repo.metadata())
    }
}

/// Reads the highest `<v>.targets.json` of a metadata directory back as the signed map.
struct TestLoader;

struct Loaded(BTreeMap<String, TargetInfo>);

impl TargetLookup for Loaded {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        Ok(self.0.get(name).copied())
    }
}

impl OfflineLoader for TestLoader {
    fn load_offline(&self, dir: &Path) -> Result<Box<dyn TargetLookup>, BoxError> {
        let mut best: Option<(u64, PathBuf)> = None;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().into_string().unwrap();
            if let Some(ver) = name.strip_suffix(".targets.json") {
                let ver: u64 = ver.parse()?;
                if best.as_ref().is_none_or(|(b, _)| ver > *b) {
                    best = Some((ver, e.path()));
                }
            }
        }
        let (_, path) = best.ok_or("no targets metadata")?;
        let json: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&fs::read(path)?)?;
        let mut map = BTreeMap::new();
        for (name, val) in json {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(val["sha256"].as_str().ok_or("sha256")?, &mut sha256)?;
            let length = val["length"].as_u64().ok_or("length")?;
            map.insert(name, TargetInfo { length, sha256 });
        }
        Ok(Box::new(Loaded(map)))
    }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// 1.0.0 -> 1.1.0 -> 1.3.0 (a shortcut over 1.2.0), 1.1.0 -> 1.2.0, 1.3.0 -> 1.4.0.
fn standard_repo(version: u64) -> Published {
    Published::new(
        &[
            ("migrate_v1.1.0_a.lz4", bytes(1, 3000)),
            ("migrate_v1.2.0_b.lz4", bytes(2, 5000)),
            ("migrate_v1.3.0_c.lz4", bytes(3, 70_000)),
            ("migrate_v1.3.0_d.lz4", bytes(4, 100)),
            ("migrate_v1.4.0_e.lz4", bytes(5, 2000)),
        ],
        &[
            ("1.0.0", "1.1.0", &["migrate_v1.1.0_a.lz4"]),
            ("1.1.0", "1.2.0", &["migrate_v1.2.0_b.lz4"]),
            (
                "1.1.0",
                "1.3.0",
                &["migrate_v1.3.0_c.lz4", "migrate_v1.3.0_d.lz4"],
            ),
            ("1.3.0", "1.4.0", &["migrate_v1.4.0_e.lz4"]),
        ],
        version,
    )
}

fn cached_name(repo: &Published, name: &str) -> String {
    format!("{}.{name}", repo.signed[name].sha256_hex())
}

impl Published {
    /// The plan from `from` to `to` over this repository.
    fn plan(&self, from: &str, to: &str) -> MigrationPlan {
        MigrationPlan::new(&self.manifest(), &v(from), &v(to), &self.source()).unwrap()
    }
}

/// An empty cache in a fresh temporary directory (kept as long as the returned guard).
fn new_cache() -> (tempfile::TempDir, CacheDirs) {
    let cache = tempfile::tempdir().unwrap();
    let dirs = CacheDirs::under(cache.path());
    (cache, dirs)
}

/// Fetches `plan` from `source` with the default options.
fn fetch_from(
    plan: &MigrationPlan,
    source: &dyn MigrationSource,
    dirs: &CacheDirs,
) -> Result<FetchReport, FetchError> {
    fetch(plan, source, dirs, &FetchOptions::default())
}

/// Fetches `plan` from a healthy source of `repo` with the default options.
fn fetch_all(plan: &MigrationPlan, repo: &Published, dirs: &CacheDirs) -> FetchReport {
    fetch_from(plan, &repo.source(), dirs).unwrap()
}

/// Verifies the cache offline for the jump `from` -> `to`.
fn verify(dirs: &CacheDirs, from: &str, to: &str) -> Result<VerifiedCache, VerifyError> {
    verify_offline(dirs, &TestLoader, &v(from), &v(to))
}

/// Default options, with a filesystem of `available` free bytes in 4 KiB blocks.
fn with_space(available: u64) -> FetchOptions {
    FetchOptions {
        space_probe: Box::new(FixedSpace(Space {
            available,
            block_size: 4096,
        })),
        prune: true,
    }
}

#[test]
fn forward_chain_with_shortcut_is_fetched_in_the_reference_layout() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    assert_eq!(
        plan.migration_names(),
        [
            "migrate_v1.1.0_a.lz4",
            "migrate_v1.3.0_c.lz4",
            "migrate_v1.3.0_d.lz4"
        ],
        "the shortcut 1.1.0 -> 1.3.0 is taken, 1.2.0's migration is not needed"
    );
    assert_eq!(
        plan.total_bytes,
        3000 + 70_000 + 100 + repo.signed["manifest.json"].length
    );

    let (_cache, dirs) = new_cache();
    let source = repo.source();
    let report = fetch_from(&plan, &source, &dirs).unwrap();
    assert_eq!(
        report.fetched,
        [
            "migrate_v1.1.0_a.lz4",
            "migrate_v1.3.0_c.lz4",
            "migrate_v1.3.0_d.lz4",
            "manifest.json"
        ]
    );
    assert!(report.reused.is_empty());
    assert_eq!(report.bytes_fetched, plan.total_bytes);

    let mut expected: Vec<String> = ["migrate_v1.1.0_a.lz4", "migrate_v1.3.0_c.lz4"]
        .iter()
        .chain(&["migrate_v1.3.0_d.lz4", "manifest.json"])
        .map(|n| cached_name(&repo, n))
        .collect();
    expected.sort();
    assert_eq!(file_names(&dirs.targets), expected);
    for name in ["migrate_v1.1.0_a.lz4", "migrate_v1.3.0_c.lz4"] {
        assert_eq!(
            fs::read(dirs.targets.join(cached_name(&repo, name))).unwrap(),
            fs::read(repo.targets_dir.join(name)).unwrap()
        );
    }
    assert_eq!(
        file_names(&dirs.metadata),
        [
            "1.root.json",
            "2.root.json",
            "7.snapshot.json",
            "7.targets.json",
            "timestamp.json"
        ]
    );
    assert_eq!(
        report.metadata_files,
        [
            "1.root.json",
            "2.root.json",
            "7.snapshot.json",
            "7.targets.json",
            "timestamp.json"
        ],
        "root chain first, timestamp last"
    );

    let verified = verify(&dirs, "1.0.0", "1.3.0").unwrap();
    assert_eq!(verified.migration_names(), plan.migration_names());
    assert_eq!(
        verified.migrations[1].read_verified().unwrap(),
        fs::read(repo.targets_dir.join("migrate_v1.3.0_c.lz4")).unwrap()
    );
}

#[test]
fn backward_chain_needs_the_same_migrations() {
    let repo = standard_repo(7);
    let forward = repo.plan("1.0.0", "1.3.0");
    let backward = repo.plan("1.3.0", "1.0.0");
    let mut f = forward.migration_names();
    let mut b = backward.migration_names();
    f.sort_unstable();
    b.sort_unstable();
    assert_eq!(f, b);
    assert_eq!(backward.from, v("1.3.0"));
    assert_eq!(backward.to, v("1.0.0"));

    let (_cache, dirs) = new_cache();
    fetch_all(&backward, &repo, &dirs);
    let verified = verify(&dirs, "1.3.0", "1.0.0").unwrap();
    assert_eq!(verified.migration_names(), backward.migration_names());
}

#[test]
fn missing_link_stops_before_anything_is_written() {
    let repo = standard_repo(7);
    let (_cache, dirs) = new_cache();
    let err =
        MigrationPlan::new(&repo.manifest(), &v("1.0.0"), &v("1.5.0"), &repo.source()).unwrap_err();
    assert!(matches!(err, PlanError::Chain { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("1.0.0") && msg.contains("1.5.0"), "{msg}");
    assert!(!dirs.targets.exists() && !dirs.metadata.exists());
}

#[test]
fn unsigned_migration_is_refused_at_plan_time() {
    let mut repo = standard_repo(7);
    repo.signed.remove("migrate_v1.3.0_d.lz4");
    let err =
        MigrationPlan::new(&repo.manifest(), &v("1.0.0"), &v("1.3.0"), &repo.source()).unwrap_err();
    match err {
        PlanError::NotSigned { name, from, to } => {
            assert_eq!(name, "migrate_v1.3.0_d.lz4");
            assert_eq!((from, to), (v("1.1.0"), v("1.3.0")));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn no_migrations_still_caches_the_manifest() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.4.0", "1.4.0");
    assert!(plan.has_no_migrations());
    let (_cache, dirs) = new_cache();
    let report = fetch_all(&plan, &repo, &dirs);
    assert_eq!(report.fetched, ["manifest.json"]);
    let verified = verify(&dirs, "1.4.0", "1.4.0").unwrap();
    assert!(verified.migrations.is_empty());
}

#[test]
fn rerun_after_interrupted_fetch_fetches_only_what_is_missing() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    let (_cache, dirs) = new_cache();

    let mut broken = repo.source();
    broken.fail = Some(("migrate_v1.3.0_c.lz4".to_owned(), 40_000));
    let err = fetch_from(&plan, &broken, &dirs).unwrap_err();
    match &err {
        FetchError::Read { name, received, .. } => {
            assert_eq!(name, "migrate_v1.3.0_c.lz4");
            assert_eq!(*received, 40_000);
        }
        other => panic!("{other}"),
    }
    // Only the complete, verified file is in place; no partial or temporary file.
    assert_eq!(
        file_names(&dirs.targets),
        [cached_name(&repo, "migrate_v1.1.0_a.lz4")]
    );
    assert!(file_names(&dirs.metadata).is_empty(), "metadata comes last");

    let healthy = repo.source();
    let report = fetch_from(&plan, &healthy, &dirs).unwrap();
    assert_eq!(report.reused, ["migrate_v1.1.0_a.lz4"]);
    assert_eq!(
        report.fetched,
        [
            "migrate_v1.3.0_c.lz4",
            "migrate_v1.3.0_d.lz4",
            "manifest.json"
        ]
    );
    assert_eq!(
        healthy.opened(),
        [
            "migrate_v1.3.0_c.lz4",
            "migrate_v1.3.0_d.lz4",
            "manifest.json"
        ],
        "the file already cached is not opened again"
    );
    verify(&dirs, "1.0.0", "1.3.0").unwrap();

    // A third run downloads nothing.
    let idle = repo.source();
    let report = fetch_from(&plan, &idle, &dirs).unwrap();
    assert!(report.fetched.is_empty());
    assert!(idle.opened().is_empty());
}

#[test]
fn a_corrupt_cached_file_is_downloaded_again() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    let path = dirs
        .targets
        .join(cached_name(&repo, "migrate_v1.1.0_a.lz4"));
    let mut data = fs::read(&path).unwrap();
    data[10] ^= 0x01;
    fs::write(&path, &data).unwrap();
    let source = repo.source();
    let report = fetch_from(&plan, &source, &dirs).unwrap();
    assert_eq!(report.fetched, ["migrate_v1.1.0_a.lz4"]);
    assert_eq!(
        fs::read(&path).unwrap(),
        fs::read(repo.targets_dir.join("migrate_v1.1.0_a.lz4")).unwrap()
    );
}

#[test]
fn tampered_and_missing_cached_files_are_reported_by_name() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);

    let tampered = cached_name(&repo, "migrate_v1.3.0_c.lz4");
    let mut data = fs::read(dirs.targets.join(&tampered)).unwrap();
    data[65_432] ^= 0x80;
    fs::write(dirs.targets.join(&tampered), &data).unwrap();
    let removed = cached_name(&repo, "migrate_v1.1.0_a.lz4");
    fs::remove_file(dirs.targets.join(&removed)).unwrap();

    let err = verify(&dirs, "1.0.0", "1.3.0").unwrap_err();
    let VerifyError::Files(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 2, "{err}");
    assert!(problems.iter().any(|p| p.file == tampered
        && p.target == "migrate_v1.3.0_c.lz4"
        && matches!(p.kind, ProblemKind::WrongDigest { .. })));
    assert!(
        problems
            .iter()
            .any(|p| p.file == removed && p.kind == ProblemKind::Missing)
    );
    let msg = err.to_string();
    assert!(msg.contains(&tampered) && msg.contains(&removed), "{msg}");
}

#[test]
fn a_truncated_cached_file_is_reported_with_its_lengths() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    let name = cached_name(&repo, "migrate_v1.1.0_a.lz4");
    let data = fs::read(dirs.targets.join(&name)).unwrap();
    fs::write(dirs.targets.join(&name), &data[..2999]).unwrap();
    let err = verify(&dirs, "1.0.0", "1.1.0").unwrap_err();
    let VerifyError::Files(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        problems[0].kind,
        ProblemKind::WrongLength {
            expected: 3000,
            actual: 2999
        }
    );
}

#[test]
fn a_tampered_manifest_is_reported_and_not_parsed() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    let name = cached_name(&repo, "manifest.json");
    let text = fs::read_to_string(dirs.targets.join(&name)).unwrap();
    // Same length, the shortcut now points elsewhere: must not be trusted.
    let changed = text.replacen("1.0.0", "1.0.1", 1);
    assert_eq!(changed.len(), text.len());
    fs::write(dirs.targets.join(&name), changed).unwrap();
    let err = verify(&dirs, "1.0.0", "1.1.0").unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn changed_file_after_verification_is_not_returned() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    let verified = verify(&dirs, "1.0.0", "1.1.0").unwrap();
    let m = &verified.migrations[0];
    let mut data = fs::read(&m.path).unwrap();
    data[0] ^= 1;
    fs::write(&m.path, &data).unwrap();
    assert!(m.read_verified().is_err());
}

#[test]
fn metadata_that_does_not_load_is_an_error_naming_the_directory() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    fs::write(dirs.metadata.join("7.targets.json"), b"{not json").unwrap();
    let err = verify(&dirs, "1.0.0", "1.1.0").unwrap_err();
    assert!(matches!(err, VerifyError::Metadata { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&dirs.metadata.display().to_string())
    );
}

#[test]
fn stale_files_are_pruned_after_a_successful_fetch() {
    let old = standard_repo(7);
    let (_cache, dirs) = new_cache();
    let plan = old.plan("1.0.0", "1.3.0");
    fetch_all(&plan, &old, &dirs);

    // Files that are not ours stay; left-over temporary files go.
    fs::write(dirs.targets.join("README"), b"operator notes").unwrap();
    fs::write(
        dirs.metadata.join("root.json"),
        b"a TUF client's own trusted root",
    )
    .unwrap();
    fs::write(dirs.targets.join(".migrations-fetch-tmp-x1"), b"partial").unwrap();
    fs::create_dir(dirs.targets.join("subdir")).unwrap();

    // The host is now on 1.3.0; a newer repository (metadata version 8) and the next jump.
    let new = standard_repo(8);
    let plan = new.plan("1.3.0", "1.4.0");
    let report = fetch_all(&plan, &new, &dirs);
    assert_eq!(report.reused, ["manifest.json"]);
    let mut expected = vec![
        cached_name(&new, "migrate_v1.4.0_e.lz4"),
        cached_name(&new, "manifest.json"),
        "README".to_owned(),
        "subdir".to_owned(),
    ];
    expected.sort();
    assert_eq!(file_names(&dirs.targets), expected);
    assert_eq!(
        file_names(&dirs.metadata),
        [
            "1.root.json",
            "2.root.json",
            "8.snapshot.json",
            "8.targets.json",
            "root.json",
            "timestamp.json"
        ]
    );
    assert_eq!(report.pruned.len(), 3 + 1 + 2, "{:?}", report.pruned);
    verify(&dirs, "1.3.0", "1.4.0").unwrap();
}

#[test]
fn pruning_can_be_turned_off() {
    let repo = standard_repo(7);
    let (_cache, dirs) = new_cache();
    let first = repo.plan("1.0.0", "1.1.0");
    fetch_all(&first, &repo, &dirs);
    let second = repo.plan("1.3.0", "1.4.0");
    let opts = FetchOptions {
        prune: false,
        ..FetchOptions::default()
    };
    let report = fetch(&second, &repo.source(), &dirs, &opts).unwrap();
    assert!(report.pruned.is_empty());
    assert!(
        dirs.targets
            .join(cached_name(&repo, "migrate_v1.1.0_a.lz4"))
            .exists()
    );
}

#[test]
fn not_enough_space_stops_before_the_first_write() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    let (_cache, dirs) = new_cache();
    let opts = with_space(64 * 1024);
    let source = repo.source();
    let err = fetch(&plan, &source, &dirs, &opts).unwrap_err();
    match &err {
        FetchError::NotEnoughSpace {
            needed, available, ..
        } => {
            assert_eq!(*available, 64 * 1024);
            // 4 targets and 5 metadata files, each rounded up to 4096.
            let manifest_blocks = repo.signed["manifest.json"].length.div_ceil(4096);
            assert_eq!(*needed, (1 + 18 + 1 + manifest_blocks + 5) * 4096);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("not enough free space"), "{err}");
    assert!(source.opened().is_empty());
    assert!(file_names(&dirs.targets).is_empty());
    assert!(file_names(&dirs.metadata).is_empty());
}

#[test]
fn space_check_counts_only_the_files_still_missing() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    let (_cache, dirs) = new_cache();
    let mut broken = repo.source();
    broken.fail = Some(("migrate_v1.3.0_d.lz4".to_owned(), 10));
    fetch_from(&plan, &broken, &dirs).unwrap_err();
    // a and c are cached; d (1 block), the manifest and 5 metadata files remain.
    let manifest_blocks = repo.signed["manifest.json"].length.div_ceil(4096);
    let exactly = (1 + manifest_blocks + 5) * 4096;
    assert!(matches!(
        fetch(&plan, &repo.source(), &dirs, &with_space(exactly - 1)),
        Err(FetchError::NotEnoughSpace { .. })
    ));
    fetch(&plan, &repo.source(), &dirs, &with_space(exactly)).unwrap();
}

#[test]
fn a_source_serving_wrong_bytes_leaves_nothing_in_place() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (_cache, dirs) = new_cache();
    let name = "migrate_v1.1.0_a.lz4";
    let good = fs::read(repo.targets_dir.join(name)).unwrap();

    type Expect = fn(&FetchError) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        ([good.clone(), vec![0]].concat(), |e| {
            matches!(e, FetchError::TooLong { signed: 3000, .. })
        }),
        (good[..2000].to_vec(), |e| {
            matches!(
                e,
                FetchError::TooShort {
                    signed: 3000,
                    received: 2000,
                    ..
                }
            )
        }),
        (
            {
                let mut b = good.clone();
                b[1] ^= 4;
                b
            },
            |e| matches!(e, FetchError::DigestMismatch { .. }),
        ),
    ];
    for (served, expect) in cases {
        let mut liar = repo.source();
        liar.lie = Some((name.to_owned(), served));
        let err = fetch_from(&plan, &liar, &dirs).unwrap_err();
        assert!(expect(&err), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(
            file_names(&dirs.targets).is_empty(),
            "{:?}",
            file_names(&dirs.targets)
        );
    }
}

#[test]
fn a_plan_made_with_other_metadata_is_refused() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let mut other = standard_repo(7);
    other.signed.get_mut("migrate_v1.1.0_a.lz4").unwrap().length += 1;
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(
        &plan,
        &other.source(),
        &CacheDirs::under(cache.path()),
        &FetchOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, FetchError::PlanMismatch { ref name } if name == "migrate_v1.1.0_a.lz4"));
}

struct BadMetadata<'a>(DirSource<'a>, &'static str);

impl TargetLookup for BadMetadata<'_> {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        self.0.target_info(name)
    }
}

impl MigrationSource for BadMetadata<'_> {
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError> {
        self.0.open_target(name)
    }
    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError> {
        let mut files = self.0.metadata_files()?;
        files.push(file(self.1, "{}".to_owned()));
        Ok(files)
    }
}

#[test]
fn metadata_names_that_escape_the_directory_are_refused_before_any_write() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    for bad in ["../evil.json", "timestamp.json", "x.txt"] {
        let cache = tempfile::tempdir().unwrap();
        let dirs = CacheDirs::under(cache.path());
        let err = fetch(
            &plan,
            &BadMetadata(repo.source(), bad),
            &dirs,
            &FetchOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
        assert!(file_names(&dirs.targets).is_empty());
        assert!(!cache.path().join("evil.json").exists());
    }
}

#[test]
fn plan_serializes_for_check_update_json() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["from"], "1.0.0");
    assert_eq!(json["to"], "1.3.0");
    assert_eq!(json["migrations"][1]["name"], "migrate_v1.3.0_c.lz4");
    assert_eq!(json["migrations"][1]["length"], 70_000);
    assert_eq!(
        json["migrations"][1]["sha256"],
        repo.signed["migrate_v1.3.0_c.lz4"].sha256_hex()
    );
    assert_eq!(json["hops"].as_array().unwrap().len(), 2);
    assert_eq!(json["total_bytes"], plan.total_bytes);
}

#[test]
fn a_failed_lookup_is_not_mistaken_for_an_unsigned_target() {
    let repo = standard_repo(7);
    let mut source = repo.source();
    source.broken_lookup = Some("migrate_v1.1.0_a.lz4".to_owned());
    let err = MigrationPlan::new(&repo.manifest(), &v("1.0.0"), &v("1.1.0"), &source).unwrap_err();
    assert!(
        matches!(err, PlanError::Lookup { ref name, .. } if name == "migrate_v1.1.0_a.lz4"),
        "{err}"
    );
    assert!(
        fixtures::error_chain(&err).contains("could not be fetched"),
        "{err}"
    );
}

#[test]
fn a_symbolic_link_in_the_cache_is_never_trusted() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.1.0");
    let (cache, dirs) = new_cache();
    fetch_all(&plan, &repo, &dirs);
    // Replace the cached file by a link to a file with the very same bytes elsewhere.
    let name = cached_name(&repo, "migrate_v1.1.0_a.lz4");
    let cached = dirs.targets.join(&name);
    let elsewhere = cache.path().join("elsewhere");
    fs::rename(&cached, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &cached).unwrap();

    let err = verify(&dirs, "1.0.0", "1.1.0").unwrap_err();
    let VerifyError::Files(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].file, name);
    assert_eq!(problems[0].kind, ProblemKind::NotRegular);

    // A fetch replaces the link by a regular file.
    let source = repo.source();
    let report = fetch_from(&plan, &source, &dirs).unwrap();
    assert_eq!(report.fetched, ["migrate_v1.1.0_a.lz4"]);
    assert!(fs::symlink_metadata(&cached).unwrap().file_type().is_file());
    assert!(elsewhere.exists(), "the link's target is not touched");
    verify(&dirs, "1.0.0", "1.1.0").unwrap();
}

#[test]
fn plan_renders_as_one_line_for_check_update() {
    let repo = standard_repo(7);
    let plan = repo.plan("1.0.0", "1.3.0");
    assert_eq!(
        plan.to_string(),
        format!(
            "migrations 1.0.0 -> 1.3.0 via 1.1.0: migrate_v1.1.0_a.lz4, migrate_v1.3.0_c.lz4, \
             migrate_v1.3.0_d.lz4 ({} bytes with manifest.json)",
            plan.total_bytes
        )
    );
    let none = repo.plan("1.4.0", "1.4.0");
    assert_eq!(none.to_string(), "no migrations from 1.4.0 to 1.4.0");
}
