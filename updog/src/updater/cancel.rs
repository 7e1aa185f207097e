//! Cancellation of the operations that fetch without staging (`check`): the transport stops
//! at the next request or read once the handle is set, and the error that follows is reported
//! as the cancellation it is.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::{CancelHandle, UpdateError};
use crate::transport::{Transport, TransportError, TransportErrorKind};

/// `inner`, refusing new requests and further reads once `cancel` is set. A read already
/// waiting on the network ends within the stall timeout, as any read does.
pub(super) fn transport(inner: &Arc<dyn Transport>, cancel: &CancelHandle) -> Arc<dyn Transport> {
    Arc::new(Cancellable {
        inner: Arc::clone(inner),
        cancel: cancel.clone(),
    })
}

/// Runs `op`; if `cancel` was set before it or while it ran, the result is
/// [`UpdateError::CheckCancelled`] whatever `op` returned (the transport's refusal surfaces as
/// a repository or manifest error otherwise).
pub(super) fn stop_if_cancelled<T>(
    cancel: &CancelHandle,
    op: impl FnOnce() -> Result<T, UpdateError>,
) -> Result<T, UpdateError> {
    if cancel.is_cancelled() {
        return Err(UpdateError::CheckCancelled);
    }
    let result = op();
    if cancel.is_cancelled() {
        log::info!("check cancelled");
        return Err(UpdateError::CheckCancelled);
    }
    result
}

struct Cancellable {
    inner: Arc<dyn Transport>,
    cancel: CancelHandle,
}

fn cancelled(url: &Url) -> TransportError {
    // `Other`, not `Interrupted`: readers retry an interrupted read.
    TransportError::new(
        url,
        TransportErrorKind::Io(std::io::Error::other("cancelled")),
    )
}

impl Cancellable {
    fn wrap(&self, url: &Url, inner: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        Box::new(CancellableRead {
            url: url.clone(),
            inner,
            cancel: self.cancel.clone(),
        })
    }
}

impl Transport for Cancellable {
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(url));
        }
        let inner = self.inner.fetch(url)?;
        Ok(self.wrap(url, inner))
    }

    fn fetch_within(
        &self,
        url: &Url,
        limit: Duration,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(url));
        }
        let inner = self.inner.fetch_within(url, limit)?;
        Ok(self.wrap(url, inner))
    }

    fn fetch_from(&self, url: &Url, from: u64) -> Result<Box<dyn Read + Send>, TransportError> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(url));
        }
        let inner = self.inner.fetch_from(url, from)?;
        Ok(self.wrap(url, inner))
    }
}

struct CancellableRead {
    url: Url,
    inner: Box<dyn Read + Send>,
    cancel: CancelHandle,
}

impl Read for CancellableRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(&self.url).into_io());
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves every URL as `len` bytes, counting requests.
    struct Bytes {
        len: usize,
        requests: std::sync::atomic::AtomicUsize,
    }

    impl Transport for Bytes {
        fn fetch(&self, _: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(std::io::Cursor::new(vec![7u8; self.len])))
        }
    }

    #[test]
    fn a_set_handle_stops_reads_and_new_requests() {
        let inner = Arc::new(Bytes {
            len: 10,
            requests: 0.into(),
        });
        let cancel = CancelHandle::new();
        let t = transport(&(Arc::clone(&inner) as Arc<dyn Transport>), &cancel);
        let url: Url = "http://127.0.0.1/x".parse().unwrap();
        let mut reader = t.fetch(&url).unwrap();
        let mut first = [0u8; 4];
        reader.read_exact(&mut first).unwrap();
        cancel.cancel();
        let err = reader.read(&mut first).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Other);
        assert!(TransportError::from_io(&err).is_some(), "{err}");
        assert!(t.fetch(&url).is_err());
        assert!(t.fetch_within(&url, Duration::from_secs(1)).is_err());
        // The refused requests never reached the inner transport.
        assert_eq!(inner.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
