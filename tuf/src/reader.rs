//! Streaming readers for targets: one capped at the signed length, one that also verifies.

use super::error::Error;
use super::schema::TargetDescription;
use sha2::{Digest, Sha256, Sha512};
use std::io::{self, Read};

/// A stream that yields at most `length` bytes of `inner` and fails with `UnexpectedEof` when
/// `inner` ends before `length` bytes. It never reads from `inner` past `length`.
pub(crate) struct CappedReader {
    name: String,
    inner: Box<dyn Read + Send>,
    length: u64,
    read: u64,
}

impl CappedReader {
    pub(crate) fn new(name: String, inner: Box<dyn Read + Send>, length: u64) -> Self {
        Self {
            name,
            inner,
            length,
            read: 0,
        }
    }
}

impl Read for CappedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.length - self.read;
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "target {:?} ended after {} of its signed {} bytes",
                    self.name, self.read, self.length
                ),
            ));
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// A verifying stream over a target, returned by [`super::Repository::read_target`].
///
/// It yields exactly the signed length (never reading past it), hashing as it goes, and checks
/// every listed hash it supports (sha256, sha512) when the last byte has been read: a mismatch
/// surfaces as an `InvalidData` error from `read`, so `io::copy` into a file fails rather than
/// completing. A stream that ends early yields `UnexpectedEof`. Call [`TargetReader::finish`]
/// afterwards to tell "verified" from "stopped".
pub struct TargetReader {
    name: String,
    inner: CappedReader,
    description: TargetDescription,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Reading,
    Verified,
    Failed(String),
}

impl std::fmt::Debug for TargetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetReader")
            .field("name", &self.name)
            .field("length", &self.description.length)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl TargetReader {
    pub(crate) fn new(
        name: String,
        inner: Box<dyn Read + Send>,
        description: TargetDescription,
    ) -> Result<Self, Error> {
        let sha256 = description.hashes.contains_key("sha256").then(Sha256::new);
        let sha512 = description.hashes.contains_key("sha512").then(Sha512::new);
        if sha256.is_none() && sha512.is_none() {
            return Err(Error::NoSupportedHash { what: name });
        }
        let mut reader = Self {
            inner: CappedReader::new(name.clone(), inner, description.length),
            name,
            description,
            sha256,
            sha512,
            state: State::Reading,
        };
        if reader.description.length == 0 {
            reader.verify();
        }
        Ok(reader)
    }

    /// The signed description this reader verifies against.
    pub fn description(&self) -> &TargetDescription {
        &self.description
    }

    /// `Ok(())` only when every signed byte was read and every supported hash matched.
    pub fn finish(self) -> Result<(), Error> {
        match self.state {
            State::Verified => Ok(()),
            State::Failed(_) if self.inner.read == self.inner.length => Err(self.first_mismatch()),
            _ => Err(Error::LengthMismatch {
                what: format!("target {}", self.name),
                listed_in: "its targets metadata".to_owned(),
                expected: self.description.length,
                actual: self.inner.read,
            }),
        }
    }

    fn first_mismatch(&self) -> Error {
        let alg = match &self.state {
            State::Failed(alg) => alg.clone(),
            _ => String::new(),
        };
        Error::HashMismatch {
            what: format!("target {}", self.name),
            listed_in: "its targets metadata".to_owned(),
            algorithm: alg,
        }
    }

    fn verify(&mut self) {
        let checks = [
            (
                "sha256",
                self.sha256.take().map(|h| hex::encode(h.finalize())),
            ),
            (
                "sha512",
                self.sha512.take().map(|h| hex::encode(h.finalize())),
            ),
        ];
        for (alg, actual) in checks {
            if let (Some(actual), Some(expected)) = (actual, self.description.hashes.get(alg)) {
                if !actual.eq_ignore_ascii_case(expected) {
                    self.state = State::Failed(alg.to_owned());
                    return;
                }
            }
        }
        self.state = State::Verified;
    }
}

impl Read for TargetReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Verified => return Ok(0),
            State::Failed(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    self.first_mismatch().to_string(),
                ));
            }
            State::Reading => {}
        }
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
        if self.inner.read == self.inner.length {
            self.verify();
            if let State::Failed(_) = self.state {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    self.first_mismatch().to_string(),
                ));
            }
        }
        Ok(n)
    }
}
