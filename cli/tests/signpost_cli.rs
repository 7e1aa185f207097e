//! The real `signpost` binary on disk images built by `fixtures::disk`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fixtures::disk::{DiskImage, DiskImageBuilder, PartKind};
use signpost::{DiskLock, SetId, SetState, Signpost};

const BIN: &str = env!("CARGO_BIN_EXE_signpost");

/// A two-set image: A is the installed, successful set (p1 t0 s1), B empty; unrelated
/// attribute bits set on every partition we touch.
fn installed() -> DiskImage {
    let b = DiskImageBuilder::new();
    let plan = b.plan().unwrap();
    let num = |k: PartKind, set: Option<usize>| {
        plan.iter()
            .find(|p| p.kind == k && (set.is_none() || p.set == set))
            .unwrap()
            .number
    };
    b.attributes(
        num(PartKind::Boot, Some(0)),
        SetState::new(1, 0, true)
            .unwrap()
            .apply_to(0x8000_0000_0000_0001),
    )
    .attributes(num(PartKind::Boot, Some(1)), 0x4000_0000_0000_0002)
    .attributes(num(PartKind::Private, None), 0x1000_0000_0000_0004)
    .build_temp()
    .unwrap()
}

struct Cli {
    disk: PathBuf,
}

impl Cli {
    fn new(disk: &Path) -> Self {
        Cli {
            disk: disk.to_path_buf(),
        }
    }

    fn cmd(&self, active: SetId, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--disk")
            .arg(&self.disk)
            .arg("--active")
            .arg(active.to_string());
        c
    }

    fn run(&self, active: SetId, args: &[&str]) -> Output {
        self.cmd(active, args).output().unwrap()
    }

    fn ok(&self, active: SetId, args: &[&str]) -> String {
        let out = self.run(active, args);
        assert!(
            out.status.success(),
            "signpost {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its one-line reason.
    fn fails(&self, active: SetId, args: &[&str]) -> String {
        let out = self.run(active, args);
        assert!(!out.status.success(), "signpost {args:?} succeeded");
        assert!(out.stdout.is_empty(), "output on failure: {:?}", out.stdout);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("signpost: "), "{err}");
        err
    }

    fn json(&self, active: SetId) -> serde_json::Value {
        serde_json::from_str(&self.ok(active, &["status", "--json"])).unwrap()
    }
}

fn set_state(status: &serde_json::Value, set: &str) -> (u64, u64, bool) {
    let s = &status[set];
    (
        s["priority"].as_u64().unwrap(),
        s["tries_left"].as_u64().unwrap(),
        s["successful"].as_bool().unwrap(),
    )
}

#[test]
fn status_json_and_text_describe_both_sets() {
    let img = installed();
    let cli = Cli::new(&img.path);
    let j = cli.json(SetId::A);
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["active"], "A");
    assert_eq!(j["next_boot"], "A");
    assert_eq!(j["boot_has_ever_succeeded"], false);
    for (key, set) in [("a", 0), ("b", 1)] {
        for (field, kind) in [
            ("boot_partition", PartKind::Boot),
            ("root_partition", PartKind::Root),
            ("hash_partition", PartKind::Hash),
        ] {
            assert_eq!(
                j[key][field].as_u64().unwrap(),
                u64::from(img.partition(kind, set).unwrap().number),
                "{key}.{field}"
            );
        }
    }
    assert_eq!(set_state(&j, "a"), (1, 0, true));
    assert_eq!(set_state(&j, "b"), (0, 0, false));
    assert_eq!(j["gpt"]["primary_valid"], true);
    assert_eq!(j["gpt"]["backup_valid"], true);

    let text = cli.ok(SetId::B, &["status"]);
    assert!(
        text.contains("Set A:   boot=1 root=2 hash=3 priority=1 tries_left=0 successful=true"),
        "{text}"
    );
    assert!(text.contains("Active:  Set B"), "{text}");
    assert!(text.contains("Next:    Set A"), "{text}");
    // Global options are accepted before the subcommand too.
    let out = Command::new(BIN)
        .args(["--disk"])
        .arg(&img.path)
        .args(["--active", "a", "--lock-timeout", "0"])
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn update_flow_reboot_success_and_rollback() {
    let img = installed();
    let cli = Cli::new(&img.path);
    cli.ok(SetId::A, &["clear-inactive"]);
    cli.ok(SetId::A, &["mark-inactive-valid"]);
    assert_eq!(
        cli.json(SetId::A)["next_boot"],
        "A",
        "valid alone must not switch"
    );
    let out = cli.ok(SetId::A, &["upgrade-to-inactive"]);
    assert!(out.contains("next boot: set B"), "{out}");
    let j = cli.json(SetId::A);
    assert_eq!(set_state(&j, "a"), (1, 0, true));
    assert_eq!(set_state(&j, "b"), (2, 1, false));
    assert_eq!(j["next_boot"], "B");

    // Reboot: the bootloader takes B's one try.
    let mut sp = Signpost::open(&img.path, Some(SetId::A)).unwrap();
    assert_eq!(sp.simulate_boot().unwrap(), Some(SetId::B));
    drop(sp);
    let j = cli.json(SetId::B);
    assert_eq!(set_state(&j, "b"), (2, 0, false));
    assert_eq!(j["next_boot"], "A", "an unconfirmed set gets no second try");

    // As the reference: `true` or nothing (its unit tests the output file for being empty).
    assert_eq!(cli.ok(SetId::B, &["has-boot-ever-succeeded"]), "");
    assert_eq!(
        cli.ok(SetId::B, &["has-boot-ever-succeeded", "--json"])
            .trim(),
        "false"
    );
    cli.ok(SetId::B, &["mark-successful-boot"]);
    assert_eq!(cli.ok(SetId::B, &["has-boot-ever-succeeded"]), "true\n");
    assert_eq!(
        cli.ok(SetId::B, &["has-boot-ever-succeeded", "--json"])
            .trim(),
        "true"
    );
    let j = cli.json(SetId::B);
    assert_eq!(set_state(&j, "b"), (2, 0, true));
    assert_eq!(j["next_boot"], "B");

    cli.ok(SetId::B, &["rollback-to-inactive"]);
    let j = cli.json(SetId::B);
    assert_eq!(set_state(&j, "a"), (2, 0, true));
    assert_eq!(set_state(&j, "b"), (1, 0, true));
    assert_eq!(j["next_boot"], "A");

    // Unrelated attribute bits survived all of it.
    let flags = Signpost::open(&img.path, Some(SetId::A)).unwrap().flags();
    assert_eq!(
        flags.a.attributes & !signpost::state::SET_STATE_MASK,
        0x8000_0000_0000_0001
    );
    assert_eq!(
        flags.b.unwrap().attributes & !signpost::state::SET_STATE_MASK,
        0x4000_0000_0000_0002
    );
    assert_eq!(
        flags.private.unwrap().attributes,
        0x1000_0000_0000_0004 | (1 << signpost::state::BOOT_EVER_SUCCEEDED_BIT)
    );
}

#[test]
fn cancel_upgrade_restores_the_running_set() {
    let img = installed();
    let cli = Cli::new(&img.path);
    for c in [
        "clear-inactive",
        "mark-inactive-valid",
        "upgrade-to-inactive",
        "cancel-upgrade",
    ] {
        cli.ok(SetId::A, &[c]);
    }
    let j = cli.json(SetId::A);
    assert_eq!(set_state(&j, "a"), (2, 0, true));
    assert_eq!(set_state(&j, "b"), (0, 1, false));
    assert_eq!(j["next_boot"], "A");
}

#[test]
fn refused_transitions_exit_nonzero_with_one_line_and_change_nothing() {
    let img = installed();
    let cli = Cli::new(&img.path);
    let before = img.bytes().unwrap();
    let err = cli.fails(SetId::A, &["upgrade-to-inactive"]);
    assert!(err.contains("inactive set B is not marked valid"), "{err}");
    let err = cli.fails(SetId::A, &["rollback-to-inactive"]);
    assert!(err.contains("cannot roll back to inactive set B"), "{err}");
    assert!(
        img.bytes().unwrap() == before,
        "a refused transition wrote to the disk"
    );

    cli.ok(SetId::A, &["mark-inactive-valid"]);
    cli.ok(SetId::A, &["upgrade-to-inactive"]);
    let before = img.bytes().unwrap();
    let err = cli.fails(SetId::A, &["upgrade-to-inactive"]);
    assert!(err.contains("already marked"), "{err}");
    assert!(img.bytes().unwrap() == before);
}

#[test]
fn bad_disks_and_arguments_give_one_line_reasons() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file.
    let cli = Cli::new(&dir.path().join("nope.img"));
    let err = cli.fails(SetId::A, &["status"]);
    assert!(err.contains("nope.img"), "{err}");
    // No GPT at all.
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let cli = Cli::new(&blank);
    let err = cli.fails(SetId::A, &["clear-inactive"]);
    assert!(err.contains("blank.img") && err.contains("GPT"), "{err}");
    assert!(
        std::fs::read(&blank).unwrap().iter().all(|b| *b == 0),
        "wrote to a blank disk"
    );
    // Single-set disk: inactive operations are refused, status works.
    let single = DiskImageBuilder::new().single_set().build_temp().unwrap();
    let cli = Cli::new(&single.path);
    let err = cli.fails(SetId::A, &["clear-inactive"]);
    assert!(err.contains("single partition set"), "{err}");
    let j = cli.json(SetId::A);
    assert!(j["b"].is_null());
    let err = cli.fails(SetId::B, &["status"]);
    assert!(err.contains("active set B does not exist"), "{err}");
    // No --active on an image file: discovery says it cannot tell, in one line.
    let out = Command::new(BIN)
        .args(["status", "--disk"])
        .arg(&single.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image file") && err.contains("explicitly"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Bad --active value: clap's usage error, non-zero.
    let out = Command::new(BIN)
        .args(["status", "--active", "C", "--disk"])
        .arg(&single.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected A or B"));
}

#[test]
fn both_gpt_copies_corrupt_is_an_error_and_nothing_is_written() {
    let img = installed();
    // Break the CRC of both headers (LBA 1 and the last LBA): flip a byte of the disk GUID.
    let mut bytes = img.bytes().unwrap();
    let last = bytes.len() - 512;
    bytes[512 + 56] ^= 0xFF;
    bytes[last + 56] ^= 0xFF;
    std::fs::write(&img.path, &bytes).unwrap();
    let cli = Cli::new(&img.path);
    let err = cli.fails(SetId::A, &["mark-successful-boot"]);
    assert!(err.contains("no valid GPT"), "{err}");
    assert!(img.bytes().unwrap() == bytes);
}

#[test]
fn a_damaged_primary_is_read_from_the_backup_and_rewritten_by_the_next_change() {
    let img = installed();
    let mut bytes = img.bytes().unwrap();
    bytes[512 + 56] ^= 0xFF; // primary header CRC now wrong
    std::fs::write(&img.path, &bytes).unwrap();
    let cli = Cli::new(&img.path);
    let j = cli.json(SetId::A);
    assert_eq!(j["gpt"]["used"], "backup");
    assert_eq!(j["gpt"]["primary_valid"], false);
    assert_eq!(set_state(&j, "a"), (1, 0, true));
    let text = cli.ok(SetId::A, &["status"]);
    assert!(text.contains("read from backup copy"), "{text}");
    assert!(img.bytes().unwrap() == bytes, "status wrote to the disk");
    let saved = bytes.clone();
    cli.ok(SetId::A, &["clear-inactive"]);
    let j = cli.json(SetId::A);
    assert_eq!(j["gpt"]["used"], "primary");
    assert_eq!(j["gpt"]["primary_valid"], true);
    assert_eq!(j["gpt"]["backup_valid"], true);

    // rewrite-table repairs without changing any bit.
    std::fs::write(&img.path, &saved).unwrap();
    let out = cli.ok(SetId::A, &["rewrite-table"]);
    assert!(out.contains("repaired"), "{out}");
    let j = cli.json(SetId::A);
    assert_eq!(j["gpt"]["used"], "primary");
    assert_eq!(j["gpt"]["primary_valid"], true);
    assert_eq!(set_state(&j, "a"), (1, 0, true));
    assert_eq!(set_state(&j, "b"), (0, 0, false));
    let out = cli.ok(SetId::A, &["rewrite-table"]);
    assert!(!out.contains("repaired"), "{out}");
}

#[test]
fn the_disk_lock_serializes_mutating_commands() {
    let img = installed();
    let cli = Cli::new(&img.path);
    cli.ok(SetId::A, &["mark-inactive-valid"]);
    let before = img.bytes().unwrap();

    // Another process holds the disk (through another name for the same inode): a change that
    // will not wait fails at once, naming the disk and the holder.
    let dir = tempfile::tempdir().unwrap();
    let alias = dir.path().join("alias.img");
    std::os::unix::fs::symlink(&img.path, &alias).unwrap();
    let held = DiskLock::acquire(&alias, Duration::ZERO).unwrap();
    let err = cli.fails(SetId::A, &["upgrade-to-inactive", "--lock-timeout", "0"]);
    assert!(
        err.contains("another update or boot-flag change is in progress"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // The library takes the same lock.
    assert!(matches!(
        Signpost::open_waiting(&img.path, Some(SetId::A), Duration::ZERO),
        Err(signpost::Error::Lock(signpost::LockError::Held { .. }))
    ));
    // One that waits does nothing until the lock is released, then proceeds.
    let mut child = cli
        .cmd(SetId::A, &["upgrade-to-inactive", "--lock-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "did not wait for the lock"
    );
    assert!(
        img.bytes().unwrap() == before,
        "wrote while another process held the lock"
    );
    // Status does not need the lock.
    assert_eq!(cli.json(SetId::A)["next_boot"], "A");
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cli.json(SetId::A)["next_boot"], "B");

    // Racing processes: each re-reads under the lock, so exactly one upgrade wins and the rest
    // see the inactive set already marked. (Without the lock, two winners show up in about
    // every other round; three rounds make a missing lock very likely to be caught.)
    cli.ok(SetId::A, &["cancel-upgrade"]);
    let start = Instant::now();
    for round in 0..3 {
        cli.ok(SetId::A, &["clear-inactive"]);
        cli.ok(SetId::A, &["mark-inactive-valid"]);
        let children: Vec<_> = (0..4)
            .map(|_| {
                cli.cmd(SetId::A, &["upgrade-to-inactive"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let wins = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "round {round}: {wins} upgrades succeeded");
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert!(String::from_utf8_lossy(&o.stderr).contains("already marked"));
        }
        cli.ok(SetId::A, &["cancel-upgrade"]);
    }
    println!(
        "3 rounds of 4 racing upgrades settled in {:?}",
        start.elapsed()
    );
}

#[test]
fn malformed_layouts_give_one_line_reasons_and_change_nothing() {
    let cases: Vec<(&str, DiskImage, &str)> = vec![
        (
            "three sets",
            DiskImageBuilder::new().sets(3).build_temp().unwrap(),
            "more than two partition sets",
        ),
        (
            "set B without HASH",
            DiskImageBuilder::new()
                .omit(PartKind::Hash, Some(1))
                .build_temp()
                .unwrap(),
            "set B has no HASH",
        ),
        (
            "no sets at all",
            DiskImageBuilder::new().sets(0).build_temp().unwrap(),
            "set A has no BOOT",
        ),
    ];
    for (what, img, expect) in cases {
        let before = img.bytes().unwrap();
        let cli = Cli::new(&img.path);
        for cmd in ["status", "clear-inactive", "mark-successful-boot"] {
            let err = cli.fails(SetId::A, &[cmd]);
            assert!(err.contains(expect), "{what}, {cmd}: {err}");
        }
        assert!(img.bytes().unwrap() == before, "{what}: disk changed");
    }
    // A truncated disk (the copy an image tool cut short): no backup where the primary says.
    let img = installed();
    let mut bytes = img.bytes().unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&img.path, &bytes).unwrap();
    let cli = Cli::new(&img.path);
    let err = cli.fails(SetId::A, &["clear-inactive"]);
    assert!(err.contains("GPT"), "{err}");
    assert!(img.bytes().unwrap() == bytes, "truncated disk changed");
}

/// The `status --json` shape is a contract for scripts and agents: exactly these keys.
#[test]
fn status_json_has_exactly_the_documented_keys() {
    let img = installed();
    let j = Cli::new(&img.path).json(SetId::A);
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&j),
        [
            "a",
            "active",
            "b",
            "boot_has_ever_succeeded",
            "disk",
            "format_version",
            "gpt",
            "next_boot"
        ]
    );
    let set_keys = [
        "boot_partition",
        "bootable",
        "hash_partition",
        "priority",
        "root_partition",
        "set",
        "successful",
        "tries_left",
    ];
    assert_eq!(keys(&j["a"]), set_keys);
    assert_eq!(keys(&j["b"]), set_keys);
    assert_eq!(keys(&j["gpt"]), ["backup_valid", "primary_valid", "used"]);
}
