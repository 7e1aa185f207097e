//! The README's "Publishing a release", run exactly as written: every ```sh block of that
//! section, in order, in an empty directory holding only what an OS build produces, with the
//! real `updata`. After each block a simulated host (a GPT disk image, updog over HTTP on
//! 127.0.0.1, trusting the first root only) updates from the result: release 1.1.0, a
//! timestamp refresh, a root rotation it follows, and release 1.2.0 with a migration.

use std::path::{Path, PathBuf};
use std::process::Command;

use bootpart::SetId;
use e2e_tests::{Host, Published, Release, bin_dir, describe, lz4};
use fixtures::disk::{DiskImageBuilder, PartKind};

/// The README's "Publishing a release" section.
fn readme_section() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme
        .find("\n## Publishing a release\n")
        .expect("README has a section \"Publishing a release\"");
    let rest = &readme[start + 1..];
    rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)].to_string()
}

/// The ```sh blocks of the README's "Publishing a release" section.
fn readme_blocks() -> Vec<String> {
    let section = readme_section();
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
    assert_set_holds(&host, SetId::B, &r1);
    boot_into(&mut host, SetId::B, "1.1.0");

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
