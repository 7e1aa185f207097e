//! Scenario tests of the TUF client workflow over `file://`, one per rule.

mod tuf_support;

use fixtures::repo::KeyKind;
use tuf_support::{Client, KINDS, read_all, simple_repo};

#[test]
fn loads_and_reads_a_target_with_each_key_type() {
    for kind in KINDS {
        let repo = simple_repo(kind);
        let client = Client::new(&repo, 1);
        let r = client
            .load(&repo)
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
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
                "{kind:?}: {f} not stored as the exact bytes received"
            );
        }
    }
}

#[test]
fn smoke_ed25519() {
    let repo = simple_repo(KeyKind::Ed25519);
    let client = Client::new(&repo, 1);
    client.load(&repo).unwrap();
}
