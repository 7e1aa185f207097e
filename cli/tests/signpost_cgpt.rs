//! Independent checks: ChromeOS `cgpt` reads the bits we write and we read the bits it writes,
//! over the whole priority x tries x successful grid; `sgdisk -v` finds no problems after our
//! writes. Skipped with a notice when the tools are missing (CI installs them, and there a
//! missing tool fails the test).

use std::fs::File;
use std::path::Path;
use std::process::Command;

use bootpart::gpt::{read_gpt, write_gpt};
use fixtures::disk::{DiskImage, DiskImageBuilder, PartKind, sgdisk_verify_ok};
use signpost::{SetId, SetState, Signpost};

const BIN: &str = env!("CARGO_BIN_EXE_signpost");

fn have(tool: &str) -> bool {
    fixtures::gate::require_tool(tool, "--version")
}

fn cgpt_show(disk: &Path, number: u32, flag: &str) -> u64 {
    let out = Command::new("cgpt")
        .args(["show", "-i", &number.to_string(), flag])
        .arg(disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cgpt show {flag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => t
            .parse()
            .unwrap_or_else(|_| panic!("cgpt show {flag} printed {t:?}")),
    }
}

/// What cgpt says about one partition's gptprio fields.
fn cgpt_state(disk: &Path, number: u32) -> SetState {
    SetState::new(
        cgpt_show(disk, number, "-P") as u8,
        cgpt_show(disk, number, "-T") as u8,
        cgpt_show(disk, number, "-S") == 1,
    )
    .unwrap()
}

fn cgpt_add(disk: &Path, number: u32, s: SetState) {
    let out = Command::new("cgpt")
        .args(["add", "-i", &number.to_string()])
        .args(["-P", &s.priority.to_string()])
        .args(["-T", &s.tries_left.to_string()])
        .args(["-S", &u8::from(s.successful).to_string()])
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cgpt add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn boot(img: &DiskImage, set: usize) -> u32 {
    img.partition(PartKind::Boot, set).unwrap().number
}

/// Half of the grid on its own image: cgpt writes B and we read it; we write A and cgpt reads
/// it. Other attribute bits on A are set and must survive our writes.
fn grid_part(states: &[SetState]) {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let (a, b) = (boot(&img, 0), boot(&img, 1));
    let other = 0x8000_0000_0000_00A5u64;
    for &s in states {
        cgpt_add(&img.path, b, s);
        let sp = Signpost::open(&img.path, Some(SetId::A)).unwrap();
        assert_eq!(sp.state(SetId::B), Some(s), "we misread cgpt's {s}");
        drop(sp);

        let mut f = File::options()
            .read(true)
            .write(true)
            .open(&img.path)
            .unwrap();
        let mut table = read_gpt(&f).unwrap().table;
        table.entry_mut(a).unwrap().attributes = s.apply_to(other);
        write_gpt(&mut f, &table).unwrap();
        drop(f);
        assert_eq!(cgpt_state(&img.path, a), s, "cgpt misreads our {s}");
        let sp = Signpost::open(&img.path, Some(SetId::A)).unwrap();
        assert_eq!(
            sp.flags().a.attributes,
            s.apply_to(other),
            "other bits changed"
        );
    }
    assert!(sgdisk_verify_ok(&img.path).is_ok());
}

#[test]
fn whole_gptprio_grid_agrees_with_cgpt_both_ways() {
    if !have("cgpt") {
        return;
    }
    let all: Vec<SetState> = (0..=15u8)
        .flat_map(|p| {
            (0..=15u8).flat_map(move |t| [false, true].map(|s| SetState::new(p, t, s).unwrap()))
        })
        .collect();
    assert_eq!(all.len(), 512);
    let start = std::time::Instant::now();
    let (left, right) = all.split_at(all.len() / 2);
    std::thread::scope(|sc| {
        sc.spawn(|| grid_part(left));
        sc.spawn(|| grid_part(right));
    });
    println!("512 states checked both ways in {:?}", start.elapsed());
}

fn json(img: &DiskImage, active: SetId, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(args)
        .arg("--disk")
        .arg(&img.path)
        .args(["--active", &active.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = Command::new(BIN)
        .args(["status", "--json", "--disk"])
        .arg(&img.path)
        .args(["--active", &active.to_string()])
        .output()
        .unwrap();
    serde_json::from_slice(&status.stdout).unwrap()
}

fn json_state(j: &serde_json::Value, key: &str) -> SetState {
    let s = &j[key];
    SetState::new(
        s["priority"].as_u64().unwrap() as u8,
        s["tries_left"].as_u64().unwrap() as u8,
        s["successful"].as_bool().unwrap(),
    )
    .unwrap()
}

/// Checks cgpt and sgdisk agree with what `signpost status --json` says.
pub fn cross_check(disk: &Path, j: &serde_json::Value, a: u32, b: u32, private: u32) {
    assert_eq!(
        cgpt_state(disk, a),
        json_state(j, "a"),
        "set A per cgpt vs us"
    );
    assert_eq!(
        cgpt_state(disk, b),
        json_state(j, "b"),
        "set B per cgpt vs us"
    );
    let raw = cgpt_show(disk, private, "-A");
    assert_eq!(
        raw & 0x200 != 0,
        j["boot_has_ever_succeeded"].as_bool().unwrap(),
        "bit 57 per cgpt"
    );
    if have("sgdisk") {
        sgdisk_verify_ok(disk).unwrap();
    }
}

#[test]
fn every_transition_is_read_back_by_cgpt_and_sgdisk_finds_no_problems() {
    if !have("cgpt") {
        return;
    }
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let (a, b) = (boot(&img, 0), boot(&img, 1));
    let private = img.partition(PartKind::Private, 0).unwrap().number;
    // Installed by another tool: cgpt marks A as the good set.
    cgpt_add(&img.path, a, SetState::new(1, 0, true).unwrap());
    let mut active = SetId::A;
    let steps: &[&str] = &[
        "clear-inactive",
        "mark-inactive-valid",
        "upgrade-to-inactive",
        "cancel-upgrade",
        "upgrade-to-inactive",
        "reboot",
        "mark-successful-boot",
        "rollback-to-inactive",
        "reboot",
        "clear-inactive",
    ];
    for step in steps {
        if *step == "reboot" {
            let mut sp = Signpost::open(&img.path, Some(active)).unwrap();
            active = sp.simulate_boot().unwrap().unwrap();
            continue;
        }
        let j = json(&img, active, &[step]);
        cross_check(&img.path, &j, a, b, private);
    }
    // A state written by cgpt (an upgrade staged by another tool) is what we act on.
    cgpt_add(&img.path, b, SetState::new(0, 1, false).unwrap());
    let j = json(&img, active, &["upgrade-to-inactive"]);
    assert_eq!(j["next_boot"], "B");
    cross_check(&img.path, &j, a, b, private);
}
