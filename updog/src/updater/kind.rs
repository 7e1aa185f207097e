//! [`UpdateError::kind`]: the few cases an update agent acts on, in one match.

use super::UpdateError;
use crate::transport::{TransportError, TransportErrorKind};

/// What kind of failure an [`UpdateError`] is, for an agent deciding what to do next.
///
/// ```
/// use updog::updater::{ErrorKind, UpdateError};
/// let err = UpdateError::CheckCancelled;
/// assert_eq!(err.kind(), ErrorKind::Cancelled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The repository could not be reached (connection refused, DNS, timeouts, a stalled or
    /// dropped transfer, HTTP 5xx): retry later.
    Unreachable,
    /// The repository was reached but what it serves is not trusted (a signature, threshold,
    /// version, expiry or hash check failed; a missing or bad trusted root; an invalid
    /// manifest): alert, do not retry blindly.
    Untrusted,
    /// Nothing to take ([`UpdateError::NoUpdate`], with the reason).
    NoUpdate,
    /// Another process owns the disk (an update or a boot-flag change in progress): retry later.
    Busy,
    /// Stopped through the [`crate::updater::CancelHandle`]; what was left is safe to retry.
    Cancelled,
    /// The running boot has not been marked successful: staging would destroy the fallback
    /// ([`UpdateError::BootNotConfirmed`]).
    BootNotConfirmed,
    /// The disk, its partitions or its boot flags could not be used or written.
    Disk,
    /// Anything else (an image that cannot fit, a plan that changed, a state record, the reboot
    /// command, ...): see the error.
    Other,
}

impl UpdateError {
    /// What kind of failure this is ([`ErrorKind`]): unreachable, untrusted, no update, busy,
    /// cancelled, boot not confirmed, disk, or other. The cause is looked for through the whole
    /// chain, so a transport failure inside a staging error is still `Unreachable`.
    pub fn kind(&self) -> ErrorKind {
        if self.is_cancelled() {
            return ErrorKind::Cancelled;
        }
        match self {
            UpdateError::NoUpdate(_) => return ErrorKind::NoUpdate,
            UpdateError::BootNotConfirmed { .. } => return ErrorKind::BootNotConfirmed,
            _ if self.is_lock_held() => return ErrorKind::Busy,
            _ => {}
        }
        if let Some(t) = transport_error(self) {
            return match &t.kind {
                TransportErrorKind::Io(_)
                | TransportErrorKind::Stalled(_)
                | TransportErrorKind::TooSlow(_)
                | TransportErrorKind::ConnectionDropped { .. } => ErrorKind::Unreachable,
                TransportErrorKind::HttpStatus(code) if *code >= 500 || *code == 429 => {
                    ErrorKind::Unreachable
                }
                _ => ErrorKind::Other,
            };
        }
        match self {
            UpdateError::Repository(_)
            | UpdateError::NoManifest
            | UpdateError::Manifest(_)
            | UpdateError::MissingTarget { .. }
            | UpdateError::NoSha256 { .. } => ErrorKind::Untrusted,
            UpdateError::Disk(_)
            | UpdateError::Signpost(_)
            | UpdateError::Lock(_)
            | UpdateError::OpenPartition { .. }
            | UpdateError::SetChanged { .. } => ErrorKind::Disk,
            _ => ErrorKind::Other,
        }
    }
}

/// The transport error behind `err`, also when it travelled inside an I/O error of a reader.
pub(crate) fn transport_error(err: &UpdateError) -> Option<&TransportError> {
    crate::advice::causes(err).find_map(|e| {
        e.downcast_ref::<TransportError>()
            .or_else(|| e.downcast_ref::<Box<TransportError>>().map(|b| &**b))
            .or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(TransportError::from_io)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockError;
    use crate::updater::UpdateError;

    fn transport(kind: TransportErrorKind) -> UpdateError {
        UpdateError::Repository(Box::new(crate::tuf::Error::Transport {
            what: "timestamp".into(),
            source: Box::new(TransportError::new(
                &"http://127.0.0.1:1/metadata/timestamp.json"
                    .parse()
                    .unwrap(),
                kind,
            )),
        }))
    }

    #[test]
    fn each_case_an_agent_acts_on_has_its_kind() {
        let refused = std::io::Error::new(std::io::ErrorKind::NotConnected, "refused");
        assert_eq!(
            transport(TransportErrorKind::Io(refused)).kind(),
            ErrorKind::Unreachable
        );
        assert_eq!(
            transport(TransportErrorKind::HttpStatus(503)).kind(),
            ErrorKind::Unreachable
        );
        assert_eq!(
            transport(TransportErrorKind::HttpStatus(400)).kind(),
            ErrorKind::Other
        );
        assert_eq!(UpdateError::NoManifest.kind(), ErrorKind::Untrusted);
        assert_eq!(UpdateError::CheckCancelled.kind(), ErrorKind::Cancelled);
        assert_eq!(
            UpdateError::Lock(Box::new(LockError::Held {
                path: "/dev/vdz".into(),
                holder_pid: None,
                holder: None,
                waited_ms: 0
            }))
            .kind(),
            ErrorKind::Busy
        );
        assert_eq!(
            UpdateError::Disk(Box::new(bootpart::Error::Running("none".into()))).kind(),
            ErrorKind::Disk
        );
    }
}
