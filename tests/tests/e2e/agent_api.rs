//! The agent's API (`updog::updater::Updater`, issue 12 item 10), against a real repository
//! served over HTTP and real GPT disk images: the post-reboot operations, checked byte for byte
//! against what the `signpost` binary writes; the update state in Bottlerocket's terms through
//! a whole update; cancellation of check and apply; and the final `done`/`error` progress
//! event, in process and through the `updog` binary's `--progress json`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bootpart::SetId;
use e2e_tests::{Host, RepoSpec, describe};
use fixtures::disk::{DiskImageBuilder, PartKind};
use fixtures::http::Fault;
use signpost::SetState;
use updog::config::Config;
use updog::lock::UpdateLock;
use updog::progress::ProgressEvent;
use updog::updater::{CancelHandle, CheckOptions, UpdateError, UpdateState, Updater};

fn updater(host: &Host) -> Updater {
    let (config, warnings) = Config::from_path(&host.config_path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    Updater::new(config).unwrap()
}

/// Stages what the host's repository offers, without progress or cancellation.
fn stage(u: &Updater, lock: &UpdateLock) {
    u.stage(
        lock,
        &CheckOptions::default(),
        &|_| {},
        &CancelHandle::new(),
    )
    .unwrap();
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Stages and applies 1.1.0 on set B through the library, then plays the bootloader and makes
/// the host run 1.1.0 on B: the state right after the reboot into an update.
fn host_rebooted_into_the_update() -> Host {
    let mut host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&host);
    let lock = u.lock().unwrap();
    stage(&u, &lock);
    assert_eq!(u.apply(&lock).unwrap(), SetId::B);
    drop(lock);
    let pick = e2e_tests::bootloader_pick(&host.disk_path).expect("a bootable set");
    assert_eq!((pick.set, pick.tries_after), (SetId::B, 0));
    host.active = SetId::B;
    host.set_running("1.1.0", SetId::B);
    host
}

/// A copy of the host's disk image, for the `signpost` binary to work on.
fn copy_of_disk(host: &Host) -> std::path::PathBuf {
    let copy = host.dir.path().join("signpost-copy.img");
    std::fs::copy(&host.disk_path, &copy).unwrap();
    copy
}

fn signpost_on(disk: &Path, active: SetId, args: &[&str]) -> std::process::Output {
    std::process::Command::new(e2e_tests::bin_dir().join("signpost"))
        .arg("--disk")
        .arg(disk)
        .args(["--active", &active.to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn same_disk(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn post_boot_operations_write_exactly_what_signpost_writes() {
    let host = host_rebooted_into_the_update();
    let copy = copy_of_disk(&host);
    let u = updater(&host);
    let has_succeeded_per_signpost = |disk: &Path| {
        let out = signpost_on(disk, SetId::B, &["has-boot-ever-succeeded", "--json"]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<bool>()
            .unwrap()
    };
    assert_eq!(
        u.has_boot_ever_succeeded().unwrap(),
        has_succeeded_per_signpost(&host.disk_path)
    );

    // The new set proved itself: mark it, as `signpost mark-successful-boot` does.
    let lock = u.lock().unwrap();
    u.mark_successful_boot(&lock).unwrap();
    let out = signpost_on(&copy, SetId::B, &["mark-successful-boot"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(same_disk(&host.disk_path, &copy), "mark-successful-boot");
    assert_eq!(
        host.signpost().state(SetId::B),
        Some(SetState::new(2, 0, true).unwrap())
    );
    assert!(u.has_boot_ever_succeeded().unwrap());
    assert!(has_succeeded_per_signpost(&host.disk_path));

    // Back to the set that ran before (it booted successfully): rollback-to-inactive.
    assert_eq!(u.rollback_to_inactive(&lock).unwrap(), SetId::A);
    let out = signpost_on(&copy, SetId::B, &["rollback-to-inactive"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(same_disk(&host.disk_path, &copy), "rollback-to-inactive");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

#[test]
fn post_boot_operations_refuse_what_signpost_refuses_and_write_nothing() {
    // Set B was never written (cleared): there is nothing to roll back to.
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let copy = copy_of_disk(&host);
    let before = std::fs::read(&host.disk_path).unwrap();
    let u = updater(&host);
    let lock = u.lock().unwrap();
    let err = u.rollback_to_inactive(&lock).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Signpost(e)
                if matches!(**e, signpost::Error::InactiveNotBootable { set: SetId::B, .. })
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), updog::exit::FAILURE);
    let out = signpost_on(&copy, SetId::A, &["rollback-to-inactive"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(std::fs::read(&host.disk_path).unwrap() == before);
    assert!(same_disk(&host.disk_path, &copy));

    // Without a PRIVATE partition there is no "ever succeeded" bit to read or set.
    let host = Host::with_disk(
        &RepoSpec::two_releases(),
        "1.0.0",
        DiskImageBuilder::new().omit(PartKind::Private, None),
    );
    let before = std::fs::read(&host.disk_path).unwrap();
    let u = updater(&host);
    let err = u.has_boot_ever_succeeded().unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Signpost(e) if matches!(**e, signpost::Error::NoPrivatePartition { .. })
        ),
        "{err}"
    );
    let lock = u.lock().unwrap();
    let err = u.mark_successful_boot(&lock).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Signpost(e) if matches!(**e, signpost::Error::NoPrivatePartition { .. })
        ),
        "{err}"
    );
    drop(lock);
    assert!(std::fs::read(&host.disk_path).unwrap() == before);
    let out = signpost_on(&host.disk_path, SetId::A, &["mark-successful-boot"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
}

#[test]
fn the_update_state_follows_an_update_in_bottlerocket_terms() {
    let mut host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&host);
    let state = || u.status().unwrap().update_state;
    assert_eq!(
        state(),
        UpdateState::Idle,
        "nothing checked, nothing staged"
    );

    let check = u.check(&CheckOptions::default()).unwrap();
    let status = u.status().unwrap().with_check(&check);
    assert_eq!(status.update_state, UpdateState::Available);
    assert_eq!(
        status.available.as_ref().map(|a| a.version.to_string()),
        Some("1.1.0".to_string())
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["update_state"], "Available", "{json}");
    assert_eq!(json["available"]["version"], "1.1.0", "{json}");
    // The fields that were strings are still the same strings.
    assert_eq!(json["running"]["set"], "A", "{json}");
    assert_eq!(json["next_boot"], "A", "{json}");

    let lock = u.lock().unwrap();
    stage(&u, &lock);
    assert_eq!(state(), UpdateState::Staged);
    // A check that finds the same update does not take a staged update back to Available.
    let status = u.status().unwrap().with_check(&check);
    assert_eq!(status.update_state, UpdateState::Staged);

    u.apply(&lock).unwrap();
    assert_eq!(state(), UpdateState::Ready);
    u.revert(&lock).unwrap();
    assert_eq!(state(), UpdateState::Staged, "revert goes back to Staged");
    u.apply(&lock).unwrap();
    drop(lock);

    // The CLI shows the same state.
    let out = host.updog(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["update_state"], "Ready", "{json}");
    assert_eq!(json["next_boot"], "B", "{json}");
    let out = host.updog(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("state:   Ready"),
        "{}",
        describe(&out)
    );

    // Rebooted into it: the record is history, nothing is staged, and 1.1.0 is the newest.
    e2e_tests::bootloader_pick(&host.disk_path).expect("a bootable set");
    host.active = SetId::B;
    host.set_running("1.1.0", SetId::B);
    let u = updater(&host);
    let check = u.check(&CheckOptions::default()).unwrap();
    let status = u.status().unwrap().with_check(&check);
    assert_eq!(status.update_state, UpdateState::Idle);
    assert!(status.available.is_none());
}

#[test]
fn a_staged_set_without_its_record_is_not_staged() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&host);
    let lock = u.lock().unwrap();
    stage(&u, &lock);
    std::fs::remove_file(host.state_file()).unwrap();
    // `update-apply` would refuse the set, so it is not an update an agent can apply.
    let status = u.status().unwrap();
    assert_eq!(status.update_state, UpdateState::Idle);
    // Issue 24, finding 8: the problem reads as a sentence ("set B holds ...", not "is holds").
    let problem = status.record_problem.clone().expect("a record problem");
    assert!(
        problem.starts_with("set B holds a verified image, not applied, but no staged record"),
        "{problem}"
    );
    assert!(matches!(
        u.apply(&lock).unwrap_err(),
        UpdateError::NotRecorded { .. }
    ));
}

#[test]
fn a_cancelled_check_stops_fetching_and_changes_nothing() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let disk_before = std::fs::read(&host.disk_path).unwrap();
    let metadata_dir = host.dir.path().join("state/metadata");
    let u = updater(&host);

    // Cancelled before it starts: not one request.
    let cancel = CancelHandle::new();
    cancel.cancel();
    let err = u
        .check_cancellable(&CheckOptions::default(), &cancel)
        .unwrap_err();
    assert!(matches!(err, UpdateError::CheckCancelled), "{err}");
    assert_eq!(err.exit_code(), updog::exit::INTERRUPTED);
    assert_eq!(host.server.request_count(), 0);
    assert!(!metadata_dir.exists());

    // Cancelled while the metadata trickles in: the check stops there, and never asks for
    // the manifest.
    host.server.fault_all(Fault::Slow {
        bytes: 16,
        every: Duration::from_millis(20),
    });
    let cancel = CancelHandle::new();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while host.server.request_count() == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            cancel.cancel();
        });
        u.check_cancellable(&CheckOptions::default(), &cancel).err()
    });
    let err = result.expect("the check was cancelled");
    assert!(matches!(err, UpdateError::CheckCancelled), "{err}");
    let asked: Vec<String> = host.server.requests().into_iter().map(|r| r.path).collect();
    assert!(
        !asked.iter().any(|p| p.contains("manifest.json")),
        "{asked:?}"
    );
    assert!(std::fs::read(&host.disk_path).unwrap() == disk_before);

    // The same updater checks normally with a fresh handle.
    host.server.clear_faults();
    u.check_cancellable(&CheckOptions::default(), &CancelHandle::new())
        .unwrap();
}

#[test]
fn a_cancelled_apply_does_not_flip_and_leaves_the_update_staged() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&host);
    let lock = u.lock().unwrap();
    stage(&u, &lock);
    let before = std::fs::read(&host.disk_path).unwrap();
    let record_before = std::fs::read(host.state_file()).unwrap();
    let cancel = CancelHandle::new();
    cancel.cancel();
    let err = u.apply_cancellable(&lock, &cancel).unwrap_err();
    assert!(
        matches!(err, UpdateError::ApplyCancelled { set: SetId::B }),
        "{err}"
    );
    assert_eq!(err.exit_code(), updog::exit::INTERRUPTED);
    assert!(std::fs::read(&host.disk_path).unwrap() == before);
    assert_eq!(std::fs::read(host.state_file()).unwrap(), record_before);
    assert_eq!(u.status().unwrap().update_state, UpdateState::Staged);
    assert_eq!(
        u.apply_cancellable(&lock, &CancelHandle::new()).unwrap(),
        SetId::B
    );
}

#[test]
fn a_failed_stage_ends_with_one_error_event_on_the_callback() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    for file in host
        .repo
        .target_files(&spec.releases[1].target_name("boot"))
    {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, bytes).unwrap();
    }
    let u = updater(&host);
    let lock = u.lock().unwrap();
    let events = Mutex::new(Vec::new());
    let err = u
        .stage(
            &lock,
            &CheckOptions::default(),
            &|e| events.lock().unwrap().push(e.clone()),
            &CancelHandle::new(),
        )
        .unwrap_err();
    let events = events.into_inner().unwrap();
    assert_eq!(events.iter().filter(|e| e.is_final()).count(), 1);
    match events.last().unwrap() {
        ProgressEvent::Error {
            message, cancelled, ..
        } => {
            assert!(!cancelled);
            assert!(message.starts_with(&err.to_string()), "{message} / {err}");
            assert!(message.contains("boot"), "{message}");
        }
        other => panic!("the last event is {other:?}"),
    }
}

/// The JSON lines of an `updog` run.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The one final event, which must be the last line.
fn final_event(out: &std::process::Output) -> serde_json::Value {
    let lines = json_lines(out);
    let finals: Vec<_> = lines
        .iter()
        .filter(|e| e["event"] == "done" || e["event"] == "error")
        .collect();
    assert_eq!(finals.len(), 1, "{}", describe(out));
    assert_eq!(lines.last(), Some(finals[0]), "{}", describe(out));
    finals[0].clone()
}

#[test]
fn every_progress_json_run_of_the_binary_ends_with_done_or_error() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");

    // Another updater holds the disk: `error`, exit 4, before anything is staged.
    let u = updater(&host);
    let held = u.lock().unwrap();
    let out = host.updog(&["update", "--progress", "json"]);
    assert_eq!(
        code(&out),
        i32::from(updog::exit::LOCKED),
        "{}",
        describe(&out)
    );
    let error = final_event(&out);
    assert_eq!(error["event"], "error");
    assert_eq!(error["cancelled"], false);
    assert!(
        error["message"].as_str().unwrap().contains("in progress")
            || error["message"].as_str().unwrap().contains("lock"),
        "{error}"
    );
    drop(held);

    // A broken image: `error` naming it, after the image events.
    let root = spec.releases[1].target_name("root");
    let files = host.repo.target_files(&root);
    let good = std::fs::read(&files[0]).unwrap();
    for file in &files {
        let mut bytes = good.clone();
        bytes[200] ^= 1;
        std::fs::write(file, bytes).unwrap();
    }
    let out = host.updog(&["update", "--progress", "json"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let error = final_event(&out);
    assert!(
        error["message"].as_str().unwrap().contains(&root),
        "{error}"
    );
    for file in &files {
        std::fs::write(file, &good).unwrap();
    }

    // Staged and flipped: `done` after `flipped`, applied.
    let out = host.updog(&["update", "--progress", "json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let done = final_event(&out);
    assert_eq!(
        (&done["version"], &done["set"], &done["applied"]),
        (&"1.1.0".into(), &"B".into(), &true.into()),
        "{done}"
    );
    let lines = json_lines(&out);
    assert_eq!(lines[lines.len() - 2]["event"], "flipped");

    // Nothing newer: `done` with the reason, exit 0.
    host.set_running("1.1.0", SetId::A);
    let out = host.updog(&["update-image", "--progress", "json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let done = final_event(&out);
    assert_eq!(done["version"], serde_json::Value::Null, "{done}");
    assert_eq!(done["no_update"]["reason"], "none_newer", "{done}");
}

/// `updog check-update` started, once its first request has reached the server.
fn check_update_fetching(host: &Host) -> std::process::Child {
    let child = host
        .updog_cmd()
        .arg("check-update")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while host.server.request_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no request");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn sigterm_during_check_update_stops_it_with_exit_5() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    host.server.fault_all(Fault::Slow {
        bytes: 16,
        every: Duration::from_millis(50),
    });
    let child = check_update_fetching(&host);
    e2e_tests::send_signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        i32::from(updog::exit::INTERRUPTED),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled while checking"),
        "{}",
        describe(&out)
    );
}

#[test]
fn sigterm_while_staging_ends_the_json_progress_with_a_cancelled_error() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    for path in host
        .repo
        .target_url_paths(&spec.releases[1].target_name("root"))
    {
        host.server.fault(
            &path,
            Fault::Slow {
                bytes: 32 * 1024,
                every: Duration::from_millis(100),
            },
        );
    }
    let mut cmd = host.updog_cmd();
    cmd.arg("update");
    let (child, mut rest) = host.spawn_updog_until(cmd, r#""event":"image""#);
    e2e_tests::send_signal(&child, "TERM");
    let mut tail = String::new();
    std::io::Read::read_to_string(&mut rest, &mut tail).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        i32::from(updog::exit::INTERRUPTED),
        "{}",
        describe(&out)
    );
    let last: serde_json::Value = serde_json::from_str(tail.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error", "{tail}");
    assert_eq!(last["cancelled"], true, "{tail}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("set B left cleared"),
        "{last}"
    );
    let finals = tail
        .lines()
        .filter(|l| l.contains(r#""event":"done""#) || l.contains(r#""event":"error""#))
        .count();
    assert_eq!(finals, 1, "{tail}");
}

#[test]
fn a_failed_reboot_after_the_flip_ends_the_json_progress_with_one_error() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    // The reboot command fails (no systemctl in a container, say), after the flip was written.
    let recorder = host.dir.path().join("reboot-recorder.sh");
    std::fs::write(&recorder, "#!/bin/sh\necho 'reboot refused' >&2\nexit 1\n").unwrap();
    let out = host.updog(&["update", "--reboot", "--progress", "json"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let error = final_event(&out);
    assert_eq!(error["event"], "error", "{error}");
    assert_eq!(error["cancelled"], false, "{error}");
    // The flip happened and says so before the error: B boots next.
    let lines = json_lines(&out);
    let flipped = lines
        .iter()
        .find(|e| e["event"] == "flipped")
        .unwrap_or_else(|| panic!("no flipped event: {}", describe(&out)));
    assert_eq!(flipped["set"], "B", "{flipped}");
    let status = host.updog(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["next_boot"], "B", "{status}");
}

/// The first SIGTERM asks for a clean stop, which a read blocked on a silent server only sees
/// at the stall timeout; a second one stops the process at once (exit 5), as an impatient
/// operator's second Ctrl-C expects.
#[test]
fn a_second_sigterm_stops_a_check_blocked_on_a_silent_server_at_once() {
    let mut host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    host.configure("stall_timeout_secs = 120");
    host.server.fault_all(Fault::StallBeforeHeaders);
    let mut child = check_update_fetching(&host);
    e2e_tests::send_signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal is a request to stop cleanly, not a kill"
    );
    e2e_tests::send_signal(&child, "TERM");
    // Far below the 120 s stall timeout the clean stop would wait for.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the second signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        i32::from(updog::exit::INTERRUPTED),
        "{}",
        describe(&out)
    );
}

/// Issue 24, finding 7: `updog update --progress json` whose flip fails on a flush (the
/// `UPDOG_FAIL_AT` test hook: EIO from the primary or the backup copy's flush) ends with one
/// `error` line that says what the disk reads now: `disk_now.next_boot`, the set the
/// bootloader picks next, as the GPT shows it afterwards.
#[test]
fn a_failed_flip_flush_ends_the_json_stream_with_the_set_that_boots_next() {
    let spec = RepoSpec::two_releases();
    // The flip is the third GPT write of `update` (clear, mark valid, flip), six operations
    // each: entries, header, flush for the primary copy, then for the backup.
    for (copy, op) in [("primary", 15), ("backup", 18)] {
        let host = Host::new(&spec, "1.0.0");
        let out = host
            .updog_cmd()
            .args(["update", "--progress", "json"])
            .env("UPDOG_FAIL_AT", format!("gpt-io:{op}"))
            .output()
            .unwrap();
        assert_eq!(code(&out), 1, "{copy}: {}", describe(&out));
        let error = final_event(&out);
        assert_eq!(error["event"], "error", "{copy}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("flushing the {copy} copy"))),
            "{copy}: {error}"
        );
        let next = host.signpost().next_boot().map(|s| s.to_string());
        assert_eq!(next.as_deref(), Some("B"), "{copy}: the flip took effect");
        assert_eq!(error["disk_now"]["next_boot"], "B", "{copy}: {error}");
    }
}

/// Issue 25: an embedder that calls the blocking API straight from async code (not through
/// `spawn_blocking`) used to get a panic inside tokio that never named updog. Check, stage and
/// apply now work from an async task on both runtime flavours.
#[test]
fn the_blocking_api_works_when_called_from_async_code() {
    for multi_thread in [false, true] {
        let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder.enable_all().build().unwrap();
        let applied = runtime.block_on(async {
            // Built inside the runtime too: what an agent's `main` does.
            let u = updater(&host);
            let check = u
                .check(&CheckOptions::default())
                .expect("check from async code");
            assert_eq!(
                check.available().map(|a| a.version().to_string()),
                Some("1.1.0".to_string()),
                "{:?}",
                check.outcome
            );
            // One name for the running version in a check and a status.
            assert_eq!(
                check.running_version(),
                &u.status().unwrap().running.version
            );
            assert_eq!(check.running_version(), check.running.version());
            let lock = u.lock().unwrap();
            stage(&u, &lock);
            let set = u.apply(&lock).unwrap();
            drop(lock);
            drop(u);
            set
        });
        assert_eq!(applied, SetId::B, "multi_thread={multi_thread}");
        assert!(host.b_holds(&RepoSpec::two_releases().releases[1]));
    }
}

/// Issue 25: an embedder staging and flipping through the library saw a stream that ended with
/// `done … "applied": false`, and `apply` sent no events. `Updater::update` is one run that
/// ends with the flip and `done` with `applied: true`; `apply_reporting` reports its flip.
#[test]
fn update_and_apply_reporting_end_their_streams_with_the_flip() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&host);
    let lock = u.lock().unwrap();
    let events = Mutex::new(Vec::new());
    let record = |e: &ProgressEvent| events.lock().unwrap().push(e.clone());
    let staged = u
        .update(
            &lock,
            &CheckOptions::default(),
            &record,
            &CancelHandle::new(),
        )
        .unwrap();
    assert_eq!(
        (staged.version.to_string(), staged.set),
        ("1.1.0".into(), SetId::B)
    );
    let seen = std::mem::take(&mut *events.lock().unwrap());
    assert_eq!(seen.first(), Some(&ProgressEvent::LoadingMetadata));
    assert_eq!(
        seen[seen.len() - 2..],
        [
            ProgressEvent::Flipped { set: SetId::B },
            ProgressEvent::done(&staged, true)
        ],
        "{seen:?}"
    );
    assert_eq!(u.status().unwrap().next_boot, Some(SetId::B));

    // Revert, then apply with events: the flip and `done` naming the staged version.
    u.revert(&lock).unwrap();
    assert_eq!(
        u.apply_reporting(&lock, &record, &CancelHandle::new())
            .unwrap(),
        SetId::B
    );
    let seen = std::mem::take(&mut *events.lock().unwrap());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], ProgressEvent::Flipped { set: SetId::B });
    assert!(
        matches!(&seen[1], ProgressEvent::Done { version: Some(v), set: Some(SetId::B), applied: true, .. } if v.to_string() == "1.1.0"),
        "{seen:?}"
    );

    // With nothing staged: one `error` event and nothing flipped.
    let fresh = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let u = updater(&fresh);
    let lock = u.lock().unwrap();
    let before = std::fs::read(&fresh.disk_path).unwrap();
    assert!(
        u.apply_reporting(&lock, &record, &CancelHandle::new())
            .is_err()
    );
    let seen = std::mem::take(&mut *events.lock().unwrap());
    assert!(
        matches!(
            seen.as_slice(),
            [ProgressEvent::Error {
                cancelled: false,
                ..
            }]
        ),
        "{seen:?}"
    );
    assert!(
        std::fs::read(&fresh.disk_path).unwrap() == before,
        "the disk changed"
    );
}
