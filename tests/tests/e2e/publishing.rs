//! The README's "Publishing a release", run exactly as written: every ```sh block of that
//! section, in order, in an empty directory holding only what an OS build produces, with the
//! real `updata`. After each block a simulated host (a GPT disk image, updog over HTTP on
//! 127.0.0.1, trusting the first root only) updates from the result: release 1.1.0, a
//! timestamp refresh, a root rotation it follows, and release 1.2.0 with a migration.
//!
//! Then its subsections "Keys in hardware" and "Signing root offline", the same way, against a
//! SoftHSM2 token the test's own configuration points at: every online key in the token, the
//! root signed on an "offline machine"; python-tuf and a host over HTTP accept the result; and
//! "Delegating targets", whose role's target python-tuf fetches through the delegation.

use fixtures::python_tuf::NgClient;
use std::path::{Path, PathBuf};
use std::process::Command;

use bootpart::SetId;
use e2e_tests::{Host, Published, Release, bin_dir, describe, lz4};
use fixtures::disk::{DiskImageBuilder, PartKind};

/// The text from the line `heading` up to the next line starting with `until` (or the next
/// `## ` section).
fn section_text(heading: &str, until: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has a heading {heading:?}"));
    let rest = &readme[start + 1..];
    let end = [until, "\n## "]
        .iter()
        .filter_map(|u| rest[3..].find(u).map(|i| i + 3))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The README's "Publishing a release" section before its first subsection.
fn readme_section() -> String {
    section_text("\n## Publishing a release\n", "\n### ")
}

/// The ```sh blocks of the README's "Publishing a release" section before its first
/// subsection.
fn readme_blocks() -> Vec<String> {
    section_blocks("\n## Publishing a release\n", "\n### ")
}

/// The ```sh blocks from the line `heading` up to the next line starting with `until` (or the
/// next `## ` section).
fn section_blocks(heading: &str, until: &str) -> Vec<String> {
    let section = section_text(heading, until);
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// The ```toml block of the same section: the `Release.toml` it shows for 1.2.0.
fn readme_release_toml() -> String {
    let rest = readme_section();
    let toml = rest
        .find("\n```toml\n")
        .expect("the section shows a Release.toml");
    let body = &rest[toml + "\n```toml\n".len()..];
    body[..body.find("\n```").expect("the toml block ends")].to_string() + "\n"
}

/// Runs one README block with bash (-e: every command must succeed) in `dir`, with the freshly
/// built `updata` first on PATH. The README is written for x86_64; another machine runs the
/// same commands with its own architecture name.
fn run_block(dir: &Path, block: &str) -> String {
    run_block_with(dir, block, &[])
}

/// [`run_block`] with more environment variables.
fn run_block_with(dir: &Path, block: &str, env: &[(&str, &Path)]) -> String {
    let block = block.replace("x86_64", std::env::consts::ARCH);
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "README block failed:\n{block}\n{}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the build of `version` produced: raw images (and for 1.2.0 a migration and its
/// Release.toml).
fn build_output(dir: &Path, release: &Release) -> PathBuf {
    let build = dir.join(format!("build-{}", release.version));
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("boot.ext4"), &release.boot).unwrap();
    std::fs::write(build.join("root.ext4"), &release.root).unwrap();
    std::fs::write(build.join("root.verity"), &release.hash).unwrap();
    build
}

fn assert_set_holds(host: &Host, set: SetId, release: &Release) {
    for kind in [PartKind::Boot, PartKind::Root, PartKind::Hash] {
        let want = release.image(kind);
        assert!(
            host.partition_bytes(kind, set, want.len()) == want,
            "{kind:?} of set {set} is not release {}",
            release.version
        );
    }
}

/// The host boots the set it staged (as the bootloader would) and marks the boot successful.
fn boot_into(host: &mut Host, set: SetId, version: &str) {
    let pick = e2e_tests::bootloader_pick(&host.disk_path).expect("a bootable set");
    assert_eq!(pick.set, set);
    host.active = set;
    host.set_running(version, set);
    let out = host
        .signpost_cmd()
        .arg("mark-successful-boot")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

fn stored_version(host: &Host, file: &str) -> u64 {
    let path = host.dir.path().join("state/metadata").join(file);
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

/// A host that ships the repository's first root, runs 1.0.0 and updates over HTTP to the first
/// release `first` published in `w/repo`, then boots it from set B.
fn host_on_first_release(w: &Path, first: &Release) -> Host {
    let shipped_root = w.join("shipped-root.json");
    std::fs::copy(w.join("repo/metadata/1.root.json"), &shipped_root).unwrap();
    let repo = Published {
        dir: w.join("repo"),
        metadata_path: "metadata/",
        targets_path: "targets/",
        root_json: shipped_root,
    };
    let mut host = Host::serving(
        tempfile::tempdir().unwrap(),
        repo,
        "1.0.0",
        DiskImageBuilder::new(),
    );
    let out = host.updog(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_set_holds(&host, SetId::B, first);
    boot_into(&mut host, SetId::B, &first.version.to_string());
    host
}

/// `updog check-update` verified the metadata and found nothing newer (exit 3 today, 1 once
/// updog matches the reference's "no update" status; either way not a failure to refresh).
fn no_update(host: &Host) {
    let out = host.updog(&["check-update"]);
    let text = describe(&out);
    assert!(
        matches!(out.status.code(), Some(1 | 3)) && text.contains("No update"),
        "{text}"
    );
}

#[test]
fn the_readme_publishes_releases_a_host_updates_from() {
    let blocks = readme_blocks();
    assert_eq!(
        blocks.len(),
        6,
        "first release, refresh, rotation, second release, waves, pull-back"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let r1 = Release::new("1.1.0");
    let r2 = Release::new("1.2.0");
    let r3 = Release::new("1.3.0");
    let build1 = build_output(w, &r1);
    std::fs::write(
        build1.join("Release.toml"),
        "version = \"1.1.0\"\n[migrations]\n\"(1.0.0, 1.1.0)\" = []\n",
    )
    .unwrap();
    let build2 = build_output(w, &r2);
    std::fs::write(
        build2.join("migrate_v1.2.0_demo.lz4"),
        lz4(b"settings migration 1.1.0 -> 1.2.0"),
    )
    .unwrap();
    // The Release.toml the README shows, exactly: its format is what the test checks.
    let release_toml = readme_release_toml();
    assert!(release_toml.contains("[migrations]"), "{release_toml}");
    std::fs::write(build2.join("Release.toml"), &release_toml).unwrap();
    let build3 = build_output(w, &r3);
    std::fs::write(
        build3.join("Release.toml"),
        release_toml.replace("1.2.0\"\n", "1.3.0\"\n") + "\"(1.2.0, 1.3.0)\" = []\n",
    )
    .unwrap();

    // Block 1: keys, root, release 1.1.0, check.
    let out = run_block(w, &blocks[0]);
    assert!(out.contains("repo: no problems found"), "{out}");
    // The reference's layout.
    for f in [
        "1.root.json",
        "timestamp.json",
        "1.snapshot.json",
        "1.targets.json",
    ] {
        assert!(w.join("repo/metadata").join(f).is_file(), "{f}");
    }
    let mut host = host_on_first_release(w, &r1);

    // Block 2: a timestamp refresh; the host accepts the new timestamp.
    run_block(w, &blocks[1]);
    no_update(&host);
    assert_eq!(stored_version(&host, "timestamp.json"), 2);

    // Block 3: root rotation; the host, shipped with version 1, follows to version 2.
    let out = run_block(w, &blocks[2]);
    assert!(out.contains("repo: no problems found"), "{out}");
    no_update(&host);
    assert_eq!(stored_version(&host, "root.json"), 2);

    // Block 4: release 1.2.0 with a migration, signed under root 2; the host stages it on A.
    let out = run_block(w, &blocks[3]);
    assert!(out.contains("repo: no problems found"), "{out}");
    let out = host.updog(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_set_holds(&host, SetId::A, &r2);
    let cached = host.cached_migrations();
    assert!(
        cached
            .iter()
            .any(|n| n.ends_with(".migrate_v1.2.0_demo.lz4")),
        "{cached:?}"
    );
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
    boot_into(&mut host, SetId::A, "1.2.0");

    // Block 5: release 1.3.0 in waves that open in two hours. The host is not offered it
    // yet; with waves ignored (a canary) it takes it.
    let out = run_block(w, &blocks[4]);
    assert!(out.contains("repo: no problems found"), "{out}");
    let out = host.updog(&["check-update"]);
    let text = describe(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("No update available") && text.contains("wave opens at"),
        "{text}"
    );
    host.configure("ignore_waves = true");
    let out = host.updog(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_set_holds(&host, SetId::B, &r3);
    boot_into(&mut host, SetId::B, "1.3.0");

    // Block 6: 1.3.0 pulled back. The host already on it is offered 1.2.0 and stages it.
    let out = run_block(w, &blocks[5]);
    assert!(out.contains("repo: no problems found"), "{out}");
    let out = host.updog(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_set_holds(&host, SetId::A, &r2);
    assert_eq!(host.signpost().next_boot(), Some(SetId::A));
}

/// python-tuf's `ngclient`, bootstrapped with `root`, refreshes from `url` and downloads
/// `target`.
fn python_tuf_fetches(work: &Path, url: &str, root: &Path, target: &str) {
    let got = NgClient::new(work)
        .fetch(url, root, &[target])
        .unwrap_or_else(|e| panic!("python-tuf refused: {e}"));
    assert!(got[0].is_some(), "python-tuf found no target {target}");
}

#[test]
fn the_readme_publishes_with_keys_in_hardware_and_root_signed_offline() {
    let Some(hsm) = fixtures::softhsm::SoftHsm::new() else {
        return;
    };
    if !fixtures::python_tuf::available() {
        return;
    }
    let mut blocks = section_blocks("\n### Keys in hardware\n", "\n### ");
    blocks.extend(section_blocks("\n### Signing root offline\n", "\n### "));
    blocks.extend(section_blocks("\n### Delegating targets\n", "\n### "));
    assert_eq!(
        blocks.len(),
        4,
        "token keys, offline root and release, refresh, delegation"
    );
    // The README names Debian's module path; a machine with it elsewhere runs the same lines.
    let blocks: Vec<String> = blocks
        .iter()
        .map(|b| {
            b.replace(
                "/usr/lib/softhsm/libsofthsm2.so",
                &hsm.module().display().to_string(),
            )
        })
        .collect();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let r1 = Release::new("1.1.0");
    let build1 = build_output(w, &r1);
    std::fs::write(
        build1.join("Release.toml"),
        "version = \"1.1.0\"\n[migrations]\n\"(1.0.0, 1.1.0)\" = []\n",
    )
    .unwrap();
    std::fs::write(
        build1.join("extras-tool.bin"),
        b"a tool the extras team ships",
    )
    .unwrap();
    let env = [("SOFTHSM2_CONF", hsm.conf())];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();

    // The online keys are made in the token; none is on disk.
    let out = run_block_with(w, &blocks[0], &env);
    assert!(out.contains("key id"), "{out}");
    for role in ["targets", "snapshot", "timestamp"] {
        assert!(w.join(format!("keys/{role}.pub.pem")).is_file());
        assert!(!w.join(format!("keys/{role}.pem")).exists());
    }

    // The root is signed offline; the release is published with the token's keys.
    let out = run_block_with(w, &blocks[1], &env);
    assert!(out.contains("every threshold is met"), "{out}");
    assert!(out.contains("repo: no problems found"), "{out}");
    assert!(!w.join("root.pem").exists() && !w.join("keys/root.pem").exists());
    let shipped_root = w.join("shipped-root.json");
    std::fs::copy(w.join("repo/metadata/1.root.json"), &shipped_root).unwrap();

    let mut host = Host::serving(
        tempfile::tempdir().unwrap(),
        Published {
            dir: w.join("repo"),
            metadata_path: "metadata/",
            targets_path: "targets/",
            root_json: shipped_root.clone(),
        },
        "1.0.0",
        DiskImageBuilder::new(),
    );
    python_tuf_fetches(
        w,
        &host.server.url(),
        &shipped_root,
        &format!(
            "demo-variant-{}-1.1.0-root.ext4.lz4",
            std::env::consts::ARCH
        ),
    );
    let out = host.updog(&["update"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_set_holds(&host, SetId::B, &r1);
    boot_into(&mut host, SetId::B, "1.1.0");

    // The cron job's refresh with the token's timestamp key; the host takes it.
    run_block_with(w, &blocks[2], &env);
    no_update(&host);
    assert_eq!(stored_version(&host, "timestamp.json"), 2);

    // A delegation: python-tuf fetches the delegated role's target; the host accepts the new
    // metadata.
    let out = run_block_with(w, &blocks[3], &env);
    assert!(out.contains("repo: no problems found"), "{out}");
    python_tuf_fetches(w, &host.server.url(), &shipped_root, "extras-tool.bin");
    assert_eq!(
        std::fs::read(w.join("py-targets/extras-tool.bin")).unwrap(),
        b"a tool the extras team ships"
    );
    no_update(&host);
    assert_eq!(stored_version(&host, "targets.json"), 2);
}

/// `image` with one byte changed every 100 KiB (from `seed`): a release that differs from the
/// one before it the way a patch release does, so that patches beat the chunk store.
fn edited(image: &[u8], seed: u8) -> Vec<u8> {
    let mut out = image.to_vec();
    for at in (4096 + usize::from(seed) * 512..out.len()).step_by(100 * 1024) {
        out[at] = out[at].wrapping_add(seed | 1);
    }
    out
}

/// Issue 22: the README's "Delta updates" blocks for publishers, run as written after the first
/// block of "Publishing a release": 1.1.0 indexed once, then the release block for 1.2.0 and,
/// with the version changed, for 1.3.0. `make-patches` reads the earlier releases from the
/// repository and makes one patch per earlier release (two for 1.3.0); a host on 1.1.0 stages
/// 1.2.0 and then 1.3.0 through the patch from the release it runs, never downloading the full
/// root image, and ends with each release's bytes.
#[test]
fn the_readme_delta_flow_publishes_releases_a_host_patches_to() {
    let publishing = readme_blocks();
    let delta = section_blocks("\n## Delta updates\n", "\n## ");
    assert!(delta.len() >= 2, "index once, then one block per release");
    let (index_once, per_release) = (&delta[0], &delta[1]);
    assert!(per_release.contains("1.2.0") && per_release.contains("make-patches"));

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let r1 = Release::new("1.1.0");
    let mut r2 = Release::new("1.2.0");
    r2.root = edited(&r1.root, 1);
    let mut r3 = Release::new("1.3.0");
    r3.root = edited(&r2.root, 2);
    let steps =
        "[migrations]\n\"(1.0.0, 1.1.0)\" = []\n\"(1.1.0, 1.2.0)\" = []\n\"(1.2.0, 1.3.0)\" = []\n";
    for r in [&r1, &r2, &r3] {
        let build = build_output(w, r);
        std::fs::write(
            build.join("Release.toml"),
            format!("version = \"{}\"\n{steps}", r.version),
        )
        .unwrap();
    }

    // Keys, root and release 1.1.0, as "Publishing a release" does it; a host takes 1.1.0 whole.
    run_block(w, &publishing[0]);
    let mut host = host_on_first_release(w, &r1);

    run_block(w, index_once);
    let mut set = SetId::A;
    for (release, from, blocks_from) in [(&r2, "1.1.0", 1), (&r3, "1.2.0", 2)] {
        let block = per_release.replace("1.2.0", &release.version.to_string());
        let out = run_block(w, &block);
        assert!(out.contains("repo: no problems found"), "{out}");
        let made = out
            .lines()
            .filter(|l| l.starts_with("root patch from ") && !l.contains("not made"))
            .count();
        assert_eq!(
            made, blocks_from,
            "patches against the earlier releases:\n{out}"
        );

        // check-update shows the patch from the running release before anything is written.
        let out = host.updog(&["check-update", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let plan = &check["delta_plan"]["images"][0];
        assert_eq!(plan["image"], "root", "{check}");
        assert_eq!(plan["patch"]["from"], from, "{check}");

        let before = host.server.requests().len();
        let out = host.updog(&["update"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_set_holds(&host, set, release);
        let asked: Vec<String> = host.server.requests()[before..]
            .iter()
            .map(|r| r.path.clone())
            .collect();
        let stem = format!("demo-variant-x86_64-{}-root", release.version);
        let full = host.repo.target_url_paths(&format!("{stem}.ext4.lz4"));
        let patch = host
            .repo
            .target_url_paths(&format!("{stem}.from-{from}.patch"));
        assert!(!full.is_empty() && !patch.is_empty());
        assert!(
            !asked.iter().any(|p| full.contains(p)),
            "the full root image was downloaded: {asked:?}"
        );
        assert!(
            asked.iter().any(|p| patch.contains(p)),
            "the patch from {from} was not fetched: {asked:?}"
        );
        boot_into(&mut host, set, &release.version.to_string());
        set = set.other();
    }
}
