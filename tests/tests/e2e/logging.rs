//! Logging, end to end: the real `updog` and `signpost` binaries against a signed repository on
//! 127.0.0.1 and a disk image, with `--log-level` anywhere on the command line, `RUST_LOG`, and
//! stderr as the journal (`JOURNAL_STREAM` naming the stream, as systemd sets it), where every
//! line must carry its sd-daemon priority prefix.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use e2e_tests::{Host, RepoSpec, describe};

fn two_releases() -> RepoSpec {
    RepoSpec::two_releases()
}

/// Runs `cmd` with stderr going to a file; with `journal`, `JOURNAL_STREAM` names that file
/// (device and inode), which is what the journal's stream looks like to a service.
fn run_with_stderr_file(mut cmd: Command, journal: bool) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let out = cmd
        .stderr(Stdio::from(file))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&path).unwrap())
}

fn updog(host: &Host, args: &[&str]) -> Command {
    let mut cmd = host.updog_cmd();
    cmd.args(args);
    cmd
}

#[test]
fn the_journal_gets_priorities_and_info_tells_what_happened() {
    let host = Host::new(&two_releases(), "1.0.0");
    // Info is the default on the journal; the flag comes after the subcommand here.
    let (out, log) = run_with_stderr_file(updog(&host, &["update", "--progress", "none"]), true);
    assert!(out.status.success(), "{log}");
    assert!(!log.is_empty());
    for line in log.lines() {
        // Log records carry their priority; the CLI's own one-line reports ("Staged 1.1.0 on
        // set B") take the journal's default, info. A warning or error never goes unmarked.
        assert!(
            line.starts_with("<6>") || line.starts_with("<4>") || !line.starts_with("updog:"),
            "a warning or error without its priority: {line:?}\n{log}"
        );
        assert!(
            !line.starts_with("<3>"),
            "an error in a successful run: {log}"
        );
    }
    assert!(
        log.lines().filter(|l| l.starts_with("<6>")).count() >= 7,
        "{log}"
    );
    let expect = [
        "<6>verified repository metadata from http://127.0.0.1:",
        "root v1, timestamp v",
        "<6>chose demo-variant 1.1.0 (running 1.0.0): the newest update",
        "<6>cleared set B",
        "<6>root: ",
        "<6>boot: ",
        "<6>hash: ",
        "bytes written and read back in ",
        "<6>set B holds 1.1.0 and is marked valid",
        "<6>flipped the boot flags: set B boots next",
        // signpost's library says what each transition left on the disk.
        "<6>clear-inactive on ",
        "<6>upgrade-to-inactive on ",
        "set B priority=2 tries_left=1 successful=false",
    ];
    for e in expect {
        assert!(log.contains(e), "missing {e:?} in:\n{log}");
    }
    // One line per image, not one per buffer.
    assert_eq!(
        log.lines().filter(|l| l.starts_with("<6>root: ")).count(),
        1
    );
}

#[test]
fn an_error_reaches_the_journal_as_an_error() {
    let host = Host::new(&two_releases(), "1.0.0");
    // Nothing staged: a failure line with priority 3 (err), and nothing below warning.
    let (out, log) =
        run_with_stderr_file(updog(&host, &["update-apply", "--log-level", "warn"]), true);
    assert!(!out.status.success());
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty(), "no output");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("<3>") || l.starts_with("<4>")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.starts_with("<3>")), "{log}");

    // signpost too: a disk that does not exist.
    let mut sp = Command::new(e2e_tests::bin_dir().join("signpost"));
    sp.args(["--disk", "/nonexistent/disk.img", "--active", "A", "status"]);
    let (out, log) = run_with_stderr_file(sp, true);
    assert!(!out.status.success());
    assert!(log.starts_with("<3>"), "{log:?}");
    assert_eq!(log.lines().count(), 1, "{log:?}");
}

#[test]
fn log_level_works_before_and_after_the_subcommand_and_beats_rust_log() {
    let host = Host::new(&two_releases(), "1.0.0");
    for args in [
        &["--log-level", "info", "check-update"][..],
        &["check-update", "--log-level", "info"][..],
    ] {
        let (out, log) = run_with_stderr_file(updog(&host, args), false);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        assert!(
            log.contains("updog: info: chose demo-variant 1.1.0"),
            "{args:?}: {log}"
        );
        // Not the journal: no priority prefixes.
        assert!(!log.contains("<6>"), "{log}");
    }

    // Off a terminal and off the journal the default is warn: no info lines.
    let (_, log) = run_with_stderr_file(updog(&host, &["check-update"]), false);
    assert!(!log.contains("info:"), "{log}");

    // RUST_LOG turns it up; --log-level wins over it.
    let mut cmd = updog(&host, &["check-update"]);
    cmd.env("RUST_LOG", "updog=debug");
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("updog: info: verified repository metadata"),
        "{log}"
    );
    let mut cmd = updog(&host, &["check-update", "--log-level", "error"]);
    cmd.env("RUST_LOG", "updog=debug");
    let out = cmd.output().unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad level is a usage error.
    let out = host.updog(&["check-update", "--log-level", "loud"]);
    assert_eq!(out.status.code(), Some(i32::from(updog::exit::USAGE)));
}

#[test]
fn an_inherited_journal_stream_that_is_not_stderr_is_ignored() {
    let host = Host::new(&two_releases(), "1.0.0");
    let mut cmd = updog(&host, &["--log-level", "info", "check-update"]);
    // A service's child whose stderr was redirected still has the variable.
    cmd.env("JOURNAL_STREAM", "1:1");
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("updog: info: "), "{log}");
    assert!(!log.contains("<6>"), "{log}");
}

#[test]
fn a_recovered_problem_is_a_warning_and_debug_names_each_request() {
    let spec = two_releases();
    let host = Host::new(&spec, "1.0.0");
    let root = spec.releases[1].target_name("root");
    for path in host.repo.target_url_paths(&root) {
        host.server
            .fault_times(&path, fixtures::http::Fault::DropAfter(100_000), 1);
    }
    let (out, log) = run_with_stderr_file(
        updog(
            &host,
            &["update", "--progress", "none", "--log-level", "debug"],
        ),
        true,
    );
    assert!(out.status.success(), "{log}");
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("resuming with a Range request"))
        .collect();
    assert_eq!(resumed.len(), 1, "{log}");
    assert!(resumed[0].starts_with("<4>"), "{log}");
    assert!(resumed[0].contains("at byte 100000"), "{log}");
    // Debug lines: priority 7, their module named, one per request (the resume included).
    let gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("] GET http://127.0.0.1:"))
        .collect();
    assert!(
        gets.iter().all(|l| l.starts_with("<7>[tuf::transport")),
        "{log}"
    );
    assert!(
        gets.iter()
            .any(|l| l.contains(&root) && l.ends_with("from byte 100000")),
        "{log}"
    );
}
