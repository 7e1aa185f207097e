//! `FileTransport` and `AnyTransport` on real files (and the loopback test server).

use fixtures::http::TestServer;
use std::io::Read;
use tuf::transport::{AnyTransport, FileTransport, HttpOptions, Transport, TransportErrorKind};
use url::Url;

fn read_all(t: &dyn Transport, url: &Url) -> Vec<u8> {
    let mut body = Vec::new();
    t.fetch(url).unwrap().read_to_end(&mut body).unwrap();
    body
}

#[test]
fn reads_files_and_reports_missing_ones_as_not_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub dir")).unwrap();
    std::fs::write(dir.path().join("sub dir/3.root.json"), b"{\"signed\":1}").unwrap();
    let base = Url::from_directory_path(dir.path()).unwrap();

    let url = base.join("sub%20dir/3.root.json").unwrap();
    assert_eq!(read_all(&FileTransport, &url), b"{\"signed\":1}");

    let err = FileTransport
        .fetch(&base.join("sub%20dir/4.root.json").unwrap())
        .err()
        .unwrap();
    assert!(matches!(err.kind, TransportErrorKind::NotFound), "{err}");
    assert!(err.to_string().contains("4.root.json"), "{err}");
}

/// Reading from an offset seeks there, in both the file transport and the one that picks by
/// scheme; an offset past the end is an error.
#[test]
fn fetch_from_reads_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("data.bin"), &data).unwrap();
    let url = Url::from_file_path(dir.path().join("data.bin")).unwrap();
    let any = AnyTransport::new(HttpOptions::default()).unwrap();
    for t in [&FileTransport as &dyn Transport, &any] {
        for from in [0, 1, 65_537, 100_000] {
            let mut body = Vec::new();
            t.fetch_from(&url, from)
                .unwrap()
                .read_to_end(&mut body)
                .unwrap();
            assert!(body == data[from as usize..], "from {from}");
        }
        let err = t.fetch_from(&url, 100_001).err().unwrap();
        assert!(matches!(err.kind, TransportErrorKind::Io(_)), "{err}");
    }
}

#[test]
fn a_directory_is_an_error_but_not_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = Url::from_directory_path(dir.path()).unwrap();
    let err = FileTransport.fetch(&url).err().unwrap();
    assert!(matches!(err.kind, TransportErrorKind::Io(_)), "{err}");
}

#[test]
fn file_transport_refuses_other_schemes() {
    let err = FileTransport
        .fetch(&Url::parse("http://127.0.0.1/x").unwrap())
        .err()
        .unwrap();
    assert!(matches!(err.kind, TransportErrorKind::UnsupportedScheme(ref s) if s == "http"));
}

#[test]
fn any_transport_dispatches_by_scheme() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("timestamp.json"), b"ts").unwrap();
    let server = TestServer::serve_dir(dir.path()).unwrap();
    let t = AnyTransport::new(HttpOptions {
        proxy_from_env: false,
        ..HttpOptions::default()
    })
    .unwrap();

    let file_url = Url::from_file_path(dir.path().join("timestamp.json")).unwrap();
    assert_eq!(read_all(&t, &file_url), b"ts");
    assert_eq!(server.request_count(), 0);

    let http_url = Url::parse(&server.url_for("timestamp.json")).unwrap();
    assert_eq!(read_all(&t, &http_url), b"ts");
    assert_eq!(server.request_count(), 1);

    let err = t
        .fetch(&Url::parse("gopher://example.invalid/x").unwrap())
        .err()
        .unwrap();
    assert!(matches!(err.kind, TransportErrorKind::UnsupportedScheme(_)));
}
