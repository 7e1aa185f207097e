//! Who may sign what, over real HTTP on 127.0.0.1 with real keys: a delegated role is trusted
//! only through the delegation being followed (the "diamond"), and a key id repeated in
//! `signatures` is refused for every role.

use fixtures::http::TestServer;
use fixtures::repo::{Delegation, KeyKind, TargetsRole, TestKey, TestRepo};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tuf::transport::{Backoff, HttpOptions, HttpTransport};
use tuf::{Error, Repository, RepositoryOptions, Role, Signer};

/// A repository served over HTTP and a client directory (trusted metadata, shipped root).
struct Served {
    repo: TestRepo,
    server: TestServer,
    client: tempfile::TempDir,
}

impl Served {
    /// Publishes `repo` and serves it; the client ships root version 1.
    fn new(mut repo: TestRepo) -> Self {
        repo.publish();
        let server = TestServer::serve_dir(repo.dir()).unwrap();
        let client = tempfile::tempdir().unwrap();
        repo.write_root(1, &client.path().join("shipped-root.json"));
        Self {
            repo,
            server,
            client,
        }
    }

    fn shipped_root(&self) -> PathBuf {
        self.client.path().join("shipped-root.json")
    }

    fn datastore(&self) -> PathBuf {
        self.client.path().join("metadata")
    }

    fn load(&self) -> Result<Repository, Error> {
        let mut opts = RepositoryOptions::new(
            self.server.url_for("metadata/").parse().unwrap(),
            self.server.url_for("targets/").parse().unwrap(),
            self.datastore(),
        );
        opts.trusted_root = self.shipped_root();
        let transport = HttpTransport::new(HttpOptions {
            stall_timeout: Duration::from_secs(10),
            retries: 0,
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(10),
            },
            proxy_from_env: false,
            ..HttpOptions::default()
        })
        .unwrap();
        Repository::load(opts, Arc::new(transport))
    }

    fn load_err(&self) -> Error {
        match self.load() {
            Ok(r) => panic!("load unexpectedly succeeded: {r:?}"),
            Err(e) => {
                eprintln!("expected error: {e}");
                e
            }
        }
    }
}

fn role(targets: &[(&str, &[u8])], delegations: Vec<Delegation>) -> TargetsRole {
    let mut role = TargetsRole::default();
    for (n, c) in targets {
        role.targets.insert((*n).to_owned(), c.to_vec());
    }
    role.delegations = delegations;
    role
}

// ---------------------------------------------------------------------------------------------
// The diamond: parent-a and parent-b both delegate `release`, which only parent-a's key signs.
// ---------------------------------------------------------------------------------------------

const TEAM_A: &str = "team-a/trusted_root.json";
const TEAM_B: &str = "team-b/trusted_root.json";

fn diamond() -> Served {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    let parents = TestKey::get(KeyKind::Ed25519, 4);
    let ka = TestKey::get(KeyKind::EcdsaP256, 0);
    let kb = TestKey::get(KeyKind::EcdsaP256, 1);
    repo.targets.delegations = vec![
        Delegation::new("parent-a", &parents, &["team-a/*"]),
        Delegation::new("parent-b", &parents, &["team-b/*"]),
    ];
    repo.delegated.insert(
        "parent-a".into(),
        role(&[], vec![Delegation::new("release", &ka, &["team-a/*"])]),
    );
    repo.delegated.insert(
        "parent-b".into(),
        role(&[], vec![Delegation::new("release", &kb, &["team-b/*"])]),
    );
    let mut release = role(
        &[(TEAM_A, b"root for team a"), (TEAM_B, b"root for team b")],
        vec![],
    );
    release.signers = Some(vec![ka]);
    repo.delegated.insert("release".into(), release);
    Served::new(repo)
}

/// The lookup through parent-b must fail on parent-b's keys for `release`.
fn assert_refused_through_parent_b(result: Result<Option<tuf::TargetDescription>, Error>) {
    match result {
        Err(Error::Threshold {
            role: Role::Delegated(role),
            signer: Signer::Delegation { delegator },
            valid: 0,
            ..
        }) if role == "release" && delegator == Role::Delegated("parent-b".into()) => {}
        other => panic!("expected release refused on parent-b's keys, got {other:?}"),
    }
}

#[test]
fn diamond_a_then_b_refuses_b() {
    let served = diamond();
    let repo = served.load().unwrap();
    let a = repo.target(TEAM_A).unwrap().expect("team-a target");
    assert_eq!(a.length, b"root for team a".len() as u64);
    assert_refused_through_parent_b(repo.target(TEAM_B));
    // And reading it is refused the same way (no download of the target).
    assert!(repo.read_target(TEAM_B).is_err());
    assert!(
        served
            .server
            .requests_for("targets/team-b/trusted_root.json")
            .is_empty()
    );
    // Asking again changes nothing: the refusal is not cached away either.
    assert_refused_through_parent_b(repo.target(TEAM_B));
    assert!(repo.target(TEAM_A).unwrap().is_some());
}

#[test]
fn diamond_b_then_a_refuses_b_and_accepts_a() {
    let served = diamond();
    let repo = served.load().unwrap();
    assert_refused_through_parent_b(repo.target(TEAM_B));
    assert!(repo.target(TEAM_A).unwrap().is_some());
    assert_refused_through_parent_b(repo.target(TEAM_B));
}

#[test]
fn diamond_copy_in_the_trusted_directory_is_verified_per_delegation() {
    let served = diamond();
    // One process trusts `release` through parent-a and stores it.
    served.load().unwrap().target(TEAM_A).unwrap().unwrap();
    assert!(served.datastore().join("release.json").is_file());
    // The next process reaches the stored copy through parent-b first, then through parent-a.
    let repo = served.load().unwrap();
    served.server.clear_log();
    assert_refused_through_parent_b(repo.target(TEAM_B));
    assert!(repo.target(TEAM_A).unwrap().is_some());
    // Through parent-a the stored copy was reused, not downloaded again.
    let release_downloads = served
        .server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("release.json"))
        .count();
    assert_eq!(
        release_downloads, 1,
        "only the parent-b attempt downloads it"
    );
    // An offline cache of what this process verified holds release.json once and verifies
    // the same way.
    let cache = tempfile::tempdir().unwrap();
    let files = repo.metadata_bytes();
    assert_eq!(files.iter().filter(|f| f.name == "release.json").count(), 1);
    for f in files {
        std::fs::write(cache.path().join(&f.name), &f.bytes).unwrap();
    }
    let offline = Repository::load_offline(cache.path(), served.shipped_root()).unwrap();
    assert!(offline.target(TEAM_A).unwrap().is_some());
    assert_refused_through_parent_b(offline.target(TEAM_B));
}

#[test]
fn diamond_signed_by_both_keys_is_trusted_through_both() {
    // The control: with release signed by KA and KB, both paths hold.
    let mut served = diamond();
    let signers = vec![
        TestKey::get(KeyKind::EcdsaP256, 0),
        TestKey::get(KeyKind::EcdsaP256, 1),
    ];
    served.repo.delegated.get_mut("release").unwrap().signers = Some(signers);
    served.repo.bump();
    served.repo.delegated.get_mut("release").unwrap().version += 1;
    served.repo.publish();
    let repo = served.load().unwrap();
    assert!(repo.target(TEAM_A).unwrap().is_some());
    assert!(repo.target(TEAM_B).unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// A key id repeated in `signatures`
// ---------------------------------------------------------------------------------------------

fn assert_duplicate(e: &Error, role: &str, key: &TestKey) {
    assert!(
        matches!(e, Error::DuplicateSignature { role: r, keyid, .. } if *r == Role::from_name(role) && keyid == key.keyid()),
        "{role}: {e:?}"
    );
    let text = e.to_string();
    assert!(text.contains(role) && text.contains(key.keyid()), "{text}");
}

fn twice(key: &TestKey) -> Vec<TestKey> {
    vec![key.clone(), key.clone()]
}

#[test]
fn repeated_key_id_is_refused_in_timestamp_snapshot_and_targets() {
    for name in ["timestamp", "snapshot", "targets"] {
        let mut repo = TestRepo::new(KeyKind::Ed25519);
        repo.add_target("file.txt", b"x");
        let key = repo.role(name).keys[0].clone();
        repo.role(name).signers = Some(twice(&key));
        let served = Served::new(repo);
        assert_duplicate(&served.load_err(), name, &key);
    }
}

#[test]
fn repeated_key_id_is_refused_in_a_new_root() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    let mut served = Served::new(repo);
    served.load().unwrap();
    let key = served.repo.role("root").keys[0].clone();
    served.repo.root_version = 2;
    served.repo.role("root").signers = Some(twice(&key));
    served.repo.publish_root();
    assert_duplicate(&served.load_err(), "root", &key);
    // The trusted root stays version 1.
    assert!(!served.datastore().join("root-history/2.root.json").exists());
}

#[test]
fn repeated_key_id_is_refused_in_the_trusted_root() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    let key = repo.role("root").keys[0].clone();
    repo.role("root").signers = Some(twice(&key));
    let served = Served::new(repo);
    let e = served.load_err();
    match &e {
        Error::BadTrustedRoot { path, source } if *path == served.shipped_root() => {
            assert_duplicate(source, "root", &key);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn repeated_key_id_is_refused_in_a_delegated_role() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    let key = TestKey::get(KeyKind::Ed25519, 4);
    repo.targets.delegations = vec![Delegation::new("A", &key, &["*"])];
    let mut a = role(&[("x", b"x")], vec![]);
    a.signers = Some(twice(&key));
    repo.delegated.insert("A".into(), a);
    let served = Served::new(repo);
    let repo = served.load().unwrap();
    assert_duplicate(&repo.target("x").unwrap_err(), "A", &key);
}

// ---------------------------------------------------------------------------------------------
// A stored root that does not match the repository
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stored_root_that_does_not_match_the_repository_is_named_with_its_origin() {
    let mut first = TestRepo::new(KeyKind::Ed25519);
    first.add_target("file.txt", b"from the first repository");
    let served = Served::new(first);
    served.load().unwrap();

    // The server now carries another repository (other keys), and the shipped root is fixed to
    // match it: the root stored by the first run still decides.
    let mut other = TestRepo::new(KeyKind::EcdsaP256);
    other.add_target("file.txt", b"from the other repository");
    other.publish();
    served.server.set_root(other.dir());
    other.write_root(1, &served.shipped_root());

    let e = served.load_err();
    let stored = served.datastore().join("root.json");
    match &e {
        Error::Threshold {
            role: Role::Timestamp,
            stored_root: Some(note),
            ..
        } => {
            assert_eq!(note.path, stored);
            assert_eq!(note.version, 1);
            assert!(
                note.origin.starts_with(&format!(
                    "seeded from {} (version 1) at ",
                    served.shipped_root().display()
                )),
                "{}",
                note.origin
            );
        }
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    for needle in [
        &stored.display().to_string(),
        "version 1",
        "seeded from",
        "re-seed trust deliberately",
        "README",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert_eq!(text.lines().count(), 1, "{text}");

    // A second run refuses the same way: nothing re-seeds by itself.
    assert!(matches!(
        served.load_err(),
        Error::Threshold {
            stored_root: Some(_),
            ..
        }
    ));

    // The documented re-seed: move the metadata directory aside; the next run seeds from the
    // (fixed) shipped root and trusts the repository it matches.
    let aside = served.client.path().join("metadata.old");
    std::fs::rename(served.datastore(), &aside).unwrap();
    let repo = served.load().unwrap();
    assert!(repo.target("file.txt").unwrap().is_some());
}

#[test]
fn a_new_root_not_signed_by_the_stored_root_names_it() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    let mut served = Served::new(repo);
    served.load().unwrap();
    // Root 2 signed only by a key root 1 does not list.
    let stranger = TestKey::get(KeyKind::EcdsaP256, 4);
    served.repo.root_version = 2;
    served.repo.role("root").keys = vec![stranger.clone()];
    served.repo.role("root").signers = Some(vec![stranger]);
    served.repo.publish_root();
    match served.load_err() {
        Error::Threshold {
            role: Role::Root,
            version: 2,
            stored_root: Some(note),
            ..
        } => assert_eq!(note.version, 1),
        other => panic!("{other:?}"),
    }
}
