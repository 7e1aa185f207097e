//! `http://` and `https://` transport over `reqwest`'s blocking client (rustls).

use super::{Deadline, Transport, TransportError, TransportErrorKind};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_RANGE, ETAG, HeaderValue, IF_RANGE, LAST_MODIFIED, RANGE};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Capped exponential backoff between retries: the n-th retry (0-based) waits a random time in
/// `[d/2, d]` with `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The (un-jittered) wait before the first retry.
    pub initial: Duration,
    /// The cap on the (un-jittered) wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let capped = self.initial.saturating_mul(factor).min(self.max);
        let nanos = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        Duration::from_nanos(half + fastrand::u64(..=nanos - half))
    }
}

/// Settings of an [`HttpTransport`]. Start from [`HttpOptions::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Give up when no data arrives for this long: while waiting for the response headers and
    /// between any two reads of the body. There is deliberately no limit on a whole transfer,
    /// so a large image over a slow but live link never fails for taking long. A stall is not
    /// retried. Default 30 s.
    pub stall_timeout: Duration,
    /// Limit on establishing a TCP (and TLS) connection. Default 10 s.
    pub connect_timeout: Duration,
    /// How many times a request is retried after a connection error or an HTTP 408, 429 or 5xx
    /// answer before the error is returned; also how many resume attempts in a row may fail to
    /// make progress after a dropped connection. Default 5.
    pub retries: u32,
    /// Upper bound on the resumptions of one transfer (each one a `Range` request after the
    /// connection dropped mid-body), however much progress each made. Default 100.
    pub max_resumes: u32,
    /// Waits between retries.
    pub backoff: Backoff,
    /// Proxy for `https://` URLs (e.g. `http://proxy.example:3128`). `None`: use the
    /// `HTTPS_PROXY` / `https_proxy` environment variables if [`Self::proxy_from_env`].
    pub https_proxy: Option<String>,
    /// Proxy for plain `http://` URLs. `None`: use the `HTTP_PROXY` / `http_proxy`
    /// environment variables if [`Self::proxy_from_env`].
    pub http_proxy: Option<String>,
    /// Hosts, domains (`example.com` matches its sub-domains) and IP ranges (`10.0.0.0/8`) to
    /// reach without the proxy; `*` for all. Empty: use `NO_PROXY` / `no_proxy` from the
    /// environment if [`Self::proxy_from_env`].
    pub no_proxy: Vec<String>,
    /// Whether unset proxy settings fall back to the environment variables. Default `true`.
    pub proxy_from_env: bool,
    /// Query parameters appended to every URL, in order, after any query the URL already has
    /// (updog sends `seed` and `version`, so servers can count hosts per wave and version).
    /// Parameters that belong to one operation (updog's `target` and `migrations`, once an
    /// update is chosen) go to a view of the transport made for that operation
    /// ([`HttpTransport::with_query`]), never into state shared with other operations.
    pub query: Vec<(String, String)>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 5,
            max_resumes: 100,
            backoff: Backoff::default(),
            https_proxy: None,
            http_proxy: None,
            no_proxy: Vec::new(),
            proxy_from_env: true,
            query: Vec::new(),
        }
    }
}

/// The proxy settings an [`HttpTransport`] uses, after falling back to the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy for `https://` URLs, if any.
    pub https_proxy: Option<String>,
    /// The proxy for `http://` URLs, if any.
    pub http_proxy: Option<String>,
    /// Hosts reached without a proxy.
    pub no_proxy: Vec<String>,
}

impl ProxyConfig {
    /// Resolves the settings from `options`, falling back (when `options.proxy_from_env`) to the
    /// variables `env` returns: `HTTPS_PROXY` then `https_proxy`, `HTTP_PROXY` then
    /// `http_proxy`, `NO_PROXY` then `no_proxy` (comma-separated). Empty values count as unset.
    /// Options win over the environment. Each scheme uses only its own proxy: an `http://`
    /// repository never goes through `HTTPS_PROXY`, nor an `https://` one through `HTTP_PROXY`.
    ///
    /// ```
    /// use tuf::transport::{HttpOptions, ProxyConfig};
    ///
    /// let env = |name: &str| match name {
    ///     "https_proxy" => Some("http://proxy.internal:3128".to_string()),
    ///     "HTTP_PROXY" => Some("http://plain-proxy.internal:8080".to_string()),
    ///     "NO_PROXY" => Some("localhost, .corp.example".to_string()),
    ///     _ => None,
    /// };
    /// let config = ProxyConfig::resolve(&HttpOptions::default(), env);
    /// assert_eq!(config.https_proxy.as_deref(), Some("http://proxy.internal:3128"));
    /// assert_eq!(config.http_proxy.as_deref(), Some("http://plain-proxy.internal:8080"));
    /// assert_eq!(config.no_proxy, ["localhost", ".corp.example"]);
    /// ```
    pub fn resolve(options: &HttpOptions, env: impl Fn(&str) -> Option<String>) -> Self {
        let env_var = |names: [&str; 2]| {
            if !options.proxy_from_env {
                return None;
            }
            names
                .iter()
                .filter_map(|n| env(n))
                .find(|v| !v.trim().is_empty())
        };
        let https_proxy = options
            .https_proxy
            .clone()
            .filter(|p| !p.trim().is_empty())
            .or_else(|| env_var(["HTTPS_PROXY", "https_proxy"]));
        let http_proxy = options
            .http_proxy
            .clone()
            .filter(|p| !p.trim().is_empty())
            .or_else(|| env_var(["HTTP_PROXY", "http_proxy"]));
        let no_proxy = if options.no_proxy.is_empty() {
            env_var(["NO_PROXY", "no_proxy"])
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            options.no_proxy.clone()
        };
        Self {
            https_proxy,
            http_proxy,
            no_proxy,
        }
    }

    /// The proxy a request for `url` goes through, if any: the scheme's own proxy, unless the
    /// host is in `no_proxy` (`*`; a domain, which also covers its subdomains, with or without
    /// a leading dot; an IP address; or an IP network `ADDR/BITS`).
    ///
    /// ```
    /// use tuf::transport::ProxyConfig;
    ///
    /// let config = ProxyConfig {
    ///     https_proxy: Some("http://proxy.internal:3128".into()),
    ///     http_proxy: None,
    ///     no_proxy: vec![".corp.example".into(), "10.0.0.0/8".into()],
    /// };
    /// let via = |u: &str| config.proxy_for(&url::Url::parse(u).unwrap()).map(str::to_string);
    /// assert_eq!(via("https://updates.example/x").as_deref(), Some("http://proxy.internal:3128"));
    /// assert_eq!(via("https://repo.corp.example/x"), None);
    /// assert_eq!(via("https://10.1.2.3/x"), None);
    /// assert_eq!(via("http://updates.example/x"), None);
    /// ```
    pub fn proxy_for(&self, url: &Url) -> Option<&str> {
        let proxy = match url.scheme() {
            "https" => self.https_proxy.as_deref(),
            "http" => self.http_proxy.as_deref(),
            _ => None,
        }?;
        let host = match url.host()? {
            url::Host::Domain(d) => HostName::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
            url::Host::Ipv4(ip) => HostName::Ip(ip.into()),
            url::Host::Ipv6(ip) => HostName::Ip(ip.into()),
        };
        let bypassed = self
            .no_proxy
            .iter()
            .any(|entry| no_proxy_matches(entry, &host));
        (!bypassed).then_some(proxy)
    }
}

/// A request's host, as `no_proxy` entries compare it.
enum HostName {
    Domain(String),
    Ip(std::net::IpAddr),
}

fn no_proxy_matches(entry: &str, host: &HostName) -> bool {
    let entry = entry.trim();
    if entry == "*" {
        return true;
    }
    match host {
        HostName::Ip(ip) => {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, bits.parse::<u32>().ok()),
                None => (entry, None),
            };
            let Ok(net) = addr.trim_matches(['[', ']']).parse::<std::net::IpAddr>() else {
                return false;
            };
            match (net, ip) {
                (std::net::IpAddr::V4(n), std::net::IpAddr::V4(h)) => {
                    prefix_matches(u32::from(n).into(), u32::from(*h).into(), 32, bits)
                }
                (std::net::IpAddr::V6(n), std::net::IpAddr::V6(h)) => {
                    prefix_matches(u128::from(n), u128::from(*h), 128, bits)
                }
                _ => false,
            }
        }
        HostName::Domain(host) => {
            let domain = entry.trim_start_matches('.').to_ascii_lowercase();
            !domain.is_empty()
                && (*host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        }
    }
}

/// Whether the first `bits` (all of `width` when `None`) of `net` and `host` agree.
fn prefix_matches(net: u128, host: u128, width: u32, bits: Option<u32>) -> bool {
    let bits = bits.unwrap_or(width).min(width);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (net >> shift) == (host >> shift)
}

/// Why an [`HttpTransport`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSetupError {
    /// The proxy setting is not a usable URL.
    #[error("invalid proxy {proxy:?}")]
    InvalidProxy {
        /// The proxy as configured.
        proxy: String,
        /// What reqwest said about it.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client (TLS configuration, runtime thread) could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Appends `params` to `url`'s query, after any query it already has, `application/x-www-form-
/// urlencoded` the way updog does (`?seed=1234&version=1.2.3`). With no params the URL is
/// returned unchanged (no dangling `?`).
///
/// ```
/// let url = url::Url::parse("https://repo.example/targets/root.img?token=a%2Fb").unwrap();
/// let params = [("seed".to_string(), "1234".to_string()), ("version".to_string(), "1.2.3".to_string())];
/// assert_eq!(
///     tuf::transport::append_query(&url, &params).as_str(),
///     "https://repo.example/targets/root.img?token=a%2Fb&seed=1234&version=1.2.3"
/// );
/// ```
pub fn append_query(url: &Url, params: &[(String, String)]) -> Url {
    let mut url = url.clone();
    if !params.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in params {
            pairs.append_pair(key, value);
        }
    }
    url
}

/// Fetches `http://` and `https://` URLs with streaming bodies, a stall timeout, retries with
/// backoff, resumption of dropped connections, proxies and query parameters ([`HttpOptions`]).
///
/// Status codes: 200 is success; 403, 404 and 410 are [`TransportErrorKind::NotFound`]; 408, 429
/// and 5xx are retried, then [`TransportErrorKind::HttpStatus`]; any other status is
/// [`TransportErrorKind::HttpStatus`] at once. Redirects are followed (up to 10).
///
/// When the connection drops in the middle of a body (an I/O error, or EOF before the announced
/// `Content-Length`), the reader asks again with `Range: bytes=<received>-` (and `If-Range` with
/// the first answer's strong `ETag` or `Last-Modified`, if any) and continues only if the server
/// answers `206` with a `Content-Range` starting exactly there and the same total length;
/// otherwise `read` fails with [`TransportErrorKind::ConnectionDropped`] naming the byte. The
/// reader never yields a byte twice or out of order.
///
/// Cloning is cheap and shares one connection pool. It wraps `reqwest`'s blocking client, which
/// runs its own runtime thread: create, use and drop it outside any async runtime.
///
/// ```no_run
/// use std::io::Read;
/// use std::time::Duration;
/// use tuf::transport::{HttpOptions, HttpTransport, Transport};
///
/// let transport = HttpTransport::new(HttpOptions {
///     stall_timeout: Duration::from_secs(20),
///     query: vec![("seed".into(), "1234".into()), ("version".into(), "1.2.3".into())],
///     ..HttpOptions::default()
/// })?;
/// // Requests https://updates.example/metadata/timestamp.json?seed=1234&version=1.2.3
/// let url = url::Url::parse("https://updates.example/metadata/timestamp.json")?;
/// let mut body = Vec::new();
/// transport.fetch(&url)?.take(1 << 20).read_to_end(&mut body)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpTransport {
    inner: Arc<Inner>,
    /// What this view appends to every URL ([`HttpOptions::query`] unless
    /// [`HttpTransport::with_query`] replaced it).
    query: Arc<[(String, String)]>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    options: HttpOptions,
    proxy: ProxyConfig,
}

/// Builds the client on a plain thread. reqwest's blocking client runs its own tokio runtime on
/// a thread of its own, and building it on a thread that is inside a tokio runtime panics
/// ("Cannot drop a runtime in a context where blocking is not allowed"): an async agent that
/// creates an `Updater` in its runtime would hit that. Dropping it there is fine (tested).
fn build_off_runtime(builder: reqwest::blocking::ClientBuilder) -> reqwest::Result<Client> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || builder.build())
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl HttpTransport {
    /// Creates the transport, resolving proxies from `options` and the process environment.
    pub fn new(options: HttpOptions) -> Result<Self, HttpSetupError> {
        let proxy = ProxyConfig::resolve(&options, |name| std::env::var(name).ok());
        Self::with_proxy(options, proxy)
    }

    /// Creates the transport with exactly the given proxy settings (the environment and the
    /// proxy fields of `options` are not consulted).
    pub fn with_proxy(options: HttpOptions, proxy: ProxyConfig) -> Result<Self, HttpSetupError> {
        // The blocking client's `timeout` bounds the wait for the response head and each
        // single read of the body (a fresh deadline per read), never the whole transfer: that
        // is exactly a stall timeout.
        let mut builder = Client::builder()
            .timeout(options.stall_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("updog/", env!("CARGO_PKG_VERSION")))
            // Only our resolved settings, not reqwest's own reading of the environment.
            .no_proxy();
        type ForScheme = fn(&str) -> reqwest::Result<reqwest::Proxy>;
        let schemes: [(&Option<String>, ForScheme); 2] = [
            (&proxy.https_proxy, |u| reqwest::Proxy::https(u)),
            (&proxy.http_proxy, |u| reqwest::Proxy::http(u)),
        ];
        for (setting, for_scheme) in schemes {
            let Some(proxy_url) = setting else { continue };
            let no_proxy = reqwest::NoProxy::from_string(&proxy.no_proxy.join(","));
            let p = for_scheme(proxy_url).map_err(|source| HttpSetupError::InvalidProxy {
                proxy: proxy_url.clone(),
                source,
            })?;
            builder = builder.proxy(p.no_proxy(no_proxy));
        }
        let client = build_off_runtime(builder).map_err(HttpSetupError::Client)?;
        Ok(Self {
            query: options.query.clone().into(),
            inner: Arc::new(Inner {
                client,
                options,
                proxy,
            }),
        })
    }

    /// A view of this transport for one operation: the same client, connections, proxies,
    /// timeouts and retries, appending `query` (in order) to every URL instead of
    /// [`HttpOptions::query`]. Nothing is shared but the client: an operation's values never
    /// reach the requests of another that runs at the same time, and are gone with the view.
    ///
    /// ```
    /// use tuf::transport::{HttpOptions, HttpTransport};
    ///
    /// let all = HttpTransport::new(HttpOptions {
    ///     query: vec![("seed".into(), "7".into())],
    ///     ..HttpOptions::default()
    /// })?;
    /// let staging = all.with_query(vec![
    ///     ("seed".into(), "7".into()),
    ///     ("target".into(), "1.3.0".into()),
    /// ]);
    /// assert_eq!(all.query(), [("seed".to_string(), "7".to_string())]);
    /// assert_eq!(staging.query().len(), 2);
    /// # Ok::<(), tuf::transport::HttpSetupError>(())
    /// ```
    #[must_use]
    pub fn with_query(&self, query: Vec<(String, String)>) -> HttpTransport {
        HttpTransport {
            inner: Arc::clone(&self.inner),
            query: query.into(),
        }
    }

    /// The query parameters this view appends to every URL.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The options this transport was built with.
    pub fn options(&self) -> &HttpOptions {
        &self.inner.options
    }

    /// The proxy settings in effect.
    pub fn proxy(&self) -> &ProxyConfig {
        &self.inner.proxy
    }
}

impl Transport for HttpTransport {
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
        self.open(url, None, 0)
    }

    /// The limit covers connecting, retries, the response head, the body and resumptions: a
    /// request still waiting when it passes is stopped, and a read after it fails.
    fn fetch_within(
        &self,
        url: &Url,
        limit: Duration,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        self.open(url, Some(Deadline::after(limit)), 0)
    }

    /// Asks with `Range: bytes=<from>-` and takes a `206` whose `Content-Range` starts there; a
    /// server that ignores ranges (`200`, the whole file) is read past the first `from` bytes
    /// instead. Dropped connections resume as with [`Transport::fetch`].
    fn fetch_from(&self, url: &Url, from: u64) -> Result<Box<dyn Read + Send>, TransportError> {
        self.open(url, None, from)
    }
}

impl HttpTransport {
    fn open(
        &self,
        url: &Url,
        deadline: Option<Deadline>,
        from: u64,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransportError::new(
                url,
                TransportErrorKind::UnsupportedScheme(url.scheme().to_string()),
            ));
        }
        let full = append_query(url, &self.query);
        let range = (from > 0).then_some((from, None));
        let response = self
            .inner
            .send(&full, range, deadline.as_ref())
            .map_err(|kind| TransportError::new(url, kind))?;
        // Where the body starts in the file, and the file's length.
        let (pos, total) = match response.status() {
            StatusCode::OK => (0, response.content_length()),
            StatusCode::PARTIAL_CONTENT if from > 0 => {
                match rest_from(content_range(&response), from) {
                    Some((_, _, total)) => (from, total),
                    None => {
                        return Err(TransportError::new(
                            url,
                            TransportErrorKind::Io(io::Error::other(format!(
                                "the server answered `Range: bytes={from}-` with Content-Range \
                                 {:?}, which does not start there",
                                content_range(&response)
                            ))),
                        ));
                    }
                }
            }
            // Nothing from there on: `from` is the file's length (RFC 9110 has no empty range).
            StatusCode::RANGE_NOT_SATISFIABLE
                if content_range(&response)
                    .trim()
                    .strip_prefix("bytes */")
                    .and_then(|len| len.parse::<u64>().ok())
                    == Some(from) =>
            {
                return Ok(Box::new(io::empty()));
            }
            status => {
                return Err(TransportError::new(
                    url,
                    TransportErrorKind::HttpStatus(status.as_u16()),
                ));
            }
        };
        // Signed lengths and hashes are over the file as published; a compressed body (a CDN
        // that compresses on the fly, though we never ask for it) would only fail its hash.
        if let Some(encoding) = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|v| !v.is_empty() && v != "identity")
        {
            return Err(TransportError::new(
                url,
                TransportErrorKind::Io(io::Error::other(format!(
                    "the server sent the file with Content-Encoding: {encoding}, which updog does \
                     not undo (it must be served as published: turn off compression for this path)"
                ))),
            ));
        }
        let validator = response
            .headers()
            .get(ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| response.headers().get(LAST_MODIFIED))
            .cloned();
        let mut reader = HttpReader {
            inner: Arc::clone(&self.inner),
            url: url.clone(),
            full,
            total,
            response: Some(response),
            validator,
            pos,
            resumes: 0,
            stuck_drops: 0,
            last_drop_at: None,
            failed: None,
            deadline,
        };
        if reader.pos < from {
            log::debug!("{url}: the server ignored `Range: bytes={from}-`; reading past them");
            super::skip(url, &mut reader, from)?;
        }
        Ok(Box::new(reader))
    }
}

impl Inner {
    /// Sends a GET (from byte `from` with `Range` when given), retrying connection errors and
    /// retryable statuses with backoff. Returns any 2xx response, and a 416 to a `Range`; the
    /// caller checks it.
    ///
    /// With a `deadline`, no attempt starts after it, and an attempt that would wait past it
    /// gets a request timeout that ends there (reqwest applies it to the whole response,
    /// body included).
    fn send(
        &self,
        url: &Url,
        from: Option<(u64, Option<&HeaderValue>)>,
        deadline: Option<&Deadline>,
    ) -> Result<Response, TransportErrorKind> {
        let opts = &self.options;
        let mut attempt = 0;
        loop {
            let mut request = self.client.get(url.clone());
            if let Some(deadline) = deadline {
                let Some(left) = deadline.remaining() else {
                    return Err(deadline.error(url).kind);
                };
                if left < opts.stall_timeout {
                    request = request.timeout(left);
                }
            }
            if let Some((from, validator)) = from {
                request = request.header(RANGE, format!("bytes={from}-"));
                if let Some(v) = validator {
                    request = request.header(IF_RANGE, v.clone());
                }
            }
            match from {
                Some((from, _)) => log::debug!("GET {url} from byte {from}"),
                None => log::debug!("GET {url}"),
            }
            let failure = match request.send() {
                Ok(response) => {
                    let status = response.status();
                    // A range past the end: the caller tells the end of the file from it.
                    if status.is_success()
                        || (status == StatusCode::RANGE_NOT_SATISFIABLE && from.is_some())
                    {
                        return Ok(response);
                    }
                    let code = status.as_u16();
                    if let (407, Some(proxy)) = (code, self.proxy.proxy_for(url)) {
                        return Err(proxy_wants_credentials(proxy, url));
                    }
                    match code {
                        403 | 404 | 410 => return Err(TransportErrorKind::NotFound),
                        // reqwest follows HTTP(S) redirects itself; one it hands back points
                        // elsewhere (`file://`, ...), which a repository may not do.
                        300..=399 => return Err(redirect_refused(&response)),
                        408 | 429 | 500..=599 => TransportErrorKind::HttpStatus(code),
                        _ => return Err(TransportErrorKind::HttpStatus(code)),
                    }
                }
                // Connection failures (a connect timeout included) are retried.
                // A certificate the server presents will not change on a retry.
                Err(e) if tls_error(&e).is_some() => {
                    return Err(TransportErrorKind::Io(request_error(
                        &e,
                        url,
                        self.proxy.proxy_for(url),
                    )));
                }
                Err(e) if e.is_connect() => {
                    TransportErrorKind::Io(request_error(&e, url, self.proxy.proxy_for(url)))
                }
                Err(e) if e.is_timeout() => {
                    return Err(match deadline {
                        Some(d) if d.remaining().is_none() => d.error(url).kind,
                        _ => TransportErrorKind::Stalled(opts.stall_timeout),
                    });
                }
                Err(e) if e.is_builder() || e.is_redirect() => {
                    return Err(TransportErrorKind::Io(request_error(
                        &e,
                        url,
                        self.proxy.proxy_for(url),
                    )));
                }
                Err(e) => TransportErrorKind::Io(request_error(&e, url, self.proxy.proxy_for(url))),
            };
            if attempt >= opts.retries {
                return Err(failure);
            }
            let mut wait = opts.backoff.delay(attempt);
            if let Some(d) = deadline {
                wait = wait.min(d.remaining().unwrap_or_default());
            }
            log::warn!(
                "{url}: {failure}; retry {} of {} in {:.1} s",
                attempt + 1,
                opts.retries,
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
            attempt += 1;
        }
    }
}

/// The body of one file, resuming dropped connections with `Range` requests.
struct HttpReader {
    inner: Arc<Inner>,
    /// The URL as the caller gave it (errors name this one).
    url: Url,
    /// The URL with the query parameters appended (requests go here).
    full: Url,
    response: Option<Response>,
    /// The file's full length, if the server announced it.
    total: Option<u64>,
    /// `If-Range` value for resumption.
    validator: Option<HeaderValue>,
    /// Body bytes yielded so far.
    pos: u64,
    resumes: u32,
    /// Drops in a row at the same position.
    stuck_drops: u32,
    last_drop_at: Option<u64>,
    /// The error that ended this transfer, repeated by later reads.
    failed: Option<String>,
    /// The whole-file time limit, if any ([`Transport::fetch_within`]).
    deadline: Option<Deadline>,
}

/// A failed request as one line that says why: reqwest's own text only repeats the URL (which
/// [`TransportError`] names already); the innermost cause says what happened ("Connection
/// refused", a DNS failure). A TLS failure says so and names the host.
fn request_error(e: &reqwest::Error, url: &Url, proxy: Option<&str>) -> io::Error {
    if let Some(tls) = tls_error(e) {
        let host = url.host_str().unwrap_or("the server");
        return io::Error::other(format!("TLS with {host} failed: {}", tls_reason(tls, host)));
    }
    if let (Some(proxy), true) = (proxy, e.is_connect()) {
        return proxy_connect_error(e, url, proxy);
    }
    let mut cause = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let text = match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => e.to_string(),
    };
    // A failure to connect has its own kind, so callers can say "the server is unreachable"
    // rather than blame the file they asked for.
    if e.is_connect() {
        io::Error::new(io::ErrorKind::NotConnected, text)
    } else {
        io::Error::other(text)
    }
}

/// The setting that names the proxy for `url`'s scheme (a key of updog.toml and an
/// environment variable alike).
fn proxy_setting(url: &Url) -> &'static str {
    if url.scheme() == "https" {
        "https_proxy"
    } else {
        "http_proxy"
    }
}

/// A failure to connect while a proxy is in the way: to the proxy itself, or a tunnel the
/// proxy would not open. Either way the proxy is named, not only the repository.
fn proxy_connect_error(e: &reqwest::Error, url: &Url, proxy: &str) -> io::Error {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let cause = causes.last().cloned().unwrap_or_else(|| e.to_string());
    let setting = proxy_setting(url);
    let target = format!(
        "{}:{}",
        url.host_str().unwrap_or("the server"),
        url.port_or_known_default().unwrap_or(443)
    );
    let all = causes.join(": ").to_ascii_lowercase();
    let text = if all.contains("proxy authentication") || all.contains("407") {
        format!(
            "the proxy {proxy} asks for credentials (HTTP 407) before it opens a tunnel to \
             {target}: give them in the proxy URL, http://USER:PASSWORD@HOST:PORT ({setting})"
        )
    } else if all.contains("tunnel") {
        format!(
            "the proxy {proxy} refused to open a tunnel to {target} ({cause}): check that it \
             allows CONNECT to that host and port, or list the host in no_proxy ({setting})"
        )
    } else {
        format!(
            "cannot connect to the proxy {proxy} ({cause}): check {setting} ({}), or list {} \
             in no_proxy",
            if setting == "https_proxy" {
                "updog.toml or the environment"
            } else {
                "the environment"
            },
            url.host_str().unwrap_or("the host")
        )
    };
    io::Error::new(io::ErrorKind::NotConnected, text)
}

/// A plain-http request the proxy answered with 407.
fn proxy_wants_credentials(proxy: &str, url: &Url) -> TransportErrorKind {
    TransportErrorKind::Io(io::Error::other(format!(
        "the proxy {proxy} asks for credentials (HTTP 407 Proxy Authentication Required): give \
         them in the proxy URL, http://USER:PASSWORD@HOST:PORT ({})",
        proxy_setting(url)
    )))
}

/// A redirect that reqwest did not follow, named with its target.
fn redirect_refused(response: &Response) -> TransportErrorKind {
    let code = response.status().as_u16();
    match response.headers().get(reqwest::header::LOCATION) {
        Some(target) => TransportErrorKind::Io(io::Error::other(format!(
            "the server redirected (HTTP {code}) to {}; refused: a repository may only redirect \
             to http:// or https:// URLs",
            String::from_utf8_lossy(target.as_bytes())
        ))),
        None => TransportErrorKind::HttpStatus(code),
    }
}

/// The rustls error somewhere in `e`'s chain of causes, also inside (nested) I/O errors, whose
/// `source` skips the error they wrap.
fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            if let Some(tls) = find(inner) {
                return Some(tls);
            }
        }
        e.source().and_then(find)
    }
    std::error::Error::source(e).and_then(find)
}

/// Why a TLS connection to `host` failed, in an operator's words.
fn tls_reason(e: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("its certificate is not valid for the name {host}")
            }
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired".to_owned(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "its certificate is not valid yet (check the clock)".to_owned()
            }
            C::UnknownIssuer => "its certificate is not issued by a trusted certificate \
                                 authority (the system store, or SSL_CERT_FILE / SSL_CERT_DIR)"
                .to_owned(),
            C::Revoked => "its certificate is revoked".to_owned(),
            other => format!("its certificate is not acceptable ({other:?})"),
        },
        other => other.to_string(),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

impl HttpReader {
    fn fail(&mut self, kind: TransportErrorKind) -> io::Error {
        let err = TransportError::new(&self.url, kind);
        self.failed = Some(err.to_string());
        self.response = None;
        err.into_io()
    }

    fn dropped(&mut self, detail: String) -> io::Error {
        let at = self.pos;
        self.fail(TransportErrorKind::ConnectionDropped { at, detail })
    }

    /// Asks for the rest of the body after a drop; `Err` is the error to return from `read`.
    fn resume(&mut self, cause: &str) -> Result<Response, io::Error> {
        let opts = &self.inner.options;
        if self.last_drop_at == Some(self.pos) {
            self.stuck_drops += 1;
        } else {
            self.stuck_drops = 1;
        }
        self.last_drop_at = Some(self.pos);
        if self.stuck_drops > opts.retries.max(1) || self.resumes >= opts.max_resumes {
            let detail = format!("{cause}; gave up after {} resume attempts", self.resumes);
            return Err(self.dropped(detail));
        }
        self.resumes += 1;
        log::warn!(
            "{}: {cause} at byte {}; resuming with a Range request",
            self.full,
            self.pos
        );
        let inner = Arc::clone(&self.inner);
        let deadline = self.deadline;
        let from = Some((self.pos, self.validator.as_ref()));
        let response = match inner.send(&self.full, from, deadline.as_ref()) {
            Ok(r) => r,
            Err(kind @ (TransportErrorKind::Stalled(_) | TransportErrorKind::TooSlow(_))) => {
                return Err(self.fail(kind));
            }
            Err(kind) => {
                let detail = format!("{cause}; resuming failed: {kind}");
                return Err(self.dropped(detail));
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            let detail = format!(
                "{cause}; the server cannot resume (it answered 200 with the whole file to \
                 `Range: bytes={}-`)",
                self.pos
            );
            return Err(self.dropped(detail));
        }
        if status != StatusCode::PARTIAL_CONTENT {
            let detail = format!("{cause}; resuming failed: server answered HTTP {status}");
            return Err(self.dropped(detail));
        }
        let content_range = content_range(&response).to_string();
        match rest_from(&content_range, self.pos) {
            Some((_, _, total))
                if self.total.is_none() || total.is_none() || self.total == total =>
            {
                if self.total.is_none() {
                    self.total = total;
                }
                Ok(response)
            }
            _ => {
                let detail = format!(
                    "{cause}; the server answered `Range: bytes={}-` with Content-Range \
                     {content_range:?}, which does not continue the file",
                    self.pos
                );
                Err(self.dropped(detail))
            }
        }
    }
}

/// A response's `Content-Range` header ("" when it has none).
fn content_range(response: &Response) -> &str {
    response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `Content-Range` `value` parsed (start, end, the file's length when given), if it covers the
/// file from byte `from` to its end.
fn rest_from(value: &str, from: u64) -> Option<(u64, u64, Option<u64>)> {
    parse_content_range(value).filter(|&(start, end, total)| {
        start == from && total.is_none_or(|t| end.checked_add(1) == Some(t))
    })
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end).then_some((start, end, total))
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(response) = self.response.as_mut() else {
                let msg = self
                    .failed
                    .clone()
                    .unwrap_or_else(|| format!("transfer of {} already failed", self.url));
                return Err(io::Error::other(msg));
            };
            if let Some(d) = self.deadline.filter(|d| d.remaining().is_none()) {
                return Err(self.fail(d.error(&self.url).kind));
            }
            let cause = match response.read(buf) {
                Ok(0) => match self.total {
                    Some(total) if self.pos < total => format!(
                        "the server closed the connection after {} of {total} bytes",
                        self.pos
                    ),
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    let kind = match self.deadline {
                        Some(d) if d.remaining().is_none() => d.error(&self.url).kind,
                        _ => TransportErrorKind::Stalled(self.inner.options.stall_timeout),
                    };
                    return Err(self.fail(kind));
                }
                Err(e) => e.to_string(),
            };
            self.response = None;
            let response = self.resume(&cause)?;
            self.response = Some(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d40 = b.delay(40);
            assert!(d40 >= Duration::from_millis(500) && d40 <= Duration::from_secs(1));
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| b.delay(2)).collect();
        assert!(distinct.len() > 1, "no jitter");
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn proxy_options_win_over_environment() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://upper:1".to_string()),
            "https_proxy" => Some("http://lower:1".to_string()),
            "no_proxy" => Some("a,b".to_string()),
            _ => None,
        };
        let from_env = ProxyConfig::resolve(&HttpOptions::default(), env);
        assert_eq!(from_env.https_proxy.as_deref(), Some("http://upper:1"));
        assert_eq!(
            from_env.http_proxy, None,
            "HTTPS_PROXY is not used for http://"
        );
        assert_eq!(from_env.no_proxy, ["a", "b"]);

        let opts = HttpOptions {
            https_proxy: Some("http://configured:2".into()),
            no_proxy: vec!["c".into()],
            ..HttpOptions::default()
        };
        let configured = ProxyConfig::resolve(&opts, env);
        assert_eq!(
            configured.https_proxy.as_deref(),
            Some("http://configured:2")
        );
        assert_eq!(configured.no_proxy, ["c"]);

        let no_env = HttpOptions {
            proxy_from_env: false,
            ..HttpOptions::default()
        };
        assert_eq!(ProxyConfig::resolve(&no_env, env), ProxyConfig::default());

        let plain = |name: &str| match name {
            "HTTP_PROXY" => Some(" ".to_string()),
            "http_proxy" => Some("http://lower-plain:3".to_string()),
            _ => None,
        };
        let from_env = ProxyConfig::resolve(&HttpOptions::default(), plain);
        assert_eq!(from_env.http_proxy.as_deref(), Some("http://lower-plain:3"));
        assert_eq!(
            from_env.https_proxy, None,
            "HTTP_PROXY is not used for https://"
        );
        let configured = HttpOptions {
            http_proxy: Some("http://configured-plain:4".into()),
            ..HttpOptions::default()
        };
        assert_eq!(
            ProxyConfig::resolve(&configured, plain)
                .http_proxy
                .as_deref(),
            Some("http://configured-plain:4")
        );

        let blank = |name: &str| (name == "HTTPS_PROXY").then(|| " ".to_string());
        assert_eq!(
            ProxyConfig::resolve(&HttpOptions::default(), blank),
            ProxyConfig::default()
        );
    }

    #[test]
    fn query_is_appended_after_existing_one() {
        let url = Url::parse("http://h/a?x=1").unwrap();
        let params = vec![("seed".to_string(), "7".to_string())];
        assert_eq!(
            append_query(&url, &params).as_str(),
            "http://h/a?x=1&seed=7"
        );
        assert_eq!(append_query(&url, &[]).as_str(), "http://h/a?x=1");
        let plain = Url::parse("http://h/a").unwrap();
        assert_eq!(append_query(&plain, &[]).as_str(), "http://h/a");
        let odd = vec![("v".to_string(), "1.2.3 &=".to_string())];
        assert_eq!(
            append_query(&plain, &odd).as_str(),
            "http://h/a?v=1.2.3+%26%3D"
        );
    }
}
