//! One owner per disk, and a status that tells the truth (issue 11), against the real `updog`
//! and `signpost` binaries: two updaters with different configurations, a boot-flag change from
//! `signpost` during an update, planted lock files, corrupt records, unusable or empty images,
//! and a SIGKILL at every step of stage, apply and revert.

use std::time::Duration;

use bootpart::SetId;
use e2e_tests::{Host, Release, RepoSpec, describe};
use fixtures::disk::DiskImageBuilder;
use fixtures::http::Fault;
use signpost::SetState;

const OK: i32 = 0;
const FAILURE: i32 = 1;
const LOCKED: i32 = 4;

/// A repository with these releases and a migration for each step between them.
fn releases(versions: &[&str]) -> RepoSpec {
    let mut spec = RepoSpec::new(versions.iter().map(|v| Release::new(v)).collect());
    for pair in versions.windows(2) {
        spec.migrations.push(e2e_tests::Migration {
            from: pair[0].parse().unwrap(),
            to: pair[1].parse().unwrap(),
            name: format!("migrate_v{}_ownership.lz4", pair[1]),
            content: format!("migration {} -> {}", pair[0], pair[1]).into_bytes(),
        });
    }
    spec
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn state(host: &Host, set: SetId) -> SetState {
    host.signpost().state(set).expect("set exists")
}

fn cleared() -> SetState {
    SetState::default()
}

fn slow(host: &Host, target: &str, bytes: usize) {
    for path in host.repo.target_url_paths(target) {
        host.server.fault(
            &path,
            Fault::Slow {
                bytes,
                every: Duration::from_millis(100),
            },
        );
    }
}

fn status_json(host: &Host) -> serde_json::Value {
    let out = host.updog(&["status", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Finding 1: the lock is the disk, not a configured path, so an updater with another
/// configuration (other state directory, an old `lock_file` key) is refused while the first
/// stages, and set B ends up holding exactly the first one's images.
#[test]
fn two_updaters_with_different_configurations_exclude_each_other_on_one_disk() {
    let spec = releases(&["1.0.0", "1.1.0", "1.2.0"]);
    let host = Host::new(&spec, "1.0.0");
    slow(&host, &spec.releases[1].target_name("root"), 16 * 1024);
    let other_config = host.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&host.config_path).unwrap();
    let state = format!("{}/state/", host.dir.path().display());
    let other_state = format!("{}/other-state/", host.dir.path().display());
    std::fs::write(
        &other_config,
        format!(
            "{}lock_file = \"{}/other.lock\"\n",
            text.replace(&state, &other_state),
            host.dir.path().display()
        ),
    )
    .unwrap();

    let (first, _stdout) = host.spawn_updog_until(
        cmd(&host, &["update", "--image", "1.1.0"]),
        r#""event":"image""#,
    );
    let out = std::process::Command::new(e2e_tests::bin_dir().join("updog"))
        .arg("--config")
        .arg(&other_config)
        .args(["update", "--image", "1.2.0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), LOCKED, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(
        err.contains("unknown configuration key \"lock_file\""),
        "{err}"
    );

    let out = first.wait_with_output().unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert!(host.b_holds(&spec.releases[1]), "B holds 1.1.0 exactly");
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
    let status = status_json(&host);
    assert_eq!(status["staged"]["version"], "1.1.0");
    assert_eq!(status["staged"]["applied"], true);
    assert_eq!(status["inactive"], "applied");
}

fn cmd(host: &Host, args: &[&str]) -> std::process::Command {
    let mut c = host.updog_cmd();
    c.args(args);
    c
}

/// Finding 2: `signpost mark-inactive-valid` during an update waits for the disk (refused at
/// once with `--lock-timeout 0`); when the download then fails, set B is cleared, nothing is
/// staged, and `update-apply` refuses.
#[test]
fn a_signpost_change_during_an_update_is_refused_and_a_failed_staging_leaves_b_cleared() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    let new = &spec.releases[1];
    slow(&host, &new.target_name("root"), 32 * 1024);
    for path in host.repo.target_url_paths(&new.target_name("hash")) {
        host.server.fault(&path, Fault::Status(500));
    }
    let (child, _stdout) =
        host.spawn_updog_until(cmd(&host, &["update-image"]), r#""event":"image""#);
    let out = host
        .signpost_cmd()
        .args(["mark-inactive-valid", "--lock-timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    assert_eq!(state(&host, SetId::B), cleared(), "B is still cleared");

    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert_eq!(state(&host, SetId::B), cleared());
    let status = status_json(&host);
    assert_eq!(status["inactive"], "cleared");
    assert!(status["staged"].is_null(), "{status}");
    let out = host.updog(&["update-apply"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing is staged on set B"),
        "{}",
        describe(&out)
    );
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

/// Finding 3 (root): no lock file is opened any more, so a symlink planted where the old
/// `lock_file` pointed is not followed, a lock another user holds on that path blocks nothing,
/// and an unprivileged user cannot open (so cannot lock) the disk device.
#[test]
fn no_lock_file_can_be_planted_or_held_by_another_user() {
    if !fixtures::gate::require_root("the unprivileged-user lock test") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let spec = releases(&["1.0.0", "1.1.0"]);
    let mut host = Host::new(&spec, "1.0.0");
    host.attach_loop().expect("loop device");
    // A world-writable lock directory, as /run/lock is, reachable by "nobody".
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let shared = host.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = host.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, shared.join("planted.lock")).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args);
        c
    };
    // "nobody" holds a lock on the old default-style path for as long as it likes.
    let held = shared.join("updog.lock");
    let holder = {
        use std::os::unix::process::CommandExt;
        as_nobody(&["flock", held.to_str().unwrap(), "sleep", "60"])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("setpriv flock")
    };
    let _holder = KillOnDrop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !held.exists() {
        assert!(std::time::Instant::now() < deadline, "holder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ... and cannot even open the disk device.
    let out = as_nobody(&["flock", "--nonblock"])
        .arg(&host.disk_path)
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody locked {}",
        host.disk_path.display()
    );

    for lock_file in [held.clone(), shared.join("planted.lock")] {
        let out = {
            let text = std::fs::read_to_string(&host.config_path).unwrap();
            let config = host.dir.path().join("with-lock-file.toml");
            std::fs::write(
                &config,
                format!("{text}lock_file = \"{}\"\n", lock_file.display()),
            )
            .unwrap();
            std::process::Command::new(e2e_tests::bin_dir().join("updog"))
                .arg("--config")
                .arg(&config)
                .args(["update-image"])
                .output()
                .unwrap()
        };
        assert_eq!(code(&out), OK, "{}", describe(&out));
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// A child process leading its own process group; the group (the child and what it started)
/// is killed and the child reaped when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// Finding 6: a corrupt record blocks neither `status` nor `update-revert`; `update-apply`
/// refuses a set no readable record describes; unknown versions and sets are refused naming
/// the file.
#[test]
fn a_corrupt_or_unknown_record_never_blocks_status_or_revert() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let record = std::fs::read_to_string(host.state_file()).unwrap();
    let mut future: serde_json::Value = serde_json::from_str(&record).unwrap();
    future["format_version"] = 99.into();
    let mut set_c: serde_json::Value = serde_json::from_str(&record).unwrap();
    set_c["set"] = "C".into();
    for (what, text) in [
        ("garbage", "{not json".to_string()),
        ("format_version 99", future.to_string()),
        ("set C", set_c.to_string()),
    ] {
        std::fs::write(host.state_file(), &text).unwrap();
        let out = host.updog(&["status"]);
        assert_eq!(code(&out), OK, "{what}: {}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("state.json") && text.contains("warning"),
            "{what}: {text}"
        );
        assert!(text.contains("next boot: B"), "{what}: {text}");
        if what == "format_version 99" {
            assert!(text.contains("format_version 99"), "{text}");
        }
        let out = host.updog(&["update-revert"]);
        assert_eq!(code(&out), OK, "{what}: {}", describe(&out));
        assert_eq!(host.signpost().next_boot(), Some(SetId::A), "{what}");
        let out = host.updog(&["update-apply"]);
        assert_eq!(code(&out), FAILURE, "{what}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("state.json") && err.contains("update-image"),
            "{what}: {err}"
        );
        assert_eq!(host.signpost().next_boot(), Some(SetId::A), "{what}");
        // Put B back to applied for the next case, through signpost.
        let out = host
            .signpost_cmd()
            .arg("upgrade-to-inactive")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
}

/// Republishes `host`'s repository with the targets of `spec`, the image `kind` of `release`
/// renamed to `name` (in the manifest and in the signed targets).
fn republish_renamed(host: &Host, spec: &RepoSpec, release: usize, kind: &str, name: &str) {
    let old = spec.releases[release].target_name(kind);
    let mut manifest = spec.manifest_json();
    manifest["updates"][release]["images"][kind] = name.into();
    let targets = spec
        .targets()
        .into_iter()
        .map(|(n, bytes)| match n.as_str() {
            "manifest.json" => (n, serde_json::to_vec(&manifest).unwrap()),
            _ if n == old => (name.to_string(), bytes),
            _ => (n, bytes),
        })
        .collect();
    e2e_tests::publish_targets(targets, &host.repo.dir);
}

/// Finding 7: an image name that cannot be fetched is found by the preflight, before set B
/// (holding a good older OS) is cleared.
#[test]
fn an_unusable_image_name_is_refused_before_the_inactive_set_is_cleared() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    // Set B holds an OS that booted before (BOOT-B is partition 5).
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        DiskImageBuilder::new().attributes(5, SetState::new(1, 0, true).unwrap().apply_to(0)),
    );
    let name = format!("images/./{}", spec.releases[1].target_name("hash"));
    republish_renamed(&host, &spec, 1, "hash", &name);
    let before = host.disk.bytes().unwrap();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&name) && err.contains("hash image"), "{err}");
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
    assert_eq!(state(&host, SetId::B), SetState::new(1, 0, true).unwrap());
}

/// Finding 8: a root image whose lz4 frame decodes to nothing is refused, naming it; B is left
/// cleared and A boots next.
#[test]
fn an_image_that_decodes_to_zero_bytes_is_refused() {
    let mut spec = releases(&["1.0.0", "1.1.0"]);
    spec.releases[1].root = Vec::new();
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = spec.releases[1].target_name("root");
    assert!(err.contains(&name) && err.contains("0 bytes"), "{err}");
    assert_eq!(state(&host, SetId::B), cleared());
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    assert!(!host.state_file().exists());
}

fn old_b() -> SetState {
    e2e_tests::OLD_B
}

fn host_with_old_b(spec: &RepoSpec) -> Host {
    Host::with_old_b(spec, "1.0.0")
}

/// Finding 5 and the crash points: `updog update` killed with SIGKILL at every step boundary
/// and before every GPT write or flush, then `updog update` again; and `update-revert` killed
/// at each of its steps, then run again.
#[test]
fn a_sigkill_at_every_step_leaves_a_consistent_disk_and_a_rerun_succeeds() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let new = &spec.releases[1];
    let update_points: Vec<String> = updog::steps::Step::ALL
        .iter()
        .take(9)
        .map(|s| s.name().to_string())
        // Three GPT writes (clear, mark valid, flip) of six I/O operations each: entries,
        // header, flush for the primary copy, then for the backup. In each: after the primary
        // header (not flushed), and between the copies; 19 is past the end. (The library
        // crash test stops at every one of them.)
        .chain([3, 4, 9, 10, 15, 16, 19].map(|n| format!("gpt-io:{n}")))
        .collect();
    for point in &update_points {
        let host = host_with_old_b(&spec);
        let out = cmd(&host, &["update"])
            .env("UPDOG_CRASH_AT", point)
            .output()
            .unwrap();
        let killed = out.status.code().is_none();
        e2e_tests::assert_consistent_after_stop(&host, new, old_b(), point);
        if killed {
            assert_ne!(point, "gpt-io:19", "killed past the last GPT operation");
        } else {
            assert_eq!(
                point,
                "gpt-io:19",
                "{point} was never reached: {}",
                describe(&out)
            );
            assert_eq!(code(&out), OK, "{point}: {}", describe(&out));
        }
        let out = host.updog(&["update"]);
        assert_eq!(code(&out), OK, "re-run after {point}: {}", describe(&out));
        assert!(host.b_holds(new), "{point}");
        assert_eq!(host.signpost().next_boot(), Some(SetId::B), "{point}");
    }
    for point in ["cancel-flip", "record-reverted", "gpt-io:1", "gpt-io:3"] {
        let host = Host::new(&spec, "1.0.0");
        let out = host.updog(&["update"]);
        assert_eq!(code(&out), OK, "{}", describe(&out));
        let out = cmd(&host, &["update-revert"])
            .env("UPDOG_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            out.status.code().is_none(),
            "{point}: not killed: {}",
            describe(&out)
        );
        e2e_tests::assert_consistent_after_stop(&host, new, old_b(), point);
        let out = host.updog(&["update-revert"]);
        assert_eq!(code(&out), OK, "re-run after {point}: {}", describe(&out));
        assert_eq!(host.signpost().next_boot(), Some(SetId::A), "{point}");
        assert_eq!(
            status_json(&host)["record_problem"],
            serde_json::Value::Null
        );
    }
}

/// The staged record is root's (mode 0600). `updog status` run by another user who can read the
/// disk image says that what is staged is unknown to it and that root can see it; it reports no
/// problem with the record (nothing is wrong with it) and does not claim nothing is staged.
#[test]
fn status_by_another_user_says_the_record_is_roots_instead_of_a_problem() {
    if !fixtures::gate::require_root("the unprivileged-user status test") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let mode = std::fs::metadata(host.state_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the record is root's");
    // The scratch directory, the disk image and the configuration are readable by "nobody".
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&host.disk_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(e2e_tests::bin_dir().join("updog"))
            .arg("--config")
            .arg(&host.config_path)
            .args(args)
            .output()
            .expect("setpriv updog")
    };
    let out = as_nobody(&["status"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("staged:  unknown to this user") && text.contains("readable by root only"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
    let out = as_nobody(&["status", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["record_needs_root"], true, "{json}");
    assert_eq!(json["record_problem"], serde_json::Value::Null, "{json}");
    // Root reads it.
    let json = status_json(&host);
    assert_eq!(json["record_needs_root"], false, "{json}");
    assert_eq!(json["staged"]["version"], "1.1.0", "{json}");
}

/// Issue 24, finding 3 (root): a second device node for the same disk (`mknod` with the loop
/// device's major:minor, another inode) is the same lock: `updog` pointed at either node is
/// refused (exit 4, naming the holder) while the other one is held, and set B is untouched.
#[test]
fn a_second_device_node_for_the_disk_is_the_same_lock() {
    if !fixtures::gate::require_root("the second-device-node lock test") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let spec = releases(&["1.0.0", "1.1.0"]);
    let mut host = Host::new(&spec, "1.0.0");
    host.attach_loop().expect("loop device");
    let canonical = host.disk_path.clone();
    let rdev = std::fs::metadata(&canonical).unwrap().rdev();
    let node = host.dir.path().join("second-node");
    let out = std::process::Command::new("mknod")
        .arg(&node)
        .arg("b")
        // Linux's encoding of a device number (glibc's gnu_dev_major / gnu_dev_minor).
        .arg((((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)).to_string())
        .arg(((rdev & 0xff) | ((rdev >> 12) & !0xff)).to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "mknod: {}", describe(&out));
    let before = state(&host, SetId::B);
    for (held, used) in [(&node, &canonical), (&canonical, &node)] {
        let lock = signpost::DiskLock::acquire(held, Duration::ZERO).unwrap();
        host.disk_path = used.clone();
        host.configure("");
        let out = host.updog(&["update-image"]);
        assert_eq!(
            code(&out),
            LOCKED,
            "held {held:?}, used {used:?}: {}",
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        assert_eq!(state(&host, SetId::B), before, "set B was changed");
    }
    // With nobody holding either node, the update goes through the second node.
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert!(host.b_holds(&spec.releases[1]));
    std::fs::remove_file(&node).unwrap();
}

/// Issue 24, finding 4 (root): what a disk image file's lock withstands. Any user who can read
/// the file can hold a shared `flock` on it; `updog` then exits 4 naming that process, its
/// user, its shared lock and the remedy (mode 0600). With the file mode 0600 (the guarantee a
/// disk image gets: the same as a device node's) that user cannot open it, so cannot lock it.
#[test]
fn a_reader_holding_a_disk_image_file_is_named_and_mode_0600_keeps_other_users_out() {
    if !fixtures::gate::require_root("the unprivileged-reader lock test") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let disk = host.disk_path.clone();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args);
        c
    };
    let holder = {
        use std::os::unix::process::CommandExt;
        as_nobody(&["flock", "-s", disk.to_str().unwrap(), "sleep", "600"])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("setpriv flock")
    };
    let holder_pid = holder.id();
    let holder = KillOnDrop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while signpost::DiskLock::acquire(&disk, Duration::ZERO).is_ok() {
        assert!(std::time::Instant::now() < deadline, "holder did not lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), LOCKED, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        format!("pid {holder_pid} (uid 65534) with a shared lock"),
        "mode 0600".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} in {err}");
    }
    drop(holder);
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_nobody(&["flock", "--nonblock", "-s"])
        .arg(&disk)
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody locked a mode 0600 disk image"
    );
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
}
