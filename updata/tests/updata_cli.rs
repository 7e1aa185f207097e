//! The real `updata` binary on temporary files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use manifest::Manifest;
use semver::Version;
use tempfile::TempDir;

fn updata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_updata"))
        .args(args)
        .output()
        .expect("run updata")
}

fn ok(args: &[&str]) -> String {
    let out = updata(args);
    assert!(
        out.status.success(),
        "updata {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs updata expecting failure; returns stdout + stderr.
fn fails(args: &[&str]) -> String {
    let out = updata(args);
    assert!(!out.status.success(), "updata {args:?} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Repo {
    dir: TempDir,
    path: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        ok(&["init", p(&path)]);
        Repo { dir, path }
    }
    fn m(&self) -> &str {
        p(&self.path)
    }
    fn load(&self) -> Manifest {
        manifest::fs::load(&self.path).unwrap()
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
    /// `SUBCOMMAND MANIFEST --variant dev --arch x86_64 --version VERSION EXTRA...`.
    fn on<'a>(&'a self, sub: &'a str, version: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            sub,
            self.m(),
            "--variant",
            "dev",
            "--arch",
            "x86_64",
            "--version",
            version,
        ];
        args.extend_from_slice(extra);
        args
    }
    fn add(&self, version: &str, extra: &[&str]) {
        ok(&self.on("add-update", version, extra));
    }
    /// Only the manifest (and files the test made) in the directory: no temp files left.
    fn assert_no_leftovers(&self) {
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with(".updata-"), "leftover {name}");
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

#[test]
fn init_creates_an_empty_manifest_and_refuses_to_overwrite() {
    let r = Repo::new();
    assert_eq!(r.load(), Manifest::default());
    let json: serde_json::Value = serde_json::from_slice(&r.bytes()).unwrap();
    assert_eq!(json, serde_json::json!({"updates": [], "migrations": {}}));
    r.add("1.0.0", &[]);
    let before = r.bytes();
    let err = fails(&["init", r.m()]);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(r.bytes(), before);
    ok(&["init", r.m(), "--force"]);
    assert_eq!(r.load(), Manifest::default());
}

#[test]
fn add_update_sets_images_and_max_version() {
    let r = Repo::new();
    r.add("1.0.0", &[]);
    r.add(
        "1.1.0",
        &["--boot", "b.lz4", "--root", "r.lz4", "--hash", "h.lz4"],
    );
    let m = r.load();
    assert_eq!(m.updates.len(), 2);
    assert_eq!(m.updates[0].images.boot, "dev-x86_64-1.0.0-boot.ext4.lz4");
    assert_eq!(m.updates[1].images.hash, "h.lz4");
    // Adding 1.1.0 raised max_version of 1.0.0 too, so both are offered.
    assert!(m.updates.iter().all(|u| u.max_version == v("1.1.0")));
    assert!(m.validate().is_ok());

    // A duplicate is refused and leaves the file untouched; --replace replaces it.
    let before = r.bytes();
    let err = fails(&r.on("add-update", "1.1.0", &[]));
    assert!(
        err.contains("already has an update for dev x86_64 1.1.0"),
        "{err}"
    );
    assert_eq!(r.bytes(), before);
    r.add("1.1.0", &["--replace", "--boot", "new.lz4"]);
    let m = r.load();
    assert_eq!(m.updates.len(), 2);
    assert_eq!(m.updates[1].images.boot, "new.lz4");

    // An explicit lower max_version pulls 1.1.0 back.
    r.add("1.2.0", &["--max-version", "1.0.0"]);
    assert!(r.load().updates.iter().all(|u| u.max_version == v("1.0.0")));
    r.assert_no_leftovers();
}

#[test]
fn remove_update_removes_only_that_one() {
    let r = Repo::new();
    r.add("1.0.0", &[]);
    r.add("1.1.0", &[]);
    ok(&r.on("remove-update", "1.0.0", &[]));
    let versions: Vec<String> = r
        .load()
        .updates
        .iter()
        .map(|u| u.version.to_string())
        .collect();
    assert_eq!(versions, ["1.1.0"]);
    let err = fails(&r.on("remove-update", "1.0.0", &[]));
    assert!(err.contains("no update for dev x86_64 1.0.0"), "{err}");
}

#[test]
fn set_waves_from_policy_file_default_and_clear() {
    let r = Repo::new();
    r.add("1.0.0", &[]);
    let policy = r.file(
        "waves.toml",
        "[[waves]]\nstart_after = \"in 2 hours\"\nfleet_percentage = 25\n\n\
         [[waves]]\nstart_after = \"2026-12-03T00:00:00Z\"\nfleet_percentage = 100\n",
    );
    ok(&r.on(
        "set-waves",
        "1.0.0",
        &["--policy", p(&policy), "--start-at", "2026-12-01T00:00:00Z"],
    ));
    let w = &r.load().updates[0].waves;
    let got: Vec<(u32, String)> = w
        .waves()
        .map(|w| (w.bound, waves::time::format_time(w.start)))
        .collect();
    assert_eq!(
        got,
        [
            (0, "2026-12-01T02:00:00Z".to_owned()),
            (512, "2026-12-03T00:00:00Z".to_owned())
        ]
    );

    // A bad policy names the wave and leaves the manifest untouched.
    let bad = r.file(
        "bad.toml",
        "[[waves]]\nstart_after = \"1 hour\"\nfleet_percentage = 50\n\n\
         [[waves]]\nstart_after = \"2 hours\"\nfleet_percentage = 40\n",
    );
    let before = r.bytes();
    let err = fails(&r.on("set-waves", "1.0.0", &["--policy", p(&bad)]));
    assert!(err.contains("wave 2: fleet_percentage 40"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert_eq!(r.bytes(), before);

    ok(&r.on(
        "set-waves",
        "1.0.0",
        &["--default-waves", "--start-at", "2026-12-01T00:00:00Z"],
    ));
    let bounds: Vec<u32> = r.load().updates[0].waves.waves().map(|w| w.bound).collect();
    assert_eq!(bounds, [0, 20, 102, 307, 819, 1228, 1843]);

    ok(&r.on("set-waves", "1.0.0", &["--clear"]));
    assert!(r.load().updates[0].waves.is_empty());

    // Neither a policy nor --clear: an error, not a silent no-op.
    assert!(fails(&r.on("set-waves", "1.0.0", &[])).contains("--default-waves"));
    r.assert_no_leftovers();
}

#[test]
fn set_migrations_from_release_toml() {
    let r = Repo::new();
    let release = r.file(
        "Release.toml",
        "version = \"1.2.0\"\n\n[migrations]\n\"(1.0.0, 1.1.0)\" = [\"migrate_a.lz4\", \"migrate_b.lz4\"]\n\
         \"(1.1.0,1.2.0)\" = []\n",
    );
    ok(&["set-migrations", r.m(), "--release", p(&release)]);
    let m = r.load();
    assert_eq!(m.migrations.len(), 2);
    assert_eq!(
        m.migration_targets(&v("1.0.0"), &v("1.2.0")).unwrap(),
        ["migrate_a.lz4", "migrate_b.lz4"]
    );
    // Written back as "(X, Y)".
    let text = String::from_utf8(r.bytes()).unwrap();
    assert!(text.contains("\"(1.1.0, 1.2.0)\": []"), "{text}");

    let more = r.file(
        "More.toml",
        "[migrations]\n\"(1.2.0, 1.3.0)\" = [\"c.lz4\"]\n",
    );
    ok(&["set-migrations", r.m(), "--release", p(&more), "--merge"]);
    assert_eq!(r.load().migrations.len(), 3);
    ok(&["set-migrations", r.m(), "--release", p(&more)]);
    assert_eq!(r.load().migrations.len(), 1);

    let bad = r.file("Bad.toml", "[migrations]\n\"1.2.0 to 1.3.0\" = []\n");
    let before = r.bytes();
    let err = fails(&["set-migrations", r.m(), "--release", p(&bad)]);
    assert!(err.contains("\"1.2.0 to 1.3.0\""), "{err}");
    assert_eq!(r.bytes(), before);
    let none = r.file("None.toml", "version = \"1.0.0\"\n");
    assert!(fails(&["set-migrations", r.m(), "--release", p(&none)]).contains("no [migrations]"));
}

#[test]
fn set_max_version_filters() {
    let r = Repo::new();
    r.add("1.0.0", &[]);
    r.add("1.1.0", &[]);
    ok(&[
        "add-update",
        r.m(),
        "--variant",
        "other",
        "--arch",
        "x86_64",
        "--version",
        "2.0.0",
    ]);
    let out = ok(&[
        "set-max-version",
        r.m(),
        "--max-version",
        "1.0.0",
        "--variant",
        "dev",
    ]);
    assert!(out.contains("on 2 update(s)"), "{out}");
    let m = r.load();
    let maxes: Vec<String> = m
        .updates
        .iter()
        .map(|u| u.max_version.to_string())
        .collect();
    assert_eq!(maxes, ["1.0.0", "1.0.0", "2.0.0"]);
    // No migration key joins dev 1.0.0 and 1.1.0: hosts running 1.0.0 would refuse 1.1.0
    // ("no migration path"), so validate says so, with the key to add, and fails.
    let gap = fails(&["validate", r.m()]);
    assert!(
        gap.contains("hosts running 1.0.0 refuse update dev x86_64 1.1.0")
            && gap.contains("\"(1.0.0, 1.1.0)\" = []"),
        "{gap}"
    );
    let release = r.file("Gap.toml", "[migrations]\n\"(1.0.0, 1.1.0)\" = []\n");
    ok(&["set-migrations", r.m(), "--release", p(&release)]);
    // 1.1.0 is now above its max_version: a pulled-back release, which validate notes
    // (exit 0) rather than refuses.
    let report = ok(&["validate", r.m()]);
    assert!(
        report.contains("note: update dev x86_64 1.1.0 is above its max_version 1.0.0"),
        "{report}"
    );
    assert!(report.contains("valid (3 update(s)"), "{report}");
    ok(&["set-max-version", r.m(), "--max-version", "3.0.0"]);
    assert!(ok(&["validate", r.m()]).contains("valid (3 update(s)"));
}

#[test]
fn validate_lists_every_problem_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(
        &path,
        r#"{"updates":[
          {"variant":"a","arch":"x","version":"2.0.0","max_version":"1.0.0",
           "waves":{"0":"2026-1-2T00:00:00Z","9":"2026-01-01T00:00:00Z"},
           "images":{"boot":"","root":"r","hash":"h"}},
          {"variant":"a","arch":"x","version":"2.0.0","max_version":"2.0.0",
           "images":{"boot":"b","root":"r","hash":"h"}}],
          "migrations":{}, "legacy_field": true}"#,
    )
    .unwrap();
    let report = fails(&["validate", p(&path)]);
    assert!(report.contains("3 problem(s)"), "{report}");
    assert!(
        report.contains("note: update a x 2.0.0 is above"),
        "{report}"
    );
    for needle in [
        "above its max_version",
        "wave 9 starts",
        "boot image name is empty",
        "more than once",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    std::fs::write(
        &path,
        r#"{"updates":[{"variant":"a","arch":"x","version":"2.0.0","max_version":"2.0.0",
           "waves":{"12":"2026-01-01T00:00:00Z","12":"2026-01-02T00:00:00Z"},
           "images":{"boot":"b","root":"r","hash":"h"}}]}"#,
    )
    .unwrap();
    let err = fails(&["validate", p(&path)]);
    assert!(err.contains("duplicate wave key \"12\""), "{err}");
    let err = fails(&["validate", p(&dir.path().join("missing.json"))]);
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn waves_shows_schedule_seed_json_and_svg() {
    let r = Repo::new();
    r.add(
        "1.0.0",
        &["--default-waves", "--start-at", "2026-12-01T00:00:00Z"],
    );
    let text = ok(&r.on("waves", "1.0.0", &["--seed", "61"]));
    assert!(text.contains("7 wave(s)"), "{text}");
    // Seed 61 is 41 of the 82 seeds into the 4 h .. 1 d wave: 10 hours in.
    assert!(
        text.contains("seed 61: eligible at 2026-12-01T14:00:00Z"),
        "{text}"
    );
    assert!(text.contains("fleet of 10000 host(s)"), "{text}");

    let svg = r.dir.path().join("chart.svg");
    let args = r.on(
        "waves",
        "1.0.0",
        &[
            "--seed",
            "2047",
            "--json",
            "--svg",
            p(&svg),
            "--hosts",
            "100",
            "--steps",
            "10",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(json["seed"]["ready_at"], "2026-12-07T00:00:00Z");
    assert_eq!(json["waves"].as_array().unwrap().len(), 7);
    let fleet = json["fleet"].as_array().unwrap();
    assert_eq!(fleet.len(), 10);
    assert_eq!(fleet[9]["eligible"], 100);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("dev x86_64 1.0.0"),
        "{chart}"
    );

    // Side by side with the reference formula: one day into the rollout, the reference has
    // let nobody from the 4 h .. 1 d wave in before 4 h + 5 h, so it trails.
    let args = r.on(
        "waves",
        "1.0.0",
        &[
            "--compare-reference",
            "--json",
            "--hosts",
            "2048",
            "--steps",
            "200",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let ours = json["fleet"].as_array().unwrap();
    let theirs = json["fleet_reference"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    // (The one host with seed 0 is in the reference's "initial" wave, let in at once, before
    // the first wave opens; apart from it, ours is never behind.)
    assert!(
        ours.iter().zip(theirs).all(|(a, b)| {
            a["eligible"].as_u64().unwrap() + 1 >= b["eligible"].as_u64().unwrap()
        })
    );
    assert!(
        ours.iter()
            .zip(theirs)
            .any(|(a, b)| a["eligible"].as_u64() > b["eligible"].as_u64())
    );
    let args = r.on("waves", "1.0.0", &["--compare-reference", "--steps", "5"]);
    assert!(ok(&args).contains("this crate   reference"));

    assert!(
        fails(&r.on("waves", "1.0.0", &["--seed", "2048"])).contains("seed 2048 is out of range")
    );
    assert!(fails(&r.on("waves", "9.9.9", &[])).contains("no update for dev x86_64 9.9.9"));
}

#[test]
fn writes_keep_permissions_and_leave_no_temp_files() {
    use std::os::unix::fs::PermissionsExt;
    let r = Repo::new();
    let mode = std::fs::metadata(&r.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o600, 0o600);
    std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o640)).unwrap();
    r.add("1.0.0", &[]);
    let mode = std::fs::metadata(&r.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    r.assert_no_leftovers();
}

#[test]
fn writes_through_a_symlink_replace_its_target() {
    let r = Repo::new();
    let link = r.dir.path().join("link.json");
    std::os::unix::fs::symlink(&r.path, &link).unwrap();
    ok(&[
        "add-update",
        p(&link),
        "--variant",
        "dev",
        "--arch",
        "x86_64",
        "--version",
        "1.0.0",
    ]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(r.load().updates.len(), 1);
}

#[test]
fn every_subcommand_explains_itself() {
    let top = ok(&["--help"]);
    for sub in [
        "init",
        "add-update",
        "remove-update",
        "set-waves",
        "set-migrations",
        "set-max-version",
        "validate",
        "waves",
    ] {
        assert!(top.contains(sub), "{sub} missing from --help");
        let help = ok(&[sub, "--help"]);
        assert!(help.contains("Usage: updata"), "{sub}: {help}");
        assert!(
            help.lines().next().is_some_and(|l| l.len() > 15),
            "{sub}: {help}"
        );
    }
    assert!(ok(&["set-waves", "--help"]).contains("fleet_percentage"));
    // Bad arguments are usage errors.
    let out = updata(&[
        "add-update",
        "m.json",
        "--variant",
        "a",
        "--arch",
        "b",
        "--version",
        "1.0",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_reference_flags_work() {
    let r = Repo::new();
    // add-update with the reference's short flags; -h is the hash image.
    ok(&[
        "add-update",
        r.m(),
        "-f",
        "aws-dev",
        "-v",
        "1.1.0",
        "-a",
        "x86_64",
        "-m",
        "1.2.0",
        "-r",
        "r.lz4",
        "-b",
        "b.lz4",
        "-h",
        "h.lz4",
    ]);
    let m = r.load();
    let u = &m.updates[0];
    assert_eq!(
        (u.variant.as_str(), u.arch.as_str(), u.version.to_string()),
        ("aws-dev", "x86_64", "1.1.0".to_owned())
    );
    assert_eq!(u.max_version, v("1.2.0"));
    assert_eq!(
        (
            u.images.boot.as_str(),
            u.images.root.as_str(),
            u.images.hash.as_str()
        ),
        ("b.lz4", "r.lz4", "h.lz4")
    );
    // --help still helps on add-update.
    assert!(ok(&["add-update", "--help"]).contains("hash (verity) image"));
    // set-waves -l -v -a -w --start-at.
    let waves = r.file(
        "waves.toml",
        "[[waves]]\nstart_after = \"1 hour\"\nfleet_percentage = 5\n\n\
         [[waves]]\nstart_after = \"1 day\"\nfleet_percentage = 100\n",
    );
    ok(&[
        "set-waves",
        r.m(),
        "-l",
        "aws-dev",
        "-v",
        "1.1.0",
        "-a",
        "x86_64",
        "-w",
        p(&waves),
        "--start-at",
        "2030-01-01T00:00:00Z",
    ]);
    let m = r.load();
    let starts: Vec<String> = m.updates[0]
        .waves
        .waves()
        .map(|w| waves::time::format_time(w.start))
        .collect();
    assert_eq!(starts, ["2030-01-01T01:00:00Z", "2030-01-02T00:00:00Z"]);
    // set-migrations -f RELEASE_TOML -t MANIFEST.
    let release = r.file(
        "Release.toml",
        "version = \"1.1.0\"\n[migrations]\n\"(1.0.0, 1.1.0)\" = [\"migrate_a.lz4\"]\n",
    );
    ok(&["set-migrations", "-f", p(&release), "-t", r.m()]);
    assert_eq!(r.load().migrations.len(), 1);
    // set-max-version -v.
    ok(&["set-max-version", r.m(), "-v", "1.0.0"]);
    assert_eq!(r.load().updates[0].max_version, v("1.0.0"));
    // remove-update -l -v -a.
    ok(&[
        "remove-update",
        r.m(),
        "-l",
        "aws-dev",
        "-v",
        "1.1.0",
        "-a",
        "x86_64",
    ]);
    assert!(r.load().updates.is_empty());
    // set-migrations needs a manifest one way or the other.
    let out = updata(&["set-migrations", "-f", p(&release)]);
    assert_eq!(out.status.code(), Some(2));
}
