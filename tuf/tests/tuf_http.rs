//! TUF client scenarios over real HTTP on 127.0.0.1 (`fixtures::http::TestServer` and
//! `tuf::transport::HttpTransport`): the network cases of the workflow rules.

use fixtures::http::{Fault, TestServer};
use fixtures::repo::{KeyKind, TestRepo};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tuf::transport::{Backoff, HttpOptions, HttpTransport, TransportErrorKind};
use tuf::{Error, Repository, RepositoryOptions, Role};

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
        self.load_with(stall, self.options())
    }

    #[allow(clippy::unused_self)]
    fn load_with(&self, stall: Duration, opts: RepositoryOptions) -> Result<Repository, Error> {
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
        Repository::load(opts, Arc::new(transport))
    }

    /// Options whose metadata time limit is 1 s for a full-size timestamp (16 KiB at 16 KiB/s,
    /// no fixed part), so a test of the limit is quick.
    fn tight_time_limits(&self) -> RepositoryOptions {
        let mut opts = self.options();
        opts.limits.metadata_time_base = Duration::ZERO;
        opts.limits.metadata_min_rate = 16 * 1024;
        assert_eq!(
            opts.limits
                .metadata_time_limit(opts.limits.max_timestamp_size),
            Duration::from_secs(1)
        );
        opts
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
        matches!(
            &e,
            Error::TooLarge {
                role: Role::Timestamp,
                limit: 16384
            }
        ),
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
        matches!(
            &e,
            Error::TooLarge {
                role: Role::Root,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn endless_snapshot_is_cut_at_the_listed_length() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    s.server.fault("/metadata/snapshot.json", Fault::Endless);
    let e = s.load(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::TooLarge {
                role: Role::Snapshot,
                ..
            }
        ),
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

/// A byte every 20 ms: a few hundred bytes of metadata take many seconds, and the stall
/// timeout never fires.
fn drip() -> Fault {
    Fault::Slow {
        bytes: 1,
        every: Duration::from_millis(20),
    }
}

#[test]
fn dripping_timestamp_fails_at_its_time_limit() {
    let s = Setup::new(KeyKind::Ed25519, b"x");
    let len = s.repo.read_metadata("timestamp.json").len();
    assert!(len > 200, "the drip must outlast the limit: {len} bytes");
    s.server.fault("/metadata/timestamp.json", drip());
    let started = Instant::now();
    let e = s
        .load_with(Duration::from_secs(5), s.tight_time_limits())
        .unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("expected error: {e}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let text = fixtures::error_chain(&e);
    assert!(
        text.contains("timestamp metadata") && text.contains("did not arrive within 1s"),
        "{text}"
    );
    match &e {
        Error::Read { source, .. } => assert!(matches!(
            tuf::transport::TransportError::from_io(source).map(|t| &t.kind),
            Some(TransportErrorKind::TooSlow(_))
        )),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dripping_root_fails_at_its_time_limit() {
    let mut s = Setup::new(KeyKind::Ed25519, b"x");
    s.repo.root_version = 2;
    s.repo.publish_root();
    s.server.fault("/metadata/2.root.json", drip());
    let mut opts = s.tight_time_limits();
    opts.limits.max_root_size = 16 * 1024;
    let started = Instant::now();
    let e = s.load_with(Duration::from_secs(5), opts).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = fixtures::error_chain(&e);
    assert!(text.contains("root metadata"), "{text}");
    assert!(text.contains("did not arrive within"), "{text}");
}

#[test]
fn a_slow_image_is_not_held_to_the_metadata_time_limit() {
    let data = content(1_500);
    let s = Setup::new(KeyKind::Ed25519, &data);
    let r = s
        .load_with(Duration::from_secs(5), s.tight_time_limits())
        .unwrap();
    // 15 pieces of 100 bytes, 100 ms apart: ~1.5 s, longer than any metadata limit here.
    s.server.fault(
        "/targets/images/root.img",
        Fault::Slow {
            bytes: 100,
            every: Duration::from_millis(100),
        },
    );
    let started = Instant::now();
    let mut reader = r.read_target("images/root.img").unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    reader.finish().unwrap();
    assert!(started.elapsed() > Duration::from_millis(1_200));
    assert_eq!(got, data);
}
