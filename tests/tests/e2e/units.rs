//! The systemd units in `packaging/systemd/` agree with the binaries they run: every command
//! line they start parses with the real `updog`/`signpost`, the exit statuses `updog.service`
//! accepts are the CLI's "not a failure" codes, and the health gate's pieces name each other.
//! (`packaging/verify-units`, run by `.ci/run`, checks them with `systemd-analyze verify`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_tests::{bin_dir, describe};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// A unit file as section -> key -> values (a key may repeat, like `ExecStart=`).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(name: &str) -> Unit {
    let path = units_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{name}: not key=value: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map_or(&[], Vec::as_slice)
}

fn unit_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(units_dir())
        .expect("packaging/systemd")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        // systemd unit suffixes are case-sensitive.
        .filter(|n| {
            Path::new(n)
                .extension()
                .is_some_and(|e| e == "service" || e == "timer")
        })
        .collect();
    names.sort();
    names
}

/// Runs one of our binaries with `args` and `--help` appended: clap rejects an unknown
/// subcommand or a bad option value before it prints the help.
fn parses(exe: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(bin_dir().join(exe));
    cmd.args(args).arg("--help");
    let out = cmd.output().expect("running the binary");
    if out.status.success() {
        Ok(())
    } else {
        Err(describe(&out))
    }
}

#[test]
fn every_command_line_in_the_units_parses() {
    // The check can fail: a bad value is refused before --help.
    assert!(parses("updog", &["update", "--progress", "bogus"]).is_err());
    assert!(parses("signpost", &["no-such-subcommand"]).is_err());

    let mut checked = 0;
    for name in unit_names() {
        let unit = parse_unit(&name);
        for line in values(&unit, "Service", "ExecStart") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(exe) = words
                .first()
                .and_then(|w| w.strip_prefix("/usr/bin/"))
                .filter(|e| ["updog", "signpost", "updata"].contains(e))
            else {
                continue;
            };
            if let Err(e) = parses(exe, &words[1..]) {
                panic!("{name}: `{line}` does not parse: {e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} command lines found");
}

#[test]
fn updog_service_accepts_exactly_the_codes_that_are_not_failures() {
    let unit = parse_unit("updog.service");
    let codes: Vec<u8> = values(&unit, "Service", "SuccessExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| c.parse().expect("numeric exit status"))
        .collect();
    // Another updog holding the lock is doing the work; a stop while staging is clean.
    for needed in [updog::exit::LOCKED, updog::exit::INTERRUPTED] {
        assert!(codes.contains(&needed), "{needed} missing from {codes:?}");
    }
    for code in &codes {
        assert!(
            [updog::exit::LOCKED, updog::exit::INTERRUPTED].contains(code),
            "updog.service accepts exit {code}, which is not a benign updog exit code"
        );
    }
}

#[test]
fn the_timer_spreads_the_fleet_and_the_service_respects_waves() {
    let timer = parse_unit("updog.timer");
    assert!(!values(&timer, "Timer", "RandomizedDelaySec").is_empty());
    assert_eq!(values(&timer, "Install", "WantedBy"), ["timers.target"]);
    let service = parse_unit("updog.service");
    let exec = values(&service, "Service", "ExecStart").join(" ");
    for flag in ["--now", "-n", "--ignore-waves"] {
        assert!(
            !exec.split_whitespace().any(|w| w == flag),
            "updog.service passes {flag}: {exec}"
        );
    }
    // Staging never overwrites the fallback set while this boot is on trial.
    assert!(values(&service, "Unit", "After").iter().any(|v| {
        v.split_whitespace()
            .any(|u| u == "mark-successful-boot.service")
    }));
}

#[test]
fn the_health_gate_is_wired_the_systemd_way() {
    let mark = parse_unit("mark-successful-boot.service");
    for key in ["Requires", "After"] {
        assert!(
            values(&mark, "Unit", key)
                .iter()
                .any(|v| v.split_whitespace().any(|u| u == "boot-complete.target")),
            "mark-successful-boot.service lacks {key}=boot-complete.target"
        );
    }
    let check = parse_unit("boot-health-check.service");
    assert!(
        values(&check, "Unit", "Before")
            .iter()
            .any(|v| v.contains("boot-complete.target"))
    );
    assert_eq!(
        values(&check, "Install", "RequiredBy"),
        ["boot-complete.target"]
    );

    // The opt-in failure path names a unit we ship, which rolls back and reboots.
    let drop_in = std::fs::read_to_string(units_dir().join("boot-health-rollback.conf")).unwrap();
    let target = drop_in
        .lines()
        .find_map(|l| l.strip_prefix("OnFailure="))
        .expect("OnFailure= in the drop-in")
        .trim();
    let rollback = parse_unit(target);
    assert_eq!(
        values(&rollback, "Service", "ExecStart"),
        ["/usr/bin/signpost rollback-to-inactive"]
    );
    assert_eq!(values(&rollback, "Unit", "SuccessAction"), ["reboot"]);
    // The drop-in's prefix matches the example check but not the rollback unit itself (a
    // failed rollback must not trigger another rollback).
    assert!(!target.starts_with("boot-health-"));
    assert!(unit_names().iter().any(|n| n.starts_with("boot-health-")));
}

#[test]
fn has_boot_ever_succeeded_leaves_the_file_empty_until_a_boot_succeeds() {
    let unit = parse_unit("has-boot-ever-succeeded.service");
    let exec = values(&unit, "Service", "ExecStart").join(" ");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"/usr/bin/signpost"));
    let output = values(&unit, "Service", "StandardOutput")[0]
        .strip_prefix("truncate:")
        .expect("output truncated into a file")
        .to_string();
    assert_eq!(output, "/run/has-boot-ever-succeeded");
    // Early in boot, before the units that test the file.
    assert_eq!(values(&unit, "Unit", "DefaultDependencies"), ["no"]);

    let disk = fixtures::disk::DiskImageBuilder::new()
        .build_temp()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signpost = |args: &[&str], stdout: Option<&Path>| {
        let mut cmd = Command::new(bin_dir().join("signpost"));
        cmd.arg("--disk")
            .arg(&disk.path)
            .args(["--active", "A"])
            .args(args);
        if let Some(path) = stdout {
            // What StandardOutput=truncate:PATH does: a fresh, empty file.
            cmd.stdout(std::fs::File::create(path).unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
    };
    // The unit's own command line, with the disk named (a test has no host disk).
    let marker = dir.path().join("has-boot-ever-succeeded");
    signpost(&words[1..], Some(&marker));
    assert_eq!(
        std::fs::read(&marker).unwrap(),
        b"",
        "ConditionFileNotEmpty=! must hold on a disk that never booted successfully"
    );
    signpost(&["mark-successful-boot"], None);
    signpost(&words[1..], Some(&marker));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "true\n");
}

#[test]
fn the_update_api_socket_is_root_only_and_activates_updog_serve() {
    let socket = parse_unit("updog-api.socket");
    // The path Bottlerocket's API server listens on, which its update operator mounts.
    assert_eq!(values(&socket, "Socket", "ListenStream"), ["/run/api.sock"]);
    assert_eq!(values(&socket, "Socket", "SocketMode"), ["0600"]);
    assert_eq!(values(&socket, "Socket", "SocketUser"), ["root"]);
    // One server for all connections: the listening socket is passed (LISTEN_FDS, fd 3).
    assert_eq!(values(&socket, "Socket", "Accept"), ["no"]);
    assert_eq!(values(&socket, "Install", "WantedBy"), ["sockets.target"]);

    let service = parse_unit("updog-api.service");
    assert!(values(&service, "Unit", "Requires").contains(&"updog-api.socket".to_string()));
    let exec = values(&service, "Service", "ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert!(exec[0].starts_with("/usr/bin/updog serve"), "{exec:?}");
    // Its state file lives in the runtime directory systemd makes for it, kept across restarts.
    let runtime = values(&service, "Service", "RuntimeDirectory");
    assert_eq!(runtime, ["updog-api"]);
    assert!(exec[0].contains("/run/updog-api/"), "{exec:?}");
    assert_eq!(
        values(&service, "Service", "RuntimeDirectoryPreserve"),
        ["yes"]
    );
    // Started by its socket only.
    assert!(!service.contains_key("Install"));
}
