//! Shared helpers of the TUF scenario tests.
#![allow(dead_code)]

use fixtures::repo::{KeyKind, TestRepo};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tuf::transport::{Transport, TransportError, TransportErrorKind};
use tuf::{Error, Repository, RepositoryOptions};
use url::Url;

/// A minimal `file://` transport that records what was requested.
#[derive(Default)]
pub struct Files {
    pub log: Mutex<Vec<String>>,
    pub count: AtomicUsize,
}

impl Files {
    /// Requested file names (last path segment, with parent dir for targets), in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Transport for Files {
    fn fetch(&self, url: &Url) -> Result<Box<dyn Read + Send>, TransportError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let path = url.to_file_path().map_err(|()| TransportError {
            url: url.clone(),
            kind: TransportErrorKind::UnsupportedScheme(url.scheme().to_owned()),
        })?;
        self.log
            .lock()
            .unwrap()
            .push(path.file_name().unwrap().to_string_lossy().into_owned());
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TransportError {
                url: url.clone(),
                kind: TransportErrorKind::NotFound,
            }),
            Err(e) => Err(TransportError {
                url: url.clone(),
                kind: TransportErrorKind::Io(e),
            }),
        }
    }
}

/// A client of a `TestRepo`: a datastore directory and a shipped root.
pub struct Client {
    pub dir: tempfile::TempDir,
    pub transport: Arc<Files>,
}

impl Client {
    /// A client whose shipped root is `repo`'s root version `root_version`.
    pub fn new(repo: &TestRepo, root_version: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        repo.write_root(root_version, &dir.path().join("shipped-root.json"));
        Self {
            dir,
            transport: Arc::new(Files::default()),
        }
    }

    pub fn datastore(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    pub fn options(&self, repo: &TestRepo) -> RepositoryOptions {
        let mut opts =
            RepositoryOptions::new(repo.metadata_url(), repo.targets_url(), self.datastore());
        opts.trusted_root = self.dir.path().join("shipped-root.json");
        opts
    }

    pub fn load(&self, repo: &TestRepo) -> Result<Repository, Error> {
        self.transport.clear();
        Repository::load(self.options(repo), self.transport.clone())
    }

    /// The bytes of a file in the trusted-metadata directory, if present.
    pub fn trusted(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.datastore().join(name)).ok()
    }

    /// The version inside a trusted metadata file.
    pub fn trusted_version(&self, name: &str) -> Option<u64> {
        let bytes = self.trusted(name)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["signed"]["version"].as_u64()
    }
}

/// A published repository with one target `file.txt`, keys of `kind`.
pub fn simple_repo(kind: KeyKind) -> TestRepo {
    let mut repo = TestRepo::new(kind);
    repo.add_target("file.txt", b"hello, world\n");
    repo.publish();
    repo
}

pub const KINDS: [KeyKind; 3] = [KeyKind::Ed25519, KeyKind::EcdsaP256, KeyKind::Rsa];

/// Reads a target fully through the verifying reader.
pub fn read_all(repo: &Repository, name: &str) -> Result<Vec<u8>, Error> {
    let mut r = repo.read_target(name)?;
    let mut out = Vec::new();
    let res = io::copy(&mut r, &mut out);
    match r.finish() {
        Ok(()) => {
            res.unwrap();
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Loads and expects an error, printing it (so a reviewer sees the message in the test log).
pub fn load_err(client: &Client, repo: &TestRepo) -> Error {
    match client.load(repo) {
        Ok(r) => panic!("load unexpectedly succeeded: {r:?}"),
        Err(e) => {
            eprintln!("expected error: {e}");
            e
        }
    }
}

/// Files in the trusted directory (names), sorted.
pub fn trusted_files(client: &Client) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(client.datastore())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// All kinds, as a short label for messages.
pub fn label(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Ed25519 => "ed25519",
        KeyKind::EcdsaP256 => "ecdsa-p256",
        KeyKind::Rsa => "rsa",
    }
}
