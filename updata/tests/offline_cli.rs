//! Offline signing with the real `updata`: a root exported, signed on separate "machines"
//! (directories that hold only the export and their own key), the signature files imported in
//! any order and checked before anything is written, a threshold of 2, and a rotation signed
//! offline by the old root key and the new.

use std::path::Path;
use std::process::{Command, Output};

fn updata(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_updata"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run updata")
}

fn text(out: &Output) -> String {
    fixtures::fs::output_text(out)
}

fn ok(dir: &Path, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = updata(dir, &args);
    assert!(out.status.success(), "updata {line} failed: {}", text(&out));
    text(&out)
}

/// A refused command: exit 1, one line on stderr (returned).
fn refused(dir: &Path, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = updata(dir, &args);
    assert_eq!(out.status.code(), Some(1), "updata {line}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// An offline machine: its own directory with one key, never the repository.
fn machine(name: &str, kind: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &format!("key generate {name}.pem --type {kind}"),
    );
    dir
}

/// Carries a file across the air gap.
fn carry(from: &Path, name: &str, to: &Path) {
    std::fs::copy(from.join(name), to.join(name)).unwrap();
}

/// A publisher's directory whose root lists the public keys of three offline root key holders
/// (threshold 2) and online targets/snapshot/timestamp key files, with a manifest to publish.
fn publisher(holders: &[(&str, &tempfile::TempDir)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for role in ["targets", "snapshot", "timestamp"] {
        ok(d, &format!("key generate keys/{role}.pem"));
    }
    ok(d, "root init root.json");
    for (name, m) in holders {
        carry(m.path(), &format!("{name}.pub.pem"), d);
        ok(
            d,
            &format!("root add-key root.json --role root {name}.pub.pem"),
        );
    }
    ok(d, "root set-threshold root.json --role root 2");
    for role in ["targets", "snapshot", "timestamp"] {
        ok(
            d,
            &format!("root add-key root.json --role {role} keys/{role}.pub.pem"),
        );
    }
    ok(d, "init manifest.json");
    dir
}

const PUBLISH: &str = "publish repo --root root.json --manifest manifest.json \
    -k keys/targets.pem -k keys/snapshot.pem -k keys/timestamp.pem";

/// Each holder signs the export on their machine; the files come back in any order, one at a
/// time; the root is published once two of three have signed, and a host's check accepts it.
#[test]
fn offline_root_signatures_from_several_machines_in_any_order() {
    let (alice, bob, carol) = (
        machine("alice", "ed25519"),
        machine("bob", "ecdsa-p256"),
        machine("carol", "ed25519"),
    );
    let dir = publisher(&[("alice", &alice), ("bob", &bob), ("carol", &carol)]);
    let d = dir.path();
    let out = ok(d, "offline export root.json -o root.unsigned.json");
    assert!(out.contains("sha256"), "{out}");
    // The canonical bytes for a tool that signs bytes: what the signature files name.
    ok(d, "offline export root.json -o root.canonical --canonical");
    let sha = hex_sha256(&std::fs::read(d.join("root.canonical")).unwrap());
    assert!(out.contains(&sha), "{out}");

    for (name, m) in [("bob", &bob), ("carol", &carol), ("alice", &alice)] {
        carry(d, "root.unsigned.json", m.path());
        let out = ok(
            m.path(),
            &format!("offline sign root.unsigned.json -k {name}.pem -o {name}.sig.json"),
        );
        assert!(out.contains(&sha), "{out}");
        carry(m.path(), &format!("{name}.sig.json"), d);
    }
    // Not published before the threshold is met.
    let out = ok(d, "offline import root.json carol.sig.json");
    assert!(out.contains("not complete yet"), "{out}");
    let err = refused(d, PUBLISH);
    assert!(err.contains("1 valid signature(s) of the 2"), "{err}");
    let out = ok(d, "offline import root.json bob.sig.json");
    assert!(out.contains("every threshold is met"), "{out}");
    // Importing again (or a third) is harmless.
    ok(d, "offline import root.json alice.sig.json carol.sig.json");
    ok(d, PUBLISH);
    let out = ok(d, "check repo --root root.json");
    assert!(out.contains("no problems found"), "{out}");
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("repo/metadata/1.root.json")).unwrap())
            .unwrap();
    assert_eq!(root["signatures"].as_array().unwrap().len(), 3);
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A signature of an earlier draft, by a key the root does not list for root, or altered, is
/// refused with one line, and the root file is unchanged, even when good files come with it.
#[test]
fn offline_signatures_are_checked_before_they_are_imported() {
    let (alice, bob) = (machine("alice", "ed25519"), machine("bob", "ecdsa-p256"));
    let dir = publisher(&[("alice", &alice), ("bob", &bob)]);
    let d = dir.path();
    ok(d, "offline export root.json -o draft-1.json");
    carry(d, "draft-1.json", alice.path());
    ok(
        alice.path(),
        "offline sign draft-1.json -k alice.pem -o alice-draft-1.sig.json",
    );
    carry(alice.path(), "alice-draft-1.sig.json", d);
    // The draft changes; the old signature no longer applies.
    ok(d, "root set-expires root.json 2099-01-01T00:00:00Z");
    ok(d, "offline export root.json -o draft-2.json");
    for (name, m) in [("alice", &alice), ("bob", &bob)] {
        carry(d, "draft-2.json", m.path());
        ok(
            m.path(),
            &format!("offline sign draft-2.json -k {name}.pem -o {name}.sig.json"),
        );
        carry(m.path(), &format!("{name}.sig.json"), d);
    }
    // The targets key signing the root.
    ok(
        d,
        "offline sign draft-2.json -k keys/targets.pem -o targets.sig.json",
    );
    // Bob's signature, altered.
    let bob_sig = std::fs::read_to_string(d.join("bob.sig.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&bob_sig).unwrap();
    let sig = v["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    v["sig"] = serde_json::json!(format!("{}{flipped}", &sig[..sig.len() - 1]));
    std::fs::write(d.join("bob-altered.sig.json"), v.to_string()).unwrap();

    let before = std::fs::read(d.join("root.json")).unwrap();
    for (bad, expected) in [
        ("alice-draft-1.sig.json", "signs other content"),
        ("targets.sig.json", "is not a root key of root version 1"),
        ("bob-altered.sig.json", "does not verify"),
    ] {
        let err = refused(d, &format!("offline import root.json alice.sig.json {bad}"));
        assert!(err.contains(expected), "{bad}: {err}");
        assert_eq!(std::fs::read(d.join("root.json")).unwrap(), before, "{bad}");
    }
    let out = ok(d, "offline import root.json bob.sig.json alice.sig.json");
    assert!(out.contains("every threshold is met"), "{out}");
}

/// A rotation signed offline: version 2 adds a new root key and drops one; the old holders
/// (threshold of version 1) and the new one sign on their machines; `rotate-root` publishes
/// it without any key on the publishing machine, and the check from version 1 follows.
#[test]
fn offline_signed_root_rotation_is_followed_from_version_1() {
    let (alice, bob, dave) = (
        machine("alice", "ed25519"),
        machine("bob", "ecdsa-p256"),
        machine("dave", "ed25519"),
    );
    let dir = publisher(&[("alice", &alice), ("bob", &bob)]);
    let d = dir.path();
    ok(d, "offline export root.json -o v1.json");
    for (name, m) in [("alice", &alice), ("bob", &bob)] {
        carry(d, "v1.json", m.path());
        ok(
            m.path(),
            &format!("offline sign v1.json -k {name}.pem -o {name}-v1.sig.json"),
        );
        carry(m.path(), &format!("{name}-v1.sig.json"), d);
    }
    ok(
        d,
        "offline import root.json alice-v1.sig.json bob-v1.sig.json",
    );
    ok(d, PUBLISH);

    // Version 2: dave replaces alice (threshold 2 of bob and dave).
    ok(d, "root bump-version root.json");
    carry(dave.path(), "dave.pub.pem", d);
    ok(d, "root add-key root.json --role root dave.pub.pem");
    ok(d, "root remove-key root.json --role root alice.pub.pem");
    ok(d, "offline export root.json -o v2.json");
    for (name, m) in [("dave", &dave), ("alice", &alice), ("bob", &bob)] {
        carry(d, "v2.json", m.path());
        ok(
            m.path(),
            &format!("offline sign v2.json -k {name}.pem -o {name}-v2.sig.json"),
        );
        carry(m.path(), &format!("{name}-v2.sig.json"), d);
    }
    // Alice is no key of version 2: without --previous her signature is refused.
    let err = refused(d, "offline import root.json alice-v2.sig.json");
    assert!(err.contains("is not a root key"), "{err}");
    let out = ok(
        d,
        "offline import root.json dave-v2.sig.json alice-v2.sig.json bob-v2.sig.json \
         --previous repo/metadata/1.root.json",
    );
    assert!(out.contains("every threshold is met"), "{out}");
    ok(d, "rotate-root repo --root root.json");
    ok(d, "refresh-timestamp repo -k keys/timestamp.pem");
    let out = ok(d, "check repo --root repo/metadata/1.root.json");
    assert!(out.contains("no problems found"), "{out}");
    assert!(d.join("repo/metadata/2.root.json").is_file());
}

/// The new subcommands explain themselves, and the key arguments name the pkcs11: URIs.
#[test]
fn offline_delegation_and_pkcs11_help() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let top = ok(d, "--help");
    for sub in ["offline", "delegate", "publish-delegated"] {
        assert!(top.contains(sub), "{sub} missing from --help");
        assert!(
            ok(d, &format!("{sub} --help")).contains("Usage: updata"),
            "{sub}"
        );
    }
    for sub in ["export", "sign", "import"] {
        assert!(ok(d, &format!("offline {sub} --help")).contains("Usage: updata offline"));
    }
    for sub in [
        "publish",
        "refresh-timestamp",
        "rotate-root",
        "key generate",
        "root add-key",
    ] {
        let help = ok(d, &format!("{sub} --help"));
        assert!(help.contains("pkcs11:"), "{sub}: {help}");
    }
}

/// The targets role signed offline with threshold 2: `publish --draft-targets` checks the
/// release and writes only the unsigned targets metadata; two holders sign it on their
/// machines; `publish --signed-targets` publishes it with the online snapshot and timestamp
/// keys once the threshold is met, and refuses a draft of another release.
#[test]
fn offline_signed_targets_are_published_once_their_threshold_is_met() {
    let (erin, frank) = (machine("erin", "ed25519"), machine("frank", "ecdsa-p256"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for role in ["root", "snapshot", "timestamp"] {
        ok(d, &format!("key generate keys/{role}.pem"));
    }
    ok(d, "root init root.json");
    for role in ["root", "snapshot", "timestamp"] {
        ok(
            d,
            &format!("root add-key root.json --role {role} keys/{role}.pub.pem"),
        );
    }
    for (name, m) in [("erin", &erin), ("frank", &frank)] {
        carry(m.path(), &format!("{name}.pub.pem"), d);
        ok(
            d,
            &format!("root add-key root.json --role targets {name}.pub.pem"),
        );
    }
    ok(d, "root set-threshold root.json --role targets 2");
    ok(d, "root sign root.json -k keys/root.pem");
    ok(d, "init manifest.json");
    std::fs::write(d.join("notes.txt"), b"release notes").unwrap();
    std::fs::write(d.join("other.txt"), b"something else").unwrap();
    let release = "publish repo --root root.json --manifest manifest.json -t notes.txt";

    let out = ok(d, &format!("{release} --draft-targets targets.draft.json"));
    assert!(out.contains("targets version 1, unsigned"), "{out}");
    assert!(
        !d.join("repo").exists(),
        "the draft wrote into the repository"
    );
    for (name, m) in [("frank", &frank), ("erin", &erin)] {
        carry(d, "targets.draft.json", m.path());
        ok(
            m.path(),
            &format!("offline sign targets.draft.json -k {name}.pem -o {name}.sig.json"),
        );
        carry(m.path(), &format!("{name}.sig.json"), d);
    }
    let online = "-k keys/snapshot.pem -k keys/timestamp.pem";
    let out = ok(
        d,
        "offline import targets.draft.json frank.sig.json --root root.json",
    );
    assert!(out.contains("not complete yet"), "{out}");
    let err = refused(
        d,
        &format!("{release} --signed-targets targets.draft.json {online}"),
    );
    assert!(err.contains("1 valid signature(s) of the 2"), "{err}");
    assert!(!d.join("repo").exists());
    let out = ok(
        d,
        "offline import targets.draft.json erin.sig.json --root root.json",
    );
    assert!(out.contains("every threshold is met"), "{out}");
    // Signed for notes.txt; another file in its place is refused.
    let err = refused(
        d,
        &format!(
            "publish repo --root root.json --manifest manifest.json -t other.txt \
             --signed-targets targets.draft.json {online}"
        ),
    );
    assert!(err.contains("not what this release makes"), "{err}");
    assert!(!d.join("repo").exists());
    ok(
        d,
        &format!("{release} --signed-targets targets.draft.json {online}"),
    );
    let out = ok(d, "check repo --root root.json");
    assert!(out.contains("no problems found"), "{out}");
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("repo/metadata/1.targets.json")).unwrap())
            .unwrap();
    assert_eq!(targets["signatures"].as_array().unwrap().len(), 2);
    assert!(targets["signed"]["targets"]["notes.txt"].is_object());
}
