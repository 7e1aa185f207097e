//! As root: the same flows on a real block device (a loop device over a disk image), read back
//! by cgpt and sgdisk on the device, and by us from the image file after detaching. The loop
//! device is detached on drop, also when an assertion fails.

use std::path::Path;
use std::process::Command;

use fixtures::disk::{DiskImageBuilder, LoopDevice, PartKind};
use signpost::{SetId, SetState, Signpost};

const BIN: &str = env!("CARGO_BIN_EXE_signpost");

fn signpost(disk: &Path, active: SetId, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--disk")
        .arg(disk)
        .args(["--active", &active.to_string()])
        .output()
        .unwrap()
}

fn cgpt(disk: &Path, number: u32, flag: &str) -> Option<u64> {
    let out = Command::new("cgpt")
        .args(["show", "-i", &number.to_string(), flag])
        .arg(disk)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

#[test]
fn update_flow_on_a_loop_device() {
    if !fixtures::gate::require_root("the loop-device test") {
        return;
    }
    let img = DiskImageBuilder::new()
        .attributes(1, SetState::new(1, 0, true).unwrap().apply_to(0))
        .build_temp()
        .unwrap();
    let boot_b = img.partition(PartKind::Boot, 1).unwrap().number;
    {
        let dev = LoopDevice::attach(&img.path).unwrap();
        let node = dev.path();
        for step in [
            "clear-inactive",
            "mark-inactive-valid",
            "upgrade-to-inactive",
        ] {
            let out = signpost(node, SetId::A, &[step]);
            assert!(
                out.status.success(),
                "{step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = signpost(node, SetId::A, &["status", "--json"]);
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["next_boot"], "B");
        assert_eq!(j["disk"], node.to_str().unwrap());
        // cgpt reads the device itself.
        if let Some(p) = cgpt(node, boot_b, "-P") {
            assert_eq!(p, 2);
            assert_eq!(cgpt(node, boot_b, "-T"), Some(1));
            assert_eq!(cgpt(node, boot_b, "-S"), Some(0));
        }
        fixtures::disk::sgdisk_verify_ok(node).unwrap();
        // Reboot into B and confirm it, through the library on the device.
        let mut sp = Signpost::open(node, Some(SetId::A)).unwrap();
        assert_eq!(sp.simulate_boot().unwrap(), Some(SetId::B));
        sp.mark_successful_boot().unwrap();
        assert_eq!(sp.next_boot(), Some(SetId::B));
        assert!(sp.has_boot_ever_succeeded().unwrap());
        drop(sp);
        // A refused change on the device writes nothing and says why in one line.
        let out = signpost(node, SetId::B, &["upgrade-to-inactive"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        // The device is not the running system's disk: discovery refuses it.
        let out = Command::new(BIN)
            .args(["status", "--disk"])
            .arg(node)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    // Detached; the image file holds what was written through the device.
    let attached = Command::new("losetup")
        .arg("-j")
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(
        attached.stdout.is_empty(),
        "still attached: {}",
        String::from_utf8_lossy(&attached.stdout)
    );
    let sp = Signpost::open(&img.path, Some(SetId::B)).unwrap();
    assert_eq!(sp.state(SetId::B), Some(SetState::new(2, 0, true).unwrap()));
    assert_eq!(sp.state(SetId::A), Some(SetState::new(1, 0, true).unwrap()));
    fixtures::disk::sgdisk_verify_ok(&img.path).unwrap();
}
