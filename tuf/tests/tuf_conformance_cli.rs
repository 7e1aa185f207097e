//! The conformance-suite CLI (`examples/tuf-conformance-client.rs`) driven like the suite drives
//! it: separate processes for init, refresh and download against a real HTTP server.
//!
//! `cargo test` / `cargo nextest run` build the crate's examples next to the test binaries
//! (`target/<profile>/examples/`), which is where this test finds the client.

use fixtures::http::TestServer;
use fixtures::repo::{KeyKind, TestRepo};
use std::path::{Path, PathBuf};
use std::process::Command;

fn client_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/examples/tuf-conformance-client
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples").join("tuf-conformance-client");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p tuf --example tuf-conformance-client`",
        bin.display()
    );
    bin
}

struct Cli {
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Cli {
    fn metadata_dir(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    fn target_dir(&self) -> PathBuf {
        self.dir.path().join("targets")
    }

    #[allow(clippy::unused_self)]
    fn run(&self, args: &[&str]) -> i32 {
        let out = Command::new(client_binary()).args(args).output().unwrap();
        eprintln!(
            "{args:?} -> {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.status
            .code()
            .expect("the client was killed by a signal")
    }

    fn refresh(&self) -> i32 {
        let md = self.metadata_dir();
        self.run(&[
            "--metadata-url",
            &self.server.url_for("metadata"),
            "--metadata-dir",
            md.to_str().unwrap(),
            "refresh",
        ])
    }

    fn download(&self, names: &[&str]) -> i32 {
        let md = self.metadata_dir();
        let td = self.target_dir();
        let mut args = vec![
            "--metadata-dir".to_owned(),
            md.to_str().unwrap().to_owned(),
            "--target-dir".to_owned(),
            td.to_str().unwrap().to_owned(),
        ];
        for n in names {
            args.push("--target-name".to_owned());
            args.push((*n).to_owned());
        }
        args.extend([
            "--target-base-url".to_owned(),
            self.server.url_for("targets"),
            "--metadata-url".to_owned(),
            self.server.url_for("metadata"),
            "download".to_owned(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs)
    }

    fn target_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.target_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

fn setup(repo: &TestRepo) -> Cli {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("metadata")).unwrap();
    std::fs::create_dir(dir.path().join("targets")).unwrap();
    let server = TestServer::serve_dir(repo.dir()).unwrap();
    let cli = Cli { dir, server };
    let root = cli.dir.path().join("initial_root.json");
    repo.write_root(1, &root);
    let md = cli.metadata_dir();
    assert_eq!(
        cli.run(&[
            "--metadata-dir",
            md.to_str().unwrap(),
            "init",
            root.to_str().unwrap()
        ]),
        0
    );
    assert_eq!(
        std::fs::read(md.join("root.json")).unwrap(),
        repo.root_bytes(1)
    );
    assert_eq!(
        cli.server.request_count(),
        0,
        "init must not touch the network"
    );
    cli
}

#[test]
fn init_refresh_download_and_cache() {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.consistent_snapshot = true;
    repo.add_target("a.txt", b"artifact a");
    repo.add_target("dir/b.txt", b"artifact b");
    repo.publish();
    let cli = setup(&repo);

    assert_eq!(cli.refresh(), 0);
    for f in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        assert!(cli.metadata_dir().join(f).is_file(), "{f} missing");
    }

    assert_eq!(cli.download(&["a.txt", "dir/b.txt"]), 0);
    assert_eq!(cli.target_files(), ["a.txt", "dir%2Fb.txt"]);
    assert_eq!(
        std::fs::read(cli.target_dir().join("dir%2Fb.txt")).unwrap(),
        b"artifact b"
    );

    // Already there with matching hashes: no target request.
    let before = cli.server.requests().len();
    assert_eq!(cli.download(&["a.txt"]), 0);
    assert!(
        cli.server.requests()[before..]
            .iter()
            .all(|r| r.path.starts_with("/metadata/")),
        "a cached target was downloaded again"
    );
}

#[test]
fn failures_exit_with_1_and_leave_nothing_partial() {
    let mut repo = TestRepo::new(KeyKind::EcdsaP256);
    repo.add_target("a.txt", b"artifact a");
    repo.publish();
    let cli = setup(&repo);

    // Unknown target, tampered target: exit 1, nothing in the target dir.
    assert_eq!(cli.download(&["missing.txt"]), 1);
    std::fs::write(repo.targets_dir().join("a.txt"), b"artifact A").unwrap();
    assert_eq!(cli.download(&["a.txt"]), 1);
    assert!(cli.target_files().is_empty(), "{:?}", cli.target_files());

    // Bad usage is 1 too (not clap's 2).
    assert_eq!(
        cli.run(&["--metadata-dir", "/nonexistent", "frobnicate"]),
        1
    );
    assert_eq!(cli.run(&["refresh"]), 1);

    // A rollback is refused and the trusted metadata keeps its version.
    repo.bump();
    repo.publish();
    assert_eq!(cli.refresh(), 0);
    repo.timestamp_version = 1;
    repo.publish();
    assert_eq!(cli.refresh(), 1);
    let ts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cli.metadata_dir().join("timestamp.json")).unwrap())
            .unwrap();
    assert_eq!(ts["signed"]["version"], 2);
}
