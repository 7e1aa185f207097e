//! The typed library API an embedding agent uses (`updog::updater::Updater`), in process,
//! against a real repository over HTTP and a real disk image: the staging order invariants,
//! observed from the progress callback while staging runs.

use std::sync::Mutex;

use bootpart::SetId;
use e2e_tests::{Host, Migration, Release, RepoSpec};
use fixtures::disk::DiskImageBuilder;
use signpost::SetState;
use updog::config::Config;
use updog::progress::{ImageKind, ProgressEvent};
use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, UpdateError, Updater};

fn spec() -> RepoSpec {
    let mut spec = RepoSpec::new(vec![Release::new("1.0.0"), Release::new("1.1.0")]);
    spec.migrations.push(Migration {
        from: "1.0.0".parse().unwrap(),
        to: "1.1.0".parse().unwrap(),
        name: "migrate_v1.1.0_lib.lz4".to_string(),
        content: b"library test migration".to_vec(),
    });
    spec
}

/// A host whose set B carries stale flags (successful, 3 tries) from an earlier life.
fn host() -> Host {
    Host::with_disk(
        &spec(),
        "1.0.0",
        DiskImageBuilder::new().attributes(5, (1 << 56) | (3 << 52)),
    )
}

fn updater(host: &Host) -> Updater {
    let (config, warnings) = Config::from_path(&host.config_path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    Updater::new(config).unwrap()
}

fn b_state(host: &Host) -> SetState {
    host.signpost().state(SetId::B).unwrap()
}

fn cached_migrations(host: &Host) -> usize {
    std::fs::read_dir(host.dir.path().join("state/migrations")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("migrate_"))
            .count()
    })
}

#[test]
fn staging_follows_the_invariant_order() {
    let host = host();
    let updater = updater(&host);
    let check = updater.check(&CheckOptions::default()).unwrap();
    let CheckOutcome::Available(update) = check.outcome else {
        panic!("expected an update, got {:?}", check.outcome);
    };
    assert_eq!(update.update.version.to_string(), "1.1.0");
    assert_eq!(update.migrations, ["migrate_v1.1.0_lib.lz4"]);

    // What the disk and the cache look like at each step, seen from the callback.
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let progress = |event: &ProgressEvent| {
        let mut seen = seen.lock().unwrap();
        match event {
            ProgressEvent::Image { image, .. } => {
                let tag = format!("image:{image}");
                if seen.last() != Some(&tag) {
                    // First bytes of this image: migrations are cached and B is cleared.
                    assert_eq!(cached_migrations(&host), 1, "migrations before the disk");
                    assert_eq!(b_state(&host), SetState::new(0, 0, false).unwrap());
                    seen.push(tag);
                }
            }
            ProgressEvent::ClearingInactive { .. } => {
                assert_eq!(b_state(&host).tries_left, 3, "not cleared before the event");
                seen.push("clearing".into());
            }
            ProgressEvent::ImageDone { image, .. } => {
                // Never bootable before every image is verified.
                assert_eq!(b_state(&host).tries_left, 0);
                seen.push(format!("done:{image}"));
            }
            ProgressEvent::Verifying { image } => seen.push(format!("verify:{image}")),
            ProgressEvent::LoadingMetadata => seen.push("metadata".into()),
            ProgressEvent::Selected { version, set } => seen.push(format!("{version}->{set}")),
            ProgressEvent::FetchingMigrations { count } => {
                assert_eq!(cached_migrations(&host), 0);
                seen.push(format!("migrations:{count}"));
            }
            ProgressEvent::MarkedValid { set } => seen.push(format!("valid:{set}")),
            ProgressEvent::Flipped { .. } => seen.push("flipped".into()),
            ProgressEvent::DeltaPlan { .. } | ProgressEvent::DeltaFallback { .. } => {
                seen.push("delta".into());
            }
            ProgressEvent::Done {
                version,
                set,
                applied,
                no_update,
            } => {
                // Reported once the set is marked valid: the final state is on disk.
                assert_eq!(b_state(&host), SetState::new(0, 1, false).unwrap());
                assert_eq!(no_update, &None);
                let (version, set) = (version.as_ref().expect("a version"), set.expect("a set"));
                seen.push(format!("done:{version}@{set},applied={applied}"));
            }
            ProgressEvent::Error { message, .. } => seen.push(format!("error:{message}")),
            other => panic!("an event this test does not know: {other:?}"),
        }
    };
    let lock = updater.lock().unwrap();
    let staged = updater
        .stage(
            &lock,
            &CheckOptions::default(),
            &progress,
            &CancelHandle::new(),
        )
        .unwrap();
    assert_eq!(staged.set, SetId::B);
    let mut expected = vec![
        "metadata".to_string(),
        "1.1.0->B".into(),
        "migrations:1".into(),
        "clearing".into(),
    ];
    for image in ImageKind::ALL {
        expected.push(format!("image:{image}"));
        expected.push(format!("verify:{image}"));
        expected.push(format!("done:{image}"));
    }
    expected.push("valid:B".into());
    expected.push("done:1.1.0@B,applied=false".into());
    assert_eq!(*seen.lock().unwrap(), expected);

    // Marked valid (one try), not yet next to boot; the record says what is staged.
    assert_eq!(b_state(&host), SetState::new(0, 1, false).unwrap());
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    let status = updater.status().unwrap();
    let record = status.staged.expect("staged record");
    assert_eq!(record.version.to_string(), "1.1.0");
    assert!(!record.applied);
    assert_eq!(record.images.len(), 3);

    assert_eq!(updater.apply(&lock).unwrap(), SetId::B);
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
    assert!(updater.status().unwrap().staged.unwrap().applied);
    assert_eq!(updater.revert(&lock).unwrap(), SetId::A);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

#[test]
fn a_migration_that_does_not_verify_stops_the_update_before_the_disk_is_touched() {
    let host = host();
    for file in host.repo.target_files("migrate_v1.1.0_lib.lz4") {
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
    }
    let before = host.disk.bytes().unwrap();
    let updater = updater(&host);
    let lock = updater.lock().unwrap();
    let err = updater
        .stage(
            &lock,
            &CheckOptions::default(),
            &|_| {},
            &CancelHandle::new(),
        )
        .unwrap_err();
    assert!(matches!(err, UpdateError::MigrationFetch(_)), "{err}");
    assert_eq!(err.exit_code(), updog::exit::FAILURE);
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
}

#[test]
fn cancelling_from_the_callback_leaves_the_inactive_set_cleared() {
    let host = host();
    let a_before = host.signpost().state(SetId::A).unwrap();
    let updater = updater(&host);
    let lock = updater.lock().unwrap();
    let cancel = CancelHandle::new();
    let progress = |event: &ProgressEvent| {
        if matches!(event, ProgressEvent::Image { .. }) {
            cancel.cancel();
        }
    };
    let err = updater
        .stage(&lock, &CheckOptions::default(), &progress, &cancel)
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Cancelled { set: SetId::B }),
        "{err}"
    );
    assert_eq!(err.exit_code(), updog::exit::INTERRUPTED);
    assert_eq!(b_state(&host), SetState::new(0, 0, false).unwrap());
    assert_eq!(host.signpost().state(SetId::A).unwrap(), a_before);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    assert!(updater.status().unwrap().staged.is_none());
}

#[test]
fn the_lock_is_exclusive_between_updaters() {
    let host = host();
    let first = updater(&host);
    let second = updater(&host);
    let held = first.lock().unwrap();
    let err = second.lock().unwrap_err();
    assert_eq!(err.exit_code(), updog::exit::LOCKED, "{err}");
    drop(held);
    second.lock().unwrap();
}
