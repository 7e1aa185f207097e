//! A token that goes away while `updata` runs: the keys were opened (module loaded, logged in,
//! key found), then the token disappears before the release is signed. The publish fails with
//! one error naming the key and the token, and no file of the repository changes.
//!
//! SoftHSM2 reads its configuration from `SOFTHSM2_CONF` when the module initialises, so the
//! test runs itself again as a child process with that variable set (`CHILD` names the token
//! directory to remove).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use updata::keys::{FileKey, KeySource, KeyType};
use updata::metadata::SignedFile;
use updata::pkcs11::Pkcs11Key;
use updata::{keys, repo, root};

const CHILD: &str = "UPDATA_TEST_REMOVED_CHILD";
const TIMESTAMP: &str = "pkcs11:token=updata;object=timestamp?pin-source=file:pin";

#[test]
fn pkcs11_token_removed_mid_run() {
    if let Some(tokens) = std::env::var_os(CHILD) {
        child(&PathBuf::from(tokens));
        return;
    }
    let Some(hsm) = fixtures::softhsm::SoftHsm::new() else {
        return;
    };
    hsm.init_token("updata", "1234");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pin"), "1234").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_updata"))
        .args(["key", "generate", TIMESTAMP, "--type=ecdsa-p256"])
        .current_dir(dir.path())
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("UPDATA_PKCS11_MODULE", hsm.module())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pkcs11_token_removed_mid_run", "--nocapture"])
        .current_dir(dir.path())
        .env(CHILD, hsm.conf().parent().unwrap().join("tokens"))
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("UPDATA_PKCS11_MODULE", hsm.module())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("child: done"), "the child ran: {text}");
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fixtures::fs::snapshot(dir)
}

/// In the child: a repository whose timestamp key is in the token, published once; the token
/// is removed after the keys are opened for the next publish, which then fails cleanly.
fn child(tokens: &Path) {
    let d = std::env::current_dir().unwrap();
    let now = chrono::Utc::now();
    let year = now + chrono::Duration::days(365);
    let timestamp = Pkcs11Key::open(TIMESTAMP, None).expect("the token key opens");
    let mut r = root::new_root(year);
    let mut file_keys = Vec::new();
    for role in ["root", "targets", "snapshot"] {
        let path = d.join(format!("{role}.pem"));
        let public = keys::generate(&path, KeyType::Ed25519).unwrap();
        root::add_key(&mut r.signed, role, &public).unwrap();
        file_keys.push(FileKey::load(&path).unwrap());
    }
    root::add_key(&mut r.signed, "timestamp", timestamp.public_key()).unwrap();
    r.sign(&file_keys[0]).unwrap();
    r.save(&d.join("root.json")).unwrap();
    std::fs::write(
        d.join("manifest.json"),
        br#"{"updates":[],"migrations":{}}"#,
    )
    .unwrap();
    let expires = repo::Expiries {
        targets: year,
        snapshot: year,
        timestamp: year,
        warn_within: chrono::Duration::days(30),
    };
    let keys: Vec<&dyn KeySource> = vec![&file_keys[1], &file_keys[2], &timestamp];
    let repository = repo::Repository::new(d.join("repo"));
    let release = repo::Release {
        root: Some(d.join("root.json")),
        manifest: Some(d.join("manifest.json")),
        targets: vec![],
    };
    repository
        .publish(&release, &keys, &expires, now)
        .expect("publishes while the token is there");

    let before = files(&d.join("repo"));
    std::fs::remove_dir_all(tokens).unwrap();
    std::fs::create_dir(tokens).unwrap();
    std::fs::write(d.join("extra.bin"), b"a new target").unwrap();
    let release = repo::Release {
        root: None,
        manifest: None,
        targets: vec![d.join("extra.bin")],
    };
    let err = repository
        .publish(&release, &keys, &expires, now)
        .expect_err("the token is gone")
        .to_string();
    assert!(
        err.starts_with("signing with pkcs11:token=updata;object=timestamp: on token \"updata\": ")
            && err.contains("was the token removed?")
            && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(files(&d.join("repo")), before, "a file changed");
    println!("child: done ({err})");
}
