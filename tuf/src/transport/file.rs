//! `file://` transport.

use super::{Transport, TransportError, TransportErrorKind};
use std::fs::File;
use std::io::{self, Read, Seek};
use url::Url;

/// Reads `file://` URLs from the local file system (an offline bundle, a USB stick).
///
/// A missing file is [`TransportErrorKind::NotFound`]; a path that exists but is not a regular
/// file (a directory, a device) is an [`TransportErrorKind::Io`] error.
///
/// ```
/// use tuf::transport::{FileTransport, Transport, TransportErrorKind};
/// use std::io::Read;
///
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("1.root.json"), b"{}")?;
/// let base = url::Url::from_directory_path(dir.path()).unwrap();
///
/// let mut body = String::new();
/// FileTransport.fetch(&base.join("1.root.json")?)?.read_to_string(&mut body)?;
/// assert_eq!(body, "{}");
///
/// let missing = FileTransport.fetch(&base.join("2.root.json")?).err().unwrap();
/// assert!(matches!(missing.kind, TransportErrorKind::NotFound));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FileTransport;

impl Transport for FileTransport {
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
        self.fetch_from(url, 0)
    }

    /// Seeks to `from`.
    fn fetch_from(&self, url: &Url, from: u64) -> Result<Box<dyn Read + Send>, TransportError> {
        if url.scheme() != "file" {
            return Err(TransportError::new(
                url,
                TransportErrorKind::UnsupportedScheme(url.scheme().to_string()),
            ));
        }
        let path = url.to_file_path().map_err(|()| {
            TransportError::new(
                url,
                TransportErrorKind::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a local file path",
                )),
            )
        })?;
        let file = File::open(&path).map_err(|e| {
            let kind = if e.kind() == io::ErrorKind::NotFound {
                TransportErrorKind::NotFound
            } else {
                TransportErrorKind::Io(e)
            };
            TransportError::new(url, kind)
        })?;
        let meta = file
            .metadata()
            .map_err(|e| TransportError::new(url, TransportErrorKind::Io(e)))?;
        if !meta.is_file() {
            return Err(TransportError::new(
                url,
                TransportErrorKind::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a regular file", path.display()),
                )),
            ));
        }
        if from > meta.len() {
            return Err(TransportError::new(
                url,
                TransportErrorKind::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ends at byte {}, before byte {from} to read from",
                        meta.len()
                    ),
                )),
            ));
        }
        let mut file = file;
        if from > 0 {
            file.seek(io::SeekFrom::Start(from))
                .map_err(|e| TransportError::new(url, TransportErrorKind::Io(e)))?;
        }
        Ok(Box::new(file))
    }
}
