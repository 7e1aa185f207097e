//! Delegated targets with the real `updata`: the top-level targets role delegates a path
//! pattern to a role with its own keys and threshold 2, that role publishes a target, and our
//! TUF client and python-tuf both find it through the delegation over HTTP. When the delegation
//! no longer covers the target's name, both refuse the target the role still signs.

use fixtures::python_tuf::NgClient;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use fixtures::http::TestServer;

fn updata(dir: &Path, line: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_updata"))
        .args(line.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("run updata")
}

fn text(out: &Output) -> String {
    fixtures::fs::output_text(out)
}

fn ok(dir: &Path, line: &str) -> String {
    let out = updata(dir, line);
    assert!(out.status.success(), "updata {line} failed: {}", text(&out));
    text(&out)
}

fn refused(dir: &Path, line: &str) -> String {
    let out = updata(dir, line);
    assert_eq!(out.status.code(), Some(1), "updata {line}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

const TOP: &str = "-k keys/targets.pem -k keys/snapshot.pem -k keys/timestamp.pem";

/// A published repository (root, a manifest) with file keys, and two keys for the delegated
/// role `extras`.
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for k in [
        "root",
        "targets",
        "snapshot",
        "timestamp",
        "extras-a",
        "extras-b",
    ] {
        ok(d, &format!("key generate keys/{k}.pem"));
    }
    ok(d, "root init root.json");
    for role in ["root", "targets", "snapshot", "timestamp"] {
        ok(
            d,
            &format!("root add-key root.json --role {role} keys/{role}.pub.pem"),
        );
    }
    ok(d, "root sign root.json -k keys/root.pem");
    ok(d, "init manifest.json");
    ok(
        d,
        &format!("publish repo --root root.json --manifest manifest.json {TOP}"),
    );
    dir
}

/// Our client, from `root`, over `url`: the description of `name` it trusts, if any.
fn our_client(
    url: &str,
    root: &Path,
    name: &str,
) -> Result<Option<tuf::TargetDescription>, String> {
    let base = url::Url::parse(url).unwrap();
    let datastore = tempfile::tempdir().unwrap();
    let mut opts = tuf::RepositoryOptions::new(
        base.join("metadata/").unwrap(),
        base.join("targets/").unwrap(),
        datastore.path().join("metadata"),
    );
    root.clone_into(&mut opts.trusted_root);
    let transport = Arc::new(
        tuf::transport::HttpTransport::new(tuf::transport::HttpOptions::default()).unwrap(),
    );
    let repo = tuf::Repository::load(opts, transport).map_err(|e| e.to_string())?;
    let found = repo.target(name).map_err(|e| e.to_string())?;
    if found.is_some() {
        // The bytes verify against what the delegated role signed.
        repo.check_fetchable(name).map_err(|e| e.to_string())?;
    }
    Ok(found)
}

/// python-tuf: `Some(bytes)` of `name` as it downloads it through the delegations, `None`
/// when it finds no trusted target of that name. A fresh client each time.
fn python_tuf(work: &Path, url: &str, root: &Path, name: &str) -> Option<Vec<u8>> {
    let state = tempfile::tempdir_in(work).unwrap();
    let got = NgClient::new(state.path())
        .fetch(url, root, &[name])
        .unwrap_or_else(|e| panic!("python-tuf failed: {e}"));
    got[0].as_ref().map(|path| std::fs::read(path).unwrap())
}

#[test]
fn delegated_targets_are_followed_by_our_client_and_python_tuf_within_their_paths() {
    if !fixtures::python_tuf::available() {
        return;
    }
    let dir = repository();
    let d = dir.path();
    std::fs::write(d.join("extras-tool.bin"), b"a tool the extras team ships").unwrap();
    std::fs::write(d.join("kernel.bin"), b"not the extras team's to sign").unwrap();

    // A top-level role's name, a name that is no plain file name, a threshold above the keys.
    let untouched = fixtures_snapshot(d);
    for (role, threshold, expected) in [
        ("targets", 1, "a name of its own"),
        ("../x", 1, "a name of its own"),
        ("extras", 3, "threshold 3 with 2 distinct key(s)"),
    ] {
        let err = refused(
            d,
            &format!(
                "delegate repo --role {role} --path extras-* --delegate-key keys/extras-a.pub.pem \
                 --delegate-key keys/extras-b.pub.pem --threshold {threshold} {TOP}"
            ),
        );
        assert!(err.contains(expected), "{role}: {err}");
        assert_eq!(fixtures_snapshot(d), untouched);
    }
    ok(
        d,
        &format!(
            "delegate repo --role extras --path extras-* --delegate-key keys/extras-a.pub.pem \
             --delegate-key keys/extras-b.pub.pem --threshold 2 {TOP}"
        ),
    );
    // One of two keys is below the threshold; a name outside the paths is refused before it
    // is signed; a key of neither the role nor snapshot/timestamp is refused. Nothing changes.
    let before = fixtures_snapshot(d);
    let role_keys = "-k keys/extras-a.pem -k keys/extras-b.pem";
    let online = "-k keys/snapshot.pem -k keys/timestamp.pem";
    for (line, expected) in [
        (
            format!(
                "publish-delegated repo --role extras -t extras-tool.bin -k keys/extras-a.pem {online}"
            ),
            "1 valid signature(s) of the 2",
        ),
        (
            format!("publish-delegated repo --role extras -t kernel.bin {role_keys} {online}"),
            "outside the paths \"extras\" is delegated",
        ),
        (
            format!("publish-delegated repo --role nobody -t extras-tool.bin {role_keys} {online}"),
            "does not delegate to \"nobody\"",
        ),
    ] {
        let err = refused(d, &line);
        assert!(err.contains(expected), "{line}: {err}");
        assert_eq!(fixtures_snapshot(d), before, "{line}");
    }
    let out = ok(
        d,
        &format!("publish-delegated repo --role extras -t extras-tool.bin {role_keys} {online}"),
    );
    assert!(out.contains("1.extras.json"), "{out}");
    // A later top-level publish keeps the delegated role listed in the snapshot.
    ok(d, &format!("publish repo {TOP}"));

    let server = TestServer::serve_dir(d.join("repo")).unwrap();
    let url = server.url();
    let root = d.join("root.json");
    let found = our_client(&url, &root, "extras-tool.bin")
        .unwrap()
        .expect("our client finds the delegated target");
    assert_eq!(found.length, 28);
    assert_eq!(
        python_tuf(d, &url, &root, "extras-tool.bin").as_deref(),
        Some(&b"a tool the extras team ships"[..])
    );

    // The delegation now covers other names only: the role's signature on extras-tool.bin no
    // longer counts, for either client.
    ok(
        d,
        &format!(
            "delegate repo --role extras --path other-* --delegate-key keys/extras-a.pub.pem \
             --delegate-key keys/extras-b.pub.pem --threshold 2 {TOP}"
        ),
    );
    let extras: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("repo/metadata/1.extras.json")).unwrap())
            .unwrap();
    assert!(extras["signed"]["targets"]["extras-tool.bin"].is_object());
    assert!(
        our_client(&url, &root, "extras-tool.bin")
            .unwrap()
            .is_none(),
        "our client trusted a target outside the delegated paths"
    );
    assert_eq!(python_tuf(d, &url, &root, "extras-tool.bin"), None);
}

fn fixtures_snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    fixtures::fs::snapshot(dir)
}
