//! TUF client scenarios over real HTTP on 127.0.0.1 (`fixtures::http::TestServer` and
//! `updog::transport::HttpTransport`): the network cases of the workflow rules.

use fixtures::http::{Fault, TestServer};
use fixtures::repo::{KeyKind, TestRepo};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use updog::transport::{Backoff, HttpOptions, HttpTransport, TransportErrorKind};
use updog::tuf::{Error, Repository, RepositoryOptions};

struct Setup {
    repo: TestRepo,
    server: TestServer,
    client_dir: tempfile::TempDir,
}

impl Setup {
    fn new(kind: KeyKind, target: &[u8]) -> Self {
        let mut repo = TestRepo::new(kind);
        repo.add_target("images/root.img", target);
        repo.publish();
        let server = TestServer::serve_dir(repo.dir()).unwrap();
        let client_dir = tempfile::tempdir().unwrap();
        repo.write_root(1, &client_dir.path().join("shipped-root.json"));
        Self {
            repo,
            server,
            client_dir,
        }
    }

    fn options(&self) -> RepositoryOptions {
        let mut opts = RepositoryOptions::new(
            self.server.url_for("metadata/").parse().unwrap(),
            self.server.url_for("targets/").parse().unwrap(),
            self.client_dir.path().join("metadata"),
        );
        opts.trusted_root = self.client_dir.path().join("shipped-root.json");
        opts
    }

    fn load(&self, stall: Duration) -> Result<Repository, Error> {
        let transport = HttpTransport::new(HttpOptions {
            stall_timeout: stall,
            retries: 2,
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            proxy_from_env: false,
            ..HttpOptions::default()
        })
        .unwrap();
        Repository::load(self.options(), Arc::new(transport))
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn loads_over_http_with_each_key_type() {
    for kind in [KeyKind::Ed25519, KeyKind::EcdsaP256, KeyKind::Rsa] {
        let data = content(100_000);
        let s = Setup::new(kind, &data);
        let r = s.load(Duration::from_secs(5)).unwrap();
        let mut reader = r.read_target("images/root.img").unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        reader.finish().unwrap();
        assert_eq!(got, data);
        let paths: Vec<String> = s.server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            [
                "/metadata/2.root.json",
                "/metadata/timestamp.json",
                "/metadata/snapshot.json",
                "/metadata/targets.json",
                "/targets/images/root.img"
            ]
        );
    }
}

#[test]
fn endless_timestamp_is_cut_at_the_size_limit() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server.fault("/metadata/timestamp.json", Fault::Endless);
    let started = Instant::now();
    let e = s.load(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { role, limit: 16384 } if role == "timestamp"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn endless_root_is_cut_at_the_size_limit() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server.fault("/metadata/2.root.json", Fault::Endless);
    let e = s.load(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { role, .. } if role == "root"),
        "{e}"
    );
}

#[test]
fn endless_snapshot_is_cut_at_the_listed_length() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server.fault("/metadata/snapshot.json", Fault::Endless);
    let e = s.load(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(&e, Error::TooLarge { role, .. } if role == "snapshot"),
        "{e}"
    );
}

#[test]
fn endless_target_body_is_read_only_up_to_the_signed_length() {
    let data = content(50_000);
    let s = Setup::new(KeyKind::EcdsaP256, &data);
    let r = s.load(Duration::from_secs(5)).unwrap();
    s.server.fault("/targets/images/root.img", Fault::Endless);
    let mut reader = r.read_target("images/root.img").unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    reader.finish().unwrap();
    assert_eq!(got, data);
}

#[test]
fn dropped_connection_mid_target_is_resumed() {
    let data = content(300_000);
    let s = Setup::new(KeyKind::Rsa, &data);
    let r = s.load(Duration::from_secs(5)).unwrap();
    s.server
        .fault_times("/targets/images/root.img", Fault::DropAfter(100_000), 1);
    let mut reader = r.read_target("images/root.img").unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    reader.finish().unwrap();
    assert_eq!(got, data);
    let reqs = s.server.requests_for("/targets/images/root.img");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100000-"));
}

#[test]
fn stalled_server_times_out_with_a_clear_error() {
    let data = content(200_000);
    let s = Setup::new(KeyKind::Ed25519, &data);
    let r = s.load(Duration::from_millis(300)).unwrap();
    s.server
        .fault("/targets/images/root.img", Fault::Stall { after: 1000 });
    let started = Instant::now();
    let mut reader = r.read_target("images/root.img").unwrap();
    let mut got = Vec::new();
    let err = reader.read_to_end(&mut got).unwrap_err();
    eprintln!("expected error: {err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(reader.finish().is_err());
    assert!(
        err.to_string().contains("no data") || err.kind() == std::io::ErrorKind::TimedOut,
        "{err}"
    );
}

#[test]
fn stalled_metadata_fails_the_load_with_a_stall_error() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server
        .fault("/metadata/timestamp.json", Fault::StallBeforeHeaders);
    let started = Instant::now();
    let e = s.load(Duration::from_millis(300)).unwrap_err();
    eprintln!("expected error: {e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    match &e {
        Error::Transport { what, source } => {
            assert_eq!(what, "timestamp metadata");
            assert!(
                matches!(source.kind, TransportErrorKind::Stalled(_)),
                "{source}"
            );
        }
        Error::Read { what, .. } => assert_eq!(what, "timestamp metadata"),
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn missing_next_root_over_http_ends_the_rotation_walk() {
    let mut s = Setup::new(KeyKind::Ed25519, b"x");
    s.repo.root_version = 2;
    s.repo.publish_root();
    let r = s.load(Duration::from_secs(5)).unwrap();
    assert_eq!(r.root_version(), 2);
    assert_eq!(s.server.requests_for("/metadata/3.root.json").len(), 1);
}

#[test]
fn server_error_on_metadata_is_an_error_not_a_missing_root() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server.fault("/metadata/2.root.json", Fault::Status(500));
    let e = s.load(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(&e, Error::Transport { what, .. } if what == "root metadata"),
        "{e}"
    );
}
