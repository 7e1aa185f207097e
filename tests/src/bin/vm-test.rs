//! The virtual-machine test: the project's `.deb` installed in Debian bookworm root file
//! systems, booted for real in QEMU from a disk with the reference layout, with this harness
//! as the bootloader (GRUB's `gptprio.next` rule, applied with `cgpt` before each boot).
//!
//! ```text
//! cargo run -p e2e-tests --bin vm-test -- [--deb PATH] [--cuts N] [--seed S] [--out DIR]
//! ```
//!
//! Root is needed (mmdebstrap, chroot). `.ci/run` runs it after building the package. The
//! scenarios, in the order they run on one disk:
//!
//! - (a) the factory disk's first boot (set A on trial: priority 1, one try) is marked after
//!   `boot-complete.target`; `updog.service` (started by its timer) stages 1.1.0 on set B,
//!   flips and reboots, and the service ends successfully;
//! - (b) set B boots 1.1.0, passes the health gate and is marked;
//! - (d) `signpost rollback-to-inactive` on B: set A boots 1.0.0 again;
//! - (e) power cuts: QEMU killed at seeded random moments while `updog` stages (over the whole
//!   staging time) and right after the set was marked valid (the flip), then booted again:
//!   whatever boots is the old set unless the flip completed, every bootable set holds exactly
//!   the release its bits claim, and a re-run of the update succeeds;
//! - (c) a release whose health check fails (1.2.0) is never marked, the next boot is the old
//!   set, and the timer does not take it again; the same with the README's rollback drop-in
//!   (1.3.0), where the failed check rolls back and reboots at once.
//!
//! Every boot's console is kept in OUT/run/boot-NN.log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bootpart::SetId;
use e2e_tests::vm::{self, Bits, Boot, Cut, Ended, OsDisk, Result};
use fixtures::disk::PartKind;

/// A release's images as published (raw, before compression).
struct Release {
    /// (kind, length, sha256) of boot, root and hash.
    images: Vec<(PartKind, u64, String)>,
}

struct Run {
    build: PathBuf,
    work: PathBuf,
    disk: OsDisk,
    releases: BTreeMap<String, Release>,
    boots: u32,
    cuts: u32,
    boot_timeout: Duration,
}

/// What the harness asks of one boot.
struct Ask<'a> {
    repo: &'a str,
    /// Extra kernel command line words for the guest's test instrumentation.
    extra: &'a str,
    cut: Option<Cut>,
}

/// A boot without a power cut.
fn ask<'a>(repo: &'a str, extra: &'a str) -> Ask<'a> {
    Ask {
        repo,
        extra,
        cut: None,
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond { Ok(()) } else { Err(what()) }
}

impl Run {
    /// Which release a set holds, from its bytes: every image of one release, or none.
    ///
    /// A stock root is mounted read-write once booted, so the ROOT partition of a set that
    /// has booted differs from the image by the files the OS wrote; its BOOT and HASH
    /// partitions (the latter the dm-verity tree of the ROOT image as published, so it names
    /// that image exactly) are never written by the OS. ROOT is compared too when `whole`:
    /// for a set whose bits say it never booted since it was written (tries left, not
    /// successful).
    fn content(&self, set: SetId) -> Result<Option<String>> {
        let bits = self.disk.bits(set)?;
        let whole = bits.tries > 0 && !bits.successful;
        for (version, release) in &self.releases {
            let mut all = true;
            for (kind, len, hash) in &release.images {
                if *kind == PartKind::Root && !whole {
                    continue;
                }
                if &self.disk.hash(*kind, set, *len)? != hash {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(Some(version.clone()));
            }
        }
        Ok(None)
    }

    /// Every set the bootloader could boot holds a whole release.
    fn check_bootable_sets_hold_releases(&self) -> Result<BTreeMap<SetId, Option<String>>> {
        let mut held = BTreeMap::new();
        for set in [SetId::A, SetId::B] {
            let bits = self.disk.bits(set)?;
            let content = if bits.bootable() || bits.tries > 0 {
                let c = self.content(set)?;
                ensure(c.is_some(), || {
                    format!("set {set} is bootable or staged {bits} but holds no whole release")
                })?;
                c
            } else {
                None
            };
            held.insert(set, content);
        }
        Ok(held)
    }

    fn bits(&self) -> Result<(Bits, Bits)> {
        Ok((self.disk.bits(SetId::A)?, self.disk.bits(SetId::B)?))
    }

    /// One boot: pick a set as the bootloader does, load its kernel, initramfs and command
    /// line from its BOOT partition, run QEMU, and check that what booted is what the set holds.
    fn boot(&mut self, ask: &Ask) -> Result<(SetId, String, Boot)> {
        let held = self.check_bootable_sets_hold_releases()?;
        let set = self
            .disk
            .bootloader_pick()?
            .ok_or("no set is bootable: the disk is bricked")?;
        let version = held
            .get(&set)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("set {set} was picked but holds no release"))?;
        let boot = self.launch(set, &version, ask)?;
        let n = self.boots;
        // The release that booted is the one the set holds ("Welcome to PRETTY_NAME!").
        let welcome = format!("updog VM test OS {version}");
        ensure(boot.printed(&welcome) || boot.ended == Ended::Cut, || {
            format!("boot {n}: set {set} holds {version} but the console never said {welcome:?}")
        })?;
        self.check_bootable_sets_hold_releases()?;
        Ok((set, version, boot))
    }

    /// [`Run::boot`], failing unless the bootloader picked `set` holding `version` (when
    /// given). Returns the boot's number and what it printed.
    fn boot_expecting(
        &mut self,
        ask: &Ask,
        set: SetId,
        version: Option<&str>,
    ) -> Result<(u32, Boot)> {
        let (booted, held, boot) = self.boot(ask)?;
        let n = self.boots;
        ensure(booted == set && version.is_none_or(|v| v == held), || {
            format!(
                "boot {n}: expected set {set}{}, got set {booted} holding {held}",
                version.map_or(String::new(), |v| format!(" holding {v}"))
            )
        })?;
        Ok((n, boot))
    }

    /// Boots `set` (already picked by the bootloader) from its BOOT partition.
    fn launch(&mut self, set: SetId, version: &str, ask: &Ask) -> Result<Boot> {
        self.boots += 1;
        let n = self.boots;
        let boot_img = self.work.join("boot.img");
        self.disk.extract(PartKind::Boot, set, &boot_img)?;
        let kernel = self.work.join("vmlinuz");
        let initrd = self.work.join("initrd.img");
        let cmdline_file = self.work.join("cmdline");
        for (name, to) in [
            ("vmlinuz", &kernel),
            ("initrd.img", &initrd),
            ("cmdline", &cmdline_file),
        ] {
            let _ = std::fs::remove_file(to);
            vm::debugfs_dump(&boot_img, name, to)?;
        }
        let template = std::fs::read_to_string(&cmdline_file).map_err(|e| e.to_string())?;
        let root = self.disk.partuuid(PartKind::Root, set)?;
        let hash = self.disk.partuuid(PartKind::Hash, set)?;
        let cmdline = format!(
            "{} {}",
            template
                .trim()
                .replace("${root_partuuid}", &root)
                .replace("${hash_partuuid}", &hash),
            ask.extra
        );
        let log = self.work.join(format!("boot-{n:02}.log"));
        let repo = self.build.join(ask.repo);
        let boot = vm::boot(
            &kernel,
            &initrd,
            &cmdline,
            &self.disk.image.path,
            &repo,
            &log,
            self.boot_timeout,
            ask.cut.as_ref(),
        )?;
        if boot.ended == Ended::Cut {
            self.cuts += 1;
        }
        let (a, b) = self.bits()?;
        println!(
            "boot {n:2}: set {set} ({version}), {}, {:?} after {:.0}s{}; now A {a} B {b}; console {}",
            ask.repo,
            boot.ended,
            boot.secs,
            ask.cut.as_ref().map_or(String::new(), |c| format!(
                " (cut {:.2}s after {:?})",
                c.delay.as_secs_f64(),
                c.after
            )),
            log.display()
        );
        for bad in [
            "Failed to start has-boot-ever-succeeded",
            "has-boot-ever-succeeded.service: Failed",
            "Failed to set up standard output",
        ] {
            ensure(!boot.printed(bad), || {
                format!("boot {n}: {bad:?} on the console ({})", log.display())
            })?;
        }
        Ok(boot)
    }
}

fn updog_result(boot: &Boot) -> Option<&str> {
    boot.line("VMTEST updog result=")
}

fn expect_updog_success(n: u32, boot: &Boot) -> Result<()> {
    let line =
        updog_result(boot).ok_or_else(|| format!("boot {n}: updog.service never finished"))?;
    ensure(
        line.contains("result=success") && line.contains("status=0"),
        || format!("boot {n}: updog.service did not end successfully: {line}"),
    )
}

fn parse_args() -> Result<(Option<PathBuf>, u32, u64, PathBuf)> {
    let mut deb = None;
    let mut cuts = 8;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vm");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--deb" => deb = Some(PathBuf::from(value()?)),
            "--cuts" => cuts = value()?.parse().map_err(|_| "--cuts N")?,
            "--seed" => seed = value()?.parse().map_err(|_| "--seed S")?,
            "--out" => out = PathBuf::from(value()?),
            "--help" | "-h" => {
                println!(
                    "vm-test [--deb PATH] [--cuts N (8)] [--seed S] [--out DIR (target/vm)]\n\
                     Boots the package in QEMU (software emulation; VM_ACCEL=kvm to use KVM).\n\
                     Needs root, mmdebstrap, qemu-system-x86, cgpt, gdisk, e2fsprogs, cryptsetup-bin."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((deb, cuts, seed, out))
}

fn main() {
    let started = Instant::now();
    match run_all() {
        Ok(run) => println!(
            "vm-test: every scenario passed: {} boots, {} power cuts, {:.0}s",
            run.boots,
            run.cuts,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!(
                "vm-test: FAILED after {:.0}s: {e}",
                started.elapsed().as_secs_f64()
            );
            std::process::exit(1);
        }
    }
}

fn run_all() -> Result<Run> {
    let (deb, cuts_wanted, seed, out) = parse_args()?;
    let deb = if let Some(d) = deb {
        d
    } else {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/deb");
        std::fs::read_dir(&dir)
            .map_err(|e| {
                format!(
                    "{}: {e} (build it with packaging/build-deb, or pass --deb)",
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("no .deb in {} (packaging/build-deb)", dir.display()))?
    };
    println!(
        "vm-test: package {}, seed {seed}, {cuts_wanted} power cuts",
        deb.display()
    );
    let build = vm::build_images(&deb, &out)?;
    let work = out.join("run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    let mut releases = BTreeMap::new();
    for version in [
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "1.3.0",
        "verity-1.0.0",
        "verity-1.1.0",
    ] {
        let dir = build.join(format!("os-{version}"));
        let mut images = Vec::new();
        for (kind, file) in [
            (PartKind::Boot, "boot.ext4"),
            (PartKind::Root, "root.ext4"),
            (PartKind::Hash, "root.verity"),
        ] {
            let path = dir.join(file);
            let len = std::fs::metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            let hash = vm::hash_reader(std::fs::File::open(&path).map_err(|e| e.to_string())?)?;
            images.push((kind, len, hash));
        }
        releases.insert(version.to_string(), Release { images });
    }

    // The factory disk: 1.0.0 on set A, on trial (priority 1, one try, not successful), set B
    // empty; the PRIVATE partition's "ever succeeded" bit clear.
    let disk = OsDisk::create(&work.join("os-disk.img"), Bits::new(1, 1, false))?;
    let factory = build.join("os-1.0.0");
    disk.write(PartKind::Boot, SetId::A, &factory.join("boot.ext4"))?;
    disk.write(PartKind::Root, SetId::A, &factory.join("root.ext4"))?;
    disk.write(PartKind::Hash, SetId::A, &factory.join("root.verity"))?;
    let mut run = Run {
        build,
        work,
        disk,
        releases,
        boots: 0,
        cuts: 0,
        boot_timeout: Duration::from_secs(
            std::env::var("VM_BOOT_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(600),
        ),
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let poweroff = "vmtest.after=poweroff";

    if std::env::var_os("VM_ONLY_VERITY").is_some() {
        // For working on (f) alone.
        verity(&mut run, poweroff)?;
        return Ok(run);
    }

    // (a) First boot: marked after boot-complete.target; updog.service stages, flips, reboots.
    let (n, boot) = run.boot_expecting(&ask("repo-1.1.img", poweroff), SetId::A, None)?;
    expect_updog_success(n, &boot)?;
    ensure(boot.ended == Ended::Reboot, || {
        format!("boot {n}: no reboot after the update")
    })?;
    let (a, b) = run.bits()?;
    ensure(a == Bits::new(1, 0, true), || {
        format!("boot {n}: set A {a} was not marked successful")
    })?;
    ensure(run.disk.boot_ever_succeeded()?, || {
        format!("boot {n}: PRIVATE bit 57 not set")
    })?;
    ensure(b == Bits::new(2, 1, false), || {
        format!("boot {n}: set B {b} is not flipped to")
    })?;
    ensure(run.content(SetId::B)?.as_deref() == Some("1.1.0"), || {
        format!("boot {n}: B does not hold 1.1.0")
    })?;
    let staging_secs = match (
        boot.time_of("Starting updog.service"),
        boot.time_of("reboot: Restarting"),
    ) {
        (Some(start), Some(end)) if end > start => end - start,
        _ => 60.0,
    };
    println!(
        "  (a) ok: first boot marked, 1.1.0 staged and flipped in {staging_secs:.0}s, updog.service succeeded"
    );

    // (b) The new set boots and is marked; (d) signpost rollback-to-inactive goes back to A.
    let (n, boot) = run.boot_expecting(
        &ask("repo-1.1.img", "vmtest.updog=off vmtest.action=rollback"),
        SetId::B,
        Some("1.1.0"),
    )?;
    ensure(boot.printed("VMTEST action rollback status=0"), || {
        format!("boot {n}: rollback-to-inactive failed")
    })?;
    let (a, b) = run.bits()?;
    ensure(b == Bits::new(1, 0, true), || {
        format!("boot {n}: set B {b} not marked, or not rolled back from")
    })?;
    ensure(a == Bits::new(2, 0, true), || {
        format!("boot {n}: set A {a} is not the rollback target")
    })?;
    println!(
        "  (b) ok: set B booted 1.1.0 and was marked; (d) rollback-to-inactive asked for set A"
    );

    // (e) Power cuts while set A stages 1.1.0 again over B, and around the flip.
    let mut updates_completed = 0;
    while run.cuts < cuts_wanted {
        let (a, b) = run.bits()?;
        let next = if a.bootable() && (!b.bootable() || a.priority >= b.priority) {
            SetId::A
        } else {
            SetId::B
        };
        if next == SetId::B {
            // The flip completed: B boots 1.1.0; roll back to A for the next cut.
            let (n, boot) = run.boot_expecting(
                &ask("repo-1.1.img", "vmtest.updog=off vmtest.action=rollback"),
                SetId::B,
                Some("1.1.0"),
            )?;
            ensure(boot.printed("VMTEST action rollback status=0"), || {
                format!("boot {n}: rollback failed")
            })?;
            continue;
        }
        let cut = if run.cuts % 2 == 0 {
            Cut {
                after: "Starting updog.service".to_string(),
                delay: Duration::from_secs_f64(rng.f64() * staging_secs),
            }
        } else {
            Cut {
                after: "is marked valid".to_string(),
                delay: Duration::from_secs_f64(rng.f64() * 0.15),
            }
        };
        let cuts_before = run.cuts;
        let (n, boot) = run.boot_expecting(
            &Ask {
                repo: "repo-1.1.img",
                extra: poweroff,
                cut: Some(cut),
            },
            SetId::A,
            Some("1.0.0"),
        )?;
        if run.cuts == cuts_before {
            // The update finished before the cut: it must have succeeded.
            expect_updog_success(n, &boot)?;
            updates_completed += 1;
        }
        let (a, b) = run.bits()?;
        ensure(a.bootable() && a.successful, || {
            format!("boot {n}: set A {a} lost its boot")
        })?;
        ensure(
            b == Bits::new(0, 0, false)
                || b == Bits::new(1, 0, true)
                || b == Bits::new(0, 1, false)
                || b == Bits::new(2, 1, false),
            || format!("boot {n}: set B {b} is in a state no step of an update leaves it in"),
        )?;
    }
    println!(
        "  (e): {} of the cuts left one GPT copy invalid (cut between the two writes of the flip); the bootloader repaired it from the other, as GRUB's gptprio does",
        run.disk.repairs.get()
    );
    println!(
        "  (e) ok: {} power cuts (seed {seed}); {updates_completed} updates finished before their cut; every boot was the old set unless the flip completed",
        run.cuts
    );

    // A re-run of the update succeeds, then (c) a release whose health check fails.
    loop {
        let (_, b) = run.bits()?;
        if b == Bits::new(2, 1, false) {
            break;
        }
        let (n, boot) = run.boot_expecting(&ask("repo-1.1.img", poweroff), SetId::A, None)?;
        expect_updog_success(n, &boot)?;
        ensure(boot.ended == Ended::Reboot, || {
            format!("boot {n}: the re-run did not flip and reboot")
        })?;
    }
    // B boots 1.1.0, is marked, and takes 1.2.0 onto A.
    let (n, boot) = run.boot_expecting(&ask("repo-1.2.img", poweroff), SetId::B, Some("1.1.0"))?;
    expect_updog_success(n, &boot)?;
    ensure(run.disk.bits(SetId::B)?.successful, || {
        format!("boot {n}: B not marked")
    })?;
    ensure(run.content(SetId::A)?.as_deref() == Some("1.2.0"), || {
        format!("boot {n}: A does not hold 1.2.0")
    })?;
    println!("  re-run after the cuts ok; 1.2.0 staged from B");

    for (failing, repo, rollback) in [
        ("1.2.0", "repo-1.2.img", false),
        ("1.3.0", "repo-1.3.img", true),
    ] {
        if failing == "1.3.0" {
            // A newer release than the failed one is taken as usual.
            let (n, boot) = run.boot_expecting(
                &Ask {
                    repo,
                    extra: poweroff,
                    cut: None,
                },
                SetId::B,
                None,
            )?;
            expect_updog_success(n, &boot)?;
            ensure(run.content(SetId::A)?.as_deref() == Some("1.3.0"), || {
                format!("boot {n}: A does not hold 1.3.0")
            })?;
        }
        // The failing release boots once, its check fails, it is never marked.
        let (n, boot) = run.boot_expecting(
            &Ask {
                repo,
                extra: poweroff,
                cut: None,
            },
            SetId::A,
            Some(failing),
        )?;
        ensure(
            boot.printed("VMTEST health check failing on purpose"),
            || format!("boot {n}: the health check did not run"),
        )?;
        let a = run.disk.bits(SetId::A)?;
        ensure(!a.successful, || {
            format!("boot {n}: the failed release was marked successful")
        })?;
        if rollback {
            ensure(boot.ended == Ended::Reboot, || {
                format!("boot {n}: the rollback drop-in did not reboot")
            })?;
            ensure(run.disk.bits(SetId::B)?.priority == 2, || {
                format!("boot {n}: no rollback to B")
            })?;
        }
        // The next boot is the old set, and updog does not take the failed release again.
        let before = run.bits()?;
        let (n, boot) = run.boot_expecting(
            &Ask {
                repo,
                extra: poweroff,
                cut: None,
            },
            SetId::B,
            Some("1.1.0"),
        )?;
        expect_updog_success(n, &boot)?;
        ensure(
            boot.printed(&format!("{failing} failed to boot on this host")),
            || format!("boot {n}: updog did not say that {failing} failed to boot"),
        )?;
        ensure(boot.ended == Ended::PowerOff, || {
            format!("boot {n}: rebooted into the failed release")
        })?;
        let after = run.bits()?;
        ensure(after.0 == before.0, || {
            format!("boot {n}: set A changed: {} -> {}", before.0, after.0)
        })?;
        println!(
            "  (c) ok: {failing} failed its health check{}, was never marked, the old set booted, and it was not taken again",
            if rollback {
                " (rollback drop-in: rolled back at once)"
            } else {
                ""
            }
        );
    }
    verity(&mut run, poweroff)?;
    Ok(run)
}

/// (f) A Bottlerocket-like host: the root opened through dm-verity over the set's ROOT and
/// HASH partitions by the initramfs (the root hash on the BOOT partition's command line), read
/// only for good, `/var/lib/updog` on the DATA partition. The update boots through verity; a
/// set whose HASH partition is wrong does not boot, and the host falls back and does not take
/// that release again.
fn verity(run: &mut Run, poweroff: &str) -> Result<()> {
    let disk = OsDisk::create(&run.work.join("verity-disk.img"), Bits::new(1, 0, true))?;
    let factory = run.build.join("os-verity-1.0.0");
    disk.write(PartKind::Boot, SetId::A, &factory.join("boot.ext4"))?;
    disk.write(PartKind::Root, SetId::A, &factory.join("root.ext4"))?;
    disk.write(PartKind::Hash, SetId::A, &factory.join("root.verity"))?;
    disk.format_data(&run.work.join("data.ext4"), "updog-data")?;
    run.disk = disk;
    let plain = ask("repo-verity.img", poweroff);
    let (n, boot) = run.boot_expecting(&plain, SetId::A, Some("verity-1.0.0"))?;
    ensure(
        boot.printed("VMTEST verity root opened") && boot.printed("root=ro dev=/dev/mapper/root"),
        || format!("boot {n}: the root was not mounted read-only through dm-verity"),
    )?;
    expect_updog_success(n, &boot)?;
    ensure(boot.ended == Ended::Reboot, || {
        format!("boot {n}: no reboot after the update")
    })?;
    ensure(
        run.content(SetId::B)?.as_deref() == Some("verity-1.1.0"),
        || format!("boot {n}: B does not hold verity-1.1.0"),
    )?;

    // The new set boots through verity and is marked.
    let (n, boot) = run.boot_expecting(
        &ask("repo-verity.img", "vmtest.updog=off vmtest.action=rollback"),
        SetId::B,
        Some("verity-1.1.0"),
    )?;
    ensure(boot.printed("root=ro dev=/dev/mapper/root"), || {
        format!("boot {n}: B's root is not the verity device")
    })?;
    ensure(run.disk.bits(SetId::B)?.successful, || {
        format!("boot {n}: B was not marked")
    })?;
    // (rolled back to A, which is marked and preferred again)

    // A wrong HASH image on set B: it holds 1.1.0's ROOT and BOOT but the older tree.
    let (_, b) = run.bits()?;
    let wrong = run.build.join("os-verity-1.0.0/root.verity");
    run.disk.write(PartKind::Hash, SetId::B, &wrong)?;
    // Flip to B again as an update would (priority 2, one try, not successful), with cgpt.
    let b_number = run.disk.number(PartKind::Boot, SetId::B)?;
    let a_number = run.disk.number(PartKind::Boot, SetId::A)?;
    for (number, args) in [
        (b_number, ["-P", "2", "-T", "1", "-S", "0"]),
        (a_number, ["-P", "1", "-T", "0", "-S", "1"]),
    ] {
        let out = std::process::Command::new("cgpt")
            .args(["add", "-i", &number.to_string()])
            .args(args)
            .arg(&run.disk.image.path)
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.success(), || "cgpt add failed".to_string())?;
    }
    let picked = run.disk.bootloader_pick()?;
    ensure(picked == Some(SetId::B), || {
        format!("expected set B to be tried, got {picked:?} (B was {b})")
    })?;
    let boot = run.launch(SetId::B, "verity-1.1.0 with a wrong HASH", &plain)?;
    let n = run.boots;
    ensure(!boot.printed("updog VM test OS"), || {
        format!("boot {n}: a set with a wrong HASH partition booted its OS")
    })?;
    // The kernel's dm-verity refuses the blocks (the open itself only reads the superblock of
    // the hash tree), so the root cannot be mounted and the initramfs reboots (panic=-1).
    ensure(
        boot.printed("device-mapper: verity") && boot.printed("is corrupted"),
        || format!("boot {n}: dm-verity did not refuse the wrong HASH partition"),
    )?;
    ensure(boot.ended == Ended::Reboot, || {
        format!("boot {n}: the failed boot did not reboot")
    })?;
    let b_after = run.disk.bits(SetId::B)?;
    ensure(b_after == Bits::new(2, 0, false), || {
        format!("boot {n}: set B {b_after} after a failed boot")
    })?;

    // The next boot is A, which does not take the release again (the record of the flip is on
    // DATA, shared by both sets).
    let (n, boot) = run.boot_expecting(&plain, SetId::A, Some("verity-1.0.0"))?;
    expect_updog_success(n, &boot)?;
    ensure(boot.printed("1.1.0 failed to boot on this host"), || {
        format!("boot {n}: updog did not say that 1.1.0 failed to boot")
    })?;
    ensure(boot.ended == Ended::PowerOff, || {
        format!("boot {n}: rebooted into the failed release")
    })?;
    println!(
        "  (f) ok: verity roots booted read-only through dm-verity; the update was staged and marked; a wrong HASH partition failed the boot and the host fell back to A"
    );
    Ok(())
}
