//! The typed library API an embedding agent uses (`updog::updater::Updater`), in process,
//! against a real repository over HTTP and a real disk image: the staging order invariants,
//! observed from the progress callback while staging runs; plans from `check` staged exactly,
//! or refused when the repository changed since.

use std::sync::Mutex;

use bootpart::SetId;
use e2e_tests::{Host, Migration, Release, RepoSpec};
use fixtures::disk::{DiskImageBuilder, PartKind};
use signpost::SetState;
use updog::config::Config;
use updog::progress::{ImageKind, ProgressEvent};
use updog::updater::{
    CancelHandle, CheckOptions, CheckOutcome, PlanChange, UpdateError, UpdatePlan, Updater,
};

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

/// Stages with the default options, which must fail with the disk left exactly as it was.
fn refused_before_the_disk(host: &Host, updater: &Updater) -> UpdateError {
    let before = host.disk.bytes().unwrap();
    let lock = updater.lock().unwrap();
    let err = updater
        .stage(
            &lock,
            &CheckOptions::default(),
            &|_| {},
            &CancelHandle::new(),
        )
        .unwrap_err();
    assert!(
        host.disk.bytes().unwrap() == before,
        "the disk changed: {err}"
    );
    err
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
    let err = refused_before_the_disk(&host, &updater(&host));
    assert!(matches!(err, UpdateError::MigrationFetch(_)), "{err}");
    assert_eq!(err.exit_code(), updog::exit::FAILURE);
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

/// The plan `check` returns for `opts`.
fn checked_plan(updater: &Updater, opts: &CheckOptions) -> UpdatePlan {
    match updater.check(opts).unwrap().outcome {
        CheckOutcome::Available(update) => update.plan,
        CheckOutcome::NoUpdate(reason) => panic!("expected an update, got none: {reason}"),
    }
}

/// What the repository signs for one image of `release`: the sha256 of its lz4 file.
fn signed_sha256(release: &Release, kind: PartKind) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(e2e_tests::lz4(release.image(kind))).into()
}

/// `spec()` with 1.2.0 added (and its migration), as published after a check.
fn with_1_2_0(mut spec: RepoSpec) -> RepoSpec {
    spec.releases.push(Release::new("1.2.0"));
    spec.set_max_version(&"1.2.0".parse().unwrap());
    spec.migrations.push(Migration {
        from: "1.1.0".parse().unwrap(),
        to: "1.2.0".parse().unwrap(),
        name: "migrate_v1.2.0_lib.lz4".to_string(),
        content: b"1.1 -> 1.2".to_vec(),
    });
    spec
}

#[test]
fn a_plan_from_check_holds_the_signed_images_and_is_staged_exactly() {
    let host = host();
    let updater = updater(&host);
    let plan = checked_plan(&updater, &CheckOptions::default());
    let release = &spec().releases[1];
    assert_eq!(plan.version(), &release.version);
    assert_eq!(plan.target_set(), Some(SetId::B));
    assert_eq!(
        plan.migration_plan().migration_names(),
        ["migrate_v1.1.0_lib.lz4"]
    );
    for (image, kind) in plan
        .images()
        .iter()
        .zip([PartKind::Root, PartKind::Boot, PartKind::Hash])
    {
        assert_eq!(image.target.name, release.target_name(image.kind.name()));
        assert_eq!(
            image.target.length,
            e2e_tests::lz4(release.image(kind)).len() as u64
        );
        assert_eq!(image.target.sha256, signed_sha256(release, kind));
        assert_eq!(image.delta_index, None);
    }

    let lock = updater.lock().unwrap();
    let staged = updater
        .stage_plan(&lock, plan.clone(), &|_| {}, &CancelHandle::new())
        .unwrap();
    assert_eq!(
        (staged.version.clone(), staged.set),
        (release.version.clone(), SetId::B)
    );
    assert!(host.b_holds(release), "set B holds the planned images");
    assert_eq!(b_state(&host), SetState::new(0, 1, false).unwrap());
    for image in plan.images() {
        assert_eq!(
            staged.record.images[&image.kind].sha256,
            hex::encode(image.target.sha256)
        );
    }
}

/// Stages `plan`, which must be refused as changed with the disk left exactly as it was:
/// the change and the error's message.
fn refused_plan(host: &Host, updater: &Updater, plan: UpdatePlan) -> (PlanChange, String) {
    let before = host.disk.bytes().unwrap();
    let lock = updater.lock().unwrap();
    let err = updater
        .stage_plan(&lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap_err();
    assert_eq!(err.exit_code(), updog::exit::FAILURE);
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
    assert_eq!(
        cached_migrations(host),
        0,
        "migrations fetched for a refused plan"
    );
    let text = err.to_string();
    match err {
        UpdateError::PlanChanged { change, .. } => (*change, text),
        other => panic!("expected PlanChanged, got {other}"),
    }
}

/// Checked 1.1.0; then 1.2.0 is published and 1.1.0's root image re-signed with other bytes.
/// Staging the old plan refuses, naming the version, and the disk is as it was.
#[test]
fn a_plan_is_refused_when_the_repository_offers_another_version_since_the_check() {
    let host = host();
    let updater = updater(&host);
    let plan = checked_plan(&updater, &CheckOptions::default());
    let mut spec = with_1_2_0(spec());
    spec.releases[1].root = e2e_tests::payload(99, 1536 * 1024);
    e2e_tests::republish(&spec, &host.repo.dir, 2);

    let (change, text) = refused_plan(&host, &updater, plan);
    assert_eq!(
        change,
        PlanChange::Version {
            planned: "1.1.0".parse().unwrap(),
            now: "1.2.0".parse().unwrap()
        }
    );
    assert!(
        text.contains("update to 1.1.0") && text.contains("now offers 1.2.0"),
        "{text}"
    );

    // A new check plans 1.2.0, and that plan stages.
    let plan = checked_plan(&updater, &CheckOptions::default());
    assert_eq!(plan.version().to_string(), "1.2.0");
    let lock = updater.lock().unwrap();
    updater
        .stage_plan(&lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap();
    assert!(host.b_holds(&spec.releases[2]));
}

/// The same version, but its root image re-signed with other bytes after the check: the plan
/// is refused naming the image and both signed descriptions; set B keeps what it held.
#[test]
fn a_plan_is_refused_when_an_image_it_names_was_re_signed_since_the_check() {
    let host = host();
    let updater = updater(&host);
    let plan = checked_plan(&updater, &CheckOptions::default());
    let planned_root = plan.images()[0].target.clone();
    let mut spec = spec();
    spec.releases[1].root = e2e_tests::payload(99, 1536 * 1024);
    e2e_tests::republish(&spec, &host.repo.dir, 2);
    let (change, text) = refused_plan(&host, &updater, plan);
    let PlanChange::Image {
        image,
        planned,
        now,
    } = &change
    else {
        panic!("expected the root image to have changed, got {change}");
    };
    assert_eq!(*image, ImageKind::Root);
    assert_eq!(*planned, planned_root);
    assert_eq!(now.name, planned_root.name);
    assert_eq!(now.sha256, signed_sha256(&spec.releases[1], PartKind::Root));
    assert_ne!(now.sha256, planned.sha256);
    assert!(
        text.contains(&hex::encode(now.sha256)) && text.contains(&hex::encode(planned.sha256)),
        "the message names both hashes: {text}"
    );
    assert_eq!(b_state(&host).tries_left, 3, "set B was not cleared");
}

/// A plan chosen with an explicit version is chosen again with it: a newer release published
/// since does not change it.
#[test]
fn a_plan_for_an_explicit_version_stays_valid_when_a_newer_release_appears() {
    let host = host();
    let updater = updater(&host);
    let opts = CheckOptions {
        image: Some("1.1.0".parse().unwrap()),
        ..CheckOptions::default()
    };
    let plan = checked_plan(&updater, &opts);
    let spec = with_1_2_0(spec());
    e2e_tests::republish(&spec, &host.repo.dir, 2);
    assert_eq!(
        checked_plan(&updater, &CheckOptions::default())
            .version()
            .to_string(),
        "1.2.0"
    );
    let lock = updater.lock().unwrap();
    let staged = updater
        .stage_plan(&lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap();
    assert_eq!(staged.version.to_string(), "1.1.0");
    assert!(host.b_holds(&spec.releases[1]));
}

/// Sets the boot flags of the set whose BOOT partition is `number`, as a bootloader would.
fn set_boot_flags(host: &Host, number: u32, state: SetState) {
    let lock = signpost::DiskLock::acquire(&host.disk_path, signpost::lock::DEFAULT_WAIT).unwrap();
    let mut file = lock.try_clone_file().unwrap();
    let mut table = bootpart::gpt::read_gpt(&file).unwrap().table;
    let entry = table.entry_mut(number).unwrap();
    entry.attributes = state.apply_to(entry.attributes);
    bootpart::gpt::write_gpt(&mut file, &table).unwrap();
}

/// Checks, stages the plan under `lock`, and asserts set B holds release 1.1.0.
fn stage_checked_release(host: &Host, updater: &Updater, lock: &updog::lock::UpdateLock) {
    let plan = checked_plan(updater, &CheckOptions::default());
    updater
        .stage_plan(lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap();
    assert!(host.b_holds(&spec().releases[1]));
}

/// While the running set has not been marked successful (just booted into it: priority 2, no
/// tries left), set B is the only fallback: staging refuses before fetching anything or
/// touching the disk, and says what to run. Once marked, staging goes through.
#[test]
fn staging_is_refused_while_the_running_set_has_not_been_marked_successful() {
    let host = host();
    let unconfirmed = SetState::new(2, 0, false).unwrap();
    set_boot_flags(&host, 1, unconfirmed);
    let updater = updater(&host);
    let err = refused_before_the_disk(&host, &updater);
    assert!(
        matches!(err, UpdateError::BootNotConfirmed { set: SetId::A, state, fallback: true } if state == unconfirmed),
        "{err}"
    );
    assert_eq!(err.exit_code(), updog::exit::FAILURE);
    let text = err.to_string();
    assert!(
        text.contains("signpost mark-successful-boot") && text.contains("set B, the only fallback"),
        "{text}"
    );
    assert_eq!(cached_migrations(&host), 0);

    let lock = updater.lock().unwrap();
    signpost::Signpost::locked(lock.disk_lock(), Some(SetId::A))
        .unwrap()
        .mark_successful_boot()
        .unwrap();
    stage_checked_release(&host, &updater, &lock);
}

/// With the other set no fallback (cleared: nothing a rollback could boot), an unconfirmed
/// running set (priority 1, no tries left, never marked: a first boot that was never marked)
/// still stops staging: after the flip the update would be the only set that could boot, for
/// one try, and a failed try would leave no bootable set. Asked for explicitly, it stages.
#[test]
fn an_unconfirmed_boot_stops_staging_over_a_set_that_is_no_fallback_unless_allowed() {
    let host = host();
    set_boot_flags(&host, 1, SetState::new(1, 0, false).unwrap());
    set_boot_flags(&host, 5, SetState::default());
    let updater = updater(&host);
    let err = refused_before_the_disk(&host, &updater);
    assert!(
        matches!(
            err,
            UpdateError::BootNotConfirmed {
                set: SetId::A,
                fallback: false,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    for needle in [
        "no set would boot",
        "signpost mark-successful-boot",
        "--allow-unconfirmed-boot",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let opts = CheckOptions {
        allow_unconfirmed_boot: true,
        ..CheckOptions::default()
    };
    let lock = updater.lock().unwrap();
    let plan = checked_plan(&updater, &opts);
    updater
        .stage_plan(&lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap();
    assert!(host.b_holds(&spec().releases[1]));
}

/// A plan made while set A ran is for set B; if the host runs set B by the time it is staged
/// (it rebooted into it), the plan is refused naming both sets, before the disk is touched.
#[test]
fn a_plan_is_refused_when_the_host_runs_the_other_set_since_the_check() {
    let mut host = host();
    let plan = checked_plan(&updater(&host), &CheckOptions::default());
    assert_eq!(plan.target_set(), Some(SetId::B));
    host.active = SetId::B;
    host.set_running("1.0.0", SetId::B);
    let (change, _) = refused_plan(&host, &updater(&host), plan);
    assert_eq!(
        change,
        PlanChange::TargetSet {
            planned: SetId::B,
            now: SetId::A
        }
    );
}

/// A release that offers a chunk index for its root image: the plan holds the index as signed,
/// and an index re-signed after the check refuses the plan, naming the image.
#[test]
fn a_plan_holds_the_chunk_index_and_is_refused_when_it_was_re_signed() {
    let index_of = |bytes: &[u8]| {
        let mut spec = spec();
        spec.releases[1].delta = Some(serde_json::json!({
            "store": "chunks/", "indexes": {"root": "root-1.1.0.caibx"}
        }));
        spec.extra_targets
            .push(("root-1.1.0.caibx".to_string(), bytes.to_vec()));
        spec
    };
    let host = Host::with_disk(&index_of(b"first index"), "1.0.0", DiskImageBuilder::new());
    let updater = updater(&host);
    let plan = checked_plan(&updater, &CheckOptions::default());
    let index = plan
        .image(ImageKind::Root)
        .delta_index
        .clone()
        .expect("root index planned");
    assert_eq!(index.name, "root-1.1.0.caibx");
    assert_eq!(index.length, b"first index".len() as u64);
    assert_eq!(plan.image(ImageKind::Boot).delta_index, None);

    e2e_tests::republish(&index_of(b"second index!"), &host.repo.dir, 2);
    let (change, _) = refused_plan(&host, &updater, plan);
    let PlanChange::DeltaIndex {
        image,
        planned,
        now,
    } = change
    else {
        panic!("expected the root index to have changed, got {change}");
    };
    assert_eq!(image, ImageKind::Root);
    assert_eq!(planned, Some(index));
    assert_eq!(now.map(|t| t.length), Some(b"second index!".len() as u64));
}

#[test]
fn with_delta_updates_off_a_re_signed_chunk_index_does_not_refuse_the_plan() {
    let index_of = |bytes: &[u8]| {
        let mut spec = spec();
        spec.releases[1].delta = Some(serde_json::json!({
            "store": "chunks/", "indexes": {"root": "root-1.1.0.caibx"}
        }));
        spec.extra_targets
            .push(("root-1.1.0.caibx".to_string(), bytes.to_vec()));
        spec
    };
    let mut host = Host::with_disk(&index_of(b"first index"), "1.0.0", DiskImageBuilder::new());
    host.configure("delta = false");
    let updater = updater(&host);
    let plan = checked_plan(&updater, &CheckOptions::default());
    assert_eq!(
        plan.image(ImageKind::Root).delta_index,
        None,
        "an index this host never uses is not part of its plan"
    );
    // The index changes; the image does not: the full image this plan promised is staged.
    e2e_tests::republish(&index_of(b"second index!"), &host.repo.dir, 2);
    let lock = updater.lock().unwrap();
    let staged = updater
        .stage_plan(&lock, plan, &|_| {}, &CancelHandle::new())
        .unwrap();
    assert_eq!(staged.version.to_string(), "1.1.0");
    assert_eq!(b_state(&host).priority, 0);
    assert!(b_state(&host).tries_left > 0 || b_state(&host).successful);
}

/// The `target` and `migrations` query values belong to the staging operation that chose the
/// update: a check that runs on the same (shared) updater while staging is under way, or after
/// it, sends only `seed` and `version`, while the staging operation's own requests carry its
/// values.
#[test]
fn query_values_belong_to_their_operation_and_never_leak_into_a_concurrent_check() {
    let host = host();
    let updater = updater(&host);
    let plain = format!("seed={}&version=1.0.0", e2e_tests::HOST_SEED);
    let check_queries = |during: &str| {
        host.server.clear_log();
        let check = updater.check(&CheckOptions::default()).unwrap();
        assert!(matches!(check.outcome, CheckOutcome::Available(_)));
        let log = host.server.requests();
        assert!(!log.is_empty(), "{during}: the check sent no request");
        for r in &log {
            assert_eq!(
                r.query.as_deref(),
                Some(plain.as_str()),
                "{during}: {}",
                r.target
            );
        }
    };
    check_queries("before staging");

    // Checks on other threads while the staging operation is between two images (its target
    // and migrations values set), each on the same updater.
    let checked = Mutex::new(0);
    let lock = updater.lock().unwrap();
    let staged = std::thread::scope(|s| {
        let progress = |event: &ProgressEvent| {
            if let ProgressEvent::ImageDone {
                image: ImageKind::Root,
                ..
            } = event
            {
                s.spawn(|| check_queries("while staging"))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                *checked.lock().unwrap() += 1;
                // The staging operation's next requests still carry its own values.
                host.server.clear_log();
            }
        };
        updater.stage(
            &lock,
            &CheckOptions::default(),
            &progress,
            &CancelHandle::new(),
        )
    })
    .unwrap();
    assert_eq!(staged.version.to_string(), "1.1.0");
    assert_eq!(*checked.lock().unwrap(), 1);
    let staging = format!(
        "migrations=migrate_v1.1.0_lib.lz4%2Cmanifest.json&seed={}&target=1.1.0&version=1.0.0",
        e2e_tests::HOST_SEED
    );
    let after_root = host.server.requests();
    assert!(!after_root.is_empty(), "boot and hash were fetched");
    for r in &after_root {
        assert_eq!(
            r.query.as_deref(),
            Some(staging.as_str()),
            "staging: {}",
            r.target
        );
    }
    drop(lock);

    // And after it: nothing of the staging operation is left behind.
    check_queries("after staging");
}
