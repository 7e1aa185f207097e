//! Transports: how bytes of a repository (metadata and targets) reach the client.
//!
//! The TUF client only sees the [`Transport`] trait, so the same verification code runs over
//! `file://` (an offline bundle on a USB stick) and `http(s)://`.
//!
//! - [`FileTransport`]: `file://` URLs; a missing file is [`TransportErrorKind::NotFound`].
//! - [`HttpTransport`]: `http://` and `https://` through `reqwest` (rustls), streaming, with a
//!   stall timeout instead of a whole-request timeout, retries with capped exponential backoff
//!   and jitter, resumption of dropped connections with `Range`, proxies from options or the
//!   environment (`HTTPS_PROXY` for `https://`, `HTTP_PROXY` for `http://`, `NO_PROXY`), and
//!   query parameters appended to every URL (see [`HttpOptions`]). Server certificates are
//!   checked against the host's certificate store (rustls-native-certs: the system CA bundle,
//!   or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), not a bundled list; a certificate failure
//!   is one line naming TLS and the host, and is not retried.
//! - [`AnyTransport`]: picks one of the two by the URL's scheme.
//!
//! # Errors while reading
//!
//! Failures after `fetch` returned surface as [`std::io::Error`]s from `read`; their inner error
//! is a [`TransportError`] (get it with [`TransportError::from_io`]), so a caller can tell a
//! stall ([`TransportErrorKind::Stalled`], io kind `TimedOut`) from a dropped connection that
//! could not be resumed ([`TransportErrorKind::ConnectionDropped`]).

mod file;
mod http;

pub use file::FileTransport;
pub use http::{Backoff, HttpOptions, HttpSetupError, HttpTransport, ProxyConfig, append_query};

use std::io::{self, Read};
use std::time::{Duration, Instant};
use url::Url;

/// A source of repository files.
///
/// Implementations stream: `fetch` returns as soon as the response starts, and the returned
/// reader yields the body as it arrives. Length caps and hash checks are the caller's job (the
/// TUF client wraps every stream in a bounded, verifying reader); a transport may resume a
/// dropped connection internally, but must never yield bytes out of order or twice.
pub trait Transport: Send + Sync {
    /// Opens `url` for reading from its first byte.
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError>;

    /// Like [`Transport::fetch`], but the whole file must arrive within `limit` from now
    /// (connecting, retries and resumptions included); a read after that fails with
    /// [`TransportErrorKind::TooSlow`]. The TUF client uses it for metadata, whose size is
    /// capped, so a server that drips bytes cannot hold the client forever; images use
    /// [`Transport::fetch`] and only the stall timeout.
    ///
    /// The provided implementation checks the limit after each read of the stream `fetch`
    /// returns; [`HttpTransport`] also stops a request that is waiting when the limit passes.
    fn fetch_within(
        &self,
        url: &Url,
        limit: Duration,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        let deadline = Deadline::after(limit);
        let inner = self.fetch(url)?;
        Ok(Box::new(DeadlineReader {
            url: url.clone(),
            inner,
            deadline,
        }))
    }

    /// Opens `url` for reading from byte `from` on: a run that resumes a download it was
    /// stopped in the middle of asks only for the rest.
    ///
    /// The provided implementation reads the first `from` bytes of [`Transport::fetch`] and
    /// drops them (correct, but they cross the wire); [`HttpTransport`] asks with
    /// `Range: bytes=<from>-`, and [`FileTransport`] seeks. A file shorter than `from` fails
    /// with an [`io::ErrorKind::UnexpectedEof`] error.
    fn fetch_from(&self, url: &Url, from: u64) -> Result<Box<dyn Read + Send>, TransportError> {
        let mut inner = self.fetch(url)?;
        skip(url, &mut inner, from)?;
        Ok(inner)
    }
}

/// Reads and drops the first `count` bytes of `inner`, the body of `url`.
pub(crate) fn skip(url: &Url, inner: &mut dyn Read, count: u64) -> Result<(), TransportError> {
    let skipped = io::copy(&mut inner.take(count), &mut io::sink())
        .map_err(|e| TransportError::new(url, TransportErrorKind::Io(e)))?;
    if skipped < count {
        return Err(TransportError::new(
            url,
            TransportErrorKind::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends at byte {skipped}, before byte {count} to read from"),
            )),
        ));
    }
    Ok(())
}

/// A shared or boxed transport is a transport: every method is forwarded, so a transport's own
/// [`Transport::fetch_within`] and [`Transport::fetch_from`] are kept behind the pointer.
macro_rules! forward_transport {
    ($($pointer:ty),+) => {$(
        impl<T: Transport + ?Sized> Transport for $pointer {
            fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
                (**self).fetch(url)
            }

            fn fetch_within(
                &self,
                url: &Url,
                limit: Duration,
            ) -> Result<Box<dyn Read + Send>, TransportError> {
                (**self).fetch_within(url, limit)
            }

            fn fetch_from(
                &self,
                url: &Url,
                from: u64,
            ) -> Result<Box<dyn Read + Send>, TransportError> {
                (**self).fetch_from(url, from)
            }
        }
    )+};
}

forward_transport!(std::sync::Arc<T>, Box<T>);

/// When a whole-file time limit ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            at: now
                .checked_add(limit)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            limit,
        }
    }

    /// Time left, `None` once it has passed.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// The error for a transfer of `url` that ran past this deadline.
    pub(crate) fn error(&self, url: &Url) -> TransportError {
        TransportError::new(url, TransportErrorKind::TooSlow(self.limit))
    }
}

/// A stream that fails once its deadline has passed (the generic [`Transport::fetch_within`]).
struct DeadlineReader {
    url: Url,
    inner: Box<dyn Read + Send>,
    deadline: Deadline,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.deadline.remaining().is_none() {
            return Err(self.deadline.error(&self.url).into_io());
        }
        self.inner.read(buf)
    }
}

/// Why a transport could not open a file.
#[derive(Debug, thiserror::Error)]
#[error("fetching {url}: {kind}")]
pub struct TransportError {
    /// The URL that was requested.
    pub url: Url,
    /// What went wrong.
    pub kind: TransportErrorKind,
}

impl TransportError {
    /// Creates an error for `url`.
    pub fn new(url: &Url, kind: TransportErrorKind) -> Self {
        Self {
            url: url.clone(),
            kind,
        }
    }

    /// The [`TransportError`] inside an I/O error returned by a transport's reader, if any.
    pub fn from_io(err: &std::io::Error) -> Option<&TransportError> {
        err.get_ref()?.downcast_ref::<TransportError>()
    }

    /// Wraps this error in an [`std::io::Error`] of a fitting kind, for `Read::read`.
    pub fn into_io(self) -> std::io::Error {
        let kind = match self.kind {
            TransportErrorKind::NotFound => std::io::ErrorKind::NotFound,
            TransportErrorKind::Stalled(_) | TransportErrorKind::TooSlow(_) => {
                std::io::ErrorKind::TimedOut
            }
            TransportErrorKind::ConnectionDropped { .. } => std::io::ErrorKind::UnexpectedEof,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }
}

/// The kinds of transport failure a caller must tell apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The file does not exist (HTTP 404/403/410, or no such file). The TUF client treats a
    /// missing `N+1.root.json` as "no newer root", so this kind must not be used for anything else.
    #[error("file not found")]
    NotFound,
    /// The URL's scheme is not one this transport handles.
    #[error("unsupported URL scheme {0:?}")]
    UnsupportedScheme(String),
    /// The server answered with an unexpected HTTP status.
    #[error("server answered HTTP {0}")]
    HttpStatus(u16),
    /// No data arrived within the stall timeout.
    #[error("no data for {0:?}, giving up")]
    Stalled(std::time::Duration),
    /// The whole file did not arrive within the time allowed for it
    /// ([`Transport::fetch_within`]): data kept coming, but too slowly.
    #[error(
        "the whole file did not arrive within {0:?} (the time allowed for a file of its size limit)"
    )]
    TooSlow(std::time::Duration),
    /// The connection dropped in the middle of the body and could not be resumed (the server
    /// refused the `Range` request, or the resume attempts ran out). The reader yielded exactly
    /// the first `at` bytes of the file.
    #[error("connection dropped at byte {at}: {detail}")]
    ConnectionDropped {
        /// How many body bytes had been received (and yielded) when it dropped.
        at: u64,
        /// Why it could not be resumed.
        detail: String,
    },
    /// Any other I/O or network failure, after retries. A failure to connect at all (refused,
    /// unresolvable host, connect timeout) has the io kind [`std::io::ErrorKind::NotConnected`].
    #[error(transparent)]
    Io(std::io::Error),
}

/// A transport for `file://`, `http://` and `https://` URLs, choosing by scheme.
///
/// ```no_run
/// use tuf::transport::{AnyTransport, HttpOptions, Transport};
/// use std::io::Read;
///
/// let transport = AnyTransport::new(HttpOptions::default())?;
/// let url = url::Url::parse("file:///var/lib/updog/bundle/metadata/timestamp.json")?;
/// let mut body = Vec::new();
/// transport.fetch(&url)?.read_to_end(&mut body)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AnyTransport {
    file: FileTransport,
    http: HttpTransport,
}

impl AnyTransport {
    /// Creates the transport; `options` apply to `http(s)://` URLs.
    pub fn new(options: HttpOptions) -> Result<Self, HttpSetupError> {
        Ok(Self {
            file: FileTransport,
            http: HttpTransport::new(options)?,
        })
    }

    /// The same transport (the HTTP client and its connections are shared) sending `query`
    /// with every `http(s)://` request instead of [`HttpOptions::query`]: see
    /// [`HttpTransport::with_query`].
    #[must_use]
    pub fn with_query(&self, query: Vec<(String, String)>) -> AnyTransport {
        AnyTransport {
            file: self.file,
            http: self.http.with_query(query),
        }
    }
}

impl AnyTransport {
    fn pick(&self, url: &Url) -> Result<&dyn Transport, TransportError> {
        match url.scheme() {
            "file" => Ok(&self.file),
            "http" | "https" => Ok(&self.http),
            other => Err(TransportError::new(
                url,
                TransportErrorKind::UnsupportedScheme(other.to_string()),
            )),
        }
    }
}

impl Transport for AnyTransport {
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
        self.pick(url)?.fetch(url)
    }

    fn fetch_within(
        &self,
        url: &Url,
        limit: Duration,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        self.pick(url)?.fetch_within(url, limit)
    }

    fn fetch_from(&self, url: &Url, from: u64) -> Result<Box<dyn Read + Send>, TransportError> {
        self.pick(url)?.fetch_from(url, from)
    }
}
