//! Keys in a hardware token: `updata` with `pkcs11:` URIs against a real SoftHSM2 token,
//! initialised by each test in a temporary directory. Every role's key is generated in the
//! token, a repository is published, refreshed and its root rotated with them, python-tuf's
//! `ngclient` and `updata check` accept it, and a wrong PIN, a missing object, a missing module
//! and a removed token each end in one error line with nothing changed.

use fixtures::python_tuf::NgClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixtures::http::TestServer;
use fixtures::softhsm::SoftHsm;

const PIN: &str = "1234";

/// `updata` in `dir`, with the test's SoftHSM2 configuration and module.
fn updata(hsm: &SoftHsm, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_updata"))
        .args(args)
        .current_dir(dir)
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("UPDATA_PKCS11_MODULE", hsm.module())
        .env_remove("UPDATA_PKCS11_PIN")
        .output()
        .expect("run updata")
}

fn text(out: &Output) -> String {
    fixtures::fs::output_text(out)
}

fn ok(hsm: &SoftHsm, dir: &Path, args: &[&str]) -> String {
    let out = updata(hsm, dir, args);
    assert!(
        out.status.success(),
        "updata {args:?} failed: {}",
        text(&out)
    );
    text(&out)
}

/// Runs a refused command: exit 1, and exactly one line on stderr, which is returned.
fn refused(hsm: &SoftHsm, dir: &Path, args: &[&str]) -> String {
    let out = updata(hsm, dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "updata {args:?}: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(out.stdout.is_empty(), "{}", text(&out));
    err
}

/// The key labelled `object` in token `updata`, PIN from the file `pin.txt`.
fn uri(object: &str) -> String {
    format!("pkcs11:token=updata;object={object}?pin-source=file:pin.txt")
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fixtures::fs::snapshot(dir)
}

/// A publisher whose four role keys are in the token (root and snapshot ECDSA P-256, targets
/// and timestamp ed25519), with a signed root, a manifest and staged images.
fn publisher(hsm: &SoftHsm) -> tempfile::TempDir {
    hsm.init_token("updata", PIN);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pin.txt"), format!("{PIN}\n")).unwrap();
    for (role, kind) in [
        ("root", "ecdsa-p256"),
        ("targets", "ed25519"),
        ("snapshot", "ecdsa-p256"),
        ("timestamp", "ed25519"),
    ] {
        let out = ok(
            hsm,
            d,
            &[
                "key",
                "generate",
                &uri(role),
                "--type",
                kind,
                "--public",
                &format!("keys/{role}.pub.pem"),
            ],
        );
        assert!(out.contains("key id"), "{out}");
    }
    ok(hsm, d, &["root", "init", "root.json"]);
    for role in ["root", "targets", "snapshot", "timestamp"] {
        // The URI and the public key file name the same key.
        let by_uri = ok(hsm, d, &["key", "id", &uri(role)]);
        let by_file = ok(hsm, d, &["key", "id", &format!("keys/{role}.pub.pem")]);
        assert_eq!(by_uri, by_file);
        ok(
            hsm,
            d,
            &["root", "add-key", "root.json", "--role", role, &uri(role)],
        );
    }
    let out = ok(hsm, d, &["root", "sign", "root.json", "-k", &uri("root")]);
    assert!(out.contains("every threshold is met"), "{out}");
    ok(hsm, d, &["init", "manifest.json"]);
    ok(
        hsm,
        d,
        &[
            "add-update",
            "manifest.json",
            "-f",
            "v",
            "-a",
            "x86_64",
            "-v",
            "1.1.0",
        ],
    );
    std::fs::create_dir(d.join("staging")).unwrap();
    for (raw, name, len) in [
        ("boot.ext4", "v-x86_64-1.1.0-boot.ext4.lz4", 30_000),
        ("root.ext4", "v-x86_64-1.1.0-root.ext4.lz4", 200_000),
        ("root.verity", "v-x86_64-1.1.0-root.verity.lz4", 4_000),
    ] {
        let bytes: Vec<u8> = (0..len)
            .map(|i: usize| ((i % 251) ^ (i / 4099)) as u8)
            .collect();
        std::fs::write(d.join(raw), bytes).unwrap();
        ok(hsm, d, &["compress", raw, &format!("staging/{name}")]);
    }
    dir
}

fn publish_args(keys: &[String]) -> Vec<&str> {
    let mut args = vec![
        "publish",
        "repo",
        "--root",
        "root.json",
        "--manifest",
        "manifest.json",
        "--add-targets",
        "staging",
    ];
    for k in keys {
        args.extend(["-k", k.as_str()]);
    }
    args
}

fn online_keys() -> Vec<String> {
    vec![uri("targets"), uri("snapshot"), uri("timestamp")]
}

/// python-tuf's `ngclient` refreshes from `shipped` and downloads `targets`; the versions of
/// root and timestamp it then trusts.
fn ngclient(d: &Path, url: &str, shipped: &Path, targets: &[&str]) -> (u64, u64) {
    let client = NgClient::new(d);
    let got = client
        .fetch(url, shipped, targets)
        .unwrap_or_else(|e| panic!("ngclient refused: {e}"));
    assert!(got.iter().all(Option::is_some), "{targets:?}: {got:?}");
    (
        client.trusted_version("root.json"),
        client.trusted_version("timestamp.json"),
    )
}

#[test]
fn pkcs11_keys_publish_refresh_and_rotate_a_repository_python_tuf_accepts() {
    let Some(hsm) = SoftHsm::new() else { return };
    if !fixtures::python_tuf::available() {
        return;
    }
    let dir = publisher(&hsm);
    let d = dir.path();
    let keys = online_keys();
    let out = ok(&hsm, d, &publish_args(&keys));
    assert!(out.contains("timestamp.json"), "{out}");
    let out = ok(&hsm, d, &["check", "repo", "--root", "root.json"]);
    assert!(out.contains("no problems found"), "{out}");
    // The metadata carries the token keys' signatures in the schemes files would use.
    let root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("repo/metadata/1.root.json")).unwrap())
            .unwrap();
    let schemes: Vec<&str> = root["signed"]["keys"]
        .as_object()
        .unwrap()
        .values()
        .map(|k| k["scheme"].as_str().unwrap())
        .collect();
    assert!(schemes.contains(&"ecdsa-sha2-nistp256"), "{schemes:?}");
    assert!(schemes.contains(&"ed25519"), "{schemes:?}");

    let server = TestServer::serve_dir(d.join("repo")).unwrap();
    let shipped = d.join("shipped-root.json");
    std::fs::copy(d.join("root.json"), &shipped).unwrap();
    assert_eq!(
        ngclient(
            d,
            &server.url(),
            &shipped,
            &["manifest.json", "v-x86_64-1.1.0-root.ext4.lz4"]
        ),
        (1, 1)
    );

    // The cron job's refresh, then a rotation to a second root key in the token, signed by
    // the old token key and the new one.
    ok(
        &hsm,
        d,
        &["refresh-timestamp", "repo", "-k", &uri("timestamp")],
    );
    ok(
        &hsm,
        d,
        &["key", "generate", &uri("root-2"), "--type", "ecdsa-p256"],
    );
    ok(
        &hsm,
        d,
        &[
            "root",
            "add-key",
            "root.json",
            "--role",
            "root",
            &uri("root-2"),
        ],
    );
    ok(
        &hsm,
        d,
        &[
            "root",
            "remove-key",
            "root.json",
            "--role",
            "root",
            &uri("root"),
        ],
    );
    ok(
        &hsm,
        d,
        &[
            "rotate-root",
            "repo",
            "--root",
            "root.json",
            "-k",
            &uri("root"),
            "-k",
            &uri("root-2"),
        ],
    );
    ok(
        &hsm,
        d,
        &["refresh-timestamp", "repo", "-k", &uri("timestamp")],
    );
    let out = ok(
        &hsm,
        d,
        &["check", "repo", "--root", "repo/metadata/1.root.json"],
    );
    assert!(out.contains("no problems found"), "{out}");
    assert_eq!(
        ngclient(d, &server.url(), &shipped, &["manifest.json"]),
        (2, 3)
    );
}

/// A wrong PIN, a missing object, a missing module, a URI with a PIN in it and a token that
/// was removed: each is one error line naming the key and what is wrong, and no file of the
/// repository (or the publisher's directory) changes.
#[test]
fn pkcs11_failures_are_one_line_and_change_nothing() {
    let Some(hsm) = SoftHsm::new() else { return };
    let dir = publisher(&hsm);
    let d = dir.path();
    ok(&hsm, d, &publish_args(&online_keys()));
    std::fs::write(d.join("wrong-pin.txt"), "9999\n").unwrap();
    let before = snapshot(d);
    let cases: [(&str, String, &str); 4] = [
        (
            "wrong PIN",
            "pkcs11:token=updata;object=timestamp?pin-source=file:wrong-pin.txt".to_owned(),
            "the PIN is wrong",
        ),
        (
            "missing object",
            uri("no-such-key"),
            "has no private key with this object/id",
        ),
        (
            "missing module",
            "pkcs11:token=updata;object=timestamp?module-path=/nonexistent/libpkcs11.so&pin-source=file:pin.txt"
                .to_owned(),
            "the PKCS#11 module /nonexistent/libpkcs11.so does not exist",
        ),
        (
            "PIN on the command line",
            "pkcs11:token=updata;object=timestamp?pin-value=1234".to_owned(),
            "pin-value is refused",
        ),
    ];
    for (what, key, expected) in &cases {
        for args in [
            vec!["refresh-timestamp", "repo", "-k", key.as_str()],
            vec!["root", "sign", "root.json", "-k", key.as_str()],
            vec![
                "key",
                "generate",
                key.as_str(),
                "--type",
                "ecdsa-p256",
                "--public",
                "x.pem",
            ],
        ] {
            if *what == "missing object" && args[0] == "key" {
                continue; // generating a key that does not exist yet is what generate does
            }
            let err = refused(&hsm, d, &args);
            assert!(err.contains(expected), "{what}: {args:?}: {err}");
            assert!(!err.contains("1234") && !err.contains("9999"), "{err}");
        }
        // A new release, so that publish has targets, snapshot and timestamp to sign.
        let (targets, snapshot_key) = (uri("targets"), uri("snapshot"));
        let err = refused(
            &hsm,
            d,
            &[
                "publish",
                "repo",
                "--manifest",
                "manifest.json",
                "--add-targets",
                "staging",
                "-k",
                &targets,
                "-k",
                &snapshot_key,
                "-k",
                key,
            ],
        );
        assert!(err.contains(expected), "{what}: publish: {err}");
        assert_eq!(snapshot(d), before, "{what} changed a file");
    }
    // The token is removed (its files are gone): the next run says so, nothing changes.
    hsm.remove_tokens();
    let err = refused(
        &hsm,
        d,
        &["refresh-timestamp", "repo", "-k", &uri("timestamp")],
    );
    assert!(err.contains("no such token"), "{err}");
    assert_eq!(snapshot(d), before);
}

/// A key is never replaced: generating a key whose label is taken is refused.
#[test]
fn pkcs11_generate_refuses_a_taken_label() {
    let Some(hsm) = SoftHsm::new() else { return };
    hsm.init_token("updata", PIN);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pin.txt"), PIN).unwrap();
    let first = ok(
        &hsm,
        d,
        &["key", "generate", &uri("k"), "--type", "ecdsa-p256"],
    );
    assert!(first.contains("BEGIN PUBLIC KEY"), "{first}");
    let err = refused(&hsm, d, &["key", "generate", &uri("k")]);
    assert!(err.contains("already holds a key with this label"), "{err}");
    // The first key is still the one the token names.
    let id = ok(&hsm, d, &["key", "id", &uri("k")]);
    assert!(first.contains(id.trim()), "{first} / {id}");
}

/// The offline machine's root key is in a token: `offline sign` takes its URI, and the
/// publisher imports the signature and publishes the root.
#[test]
fn pkcs11_key_signs_a_root_offline() {
    let Some(hsm) = SoftHsm::new() else { return };
    hsm.init_token("updata", PIN);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let offline = tempfile::tempdir().unwrap();
    let o = offline.path();
    std::fs::write(o.join("pin.txt"), PIN).unwrap();
    ok(
        &hsm,
        o,
        &["key", "generate", &uri("root"), "--public", "root.pub.pem"],
    );
    std::fs::copy(o.join("root.pub.pem"), d.join("root.pub.pem")).unwrap();
    ok(&hsm, d, &["root", "init", "root.json"]);
    for role in ["targets", "snapshot", "timestamp"] {
        ok(&hsm, d, &["key", "generate", &format!("keys/{role}.pem")]);
        ok(
            &hsm,
            d,
            &[
                "root",
                "add-key",
                "root.json",
                "--role",
                role,
                &format!("keys/{role}.pub.pem"),
            ],
        );
    }
    ok(
        &hsm,
        d,
        &[
            "root",
            "add-key",
            "root.json",
            "--role",
            "root",
            "root.pub.pem",
        ],
    );
    ok(
        &hsm,
        d,
        &["offline", "export", "root.json", "-o", "to-sign.json"],
    );
    std::fs::copy(d.join("to-sign.json"), o.join("to-sign.json")).unwrap();
    ok(
        &hsm,
        o,
        &[
            "offline",
            "sign",
            "to-sign.json",
            "-k",
            &uri("root"),
            "-o",
            "root.sig.json",
        ],
    );
    std::fs::copy(o.join("root.sig.json"), d.join("root.sig.json")).unwrap();
    let out = ok(
        &hsm,
        d,
        &["offline", "import", "root.json", "root.sig.json"],
    );
    assert!(out.contains("every threshold is met"), "{out}");
    ok(&hsm, d, &["init", "manifest.json"]);
    ok(
        &hsm,
        d,
        &[
            "publish",
            "repo",
            "--root",
            "root.json",
            "--manifest",
            "manifest.json",
            "-k",
            "keys/targets.pem",
            "-k",
            "keys/snapshot.pem",
            "-k",
            "keys/timestamp.pem",
        ],
    );
    let out = ok(&hsm, d, &["check", "repo", "--root", "root.json"]);
    assert!(out.contains("no problems found"), "{out}");
}

/// Without a PIN source, `updata` on a terminal asks for the PIN without echoing it (run under
/// `script`, which gives it a pseudo-terminal); without a terminal it says where a PIN can come
/// from instead of waiting.
#[test]
fn pkcs11_pin_prompt_on_a_terminal_does_not_echo() {
    use std::io::{Read, Write};
    const TYPED: &str = "typed-secret";
    let Some(hsm) = SoftHsm::new() else { return };
    if !fixtures::gate::require_tool("script", "--version") {
        return;
    }
    hsm.init_token("updata", TYPED);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pin.txt"), TYPED).unwrap();
    let generated = ok(&hsm, d, &["key", "generate", &uri("k")]);
    let bare = "pkcs11:token=updata;object=k";
    let err = refused(&hsm, d, &["key", "id", bare]);
    assert!(err.contains("no PIN for token \"updata\""), "{err}");

    let command = format!("{} key id '{bare}'", env!("CARGO_BIN_EXE_updata"));
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(d)
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("UPDATA_PKCS11_MODULE", hsm.module())
        .env_remove("UPDATA_PKCS11_PIN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    // The terminal's output, read on a thread; the PIN is typed once the prompt is up.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(so_far) if so_far.contains("PIN for token \"updata\": ") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no PIN prompt within 60 s: {e}");
            }
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{TYPED}\n").as_bytes()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let shown = reader.join().unwrap();
    assert!(status.success(), "{shown}");
    assert!(!shown.contains(TYPED), "the PIN was echoed: {shown}");
    let id = shown.lines().last().unwrap().trim();
    assert!(id.len() == 64 && generated.contains(id), "{shown}");
}
