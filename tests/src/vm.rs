//! The pieces of the virtual-machine test (`cargo run -p e2e-tests --bin vm-test`): a disk with
//! the reference layout, a bootloader played with `cgpt` (GRUB's `gptprio.next` rule), QEMU
//! booting the set it picks, the guest's console read line by line, and power cuts (the QEMU
//! process killed).
//!
//! The bootloader reads and writes the boot bits with `cgpt`, not with this project's code, and
//! the content of each partition set is checked against the published images by hashing the
//! disk image itself, so that the test does not take our word for what is on the disk.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bootpart::SetId;
use fixtures::disk::{DiskImage, DiskImageBuilder, PartKind};
use sha2::{Digest, Sha256};

/// A failure of the VM test, with what it was doing.
pub type Result<T> = std::result::Result<T, String>;

/// Boot bits of one set as `cgpt` reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits {
    /// Priority (0-15).
    pub priority: u8,
    /// Tries left (0-15).
    pub tries: u8,
    /// Successful.
    pub successful: bool,
}

impl Bits {
    /// Shorthand.
    pub const fn new(priority: u8, tries: u8, successful: bool) -> Bits {
        Bits {
            priority,
            tries,
            successful,
        }
    }

    /// Whether GRUB's `gptprio.next` would consider it.
    pub fn bootable(self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }
}

impl std::fmt::Display for Bits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(p{} t{} s{})",
            self.priority,
            self.tries,
            u8::from(self.successful)
        )
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The OS disk: the reference layout (BOOT, ROOT, HASH, RESERVED per set; PRIVATE; DATA).
pub struct OsDisk {
    /// The image.
    pub image: DiskImage,
    /// How many times the bootloader found one GPT copy invalid and repaired it.
    pub repairs: std::cell::Cell<u32>,
}

impl OsDisk {
    /// Partition sizes: ROOT holds a 320 MiB root file system, BOOT a kernel and initramfs.
    pub fn create(path: &Path, set_a: Bits) -> Result<OsDisk> {
        const MIB: u64 = 1024 * 1024;
        let a_bits = (u64::from(set_a.priority) << 48)
            | (u64::from(set_a.tries) << 52)
            | (u64::from(set_a.successful) << 56);
        let image = DiskImageBuilder::new()
            .boot_size(48 * MIB)
            .root_size(320 * MIB)
            .hash_size(8 * MIB)
            .reserved_size(MIB)
            .private_size(MIB)
            .data_size(8 * MIB)
            .seed("vm-test")
            .attributes(1, a_bits)
            .build(path)
            .map_err(|e| format!("building {}: {e}", path.display()))?;
        Ok(OsDisk {
            image,
            repairs: std::cell::Cell::new(0),
        })
    }

    /// The partition number of `kind` in `set`.
    pub fn number(&self, kind: PartKind, set: SetId) -> Result<u32> {
        self.image
            .partition(kind, usize::from(set == SetId::B))
            .map(|p| p.number)
            .ok_or_else(|| format!("no {kind:?} partition for set {set}"))
    }

    fn range(&self, kind: PartKind, set: SetId) -> Result<(u64, u64)> {
        let p = self
            .image
            .partition(kind, usize::from(set == SetId::B))
            .ok_or_else(|| format!("no {kind:?} partition for set {set}"))?;
        let ss = self.image.sector_size;
        Ok((p.byte_offset(ss), p.byte_len(ss)))
    }

    /// Writes an image file into a partition of a set (the factory's job).
    pub fn write(&self, kind: PartKind, set: SetId, image: &Path) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (offset, len) = self.range(kind, set)?;
        let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
        if bytes.len() as u64 > len {
            return Err(format!("{} does not fit {kind:?}", image.display()));
        }
        let disk = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image.path)
            .map_err(|e| e.to_string())?;
        disk.write_all_at(&bytes, offset)
            .map_err(|e| format!("writing {kind:?} of set {set}: {e}"))
    }

    /// Formats the DATA partition as ext4 with `label` (made in `scratch`, then written in).
    pub fn format_data(&self, scratch: &Path, label: &str) -> Result<()> {
        let (_, len) = self.range(PartKind::Data, SetId::A)?;
        let _ = std::fs::remove_file(scratch);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label])
            .arg(scratch)
            .arg(format!("{}K", len / 1024)))?;
        self.write(PartKind::Data, SetId::A, scratch)
    }

    /// sha256 of the first `len` bytes of a partition, read from the image file.
    pub fn hash(&self, kind: PartKind, set: SetId, len: u64) -> Result<String> {
        let (offset, part_len) = self.range(kind, set)?;
        if len > part_len {
            return Err(format!("{len} bytes do not fit {kind:?}"));
        }
        let mut f = std::fs::File::open(&self.image.path).map_err(|e| e.to_string())?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        hash_reader(f.take(len))
    }

    /// Copies a partition out to a file.
    pub fn extract(&self, kind: PartKind, set: SetId, to: &Path) -> Result<()> {
        let (offset, len) = self.range(kind, set)?;
        let mut f = std::fs::File::open(&self.image.path).map_err(|e| e.to_string())?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut out = std::fs::File::create(to).map_err(|e| e.to_string())?;
        std::io::copy(&mut f.take(len), &mut out).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A set's bits, read with `cgpt show`.
    pub fn bits(&self, set: SetId) -> Result<Bits> {
        let n = self.number(PartKind::Boot, set)?.to_string();
        let field = |flag: &str| -> Result<u8> {
            let out = run(Command::new("cgpt")
                .args(["show", "-i", &n, flag])
                .arg(&self.image.path))?;
            out.trim()
                .parse()
                .map_err(|_| format!("cgpt show {flag}: {out:?}"))
        };
        Ok(Bits {
            priority: field("-P")?,
            tries: field("-T")?,
            successful: field("-S")? == 1,
        })
    }

    /// Bit 57 of the PRIVATE partition ("a boot of this disk has ever succeeded"), read with
    /// `sgdisk`.
    pub fn boot_ever_succeeded(&self) -> Result<bool> {
        let p = self
            .image
            .partition(PartKind::Private, 0)
            .ok_or("no PRIVATE partition")?;
        let out = run(Command::new("sgdisk")
            .arg(format!("--attributes={}:get:57", p.number))
            .arg(&self.image.path))?;
        Ok(out.trim().ends_with(":1"))
    }

    /// A partition's unique GUID, read with `sgdisk`.
    pub fn partuuid(&self, kind: PartKind, set: SetId) -> Result<String> {
        let n = self.number(kind, set)?;
        let out = run(Command::new("sgdisk")
            .arg("-i")
            .arg(n.to_string())
            .arg(&self.image.path))?;
        out.lines()
            .find_map(|l| l.strip_prefix("Partition unique GUID: "))
            .map(|g| g.trim().to_lowercase())
            .ok_or_else(|| format!("sgdisk -i {n}: no unique GUID in {out:?}"))
    }

    /// Plays the bootloader: GRUB's `gptprio.next` over the two BOOT partitions, through
    /// `cgpt`. Picks the highest priority with tries left or successful (ties: the lower
    /// partition number), and decrements its tries when it has any. `None`: nothing boots.
    pub fn bootloader_pick(&self) -> Result<Option<SetId>> {
        let mut best: Option<(SetId, Bits)> = None;
        for set in [SetId::A, SetId::B] {
            let bits = self.bits(set)?;
            if bits.bootable() && best.is_none_or(|(_, b)| bits.priority > b.priority) {
                best = Some((set, bits));
            }
        }
        let Some((set, bits)) = best else {
            return Ok(None);
        };
        if bits.tries > 0 {
            let n = self.number(PartKind::Boot, set)?.to_string();
            let tries = (bits.tries - 1).to_string();
            let decrement = || {
                run(Command::new("cgpt")
                    .args(["add", "-i", &n, "-T", &tries])
                    .arg(&self.image.path))
            };
            if let Err(e) = decrement() {
                // A power cut between the writes of the two GPT copies leaves one of them
                // stale or torn; `cgpt add` then refuses. GRUB's gptprio repairs the table from
                // the valid copy before it writes, and so does this bootloader.
                if !e.contains("invalid") {
                    return Err(e);
                }
                run(Command::new("cgpt").arg("repair").arg(&self.image.path))?;
                self.repairs.set(self.repairs.get() + 1);
                println!("  bootloader: one GPT copy was invalid ({e}); repaired from the other");
                decrement()?;
            }
        }
        Ok(Some(set))
    }
}

/// sha256 (hex) of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The guest rebooted (QEMU exits: `-no-reboot`).
    Reboot,
    /// The guest powered off.
    PowerOff,
    /// The harness killed QEMU: a power cut.
    Cut,
}

/// When to cut the power during a boot.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The console text that starts the clock.
    pub after: String,
    /// How long after it.
    pub delay: Duration,
}

/// What a boot printed and how it ended.
#[derive(Debug)]
pub struct Boot {
    /// The console, line by line.
    pub console: Vec<String>,
    /// When each console line arrived, seconds from the start.
    pub times: Vec<f64>,
    /// How it ended.
    pub ended: Ended,
    /// Seconds from the start to the end.
    pub secs: f64,
    /// Where the cut clock started, seconds from the start, when a cut was asked for.
    pub cut_clock: Option<f64>,
}

impl Boot {
    /// Whether a console line contains `text`.
    pub fn printed(&self, text: &str) -> bool {
        self.console.iter().any(|l| l.contains(text))
    }

    /// When the first line containing `text` arrived, seconds from the start.
    pub fn time_of(&self, text: &str) -> Option<f64> {
        self.console
            .iter()
            .position(|l| l.contains(text))
            .map(|i| self.times[i])
    }

    /// The first console line containing `text`.
    pub fn line(&self, text: &str) -> Option<&str> {
        self.console
            .iter()
            .find(|l| l.contains(text))
            .map(String::as_str)
    }
}

/// A QEMU process, killed when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots a kernel with QEMU and returns what the console printed, cutting the power when
/// asked. The OS disk is the first virtio disk, the repository a read-only second one.
#[allow(clippy::too_many_arguments)]
pub fn boot(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    disk: &Path,
    repo: &Path,
    log: &Path,
    timeout: Duration,
    cut: Option<&Cut>,
) -> Result<Boot> {
    let accel = std::env::var("VM_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".to_string());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine", "q35", "-accel", &accel, "-cpu", "max", "-smp", "2", "-m", "1024",
    ])
    .args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", cmdline])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,cache=writeback",
        disk.display()
    ))
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,readonly=on",
        repo.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting qemu: {e}"))?;
    let stdout = child.stdout.take().ok_or("no qemu stdout")?;
    let stderr = child.stderr.take().ok_or("no qemu stderr")?;
    let mut qemu = Qemu(child);
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let mut log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut console = Vec::new();
    let mut times = Vec::new();
    let mut cut_at: Option<Instant> = None;
    let mut cut_clock = None;
    let ended = loop {
        let now = Instant::now();
        if let Some(at) = cut_at
            && now >= at
        {
            // The power cut: no flush, no shutdown, the process is gone.
            let _ = qemu.0.kill();
            let _ = qemu.0.wait();
            break Ended::Cut;
        }
        if now.duration_since(start) > timeout {
            return Err(format!(
                "boot timed out after {}s (console in {})",
                timeout.as_secs(),
                log.display()
            ));
        }
        let wait = cut_at.map_or(Duration::from_millis(200), |at| {
            at.saturating_duration_since(now)
                .min(Duration::from_millis(200))
        });
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let _ = writeln!(log_file, "{line}");
                if let Some(c) = cut
                    && cut_at.is_none()
                    && line.contains(&c.after)
                {
                    cut_at = Some(Instant::now() + c.delay);
                    cut_clock = Some(start.elapsed().as_secs_f64());
                }
                console.push(line);
                times.push(start.elapsed().as_secs_f64());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = qemu.0.wait().map_err(|e| e.to_string())?;
                if !status.success() {
                    let err = err_reader.join().unwrap_or_default();
                    return Err(format!("qemu failed ({status}): {err}"));
                }
                let text = console.join("\n");
                if text.contains("reboot: Restarting system") {
                    break Ended::Reboot;
                } else if text.contains("reboot: Power down") {
                    break Ended::PowerOff;
                }
                return Err(format!(
                    "qemu exited without a reboot or power-off (console in {})",
                    log.display()
                ));
            }
        }
    };
    drop(qemu);
    let _ = reader.join();
    Ok(Boot {
        console,
        times,
        ended,
        secs: start.elapsed().as_secs_f64(),
        cut_clock,
    })
}

/// Extracts `name` from an ext4 image with `debugfs` (no mount needed).
pub fn debugfs_dump(image: &Path, name: &str, to: &Path) -> Result<()> {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /{name} {}", to.display()))
        .arg(image))?;
    if std::fs::metadata(to).map_or(0, |m| m.len()) == 0 {
        return Err(format!("{name} is not in {}", image.display()));
    }
    Ok(())
}

/// The directory the build script wrote (`tests/vm/build-images DEB OUT`).
pub fn build_images(deb: &Path, out: &Path) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/build-images");
    let output = Command::new("bash")
        .arg(&script)
        .arg(deb)
        .arg(out)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", script.display(), output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| "build-images printed no directory".to_string())
}
