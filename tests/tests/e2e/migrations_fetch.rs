//! End-to-end: the migrations a version jump needs, fetched from a real signed TUF repository
//! served over HTTP on 127.0.0.1 by the real client, cached in the reference migrator's layout,
//! then verified offline (expiry ignored) from the shipped trusted root.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fixtures::fs::file_names;
use fixtures::http::{Fault, TestServer};
use fixtures::repo::{Delegation, KeyKind, TargetsRole, TestKey, TestRepo, far_future, long_ago};
use migrations_fetch::{
    CacheDirs, FetchError, FetchOptions, FetchReport, MigrationPlan, PlanError, ProblemKind,
    StatvfsProbe, TargetLookup, VerifiedCache, VerifyError, Version, fetch, verify_offline,
};
use sha2::{Digest, Sha256};
use updog::migrations::{TufOfflineLoader, TufSource};
use updog::transport::{Backoff, HttpOptions, HttpTransport};
use updog::tuf::{Repository, RepositoryOptions};

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// Deterministic, incompressible-looking bytes.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(
            [seed.to_le_bytes(), counter.to_le_bytes()].concat(),
        ));
        counter += 1;
    }
    out.truncate(len);
    out
}

const A: &str = "migrate_v1.1.0_a.lz4";
const B: &str = "migrate_v1.2.0_b.lz4";
const C: &str = "migrate_v1.3.0_c.lz4";
const D: &str = "migrate_v1.3.0_d.lz4";
const E: &str = "migrate_v1.4.0_e.lz4";

fn manifest_json(entries: &[(&str, &str, &[&str])]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for (from, to, targets) in entries {
        map.insert(format!("({from}, {to})"), serde_json::json!(targets));
    }
    serde_json::to_vec_pretty(&serde_json::json!({"updates": [], "migrations": map})).unwrap()
}

/// 1.0.0 -> 1.1.0 -> 1.3.0 (a shortcut over 1.2.0); 1.1.0 -> 1.2.0; 1.3.0 -> 1.4.0 only in the
/// second release.
fn release_one() -> Vec<u8> {
    manifest_json(&[
        ("1.0.0", "1.1.0", &[A]),
        ("1.1.0", "1.2.0", &[B]),
        ("1.1.0", "1.3.0", &[C, D]),
    ])
}

fn release_two() -> Vec<u8> {
    manifest_json(&[
        ("1.0.0", "1.1.0", &[A]),
        ("1.1.0", "1.2.0", &[B]),
        ("1.1.0", "1.3.0", &[C, D]),
        ("1.3.0", "1.4.0", &[E]),
    ])
}

struct Env {
    repo: TestRepo,
    server: TestServer,
    work: tempfile::TempDir,
    trusted_root: PathBuf,
    dirs: CacheDirs,
}

impl Env {
    /// The first release (A to D and its manifest), consistent snapshots.
    fn new() -> Self {
        let mut repo = TestRepo::new(KeyKind::Ed25519);
        repo.consistent_snapshot = true;
        repo.add_target(A, &payload(1, 3_000));
        repo.add_target(B, &payload(2, 5_000));
        repo.add_target(C, &payload(3, 200_000));
        repo.add_target(D, &payload(4, 100));
        repo.add_target("manifest.json", &release_one());
        Self::serve(repo)
    }

    /// Publishes `repo` (root version 1 shipped as the trusted root) and serves it.
    fn serve(mut repo: TestRepo) -> Self {
        repo.publish_root();
        repo.publish();
        let server = TestServer::serve_dir(repo.dir()).unwrap();
        let work = tempfile::tempdir().unwrap();
        let trusted_root = work.path().join("root.json");
        repo.write_root(1, &trusted_root);
        let dirs = CacheDirs::under(work.path().join("cache"));
        Self {
            repo,
            server,
            work,
            trusted_root,
            dirs,
        }
    }

    fn http(retries: u32) -> HttpTransport {
        HttpTransport::new(HttpOptions {
            stall_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retries,
            max_resumes: retries,
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
            proxy_from_env: false,
            ..HttpOptions::default()
        })
        .unwrap()
    }

    /// Client options for the served repository, trusting the shipped root.
    fn options(&self) -> RepositoryOptions {
        let mut opts = RepositoryOptions::new(
            self.server.url_for("metadata/").parse().unwrap(),
            self.server.url_for("targets/").parse().unwrap(),
            self.work.path().join("datastore"),
        );
        opts.trusted_root.clone_from(&self.trusted_root);
        opts
    }

    fn load_with(&self, retries: u32) -> Repository {
        Repository::load(self.options(), Arc::new(Self::http(retries))).unwrap()
    }

    fn load(&self) -> Repository {
        self.load_with(2)
    }

    fn manifest(repo: &Repository) -> manifest::Manifest {
        let mut reader = repo.read_target("manifest.json").unwrap();
        let mut bytes = Vec::new();
        std::io::copy(&mut reader, &mut bytes).unwrap();
        reader.finish().unwrap();
        manifest::Manifest::from_slice(&bytes).unwrap()
    }

    fn plan(repo: &Repository, from: &str, to: &str) -> Result<MigrationPlan, PlanError> {
        MigrationPlan::new(&Self::manifest(repo), &v(from), &v(to), &TufSource(repo))
    }

    fn cached(repo: &Repository, name: &str) -> String {
        let info = TufSource(repo).target_info(name).unwrap().unwrap();
        format!("{}.{name}", info.sha256_hex())
    }

    fn target_path(repo: &Repository, name: &str) -> String {
        format!("/targets/{}", Self::cached(repo, name))
    }

    fn loader(&self) -> TufOfflineLoader {
        TufOfflineLoader::new(&self.trusted_root)
    }

    /// Fetches `plan` from `repo` into the cache with the default options.
    fn fetch(&self, plan: &MigrationPlan, repo: &Repository) -> Result<FetchReport, FetchError> {
        fetch(plan, &TufSource(repo), &self.dirs, &FetchOptions::default())
    }

    /// Verifies the cache offline for the jump `from` -> `to`.
    fn verify(&self, from: &str, to: &str) -> Result<VerifiedCache, VerifyError> {
        verify_offline(&self.dirs, &self.loader(), &v(from), &v(to))
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn forward_chain_with_a_shortcut_is_cached_in_the_reference_layout_and_verifies_offline() {
    let env = Env::new();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    assert_eq!(
        plan.migration_names(),
        [A, C, D],
        "1.2.0's migration is skipped by the shortcut"
    );

    let report = env.fetch(&plan, &repo).unwrap();
    assert_eq!(report.fetched, [A, C, D, "manifest.json"]);
    assert_eq!(
        file_names(&env.dirs.targets),
        sorted(vec![
            Env::cached(&repo, A),
            Env::cached(&repo, C),
            Env::cached(&repo, D),
            Env::cached(&repo, "manifest.json"),
        ])
    );
    // The stored bytes are the published (compressed) target bytes.
    assert_eq!(
        fs::read(env.dirs.targets.join(Env::cached(&repo, C))).unwrap(),
        payload(3, 200_000)
    );
    // The layout the reference migrator reads with consistent snapshots.
    assert_eq!(
        file_names(&env.dirs.metadata),
        [
            "1.root.json",
            "1.snapshot.json",
            "1.targets.json",
            "timestamp.json"
        ]
    );
    assert_eq!(
        fs::read(env.dirs.metadata.join("1.snapshot.json")).unwrap(),
        env.repo.read_metadata("1.snapshot.json"),
        "metadata is cached byte for byte as verified"
    );

    let verified = env.verify("1.0.0", "1.3.0").unwrap();
    assert_eq!(verified.migration_names(), [A, C, D]);
    assert_eq!(
        verified.migrations[0].read_verified().unwrap(),
        payload(1, 3_000)
    );
}

#[test]
fn backward_chain_caches_the_same_migrations() {
    let env = Env::new();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.3.0", "1.0.0").unwrap();
    let mut needed = plan.migration_names();
    needed.sort_unstable();
    assert_eq!(needed, [A, C, D]);
    env.fetch(&plan, &repo).unwrap();
    let verified = env.verify("1.3.0", "1.0.0").unwrap();
    assert_eq!(verified.migration_names(), plan.migration_names());
}

#[test]
fn a_missing_link_stops_before_any_download_or_disk_change() {
    let env = Env::new();
    let repo = env.load();
    env.server.clear_log();
    let err = Env::plan(&repo, "1.0.0", "1.4.0").unwrap_err();
    assert!(matches!(err, PlanError::Chain { .. }), "{err}");
    assert!(err.to_string().contains("1.4.0"), "{err}");
    assert!(!env.dirs.targets.exists() && !env.dirs.metadata.exists());
    let target_requests: Vec<String> = env
        .server
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .filter(|p| p.contains("migrate_"))
        .collect();
    assert!(target_requests.is_empty(), "{target_requests:?}");
}

#[test]
fn rerun_after_an_interrupted_fetch_downloads_only_the_missing_files() {
    let env = Env::new();
    let repo = env.load_with(0);
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    let c_path = Env::target_path(&repo, C);
    env.server.fault(&c_path, Fault::DropAfter(120_000));
    let err = env.fetch(&plan, &repo).unwrap_err();
    assert!(err.to_string().contains(C), "{err}");
    assert_eq!(file_names(&env.dirs.targets), [Env::cached(&repo, A)]);
    assert!(file_names(&env.dirs.metadata).is_empty());

    env.server.clear_faults();
    env.server.clear_log();
    let report = env.fetch(&plan, &repo).unwrap();
    assert_eq!(report.reused, [A]);
    assert_eq!(report.fetched, [C, D, "manifest.json"]);
    assert!(
        env.server
            .requests_for(&Env::target_path(&repo, A))
            .is_empty()
    );
    assert_eq!(env.server.requests_for(&c_path).len(), 1);
    env.verify("1.0.0", "1.3.0").unwrap();
}

#[test]
fn a_changed_byte_in_a_cached_migration_is_reported_by_file_name() {
    let env = Env::new();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    env.fetch(&plan, &repo).unwrap();
    let name = Env::cached(&repo, C);
    let path = env.dirs.targets.join(&name);
    let mut bytes = fs::read(&path).unwrap();
    bytes[123_456] ^= 0x10;
    fs::write(&path, &bytes).unwrap();

    let err = env.verify("1.0.0", "1.3.0").unwrap_err();
    let VerifyError::Files(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].file, name);
    assert!(matches!(problems[0].kind, ProblemKind::WrongDigest { .. }));
    assert!(err.to_string().contains(&name));
}

#[test]
fn a_changed_byte_in_cached_metadata_is_reported_by_file_name() {
    let env = Env::new();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    env.fetch(&plan, &repo).unwrap();
    let path = env.dirs.metadata.join("1.targets.json");
    let text = fs::read_to_string(&path).unwrap();
    // Same length: the declared length of a migration changes by one digit.
    let changed = text.replacen("\"length\": 3000", "\"length\": 3001", 1);
    assert_ne!(
        changed, text,
        "the fixture's JSON layout changed; adjust the edit"
    );
    fs::write(&path, changed).unwrap();
    let err = env.verify("1.0.0", "1.3.0").unwrap_err();
    assert!(matches!(err, VerifyError::Metadata { .. }), "{err}");
    assert!(
        fixtures::error_chain(&err).contains("1.targets.json"),
        "{err}"
    );
}

#[test]
fn expired_metadata_still_verifies_offline() {
    let mut env = Env::new();
    env.repo.timestamp_expires = long_ago();
    env.repo.bump();
    env.repo.publish();
    // The online client runs at a time before the expiry.
    let mut opts = env.options();
    // A time as far before the expiry as the far future is after it.
    opts.reference_time = Some(long_ago() - (far_future() - long_ago()));
    let repo = Repository::load(opts, Arc::new(Env::http(1))).unwrap();
    let plan = Env::plan(&repo, "1.0.0", "1.1.0").unwrap();
    env.fetch(&plan, &repo).unwrap();
    let verified = env.verify("1.0.0", "1.1.0").unwrap();
    assert_eq!(verified.migrations.len(), 1);
}

#[test]
fn stale_files_are_pruned_after_the_next_successful_fetch() {
    let mut env = Env::new();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    env.fetch(&plan, &repo).unwrap();
    let old_a = Env::cached(&repo, A);
    let old_manifest = Env::cached(&repo, "manifest.json");

    // The next release: a new migration and a new manifest, metadata version 2.
    env.repo.add_target(E, &payload(5, 4_000));
    env.repo.add_target("manifest.json", &release_two());
    env.repo.bump();
    env.repo.publish();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.3.0", "1.4.0").unwrap();
    let report = env.fetch(&plan, &repo).unwrap();
    assert_eq!(report.fetched, [E, "manifest.json"]);
    assert_eq!(
        file_names(&env.dirs.targets),
        sorted(vec![
            Env::cached(&repo, E),
            Env::cached(&repo, "manifest.json")
        ])
    );
    assert!(report.pruned.iter().any(|p| p.ends_with(&old_a)));
    assert!(report.pruned.iter().any(|p| p.ends_with(&old_manifest)));
    assert_eq!(
        file_names(&env.dirs.metadata),
        [
            "1.root.json",
            "2.snapshot.json",
            "2.targets.json",
            "timestamp.json"
        ]
    );
    env.verify("1.3.0", "1.4.0").unwrap();
}

/// A tmpfs of a given size, unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn not_enough_space_on_a_small_file_system_stops_before_writing() {
    let mut env = Env::new();
    env.repo.add_target(B, &payload(2, 1_500_000));
    env.repo.bump();
    env.repo.publish();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.1.0", "1.2.0").unwrap();

    let mount_point = env.work.path().join("small");
    fs::create_dir(&mount_point).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&mount_point, "1m") else {
        fixtures::gate::skip("cannot mount a tmpfs (not root?): no real small file system");
        return;
    };
    let dirs = CacheDirs::under(&mount_point);
    env.server.clear_log();
    let opts = FetchOptions {
        space_probe: Box::new(StatvfsProbe),
        prune: true,
    };
    let err = fetch(&plan, &TufSource(&repo), &dirs, &opts).unwrap_err();
    let FetchError::NotEnoughSpace {
        needed, available, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(*needed > 1_500_000 && *available <= 1024 * 1024, "{err}");
    assert!(err.to_string().contains("not enough free space"), "{err}");
    assert!(file_names(&dirs.targets).is_empty() && file_names(&dirs.metadata).is_empty());
    assert!(
        env.server
            .requests_for(&Env::target_path(&repo, B))
            .is_empty()
    );

    // The small migration of another jump fits.
    let plan = Env::plan(&repo, "1.0.0", "1.1.0").unwrap();
    fetch(&plan, &TufSource(&repo), &dirs, &opts).unwrap();
    verify_offline(&dirs, &env.loader(), &v("1.0.0"), &v("1.1.0")).unwrap();
}

#[test]
fn without_pruning_offline_verification_uses_the_metadata_versions_the_timestamp_names() {
    let mut env = Env::new();
    let keep = FetchOptions {
        prune: false,
        ..FetchOptions::default()
    };
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.3.0").unwrap();
    fetch(&plan, &TufSource(&repo), &env.dirs, &keep).unwrap();

    // Release two replaces migration A's content: the old cached copy is no longer signed.
    env.repo.add_target(A, &payload(11, 3_500));
    env.repo.add_target(E, &payload(5, 4_000));
    env.repo.add_target("manifest.json", &release_two());
    env.repo.bump();
    env.repo.publish();
    let repo = env.load();
    let plan = Env::plan(&repo, "1.0.0", "1.4.0").unwrap();
    let report = fetch(&plan, &TufSource(&repo), &env.dirs, &keep).unwrap();
    assert_eq!(report.fetched, [A, E, "manifest.json"]);
    assert_eq!(report.reused, [C, D]);
    assert_eq!(
        file_names(&env.dirs.metadata),
        [
            "1.root.json",
            "1.snapshot.json",
            "1.targets.json",
            "2.snapshot.json",
            "2.targets.json",
            "timestamp.json"
        ]
    );
    let verified = env.verify("1.0.0", "1.4.0").unwrap();
    assert_eq!(verified.migrations.len(), 4);
    assert_eq!(
        verified.migrations[0].read_verified().unwrap(),
        payload(11, 3_500)
    );
    // The first release's copies of A and the manifest are left-overs, not errors.
    assert_eq!(verified.extraneous.len(), 2, "{:?}", verified.extraneous);
}

#[test]
fn a_repository_without_consistent_snapshots_is_cached_with_plain_metadata_names() {
    let mut repo = TestRepo::new(KeyKind::EcdsaP256);
    repo.add_target(A, &payload(1, 3_000));
    repo.add_target("manifest.json", &release_one());
    let env = Env::serve(repo);
    let tuf = env.load();
    let plan = Env::plan(&tuf, "1.0.0", "1.1.0").unwrap();
    env.fetch(&plan, &tuf).unwrap();
    assert_eq!(
        file_names(&env.dirs.metadata),
        [
            "1.root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    let verified = env.verify("1.0.0", "1.1.0").unwrap();
    assert_eq!(verified.migrations[0].name, A);
}

#[test]
fn migrations_signed_by_a_delegated_role_are_cached_with_that_role_and_verify_offline() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.consistent_snapshot = true;
    repo.add_target("manifest.json", &release_one());
    let delegate = TestKey::get(KeyKind::Ed25519, 4);
    repo.targets
        .delegations
        .push(Delegation::new("migrations", &delegate, &["migrate_*"]));
    let mut role = TargetsRole {
        version: 3,
        ..TargetsRole::default()
    };
    for (name, content) in [
        (A, payload(1, 3_000)),
        (C, payload(3, 9_000)),
        (D, payload(4, 10)),
    ] {
        role.targets.insert(name.to_owned(), content);
    }
    repo.delegated.insert("migrations".to_owned(), role);
    let env = Env::serve(repo);
    let tuf = env.load_with(1);
    let plan = Env::plan(&tuf, "1.0.0", "1.3.0").unwrap();
    assert_eq!(plan.migration_names(), [A, C, D]);
    env.fetch(&plan, &tuf).unwrap();
    assert_eq!(
        file_names(&env.dirs.metadata),
        [
            "1.root.json",
            "1.snapshot.json",
            "1.targets.json",
            "3.migrations.json",
            "timestamp.json"
        ]
    );
    let verified = env.verify("1.0.0", "1.3.0").unwrap();
    assert_eq!(verified.migrations.len(), 3);

    // A changed byte in the delegated role's signed part is caught and the file is named.
    let path = env.dirs.metadata.join("3.migrations.json");
    let text = fs::read_to_string(&path).unwrap();
    let changed = text.replacen("\"length\": 9000", "\"length\": 9001", 1);
    assert_ne!(
        changed, text,
        "the fixture's JSON layout changed; adjust the edit"
    );
    fs::write(&path, changed).unwrap();
    let err = env.verify("1.0.0", "1.3.0").unwrap_err();
    assert!(err.to_string().contains("3.migrations.json"), "{err}");
}
