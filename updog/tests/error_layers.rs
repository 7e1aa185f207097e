//! Every layer of an error chain says only its own part: no error's Display repeats the Display
//! of its `source()`, so `updog::advice::error_chain` can print each layer as it is, joined by
//! `": "`, and the line names every fact once.
//!
//! The chains are real: most come from operations that fail (a missing file, a disk that is not
//! there, a repository with nothing in it, text that does not parse), wrapped the way the
//! updater wraps them; a few layers that take a disk or a network to provoke are constructed.

use std::error::Error;
use std::io;
use std::path::Path;
use std::sync::Arc;

use updog::advice::error_chain;
use updog::updater::UpdateError;

/// The layers whose Display contains their source's Display, and the layers with an empty
/// Display (which would print as a bare `": "`).
fn repeated_layers(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut problems = Vec::new();
    for layer in std::iter::successors(Some(e), |&e| e.source()) {
        let text = layer.to_string();
        if text.is_empty() {
            problems.push(format!("an empty layer in {:?}", error_chain(e)));
        }
        if let Some(source) = layer.source() {
            let inner = source.to_string();
            if !inner.is_empty() && text.contains(&inner) {
                problems.push(format!("{text:?} repeats its source {inner:?}"));
            }
        }
    }
    problems
}

/// The number of layers in `e`'s chain.
fn depth(e: &(dyn Error + 'static)) -> usize {
    std::iter::successors(Some(e), |&e| e.source()).count()
}

/// Checks one chain: at least `min_depth` layers (so the check has something to compare), no
/// layer repeating its source, and the printed line holding each of `facts`.
fn check(name: &str, e: &(dyn Error + 'static), min_depth: usize, facts: &[&str]) {
    let line = error_chain(e);
    assert!(
        depth(e) >= min_depth,
        "{name}: expected at least {min_depth} layers: {line}"
    );
    let problems = repeated_layers(e);
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    for fact in facts {
        assert!(
            line.contains(fact),
            "{name}: {fact:?} missing from {line:?}"
        );
    }
}

#[test]
fn a_layer_that_repeats_its_source_is_found() {
    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Repeats {
        path: &'static str,
        source: io::Error,
    }
    let e = Repeats {
        path: "/etc/updog.toml",
        source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
    };
    let problems = repeated_layers(&e);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("no such file"), "{problems:?}");
}

#[test]
fn configuration_and_state_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("updog.toml");
    let e = updog::config::Config::from_path(&missing).unwrap_err();
    check("config", &e, 2, &["reading configuration", "updog.toml"]);

    let state = dir.path().join("state.json");
    std::fs::write(&state, b"{ not json").unwrap();
    let e = updog::status::StagedRecord::read(&state).unwrap_err();
    check("staged record", &e, 2, &["state.json", "not valid"]);

    let e = atomic_write::AtomicWrite::default()
        .write(&dir.path().join("no-dir/file"), |_| Ok::<(), io::Error>(()))
        .unwrap_err();
    check("atomic write", &e, 2, &["no-dir"]);
}

#[test]
fn disks_and_boot_flags() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("disk.img");
    let e = bootpart::Disk::open(&missing).unwrap_err();
    let e = UpdateError::Disk(Box::new(e));
    check("disk", &e, 3, &["disk:", "disk.img"]);

    let e = signpost::Signpost::open(&missing, Some(bootpart::SetId::A)).unwrap_err();
    let e = UpdateError::Signpost(Box::new(e));
    check("signpost", &e, 3, &["boot flags", "disk.img"]);

    // Not a disk at all: the GPT cannot be read.
    let not_a_disk = dir.path().join("zeros.img");
    std::fs::write(&not_a_disk, vec![0u8; 64 * 1024]).unwrap();
    let e = signpost::Signpost::open(&not_a_disk, Some(bootpart::SetId::A)).unwrap_err();
    check("signpost on zeros", &e, 2, &["zeros.img"]);
}

#[test]
fn repository_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("metadata")).unwrap();
    let url = |p: &Path| url::Url::from_directory_path(p).unwrap();
    let mut opts = tuf::RepositoryOptions::new(
        url(&repo.join("metadata")),
        url(&repo.join("targets")),
        dir.path().join("datastore"),
    );
    opts.trusted_root = dir.path().join("root.json");
    let transport = Arc::new(tuf::transport::FileTransport);
    let e = tuf::Repository::load(opts, transport).unwrap_err();
    let e = UpdateError::Repository(Box::new(e));
    check("repository", &e, 2, &["repository", "root.json"]);

    let e = manifest::Manifest::from_slice(b"{ not json").unwrap_err();
    let e = UpdateError::Manifest(Box::new(e));
    check("manifest", &e, 3, &["manifest.json", "not valid"]);

    let e = waves::WavePolicy::from_toml_str("[[wave]\nseeds = ").unwrap_err();
    check("wave policy", &e, 2, &["wave policy is not valid"]);
}

#[test]
fn chunks_and_migrations() {
    let e = casync::AssembleError::Io {
        what: "reading",
        path: "/dev/vda3".into(),
        source: io::Error::from_raw_os_error(libc::EIO),
    };
    check(
        "assemble",
        &e,
        2,
        &["reading /dev/vda3", "Input/output error"],
    );

    let e = migrations_fetch::CacheError::CreateDir {
        path: "/var/lib/updog/migrations".into(),
        source: io::Error::from_raw_os_error(libc::EACCES),
    };
    check(
        "migrations cache",
        &e,
        2,
        &["/var/lib/updog/migrations", "Permission denied"],
    );

    let e = UpdateError::OpenPartition {
        image: bootpart::ImageKind::Root,
        set: bootpart::SetId::B,
        source: io::Error::from_raw_os_error(libc::EBUSY),
    };
    check("open partition", &e, 2, &["root", "set B", "busy"]);
}
