//! The library stopped at every named step of stage, apply and revert and between every two GPT
//! I/O operations (a simulated crash: the operation stops there, no error path or cleanup of
//! ours runs, writes already made stay on the disk as they would after a kill); a failing GPT
//! flush during the flip; and a boot-flag change made behind the disk lock during staging.

use std::fs::File;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bootpart::SetId;
use bootpart::io::BlockIo;
use e2e_tests::{Host, Migration, OLD_B, Release, RepoSpec};
use signpost::SetState;
use updog::config::Config;
use updog::progress::{ImageKind, ProgressEvent};
use updog::status::StagedRecord;
use updog::steps::{CountingIo, Step};
use updog::updater::{CancelHandle, CheckOptions, InactiveState, UpdateError, Updater};

fn spec() -> RepoSpec {
    let mut spec = RepoSpec::new(vec![Release::new("1.0.0"), Release::new("1.1.0")]);
    spec.migrations.push(Migration {
        from: "1.0.0".parse().unwrap(),
        to: "1.1.0".parse().unwrap(),
        name: "migrate_v1.1.0_crash.lz4".to_string(),
        content: b"crash test migration".to_vec(),
    });
    spec
}

fn updater(host: &Host) -> Updater {
    let (config, _) = Config::from_path(&host.config_path).unwrap();
    Updater::new(config).unwrap()
}

/// The payload of a simulated crash.
struct Crash;

fn crash() -> ! {
    std::panic::resume_unwind(Box::new(Crash))
}

/// Runs `op`, expecting it either to finish or to stop with a simulated [`Crash`]; returns
/// whether it crashed. Any other panic or error fails the test.
fn run_until_crash(what: &str, op: impl FnOnce() -> Result<(), String>) -> bool {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(Ok(())) => false,
        Ok(Err(e)) => panic!("{what}: failed instead of crashing: {e}"),
        Err(payload) if payload.is::<Crash>() => true,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// `updog update` through the library (errors as text: `UpdateError` is large).
fn update(updater: &Updater) -> Result<(), String> {
    let lock = updater.lock().map_err(|e| e.to_string())?;
    updater
        .stage(
            &lock,
            &CheckOptions::default(),
            &|_| {},
            &CancelHandle::new(),
        )
        .map_err(|e| e.to_string())?;
    updater.apply(&lock).map_err(|e| e.to_string())?;
    Ok(())
}

/// `updog update-revert` through the library.
fn revert(updater: &Updater) -> Result<(), String> {
    let lock = updater.lock().map_err(|e| e.to_string())?;
    updater.revert(&lock).map_err(|e| e.to_string())?;
    Ok(())
}

/// Where to stop: before a named step, or before the N-th GPT write or flush.
#[derive(Debug, Clone, Copy)]
enum Point {
    Step(Step),
    GptIo(usize),
}

fn crashing_updater(host: &Host, point: Point) -> Updater {
    let updater = updater(host);
    match point {
        Point::Step(at) => updater.on_step(move |step| {
            if step == at {
                crash();
            }
        }),
        Point::GptIo(at) => {
            let count = Arc::new(AtomicUsize::new(0));
            updater.with_gpt_io(move |file| {
                Box::new(CountingIo::new(file, Arc::clone(&count), move |n| {
                    if n == at {
                        crash();
                    }
                }))
            })
        }
    }
}

/// Stage + apply stopped at every step boundary and before every one of the 18 GPT I/O
/// operations of its three GPT writes (clear, mark valid, flip); then revert stopped at each of
/// its points. After each stop the disk is consistent, and the same host updates (or reverts)
/// when run again.
#[test]
fn a_crash_at_every_step_and_inside_every_gpt_write_leaves_a_consistent_disk() {
    let spec = spec();
    let new = &spec.releases[1];
    // The steps of stage and apply (revert's two come last in Step::ALL).
    let update_steps = Step::ALL.into_iter().take(Step::ALL.len() - 2);
    let points = update_steps
        .map(Point::Step)
        .chain((1..=18).map(Point::GptIo));
    for point in points {
        let what = format!("update stopped at {point:?}");
        let host = Host::with_old_b(&spec, "1.0.0");
        assert!(
            run_until_crash(&what, || update(&crashing_updater(&host, point))),
            "{what}: never reached"
        );
        e2e_tests::assert_consistent_after_stop(&host, new, OLD_B, &what);
        update(&updater(&host)).unwrap_or_else(|e| panic!("{what}: re-run: {e}"));
        assert!(host.b_holds(new), "{what}");
        assert_eq!(host.signpost().next_boot(), Some(SetId::B), "{what}");
    }
    // Past the last GPT operation nothing stops it.
    let host = Host::with_old_b(&spec, "1.0.0");
    assert!(!run_until_crash("gpt-io 19", || update(&crashing_updater(
        &host,
        Point::GptIo(19)
    ))));

    let revert_points = [Step::CancelFlip, Step::RecordReverted]
        .into_iter()
        .map(Point::Step)
        .chain((1..=6).map(Point::GptIo));
    for point in revert_points {
        let what = format!("revert stopped at {point:?}");
        let host = Host::new(&spec, "1.0.0");
        update(&updater(&host)).unwrap();
        assert!(
            run_until_crash(&what, || revert(&crashing_updater(&host, point))),
            "{what}: never reached"
        );
        e2e_tests::assert_consistent_after_stop(&host, new, OLD_B, &what);
        revert(&updater(&host)).unwrap_or_else(|e| panic!("{what}: re-run: {e}"));
        assert_eq!(host.signpost().next_boot(), Some(SetId::A), "{what}");
        let status = updater(&host).status().unwrap();
        assert_eq!(status.inactive, InactiveState::Staged, "{what}");
        assert_eq!(status.record_problem, None, "{what}");
    }
}

/// A disk whose `fail_at`-th flush (counting from 1) fails with EIO after the writes before it
/// reached the disk: what a failing flush of a real disk looks like to us.
struct FailingFlush {
    inner: File,
    flushes: usize,
    fail_at: usize,
}

impl BlockIo for FailingFlush {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        BlockIo::read_exact_at(&self.inner, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        BlockIo::write_all_at(&mut self.inner, buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.flushes += 1;
        if self.flushes == self.fail_at {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        BlockIo::sync_data(&mut self.inner)
    }
    fn len(&self) -> io::Result<u64> {
        BlockIo::len(&self.inner)
    }
}

/// Linux's EIO.
const EIO: i32 = 5;

/// Finding 4: an EIO on the flush of the primary or the backup copy during the flip. The
/// error says what the disk reads now (B boots next), and the record follows the disk, so
/// `status` shows the update applied without a disagreement.
#[test]
fn a_failed_flush_during_the_flip_reports_the_state_the_disk_is_in() {
    let spec = spec();
    for (copy, fail_at) in [("primary", 1), ("backup", 2)] {
        let host = Host::new(&spec, "1.0.0");
        let plain = updater(&host);
        {
            let lock = plain.lock().unwrap();
            plain
                .stage(
                    &lock,
                    &CheckOptions::default(),
                    &|_| {},
                    &CancelHandle::new(),
                )
                .unwrap();
        }
        let failing = updater(&host).with_gpt_io(move |file| {
            Box::new(FailingFlush {
                inner: file,
                flushes: 0,
                fail_at,
            })
        });
        let lock = failing.lock().unwrap();
        let err = failing.apply(&lock).unwrap_err();
        drop(lock);
        let text = updog::advice::error_chain(&err);
        assert!(
            text.contains(&format!("flushing the {copy} copy")),
            "{text}"
        );
        assert!(text.contains("next boot set B"), "{copy}: {text}");
        assert!(matches!(
            &err,
            UpdateError::Signpost(e) if matches!(**e, signpost::Error::WriteFailed {
                took_effect: true,
                ..
            })
        ));
        assert_eq!(host.signpost().next_boot(), Some(SetId::B), "{copy}");
        let record = StagedRecord::read(&host.state_file()).unwrap().unwrap();
        assert!(record.applied, "{copy}: the record follows the disk");
        let status = updater(&host).status().unwrap();
        assert_eq!(status.inactive, InactiveState::Applied);
        assert_eq!(status.record_problem, None, "{copy}");
        assert!(status.staged.is_some_and(|s| s.applied));
        // Applying again is a no-op success: record and GPT agree.
        let lock = plain.lock().unwrap();
        assert_eq!(plain.apply(&lock).unwrap(), SetId::B);
    }
}

/// Finding 2, the part the lock cannot cover: a process that ignores the disk lock marks set B
/// valid while it is being written. Before marking it valid, `stage` re-reads the GPT, finds
/// the set not as it left it, clears it again and says what it found.
#[test]
fn a_set_changed_behind_the_lock_is_cleared_again_instead_of_marked_valid() {
    let spec = spec();
    let host = Host::new(&spec, "1.0.0");
    let updater = updater(&host);
    let lock = updater.lock().unwrap();
    let progress = |event: &ProgressEvent| {
        if let ProgressEvent::ImageDone {
            image: ImageKind::Hash,
            ..
        } = event
        {
            // No lock: a second handle on the disk, as a careless tool would open it.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&host.disk_path)
                .unwrap();
            let mut sp = signpost::Signpost::from_io(file, &host.disk_path, SetId::A).unwrap();
            sp.mark_inactive_valid().unwrap();
        }
    };
    let err = updater
        .stage(
            &lock,
            &CheckOptions::default(),
            &progress,
            &CancelHandle::new(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::SetChanged {
                set: SetId::B,
                found: SetState { tries_left: 1, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cleared again"), "{err}");
    drop(lock);
    assert_eq!(host.signpost().state(SetId::B), Some(SetState::default()));
    assert!(!host.state_file().exists());
    let lock = updater.lock().unwrap();
    assert!(matches!(
        updater.apply(&lock),
        Err(UpdateError::NothingStaged { set: SetId::B })
    ));
}

/// The shim's hooks (`e2e_tests::shim`) refuse a value that names no step or GPT operation,
/// before anything runs: a misspelt crash point must not pass for one that was never reached.
/// A valid one kills `updog` before the disk changes.
#[test]
fn the_shim_refuses_an_unknown_crash_point_and_kills_at_a_known_one() {
    let host = Host::new(&spec(), "1.0.0");
    for (var, value) in [
        ("UPDOG_CRASH_AT", "mark_valid"),
        ("UPDOG_CRASH_AT", "gpt-io:0"),
        ("UPDOG_FAIL_AT", "clear"),
    ] {
        let out = host
            .updog_cmd()
            .arg("update")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value}: {}",
            e2e_tests::describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("{var}={value}")),
            "{var}={value}: {}",
            e2e_tests::describe(&out)
        );
    }
    let before = host.signpost().state(SetId::B).unwrap();
    let out = host
        .updog_cmd()
        .arg("update")
        .env("UPDOG_CRASH_AT", "clear")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "not killed: {}",
        e2e_tests::describe(&out)
    );
    assert_eq!(host.signpost().state(SetId::B).unwrap(), before);
}
