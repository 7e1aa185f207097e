//! The operator's common mistakes, each made for real against the `updog` binary (a signed
//! repository on 127.0.0.1, a GPT disk image), and the message it gets: one table of mistake ->
//! message. Every message must name what was wrong (the file or the key) and say what to do.

use std::process::Output;
use std::time::Duration;

use e2e_tests::{Host, RepoSpec, describe};
use fixtures::disk::DiskImageBuilder;
use fixtures::http::Fault;

/// One mistake: how to make it, the command that meets it, and what its message must hold.
struct Mistake {
    name: &'static str,
    /// Breaks the host; returns the command's arguments.
    make: fn(&mut Host) -> Vec<String>,
    /// Expected exit code.
    code: i32,
    /// Substrings the message must hold (`{config}` is the configuration file's path).
    says: &'static [&'static str],
    /// Substrings it must not hold (the old, unhelpful wording).
    not: &'static [&'static str],
}

fn rewrite_config(host: &Host, from: &str, to: &str) {
    let text = std::fs::read_to_string(&host.config_path).expect("updog.toml");
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&host.config_path, text.replace(from, to)).expect("updog.toml");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

const MISTAKES: &[Mistake] = &[
    Mistake {
        name: "the trusted root is not where trusted_root says",
        make: |host| {
            let fresh = host.dir.path().join("fresh-metadata");
            host.configure(&format!(
                "trusted_root = \"/nonexistent/no-such-root.json\"\nmetadata_dir = \"{}\"",
                fresh.display()
            ));
            args(&["check-update"])
        },
        code: 1,
        says: &[
            "/nonexistent/no-such-root.json",
            "`trusted_root` in {config}",
            "install the repository's root.json",
        ],
        not: &[],
    },
    Mistake {
        name: "a typo in a required key",
        make: |host| {
            rewrite_config(host, "metadata_base_url =", "metdata_base_url =");
            args(&["check-update"])
        },
        code: 1,
        says: &[
            "`metadata_base_url` is required but missing from {config}",
            "did you mean `metadata_base_url`",
            "`metdata_base_url`",
        ],
        not: &[],
    },
    Mistake {
        name: "a typo in an optional key",
        make: |host| {
            host.configure("ignore_wave = true");
            args(&["check-update", "--all"])
        },
        code: 0,
        says: &[
            "unknown configuration key \"ignore_wave\"",
            "{config}",
            "did you mean `ignore_waves`",
        ],
        not: &[],
    },
    Mistake {
        name: "a variant the repository does not offer",
        make: |_| args(&["update", "--variant", "aws-k8s-1.31"]),
        code: 1,
        says: &[
            "no updates are offered for variant aws-k8s-1.31 on x86_64",
            "the repository offers demo-variant (x86_64)",
            "VARIANT_ID",
            "--variant",
            "`metadata_base_url` in {config}",
        ],
        not: &["No update required"],
    },
    Mistake {
        name: "a disk that has no GPT",
        make: |host| {
            let blank = host.dir.path().join("blank.img");
            std::fs::write(&blank, vec![0u8; 4 << 20]).expect("blank disk");
            host.configure(&format!("disk = \"{}\"", blank.display()));
            args(&["status"])
        },
        code: 1,
        says: &["blank.img", "GPT", "`disk` in {config}", "the OS disk"],
        not: &[],
    },
    Mistake {
        name: "a directory as the disk",
        make: |host| {
            let dir = host.dir.path().join("not-a-disk");
            std::fs::create_dir(&dir).expect("directory");
            host.configure(&format!("disk = \"{}\"", dir.display()));
            args(&["status"])
        },
        code: 1,
        says: &[
            "not-a-disk",
            "Is a directory",
            "`disk` in {config}",
            "the OS disk",
        ],
        not: &["LBA"],
    },
];

fn config_of(host: &Host) -> String {
    host.config_path.display().to_string()
}

/// What is wrong with the message of `out`, if anything.
fn message_problems(
    name: &str,
    host: &Host,
    out: &Output,
    code: i32,
    says: &[&str],
    not: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    if out.status.code() != Some(code) {
        problems.push(format!("{name}: exit {:?}, not {code}", out.status.code()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let config = config_of(host);
    for needle in says {
        let needle = needle.replace("{config}", &config);
        if !err.contains(&needle) {
            problems.push(format!("{name}: {needle:?} not in: {err}"));
        }
    }
    for needle in not {
        if err.contains(needle) {
            problems.push(format!("{name}: {needle:?} in: {err}"));
        }
    }
    problems
}

fn check_message(name: &str, host: &Host, out: &Output, code: i32, says: &[&str], not: &[&str]) {
    let problems = message_problems(name, host, out, code, says, not);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn each_common_mistake_gets_a_message_naming_the_file_or_key_and_the_fix() {
    let spec = RepoSpec::two_releases();
    let mut problems = Vec::new();
    for m in MISTAKES {
        let mut host = Host::new(&spec, "1.0.0");
        let args = (m.make)(&mut host);
        let out = host.updog(&args.iter().map(String::as_str).collect::<Vec<_>>());
        problems.extend(message_problems(m.name, &host, &out, m.code, m.says, m.not));
        // Errors are one line (warnings may come before it).
        let err = String::from_utf8_lossy(&out.stderr);
        let errors = err.lines().filter(|l| !l.contains("warning")).count();
        if m.code != 0 && errors != 1 {
            problems.push(format!("{}: not one line: {err}", m.name));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Ctrl-C while staging: the message says what was left and that running it again is safe.
#[test]
fn ctrl_c_while_staging_says_a_re_run_is_safe() {
    let spec = RepoSpec::two_releases();
    let host = Host::with_disk(
        &spec,
        "1.0.0",
        DiskImageBuilder::new().attributes(5, 1 << 56),
    );
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
    let (child, _stdout) = host.spawn_updog_until(cmd, r#""event":"image""#);
    e2e_tests::send_signal(&child, "INT");
    let out = child.wait_with_output().expect("updog ends");
    check_message(
        "Ctrl-C while staging",
        &host,
        &out,
        5,
        &[
            "cancelled; set B left cleared",
            "set A boots next as before",
            "running `updog update` again is safe",
        ],
        &[],
    );
}

/// `updog status` while another process holds the disk lock says an update is in progress
/// (and who holds it), not just "Idle".
#[test]
fn status_while_the_disk_is_locked_says_an_update_is_in_progress() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["status"]);
    check_message("status, unlocked", &host, &out, 0, &[], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("state:   Idle"),
        "{}",
        describe(&out)
    );

    // A real holder in another process: `signpost` waiting on its own lock is not it, so hold
    // the lock in a child that sleeps (flock is per open file, so this process would see its
    // own lock as free).
    let mut holder = std::process::Command::new("flock")
        .args(["--exclusive", "--no-fork"])
        .arg(&host.disk_path)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1)");
    // Wait until the lock is taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while signpost::lock::DiskLock::acquire(&host.disk_path, Duration::ZERO).is_ok() {
        assert!(std::time::Instant::now() < deadline, "flock never locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = host.updog(&["status"]);
    let json = host.updog(&["status", "--json"]);
    holder.kill().expect("kill flock");
    let _ = holder.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text.contains("state:   busy: an update or boot-flag change is in progress")
            && !text.contains("state:   Idle"),
        "{text}"
    );
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(status["busy"]["holder_pid"], holder.id(), "{status}");
    // Unlocked again: Idle.
    let out = host.updog(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(status.get("busy").is_none(), "{status}");
    assert_eq!(status["update_state"], "Idle", "{status}");
}
