//! The reference's callers, unchanged: each command line that Bottlerocket's thar-be-updates,
//! its systemd units and operators' scripts run, against a signed repository on 127.0.0.1 and a
//! GPT disk image, checked in the reference's terms (exit status, stdout, stderr).
//!
//! The facts checked here come from the reference's sources (bottlerocket-core-kit
//! `sources/updater/updog/src/main.rs`, `sources/updater/signpost/src/main.rs`,
//! `sources/api/thar-be-updates/src/main.rs`, `sources/updater/update_metadata`).

use std::collections::BTreeMap;

use bootpart::SetId;
use chrono::{DateTime, TimeDelta, Utc};
use e2e_tests::{HOST_SEED, Host, Migration, Release, RepoSpec, VARIANT, describe};
use fixtures::disk::PartKind;
use signpost::SetState;

const OK: i32 = 0;
const FAILURE: i32 = 1;

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

/// A whole second, so manifests (second precision) hold it exactly.
fn in_hours(hours: i64) -> DateTime<Utc> {
    let t = Utc::now() + TimeDelta::hours(hours);
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

/// Releases with a migration for each consecutive jump (the reference's repositories have
/// one for every release).
fn releases(versions: &[&str]) -> RepoSpec {
    let mut spec = RepoSpec::new(versions.iter().map(|v| Release::new(v)).collect());
    for pair in versions.windows(2) {
        spec.migrations.push(Migration {
            from: pair[0].parse().unwrap(),
            to: pair[1].parse().unwrap(),
            name: format!("migrate_v{}_settings.lz4", pair[1]),
            content: format!("{} -> {}", pair[0], pair[1]).into_bytes(),
        });
    }
    spec
}

/// 1.0.0 (running), 1.1.0 (no waves), 1.2.0 (a wave that opens for this host's seed in two
/// days).
fn three_releases() -> RepoSpec {
    let mut spec = releases(&["1.0.0", "1.1.0", "1.2.0"]);
    spec.releases[2].waves = BTreeMap::from([(2048, in_hours(48))]);
    spec
}

fn versions(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|u| u["version"].as_str().unwrap().to_string())
        .collect()
}

/// thar-be-updates runs `updog whats --all --json` and deserializes a list of
/// `update_metadata::Update`; any non-zero exit is a failed refresh.
#[test]
fn whats_all_lists_only_updates_whose_wave_is_open_newest_first() {
    let spec = three_releases();
    let mut host = Host::new(&spec, "1.0.0");

    let out = host.updog(&["whats", "--all", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let list = json(&out);
    assert_eq!(versions(&list), ["1.1.0", "1.0.0"], "{list}");
    // Each element has the reference's `Update` fields, with the types it parses.
    for u in list.as_array().unwrap() {
        assert_eq!(u["variant"], VARIANT);
        assert_eq!(u["arch"], std::env::consts::ARCH);
        for key in ["version", "max_version"] {
            let text = u[key].as_str().unwrap();
            assert!(text.parse::<semver::Version>().is_ok(), "{key}: {text}");
        }
        assert!(u["waves"].is_object(), "{u}");
        for image in ["boot", "root", "hash"] {
            assert!(u["images"][image].is_string(), "{u}");
        }
    }

    // `-n`, `--now` and `--ignore-waves` list the update whose wave has not opened, too; so does
    // `ignore_waves` in the configuration.
    for flag in ["-n", "--now", "--ignore-waves"] {
        let out = host.updog(&["whats", "--all", "--json", flag]);
        assert_eq!(code(&out), OK, "{flag}: {}", describe(&out));
        assert_eq!(versions(&json(&out)), ["1.2.0", "1.1.0", "1.0.0"], "{flag}");
    }
    // The reference's short and mixed spellings, with global options before the subcommand.
    let out = host.updog(&["-j", "check-update", "-a"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(versions(&json(&out)), ["1.1.0", "1.0.0"]);
    // Text: one `VARIANT VERSION` line per update.
    let out = host.updog(&["check-update", "--all"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        format!("{VARIANT} 1.1.0\n{VARIANT} 1.0.0\n"),
        "{}",
        describe(&out)
    );

    host.configure("ignore_waves = true");
    let out = host.updog(&["whats", "--all", "--json"]);
    assert_eq!(versions(&json(&out)), ["1.2.0", "1.1.0", "1.0.0"]);

    // Nothing for this variant: `[]` and exit 0, not a failed refresh.
    let out = host.updog(&["whats", "--all", "--json", "--variant", "no-such-variant"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(json(&out), serde_json::json!([]));
}

/// `-i VERSION` takes that version only among the wave-ready updates (the reference's
/// `update_required`), unless `-n`; a version lock likewise.
#[test]
fn image_flag_and_version_lock_wait_for_the_wave_unless_now() {
    let spec = three_releases();
    let mut host = Host::new(&spec, "1.0.0");
    let disk_before = host.disk.bytes().unwrap();

    let out = host.updog(&["check-update", "-i", "1.2.0"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(stderr(&out).contains("1.2.0"), "{}", describe(&out));

    // thar-be-updates and periodic units run `update-image`/`update`: nothing to do is exit 0.
    for cmd in ["update-image", "update"] {
        assert_no_update_required(&host.updog(&[cmd, "-i", "1.2.0"]));
    }
    assert!(host.disk.bytes().unwrap() == disk_before, "disk changed");

    // A version whose wave is open is taken, even below the newest.
    let out = host.updog(&["check-update", "--image", "1.1.0", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(json(&out)["version"], "1.1.0");

    // With -n the forced version is staged.
    let out = host.updog(&["update-image", "-i", "1.2.0", "-n"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(stdout(&out), format!("Update staged: {VARIANT} 1.2.0\n"));
    let want = &spec.releases[2];
    assert!(host.partition_bytes(PartKind::Root, SetId::B, want.root.len()) == want.root);
    assert_eq!(state(&host, SetId::B), SetState::new(0, 1, false).unwrap());

    // A version lock on the release whose wave has not opened: not yet, but with --now.
    host.configure("version_lock = \"1.2.0\"");
    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert_eq!(json(&out)["no_update"]["reason"], "not_eligible_yet");
    let out = host.updog(&["check-update", "--now", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(json(&out)["version"], "1.2.0");
}

/// The reference's answer of `update`/`update-image` with nothing to do: exit 0, "No update
/// required" on stderr, nothing on stdout.
fn assert_no_update_required(out: &std::process::Output) {
    assert_eq!(code(out), OK, "{}", describe(out));
    assert!(
        stderr(out).contains("No update required"),
        "{}",
        describe(out)
    );
    assert!(stdout(out).is_empty(), "{}", describe(out));
}

fn state(host: &Host, set: SetId) -> SetState {
    host.signpost().state(set).expect("set exists")
}

/// Nothing to take: `update` and `update-image` say "No update required" on stderr and exit 0;
/// `check-update` exits 1 with the reason; `--json` gives agents `{"no_update": {...}}`.
#[test]
fn nothing_to_do_is_success_for_update_and_failure_for_check_update() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.1.0");
    let disk_before = host.disk.bytes().unwrap();

    for cmd in ["update", "update-image"] {
        assert_no_update_required(&host.updog(&[cmd]));
        // `--json` anywhere on the line: the reason for agents, still exit 0.
        let out = host.updog(&[cmd, "--json"]);
        assert_eq!(code(&out), OK, "{cmd}: {}", describe(&out));
        assert_eq!(json(&out)["no_update"]["reason"], "none_newer", "{cmd}");
    }
    assert!(host.disk.bytes().unwrap() == disk_before, "disk changed");

    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(stdout(&out).is_empty(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("No update available") && err.contains("1.1.0"),
        "{err}"
    );
    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert_eq!(json(&out)["no_update"]["running"], "1.1.0");
}

/// `update --json` and `update-image --json` print the update object, as the reference does;
/// text mode prints `Update applied: VARIANT VERSION`.
#[test]
fn update_json_prints_the_update_object_and_text_names_it() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");

    let out = host.updog(&["update-image", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let u = json(&out);
    assert_eq!(u["version"], "1.1.0");
    assert_eq!(u["variant"], VARIANT);
    assert_eq!(u["images"]["root"], spec.releases[1].target_name("root"));
    assert_eq!(host.signpost().next_boot(), Some(SetId::A), "not flipped");

    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(stdout(&out), format!("Update applied: {VARIANT} 1.1.0\n"));
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));

    // thar-be-updates' `update-revert` and `update-apply`: exit 0, nothing on stdout.
    for cmd in ["update-revert", "update-apply"] {
        let out = host.updog(&[cmd]);
        assert_eq!(code(&out), OK, "{cmd}: {}", describe(&out));
        assert!(stdout(&out).is_empty(), "{cmd}: {}", describe(&out));
    }
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));

    // `update --json` after a fresh stage: the object again (global option after the flags).
    host.set_running("1.0.0", SetId::A);
    let out = host.updog(&["update-revert"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let out = host.updog(&["update", "-n", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(json(&out)["version"], "1.1.0");
}

/// The reference sends `seed` and `version` on every request and, once an update is chosen,
/// `target` and `migrations` (the jump's migrations, then `manifest.json`), sorted by name.
#[test]
fn requests_carry_the_reference_query_parameters() {
    let spec = three_releases();
    let host = Host::new(&spec, "1.0.0");

    let out = host.updog(&["check-update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let log = host.server.requests();
    assert!(!log.is_empty());
    let plain = format!("seed={HOST_SEED}&version=1.0.0");
    for r in &log {
        assert_eq!(r.query.as_deref(), Some(plain.as_str()), "{}", r.target);
    }

    host.server.clear_log();
    let out = host.updog(&["update"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let log = host.server.requests();
    let root = spec.releases[1].target_name("root");
    let image_requests: Vec<_> = log.iter().filter(|r| r.path.ends_with(&root)).collect();
    assert!(!image_requests.is_empty(), "{log:?}");
    let staged = format!(
        "migrations=migrate_v1.1.0_settings.lz4%2Cmanifest.json&seed={HOST_SEED}&target=1.1.0&version=1.0.0"
    );
    for r in image_requests {
        assert_eq!(r.query.as_deref(), Some(staged.as_str()), "{}", r.target);
    }
    // The migration itself is fetched once the target is known, before `migrations` is.
    let migration = log
        .iter()
        .find(|r| r.path.ends_with("migrate_v1.1.0_settings.lz4"))
        .expect("migration fetched");
    assert_eq!(
        migration.query.as_deref(),
        Some(format!("seed={HOST_SEED}&target=1.1.0&version=1.0.0").as_str())
    );
}

/// `prepare` is accepted (the reference's is a placeholder): the metadata is refreshed and
/// nothing is staged.
#[test]
fn prepare_is_accepted_and_stages_nothing() {
    let spec = three_releases();
    let host = Host::new(&spec, "1.0.0");
    let disk_before = host.disk.bytes().unwrap();
    let out = host.updog(&["prepare"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert!(stdout(&out).is_empty(), "{}", describe(&out));
    assert!(!host.server.requests().is_empty(), "metadata refreshed");
    assert!(host.disk.bytes().unwrap() == disk_before, "disk changed");
}

/// `--variant NAME` anywhere overrides os-release's `VARIANT_ID`.
#[test]
fn variant_option_overrides_os_release() {
    let spec = three_releases();
    let host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["check-update", "--variant", "aws-k8s-1.31"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(
        stderr(&out).contains("no updates are offered for variant aws-k8s-1.31"),
        "{}",
        describe(&out)
    );
    let out = host.updog(&["--variant", VARIANT, "check-update", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(json(&out)["version"], "1.1.0");
}

/// `wave_timing = "reference"` makes this host wait exactly as the reference would.
#[test]
fn reference_wave_timing_is_used_when_configured() {
    // Seed 1000 sits halfway between bounds 500 and 1500. Ours: 8 h ago + half of 10 h, so
    // 3 h ago. The reference: 8 h ago + 1000 * (10 h / 1000), past the wave's end, so when the
    // next wave opens, in 2 h.
    let mut spec = releases(&["1.0.0", "1.1.0"]);
    let next_wave = in_hours(2);
    spec.releases[1].waves =
        BTreeMap::from([(0, in_hours(-9)), (500, in_hours(-8)), (1500, next_wave)]);
    assert_eq!(HOST_SEED, 1000);
    let mut host = Host::new(&spec, "1.0.0");
    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));

    host.configure("wave_timing = \"reference\"");
    let out = host.updog(&["check-update", "--json"]);
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    let v = json(&out);
    assert_eq!(v["no_update"]["reason"], "not_eligible_yet", "{v}");
    let ready: DateTime<Utc> = v["no_update"]["ready_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ready, next_wave);
    let out = host.updog(&["whats", "--all", "--json"]);
    assert_eq!(versions(&json(&out)), ["1.0.0"]);
}

/// Bottlerocket's unit writes `signpost has-boot-ever-succeeded` to a file and tests it with
/// `ConditionFileNotEmpty`: `true` or nothing, exit 0 either way.
#[test]
fn has_boot_ever_succeeded_prints_true_or_nothing() {
    let spec = releases(&["1.0.0"]);
    let host = Host::new(&spec, "1.0.0");
    std::fs::create_dir_all(host.dir.path().join("state")).unwrap();
    let run = |args: &[&str]| host.signpost_cmd().args(args).output().unwrap();

    let out = run(&["has-boot-ever-succeeded"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(stdout(&out), "", "{}", describe(&out));
    let out = run(&["has-boot-ever-succeeded", "--json"]);
    assert_eq!(stdout(&out).trim(), "false");

    let out = run(&["mark-successful-boot"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    let out = run(&["has-boot-ever-succeeded"]);
    assert_eq!(code(&out), OK, "{}", describe(&out));
    assert_eq!(stdout(&out), "true\n");
    let out = run(&["has-boot-ever-succeeded", "--json"]);
    assert_eq!(stdout(&out).trim(), "true");
}

/// Asserts exit 1 with every one of `parts` on stderr; returns stderr.
fn fails_saying(out: &std::process::Output, parts: &[&str]) -> String {
    assert_eq!(code(out), FAILURE, "{}", describe(out));
    let err = stderr(out);
    for part in parts {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
    err
}

/// A first run against a server that cannot be reached says so, names the key and file that
/// gave the URL, and does not blame `2.root.json` (the first file it happened to try).
#[test]
fn an_unreachable_repository_is_named_by_its_key_not_by_2_root_json() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let mut host = Host::new(&spec, "1.0.0");
    // Nothing listens on port 1 of the loopback interface: connection refused.
    host.configure("metadata_base_url = \"http://127.0.0.1:1/metadata/\"\nretries = 0");
    let err = fails_saying(
        &host.updog(&["check-update"]),
        &[
            "cannot reach the repository at http://127.0.0.1:1/metadata/",
            &format!("metadata_base_url in {}", host.config_path.display()),
        ],
    );
    assert!(!err.contains("2.root.json"), "{err}");
}

/// A target that fails to download names the key and file its URL came from.
#[test]
fn a_failed_image_download_names_targets_base_url_and_the_file() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    for path in host
        .repo
        .target_url_paths(&spec.releases[1].target_name("root"))
    {
        host.server.fault(&path, fixtures::http::Fault::Status(500));
    }
    fails_saying(
        &host.updog(&["update"]),
        &[
            "HTTP 500",
            &format!(
                "(the URL comes from targets_base_url in {})",
                host.config_path.display()
            ),
        ],
    );
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

/// `updog` pointed at a disk image without `active_set` cannot discover the running set; the
/// message names the keys that fix it.
#[test]
fn a_discovery_failure_points_at_disk_and_active_set() {
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    let text = std::fs::read_to_string(&host.config_path).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("active_set"))
        .flat_map(|l| [l, "\n"])
        .collect();
    std::fs::write(&host.config_path, without).unwrap();
    fails_saying(
        &host.updog(&["status"]),
        &[&format!(
            "set `disk` and `active_set` in {}",
            host.config_path.display()
        )],
    );
}

/// As a user who may read the host's files but write none of them (not the disk, not the
/// state directories), the message says root is needed. Runs in CI too, which runs as root: the
/// binary is then started as `nobody` (root's own refusals, an immutable file, get another
/// message; that rendering is unit-tested in `updog::advice`).
#[test]
fn permission_denied_says_root_is_needed() {
    use std::os::unix::fs::PermissionsExt;
    let spec = releases(&["1.0.0", "1.1.0"]);
    let host = Host::new(&spec, "1.0.0");
    let mut cmd = host.updog_cmd();
    cmd.arg("update");
    if fixtures::disk::is_root() {
        use std::os::unix::process::CommandExt;
        // Readable by the unprivileged user (files are created 0644, directories 0755, the
        // temporary directory itself 0700).
        std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        // The disk image is ours: make it read-only.
        std::fs::set_permissions(&host.disk_path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let out = cmd.output().expect("running updog");
    assert_eq!(code(&out), FAILURE, "{}", describe(&out));
    assert!(stderr(&out).contains("needs root"), "{}", describe(&out));
    assert!(
        !stderr(&out).contains("runs as root"),
        "told it runs as root: {}",
        describe(&out)
    );
}

/// A one-shot HTTP server on 127.0.0.1 that answers every request with `head` and `body`.
fn answer_with(head: &'static str, body: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        // Serve a few connections (the client may retry), then stop.
        for stream in listener.incoming().take(1) {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    (url, handle)
}

fn fetch_error(url: &str) -> String {
    use updog::transport::{HttpOptions, HttpTransport, Transport};
    let transport = HttpTransport::new(HttpOptions {
        retries: 0,
        proxy_from_env: false,
        ..HttpOptions::default()
    })
    .unwrap();
    match transport.fetch(&url.parse().unwrap()) {
        Ok(_) => panic!("fetching {url} succeeded"),
        Err(e) => updog::advice::error_chain(&e),
    }
}

/// `Content-Encoding: gzip` and a redirect to `file://` are named as such, not left to fail a
/// hash check or as a bare "request failed".
#[test]
fn gzip_bodies_and_redirects_to_file_urls_are_named() {
    let (url, server) = answer_with(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n",
        b"\x1f\x8b\x08\x00compressed",
    );
    let err = fetch_error(&format!("{url}timestamp.json"));
    assert!(err.contains("Content-Encoding: gzip"), "{err}");
    server.join().unwrap();

    let (url, server) = answer_with(
        "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\n",
        b"",
    );
    let err = fetch_error(&format!("{url}timestamp.json"));
    assert!(
        err.contains("redirected (HTTP 302) to file:///etc/passwd") && err.contains("refused"),
        "{err}"
    );
    server.join().unwrap();
}
