//! Scenario tests of the TUF client workflow (specification section 5) over `file://`, one or
//! more per rule; each fails if its rule is removed from the client. Repositories are built in
//! code and signed with the committed ed25519, ecdsa-p256 and RSA keys.

mod tuf_support;

use fixtures::repo::{
    Delegation, KeyKind, TargetsRole, TestKey, TestRepo, far_future, long_ago, sign_envelope,
};
use std::sync::Arc;
use tuf::{Error, Repository, Role, Signer};
use tuf_support::{Client, KINDS, label, load_err, read_all, simple_repo, trusted_files};

/// Loads `repo` with `client` and asserts that the load fails with an error matching the
/// pattern (printed otherwise); evaluates to the error.
macro_rules! assert_refused {
    ($client:expr, $repo:expr, $($pattern:tt)+) => {{
        let e = load_err($client, $repo);
        assert!(matches!(&e, $($pattern)+), "{e}");
        e
    }};
}

/// A client shipped with root version 1 that loaded `repo`.
fn loaded(repo: &TestRepo) -> (Client, Repository) {
    let client = Client::new(repo, 1);
    let r = client.load(repo).unwrap();
    (client, r)
}

/// An ed25519 repository, and the key its delegated roles are signed with.
fn delegating_repo() -> (TestRepo, TestKey) {
    (
        TestRepo::new(KeyKind::Ed25519),
        TestKey::get(KeyKind::Ed25519, 4),
    )
}

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

#[test]
fn loads_and_reads_a_target_with_each_key_type() {
    for kind in KINDS {
        let repo = simple_repo(kind);
        let client = Client::new(&repo, 1);
        let r = client
            .load(&repo)
            .unwrap_or_else(|e| panic!("{}: {e}", label(kind)));
        assert_eq!(read_all(&r, "file.txt").unwrap(), b"hello, world\n");
        for f in [
            "root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
        ] {
            assert_eq!(
                client.trusted(f).unwrap(),
                repo.read_metadata(f),
                "{}: {f} not stored as the exact bytes received",
                label(kind)
            );
        }
    }
}

#[test]
fn trusted_directory_holds_only_the_metadata_files() {
    let (mut repo, k) = delegating_repo();
    repo.targets
        .delegations
        .push(Delegation::new("a/role", &k, &["*"]));
    let mut role = TargetsRole::default();
    role.targets.insert("d.txt".into(), b"delegated".to_vec());
    repo.delegated.insert("a/role".into(), role);
    repo.publish();
    let (client, r) = loaded(&repo);
    assert_eq!(read_all(&r, "d.txt").unwrap(), b"delegated");
    assert_eq!(
        trusted_files(&client),
        [
            "a%2Frole.json",
            "root-history",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    assert_eq!(
        client.trusted("a%2Frole.json").unwrap(),
        repo.read_metadata("a/role.json")
    );
}

#[test]
fn unchanged_timestamp_means_no_snapshot_or_targets_download() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    client.load(&repo).unwrap();
    assert_eq!(
        client.transport.requests(),
        ["2.root.json", "timestamp.json"],
        "second load re-downloaded metadata although the timestamp did not change"
    );
}

#[test]
fn newest_root_is_read_back_from_the_trusted_directory() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_eq!(client.load(&repo).unwrap().root_version(), 2);
    // Second load starts from root 2: it asks for 3.root.json, never for 2.root.json.
    client.load(&repo).unwrap();
    assert_eq!(client.transport.requests()[0], "3.root.json");
}

// ---------------------------------------------------------------------------------------------
// Rollback attacks
// ---------------------------------------------------------------------------------------------

#[test]
fn timestamp_rollback_is_refused() {
    for kind in KINDS {
        let mut repo = simple_repo(kind);
        repo.bump();
        repo.publish();
        let client = Client::new(&repo, 1);
        client.load(&repo).unwrap();
        repo.timestamp_version = 1;
        repo.publish();
        let e = load_err(&client, &repo);
        assert!(
            matches!(
                &e,
                Error::Rollback {
                    role: Role::Timestamp,
                    trusted: 2,
                    new: 1,
                    ..
                }
            ),
            "{}: {e}",
            label(kind)
        );
        assert_eq!(client.trusted_version("timestamp.json"), Some(2));
    }
}

#[test]
fn snapshot_version_rollback_in_timestamp_is_refused() {
    let mut repo = simple_repo(KeyKind::EcdsaP256);
    repo.bump();
    repo.publish();
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    // A newer timestamp pointing at an older snapshot.
    repo.timestamp_version = 3;
    repo.snapshot_version = 1;
    repo.publish();
    assert_refused!(
        &client,
        &repo,
        Error::Rollback {
            role: Role::Snapshot,
            trusted: 2,
            new: 1,
            ..
        }
    );
}

#[test]
fn targets_rollback_in_snapshot_is_refused() {
    let mut repo = simple_repo(KeyKind::Rsa);
    repo.bump();
    repo.publish();
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    repo.timestamp_version = 3;
    repo.snapshot_version = 3;
    repo.targets.version = 1;
    repo.publish();
    assert_refused!(
        &client,
        &repo,
        Error::Rollback {
            role: Role::Targets,
            trusted: 2,
            new: 1,
            ..
        }
    );
}

#[test]
fn role_vanishing_from_snapshot_is_refused() {
    let (mut repo, k) = delegating_repo();
    repo.targets
        .delegations
        .push(Delegation::new("role1", &k, &["*"]));
    repo.delegated
        .insert("role1".into(), TargetsRole::default());
    repo.publish();
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    repo.bump();
    repo.targets.delegations.clear();
    repo.delegated.clear();
    repo.publish();
    assert_refused!(
        &client,
        &repo,
        Error::RoleVanished { file, version: 2 } if file == "role1.json"
    );
}

#[test]
fn root_rollback_is_refused() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 2);
    client.load(&repo).unwrap();
    // 3.root.json holds a (validly signed) version 1.
    let mut old = repo.root_signed();
    old["version"] = 1.into();
    let keys = repo.roles["root"].keys.clone();
    repo.write_metadata("3.root.json", &sign_envelope(&old, &keys));
    assert_refused!(
        &client,
        &repo,
        Error::Rollback {
            role: Role::Root,
            trusted: 2,
            new: 1,
            ..
        }
    );
}

#[test]
fn root_file_with_a_skipped_version_is_refused() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let mut next = repo.root_signed();
    next["version"] = 3.into();
    let keys = repo.roles["root"].keys.clone();
    repo.write_metadata("2.root.json", &sign_envelope(&next, &keys));
    repo.root_version = 1;
    assert_refused!(
        &client,
        &repo,
        Error::VersionMismatch {
            role: Role::Root,
            found: 3,
            expected: 2,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Freeze attacks
// ---------------------------------------------------------------------------------------------

/// A published repository with one target whose `role` ("root", "timestamp", "snapshot" or
/// "targets") expired long ago.
fn repo_with_expired(role: &str) -> TestRepo {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    match role {
        "root" => repo.root_expires = long_ago(),
        "timestamp" => repo.timestamp_expires = long_ago(),
        "snapshot" => repo.snapshot_expires = long_ago(),
        _ => repo.targets.expires = long_ago(),
    }
    repo.publish();
    repo
}

/// A client that loaded `repo` as of a day before `long_ago()`, when nothing had expired: its
/// trusted directory holds what was accepted back then.
fn client_trusting_before_expiry(repo: &TestRepo) -> Client {
    let client = Client::new(repo, 1);
    let mut opts = client.options(repo);
    opts.reference_time = Some(long_ago() - chrono::Duration::days(1));
    Repository::load(opts, client.transport.clone()).unwrap();
    client
}

#[test]
fn expired_roles_are_refused() {
    for role in ["root", "timestamp", "snapshot", "targets"] {
        let repo = repo_with_expired(role);
        let client = Client::new(&repo, 1);
        let e = load_err(&client, &repo);
        assert!(
            matches!(&e, Error::Expired { role: r, .. } if *r == Role::from_name(role)),
            "{role}: {e}"
        );
        if role != "root" {
            assert!(
                client.trusted(&format!("{role}.json")).is_none(),
                "expired {role} was persisted"
            );
        }
    }
}

#[test]
fn expiry_is_checked_against_the_fixed_start_time() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let mut opts = client.options(&repo);
    // Everything expires on 2100-01-01; an update "starting" after that must fail.
    opts.reference_time = Some(far_future() + chrono::Duration::seconds(1));
    let e = Repository::load(opts, client.transport.clone()).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
}

#[test]
fn an_expired_local_timestamp_does_not_block_an_update() {
    let mut repo = repo_with_expired("timestamp");
    // Seed the trusted directory with the expired timestamp as if accepted back then.
    let client = client_trusting_before_expiry(&repo);
    assert_eq!(client.trusted_version("timestamp.json"), Some(1));
    // Now the repository publishes a fresh timestamp: the update works.
    repo.timestamp_expires = far_future();
    repo.bump();
    repo.publish();
    client.load(&repo).unwrap();
    assert_eq!(client.trusted_version("timestamp.json"), Some(2));
}

#[test]
fn an_expired_local_snapshot_is_downloaded_again() {
    let repo = repo_with_expired("snapshot");
    let client = client_trusting_before_expiry(&repo);
    // Same timestamp version, still expired snapshot on the server: must fail (freeze).
    assert_refused!(
        &client,
        &repo,
        Error::Expired {
            role: Role::Snapshot,
            ..
        }
    );
}

#[test]
fn same_version_timestamp_when_trusted_one_expired_is_a_freeze() {
    let repo = repo_with_expired("timestamp");
    let client = client_trusting_before_expiry(&repo);
    assert_refused!(
        &client,
        &repo,
        Error::Expired {
            role: Role::Timestamp,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Mix-and-match
// ---------------------------------------------------------------------------------------------

#[test]
fn snapshot_hash_mismatch_against_timestamp_is_refused() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    // A snapshot with the listed version but other content (validly signed).
    let listed = repo.read_metadata("timestamp.json");
    repo.snapshot_expires = far_future() - chrono::Duration::days(1);
    repo.publish();
    repo.write_metadata("timestamp.json", &listed);
    assert_refused!(
        &client,
        &repo,
        Error::HashMismatch { what, .. } | Error::LengthMismatch { what, .. } if what == "snapshot"
    );
}

#[test]
fn snapshot_version_mismatch_against_timestamp_is_refused() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.timestamp_lists_hashes = false;
    repo.publish();
    let client = Client::new(&repo, 1);
    let old_snapshot = repo.read_metadata("snapshot.json");
    repo.bump();
    repo.publish();
    repo.write_metadata("snapshot.json", &old_snapshot);
    assert_refused!(
        &client,
        &repo,
        Error::VersionMismatch {
            role: Role::Snapshot,
            found: 1,
            expected: 2,
            ..
        }
    );
}

#[test]
fn targets_version_mismatch_against_snapshot_is_refused() {
    let mut repo = simple_repo(KeyKind::EcdsaP256);
    let client = Client::new(&repo, 1);
    let old_targets = repo.read_metadata("targets.json");
    repo.bump();
    repo.publish();
    repo.write_metadata("targets.json", &old_targets);
    assert_refused!(
        &client,
        &repo,
        Error::VersionMismatch {
            role: Role::Targets,
            found: 1,
            expected: 2,
            ..
        }
    );
}

#[test]
fn targets_hash_mismatch_against_snapshot_is_refused() {
    let mut repo = TestRepo::new(KeyKind::Rsa);
    repo.snapshot_lists_hashes = true;
    repo.add_target("file.txt", b"x");
    repo.publish();
    let listed_snapshot = repo.read_metadata("snapshot.json");
    let listed_timestamp = repo.read_metadata("timestamp.json");
    // Same targets version, other content of the same length.
    repo.add_target("file.txt", b"y");
    repo.publish();
    repo.write_metadata("snapshot.json", &listed_snapshot);
    repo.write_metadata("timestamp.json", &listed_timestamp);
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::HashMismatch { what, .. } | Error::LengthMismatch { what, .. } if what == "targets"
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures and thresholds
// ---------------------------------------------------------------------------------------------

#[test]
fn threshold_not_met_is_refused_for_each_role() {
    for kind in KINDS {
        for role in ["timestamp", "snapshot", "targets"] {
            let mut repo = TestRepo::new(kind);
            repo.add_target("file.txt", b"x");
            let extra = TestKey::get(kind, 3 + usize::from(role == "targets"));
            let setup = repo.role(role);
            setup.keys.push(extra);
            setup.threshold = 2;
            setup.signers = Some(vec![setup.keys[0].clone()]);
            repo.publish();
            let client = Client::new(&repo, 1);
            let e = load_err(&client, &repo);
            assert!(
                matches!(&e, Error::Threshold { role: r, valid: 1, threshold: 2, .. } if *r == Role::from_name(role)),
                "{} {role}: {e}",
                label(kind)
            );
        }
    }
}

#[test]
fn signature_by_an_unlisted_key_does_not_count() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    repo.role("targets").signers = Some(vec![TestKey::get(KeyKind::EcdsaP256, 0)]);
    repo.publish();
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::Threshold {
            role: Role::Targets,
            valid: 0,
            ..
        }
    );
}

#[test]
fn modified_signed_content_breaks_the_signature() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let ts = String::from_utf8(repo.read_metadata("timestamp.json")).unwrap();
    let tampered = ts.replace("\"version\": 1", "\"version\": 7");
    assert_ne!(ts, tampered);
    repo.write_metadata("timestamp.json", tampered.as_bytes());
    assert_refused!(
        &client,
        &repo,
        Error::Threshold {
            role: Role::Timestamp,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Root rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn root_rotation_threshold_up_and_down() {
    for kind in KINDS {
        let mut repo = simple_repo(kind);
        // v2: two new keys, threshold 2 (signed by the old key and both new ones).
        let (a, b) = (TestKey::get(kind, 1), TestKey::get(kind, 2));
        let root = repo.role("root");
        root.keys = vec![a.clone(), b.clone()];
        root.threshold = 2;
        repo.root_version = 2;
        repo.publish_root();
        // v3: back to one key, threshold 1 (signed by a and b, and the new key).
        let c = TestKey::get(kind, 3);
        let root = repo.role("root");
        root.keys = vec![c];
        root.threshold = 1;
        repo.root_version = 3;
        repo.publish_root();
        let client = Client::new(&repo, 1);
        let r = client
            .load(&repo)
            .unwrap_or_else(|e| panic!("{}: {e}", label(kind)));
        assert_eq!(r.root_version(), 3);
        assert_eq!(client.trusted("root.json").unwrap(), repo.root_bytes(3));
    }
}

#[test]
fn root_rotation_missing_old_signatures_is_refused() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let new = TestKey::get(KeyKind::Ed25519, 4);
    let root = repo.role("root");
    root.keys = vec![new.clone()];
    root.signers = Some(vec![new]);
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::Threshold {
            role: Role::Root,
            version: 2,
            signer: Signer::Root { version: 1 },
            ..
        }
    );
    assert_eq!(client.trusted_version("root.json"), Some(1));
}

#[test]
fn root_rotation_missing_new_signatures_is_refused() {
    let mut repo = simple_repo(KeyKind::EcdsaP256);
    let old = repo.roles["root"].keys[0].clone();
    let (a, b) = (
        TestKey::get(KeyKind::EcdsaP256, 4),
        TestKey::get(KeyKind::EcdsaP256, 3),
    );
    let root = repo.role("root");
    root.keys = vec![a.clone(), b];
    root.threshold = 2;
    // Old key and only one of the two new keys.
    root.signers = Some(vec![old, a]);
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::Threshold {
            role: Role::Root,
            signer: Signer::Root { version: 2 },
            valid: 1,
            threshold: 2,
            ..
        }
    );
}

#[test]
fn root_rotations_are_capped() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    for v in 2..=5 {
        repo.root_version = v;
        repo.publish_root();
    }
    let client = Client::new(&repo, 1);
    let mut opts = client.options(&repo);
    opts.limits.max_root_rotations = 2;
    let r = Repository::load(opts, client.transport.clone()).unwrap();
    assert_eq!(r.root_version(), 3);
    assert!(
        !client
            .transport
            .requests()
            .contains(&"4.root.json".to_owned())
    );
}

#[test]
fn intermediate_expired_root_is_fine_but_final_expired_root_is_not() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.root_expires = long_ago();
    repo.root_version = 2;
    repo.publish_root();
    repo.root_expires = far_future();
    repo.root_version = 3;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_eq!(client.load(&repo).unwrap().root_version(), 3);

    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.root_expires = long_ago();
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::Expired {
            role: Role::Root,
            version: 2,
            ..
        }
    );
    // The new root was still persisted (5.3.8 comes before 5.3.10).
    assert_eq!(client.trusted_version("root.json"), Some(2));
}

#[test]
fn fast_forward_attack_recovery_after_timestamp_key_rotation() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    // An attacker with the timestamp key pushes the version far ahead.
    repo.timestamp_version = 1000;
    repo.publish();
    client.load(&repo).unwrap();
    // The repository rotates the timestamp keys and starts over at a normal version. The
    // old key stays listed (so the fast-forwarded timestamp still verifies under the new
    // root): only the rotation rule (5.3.11) makes the client forget it.
    let new_key = TestKey::get(KeyKind::Ed25519, 4);
    repo.role("timestamp").keys.push(new_key.clone());
    repo.role("timestamp").signers = Some(vec![new_key]);
    repo.root_version = 2;
    repo.publish_root();
    repo.timestamp_version = 2;
    repo.publish();
    let r = client.load(&repo).unwrap();
    assert_eq!(r.timestamp_version(), 2);
}

#[test]
fn without_key_rotation_the_fast_forwarded_timestamp_stays_trusted() {
    // Control for the test above: same story without rotating the key is a rollback.
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    repo.timestamp_version = 1000;
    repo.publish();
    client.load(&repo).unwrap();
    repo.root_version = 2;
    repo.publish_root();
    repo.timestamp_version = 2;
    repo.publish();
    let e = load_err(&client, &repo);
    assert!(matches!(e, Error::Rollback { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Timestamp with the same version
// ---------------------------------------------------------------------------------------------

#[test]
fn same_version_timestamp_with_new_content_is_ignored() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    let trusted_ts = client.trusted("timestamp.json").unwrap();
    // New snapshot and targets, but the timestamp keeps version 1.
    repo.snapshot_version = 2;
    repo.targets.version = 2;
    repo.add_target("new.txt", b"new");
    repo.publish();
    assert_ne!(repo.read_metadata("timestamp.json"), trusted_ts);
    let r = client.load(&repo).unwrap();
    assert_eq!(r.snapshot_version(), 1);
    assert!(r.target("new.txt").unwrap().is_none());
    assert_eq!(client.trusted("timestamp.json").unwrap(), trusted_ts);
}

// ---------------------------------------------------------------------------------------------
// Delegations
// ---------------------------------------------------------------------------------------------

fn delegated(targets: &[(&str, &[u8])], delegations: Vec<Delegation>) -> TargetsRole {
    let mut role = TargetsRole::default();
    for (n, c) in targets {
        role.targets.insert((*n).to_owned(), c.to_vec());
    }
    role.delegations = delegations;
    role
}

/// targets -> A (-> C), B; `t.txt` is in C and in B, `b.txt` only in B.
fn delegation_tree(c_terminating: bool) -> TestRepo {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![
        Delegation::new("A", &k, &["*.txt"]),
        Delegation::new("B", &k, &["*.txt"]),
    ];
    let mut c = Delegation::new("C", &k, &["*.txt"]);
    c.terminating = c_terminating;
    repo.delegated.insert("A".into(), delegated(&[], vec![c]));
    repo.delegated.insert(
        "B".into(),
        delegated(&[("t.txt", b"from B"), ("b.txt", b"B")], vec![]),
    );
    repo.delegated
        .insert("C".into(), delegated(&[("t.txt", b"from C")], vec![]));
    repo.publish();
    repo
}

#[test]
fn delegations_are_searched_depth_first_in_order_lazily() {
    let repo = delegation_tree(false);
    let (client, r) = loaded(&repo);
    client.transport.clear();
    assert_eq!(read_all(&r, "t.txt").unwrap(), b"from C");
    assert_eq!(client.transport.requests(), ["A.json", "C.json", "t.txt"]);
    client.transport.clear();
    assert_eq!(read_all(&r, "b.txt").unwrap(), b"B");
    assert_eq!(client.transport.requests(), ["B.json", "b.txt"]);
}

#[test]
fn terminating_delegation_stops_the_whole_search() {
    // C (under A) is terminating: once the search enters C, B (a sibling of A, still pending)
    // must not be searched.
    let repo = delegation_tree(true);
    let (client, r) = loaded(&repo);
    client.transport.clear();
    assert!(r.target("b.txt").unwrap().is_none());
    assert_eq!(client.transport.requests(), ["A.json", "C.json"]);
    assert!(matches!(
        r.read_target("b.txt"),
        Err(Error::TargetNotFound(_))
    ));
}

#[test]
fn terminating_delegation_skips_later_siblings() {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![
        Delegation::new("first", &k, &["*"]).terminating(),
        Delegation::new("second", &k, &["*"]),
    ];
    repo.delegated
        .insert("first".into(), delegated(&[], vec![]));
    repo.delegated
        .insert("second".into(), delegated(&[("x", b"x")], vec![]));
    repo.publish();
    let (client, r) = loaded(&repo);
    assert!(r.target("x").unwrap().is_none());
    assert!(
        !client
            .transport
            .requests()
            .contains(&"second.json".to_owned())
    );
}

#[test]
fn delegation_cycles_are_cut() {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![Delegation::new("A", &k, &["*"])];
    repo.delegated.insert(
        "A".into(),
        delegated(&[], vec![Delegation::new("B", &k, &["*"])]),
    );
    repo.delegated.insert(
        "B".into(),
        delegated(&[], vec![Delegation::new("A", &k, &["*"])]),
    );
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert!(r.target("missing").unwrap().is_none());
}

#[test]
fn delegation_search_is_capped() {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![Delegation::new("r0", &k, &["*"])];
    for i in 0..5 {
        let next = format!("r{}", i + 1);
        repo.delegated.insert(
            format!("r{i}"),
            delegated(&[], vec![Delegation::new(&next, &k, &["*"])]),
        );
    }
    repo.delegated
        .insert("r5".into(), delegated(&[("deep", b"d")], vec![]));
    repo.publish();
    let client = Client::new(&repo, 1);
    let mut opts = client.options(&repo);
    opts.limits.max_delegations = 4;
    let r = Repository::load(opts, client.transport.clone()).unwrap();
    assert!(r.target("deep").unwrap().is_none());
    let r = client.load(&repo).unwrap();
    assert!(r.target("deep").unwrap().is_some());
}

#[test]
fn path_patterns_star_does_not_cross_slash() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    // Two roles list different files under one name: hash-prefixed file names keep both.
    repo.consistent_snapshot = true;
    let k = TestKey::get(KeyKind::Ed25519, 4);
    repo.targets.delegations = vec![
        Delegation::new("flat", &k, &["*"]),
        Delegation::new("dirs", &k, &["images/*"]),
    ];
    repo.delegated.insert(
        "flat".into(),
        delegated(&[("images/root.img", b"wrong"), ("top", b"t")], vec![]),
    );
    repo.delegated.insert(
        "dirs".into(),
        delegated(
            &[("images/root.img", b"right"), ("images/a/b.img", b"no")],
            vec![],
        ),
    );
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert_eq!(read_all(&r, "images/root.img").unwrap(), b"right");
    assert_eq!(read_all(&r, "top").unwrap(), b"t");
    assert!(r.target("images/a/b.img").unwrap().is_none());
}

#[test]
fn path_hash_prefixes_select_roles() {
    use sha2::Digest;
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.consistent_snapshot = true;
    let k = TestKey::get(KeyKind::Ed25519, 4);
    let name = "bin/tool";
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let mut wrong = Delegation::new("wrong", &k, &[]);
    wrong.paths = None;
    wrong.path_hash_prefixes = Some(vec![if digest.starts_with('0') { "1" } else { "0" }.into()]);
    let mut right = Delegation::new("right", &k, &[]);
    right.paths = None;
    right.path_hash_prefixes = Some(vec![digest[..2].to_owned()]);
    repo.targets.delegations = vec![wrong, right];
    repo.delegated
        .insert("wrong".into(), delegated(&[(name, b"wrong")], vec![]));
    repo.delegated
        .insert("right".into(), delegated(&[(name, b"right")], vec![]));
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert_eq!(read_all(&r, name).unwrap(), b"right");
}

#[test]
fn delegated_role_signed_by_the_wrong_key_is_refused() {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![Delegation::new("A", &k, &["*"])];
    let mut a = delegated(&[("x", b"x")], vec![]);
    a.signers = Some(vec![TestKey::get(KeyKind::Ed25519, 0)]);
    repo.delegated.insert("A".into(), a);
    repo.publish();
    let (_client, r) = loaded(&repo);
    let e = r.target("x").unwrap_err();
    assert!(
        matches!(&e, Error::Threshold { role: Role::Delegated(name), .. } if name == "A"),
        "{e}"
    );
}

#[test]
fn delegated_role_rollback_is_refused() {
    let (mut repo, k) = delegating_repo();
    repo.targets.delegations = vec![Delegation::new("A", &k, &["*"])];
    let mut a = delegated(&[("x", b"x")], vec![]);
    a.version = 2;
    repo.delegated.insert("A".into(), a);
    repo.publish();
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap().target("x").unwrap().unwrap();
    repo.bump();
    repo.delegated.get_mut("A").unwrap().version = 1;
    repo.publish();
    assert_refused!(
        &client,
        &repo,
        Error::Rollback { role: Role::Delegated(name), trusted: 2, new: 1, .. } if name == "A"
    );
}

// ---------------------------------------------------------------------------------------------
// Consistent snapshots, sub-directories, hashes
// ---------------------------------------------------------------------------------------------

#[test]
fn consistent_snapshot_uses_versioned_metadata_and_hash_prefixed_targets_in_subdirectories() {
    for kind in KINDS {
        let mut repo = TestRepo::new(kind);
        repo.consistent_snapshot = true;
        repo.add_target("images/v1/root.img", b"root image");
        repo.publish();
        // Only the hash-prefixed copy may be used.
        std::fs::remove_file(repo.targets_dir().join("images/v1/root.img")).unwrap();
        let (client, r) = loaded(&repo);
        assert_eq!(
            client.transport.requests(),
            [
                "2.root.json",
                "timestamp.json",
                "1.snapshot.json",
                "1.targets.json"
            ]
        );
        client.transport.clear();
        assert_eq!(read_all(&r, "images/v1/root.img").unwrap(), b"root image");
        let requested = client.transport.requests();
        let desc = r.target("images/v1/root.img").unwrap().unwrap();
        assert_eq!(
            requested,
            [format!("{}.root.img", desc.hashes["sha256"])],
            "{}",
            label(kind)
        );
    }
}

#[test]
fn sha512_only_targets_are_verified() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.target_hashes = vec!["sha512"];
    repo.add_target("file.txt", b"sha512 only");
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert!(r.target("file.txt").unwrap().unwrap().sha256().is_none());
    assert_eq!(read_all(&r, "file.txt").unwrap(), b"sha512 only");
    // Same length, other content: the sha512 check catches it.
    std::fs::write(repo.targets_dir().join("file.txt"), b"SHA512 only").unwrap();
    let e = read_all(&r, "file.txt").unwrap_err();
    assert!(
        matches!(&e, Error::HashMismatch { algorithm, .. } if algorithm == "sha512"),
        "{e}"
    );
}

#[test]
fn target_with_wrong_content_fails_verification() {
    for kind in KINDS {
        let repo = simple_repo(kind);
        let (_client, r) = loaded(&repo);
        std::fs::write(repo.targets_dir().join("file.txt"), b"HELLO, world\n").unwrap();
        let mut reader = r.read_target("file.txt").unwrap();
        let mut sink = Vec::new();
        let copy = std::io::copy(&mut reader, &mut sink);
        assert_eq!(
            copy.unwrap_err().kind(),
            std::io::ErrorKind::InvalidData,
            "the last read must fail so io::copy never completes"
        );
        let e = reader.finish().unwrap_err();
        assert!(
            matches!(&e, Error::HashMismatch { algorithm, .. } if algorithm == "sha256"),
            "{e}"
        );
    }
}

#[test]
fn target_reader_enforces_the_signed_length() {
    let repo = simple_repo(KeyKind::Ed25519);
    let (_client, r) = loaded(&repo);
    // Longer on the server: the reader stops at the signed length, which verifies.
    std::fs::write(repo.targets_dir().join("file.txt"), b"hello, world\nEXTRA").unwrap();
    assert_eq!(read_all(&r, "file.txt").unwrap(), b"hello, world\n");
    // Shorter: the stream ends early; finish() says it is not verified.
    std::fs::write(repo.targets_dir().join("file.txt"), b"hello").unwrap();
    let mut reader = r.read_target("file.txt").unwrap();
    let mut sink = Vec::new();
    let err = std::io::copy(&mut reader, &mut sink).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    let e = reader.finish().unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                expected: 13,
                actual: 5,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn finish_tells_verified_from_stopped() {
    let repo = simple_repo(KeyKind::Ed25519);
    let (_client, r) = loaded(&repo);
    let mut reader = r.read_target("file.txt").unwrap();
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut reader, &mut buf).unwrap();
    assert!(
        reader.finish().is_err(),
        "a partly read target reported verified"
    );
}

#[test]
fn fetch_target_unverified_is_capped_at_the_signed_length() {
    let repo = simple_repo(KeyKind::Ed25519);
    let (_client, r) = loaded(&repo);
    std::fs::write(
        repo.targets_dir().join("file.txt"),
        b"hello, world\nEXTRA BYTES",
    )
    .unwrap();
    let (desc, mut stream) = r.fetch_target_unverified("file.txt").unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut out).unwrap();
    assert_eq!(desc.length, 13);
    assert_eq!(out, b"hello, world\n");
    assert_eq!(desc.sha256().unwrap().as_slice(), sha256(b"hello, world\n"));
}

/// From an offset on, the stream is the rest of the signed length; an offset past it is refused
/// before anything is asked for.
#[test]
fn fetch_target_unverified_from_is_the_rest_of_the_signed_length() {
    let repo = simple_repo(KeyKind::Ed25519);
    let (client, r) = loaded(&repo);
    std::fs::write(
        repo.targets_dir().join("file.txt"),
        b"hello, world\nEXTRA BYTES",
    )
    .unwrap();
    let rest = |from: u64| {
        let (desc, mut stream) = r.fetch_target_unverified_from("file.txt", from)?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut out).unwrap();
        assert_eq!(desc.length, 13);
        Ok::<_, tuf::Error>(out)
    };
    assert_eq!(rest(7).unwrap(), b"world\n");
    assert_eq!(rest(0).unwrap(), b"hello, world\n");
    assert_eq!(rest(13).unwrap(), b"");
    client.transport.clear();
    assert!(matches!(rest(14), Err(tuf::Error::LengthMismatch { .. })));
    assert!(client.transport.requests().is_empty());
}

fn sha256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

#[test]
fn target_cache_skips_a_download_when_hashes_match() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.add_target("dir/file two.txt", b"second");
    repo.bump();
    repo.publish();
    let (client, r) = loaded(&repo);
    let tdir = tempfile::tempdir().unwrap();
    let first = r.cache_target("dir/file two.txt", tdir.path()).unwrap();
    assert!(first.downloaded);
    assert_eq!(std::fs::read(&first.path).unwrap(), b"second");
    client.transport.clear();
    let second = r.cache_target("dir/file two.txt", tdir.path()).unwrap();
    assert!(!second.downloaded);
    assert!(client.transport.requests().is_empty());
    // A corrupted cached copy is replaced.
    std::fs::write(&first.path, b"SECOND").unwrap();
    assert!(
        r.cache_target("dir/file two.txt", tdir.path())
            .unwrap()
            .downloaded
    );
    assert_eq!(std::fs::read(&first.path).unwrap(), b"second");
    // A failing download leaves nothing partial behind.
    std::fs::write(repo.targets_dir().join("file.txt"), b"tampered....\n").unwrap();
    assert!(r.cache_target("file.txt", tdir.path()).is_err());
    let names: Vec<_> = std::fs::read_dir(tdir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["dir%2Ffile%20two.txt"]);
}

#[test]
fn unsafe_target_names_are_refused() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("../escape", b"x");
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert!(matches!(
        r.read_target("../escape"),
        Err(Error::BadTargetName(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Size caps, unknown fields
// ---------------------------------------------------------------------------------------------

#[test]
fn oversized_metadata_is_refused() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let mut opts = client.options(&repo);
    opts.limits.max_timestamp_size = 100;
    let e = Repository::load(opts, client.transport.clone()).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::TooLarge {
                role: Role::Timestamp,
                limit: 100
            }
        ),
        "{e}"
    );

    // A new root padded beyond the default 512 KiB root limit (validly signed).
    let mut repo = simple_repo(KeyKind::Ed25519);
    repo.tamper = Some(Box::new(|role, signed| {
        if role == "root" {
            signed["padding"] = "x".repeat(600 * 1024).into();
        }
    }));
    repo.root_version = 2;
    repo.publish_root();
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::TooLarge {
            role: Role::Root,
            ..
        }
    );
}

#[test]
fn unknown_fields_and_key_types_are_tolerated() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.add_target("file.txt", b"x");
    repo.tamper = Some(Box::new(|role, signed| {
        signed["x-unknown-field"] = serde_json::json!({"any": [1, 2]});
        if role == "root" {
            signed["keys"]["deadbeef"] = serde_json::json!({
                "keytype": "sphincs", "scheme": "sphincs-shake", "keyval": {"public": "00"}
            });
        }
    }));
    repo.publish();
    let (_client, r) = loaded(&repo);
    assert_eq!(read_all(&r, "file.txt").unwrap(), b"x");
}

// ---------------------------------------------------------------------------------------------
// Offline verification
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_cache_verifies_with_expiry_ignored() {
    let (mut repo, k) = delegating_repo();
    repo.add_target("file.txt", b"x");
    repo.targets.delegations = vec![Delegation::new("A", &k, &["a/*"])];
    repo.delegated
        .insert("A".into(), delegated(&[("a/m.lz4", b"migration")], vec![]));
    repo.timestamp_expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    repo.publish();
    repo.root_version = 2;
    repo.publish_root();
    let (client, r) = loaded(&repo);
    r.target("a/m.lz4").unwrap().unwrap();
    let files = r.metadata_bytes();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "1.root.json",
            "2.root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
            "A.json"
        ]
    );
    let cache = tempfile::tempdir().unwrap();
    for f in &files {
        std::fs::write(cache.path().join(&f.name), &f.bytes).unwrap();
    }
    let shipped = client.dir.path().join("shipped-root.json");
    // Let the timestamp expire: offline verification ignores expiry.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let offline = Repository::load_offline(cache.path(), &shipped).unwrap();
    assert_eq!(offline.root_version(), 2);
    let desc = offline.target("a/m.lz4").unwrap().unwrap();
    let target_file = cache.path().join("m.lz4");
    std::fs::write(&target_file, b"migration").unwrap();
    offline.verify_target_file("a/m.lz4", &target_file).unwrap();
    assert_eq!(desc.length, 9);
    std::fs::write(&target_file, b"MIGRATION").unwrap();
    assert!(offline.verify_target_file("a/m.lz4", &target_file).is_err());
    // Tampered cache: refused.
    std::fs::write(cache.path().join("A.json"), b"{}").unwrap();
    let offline = Repository::load_offline(cache.path(), &shipped).unwrap();
    assert!(offline.target("a/m.lz4").is_err());
    std::fs::remove_file(cache.path().join("2.root.json")).unwrap();
    // Without root 2 the chain stops at 1 whose keys still sign everything here; now break
    // the snapshot instead.
    let mut snap = std::fs::read(cache.path().join("snapshot.json")).unwrap();
    let n = snap.len();
    snap[n - 3] ^= 1;
    std::fs::write(cache.path().join("snapshot.json"), &snap).unwrap();
    assert!(Repository::load_offline(cache.path(), &shipped).is_err());
}

#[test]
fn shipped_root_must_be_self_signed() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.role("root").signers = Some(vec![TestKey::get(KeyKind::Ed25519, 4)]);
    repo.publish();
    let client = Client::new(&repo, 1);
    let e = load_err(&client, &repo);
    let shipped = client.dir.path().join("shipped-root.json");
    assert!(
        matches!(&e, Error::BadTrustedRoot { path, source }
            if *path == shipped
                && matches!(&**source, Error::Threshold { role: Role::Root, version: 1, .. })),
        "{e}"
    );
    let _ = Arc::new(());
}

#[test]
fn a_trusted_root_that_does_not_parse_is_named() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let shipped = client.dir.path().join("shipped-root.json");
    let named = |e: &Error, file: &std::path::Path| {
        assert!(
            matches!(e, Error::BadTrustedRoot { path, source }
                if path == file && matches!(&**source, Error::Parse { role: Role::Root, .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    };

    // The shipped root, before any root was stored.
    std::fs::write(&shipped, b"{not json").unwrap();
    named(&load_err(&client, &repo), &shipped);

    // Seeded from a good shipped root; then the stored root.json is damaged.
    repo.write_root(1, &shipped);
    client.load(&repo).unwrap();
    let stored = client.datastore().join("root.json");
    std::fs::write(&stored, b"").unwrap();
    named(&load_err(&client, &repo), &stored);

    // Offline, from a shipped root that does not parse.
    std::fs::write(&shipped, b"[1, 2").unwrap();
    let e = Repository::load_offline(client.datastore(), &shipped).unwrap_err();
    named(&e, &shipped);
}

#[test]
fn once_a_root_is_stored_the_shipped_root_only_seeds_it() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    let shipped = client.dir.path().join("shipped-root.json");
    client.load(&repo).unwrap();
    // Missing, then unreadable as a root: neither matters while a verified root is stored.
    std::fs::remove_file(&shipped).unwrap();
    assert_eq!(client.load(&repo).unwrap().root_version(), 1);
    std::fs::write(&shipped, b"{not json").unwrap();
    assert_eq!(client.load(&repo).unwrap().root_version(), 1);
    // Without the stored root, the missing shipped root is an error again.
    std::fs::remove_file(&shipped).unwrap();
    std::fs::remove_file(client.datastore().join("root.json")).unwrap();
    assert!(
        matches!(load_err(&client, &repo), Error::NoTrustedRoot { path, .. } if path == shipped)
    );
}

#[test]
fn reads_a_repository_written_by_tough_editor() {
    let mut repo = TestRepo::new(KeyKind::Rsa);
    repo.publish_root();
    fixtures::repo::publish_with_tough_editor(&repo, &[("os.img.lz4", b"image bytes")]);
    let (client, r) = loaded(&repo);
    assert_eq!(read_all(&r, "os.img.lz4").unwrap(), b"image bytes");
    assert_eq!(
        client.trusted("targets.json").unwrap(),
        repo.read_metadata("targets.json")
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_or_garbled_metadata_is_an_error_not_a_panic() {
    let repo = simple_repo(KeyKind::Ed25519);
    let good_ts = repo.read_metadata("timestamp.json");
    let client = Client::new(&repo, 1);
    let mut cases: Vec<Vec<u8>> = (0..good_ts.len())
        .step_by(7)
        .map(|n| good_ts[..n].to_vec())
        .collect();
    cases.push(b"[".repeat(10_000));
    cases.push(
        br#"{"signed": {"_type": "timestamp", "version": 18446744073709551616}, "signatures": []}"#
            .to_vec(),
    );
    cases.push(br#"{"signed": {"_type": "timestamp", "version": 1.5}, "signatures": []}"#.to_vec());
    cases.push(br#"{"signed": {"_type": "timestamp", "version": 0, "expires": "2100-01-01T00:00:00Z", "meta": {}}, "signatures": []}"#.to_vec());
    cases.push(vec![0xff, 0xfe, 0x00]);
    for (i, bytes) in cases.iter().enumerate() {
        repo.write_metadata("timestamp.json", bytes);
        assert!(client.load(&repo).is_err(), "case {i} was accepted");
    }
    repo.write_metadata("timestamp.json", &good_ts);
    client.load(&repo).unwrap();
}

#[test]
fn one_key_listed_under_two_key_ids_counts_once() {
    let mut repo = TestRepo::new(KeyKind::EcdsaP256);
    repo.add_target("file.txt", b"x");
    repo.timestamp_lists_hashes = false;
    let snapshot_key = repo.roles["snapshot"].keys[0].clone();
    let public = snapshot_key.public_json().clone();
    repo.tamper = Some(Box::new(move |role, signed| {
        if role == "root" {
            signed["keys"]["alias"] = public.clone();
            let ids = signed["roles"]["snapshot"]["keyids"]
                .as_array_mut()
                .unwrap();
            ids.push("alias".into());
            signed["roles"]["snapshot"]["threshold"] = 2.into();
        }
    }));
    repo.publish();
    // Give snapshot a second signature entry under the alias id (same key, valid signature).
    let mut snap: serde_json::Value =
        serde_json::from_slice(&repo.read_metadata("snapshot.json")).unwrap();
    let mut alias_sig = snap["signatures"][0].clone();
    alias_sig["keyid"] = "alias".into();
    snap["signatures"].as_array_mut().unwrap().push(alias_sig);
    repo.write_metadata("snapshot.json", &serde_json::to_vec(&snap).unwrap());
    let client = Client::new(&repo, 1);
    assert_refused!(
        &client,
        &repo,
        Error::Threshold {
            role: Role::Snapshot,
            valid: 1,
            threshold: 2,
            ..
        }
    );
}

#[test]
fn a_newer_shipped_root_replaces_the_stored_one() {
    let mut repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
    // Root 2 and 3 are published, and an OS update ships root 3; root 2 then disappears
    // from the server: only the shipped root can bring the client to version 3.
    repo.root_version = 2;
    repo.publish_root();
    repo.root_version = 3;
    repo.publish_root();
    repo.write_root(3, &client.dir.path().join("shipped-root.json"));
    std::fs::remove_file(repo.metadata_dir().join("2.root.json")).unwrap();
    let r = client.load(&repo).unwrap();
    assert_eq!(r.root_version(), 3);
    assert_eq!(client.trusted("root.json").unwrap(), repo.root_bytes(3));
    // An older shipped root never replaces a newer stored one.
    repo.write_root(1, &client.dir.path().join("shipped-root.json"));
    assert_eq!(client.load(&repo).unwrap().root_version(), 3);
}
