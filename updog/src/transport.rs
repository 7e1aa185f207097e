//! Transports: how bytes of a repository (metadata and targets) reach the client.
//!
//! The TUF client only sees the [`Transport`] trait, so the same verification code runs over
//! `file://` (an offline bundle on a USB stick) and `http(s)://`.

use std::io::Read;
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

/// The kinds of transport failure a caller must tell apart.
#[derive(Debug, thiserror::Error)]
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
    /// Any other I/O or network failure, after retries.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}
