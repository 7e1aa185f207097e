//! What the host-side benches (`delta`, `debian_pair`) share: child processes that stage an
//! image and report their wall time, bytes and peak RSS (VmHWM) as one JSON line, and small
//! helpers. Included with `#[path]` by the benches that use it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use updog::pipeline::{IoMode, PartitionSink, StageOptions, TargetInfo, stage_image};
use updog::transport::{HttpOptions, HttpTransport, Transport};

use crate::Res;

pub fn run_cmd(cmd: &mut Command) -> Res<()> {
    let st = cmd.status()?;
    if !st.success() {
        return Err(format!("{cmd:?} failed: {st}").into());
    }
    Ok(())
}

/// What a child reports.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    /// Wall time.
    pub secs: f64,
    /// Bytes downloaded.
    pub downloaded: u64,
    /// Peak RSS (VmHWM).
    pub rss_kib: u64,
    /// Whatever else the child reports.
    pub extra: serde_json::Value,
}

pub fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds this process used so far, user and system, all threads (`/proc/self/stat`,
/// in the kernel's 100 Hz user ticks).
pub fn cpu_secs() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub fn report(m: &Measured) {
    let mut extra = m.extra.clone();
    if !extra.is_object() {
        extra = serde_json::json!({});
    }
    extra["cpu_secs"] = serde_json::json!(cpu_secs());
    println!(
        "{}",
        serde_json::json!({"secs": m.secs, "downloaded": m.downloaded, "rss_kib": peak_rss_kib(), "extra": extra})
    );
}

pub fn root_b(disk: &Path) -> Res<bootpart::Partition> {
    let d = bootpart::Disk::open(disk)?;
    Ok(d.layout().set(bootpart::SetId::B)?.root.clone())
}

pub fn child_full(a: &[String]) -> Res<()> {
    let [url, length, sha, disk] = a else {
        return Err("usage: --child-full URL LENGTH SHA256 DISK".into());
    };
    let expected = TargetInfo::from_hex(length.parse()?, sha).ok_or("bad sha256")?;
    let part = root_b(Path::new(disk))?;
    let mut sink = PartitionSink::open_path(Path::new(disk), &part, IoMode::Auto)?;
    let transport = HttpTransport::new(HttpOptions::default())?;
    let t = Instant::now();
    let source = transport.fetch(&url::Url::parse(url)?)?;
    stage_image(
        source,
        &expected,
        &mut sink,
        &StageOptions::default(),
        &|_| {},
    )?;
    report(&Measured {
        secs: t.elapsed().as_secs_f64(),
        downloaded: expected.length,
        ..Measured::default()
    });
    Ok(())
}

/// The run with the median wall time, with the highest peak RSS of all the runs.
pub fn median(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let rss = runs.iter().map(|m| m.rss_kib).max().unwrap_or(0);
    let mut m = runs.swap_remove(runs.len() / 2);
    m.rss_kib = rss;
    m
}

pub fn child(args: &[String]) -> Res<Measured> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    if !out.status.success() {
        return Err(format!("child {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("child printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    Ok(Measured {
        secs: v["secs"].as_f64().unwrap_or(0.0),
        downloaded: v["downloaded"].as_u64().unwrap_or(0),
        rss_kib: v["rss_kib"].as_u64().unwrap_or(0),
        extra: v["extra"].clone(),
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}
