//! `HttpTransport` against the real loopback `fixtures::http::TestServer`.

use fixtures::http::{Fault, TestServer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tuf::transport::{
    Backoff, HttpOptions, HttpTransport, ProxyConfig, Transport, TransportError, TransportErrorKind,
};
use url::Url;

/// Deterministic, non-repeating-looking bytes (xorshift), so misplaced or duplicated ranges
/// cannot go unnoticed.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Short timeouts and millisecond backoffs, no proxies from the environment.
fn options() -> HttpOptions {
    HttpOptions {
        stall_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        retries: 3,
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(40),
        },
        proxy_from_env: false,
        ..HttpOptions::default()
    }
}

fn transport(opts: HttpOptions) -> HttpTransport {
    HttpTransport::new(opts).unwrap()
}

struct Served {
    _dir: tempfile::TempDir,
    server: TestServer,
    data: Vec<u8>,
}

/// A server with one file `image.bin` of `len` pattern bytes.
fn serve(len: usize) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(len);
    std::fs::write(dir.path().join("image.bin"), &data).unwrap();
    let server = TestServer::serve_dir(dir.path()).unwrap();
    Served {
        _dir: dir,
        server,
        data,
    }
}

impl Served {
    /// The URL of `image.bin`.
    fn image(&self) -> Url {
        url(&self.server, "image.bin")
    }
}

/// Fetches `url` and reads the whole body.
fn fetch_ok(t: &HttpTransport, url: &Url) -> Vec<u8> {
    let mut body = Vec::new();
    t.fetch(url).unwrap().read_to_end(&mut body).unwrap();
    body
}

/// Fetches `url` (the answer starts) and reads until the read fails: the bytes read before,
/// and the error.
fn fetch_broken(t: &HttpTransport, url: &Url) -> (Vec<u8>, std::io::Error) {
    let mut body = Vec::new();
    let err = t.fetch(url).unwrap().read_to_end(&mut body).unwrap_err();
    (body, err)
}

/// A server with nothing to serve, standing in for a proxy (it refuses CONNECT and logs it).
fn proxy() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::serve_dir(dir.path()).unwrap();
    (dir, server)
}

fn url(server: &TestServer, path: &str) -> Url {
    Url::parse(&server.url_for(path)).unwrap()
}

fn transport_error(err: &std::io::Error) -> &TransportError {
    TransportError::from_io(err).unwrap_or_else(|| panic!("not a transport error: {err:?}"))
}

#[test]
fn full_body_is_exact() {
    let s = serve(3 * 1024 * 1024 + 17);
    let body = fetch_ok(&transport(options()), &s.image());
    assert!(body == s.data, "body differs");
    let log = s.server.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].range, None);
}

#[test]
fn missing_file_is_not_found_without_retries() {
    let s = serve(10);
    let err = transport(options())
        .fetch(&url(&s.server, "nope.json"))
        .err()
        .unwrap();
    assert!(matches!(err.kind, TransportErrorKind::NotFound), "{err}");
    assert_eq!(err.url, url(&s.server, "nope.json"));
    assert_eq!(s.server.request_count(), 1, "404 must not be retried");
}

#[test]
fn forbidden_and_gone_are_not_found_other_statuses_are_http_status() {
    let s = serve(10);
    let t = transport(options());
    for code in [403, 410] {
        s.server.fault_times("image.bin", Fault::Status(code), 1);
        let err = t.fetch(&s.image()).err().unwrap();
        assert!(
            matches!(err.kind, TransportErrorKind::NotFound),
            "{code}: {err}"
        );
    }
    s.server.clear_log();
    s.server.fault_times("image.bin", Fault::Status(400), 1);
    let err = t.fetch(&s.image()).err().unwrap();
    assert!(
        matches!(err.kind, TransportErrorKind::HttpStatus(400)),
        "{err}"
    );
    assert_eq!(s.server.request_count(), 1, "400 must not be retried");
}

#[test]
fn dropped_connection_resumes_with_range() {
    let s = serve(1024 * 1024);
    s.server
        .fault_times("image.bin", Fault::DropAfter(100_000), 1);
    let body = fetch_ok(&transport(options()), &s.image());
    assert_eq!(body.len(), s.data.len());
    assert!(body == s.data, "resumed body differs");
    let ranges: Vec<_> = s.server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, [None, Some("bytes=100000-".to_string())]);
}

/// Reading from an offset asks for the rest with `Range`; a drop in the middle resumes from
/// where the body got to; a server that ignores ranges sends the whole file and the reader
/// passes over the start itself; an offset past the end is an error, at the end an empty body.
#[test]
fn fetch_from_asks_for_the_rest_and_copes_with_servers_without_ranges() {
    let s = serve(1024 * 1024);
    let t = transport(options());
    let read_from = |from: u64| -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        t.fetch_from(&s.image(), from)
            .map_err(TransportError::into_io)?
            .read_to_end(&mut body)?;
        Ok(body)
    };
    let from = 300_001;
    assert!(
        read_from(from).unwrap() == s.data[from as usize..],
        "tail differs"
    );
    let ranges: Vec<_> = s.server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, [Some(format!("bytes={from}-"))]);

    s.server.clear_log();
    s.server
        .fault_times("image.bin", Fault::DropAfter(100_000), 1);
    assert!(
        read_from(from).unwrap() == s.data[from as usize..],
        "resumed tail differs"
    );
    let ranges: Vec<_> = s.server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(
        ranges,
        [
            Some(format!("bytes={from}-")),
            Some(format!("bytes={}-", from + 100_000))
        ]
    );

    s.server.clear_log();
    s.server.set_range_support(false);
    assert!(
        read_from(from).unwrap() == s.data[from as usize..],
        "tail differs"
    );
    assert!(read_from(s.data.len() as u64 + 1).is_err());
    s.server.set_range_support(true);
    assert!(read_from(s.data.len() as u64).unwrap().is_empty());
    assert!(read_from(s.data.len() as u64 + 1).is_err());
    assert!(read_from(0).unwrap() == s.data);
}

#[test]
fn drops_every_time_still_complete_by_resuming() {
    let s = serve(1_000_000);
    s.server.fault("image.bin", Fault::DropAfter(200_000));
    let body = fetch_ok(&transport(options()), &s.image());
    assert!(body == s.data, "resumed body differs");
    let ranges: Vec<_> = s.server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=200000-".to_string()),
            Some("bytes=400000-".to_string()),
            Some("bytes=600000-".to_string()),
            Some("bytes=800000-".to_string()),
        ]
    );
}

#[test]
fn resume_refused_by_server_names_the_byte() {
    let s = serve(1024 * 1024);
    s.server.set_range_support(false);
    s.server
        .fault_times("image.bin", Fault::DropAfter(100_000), 1);
    let (body, err) = fetch_broken(&transport(options()), &s.image());
    let te = transport_error(&err);
    match &te.kind {
        TransportErrorKind::ConnectionDropped { at, detail } => {
            assert_eq!(*at, 100_000);
            assert!(detail.contains("cannot resume"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(te.to_string().contains("dropped at byte 100000"), "{te}");
    assert!(body == s.data[..100_000], "only the bytes before the drop");
    let log = s.server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=100000-"));
}

#[test]
fn resume_that_never_progresses_gives_up() {
    let s = serve(100_000);
    // Every answer drops after the headers: no progress is ever made.
    s.server.fault("image.bin", Fault::DropAfter(0));
    let opts = HttpOptions {
        retries: 2,
        ..options()
    };
    let (body, err) = fetch_broken(&transport(opts), &s.image());
    let te = transport_error(&err);
    assert!(
        matches!(te.kind, TransportErrorKind::ConnectionDropped { at: 0, .. }),
        "{te}"
    );
    assert!(body.is_empty());
    assert_eq!(s.server.request_count(), 3, "first request and two resumes");
}

#[test]
fn stall_mid_body_is_reported_promptly() {
    let s = serve(500_000);
    s.server.fault("image.bin", Fault::Stall { after: 50_000 });
    let started = Instant::now();
    let (body, err) = fetch_broken(&transport(options()), &s.image());
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let te = transport_error(&err);
    assert!(
        matches!(te.kind, TransportErrorKind::Stalled(d) if d == Duration::from_secs(1)),
        "{te}"
    );
    assert!(te.to_string().contains("no data for 1s"), "{te}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert!(body == s.data[..50_000]);
    assert_eq!(s.server.request_count(), 1, "a stall is not retried");
}

#[test]
fn stall_before_headers_is_reported_promptly() {
    let s = serve(1000);
    s.server.fault("image.bin", Fault::StallBeforeHeaders);
    let started = Instant::now();
    let err = transport(options()).fetch(&s.image()).err().unwrap();
    let elapsed = started.elapsed();
    assert!(matches!(err.kind, TransportErrorKind::Stalled(_)), "{err}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
}

#[test]
fn slow_but_live_transfer_outlasting_the_stall_timeout_succeeds() {
    let s = serve(24_000);
    // 12 pieces, 120 ms apart: ~1.4 s in total, far more than the 400 ms stall timeout.
    s.server.fault(
        "image.bin",
        Fault::Slow {
            bytes: 2_000,
            every: Duration::from_millis(120),
        },
    );
    let opts = HttpOptions {
        stall_timeout: Duration::from_millis(400),
        ..options()
    };
    let started = Instant::now();
    let body = fetch_ok(&transport(opts), &s.image());
    assert!(started.elapsed() > Duration::from_millis(800));
    assert!(body == s.data);
}

#[test]
fn a_dripping_file_fails_at_its_whole_file_limit() {
    let s = serve(2_000);
    // One byte every 20 ms: ~40 s for the file, and never a stall.
    let drip = Fault::Slow {
        bytes: 1,
        every: Duration::from_millis(20),
    };
    s.server.fault("image.bin", drip);
    let started = Instant::now();
    let mut body = Vec::new();
    let err = transport(options())
        .fetch_within(&s.image(), Duration::from_millis(700))
        .unwrap()
        .read_to_end(&mut body)
        .unwrap_err();
    let elapsed = started.elapsed();
    let te = transport_error(&err);
    assert!(
        matches!(te.kind, TransportErrorKind::TooSlow(d) if d == Duration::from_millis(700)),
        "{te}"
    );
    assert!(
        te.to_string().contains("did not arrive within 700ms"),
        "{te}"
    );
    assert!(elapsed >= Duration::from_millis(650), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert!(!body.is_empty() && body.len() < 100, "{}", body.len());
}

#[test]
fn a_silent_server_fails_at_the_whole_file_limit_when_it_is_below_the_stall_timeout() {
    let s = serve(2_000);
    s.server.fault("image.bin", Fault::StallBeforeHeaders);
    let started = Instant::now();
    let opts = HttpOptions {
        stall_timeout: Duration::from_secs(20),
        ..options()
    };
    let err = transport(opts)
        .fetch_within(&s.image(), Duration::from_millis(500))
        .err()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(matches!(err.kind, TransportErrorKind::TooSlow(_)), "{err}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn without_a_limit_a_dripping_file_only_has_the_stall_timeout() {
    let s = serve(60);
    s.server.fault(
        "image.bin",
        Fault::Slow {
            bytes: 1,
            every: Duration::from_millis(20),
        },
    );
    let body = fetch_ok(&transport(options()), &s.image());
    assert!(body == s.data);
}

#[test]
fn retries_on_503_then_succeeds() {
    let s = serve(5000);
    s.server.fault_times("image.bin", Fault::Status(503), 2);
    let body = fetch_ok(&transport(options()), &s.image());
    assert!(body == s.data);
    assert_eq!(s.server.request_count(), 3);
}

#[test]
fn retries_run_out_with_the_last_status() {
    let s = serve(5000);
    s.server.fault("image.bin", Fault::Status(503));
    let opts = HttpOptions {
        retries: 2,
        ..options()
    };
    let err = transport(opts).fetch(&s.image()).err().unwrap();
    assert!(
        matches!(err.kind, TransportErrorKind::HttpStatus(503)),
        "{err}"
    );
    assert_eq!(s.server.request_count(), 3, "one request and two retries");
}

#[test]
fn connection_closed_before_the_answer_is_retried() {
    // A raw server whose first connection is closed without an answer.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut served = 0;
        for (i, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            if i == 0 {
                drop(stream);
                continue;
            }
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                )
                .unwrap();
            served += 1;
            return (i + 1, served);
        }
        unreachable!()
    });
    let url = Url::parse(&format!("http://{addr}/x")).unwrap();
    let mut body = String::new();
    transport(options())
        .fetch(&url)
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert_eq!(body, "hello");
    assert_eq!(server.join().unwrap(), (2, 1));
}

#[test]
fn connection_refused_is_an_io_error_after_retries() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
    let err = transport(options()).fetch(&url).err().unwrap();
    assert!(matches!(err.kind, TransportErrorKind::Io(_)), "{err}");
}

#[test]
#[allow(clippy::naive_bytecount)]
fn endless_body_streams_without_buffering() {
    const LIMIT: usize = 50 * 1024 * 1024;
    let s = serve(10);
    s.server.fault("image.bin", Fault::Endless);
    let rss_before = rss_kib();
    // `fetch` returning at all proves the body is not read to its end first: it has none.
    let mut reader = transport(options()).fetch(&s.image()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let mut z_count = 0;
    while total < LIMIT {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "endless body ended after {total} bytes");
        z_count += buf[..n].iter().filter(|&&b| b == b'Z').count();
        total += n;
    }
    assert!(total >= LIMIT);
    assert!(z_count >= LIMIT - 100, "the fill is Z bytes");
    if let (Some(before), Some(after)) = (rss_before, rss_kib()) {
        let grown = after.saturating_sub(before);
        assert!(grown < 30 * 1024, "RSS grew by {grown} KiB reading 50 MiB");
    }
    drop(reader);
}

/// The resident set size of this process, from /proc (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn query_parameters_are_appended_to_every_request() {
    let s = serve(300_000);
    s.server.fault_times("image.bin", Fault::DropAfter(1000), 1);
    let opts = HttpOptions {
        query: vec![
            ("seed".into(), "1234".into()),
            ("version".into(), "1.2.3".into()),
        ],
        ..options()
    };
    let t = transport(opts);
    let mut with_query = s.image();
    with_query.set_query(Some("token=a%2Fb"));
    let body = fetch_ok(&t, &with_query);
    assert!(body == s.data);
    let _ = t.fetch(&url(&s.server, "missing.json")).err().unwrap();
    let queries: Vec<_> = s
        .server
        .requests()
        .into_iter()
        .map(|r| (r.path, r.query, r.range))
        .collect();
    assert_eq!(
        queries,
        [
            (
                "/image.bin".to_string(),
                Some("token=a%2Fb&seed=1234&version=1.2.3".to_string()),
                None
            ),
            (
                "/image.bin".to_string(),
                Some("token=a%2Fb&seed=1234&version=1.2.3".to_string()),
                Some("bytes=1000-".to_string())
            ),
            (
                "/missing.json".to_string(),
                Some("seed=1234&version=1.2.3".to_string()),
                None
            ),
        ]
    );
}

#[test]
fn https_proxy_option_routes_requests_through_the_proxy() {
    let (_proxy_dir, proxy) = proxy();
    let opts = HttpOptions {
        https_proxy: Some(proxy.url()),
        retries: 0,
        ..options()
    };
    let t = transport(opts);
    assert_eq!(t.proxy().https_proxy.as_deref(), Some(proxy.url().as_str()));
    let target = Url::parse("https://updates.example.invalid/metadata/1.root.json").unwrap();
    // The test proxy refuses to tunnel, so the fetch fails, but only after asking the proxy.
    let err = t.fetch(&target).err().unwrap();
    assert!(!matches!(err.kind, TransportErrorKind::NotFound), "{err}");
    let log = proxy.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].method, "CONNECT");
    assert_eq!(log[0].target, "updates.example.invalid:443");
}

#[test]
fn http_proxy_routes_plain_http_requests_through_the_proxy() {
    // The test server answers absolute-form requests from its own directory, as a forward
    // proxy with a cache would: the origin host does not exist.
    let s = serve(5_000);
    let resolved = ProxyConfig::resolve(&options(), |name| {
        (name == "http_proxy").then(|| s.server.url())
    });
    // `options()` reads no environment; resolving it from a real environment does.
    assert_eq!(resolved.http_proxy, None);
    let opts = HttpOptions {
        proxy_from_env: true,
        ..options()
    };
    let resolved =
        ProxyConfig::resolve(&opts, |name| (name == "http_proxy").then(|| s.server.url()));
    assert_eq!(
        resolved.http_proxy.as_deref(),
        Some(s.server.url().as_str())
    );
    assert_eq!(resolved.https_proxy, None);
    let t = HttpTransport::with_proxy(options(), resolved).unwrap();
    let target = Url::parse("http://updates.example.invalid/image.bin?x=1").unwrap();
    let body = fetch_ok(&t, &target);
    assert!(body == s.data);
    let log = s.server.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].method, "GET");
    assert_eq!(
        log[0].target,
        "http://updates.example.invalid/image.bin?x=1"
    );
}

#[test]
fn https_proxy_is_not_used_for_plain_http() {
    let (_proxy_dir, proxy) = proxy();
    let direct = serve(10);
    let t = HttpTransport::with_proxy(
        options(),
        ProxyConfig {
            https_proxy: Some(proxy.url()),
            http_proxy: None,
            no_proxy: Vec::new(),
        },
    )
    .unwrap();
    let body = fetch_ok(&t, &direct.image());
    assert!(body == direct.data);
    assert_eq!(proxy.connection_count(), 0);
}

#[test]
fn no_proxy_hosts_bypass_the_proxy() {
    let (_proxy_dir, proxy) = proxy();
    let direct = serve(10);
    let opts = HttpOptions {
        retries: 0,
        stall_timeout: Duration::from_millis(300),
        ..options()
    };
    let t = HttpTransport::with_proxy(
        opts,
        ProxyConfig {
            https_proxy: Some(proxy.url()),
            http_proxy: None,
            no_proxy: vec!["127.0.0.1".into()],
        },
    )
    .unwrap();
    // https to a plain-HTTP server fails the TLS handshake; what matters is where it went.
    let target = Url::parse(&format!("https://{}/image.bin", direct.server.addr())).unwrap();
    let _ = t.fetch(&target).err().unwrap();
    assert_eq!(proxy.connection_count(), 0, "went through the proxy");
    assert!(
        direct.server.connection_count() >= 1,
        "never reached the host"
    );
}

#[test]
fn served_directory_can_change_between_requests() {
    let s = serve(10);
    let t = transport(options());
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("image.bin"), b"replaced").unwrap();
    s.server.set_root(other.path());
    let body = fetch_ok(&t, &s.image());
    assert_eq!(body, b"replaced");
}

#[test]
fn unsupported_scheme_is_refused() {
    let err = transport(options())
        .fetch(&Url::parse("ftp://example.invalid/x").unwrap())
        .err()
        .unwrap();
    assert!(matches!(err.kind, TransportErrorKind::UnsupportedScheme(ref s) if s == "ftp"));
}

#[test]
fn a_slow_answer_within_the_stall_timeout_is_fine() {
    let s = serve(1000);
    s.server
        .fault_times("image.bin", Fault::Delay(Duration::from_millis(300)), 1);
    let started = Instant::now();
    let body = fetch_ok(&transport(options()), &s.image());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(body == s.data);
    assert_eq!(s.server.request_count(), 1);
}

#[test]
fn reads_after_a_failure_keep_failing() {
    let s = serve(100_000);
    s.server.set_range_support(false);
    s.server.fault_times("image.bin", Fault::DropAfter(10), 1);
    let mut reader = transport(options()).fetch(&s.image()).unwrap();
    let mut body = Vec::new();
    reader.read_to_end(&mut body).unwrap_err();
    let mut more = [0u8; 16];
    let again = reader.read(&mut more).unwrap_err();
    assert!(again.to_string().contains("dropped at byte 10"), "{again}");
    assert_eq!(body.len(), 10);
}

/// An async agent holds the blocking transport inside its runtime (through an `Updater` in an
/// `Arc`) and may build or drop it on a runtime thread: neither may panic. A fetch from inside
/// the runtime still belongs in `spawn_blocking`, which is what this checks too.
#[test]
fn the_transport_is_built_and_dropped_inside_an_async_runtime_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello").unwrap();
    let server = TestServer::serve_dir(dir.path()).unwrap();
    let url = Url::parse(&server.url_for("hello")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = runtime.block_on(async move {
        let transport = std::sync::Arc::new(HttpTransport::new(options()).unwrap());
        let fetching = std::sync::Arc::clone(&transport);
        let body = tokio::task::spawn_blocking(move || {
            let mut body = Vec::new();
            fetching
                .fetch(&url)
                .unwrap()
                .read_to_end(&mut body)
                .unwrap();
            body
        })
        .await
        .unwrap();
        drop(transport);
        body
    });
    assert_eq!(body, b"hello");
}

/// Issue 24 finding 8: proxy failures were reported against the repository URL and never named
/// the proxy. A dead `http_proxy`, a proxy's 407 and a refused CONNECT each name the proxy now,
/// and say what to check.
#[test]
fn proxy_failures_name_the_proxy() {
    let opts = HttpOptions {
        retries: 0,
        stall_timeout: Duration::from_secs(2),
        ..options()
    };
    let with_proxy = |http: Option<String>, https: Option<String>| {
        HttpTransport::with_proxy(
            opts.clone(),
            ProxyConfig {
                https_proxy: https,
                http_proxy: http,
                no_proxy: Vec::new(),
            },
        )
        .unwrap()
    };

    // A dead proxy: nothing listens on its port.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let plain = Url::parse("http://updates.example.invalid/metadata/timestamp.json").unwrap();
    let err = with_proxy(Some(dead.clone()), None)
        .fetch(&plain)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("proxy {dead}")) && text.contains("http_proxy"),
        "{text}"
    );

    // A proxy that wants credentials (407) for a plain-http request.
    let (_dir, auth) = proxy();
    auth.fault_all(Fault::Status(407));
    let err = with_proxy(Some(auth.url()), None)
        .fetch(&plain)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("proxy {}", auth.url()))
            && text.contains("407")
            && text.contains("USER:PASSWORD@"),
        "{text}"
    );

    // A proxy that refuses to open a tunnel (CONNECT answered 403) for an https repository.
    let (_dir, refusing) = proxy();
    let secure = Url::parse("https://updates.example.invalid/metadata/timestamp.json").unwrap();
    let err = with_proxy(None, Some(refusing.url()))
        .fetch(&secure)
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("proxy {}", refusing.url()))
            && text.contains("updates.example.invalid")
            && text.contains("https_proxy"),
        "{text}"
    );
    assert!(!matches!(err.kind, TransportErrorKind::NotFound), "{err}");
}
