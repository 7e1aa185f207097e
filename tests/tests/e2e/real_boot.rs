//! The findings of booting the package for real (the virtual-machine test, `tests/vm`), each
//! reproduced here with the real binaries on a disk image, so that they fail fast without a VM:
//! the reboot hand-off under systemd, a release that failed to boot, an update already staged
//! or applied, and the boot record unit on a root that is read-only early in boot.

use bootpart::SetId;
use e2e_tests::{Host, Migration, Release, RepoSpec, bootloader_pick, describe};
use fixtures::disk::PartKind;
use signpost::SetState;

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn state(host: &Host, set: SetId) -> SetState {
    host.signpost().state(set).expect("set exists")
}

/// Requests for image targets (not metadata) the server saw.
fn image_requests(host: &Host) -> Vec<String> {
    host.server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("root") || p.contains("boot") || p.contains("hash"))
        .filter(|p| !p.to_ascii_lowercase().ends_with(".json"))
        .collect()
}

/// Under `updog.service`, `updog update --reboot` asks for the reboot and the shutdown it
/// starts stops the service: systemd sends SIGTERM to every process of the unit, `updog` and
/// the reboot command alike, often before the command returns. The update succeeded and the
/// reboot is under way: the exit status must say success (it said "reboot command failed:
/// signal: 15", exit 1, on every good update of a real boot).
#[test]
fn a_reboot_that_stops_the_service_ends_a_good_update_with_success() {
    let spec = RepoSpec::two_releases();
    let mut host = Host::new(&spec, "1.0.0");
    let script = host.dir.path().join("systemctl-reboot.sh");
    let log = host.dir.path().join("reboot-asked");
    // What the service's stop does to its control group, as the reboot begins.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho asked > '{}'\nkill -TERM $PPID\nkill -TERM $$\nsleep 5\n",
            log.display()
        ),
    )
    .unwrap();
    e2e_tests::set_executable(&script);
    host.configure(&format!("reboot_command = [\"{}\"]", script.display()));

    let out = host.updog(&["update", "--reboot", "--progress", "json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(log.exists(), "the reboot command never ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains(r#""event":"done""#), "{stdout}");
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

/// After the flip the new set gets one try. When that boot is never marked successful (its
/// health check failed), the bootloader falls back to the old set by itself, and the host is
/// back where it started, with the same release on offer. It must not take it again (on a real
/// boot the hourly timer re-staged it and, with `--reboot`, rebooted into it every hour): check,
/// update and status say it failed and why; `-i VERSION` still takes it, and a newer release is
/// taken as usual.
#[test]
fn a_release_that_failed_to_boot_is_not_taken_again() {
    let mut spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    // Boot B: its one try is used; its health check fails, so nothing marks it.
    let pick = bootloader_pick(&host.disk_path).expect("a set boots");
    assert_eq!((pick.set, pick.tries_after), (SetId::B, 0));
    // The next boot falls back to A, which runs 1.0.0 again.
    let pick = bootloader_pick(&host.disk_path).expect("a set boots");
    assert_eq!(pick.set, SetId::A);
    host.set_running("1.0.0", SetId::A);

    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1.1.0 failed to boot on this host") && err.contains("-i 1.1.0"),
        "{err}"
    );
    host.server.clear_log();
    let before = host.disk.bytes().unwrap();
    let out = host.updog(&["update", "--reboot"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No update required"),
        "{}",
        describe(&out)
    );
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
    assert!(
        host.reboot_calls().is_empty(),
        "rebooted into a failed release"
    );
    assert!(
        image_requests(&host).is_empty(),
        "{:?}",
        image_requests(&host)
    );

    let out = host.updog(&["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["failed_boots"][0]["version"], "1.1.0", "{status}");
    assert_eq!(status["failed_boots"][0]["set"], "B", "{status}");
    let out = host.updog(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failed:  1.1.0 did not boot on set B"),
        "{}",
        describe(&out)
    );

    // Asked for by version, it is taken again.
    let out = host.updog(&["update-image", "-i", "1.1.0"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(host.b_holds(&spec.releases[1]));
    // The failure is remembered although staging replaced the record it was seen in.
    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));

    // A newer release is taken as usual.
    spec.releases.push(Release::new("1.2.0"));
    spec.set_max_version(&"1.2.0".parse().unwrap());
    spec.migrations.push(Migration {
        from: "1.1.0".parse().unwrap(),
        to: "1.2.0".parse().unwrap(),
        name: "migrate_v1.2.0_more.lz4".to_string(),
        content: b"1.1 -> 1.2".to_vec(),
    });
    e2e_tests::republish(&spec, &host.repo.dir, 2);
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(host.b_holds(&spec.releases[2]));
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

/// A second `updog update` before the reboot found its update already applied and downloaded
/// and wrote all three images again (with the hourly timer, every hour until a reboot). It
/// must touch neither the network's image targets nor the disk, say so, and exit 0; `check`
/// says Ready. An update staged with `update-image` is flipped by `update` without a download.
#[test]
fn an_update_already_staged_or_applied_is_not_downloaded_or_written_again() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["update-image"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(state(&host, SetId::B), SetState::new(0, 1, false).unwrap());

    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let update: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(update["version"], "1.1.0");
    assert_eq!(update["update_state"], "Staged", "{update}");

    host.server.clear_log();
    let root_before = host.partition_bytes(PartKind::Root, SetId::B, 4096);
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        image_requests(&host).is_empty(),
        "{:?}",
        image_requests(&host)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1.1.0 is already staged on set B"),
        "{}",
        describe(&out)
    );
    assert_eq!(state(&host, SetId::B), SetState::new(2, 1, false).unwrap());

    let before = host.disk.bytes().unwrap();
    host.server.clear_log();
    let out = host.updog(&["update", "--reboot"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        image_requests(&host).is_empty(),
        "{:?}",
        image_requests(&host)
    );
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1.1.0 is already applied"),
        "{}",
        describe(&out)
    );
    // --reboot still hands off to the reboot that was asked for.
    assert_eq!(host.reboot_calls(), ["reboot now"]);
    assert_eq!(
        host.partition_bytes(PartKind::Root, SetId::B, 4096),
        root_before
    );

    let out = host.updog(&["check-update", "--json"]);
    let update: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(update["update_state"], "Ready", "{update}");
    let out = host.updog(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["update_state"], "Ready", "{status}");
}

/// Units that run before the root file system is remounted writable (`DefaultDependencies=no`
/// and ordered before `local-fs.target`) must not write under `/etc`: on a stock distribution
/// `/` (and `/etc` with it) is read-only until `systemd-remount-fs.service`, and the
/// has-boot-ever-succeeded unit failed there with "Failed to set up standard output: Read-only
/// file system", which failed the health check, so no boot was ever marked successful.
#[test]
fn no_early_unit_writes_where_a_read_only_root_forbids_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let mut early = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let has = |line: &str| lines.contains(&line);
        let before_local_fs = lines.iter().any(|l| {
            l.strip_prefix("Before=")
                .is_some_and(|v| v.split_whitespace().any(|u| u == "local-fs.target"))
        });
        if !(has("DefaultDependencies=no") && before_local_fs) {
            continue;
        }
        early += 1;
        for line in &lines {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if matches!(
                key,
                "StandardOutput" | "StandardError" | "RequiresMountsFor"
            ) {
                let target = value
                    .trim_start_matches("truncate:")
                    .trim_start_matches("append:")
                    .trim_start_matches("file:");
                assert!(
                    target.starts_with("/run") || !target.starts_with('/'),
                    "{}: {line} needs a writable root before it is remounted",
                    path.display()
                );
            }
        }
    }
    assert!(early > 0, "no early unit found in {}", dir.display());
}

/// Reverting a flip (`updog update-revert`, `signpost cancel-upgrade`) or clearing the other
/// set while the running set was never confirmed and the other set is the one that booted
/// before would leave the disk with no confirmed set to fall back to (issue 24, finding 2:
/// A = (2, 0, 0), B = (0, 0, 1) after the revert, nothing bootable if A fails). Both binaries
/// refuse, name the way out, and leave the disk as it was.
#[test]
fn no_command_takes_away_the_last_confirmed_fallback() {
    let spec = RepoSpec::two_releases();
    // Running A, never marked (its try used up); B booted before and is preferred (a rollback
    // to B was asked for from this boot).
    let a = SetState::new(1, 0, false).unwrap();
    let b = SetState::new(2, 0, true).unwrap();
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        fixtures::disk::DiskImageBuilder::new().attributes(5, b.apply_to(0)),
    );
    if !fixtures::gate::require_tool("cgpt", "--help") {
        return;
    }
    // Set A's BOOT partition is number 1; cgpt writes its bits (Host marks it booted OK).
    let out = std::process::Command::new("cgpt")
        .args(["add", "-i", "1", "-P", "1", "-T", "0", "-S", "0"])
        .arg(&host.disk_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(state(&host, SetId::A), a);
    let before = host.disk.bytes().unwrap();
    let out = host.updog(&["update-revert"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cancel-upgrade refused") && err.contains("mark-successful-boot"),
        "{err}"
    );
    for args in [["cancel-upgrade"], ["clear-inactive"]] {
        let out = host.signpost_cmd().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{}",
            describe(&out)
        );
    }
    assert!(host.disk.bytes().unwrap() == before, "the disk changed");
}
