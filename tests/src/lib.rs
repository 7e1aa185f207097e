//! End-to-end tests across crates: real HTTP server on loopback, real signed repositories, real
//! GPT disk images, and loop devices when root.
//!
//! This library is the shared harness of the tests in `tests/tests/` and of the demo
//! (`cargo run -p e2e-tests --bin demo`): it publishes signed repositories with releases (lz4
//! images, waves, migrations), builds a disk image with the reference layout, serves the
//! repository on 127.0.0.1, writes an `updog.toml` and an os-release for a simulated host, and
//! runs the real `updog` and `signpost` binaries against them.

pub mod shim;
pub mod vm;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bootpart::SetId;
use chrono::{DateTime, Utc};
use fixtures::disk::{DiskImage, DiskImageBuilder, PartKind};
use fixtures::http::TestServer;
use semver::Version;

/// The variant every simulated host runs.
pub const VARIANT: &str = "demo-variant";

/// Attribute bits of a set that booted successfully: priority 1, tries 0, successful.
pub const BOOTED_OK: u64 = (1 << 48) | (1 << 56);

/// Directory holding `updog`, `signpost`, `updata`, `agent` and `embed`: links to the shim
/// binary (see [`shim`]), which runs the real program each is named after.
///
/// The shim is this package's `e2e-shim` binary, which cargo builds before the tests and names
/// in `CARGO_BIN_EXE_e2e-shim` (at run time too, under `cargo test` and nextest alike): no
/// nested build, and no binary older than the test. Outside a test (the demo under
/// `cargo run`), the running program is the shim: it calls [`shim::dispatch`] first thing.
/// The links live next to it, in `<name>-bin/`, made once and shared by concurrent tests.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shim = if let Some(path) = std::env::var_os("CARGO_BIN_EXE_e2e-shim") {
            PathBuf::from(path)
        } else {
            let exe = std::env::current_exe().expect("current exe");
            // A test binary does not dispatch; run by hand, it lacks the variable.
            assert!(
                !exe.parent().is_some_and(|d| d.ends_with("deps")),
                "CARGO_BIN_EXE_e2e-shim is not set: run the tests with cargo test or nextest"
            );
            exe
        };
        let name = shim.file_name().expect("shim file name").to_string_lossy();
        let dir = shim.with_file_name(format!("{name}-bin"));
        std::fs::create_dir_all(&dir).expect("creating the directory of links");
        for program in shim::PROGRAMS {
            let link = dir.join(program);
            if std::fs::read_link(&link).is_ok_and(|target| target == shim) {
                continue;
            }
            // Made under a name of this process and renamed into place: another test process
            // may be making or running the same link.
            let tmp = dir.join(format!(".{program}.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&shim, &tmp).expect("linking to the shim");
            std::fs::rename(&tmp, &link).expect("renaming the link into place");
        }
        dir
    })
}

/// Deterministic bytes that compress about 2:1, like a real filesystem image.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        // Half random bytes, half a repeating pattern.
        out.extend_from_slice(&bytes[..4]);
        out.extend_from_slice(b"fsfs");
    }
    out.truncate(len);
    out
}

/// lz4 frame compression, as the reference builds its images.
pub fn lz4(data: &[u8]) -> Vec<u8> {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
    enc.write_all(data).expect("lz4 in memory");
    enc.finish().expect("lz4 in memory")
}

/// One release in a repository.
#[derive(Debug, Clone)]
pub struct Release {
    /// Its version.
    pub version: Version,
    /// `max_version` (defaults to `version`).
    pub max_version: Version,
    /// Decoded images.
    pub boot: Vec<u8>,
    /// Decoded root image.
    pub root: Vec<u8>,
    /// Decoded hash image.
    pub hash: Vec<u8>,
    /// Wave bounds and start times (empty: ready now).
    pub waves: BTreeMap<u32, DateTime<Utc>>,
    /// The update's `delta` field in the manifest, if any.
    pub delta: Option<serde_json::Value>,
}

impl Release {
    /// A release with small images derived from its version.
    pub fn new(version: &str) -> Release {
        let v: Version = version.parse().expect("version");
        let seed = v.major * 10_000 + v.minor * 100 + v.patch;
        Release {
            max_version: v.clone(),
            version: v,
            boot: payload(seed * 3 + 1, 300 * 1024),
            root: payload(seed * 3 + 2, 1536 * 1024),
            hash: payload(seed * 3 + 3, 64 * 1024),
            waves: BTreeMap::new(),
            delta: None,
        }
    }

    /// The TUF target name of one image.
    pub fn target_name(&self, kind: &str) -> String {
        format!(
            "{VARIANT}-{}-v{}-{kind}.img.lz4",
            std::env::consts::ARCH,
            self.version
        )
    }

    /// The decoded bytes of one image.
    pub fn image(&self, kind: PartKind) -> &[u8] {
        match kind {
            PartKind::Boot => &self.boot,
            PartKind::Hash => &self.hash,
            _ => &self.root,
        }
    }
}

/// A migration in a repository: `(from, to)` and the target's bytes.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Version jump it belongs to.
    pub from: Version,
    /// Version jump it belongs to.
    pub to: Version,
    /// Target name.
    pub name: String,
    /// Its (decoded) content; stored lz4-compressed.
    pub content: Vec<u8>,
}

/// A repository to publish.
#[derive(Debug, Clone, Default)]
pub struct RepoSpec {
    /// Releases.
    pub releases: Vec<Release>,
    /// Migrations.
    pub migrations: Vec<Migration>,
    /// More targets stored as given (chunk indexes, for example).
    pub extra_targets: Vec<(String, Vec<u8>)>,
}

impl RepoSpec {
    /// A repository with these releases, every one carrying the newest version as its
    /// `max_version` (as publishers set it), and no migrations.
    pub fn new(releases: Vec<Release>) -> RepoSpec {
        let mut spec = RepoSpec {
            releases,
            ..RepoSpec::default()
        };
        if let Some(max) = spec.releases.iter().map(|r| r.version.clone()).max() {
            spec.set_max_version(&max);
        }
        spec
    }

    /// The common case of the tests: 1.0.0 and 1.1.0, with the one migration between them
    /// (`migrate_v1.1.0_settings.lz4`).
    pub fn two_releases() -> RepoSpec {
        let mut spec = RepoSpec::new(vec![Release::new("1.0.0"), Release::new("1.1.0")]);
        spec.migrations.push(Migration {
            from: "1.0.0".parse().expect("version"),
            to: "1.1.0".parse().expect("version"),
            name: "migrate_v1.1.0_settings.lz4".to_string(),
            content: b"migration 1.0.0 -> 1.1.0".to_vec(),
        });
        spec
    }

    /// Sets `max_version` of every release (pulling back releases above it).
    pub fn set_max_version(&mut self, max: &Version) {
        for r in &mut self.releases {
            r.max_version = max.clone();
        }
    }

    /// The manifest.json for these releases, written by hand in the reference shape.
    pub fn manifest_json(&self) -> serde_json::Value {
        let updates: Vec<_> = self
            .releases
            .iter()
            .map(|r| {
                let waves: serde_json::Map<String, serde_json::Value> = r
                    .waves
                    .iter()
                    .map(|(bound, at)| {
                        (
                            bound.to_string(),
                            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into(),
                        )
                    })
                    .collect();
                let mut update = serde_json::json!({
                    "variant": VARIANT,
                    "arch": std::env::consts::ARCH,
                    "version": r.version.to_string(),
                    "max_version": r.max_version.to_string(),
                    "waves": waves,
                    "images": {
                        "boot": r.target_name("boot"),
                        "root": r.target_name("root"),
                        "hash": r.target_name("hash"),
                    }
                });
                if let Some(delta) = &r.delta {
                    update["delta"] = delta.clone();
                }
                update
            })
            .collect();
        let mut migrations: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in &self.migrations {
            migrations
                .entry(format!("({}, {})", m.from, m.to))
                .or_default()
                .push(m.name.clone());
        }
        serde_json::json!({ "updates": updates, "migrations": migrations })
    }

    /// Every target (name, stored bytes): the manifest, compressed images and migrations.
    pub fn targets(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![(
            "manifest.json".to_string(),
            serde_json::to_vec_pretty(&self.manifest_json()).expect("json"),
        )];
        for r in &self.releases {
            for (kind, data) in [("boot", &r.boot), ("root", &r.root), ("hash", &r.hash)] {
                out.push((r.target_name(kind), lz4(data)));
            }
        }
        for m in &self.migrations {
            out.push((m.name.clone(), lz4(&m.content)));
        }
        out.extend(self.extra_targets.iter().cloned());
        out
    }
}

/// A published, signed repository on disk.
#[derive(Debug)]
pub struct Published {
    /// The root of what the server serves.
    pub dir: PathBuf,
    /// URL path of the metadata under the server root (`metadata/`).
    pub metadata_path: &'static str,
    /// URL path of the targets under the server root (`targets/`).
    pub targets_path: &'static str,
    /// The trusted root a host ships with.
    pub root_json: PathBuf,
}

impl Published {
    /// Every stored file of a target (its plain name and its `<hash>.<name>` copies), for
    /// tampering and fault injection.
    pub fn target_files(&self, name: &str) -> Vec<PathBuf> {
        let dir = self.dir.join(self.targets_path);
        let suffix = format!(".{name}");
        std::fs::read_dir(&dir)
            .expect("targets dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == name || n.ends_with(&suffix))
            })
            .collect()
    }

    /// The URL paths a target can be fetched under.
    pub fn target_url_paths(&self, name: &str) -> Vec<String> {
        self.target_files(name)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(ToString::to_string))
            .map(|f| format!("/{}{f}", self.targets_path))
            .collect()
    }
}

/// Signs and writes `spec` under `dir` with the fixture keys, with consistent snapshots as
/// the reference repositories use them.
pub fn publish(spec: &RepoSpec, dir: &Path) -> Published {
    publish_targets(spec.targets(), dir)
}

/// Like [`publish`], with the targets (the manifest included) given as they are to be signed:
/// for repositories a [`RepoSpec`] cannot describe (renamed or extra targets).
pub fn publish_targets(targets: Vec<(String, Vec<u8>)>, dir: &Path) -> Published {
    publish_version(targets, dir, 1)
}

/// Publishes `spec` again into `dir`, over an earlier [`publish`], as the repository's next
/// release: timestamp, snapshot and targets at `version` (2 for the first republish, then 3,
/// ...), so that a host that loaded the earlier metadata takes the new one.
pub fn republish(spec: &RepoSpec, dir: &Path, version: u64) -> Published {
    publish_version(spec.targets(), dir, version)
}

fn publish_version(targets: Vec<(String, Vec<u8>)>, dir: &Path, version: u64) -> Published {
    let mut repo = fixtures::repo::TestRepo::in_dir(dir, fixtures::repo::KeyKind::Ed25519);
    repo.consistent_snapshot = true;
    for _ in 1..version {
        repo.bump();
    }
    for (name, bytes) in targets {
        // As `updata publish` does: an lz4 target signs its decoded size.
        let lz4_name = std::path::Path::new(&name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("lz4"));
        if let Some(len) = lz4_name.then(|| decoded_len(&bytes)).flatten() {
            repo.target_custom.insert(
                name.clone(),
                serde_json::json!({ "decompressed_length": len }),
            );
        }
        repo.add_target(&name, &bytes);
    }
    repo.publish();
    let root_json = dir.join("root.json");
    repo.write_root(1, &root_json);
    Published {
        dir: dir.to_path_buf(),
        metadata_path: "metadata/",
        targets_path: "targets/",
        root_json,
    }
}

/// The decoded size of an lz4 frame file, `None` when it does not decode (a test's broken frame).
fn decoded_len(bytes: &[u8]) -> Option<u64> {
    let mut decoder = lz4_flex::frame::FrameDecoder::new(bytes);
    std::io::copy(&mut decoder, &mut std::io::sink()).ok()
}

/// A simulated host: a disk image, a served repository, configuration, os-release and a
/// recorder in place of the reboot command.
pub struct Host {
    /// The loop device the disk image is attached to, if any (declared first: detached before
    /// the image is removed).
    loop_device: Option<fixtures::disk::LoopDevice>,
    /// Scratch space, removed on drop.
    pub dir: tempfile::TempDir,
    /// The disk image.
    pub disk: DiskImage,
    /// What the server serves.
    pub repo: Published,
    /// The server.
    pub server: TestServer,
    /// `updog.toml`.
    pub config_path: PathBuf,
    /// os-release of the running OS.
    pub os_release: PathBuf,
    /// Where the reboot recorder appends a line per call.
    pub reboot_log: PathBuf,
    /// The device or image updog is pointed at (the loop device when [`Host::attach_loop`]).
    pub disk_path: PathBuf,
    /// The running set.
    pub active: SetId,
    /// Extra configuration lines.
    pub extra_config: String,
}

/// Seed of simulated hosts unless a test changes it.
pub const HOST_SEED: u32 = 1000;

impl Host {
    /// A host running `running` on set A (marked booted OK), with `spec` published and served.
    pub fn new(spec: &RepoSpec, running: &str) -> Host {
        Self::with_disk(spec, running, DiskImageBuilder::new())
    }

    /// Like [`Host::new`] with a custom disk layout.
    pub fn with_disk(spec: &RepoSpec, running: &str, builder: DiskImageBuilder) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = publish(spec, &dir.path().join("repo"));
        Self::serving(dir, repo, running, builder)
    }

    /// A host running `running` on set A, served `repo` (published by other means, such as
    /// `updata`); `dir` becomes its scratch space.
    pub fn serving(
        dir: tempfile::TempDir,
        repo: Published,
        running: &str,
        builder: DiskImageBuilder,
    ) -> Host {
        let server = TestServer::serve_dir(&repo.dir).expect("test server");
        // Set A's BOOT partition is number 1.
        let disk = builder
            .attributes(1, BOOTED_OK)
            .build(&dir.path().join("disk.img"))
            .expect("disk image");
        let reboot_log = dir.path().join("reboots.log");
        let recorder = dir.path().join("reboot-recorder.sh");
        std::fs::write(
            &recorder,
            format!(
                "#!/bin/sh\necho \"reboot $*\" >> '{}'\n",
                reboot_log.display()
            ),
        )
        .expect("recorder");
        set_executable(&recorder);
        let host = Host {
            config_path: dir.path().join("updog.toml"),
            os_release: dir.path().join("os-release"),
            reboot_log,
            disk_path: disk.path.clone(),
            disk,
            repo,
            server,
            dir,
            active: SetId::A,
            extra_config: String::new(),
            loop_device: None,
        };
        host.set_running(running, SetId::A);
        host
    }

    /// Writes os-release and `updog.toml` for a host running `version` on `set`.
    pub fn set_running(&self, version: &str, set: SetId) {
        std::fs::write(
            &self.os_release,
            format!("NAME=Demo\nVARIANT_ID={VARIANT}\nVERSION_ID={version}\nBUILD_ID=e2e\n"),
        )
        .expect("os-release");
        self.write_config(set, &self.extra_config);
    }

    fn write_config(&self, set: SetId, extra: &str) {
        let d = self.dir.path();
        let text = format!(
            r#"metadata_base_url = "{meta}"
targets_base_url = "{targets}"
seed = {HOST_SEED}
trusted_root = "{root}"
metadata_dir = "{d}/state/metadata"
state_file = "{d}/state/state.json"
migrations_dir = "{d}/state/migrations"
migrations_metadata_dir = "{d}/state/migrations-metadata"
disk = "{disk}"
active_set = "{set}"
reboot_command = ["{recorder}", "now"]
os_release = "{os}"
stall_timeout_secs = 2
retries = 3
"#,
            meta = self.server.url_for(self.repo.metadata_path),
            targets = self.server.url_for(self.repo.targets_path),
            root = self.repo.root_json.display(),
            d = d.display(),
            disk = self.disk_path.display(),
            recorder = d.join("reboot-recorder.sh").display(),
            os = self.os_release.display(),
        );
        // Keys in `extra` replace the ones above (TOML forbids duplicates).
        let overridden = |line: &str| {
            line.split_once('=').is_some_and(|(key, _)| {
                extra
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .any(|(k, _)| k.trim() == key.trim())
            })
        };
        let mut text: String = text
            .lines()
            .filter(|l| !overridden(l))
            .flat_map(|l| [l, "\n"])
            .collect();
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&self.config_path, text).expect("updog.toml");
    }

    /// Adds configuration lines (for example `version_lock = "1.0.0"`) and rewrites the file.
    pub fn configure(&mut self, extra: &str) {
        self.extra_config.push_str(extra);
        self.extra_config.push('\n');
        self.write_config(self.active, &self.extra_config.clone());
    }

    /// As root: attaches the disk image to a loop device (partitions added with `partx`) and
    /// points `updog` and `signpost` at the device. Detached when the host is dropped, also
    /// when a test fails.
    pub fn attach_loop(&mut self) -> Result<(), fixtures::disk::DiskError> {
        let dev = fixtures::disk::LoopDevice::attach(&self.disk.path)?;
        self.disk_path = dev.path().to_path_buf();
        self.loop_device = Some(dev);
        self.write_config(self.active, &self.extra_config.clone());
        Ok(())
    }

    /// Spawns `updog ARGS --progress json` (stdout piped) and returns once it reports an event
    /// whose JSON line contains `until` (for example `"event":"image"`), with the rest of its
    /// stdout. Panics if it ends first or takes over a minute.
    // The child is handed to the caller, who waits for it.
    #[allow(clippy::zombie_processes)]
    pub fn spawn_updog_until(
        &self,
        cmd: Command,
        until: &str,
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    ) {
        use std::io::BufRead;
        let mut cmd = cmd;
        let mut child = cmd
            .args(["--progress", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn updog");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).expect("read progress");
            assert!(
                n > 0,
                "updog ended before {until}: {:?}",
                child.wait_with_output()
            );
            if line.contains(until) {
                return (child, stdout);
            }
            assert!(std::time::Instant::now() < deadline, "no {until} in time");
        }
    }

    /// The file names in the host's migrations cache.
    pub fn cached_migrations(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("state/migrations"))
            .expect("the migrations cache exists")
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// A `updog` command with `--config` set.
    pub fn updog_cmd(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("updog"));
        cmd.arg("--config").arg(&self.config_path);
        cmd
    }

    /// Runs `updog ARGS` and returns its output.
    pub fn updog(&self, args: &[&str]) -> Output {
        self.updog_cmd().args(args).output().expect("running updog")
    }

    /// A `signpost` command for this disk.
    pub fn signpost_cmd(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("signpost"));
        cmd.arg("--disk")
            .arg(&self.disk_path)
            .arg("--active")
            .arg(self.active.to_string());
        cmd
    }

    /// The boot flags as the `signpost` library reads them now (read-only, without the disk
    /// lock, so it also works while an update holds it).
    pub fn signpost(&self) -> signpost::Signpost {
        signpost::Signpost::open_read_only(&self.disk_path, Some(self.active))
            .expect("signpost open")
    }

    /// The first `len` bytes of a partition of a set, read from the image file.
    pub fn partition_bytes(&self, kind: PartKind, set: SetId, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let index = usize::from(set == SetId::B);
        let part = self.disk.partition(kind, index).expect("partition");
        let mut buf = vec![0u8; len];
        let f = std::fs::File::open(&self.disk_path).expect("disk");
        f.read_exact_at(&mut buf, part.byte_offset(self.disk.sector_size))
            .expect("read partition");
        buf
    }

    /// Lines the reboot recorder wrote.
    pub fn reboot_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.reboot_log)
            .map(|t| t.lines().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// A host running `running` on set A whose set B holds an older OS that booted before
    /// ([`OLD_B`]), with a stale record claiming B holds 0.9.0, applied: the starting point of
    /// the crash tests.
    pub fn with_old_b(spec: &RepoSpec, running: &str) -> Host {
        // Set B's BOOT partition is number 5.
        let host = Self::with_disk(
            spec,
            running,
            DiskImageBuilder::new().attributes(5, OLD_B.apply_to(0)),
        );
        std::fs::create_dir_all(host.dir.path().join("state")).expect("state dir");
        let record = serde_json::json!({
            "format_version": 1, "variant": VARIANT, "arch": std::env::consts::ARCH,
            "version": "0.9.0", "from_version": "0.8.0", "set": "B",
            "staged_at": "2026-01-01T00:00:00Z", "images": {}, "applied": true,
        });
        std::fs::write(host.state_file(), record.to_string()).expect("stale record");
        host
    }

    /// Whether every image of `release` is on set B, byte for byte.
    pub fn b_holds(&self, release: &Release) -> bool {
        [PartKind::Boot, PartKind::Root, PartKind::Hash]
            .into_iter()
            .all(|kind| {
                let want = release.image(kind);
                self.partition_bytes(kind, SetId::B, want.len()) == want
            })
    }

    /// The staged-state record path.
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/state.json")
    }
}

/// Set B's state in [`Host::with_old_b`]: priority 1, no tries, booted successfully before.
pub const OLD_B: signpost::SetState = signpost::SetState {
    priority: 1,
    tries_left: 0,
    successful: true,
};

/// What must hold after an update, apply or revert was stopped at any point (killed, or a
/// simulated crash in process): set A boots next unless the flip completed; set B is bootable
/// (staged or applied) only with every image of `new` on it, else cleared or, if stopped before
/// the clear, as it was (`old_b`); and `updog status` (the library's) says what the GPT says,
/// showing the record only where the GPT agrees.
pub fn assert_consistent_after_stop(
    host: &Host,
    new: &Release,
    old_b: signpost::SetState,
    what: &str,
) {
    use updog::updater::InactiveState;
    let sp = host.signpost();
    let b = sp.state(SetId::B).expect("set B");
    let next = sp.next_boot();
    let (config, _) = updog::config::Config::from_path(&host.config_path).expect("config");
    let status = updog::updater::Updater::new(config)
        .expect("updater")
        .status()
        .expect("status never fails on a readable GPT");
    assert_eq!(status.inactive, InactiveState::of(&sp.flags()), "{what}");
    match status.inactive {
        InactiveState::Cleared => {}
        InactiveState::Previous => assert_eq!(b, old_b, "{what}: B changed before its clear"),
        InactiveState::Staged | InactiveState::Applied => {
            assert!(host.b_holds(new), "{what}: B is valid without its images");
        }
        other => panic!("{what}: B is {other:?} ({b})"),
    }
    let want_next = if status.inactive == InactiveState::Applied {
        SetId::B
    } else {
        SetId::A
    };
    assert_eq!(next, Some(want_next), "{what}: next boot");
    assert_eq!(status.next_boot, Some(want_next), "{what}");
    if let Some(staged) = &status.staged {
        assert!(
            matches!(
                status.inactive,
                InactiveState::Staged | InactiveState::Applied
            ),
            "{what}: a record shown for a set that holds nothing: {status:?}"
        );
        assert_eq!(staged.version, new.version, "{what}");
        assert_eq!(
            staged.applied,
            status.inactive == InactiveState::Applied,
            "{what}"
        );
    }
}

/// Makes `path` executable (mode 0755).
pub fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path).expect("stat").permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).expect("chmod");
}

/// Sends `signal` (`TERM`, `INT`, ...) to a child process with `kill`.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// Text of an output's stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a simulated bootloader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPick {
    /// The set it booted.
    pub set: SetId,
    /// Its tries left before the pick.
    pub tries_before: u8,
    /// Its tries left after the pick.
    pub tries_after: u8,
}

/// Plays the bootloader (GRUB `gptprio.next`): picks the set signpost's `next_boot` names
/// (highest priority with tries left or successful; ties to the lower partition number) and,
/// if it has tries left, decrements them and writes the GPT, as the bootloader does.
pub fn bootloader_pick(disk: &Path) -> Option<BootPick> {
    let lock = signpost::DiskLock::acquire(disk, signpost::lock::DEFAULT_WAIT).ok()?;
    let sp = signpost::Signpost::locked(&lock, Some(SetId::A)).ok()?;
    let set = sp.next_boot()?;
    let status = sp.status();
    let boot_number = match set {
        SetId::A => status.a.boot_partition,
        SetId::B => status.b?.boot_partition,
    };
    drop(sp);
    let mut file = lock.try_clone_file().ok()?;
    let mut table = bootpart::gpt::read_gpt(&file).ok()?.table;
    let entry = table.entry_mut(boot_number)?;
    let mut state = signpost::SetState::from_attributes(entry.attributes);
    let tries_before = state.tries_left;
    if state.tries_left > 0 {
        state.tries_left -= 1;
        entry.attributes = state.apply_to(entry.attributes);
        bootpart::gpt::write_gpt(&mut file, &table).ok()?;
    }
    Some(BootPick {
        set,
        tries_before,
        tries_after: state.tries_left,
    })
}

/// A tmpfs of a given size mounted on a directory (root only), unmounted on drop, also when a
/// test fails.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None` when it cannot
    /// (not root, no `mount`).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !fixtures::disk::is_root() {
            return None;
        }
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system with one file until the next write fails with `ENOSPC`.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = [0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
