//! Fleet simulation: what share of a fleet may update over time under a schedule, as data, as a
//! text table and as an SVG chart.
//!
//! A [`Fleet`] is a count of hosts per seed (so its size does not drive memory: a fleet of a
//! billion hosts is 2048 counters).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use waves::sim::{Fleet, simulate_schedule};
//!
//! let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
//! let schedule = waves::WavePolicy::default_policy().to_schedule(start)?;
//! let points = simulate_schedule(&schedule, &Fleet::uniform(10_000), 50)?;
//! assert_eq!(points.last().unwrap().eligible, 10_000);
//! let table = waves::sim::render_table(&points);
//! let svg = waves::sim::render_svg(&points, &schedule, "default waves");
//! assert!(svg.starts_with("<svg"));
//! # Ok::<(), waves::Error>(())
//! ```

use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};

use crate::time::format_time;
use crate::{Error, SEED_COUNT, Seed, WaveSchedule};

/// The most points a simulation computes.
pub const MAX_STEPS: usize = 10_000;

/// How many hosts carry each seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    counts: Vec<u64>,
}

impl Fleet {
    /// `hosts` hosts with seeds spread evenly over `0..=2047` (host `i` has seed
    /// `floor(i * 2048 / hosts)`), the expected shape of randomly chosen seeds.
    pub fn uniform(hosts: u64) -> Fleet {
        let n = u128::from(hosts);
        let seeds = u128::from(SEED_COUNT);
        // Hosts with seed s are those i with s*n/2048 <= i < (s+1)*n/2048 (ceilings).
        let first = |s: u128| (s * n).div_ceil(seeds);
        let counts = (0..seeds)
            .map(|s| u64::try_from(first(s + 1) - first(s)).unwrap_or(u64::MAX))
            .collect();
        Fleet { counts }
    }

    /// A fleet with exactly these seeds.
    pub fn from_seeds(seeds: impl IntoIterator<Item = Seed>) -> Fleet {
        let mut counts = vec![0_u64; SEED_COUNT as usize];
        for s in seeds {
            if let Some(c) = counts.get_mut(s.get() as usize) {
                *c = c.saturating_add(1);
            }
        }
        Fleet { counts }
    }

    /// The number of hosts.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0_u64, |a, &c| a.saturating_add(c))
    }

    /// The number of hosts with this seed.
    pub fn count(&self, seed: Seed) -> u64 {
        self.counts.get(seed.get() as usize).copied().unwrap_or(0)
    }
}

/// How a seed's eligibility time is computed (the same choice as `updog.toml`'s `wave_timing`).
pub use crate::schedule::WaveTiming as Formula;

/// The state of the fleet at one instant.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FleetPoint {
    /// The instant.
    pub at: DateTime<Utc>,
    /// How many hosts may update at `at`.
    pub eligible: u64,
    /// The fleet size.
    pub total: u64,
    /// `eligible / total` (1 for an empty fleet).
    pub fraction: f64,
}

/// A window around the schedule that shows all of it: from a little before the first wave to a
/// little after the last (5 % of the span each side, at least an hour). `None` without waves.
pub fn default_window(schedule: &WaveSchedule) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (first, last) = schedule.time_range()?;
    let span = last.signed_duration_since(first);
    let margin = (span / 20).max(TimeDelta::hours(1));
    let from = first.checked_sub_signed(margin).unwrap_or(first);
    let to = last.checked_add_signed(margin).unwrap_or(last);
    Some((from, to))
}

/// [`simulate`] over the [`default_window`] of the schedule (or the next day when it has no
/// waves), with this crate's formula.
pub fn simulate_schedule(
    schedule: &WaveSchedule,
    fleet: &Fleet,
    steps: usize,
) -> Result<Vec<FleetPoint>, Error> {
    let (from, to) = default_window(schedule).unwrap_or_else(|| {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        (now, now + TimeDelta::days(1))
    });
    simulate(schedule, fleet, from, to, steps, Formula::Offset)
}

/// The eligible share of `fleet` at `steps` evenly spaced instants from `from` to `to`
/// (both included). `steps` must be in `2..=MAX_STEPS` and `from < to`.
pub fn simulate(
    schedule: &WaveSchedule,
    fleet: &Fleet,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    steps: usize,
    formula: Formula,
) -> Result<Vec<FleetPoint>, Error> {
    if !(2..=MAX_STEPS).contains(&steps) {
        return Err(Error::Simulation {
            reason: format!("{steps} steps requested; use 2..={MAX_STEPS}"),
        });
    }
    if from >= to {
        return Err(Error::Simulation {
            reason: format!(
                "the window must end after it starts ({} .. {})",
                format_time(from),
                format_time(to)
            ),
        });
    }
    // Eligibility time of each seed with hosts; None = always eligible.
    let mut ready: Vec<(Option<DateTime<Utc>>, u64)> = Seed::all()
        .filter(|&s| fleet.count(s) > 0)
        .map(|s| {
            let at = schedule.ready_at_timing(s, formula);
            (at, fleet.count(s))
        })
        .collect();
    ready.sort_unstable_by_key(|&(at, _)| at);
    let total = fleet.total();
    let span_ms = i128::from(to.signed_duration_since(from).num_milliseconds());
    let last = (steps - 1) as i128;
    let mut points = Vec::with_capacity(steps);
    let mut idx = 0;
    let mut eligible = 0_u64;
    for i in 0..steps {
        let mut offset = span_ms * i as i128 / last;
        // Whole seconds read better, when the steps are that coarse.
        if span_ms >= 1000 * last {
            offset -= offset % 1000;
        }
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let at = if i == steps - 1 {
            to
        } else {
            TimeDelta::try_milliseconds(offset)
                .and_then(|d| from.checked_add_signed(d))
                .unwrap_or(to)
        };
        while let Some(&(ready_at, count)) = ready.get(idx) {
            if ready_at.is_none_or(|r| r <= at) {
                eligible = eligible.saturating_add(count);
                idx += 1;
            } else {
                break;
            }
        }
        let fraction = if total == 0 {
            1.0
        } else {
            eligible as f64 / total as f64
        };
        points.push(FleetPoint {
            at,
            eligible,
            total,
            fraction,
        });
    }
    Ok(points)
}

/// A plain-text table: time, time since the first point, eligible hosts, share of the fleet.
pub fn render_table(points: &[FleetPoint]) -> String {
    let mut out = String::new();
    let origin = points.first().map(|p| p.at);
    let _ = writeln!(
        out,
        "{:<24}  {:>12}  {:>12}  {:>7}",
        "time", "elapsed", "eligible", "fleet"
    );
    for p in points {
        let elapsed = origin.map_or(TimeDelta::zero(), |o| p.at.signed_duration_since(o));
        let _ = writeln!(
            out,
            "{:<24}  {:>12}  {:>12}  {:>6.1}%",
            format_time(p.at),
            format_elapsed(elapsed),
            p.eligible,
            p.fraction * 100.0
        );
    }
    out
}

/// A plain-text table with one "share of the fleet" column per named series, over the first
/// series' instants (the series are expected to share them, as [`simulate`] gives for the same
/// window and steps).
pub fn render_table_series(series: &[(&str, &[FleetPoint])]) -> String {
    let mut out = String::new();
    let points: &[FleetPoint] = series.first().map_or(&[], |(_, p)| p);
    let origin = points.first().map(|p| p.at);
    let _ = write!(out, "{:<24}  {:>12}", "time", "elapsed");
    for (name, _) in series {
        let _ = write!(out, "  {name:>10}");
    }
    out.push('\n');
    for (i, p) in points.iter().enumerate() {
        let elapsed = origin.map_or(TimeDelta::zero(), |o| p.at.signed_duration_since(o));
        let _ = write!(
            out,
            "{:<24}  {:>12}",
            format_time(p.at),
            format_elapsed(elapsed)
        );
        for (_, pts) in series {
            match pts.get(i) {
                Some(q) => {
                    let _ = write!(out, "  {:>9.1}%", q.fraction * 100.0);
                }
                None => {
                    let _ = write!(out, "  {:>10}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

fn format_elapsed(d: TimeDelta) -> String {
    let mins = d.num_minutes();
    let (days, rem) = (mins / (24 * 60), mins % (24 * 60));
    if days > 0 {
        format!("{days}d {:02}h{:02}m", rem / 60, rem % 60)
    } else {
        format!("{:02}h{:02}m", rem / 60, rem % 60)
    }
}

/// An SVG line chart of the eligible share over time, with a dashed line where each wave opens.
pub fn render_svg(points: &[FleetPoint], schedule: &WaveSchedule, title: &str) -> String {
    render_svg_series(&[("", points)], schedule, title)
}

/// Like [`render_svg`] with several named curves over the same instants (the first one's
/// instants set the time axis), with a legend when there is more than one; for example this
/// crate's formula next to the reference's.
pub fn render_svg_series(
    series: &[(&str, &[FleetPoint])],
    schedule: &WaveSchedule,
    title: &str,
) -> String {
    const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let points: &[FleetPoint] = series.first().map_or(&[], |(_, p)| p);
    const W: f64 = 800.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let (from, to) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.at, b.at),
        _ => (DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::UNIX_EPOCH),
    };
    let span = to.signed_duration_since(from).num_milliseconds().max(1) as f64;
    let x_of = |t: DateTime<Utc>| {
        LEFT + plot_w * (t.signed_duration_since(from).num_milliseconds() as f64 / span)
    };
    let y_of = |f: f64| TOP + plot_h * (1.0 - f.clamp(0.0, 1.0));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        xml_escape(title)
    );
    // Axes and horizontal grid.
    for pct in [0, 25, 50, 75, 100] {
        let y = y_of(f64::from(pct) / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{pct}%</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
    }
    // Wave starts.
    for wave in schedule.waves() {
        if wave.start < from || wave.start > to {
            continue;
        }
        let x = x_of(wave.start);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"><title>wave {} opens {}</title></line>"##,
            TOP + plot_h,
            wave.bound,
            format_time(wave.start)
        );
    }
    // The curves, and a legend when there are several.
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or("black");
        let mut path = String::new();
        for p in *pts {
            let _ = write!(path, "{:.1},{:.1} ", x_of(p.at), y_of(p.fraction));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.trim_end()
        );
        if series.len() > 1 {
            let y = TOP + 16.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + 12.0,
                LEFT + 36.0,
                LEFT + 42.0,
                y + 4.0,
                xml_escape(name)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        TOP + plot_h + 20.0,
        format_time(from),
        LEFT + plot_w,
        TOP + plot_h + 20.0,
        format_time(to)
    );
    let total = points.last().map_or(0, |p| p.total);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">share of {total} hosts eligible to update</text>"#,
        W / 2.0,
        H - 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WavePolicy;
    use chrono::TimeZone;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn uniform_fleet_spreads_hosts_evenly() {
        let f = Fleet::uniform(4096);
        assert_eq!(f.total(), 4096);
        assert!(Seed::all().all(|s| f.count(s) == 2));
        let f = Fleet::uniform(3);
        assert_eq!(f.total(), 3);
        assert_eq!(Fleet::uniform(u64::MAX).total(), u64::MAX);
        assert_eq!(Fleet::uniform(0).total(), 0);
        let f = Fleet::from_seeds([Seed::MIN, Seed::MIN, Seed::MAX]);
        assert_eq!(
            (f.count(Seed::MIN), f.count(Seed::MAX), f.total()),
            (2, 1, 3)
        );
    }

    #[test]
    fn default_policy_share_at_each_wave_start() {
        let s = WavePolicy::default_policy().to_schedule(start()).unwrap();
        let fleet = Fleet::uniform(2048);
        // One point per hour for 7 days.
        let to = start() + TimeDelta::days(7);
        let points = simulate(&s, &fleet, start(), to, 7 * 24 + 1, Formula::Offset).unwrap();
        let at = |h: usize| points[h].eligible;
        assert_eq!(at(0), 0);
        assert_eq!(at(1), 1); // seed 0
        assert_eq!(at(4), 21); // seeds 0..=20
        assert_eq!(at(24), 103);
        assert_eq!(at(48), 308);
        assert_eq!(at(96), 820);
        assert_eq!(at(120), 1229);
        // At 6 days every seed is eligible: past the last bound means the last wave's start.
        assert_eq!(at(144), 2048);
        // Never decreasing.
        assert!(points.windows(2).all(|w| w[0].eligible <= w[1].eligible));
        // Halfway through wave 4 (1 d .. 2 d) about half its seeds are in.
        let mid = at(36) - at(24);
        assert!((100..=105).contains(&mid), "{mid}");
        // The reference formula lets nobody from that wave in by then.
        let reference = simulate(&s, &fleet, start(), to, 7 * 24 + 1, Formula::Reference).unwrap();
        assert_eq!(reference[36].eligible, 103);
        assert_eq!(reference[144].eligible, 2048);
    }

    #[test]
    fn bad_requests_are_errors() {
        let s = WavePolicy::default_policy().to_schedule(start()).unwrap();
        let f = Fleet::uniform(10);
        let over_a_day = |steps| {
            simulate(
                &s,
                &f,
                start(),
                start() + TimeDelta::days(1),
                steps,
                Formula::Offset,
            )
        };
        assert!(simulate(&s, &f, start(), start(), 10, Formula::Offset).is_err());
        assert!(over_a_day(1).is_err());
        assert!(over_a_day(MAX_STEPS + 1).is_err());
        assert!(over_a_day(MAX_STEPS).is_ok());
        // Extreme windows do not panic.
        let p = simulate(
            &s,
            &f,
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            MAX_STEPS,
            Formula::Offset,
        )
        .unwrap();
        assert_eq!(p.last().unwrap().eligible, 10);
    }

    #[test]
    fn empty_schedule_means_everyone_at_once() {
        let p = simulate_schedule(&WaveSchedule::new(), &Fleet::uniform(7), 3).unwrap();
        assert!(p.iter().all(|p| p.eligible == 7));
        let p = simulate_schedule(&WaveSchedule::new(), &Fleet::uniform(0), 3).unwrap();
        assert!(p.iter().all(|p| (p.fraction - 1.0).abs() < f64::EPSILON));
    }

    #[test]
    fn renderings_carry_the_data() {
        let s = WavePolicy::default_policy().to_schedule(start()).unwrap();
        let points = simulate_schedule(&s, &Fleet::uniform(1000), 20).unwrap();
        let table = render_table(&points);
        assert_eq!(table.lines().count(), 21);
        assert!(table.lines().last().unwrap().ends_with("100.0%"), "{table}");
        let svg = render_svg(&points, &s, "a <title> & more");
        assert!(svg.contains("a &lt;title&gt; &amp; more"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 7);
        assert!(svg.contains("share of 1000 hosts"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        let reference = simulate(
            &s,
            &Fleet::uniform(1000),
            points[0].at,
            points[19].at,
            20,
            Formula::Reference,
        )
        .unwrap();
        let both = render_svg_series(&[("offset", &points), ("reference", &reference)], &s, "t");
        assert_eq!(both.matches("<polyline").count(), 2);
        assert!(both.contains(">reference</text>"));
        let table = render_table_series(&[("offset", &points), ("reference", &reference)]);
        assert_eq!(table.lines().count(), 21);
        assert!(
            table.lines().next().unwrap().ends_with(" reference"),
            "{table}"
        );
        let json = serde_json::to_value(points[0]).unwrap();
        assert!(json["at"].is_string() && json["fraction"].is_number());
    }
}
