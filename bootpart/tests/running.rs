//! Running-set discovery against a fake `/proc` + `/sys` + `/dev` tree shaped like the real
//! one (sysfs device directories, relative `/sys/dev/block` and `slaves/` symlinks, `dev`,
//! `partition` and `uevent` attribute files), and one read-only check on this machine.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use bootpart::running::{
    discover_root_disk, discover_root_disk_with, find_running_set_with, resolve_active,
    root_device, root_mount,
};
use bootpart::sys::{DevId, SysRoots};
use bootpart::{Disk, Error, SetId};
use fixtures::disk::DiskImageBuilder;

const DISK_DIR: &str = "devices/pci0000:00/0000:00:04.0/virtio1/block/vda";

struct FakeHost {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl FakeHost {
    /// A host whose disk `vda` (major 259, minors 0 and 300+N for partition N, to exercise
    /// minors above 255) holds a reference-layout image with `partitions` partitions.
    fn new(builder: &DiskImageBuilder) -> FakeHost {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let sys = root.join("sys");
        fs::create_dir_all(root.join("proc/self")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        fs::create_dir_all(sys.join("block")).unwrap();
        let img = builder.build(&root.join("dev/vda")).unwrap();
        let disk_dir = sys.join(DISK_DIR);
        write_dev_dir(&disk_dir, "vda", "259:0", None);
        symlink(format!("../../{DISK_DIR}"), sys.join("dev/block/259:0")).unwrap();
        symlink(format!("../{DISK_DIR}"), sys.join("block/vda")).unwrap();
        for p in &img.partitions {
            let name = format!("vda{}", p.number);
            let dev = format!("259:{}", 300 + p.number);
            write_dev_dir(&disk_dir.join(&name), &name, &dev, Some(p.number));
            symlink(
                format!("../../{DISK_DIR}/{name}"),
                sys.join("dev/block").join(&dev),
            )
            .unwrap();
        }
        FakeHost { _tmp: tmp, root }
    }

    fn roots(&self) -> SysRoots {
        SysRoots::under(&self.root)
    }

    /// A device-mapper device dm-N (major 253) over these partitions of vda.
    fn add_dm(&self, n: u32, slaves: &[u32]) {
        let sys = self.root.join("sys");
        let dir = sys.join(format!("devices/virtual/block/dm-{n}"));
        write_dev_dir(&dir, &format!("dm-{n}"), &format!("253:{n}"), None);
        fs::create_dir_all(dir.join("slaves")).unwrap();
        for s in slaves {
            symlink(
                // Relative to slaves/, as the kernel makes it: up to /sys/devices.
                format!(
                    "../../../../{}/vda{s}",
                    DISK_DIR.trim_start_matches("devices/")
                ),
                dir.join(format!("slaves/vda{s}")),
            )
            .unwrap();
        }
        symlink(
            format!("../../devices/virtual/block/dm-{n}"),
            sys.join(format!("dev/block/253:{n}")),
        )
        .unwrap();
    }

    /// mountinfo with `/` on `dev` (plus unrelated mounts, and an earlier, hidden mount on /).
    fn mount_root(&self, dev: &str, source: &str) {
        let text = format!(
            "1 0 8:1 / / ro,relatime - ext4 /dev/sda1 ro\n\
             22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 {dev} / / ro,relatime shared:1 - ext4 {source} ro,seclabel\n\
             23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n\
             40 27 259:309 / /local rw,relatime - ext4 /dev/vda9 rw\n"
        );
        fs::write(self.root.join("proc/self/mountinfo"), text).unwrap();
    }
}

fn write_dev_dir(dir: &Path, name: &str, dev: &str, partition: Option<u32>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
    let (major, minor) = dev.split_once(':').unwrap();
    let head = format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\n");
    let uevent = match partition {
        Some(n) => {
            fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
            format!("{head}DEVTYPE=partition\nPARTN={n}\n")
        }
        None => format!("{head}DEVTYPE=disk\n"),
    };
    fs::write(dir.join("uevent"), uevent).unwrap();
    fs::write(dir.join("size"), "40960\n").unwrap();
}

#[test]
fn root_on_a_partition_of_set_b() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    host.mount_root("259:306", "/dev/vda6");
    let roots = host.roots();
    let rd = root_device(&roots).unwrap();
    assert_eq!(rd.partition_numbers(), vec![6]);
    assert_eq!(rd.disk.name, "vda");
    assert_eq!(
        rd.disk.dev,
        DevId {
            major: 259,
            minor: 0
        }
    );
    let (disk, set) = discover_root_disk_with(&roots).unwrap();
    assert_eq!(disk, host.root.join("dev/vda"));
    assert_eq!(set, SetId::B);
}

#[test]
fn root_on_dm_verity_over_set_a() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    // dm-verity: data on ROOT-A (2), hash tree on HASH-A (3).
    host.add_dm(0, &[2, 3]);
    host.mount_root("253:0", "/dev/dm-0");
    let roots = host.roots();
    let rd = root_device(&roots).unwrap();
    assert_eq!(rd.mounted.name, "dm-0");
    assert_eq!(rd.partition_numbers(), vec![2, 3]);
    assert_eq!(discover_root_disk_with(&roots).unwrap().1, SetId::A);
}

#[test]
fn stacked_dm_devices_are_followed() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    host.add_dm(1, &[6]);
    // dm-2 over dm-1 over vda6.
    let sys = host.root.join("sys");
    let dir = sys.join("devices/virtual/block/dm-2");
    write_dev_dir(&dir, "dm-2", "253:2", None);
    fs::create_dir_all(dir.join("slaves")).unwrap();
    symlink("../../dm-1", dir.join("slaves/dm-1")).unwrap();
    symlink(
        "../../devices/virtual/block/dm-2",
        sys.join("dev/block/253:2"),
    )
    .unwrap();
    host.mount_root("253:2", "/dev/dm-2");
    assert_eq!(discover_root_disk_with(&host.roots()).unwrap().1, SetId::B);
}

#[test]
fn root_outside_the_sets_or_on_both_is_an_error() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    host.mount_root("259:309", "/dev/vda9");
    let err = discover_root_disk_with(&host.roots()).unwrap_err();
    assert!(matches!(err, Error::Running(_)), "{err}");
    assert!(
        err.to_string()
            .contains("partition 9, which belongs to neither"),
        "{err}"
    );

    host.add_dm(0, &[2, 7]);
    host.mount_root("253:0", "/dev/dm-0");
    let err = discover_root_disk_with(&host.roots()).unwrap_err();
    assert!(err.to_string().contains("both sets"), "{err}");
}

#[test]
fn whole_disk_and_non_block_roots_are_clear_errors() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    host.mount_root("259:0", "/dev/vda");
    let err = root_device(&host.roots()).unwrap_err().to_string();
    assert!(err.contains("whole disk"), "{err}");

    host.mount_root("0:25", "overlay");
    let err = root_device(&host.roots()).unwrap_err().to_string();
    assert!(err.contains("not a block device"), "{err}");
    assert!(err.contains("0:25"), "{err}");

    fs::write(host.root.join("proc/self/mountinfo"), "garbage\n").unwrap();
    let err = root_device(&host.roots()).unwrap_err().to_string();
    assert!(err.contains("no mount on /"), "{err}");
}

#[test]
fn single_set_disk_runs_a() {
    let host = FakeHost::new(&DiskImageBuilder::new().single_set());
    host.mount_root("259:302", "/dev/vda2");
    assert_eq!(discover_root_disk_with(&host.roots()).unwrap().1, SetId::A);
}

#[test]
fn image_files_need_an_explicit_choice() {
    let host = FakeHost::new(&DiskImageBuilder::new());
    host.mount_root("259:306", "/dev/vda6");
    let disk = Disk::open(host.root.join("dev/vda")).unwrap();
    let err = find_running_set_with(&disk, &host.roots()).unwrap_err();
    assert!(err.to_string().contains("choose the active set"), "{err}");
    assert_eq!(resolve_active(&disk, Some(SetId::B)).unwrap(), SetId::B);

    let single = FakeHost::new(&DiskImageBuilder::new().single_set());
    let disk = Disk::open(single.root.join("dev/vda")).unwrap();
    let err = resolve_active(&disk, Some(SetId::B)).unwrap_err();
    assert!(matches!(err, Error::SingleSet { .. }), "{err}");
}

/// On this machine: only reads. The mountinfo device of `/` must equal `stat("/").st_dev`
/// decoded with the full encoding, and discovery gives a sensible answer or a clear error.
#[test]
fn real_machine_discovery_reads_only_and_answers_sensibly() {
    let roots = SysRoots::default();
    let (dev, fstype, source) = root_mount(&roots).unwrap();
    let st_dev = fs::metadata("/").unwrap().dev();
    if !matches!(fstype.as_str(), "btrfs" | "overlay" | "zfs") {
        assert_eq!(dev, DevId::from_dev_t(st_dev), "{fstype} {source}");
    }
    match discover_root_disk() {
        Ok((disk, set)) => {
            assert!(disk.exists(), "{}", disk.display());
            eprintln!("root runs from set {set} on {}", disk.display());
        }
        Err(Error::Running(msg)) => {
            assert!(!msg.is_empty());
            eprintln!("notice: no running set here: {msg}");
        }
        Err(e @ (Error::Gpt { .. } | Error::Layout { .. } | Error::Io { .. })) => {
            eprintln!("notice: root disk has no A/B layout: {e}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}
