//! The update API service (`updog serve`, issue 23) over its Unix socket, against a real
//! signed repository served on 127.0.0.1 and a real GPT disk image: the reference's state
//! machine through refresh, prepare, activate, reboot (the recorder) and deactivate; a failed
//! prepare; 423 while a prepare runs and while another process holds the disk lock; 409 and
//! 404 where the reference answers them; and requests that are bad, oversized, slow or
//! abandoned, none of which stops the service.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bootpart::SetId;
use e2e_tests::{Host, RepoSpec};
use serde_json::Value;

/// A running `updog serve` on a socket in the host's directory; stopped (SIGTERM) on drop.
struct Api {
    child: Option<Child>,
    socket: PathBuf,
}

impl Api {
    fn start(host: &Host) -> Api {
        let socket = host.dir.path().join("api.sock");
        let child = host
            .updog_cmd()
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--status-file")
            .arg(host.dir.path().join("api-state/status.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn updog serve");
        let api = Api {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&api.socket).is_err() {
            assert!(Instant::now() < deadline, "updog serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        api
    }

    /// One request; the status code and the body.
    fn request(&self, method: &str, path: &str) -> (u16, String) {
        raw(
            &self.socket,
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
    }

    fn post(&self, path: &str) -> (u16, String) {
        self.request("POST", path)
    }

    /// `GET /updates/status`, expecting 200.
    fn status(&self) -> Value {
        let (code, body) = self.request("GET", "/updates/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until the status answers 200 with `cmd` as the most recent command, as
    /// `apiclient` does (423 means still running); returns that status.
    fn wait_for(&self, cmd: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, body) = self.request("GET", "/updates/status");
            if code == 200 {
                let status: Value = serde_json::from_str(&body).expect("status JSON");
                if status["most_recent_command"]["cmd_type"] == cmd {
                    return status;
                }
            } else {
                assert_eq!(code, 423, "{body}");
            }
            assert!(Instant::now() < deadline, "{cmd} did not finish: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// SIGTERM; the exit status and stderr.
    fn stop(&mut self) -> (Option<i32>, String) {
        let child = self.child.take().expect("running");
        e2e_tests::send_signal(&child, "TERM");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The image requests the repository's server saw.
fn image_requests(host: &Host) -> Vec<String> {
    host.server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.ends_with(".img.lz4"))
        .collect()
}

fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).expect("write request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read answer");
    parse(&answer)
}

fn parse(answer: &str) -> (u16, String) {
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// What Bottlerocket's update operator requires of a status (it parses it more strictly than
/// `apiclient`): every reference field present, `most_recent_command` an object with a
/// non-negative integer `exit_status` and a string `stderr`, images with arch/version/variant.
fn assert_operator_parses(status: &Value) {
    for key in [
        "update_state",
        "available_updates",
        "chosen_update",
        "active_partition",
        "staging_partition",
        "most_recent_command",
    ] {
        assert!(status.get(key).is_some(), "{key} missing: {status}");
    }
    let cmd = &status["most_recent_command"];
    assert!(cmd["exit_status"].is_u64(), "{cmd}");
    assert!(cmd["stderr"].is_string(), "{cmd}");
    assert!(cmd["timestamp"].is_string(), "{cmd}");
    for part in ["active_partition", "staging_partition"] {
        let p = &status[part];
        if !p.is_null() {
            assert!(p["next_to_boot"].is_boolean(), "{p}");
            for f in ["arch", "version", "variant"] {
                assert!(p["image"][f].is_string(), "{part}: {p}");
            }
        }
    }
}

#[test]
fn refresh_prepare_activate_reboot_and_deactivate_follow_the_reference() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let mut api = Api::start(&host);

    // Before the first command the status is uninitialized (404), as the reference's.
    let (code, body) = api.request("GET", "/updates/status");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("refresh-updates"), "{body}");
    let (code, body) = api.request("GET", "/os");
    assert_eq!(code, 200, "{body}");
    let os: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(os["version_id"], "1.0.0");
    assert_eq!(os["variant_id"], e2e_tests::VARIANT);
    assert_eq!(os["arch"], std::env::consts::ARCH);
    assert_eq!(os["build_id"], "e2e");
    assert!(os["pretty_name"].is_string(), "{os}");

    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    let status = api.wait_for("refresh");
    assert_operator_parses(&status);
    assert_eq!(status["update_state"], "Available", "{status}");
    assert_eq!(status["chosen_update"]["version"], "1.1.0", "{status}");
    assert_eq!(
        status["available_updates"][0], "1.1.0",
        "newest first: {status}"
    );
    assert_eq!(status["most_recent_command"]["cmd_status"], "Success");
    assert_eq!(status["most_recent_command"]["exit_status"], 0);
    assert_eq!(status["active_partition"]["image"]["version"], "1.0.0");
    assert_eq!(status["active_partition"]["next_to_boot"], true);
    assert!(status["staging_partition"].is_null(), "{status}");

    // Not allowed in Available: 409, and nothing runs.
    assert_eq!(api.post("/actions/activate-update").0, 409);
    assert_eq!(api.post("/actions/deactivate-update").0, 409);

    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let status = api.wait_for("prepare");
    assert_operator_parses(&status);
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    assert_eq!(status["update_state"], "Staged", "{status}");
    assert_eq!(status["staging_partition"]["image"]["version"], "1.1.0");
    assert_eq!(status["staging_partition"]["next_to_boot"], false);
    assert!(host.b_holds(&spec.releases[1]), "1.1.0 is on set B");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));

    assert_eq!(api.post("/actions/activate-update").0, 204);
    let status = api.wait_for("activate");
    assert_operator_parses(&status);
    assert_eq!(status["update_state"], "Ready", "{status}");
    assert_eq!(status["staging_partition"]["next_to_boot"], true);
    assert_eq!(status["active_partition"]["next_to_boot"], false);
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));

    // Prepare while Ready: 409, as the reference.
    let (code, body) = api.post("/actions/prepare-update");
    assert_eq!(code, 409, "{body}");

    assert!(host.reboot_calls().is_empty());
    let (code, body) = api.post("/actions/reboot");
    assert_eq!(code, 204, "{body}");
    assert_eq!(host.reboot_calls(), vec!["reboot now".to_string()]);

    // The status is read from the GPT at every request: a flip made behind the service's
    // back shows (the reference's next_to_boot is bookkeeping and would not).
    assert_eq!(api.post("/actions/deactivate-update").0, 204);
    let status = api.wait_for("deactivate");
    assert_eq!(status["update_state"], "Staged", "{status}");
    assert_eq!(status["active_partition"]["next_to_boot"], true);
    assert_eq!(status["staging_partition"]["next_to_boot"], false);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    // Prepare in Staged is allowed (the reference's rule); the chosen update is on set B
    // already, so nothing is downloaded or written again.
    host.server.clear_log();
    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let status = api.wait_for("prepare");
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    assert_eq!(status["update_state"], "Staged", "{status}");
    assert_eq!(image_requests(&host), Vec::<String>::new());
    let out = host.updog(&["update-apply"]);
    assert!(out.status.success(), "{}", e2e_tests::describe(&out));
    let status = api.status();
    assert_eq!(status["update_state"], "Ready", "{status}");
    assert_eq!(status["staging_partition"]["next_to_boot"], true);
    // The most recent command is still the service's own.
    assert_eq!(status["most_recent_command"]["cmd_type"], "prepare");

    let (code, stderr) = api.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!api.socket.exists(), "the socket is removed on exit");
}

#[test]
fn a_tampered_image_fails_prepare_with_the_one_line_error_and_keeps_the_state() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    for file in host
        .repo
        .target_files(&spec.releases[1].target_name("boot"))
    {
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }
    let api = Api::start(&host);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    assert_eq!(api.wait_for("refresh")["update_state"], "Available");

    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let status = api.wait_for("prepare");
    assert_operator_parses(&status);
    let cmd = &status["most_recent_command"];
    assert_eq!(cmd["cmd_status"], "Failed", "{status}");
    assert_eq!(cmd["exit_status"], 1, "{status}");
    let stderr = cmd["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("sha256") && stderr.contains("boot"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    // The state is kept; set B is not bootable; A boots next.
    assert_eq!(status["update_state"], "Available", "{status}");
    assert!(status["staging_partition"].is_null(), "{status}");
    let b = host.signpost().state(SetId::B).unwrap();
    assert_eq!((b.priority, b.tries_left, b.successful), (0, 0, false));
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    // Nothing staged: activate is refused.
    assert_eq!(api.post("/actions/activate-update").0, 409);
}

#[test]
fn everything_is_locked_while_a_prepare_runs_and_while_another_process_holds_the_disk() {
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let api = Api::start(&host);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    api.wait_for("refresh");

    // A slow link makes the prepare last long enough to look at.
    host.server.set_rate_limit(Some(200.0 * 1024.0));
    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let (code, body) = api.request("GET", "/updates/status");
    assert_eq!(code, 423, "{body}");
    for action in [
        "/actions/refresh-updates",
        "/actions/prepare-update",
        "/actions/activate-update",
        "/actions/reboot",
    ] {
        let (code, body) = api.post(action);
        assert_eq!(code, 423, "{action}: {body}");
        assert!(body.contains("Update lock held"), "{body}");
    }
    // Ours: the 423 body carries the running prepare and its progress.
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = loop {
        let (code, body) = api.request("GET", "/updates/status");
        assert_eq!(code, 423, "prepare ended before any image progress: {body}");
        let status: Value = serde_json::from_str(&body).expect("423 body is the status");
        let running = &status["running_command"];
        assert_eq!(running["cmd_type"], "prepare", "{status}");
        let p = &running["progress"];
        if p["bytes_done"].as_u64().unwrap_or(0) > 0 && p["bytes_per_sec"].as_u64().unwrap_or(0) > 0
        {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no progress: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(progress["step"], "image", "{progress}");
    assert!(progress["bytes_total"].as_u64().unwrap() >= progress["bytes_done"].as_u64().unwrap());
    assert!(progress["secs_left"].is_u64(), "{progress}");
    assert!(
        host.reboot_calls().is_empty(),
        "no reboot while a prepare runs"
    );
    host.server.set_rate_limit(None);
    let status = api.wait_for("prepare");
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    assert_eq!(status["update_state"], "Staged");

    // Another process (the CLI, signpost) holding the disk lock: 423 too.
    let lock = signpost::DiskLock::acquire(&host.disk_path, signpost::lock::DEFAULT_WAIT)
        .expect("disk lock");
    let (code, body) = api.request("GET", "/updates/status");
    assert_eq!(code, 423, "{body}");
    let (code, body) = api.post("/actions/activate-update");
    assert_eq!(code, 423, "{body}");
    drop(lock);
    assert_eq!(api.post("/actions/activate-update").0, 204);
    assert_eq!(api.wait_for("activate")["update_state"], "Ready");
}

#[test]
fn bad_slow_oversized_and_abandoned_requests_do_not_stop_the_service() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let mut api = Api::start(&host);
    let sock = api.socket.clone();

    // A slow client holding a connection open does not block the others.
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.write_all(b"GET /os HTTP/1.1\r\nHo").unwrap();

    assert_eq!(raw(&sock, b"NONSENSE\r\n\r\n").0, 400);
    let long = format!(
        "GET /os HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(raw(&sock, long.as_bytes()).0, 431);
    let many = format!("GET /os HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(100));
    assert_eq!(raw(&sock, many.as_bytes()).0, 431);
    assert_eq!(
        raw(
            &sock,
            b"POST /actions/refresh-updates HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"
        )
        .0,
        413
    );
    assert_eq!(
        raw(
            &sock,
            b"POST /actions/refresh-updates HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .0,
        411
    );
    assert_eq!(api.request("GET", "/nothing/here").0, 404);
    assert_eq!(api.request("DELETE", "/updates/status").0, 405);
    assert_eq!(api.request("GET", "/actions/refresh-updates").0, 405);
    // Clients that leave mid-request: in the head, in the body, right after connecting.
    for partial in [
        &b"GET /updates/sta"[..],
        b"POST /actions/refresh-updates HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"a\"",
        b"",
    ] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
    }
    // A client that sends a request and leaves before the answer.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"POST /actions/refresh-updates HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    drop(s);

    // Still serving, and the abandoned refresh ran.
    let (code, body) = api.request("GET", "/os");
    assert_eq!(code, 200, "{body}");
    let status = api.wait_for("refresh");
    assert_eq!(status["update_state"], "Available", "{status}");
    // The slow client gets 408 at the deadline, not sooner than the others were served.
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert_eq!(parse(&answer).0, 408, "{answer}");
    assert!(api.alive(), "the service is still running");
    let (code, stderr) = api.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn socket_activation_serves_the_socket_systemd_passes() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    // Without a passed socket and without --socket there is nothing to serve: a usage error.
    let out = host.updog(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", e2e_tests::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--socket"),
        "{}",
        e2e_tests::describe(&out)
    );

    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed; socket activation not tested");
        return;
    };
    let socket = host.dir.path().join("activated.sock");
    // systemd's own tool: listens, and on the first connection runs the program with the
    // socket as fd 3 and LISTEN_FDS/LISTEN_PID set, as the .socket unit does.
    let child = std::process::Command::new(activate)
        .arg("--listen")
        .arg(&socket)
        .arg(e2e_tests::bin_dir().join("updog"))
        .arg("--config")
        .arg(&host.config_path)
        .arg("serve")
        .arg("--status-file")
        .arg(host.dir.path().join("activated-state.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    let mut api = Api {
        child: Some(child),
        socket: socket.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..2 {
        let (code, body) = api.request("GET", "/os");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"version_id\": \"1.0.0\""), "{body}");
    }
    assert_eq!(api.request("GET", "/updates/status").0, 404);
    let (code, stderr) = api.stop();
    // It served fd 3 (without it, it would have refused to start, as above).
    assert_eq!(code, Some(0), "{stderr}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// Bottlerocket's own `apiclient`, built from its sources (see the README, "The update API"),
/// against the service: `update check`, `update apply`, `update cancel`, `reboot`, `raw`. Not
/// in CI (it needs that build): runs when `APICLIENT` names the binary, else passes at once.
#[test]
fn the_reference_apiclient_drives_the_service() {
    let Some(apiclient) = std::env::var_os("APICLIENT") else {
        eprintln!("APICLIENT is not set; the reference apiclient is not tested");
        return;
    };
    let spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    let api = Api::start(&host);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&apiclient)
            .arg("--socket-path")
            .arg(&api.socket)
            .args(args)
            .output()
            .expect("running apiclient");
        eprintln!(
            "apiclient {}: {}",
            args.join(" "),
            e2e_tests::describe(&out)
        );
        out
    };

    let out = run(&["update", "check"]);
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).expect("check prints the status");
    assert_eq!(status["update_state"], "Available");
    assert_eq!(status["chosen_update"]["version"], "1.1.0");

    let out = run(&["update", "apply"]);
    assert!(out.status.success());
    assert_eq!(api.status()["update_state"], "Ready");
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));

    // Prepare while Ready: the API's 409, as apiclient reports it.
    let out = run(&["raw", "-u", "/actions/prepare-update", "-m", "POST"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Status 409"));

    let out = run(&["update", "cancel"]);
    assert!(out.status.success());
    assert_eq!(api.status()["update_state"], "Staged");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));

    // Apply again (already staged: nothing downloaded), then reboot through the API.
    let out = run(&["update", "apply", "--reboot"]);
    assert!(out.status.success());
    assert_eq!(host.reboot_calls(), vec!["reboot now".to_string()]);

    let out = run(&["raw", "-u", "/os"]);
    assert!(out.status.success());
    let os: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(os["version_id"], "1.0.0");

    // A tampered image: apply fails with the one-line error from most_recent_command.
    let host = Host::new(&spec, "1.0.0");
    for file in host
        .repo
        .target_files(&spec.releases[1].target_name("root"))
    {
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }
    let api = Api::start(&host);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&apiclient)
            .arg("--socket-path")
            .arg(&api.socket)
            .args(args)
            .output()
            .expect("running apiclient");
        eprintln!(
            "apiclient {}: {}",
            args.join(" "),
            e2e_tests::describe(&out)
        );
        out
    };
    assert!(run(&["update", "check"]).status.success());
    let out = run(&["update", "apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Failed") && err.contains("sha256"), "{err}");
    assert_eq!(api.status()["update_state"], "Available");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

#[test]
fn a_release_that_failed_to_boot_is_not_chosen_again() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let out = host.updog(&["update"]);
    assert!(out.status.success(), "{}", e2e_tests::describe(&out));
    // Its one try on B is used and never marked; the next boot falls back to A.
    let pick = e2e_tests::bootloader_pick(&host.disk_path).expect("a set boots");
    assert_eq!((pick.set, pick.tries_after), (SetId::B, 0));
    let pick = e2e_tests::bootloader_pick(&host.disk_path).expect("a set boots");
    assert_eq!(pick.set, SetId::A);

    let api = Api::start(&host);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    let status = api.wait_for("refresh");
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    // Offered, but not chosen: it failed to boot here.
    assert_eq!(status["available_updates"][0], "1.1.0", "{status}");
    assert!(status["chosen_update"].is_null(), "{status}");
    assert_eq!(status["update_state"], "Idle", "{status}");
    assert_eq!(status["failed_boots"][0], "1.1.0", "{status}");
    assert!(status["staging_partition"].is_null(), "{status}");
    assert_eq!(api.post("/actions/prepare-update").0, 409);
}

#[test]
fn activate_refuses_a_staged_update_that_is_not_the_chosen_one() {
    let mut spec = RepoSpec::two_releases();
    let host = Host::new(&spec, "1.0.0");
    // Staged with the CLI: the service reads the same disk and record.
    let out = host.updog(&["update-image"]);
    assert!(out.status.success(), "{}", e2e_tests::describe(&out));
    let api = Api::start(&host);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    let status = api.wait_for("refresh");
    assert_eq!(status["update_state"], "Staged", "{status}");
    assert_eq!(status["staging_partition"]["image"]["version"], "1.1.0");

    // A newer release is published: it is chosen, while 1.1.0 is what set B holds.
    spec.releases.push(e2e_tests::Release::new("1.2.0"));
    spec.set_max_version(&"1.2.0".parse().unwrap());
    spec.migrations.push(e2e_tests::Migration {
        from: "1.1.0".parse().unwrap(),
        to: "1.2.0".parse().unwrap(),
        name: "migrate_v1.2.0_more.lz4".to_string(),
        content: b"1.1 -> 1.2".to_vec(),
    });
    e2e_tests::republish(&spec, &host.repo.dir, 2);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    let status = api.wait_for("refresh");
    assert_eq!(status["chosen_update"]["version"], "1.2.0", "{status}");
    assert_eq!(status["update_state"], "Staged", "{status}");
    let (code, body) = api.post("/actions/activate-update");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("1.1.0") && body.contains("1.2.0"), "{body}");
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));

    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let status = api.wait_for("prepare");
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    assert_eq!(status["staging_partition"]["image"]["version"], "1.2.0");
    assert_eq!(api.post("/actions/activate-update").0, 204);
    assert_eq!(api.wait_for("activate")["update_state"], "Ready");
    assert_eq!(host.signpost().next_boot(), Some(SetId::B));
}

#[test]
fn sigterm_stops_a_running_prepare_and_a_restart_remembers_how_it_ended() {
    let host = Host::new(&RepoSpec::two_releases(), "1.0.0");
    let mut api = Api::start(&host);
    assert_eq!(api.post("/actions/refresh-updates").0, 204);
    api.wait_for("refresh");
    host.server.set_rate_limit(Some(64.0 * 1024.0));
    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = api.request("GET", "/updates/status");
        assert_eq!(code, 423, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["running_command"]["progress"]["bytes_done"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let (code, stderr) = api.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The set it was writing is left cleared; A boots next.
    let b = host.signpost().state(SetId::B).unwrap();
    assert_eq!((b.priority, b.tries_left, b.successful), (0, 0, false));
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));

    // Started again (as systemd does on the next connection), it remembers the refresh and
    // that the prepare was stopped (updog's exit code 5).
    host.server.set_rate_limit(None);
    let api = Api::start(&host);
    let status = api.status();
    assert_operator_parses(&status);
    assert_eq!(status["update_state"], "Available", "{status}");
    assert_eq!(status["chosen_update"]["version"], "1.1.0", "{status}");
    let cmd = &status["most_recent_command"];
    assert_eq!(cmd["cmd_type"], "prepare", "{status}");
    assert_eq!(cmd["cmd_status"], "Failed", "{status}");
    assert_eq!(cmd["exit_status"], 5, "{status}");
    // Without the refresh's plan (a new process), prepare chooses again and stages.
    assert_eq!(api.post("/actions/prepare-update").0, 204);
    let status = api.wait_for("prepare");
    assert_eq!(
        status["most_recent_command"]["cmd_status"], "Success",
        "{status}"
    );
    assert_eq!(status["update_state"], "Staged", "{status}");
}
