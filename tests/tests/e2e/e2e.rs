//! End-to-end: the real `updog` binary against a signed repository served over HTTP on
//! 127.0.0.1 and a GPT disk image (a loop device when root).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bootpart::SetId;
use chrono::{DateTime, Utc};
use e2e_tests::{Host, Migration, Release, RepoSpec, describe};
use fixtures::disk::{DiskImageBuilder, PartKind};
use fixtures::http::Fault;
use signpost::SetState;

const OK: i32 = 0;
const FAILURE: i32 = 1;
const LOCKED: i32 = 4;
const INTERRUPTED: i32 = 5;

fn two_releases() -> RepoSpec {
    RepoSpec::two_releases()
}

fn state(host: &Host, set: SetId) -> SetState {
    host.signpost().state(set).expect("set exists")
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Injects `fault` into every URL the target can be fetched under (`times` hits each, or
/// every request).
fn fault_target(host: &Host, name: &str, fault: &Fault, times: Option<usize>) -> Vec<String> {
    let paths = host.repo.target_url_paths(name);
    assert!(!paths.is_empty(), "target {name} not published");
    for path in &paths {
        match times {
            Some(n) => host.server.fault_times(path, fault.clone(), n),
            None => host.server.fault(path, fault.clone()),
        }
    }
    paths
}

/// Asserts the failure invariants: the inactive set B is cleared, set A is exactly as before
/// and boots next, and no staged record claims anything.
fn assert_failed_cleanly(host: &Host, a_before: SetState) {
    assert_eq!(
        state(host, SetId::B),
        SetState::new(0, 0, false).unwrap(),
        "B cleared"
    );
    assert_eq!(state(host, SetId::A), a_before, "A untouched");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "A boots next");
    assert!(!host.state_file().exists(), "no staged record");
    assert!(host.reboot_calls().is_empty(), "no reboot");
}

/// Spawns `updog ARGS --progress json` and waits until it reports image bytes.
fn spawn_staging(host: &Host, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = host.updog_cmd();
    cmd.args(args);
    host.spawn_updog_until(cmd, r#""event":"image""#)
}

#[test]
fn full_update_flips_to_the_new_set_and_hands_off_to_reboot() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");

    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let update: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(update["version"], "1.1.0");
    assert_eq!(update["variant"], e2e_tests::VARIANT);
    for key in ["arch", "max_version", "waves", "images"] {
        assert!(
            update.get(key).is_some(),
            "reference key {key} missing: {update}"
        );
    }
    assert_eq!(update["migrations"][0], "migrate_v1.1.0_settings.lz4");

    let out = host.updog(&["update", "--reboot"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));

    // Every image is on set B, byte for byte.
    let new = &spec.releases[1];
    for kind in [PartKind::Boot, PartKind::Root, PartKind::Hash] {
        let want = new.image(kind);
        assert!(
            host.partition_bytes(kind, SetId::B, want.len()) == want,
            "{kind:?} of set B differs from the release"
        );
    }
    // Flags: B tried once next, A the fallback.
    assert_eq!(state(&host, SetId::B), SetState::new(2, 1, false).unwrap());
    assert_eq!(state(&host, SetId::A).priority, 1);
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
    // The reboot command ran once, after the flip.
    assert_eq!(host.reboot_calls(), ["reboot now"]);
    // The migration was cached under its consistent-snapshot name.
    let cached = host.cached_migrations();
    assert!(
        cached
            .iter()
            .any(|n| n.ends_with(".migrate_v1.1.0_settings.lz4")),
        "{cached:?}"
    );

    let out = host.updog(&["status", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"]["version"], "1.0.0");
    assert_eq!(status["running"]["set"], "A");
    assert_eq!(status["staged"]["version"], "1.1.0");
    assert_eq!(status["staged"]["set"], "B");
    assert_eq!(status["staged"]["applied"], true);
    assert_eq!(status["next_boot"], "B");

    // update-revert puts A back in front; update-apply flips again.
    assert_eq!(code(&host.updog(&["update-revert"])), OK);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    assert_eq!(code(&host.updog(&["update-apply"])), OK);
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

#[test]
fn a_host_whose_wave_has_not_opened_is_told_the_version_and_the_time() {
    let mut spec = two_releases();
    let opens = DateTime::<Utc>::from_timestamp(Utc::now().timestamp() + 2 * 86_400, 0).unwrap();
    spec.releases[1].waves = BTreeMap::from([(2048, opens)]);
    let host = Host::new(&spec, "1.0.0");
    let disk_before = host.disk.bytes().unwrap();

    // As the reference: no update available is exit 1 for check-update.
    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["no_update"]["reason"], "not_eligible_yet", "{v}");
    assert_eq!(v["no_update"]["version"], "1.1.0");
    let ready: DateTime<Utc> = v["no_update"]["ready_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ready, opens);

    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("1.1.0"), "{text}");
    assert!(
        text.contains(&opens.format("%Y-%m-%d").to_string()),
        "{text}"
    );

    // `update` with nothing to do is not a failure (a periodic unit must not fail hourly).
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No update required"),
        "{}",
        describe(&out)
    );
    assert!(host.disk.bytes().unwrap() == disk_before, "disk changed");

    // --now ignores the waves.
    let out = host.updog(&["check-update", "--now"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
}

#[test]
fn a_pulled_back_release_is_replaced_by_the_newest_allowed_one() {
    let mut spec = two_releases();
    // 1.1.0 was bad: max_version goes back to 1.0.0 everywhere.
    spec.set_max_version(&"1.0.0".parse().unwrap());
    let host = Host::new(&spec, "1.1.0");

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let old = &spec.releases[0];
    assert!(host.partition_bytes(PartKind::Root, SetId::B, old.root.len()) == old.root);
    let status: serde_json::Value =
        serde_json::from_slice(&host.updog(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["staged"]["version"], "1.0.0");
}

#[test]
fn a_version_lock_picks_exactly_that_version() {
    let mut spec = two_releases();
    spec.releases.push(Release::new("1.2.0"));
    spec.set_max_version(&"1.2.0".parse().unwrap());
    spec.migrations.push(Migration {
        from: "1.1.0".parse().unwrap(),
        to: "1.2.0".parse().unwrap(),
        name: "migrate_v1.2.0_more.lz4".to_string(),
        content: b"1.1 -> 1.2".to_vec(),
    });
    let mut host = Host::new(&spec, "1.0.0");
    host.configure("version_lock = \"v1.1.0\"");

    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "1.1.0");

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let locked = &spec.releases[1];
    assert!(host.partition_bytes(PartKind::Root, SetId::B, locked.root.len()) == locked.root);

    // Locked to the running version: nothing to do, and it says so.
    host.set_running("1.1.0", SetId::A);
    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_connection_dropped_mid_image_is_resumed() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");
    let root = spec.releases[1].target_name("root");
    let paths = fault_target(&host, &root, &Fault::DropAfter(100_000), Some(1));

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let new = &spec.releases[1];
    assert!(host.partition_bytes(PartKind::Root, SetId::B, new.root.len()) == new.root);
    let ranges: Vec<_> = paths
        .iter()
        .flat_map(|p| host.server.requests_for(p))
        .filter_map(|r| r.range)
        .collect();
    assert!(
        ranges.iter().any(|r| r.starts_with("bytes=100000-")),
        "no resume from the drop point: {ranges:?}"
    );
}

#[test]
fn a_stalled_server_fails_cleanly() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");
    let a_before = state(&host, SetId::A);
    fault_target(
        &host,
        &spec.releases[1].target_name("root"),
        &Fault::Stall { after: 50_000 },
        None,
    );

    let started = Instant::now();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    // stall_timeout_secs = 2 in the test config: it gives up promptly, not after minutes.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root"), "{err}");
    assert_failed_cleanly(&host, a_before);
}

#[test]
fn a_tampered_image_byte_is_caught_and_the_host_stays_on_its_set() {
    let spec = two_releases();
    // B carries old flags from an earlier life, to show they are cleared first.
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        DiskImageBuilder::new().attributes(5, 1 << 56),
    );
    let a_before = state(&host, SetId::A);
    for file in host
        .repo
        .target_files(&spec.releases[1].target_name("boot"))
    {
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }

    let out = host.updog(&["update", "--reboot"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256") && err.contains("boot"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert_failed_cleanly(&host, a_before);
}

#[test]
fn an_image_larger_than_its_partition_is_refused() {
    let mut spec = two_releases();
    // 1.5 MiB of root image for a 1 MiB partition: compresses below 1 MiB, so only the decoder
    // can tell.
    spec.releases[1].root = e2e_tests::payload(77, 1536 * 1024);
    let host = Host::with_disk(&spec, "1.0.0", DiskImageBuilder::new().root_size(1 << 20));
    let a_before = state(&host, SetId::A);
    let hash_b_before = host.partition_bytes(PartKind::Hash, SetId::B, 1 << 20);

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root") && err.contains("fit"), "{err}");
    assert_failed_cleanly(&host, a_before);
    // Nothing was written past the partition's end.
    assert!(host.partition_bytes(PartKind::Hash, SetId::B, 1 << 20) == hash_b_before);
}

#[test]
fn an_image_that_cannot_fit_is_refused_before_the_disk_is_touched() {
    let mut spec = two_releases();
    // Incompressible data larger than the partition: the signed length alone rules it out.
    let mut noise = Vec::with_capacity(1536 * 1024);
    let mut x: u32 = 0x1234_5678;
    while noise.len() < 1536 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    spec.releases[1].root = noise;
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        DiskImageBuilder::new()
            .root_size(1 << 20)
            .attributes(5, 1 << 56),
    );
    let disk_before = host.disk.bytes().unwrap();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot fit"));
    assert!(host.disk.bytes().unwrap() == disk_before, "disk changed");
}

#[test]
fn a_second_updog_is_refused_while_the_first_holds_the_lock() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");
    fault_target(
        &host,
        &spec.releases[1].target_name("root"),
        &Fault::Slow {
            bytes: 16 * 1024,
            every: Duration::from_millis(100),
        },
        None,
    );
    let (first, _stdout) = spawn_staging(&host, &["update"]);

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), LOCKED, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another update or boot-flag change is in progress"),
        "{err}"
    );
    assert!(
        err.contains(&first.id().to_string()),
        "holder pid named: {err}"
    );

    let out = first.wait_with_output().unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

fn signal_while_staging_stops_cleanly(signal: &str) {
    let spec = two_releases();
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        DiskImageBuilder::new().attributes(5, 1 << 56),
    );
    let a_before = state(&host, SetId::A);
    fault_target(
        &host,
        &spec.releases[1].target_name("root"),
        &Fault::Slow {
            bytes: 32 * 1024,
            every: Duration::from_millis(100),
        },
        None,
    );
    let (child, _stdout) = spawn_staging(&host, &["update", "--reboot"]);
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), INTERRUPTED, "{signal}: {}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(10), "slow to stop");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled; set B left cleared"));
    assert_failed_cleanly(&host, a_before);
}

#[test]
fn sigterm_while_staging_stops_cleanly() {
    signal_while_staging_stops_cleanly("TERM");
}

#[test]
fn sigint_while_staging_stops_cleanly() {
    signal_while_staging_stops_cleanly("INT");
}

#[test]
fn full_update_on_a_loop_device() {
    if !fixtures::gate::require_root("the loop-device update") {
        return;
    }
    let spec = two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    host.attach_loop().expect("attaching a loop device");
    assert!(
        host.disk_path.starts_with("/dev/"),
        "{}",
        host.disk_path.display()
    );

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let new = &spec.releases[1];
    for kind in [PartKind::Boot, PartKind::Root, PartKind::Hash] {
        let want = new.image(kind);
        assert!(
            host.partition_bytes(kind, SetId::B, want.len()) == want,
            "{kind:?} of set B differs on the loop device"
        );
    }
    assert_eq!(state(&host, SetId::B), SetState::new(2, 1, false).unwrap());
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

#[test]
fn sigterm_after_the_flip_does_not_interrupt_the_reboot_hand_off() {
    let spec = two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    // A reboot command that takes a moment and records its start and its end.
    let log = host.dir.path().join("slow-reboot.log");
    let script = host.dir.path().join("slow-reboot.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho started >> '{0}'\nsleep 1\necho finished >> '{0}'\n",
            log.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    host.configure(&format!("reboot_command = [\"{}\"]", script.display()));

    let mut child = host
        .updog_cmd()
        .args(["update", "--reboot", "--progress", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut flipped = false;
    while stdout.read_line(&mut line).unwrap() > 0 {
        if line.contains(r#""event":"flipped""#) {
            flipped = true;
            break;
        }
        line.clear();
    }
    assert!(flipped, "no flip reported: {:?}", child.wait_with_output());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started")) {
        assert!(Instant::now() < deadline, "reboot command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "started\nfinished\n"
    );
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

#[test]
fn the_agent_example_updates_a_host_through_the_library() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");
    let agent = e2e_tests::bin_dir().join("agent");
    let out = std::process::Command::new(agent)
        .arg("--metadata-url")
        .arg(host.server.url_for(host.repo.metadata_path))
        .arg("--targets-url")
        .arg(host.server.url_for(host.repo.targets_path))
        .arg("--disk")
        .arg(&host.disk_path)
        .args(["--active", "A", "--seed", "1000"])
        .arg("--root")
        .arg(&host.repo.root_json)
        .arg("--os-release")
        .arg(&host.os_release)
        .arg("--state-dir")
        .arg(host.dir.path().join("agent"))
        .output()
        .unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("agent: 1.0.0 -> 1.1.0 (1 migration(s))"),
        "{text}"
    );
    assert!(text.contains("agent: root 100%"), "{text}");
    assert!(text.contains("set B boots next"), "{text}");
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
    // The update state in Bottlerocket's terms: Available after the check, Ready after the
    // flip, in that order; the status object printed last says Ready too.
    let states: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("agent: update state "))
        .collect();
    assert_eq!(states, ["Available", "Ready"], "{text}");
    let status: serde_json::Value =
        serde_json::from_str(&text[text.find("\n{").expect("status JSON")..])
            .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(status["update_state"], "Ready", "{status}");
    assert_eq!(status["next_boot"], "B", "{status}");
    assert_eq!(status["running"]["set"], "A", "{status}");
}

#[test]
fn unknown_configuration_keys_are_warnings_and_bad_values_are_errors_naming_the_key() {
    let spec = two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    host.configure("colour = \"blue\"");
    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: unknown configuration key \"colour\""),
        "{}",
        describe(&out)
    );
    host.configure("seed = 4096");
    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`seed`") && err.contains("4096"), "{err}");
}

#[test]
fn check_update_all_lists_every_update_newest_first() {
    let mut spec = two_releases();
    spec.releases.push(Release::new("0.9.0"));
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["whats", "--all", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let versions: Vec<_> = list
        .iter()
        .map(|u| u["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0", "0.9.0"]);
    assert!(
        list.iter()
            .all(|u| u.get("images").is_some() && u.get("waves").is_some())
    );
}

#[test]
fn update_image_stages_without_flipping_and_update_apply_flips_later() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");

    // Nothing staged yet: nothing to apply.
    let out = host.updog(&["update-apply"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is staged"));

    let out = host.updog(&["update-image", "--progress", "json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    // Every progress line is versioned JSON.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(events.iter().all(|e| e["v"] == 1));
    // The run ends with `done` naming what is staged where, right after the set is marked valid.
    let [.., valid, done] = &events[..] else {
        panic!("too few events: {events:?}");
    };
    assert_eq!(valid["event"], "marked_valid");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(
        (&done["version"], &done["set"], &done["applied"]),
        (&"1.1.0".into(), &"B".into(), &false.into()),
        "{done}"
    );
    assert_eq!(state(&host, SetId::B), SetState::new(0, 1, false).unwrap());
    assert_eq!(
        host.signpost().next_boot(),
        Some(SetId::A),
        "not flipped yet"
    );
    assert!(host.reboot_calls().is_empty());

    let out = host.updog(&["update-apply", "--reboot"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
    assert_eq!(host.reboot_calls(), ["reboot now"]);
}

#[test]
fn update_image_flag_forces_a_version_down() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.1.0");
    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let out = host.updog(&["update", "--image", "1.0.0"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let old = &spec.releases[0];
    assert!(host.partition_bytes(PartKind::Root, SetId::B, old.root.len()) == old.root);
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

#[test]
fn the_demo_runs_to_the_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .unwrap();
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "$ updog check-update",
        "$ updog update",
        "bootloader: booting set B (tries left 1 -> 0)",
        "$ signpost mark-successful-boot",
        "$ signpost rollback-to-inactive",
        "bootloader: booting set A",
        "done",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// Points every state path of `host` under `dir`, with the staged record at `record`.
fn state_paths(host: &mut Host, dir: &std::path::Path, record: &std::path::Path) {
    host.extra_config.clear();
    host.configure(&format!(
        "metadata_dir = \"{d}/metadata\"\nmigrations_dir = \"{d}/migrations\"\n\
         migrations_metadata_dir = \"{d}/migrations-metadata\"\nstate_file = \"{r}\"",
        d = dir.display(),
        r = record.display(),
    ));
}

#[test]
fn a_full_state_file_system_ends_with_a_clear_error_and_the_host_boots_what_it_booted() {
    let mut spec = two_releases();
    // A migration too large for the small file system below.
    spec.migrations[0].content = e2e_tests::payload(9, 1 << 20);
    let mut host = Host::new(&spec, "1.0.0");
    let small = host.dir.path().join("small");
    let records = host.dir.path().join("records");
    std::fs::create_dir(&small).unwrap();
    std::fs::create_dir(&records).unwrap();
    let Some(small_fs) = e2e_tests::Tmpfs::mount(&small, "512k") else {
        fixtures::gate::skip("cannot mount a tmpfs (not root?): no full file system");
        return;
    };
    let a_before = state(&host, SetId::A);
    let disk_before = host.disk.bytes().unwrap();
    let untouched = |host: &Host, out: &std::process::Output, needle: &str| {
        assert_eq!(code(out), FAILURE, "{}", describe(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
        assert!(
            host.disk.bytes().unwrap() == disk_before,
            "the disk changed"
        );
    };

    // 1. No room at all: the verified metadata cannot be stored.
    state_paths(&mut host, &small, &small.join("state.json"));
    let filler = small_fs.fill();
    untouched(&host, &host.updog(&["update"]), "No space left on device");

    // 2. Room for the metadata, not for the migration: refused before the download.
    std::fs::remove_file(&filler).unwrap();
    untouched(&host, &host.updog(&["update"]), "not enough free space");

    // 3. Migrations fit, but the staged record cannot be written: the images were staged,
    //    and the set that no record describes is cleared again.
    let Some(records_fs) = e2e_tests::Tmpfs::mount(&records, "64k") else {
        panic!("mounting a second tmpfs failed");
    };
    let roomy = host.dir.path().join("roomy");
    state_paths(&mut host, &roomy, &records.join("state.json"));
    let filler = records_fs.fill();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.json") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert_eq!(
        state(&host, SetId::B),
        SetState::new(0, 0, false).unwrap(),
        "B cleared"
    );
    assert_eq!(state(&host, SetId::A), a_before, "A untouched");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "A boots next");
    assert!(host.reboot_calls().is_empty());

    // 4. Staged with space, then the disk fills before update-apply: refused before the flip.
    std::fs::remove_file(&filler).unwrap();
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let filler = records_fs.fill();
    let out = host.updog(&["update-apply"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{}",
        describe(&out)
    );
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "A boots next");

    // 5. With space again the same host applies.
    std::fs::remove_file(&filler).unwrap();
    let out = host.updog(&["update-apply"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));

    // 6. The disk fills again before update-revert: the revert works from the GPT alone (a
    //    record that cannot be written never blocks it), and status shows the stale record as
    //    such.
    let filler = records_fs.fill();
    let out = host.updog(&["update-revert"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "A boots next");
    let out = host.updog(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("next boot: A"), "{text}");
    assert!(
        text.contains("1.1.0 on set B") && !text.contains("(applied)"),
        "{text}"
    );
    assert!(text.contains("says 1.1.0 is applied"), "{text}");

    // 7. With space again the record follows the disk on the next revert.
    std::fs::remove_file(&filler).unwrap();
    let out = host.updog(&["update-revert"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "A boots next");
    let text = String::from_utf8_lossy(&host.updog(&["status"]).stdout).to_string();
    assert!(!text.contains("warning"), "{text}");
}

#[test]
fn failures_are_one_line_on_stderr_naming_the_problem() {
    let spec = two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    let one_line = |out: &std::process::Output, needles: &[&str]| {
        assert_eq!(code(out), FAILURE, "{}", describe(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
    };

    // Tampered metadata: the timestamp's signed version changed, its signature kept.
    let timestamp = host.repo.dir.join("metadata/timestamp.json");
    let original = std::fs::read(&timestamp).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&original).unwrap();
    doc["signed"]["version"] = serde_json::json!(99);
    std::fs::write(&timestamp, serde_json::to_vec(&doc).unwrap()).unwrap();
    one_line(&host.updog(&["check-update"]), &["timestamp", "signature"]);
    std::fs::write(&timestamp, original).unwrap();

    // An unreachable server: the URL and the cause are named.
    host.configure(
        "metadata_base_url = \"http://127.0.0.1:9/metadata/\"\n\
         targets_base_url = \"http://127.0.0.1:9/targets/\"\nretries = 0",
    );
    one_line(
        &host.updog(&["check-update"]),
        &["127.0.0.1:9", "cannot connect", "refused"],
    );

    // A missing trusted root (and no root trusted earlier): the path is named.
    host.extra_config.clear();
    host.configure(&format!(
        "trusted_root = \"/nonexistent/updog-root.json\"\nmetadata_dir = \"{}\"",
        host.dir.path().join("fresh-metadata").display()
    ));
    one_line(
        &host.updog(&["check-update"]),
        &["/nonexistent/updog-root.json"],
    );

    // A trusted root that is not JSON: the path is named, and the parser's complaint.
    let garbled = host.dir.path().join("garbled-root.json");
    std::fs::write(&garbled, b"{\"signed\": ").unwrap();
    host.extra_config.clear();
    host.configure(&format!(
        "trusted_root = \"{}\"\nmetadata_dir = \"{}\"",
        garbled.display(),
        host.dir.path().join("fresh-metadata").display()
    ));
    one_line(
        &host.updog(&["check-update"]),
        &[&garbled.display().to_string(), "does not parse"],
    );

    // A bad value: the key is named.
    host.extra_config.clear();
    host.configure("version_lock = \"banana\"");
    one_line(
        &host.updog(&["check-update"]),
        &["`version_lock`", "banana"],
    );
}

/// Right after a reboot into an update, before `mark-successful-boot.service` marked the boot
/// good, the set that booted before is the only fallback: `updog update` refuses to clear it,
/// says why and what to run, and changes nothing on the disk. Once the boot is marked
/// successful the update goes through.
#[test]
fn an_update_is_refused_until_the_running_boot_is_marked_successful() {
    let mut spec = two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    // The bootloader tries B (its one try used up); the host now runs 1.1.0 from B, not yet
    // marked successful.
    let pick = e2e_tests::bootloader_pick(&host.disk_path).expect("a set boots");
    assert_eq!((pick.set, pick.tries_after), (SetId::B, 0));
    host.active = SetId::B;
    host.set_running("1.1.0", SetId::B);
    assert!(!state(&host, SetId::B).successful);

    spec.releases.push(Release::new("1.2.0"));
    spec.set_max_version(&"1.2.0".parse().unwrap());
    spec.migrations.push(Migration {
        from: "1.1.0".parse().unwrap(),
        to: "1.2.0".parse().unwrap(),
        name: "migrate_v1.2.0_more.lz4".to_string(),
        content: b"1.1 -> 1.2".to_vec(),
    });
    e2e_tests::republish(&spec, &host.repo.dir, 2);
    let before = host.disk.bytes().unwrap();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "running set B has not been marked successful",
        "set A, the only fallback",
        "signpost mark-successful-boot",
        "mark-successful-boot.service",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
    assert_eq!(state(&host, SetId::A), SetState::new(1, 0, true).unwrap());

    let out = host
        .signpost_cmd()
        .arg("mark-successful-boot")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let new = &spec.releases[2];
    assert!(host.partition_bytes(PartKind::Root, SetId::A, new.root.len()) == new.root);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}
