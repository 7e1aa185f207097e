//! The cache is laid out the way the reference's boot-time migrator reads it: this test fetches
//! from a real signed repository (fixtures), then loads the cache with `tough` — the library the
//! reference migrator uses — from `file://` URLs with expiry ignored, exactly as the migrator
//! does, and reads every cached migration through it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use fixtures::repo::{KeyKind, TestRepo, long_ago};
use migrations_fetch::{
    BoxError, CacheDirs, FetchOptions, MetadataFile, MigrationPlan, MigrationSource, TargetInfo,
    TargetLookup, Version, fetch,
};
use sha2::{Digest, Sha256};
use tough::{ExpirationEnforcement, FilesystemTransport, IntoVec, RepositoryLoader, TargetName};

const A: &str = "migrate_v1.1.0_a.lz4";
const B: &str = "migrate_v1.2.0_b.lz4";

/// A published fixtures repository read straight from its directory: what it signs, its
/// target files and its metadata files under their consistent-snapshot names.
struct Published {
    repo: TestRepo,
    contents: BTreeMap<String, Vec<u8>>,
}

impl TargetLookup for Published {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        Ok(self.contents.get(name).map(|c| TargetInfo {
            length: c.len() as u64,
            sha256: Sha256::digest(c).into(),
        }))
    }
}

impl MigrationSource for Published {
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError> {
        Ok(Box::new(fs::File::open(
            self.repo.targets_dir().join(name),
        )?))
    }

    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError> {
        let names = [
            format!("{}.root.json", self.repo.root_version),
            "timestamp.json".to_owned(),
            format!("{}.snapshot.json", self.repo.snapshot_version),
            format!("{}.targets.json", self.repo.targets.version),
        ];
        Ok(names
            .into_iter()
            .map(|name| MetadataFile {
                bytes: self.repo.read_metadata(&name),
                name,
            })
            .collect())
    }
}

fn publish() -> Published {
    let mut repo = TestRepo::new(KeyKind::Ed25519);
    repo.consistent_snapshot = true;
    // Expired: the migrator runs after a reboot, possibly weeks later.
    repo.timestamp_expires = long_ago();
    let manifest = br#"{"updates": [], "migrations": {
        "(1.0.0, 1.1.0)": ["migrate_v1.1.0_a.lz4"],
        "(1.1.0, 1.2.0)": ["migrate_v1.2.0_b.lz4"]}}"#;
    let mut contents = BTreeMap::new();
    contents.insert(A.to_owned(), b"lz4 frame of migration a".repeat(100));
    contents.insert(B.to_owned(), b"lz4 frame of migration b".repeat(7));
    contents.insert("manifest.json".to_owned(), manifest.to_vec());
    for (name, content) in &contents {
        repo.add_target(name, content);
    }
    repo.publish_root();
    repo.publish();
    Published { repo, contents }
}

fn dir_url(p: &Path) -> url::Url {
    url::Url::from_directory_path(p).unwrap()
}

/// Loads the cache like the reference migrator and reads `names` through it.
fn read_like_the_migrator(
    dirs: &CacheDirs,
    trusted_root: &Path,
    names: &[&str],
) -> Result<Vec<Vec<u8>>, Box<tough::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let read = runtime.block_on(async {
        let root = fs::read(trusted_root).unwrap();
        let repo = RepositoryLoader::new(&root, dir_url(&dirs.metadata), dir_url(&dirs.targets))
            .transport(FilesystemTransport)
            .expiration_enforcement(ExpirationEnforcement::Unsafe)
            .load()
            .await?;
        let mut out = Vec::new();
        for name in names {
            let target = TargetName::new(*name)?;
            let stream = repo
                .read_target(&target)
                .await?
                .unwrap_or_else(|| panic!("{name} not found by tough"));
            out.push(stream.into_vec().await?);
        }
        Ok::<_, tough::error::Error>(out)
    });
    read.map_err(Box::new)
}

fn setup() -> (Published, tempfile::TempDir, CacheDirs, PathBuf) {
    let published = publish();
    let work = tempfile::tempdir().unwrap();
    let dirs = CacheDirs::under(work.path());
    let manifest = manifest::Manifest::from_slice(&published.contents["manifest.json"]).unwrap();
    let plan = MigrationPlan::new(
        &manifest,
        &Version::new(1, 0, 0),
        &Version::new(1, 2, 0),
        &published,
    )
    .unwrap();
    fetch(&plan, &published, &dirs, &FetchOptions::default()).unwrap();
    let trusted_root = work.path().join("root.json");
    published.repo.write_root(1, &trusted_root);
    (published, work, dirs, trusted_root)
}

#[test]
fn the_reference_loader_reads_the_cache_with_expired_metadata() {
    let (published, _work, dirs, trusted_root) = setup();
    let read = read_like_the_migrator(&dirs, &trusted_root, &[A, B, "manifest.json"]).unwrap();
    assert_eq!(read[0], published.contents[A]);
    assert_eq!(read[1], published.contents[B]);
    assert_eq!(read[2], published.contents["manifest.json"]);
}

#[test]
fn the_reference_loader_refuses_a_tampered_cached_migration() {
    let (published, _work, dirs, trusted_root) = setup();
    let info = published.target_info(B).unwrap().unwrap();
    let path = dirs.targets.join(format!("{}.{B}", info.sha256_hex()));
    let mut bytes = fs::read(&path).unwrap();
    bytes[3] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    assert!(read_like_the_migrator(&dirs, &trusted_root, &[A]).is_ok());
    assert!(read_like_the_migrator(&dirs, &trusted_root, &[B]).is_err());
}
