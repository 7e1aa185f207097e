//! End-to-end over the network paths an operator configures: HTTPS against a loopback TLS server
//! whose certificate comes from a CA made by the test and trusted through `SSL_CERT_FILE`, and
//! plain HTTP through a loopback forward proxy named by `HTTP_PROXY` / `http_proxy`. The real
//! `updog` binary, a signed repository, a GPT disk image.

use std::path::PathBuf;
use std::process::Output;

use bootpart::SetId;
use e2e_tests::{Host, RepoSpec, describe};
use fixtures::disk::PartKind;
use fixtures::http::TestServer;
use fixtures::tls::{TestCa, Validity};

const OK: i32 = 0;
const FAILURE: i32 = 1;

fn two_releases() -> RepoSpec {
    RepoSpec::two_releases()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A host whose repository is served over HTTPS by a server presenting `identity`, and the CA
/// file the client is told to trust.
struct HttpsHost {
    host: Host,
    server: TestServer,
    ca_file: PathBuf,
}

impl HttpsHost {
    fn new(trusted: &TestCa, presented: &fixtures::tls::ServerIdentity) -> Self {
        let mut host = Host::new(&two_releases(), "1.0.0");
        let server = TestServer::serve_dir_tls(&host.repo.dir, presented.server_config()).unwrap();
        let ca_file = host.dir.path().join("test-ca.pem");
        trusted.write_pem(&ca_file);
        host.configure(&format!(
            "metadata_base_url = \"{}\"\ntargets_base_url = \"{}\"\nretries = 1",
            server.url_for(host.repo.metadata_path),
            server.url_for(host.repo.targets_path),
        ));
        Self {
            host,
            server,
            ca_file,
        }
    }

    fn updog(&self, args: &[&str]) -> Output {
        self.host
            .updog_cmd()
            .args(args)
            // The certificate store rustls-native-certs reads instead of the system's.
            .env("SSL_CERT_FILE", &self.ca_file)
            .env_remove("SSL_CERT_DIR")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .expect("running updog")
    }
}

#[test]
fn a_full_update_over_https_with_a_ca_trusted_through_ssl_cert_file() {
    let ca = TestCa::new("updog e2e CA");
    let h = HttpsHost::new(&ca, &ca.issue(&["localhost"], Validity::Current));
    assert!(h.server.url().starts_with("https://localhost:"));

    let out = h.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let update: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(update["version"], "1.1.0");

    let out = h.updog(&["update", "--reboot"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let spec = two_releases();
    for kind in [PartKind::Boot, PartKind::Root, PartKind::Hash] {
        let want = spec.releases[1].image(kind);
        assert!(
            h.host.partition_bytes(kind, SetId::B, want.len()) == want,
            "{kind:?} of set B differs from the release"
        );
    }
    assert_eq!(h.host.signpost().next_boot(), Some(SetId::B));
    assert_eq!(h.host.reboot_calls(), ["reboot now"]);
    // Everything went over TLS: the plain server behind the TLS front saw every request, and
    // nothing reached the plain HTTP server the host was first configured with.
    assert!(
        h.server
            .requests()
            .iter()
            .any(|r| r.path.ends_with("timestamp.json"))
    );
    assert_eq!(h.host.server.request_count(), 0);
}

/// Runs `check-update` and expects exit 1 with one line on stderr naming TLS and the host, plus
/// `why`.
fn refused_in_one_line(h: &HttpsHost, why: &str) {
    let out = h.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    for needle in ["TLS", "localhost", why] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    // The server's certificate was refused during the handshake: no request was made.
    assert_eq!(h.server.request_count(), 0, "{err}");
}

#[test]
fn a_certificate_for_another_name_is_refused_in_one_line() {
    let ca = TestCa::new("updog e2e CA");
    let h = HttpsHost::new(
        &ca,
        &ca.issue(&["updates.other.example"], Validity::Current),
    );
    refused_in_one_line(&h, "not valid for the name localhost");
}

#[test]
fn an_expired_certificate_is_refused_in_one_line() {
    let ca = TestCa::new("updog e2e CA");
    let h = HttpsHost::new(&ca, &ca.issue(&["localhost"], Validity::Expired));
    refused_in_one_line(&h, "expired");
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused_in_one_line() {
    let trusted = TestCa::new("updog e2e CA");
    let other = TestCa::new("someone else's CA");
    let h = HttpsHost::new(&trusted, &other.issue(&["localhost"], Validity::Current));
    refused_in_one_line(&h, "not issued by a trusted certificate authority");
}

#[test]
fn plain_http_repositories_go_through_http_proxy() {
    for var in ["HTTP_PROXY", "http_proxy"] {
        let mut host = Host::new(&two_releases(), "1.0.0");
        // The proxy serves the repository by path, as a caching forward proxy would; the
        // origin host does not exist, so only the proxy can answer.
        let proxy = TestServer::serve_dir(&host.repo.dir).unwrap();
        host.configure(
            "metadata_base_url = \"http://updates.example.invalid/metadata/\"\n\
             targets_base_url = \"http://updates.example.invalid/targets/\"\nretries = 0",
        );
        let out = host
            .updog_cmd()
            .args(["check-update", "--json"])
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env(var, proxy.url())
            .output()
            .unwrap();
        assert_eq!(code(&out), OK, "{var}: {}", describe(&out));
        let update: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(update["version"], "1.1.0");
        let log = proxy.requests();
        assert!(
            log.iter().any(|r| r
                .target
                .starts_with("http://updates.example.invalid/metadata/")),
            "{var}: {log:?}"
        );
        assert!(
            log.iter().all(|r| r.method == "GET"),
            "{var}: no CONNECT for plain http: {log:?}"
        );
    }
}

#[test]
fn no_proxy_keeps_a_plain_http_repository_off_http_proxy() {
    let host = Host::new(&two_releases(), "1.0.0");
    let proxy_dir = tempfile::tempdir().unwrap();
    let proxy = TestServer::serve_dir(proxy_dir.path()).unwrap();
    let out = host
        .updog_cmd()
        .args(["check-update"])
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(proxy.connection_count(), 0);
    assert!(host.server.request_count() > 0);
}
