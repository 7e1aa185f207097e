//! The one-command demo (`cargo run -p e2e-tests --bin demo`): a real signed update of a GPT
//! disk image over HTTP on 127.0.0.1, without root, then a simulated reboot, a successful-boot
//! mark and a rollback. Each step prints one line of explanation, then the real command and its
//! output.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

use bootpart::SetId;
use chrono::{Duration, Utc};
use e2e_tests::{HOST_SEED, Host, Migration, Release, RepoSpec, bin_dir, bootloader_pick};

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// Runs a command, echoing it as `$ name args` (without the long temp paths), and returns
/// whether it exited 0.
fn run(shown: &str, mut cmd: Command) -> Result<bool, String> {
    println!("$ {shown}");
    let status = cmd.status().map_err(|e| format!("running {shown}: {e}"))?;
    Ok(status.success())
}

fn must(shown: &str, cmd: Command) -> Result<(), String> {
    if run(shown, cmd)? {
        Ok(())
    } else {
        Err(format!("`{shown}` failed"))
    }
}

fn main() -> ExitCode {
    // `cargo run --bin demo` builds this binary alone: run as `updog`, `signpost` or `updata`
    // through the links of `bin_dir`, it is that program.
    if let Some(code) = e2e_tests::shim::dispatch() {
        return code;
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), String> {
    step("Linking updog, signpost and updata (this program runs as each of them, through links)");
    let bins = bin_dir();
    println!("binaries in {}", bins.display());

    let now = Utc::now();
    let old = Release::new("1.0.0");
    let mut new = Release::new("1.1.0");
    new.waves = BTreeMap::from([
        (512, now - Duration::hours(3)),
        (1024, now - Duration::hours(1)),
        (2048, now + Duration::days(1)),
    ]);
    let mut spec = RepoSpec::new(vec![old, new]);
    spec.migrations.push(Migration {
        from: "1.0.0".parse().map_err(|e| format!("{e}"))?,
        to: "1.1.0".parse().map_err(|e| format!("{e}"))?,
        name: "migrate_v1.1.0_demo-settings.lz4".to_string(),
        content: b"#!/bin/sh\necho migrating settings to 1.1.0\n".to_vec(),
    });

    step(
        "Publishing a signed TUF repository (releases 1.0.0 and 1.1.0, 1.1.0 rolled out in waves, \
         one migration), a GPT disk image with sets A and B, and serving the repository on 127.0.0.1",
    );
    let mut host = Host::new(&spec, "1.0.0");
    println!("repository: {}", host.server.url());
    println!("disk image: {}", host.disk_path.display());
    println!(
        "this host: seed {HOST_SEED}, runs 1.0.0 from set A; config {}",
        host.config_path.display()
    );

    step(
        "The boot flags before the update: set A is running and boots next (successful because \
         OS images are built that way; the disk's \"boot has ever succeeded\" bit waits for its \
         first `signpost mark-successful-boot`)",
    );
    must("signpost status", host.signpost_cmd_with(&["status"]))?;

    step("Asking the repository what this host should take (verifying all TUF metadata first)");
    must("updog check-update", host.updog_cmd_with(&["check-update"]))?;

    step(
        "Updating: migrations first, then root, boot and hash streamed, verified and read back onto \
         set B, then the boot flags flip",
    );
    must(
        "updog update",
        host.updog_cmd_with(&["update", "--progress", "auto"]),
    )?;
    must("updog status", host.updog_cmd_with(&["status"]))?;

    step("The boot flags after the update: set B boots next, for one try");
    must("signpost status", host.signpost_cmd_with(&["status"]))?;

    step("Simulated reboot: the bootloader picks the highest-priority set with tries left");
    let pick = bootloader_pick(&host.disk_path).ok_or("no set is bootable")?;
    println!(
        "bootloader: booting set {} (tries left {} -> {})",
        pick.set, pick.tries_before, pick.tries_after
    );
    host.active = pick.set;
    host.set_running("1.1.0", pick.set);

    step("The new OS is healthy, so it marks its set successful (so it keeps booting it)");
    must(
        "signpost mark-successful-boot",
        host.signpost_cmd_with(&["mark-successful-boot"]),
    )?;
    must("signpost status", host.signpost_cmd_with(&["status"]))?;
    must("updog status", host.updog_cmd_with(&["status"]))?;

    step("Nothing newer is on offer now");
    let _ = run("updog check-update", host.updog_cmd_with(&["check-update"]))?;

    step("Rolling back: the previous set (A, 1.0.0) boots next");
    must(
        "signpost rollback-to-inactive",
        host.signpost_cmd_with(&["rollback-to-inactive"]),
    )?;
    must("signpost status", host.signpost_cmd_with(&["status"]))?;
    let pick = bootloader_pick(&host.disk_path).ok_or("no set is bootable")?;
    println!("bootloader: booting set {}", pick.set);
    if pick.set != SetId::A {
        return Err(format!(
            "expected set A after the rollback, got {}",
            pick.set
        ));
    }

    step("Cleaning up the temporary directory and stopping the server");
    drop(host);
    println!("done");
    Ok(())
}

trait HostExt {
    fn updog_cmd_with(&self, args: &[&str]) -> Command;
    fn signpost_cmd_with(&self, args: &[&str]) -> Command;
}

impl HostExt for Host {
    fn updog_cmd_with(&self, args: &[&str]) -> Command {
        let mut cmd = self.updog_cmd();
        cmd.args(args);
        cmd
    }

    fn signpost_cmd_with(&self, args: &[&str]) -> Command {
        let mut cmd = self.signpost_cmd();
        cmd.args(args);
        cmd
    }
}
