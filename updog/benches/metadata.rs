//! Metadata refresh plus update selection on a large repository: `updog::tuf` against `tough`'s
//! own `RepositoryLoader`, same repository, same manifest parsing and selection afterwards.
//!
//! Run: `cargo bench -p updog --bench metadata`. The repository (20,000 targets in
//! `targets.json`, a `manifest.json` target with 2,000 updates, signed with the committed test
//! keys) is generated once under `target/bench-data/repo-20k/`. Each load runs in a child
//! process, from `file://`, with an empty trusted-metadata directory; the child prints its wall
//! time and `VmHWM`. Median of 5 runs each.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use fixtures::repo::{KeyKind, TestRepo};

mod common;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TARGETS: usize = 20_000;
const UPDATES: usize = 2_000;
const RUNS: usize = 5;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("bench-data"), |t| t.join("bench-data"))
}

fn manifest_json() -> Vec<u8> {
    let mut updates = Vec::with_capacity(UPDATES);
    for i in 0..UPDATES {
        let variant = format!("aws-k8s-1.{}", 20 + i % 10);
        let version = format!("1.{}.{}", i / 100, i % 100);
        updates.push(serde_json::json!({
            "variant": variant,
            "arch": "x86_64",
            "version": version,
            "max_version": "9.0.0",
            "waves": {"512": "2020-01-01T00:00:00Z", "2048": "2020-01-08T00:00:00Z"},
            "images": {
                "boot": format!("{variant}-x86_64-{version}-boot.ext4.lz4"),
                "root": format!("{variant}-x86_64-{version}-root.ext4.lz4"),
                "hash": format!("{variant}-x86_64-{version}-root.verity.lz4"),
            }
        }));
    }
    serde_json::to_vec(&serde_json::json!({"updates": updates, "migrations": {}}))
        .unwrap_or_default()
}

/// Generate (once) the repository; returns its directory.
fn ensure_repo() -> Res<PathBuf> {
    let dir = data_dir().join("repo-20k");
    if dir.join("metadata/timestamp.json").exists() && dir.join("root.json").exists() {
        return Ok(dir);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    eprintln!(
        "bench: generating a {TARGETS}-target repository in {}",
        dir.display()
    );
    let mut repo = TestRepo::in_dir(&dir, KeyKind::Ed25519);
    repo.add_target("manifest.json", &manifest_json());
    for i in 1..TARGETS {
        repo.add_target(
            &format!("target-{i:05}.lz4"),
            format!("target {i}").as_bytes(),
        );
    }
    repo.publish();
    repo.write_root(1, &dir.join("root.json"));
    Ok(dir)
}

fn request() -> Res<manifest::select::SelectionRequest> {
    Ok(manifest::select::SelectionRequest {
        variant: "aws-k8s-1.25".into(),
        arch: "x86_64".into(),
        running_version: semver::Version::new(1, 0, 5),
        seed: waves::Seed::new(1000)?,
        now: chrono::Utc::now(),
        version_lock: manifest::select::VersionLock::Latest,
        ignore_waves: false,
        wave_timing: waves::WaveTiming::Offset,
        force_version: None,
        failed_versions: vec![],
    })
}

fn select(bytes: &[u8]) -> Res<String> {
    let m = manifest::Manifest::from_slice(bytes)?;
    let req = request()?;
    Ok(match manifest::select::select_update(&m, &req) {
        manifest::select::Selection::Update(u) => u.version.to_string(),
        manifest::select::Selection::NoUpdate(r) => format!("{r:?}"),
    })
}

fn dir_url(p: &Path) -> Res<url::Url> {
    let mut s = url::Url::from_directory_path(fs::canonicalize(p)?)
        .map_err(|()| "url")?
        .to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(url::Url::parse(&s)?)
}

fn child(which: &str, repo: &Path) -> Res<()> {
    let datastore = tempfile::tempdir()?;
    let md = dir_url(&repo.join("metadata"))?;
    let td = dir_url(&repo.join("targets"))?;
    let start = Instant::now();
    let picked = match which {
        "ours" => {
            let mut opts = updog::tuf::RepositoryOptions::new(md, td, datastore.path().into());
            opts.trusted_root = repo.join("root.json");
            let r = updog::tuf::Repository::load(opts, Arc::new(updog::transport::FileTransport))?;
            let mut reader = r.read_target("manifest.json")?;
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            reader.finish()?;
            select(&bytes)?
        }
        "tough" => {
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            let root = fs::read(repo.join("root.json"))?;
            let bytes = rt.block_on(async {
                let r = tough::RepositoryLoader::new(&root, md, td)
                    .transport(tough::FilesystemTransport)
                    .datastore(datastore.path())
                    .load()
                    .await?;
                let name = tough::TargetName::new("manifest.json")?;
                let stream = r.read_target(&name).await?.ok_or("manifest.json missing")?;
                Ok::<_, Box<dyn std::error::Error>>(tough::IntoVec::into_vec(stream).await?)
            })?;
            select(&bytes)?
        }
        other => return Err(format!("unknown child {other}").into()),
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let status = fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("0 kB")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_string();
    println!("ms={ms:.1} hwm_kib={hwm} picked={picked}");
    Ok(())
}

fn run_child(which: &str, repo: &Path) -> Res<(f64, u64, String)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--child", which])
        .arg(repo)
        .output()?;
    if !out.status.success() {
        return Err(format!("{which}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    Ok((
        field("ms=").parse()?,
        field("hwm_kib=").parse()?,
        field("picked="),
    ))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !common::should_run(&args, "metadata") {
        return Ok(());
    }
    if let [flag, which, repo] = args.as_slice() {
        if flag == "--child" {
            return child(which, Path::new(repo));
        }
    }
    let repo = ensure_repo()?;
    let size = fs::metadata(repo.join("metadata/targets.json"))?.len();
    eprintln!(
        "bench: targets.json {} KiB, loadavg {}",
        size >> 10,
        fs::read_to_string("/proc/loadavg")?.trim()
    );
    let mut json = serde_json::Map::new();
    println!("| client | ms (median of {RUNS}) | peak RSS MiB (median) | picked |");
    println!("|---|---:|---:|---|");
    for which in ["ours", "tough"] {
        let mut runs = (0..RUNS)
            .map(|_| run_child(which, &repo))
            .collect::<Res<Vec<_>>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ms = runs[RUNS / 2].0;
        let mut rss: Vec<u64> = runs.iter().map(|r| r.1).collect();
        rss.sort_unstable();
        let rss = rss[RUNS / 2];
        println!(
            "| {which} | {ms:.1} | {:.1} | {} |",
            rss as f64 / 1024.0,
            runs[0].2
        );
        json.insert(
            which.into(),
            serde_json::json!({"ms_median": ms, "peak_rss_kib_median": rss, "picked": runs[0].2,
                "all_ms": runs.iter().map(|r| r.0).collect::<Vec<_>>()}),
        );
    }
    json.insert("targets_json_bytes".into(), size.into());
    let out = data_dir().join("metadata.json");
    fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    println!("JSON written to {}", out.display());
    Ok(())
}
