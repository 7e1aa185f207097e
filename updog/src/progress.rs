//! Progress of an update, as typed events for an embedding agent, and two renderings for the
//! CLI: a bar on a terminal and JSON lines (`--progress json`).
//!
//! Every JSON line carries `"v": 1`, the version of this protocol; fields may be added within a
//! version, never removed or renamed.
//! Events may be added too (the enum is `#[non_exhaustive]`). A staging run ends with exactly
//! one `done` (what is staged where, or why nothing was) or `error` (the message): on the
//! callback of [`crate::updater::Updater::stage`] and `stage_plan`, and as the last line of
//! `updog update`/`update-image --progress json`.
//!
//! ```
//! use updog::progress::{ImageKind, ProgressEvent};
//! let event = ProgressEvent::Image {
//!     image: ImageKind::Root,
//!     target: "os-root.ext4.lz4".to_string(),
//!     done: 512,
//!     total: 1024,
//!     update_done: 512,
//!     update_total: 4096,
//! };
//! let line = updog::progress::json_line(&event);
//! assert!(line.starts_with(r#"{"v":1,"event":"image","image":"root""#));
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use bootpart::SetId;
use manifest::select::NoUpdateReason;
use semver::Version;
use serde::Serialize;

use crate::error::UpdateError;
use crate::status::Staged;

/// The version of the JSON-lines progress protocol.
pub const PROGRESS_PROTOCOL_VERSION: u32 = 1;

/// Which of the three images of a partition set (its one home is [`bootpart::ImageKind`]).
pub use bootpart::ImageKind;

/// One step of an update, reported as it happens. A staging run ends with exactly one
/// [`ProgressEvent::Done`] or [`ProgressEvent::Error`]; nothing follows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProgressEvent {
    /// Refreshing and verifying the TUF metadata and the manifest.
    LoadingMetadata,
    /// The update to stage was chosen.
    Selected {
        /// The version being staged.
        version: String,
        /// The inactive set it goes to.
        set: SetId,
    },
    /// Fetching the migrations the version jump needs.
    FetchingMigrations {
        /// How many migration files the plan lists.
        count: usize,
    },
    /// The inactive set is being cleared (and the GPT flushed) before the first write.
    ClearingInactive {
        /// The inactive set.
        set: SetId,
    },
    /// Bytes of an image received, verified and written so far.
    Image {
        /// Which image.
        image: ImageKind,
        /// Its TUF target name.
        target: String,
        /// Compressed bytes processed (for an image built from chunks, after a `delta_plan`
        /// event: image bytes placed).
        done: u64,
        /// The signed compressed length (from chunks: the image size).
        total: u64,
        /// Compressed bytes processed across all images of the update (earlier images and this
        /// one's `done`).
        update_done: u64,
        /// The signed compressed length of all images of the update.
        update_total: u64,
    },
    /// The delta plan of an image: bytes reused (zero, already in place, from the running set)
    /// and to download (uncompressed), with chunk counts. Its `image` events then count image
    /// bytes placed against the image size.
    DeltaPlan {
        /// Which image.
        image: ImageKind,
        /// The plan.
        plan: crate::delta::Plan,
    },
    /// The image could not be built from chunks; the full lz4 image is downloaded instead.
    DeltaFallback {
        /// Which image.
        image: ImageKind,
        /// Why (no index, store unreachable, chunks that keep failing, ...).
        reason: String,
    },
    /// The update lists a patch of this image against the running release: what it produced
    /// (each chunk verified against the new index), and why it, or some of its entries, could
    /// not be used (those chunks came from the chunk store). Sent once the image is assembled,
    /// before its `image_done`.
    DeltaPatch {
        /// Which image.
        image: ImageKind,
        /// The patch data target.
        target: String,
        /// The release it is made against (the running one).
        from: String,
        /// Chunks it wrote.
        chunks: u64,
        /// Patch data bytes downloaded.
        downloaded: u64,
        /// Why the patch or some of its entries were not used; empty when all of it was.
        not_used: Vec<String>,
    },
    /// The image was flushed and is being read back for comparison.
    Verifying {
        /// Which image.
        image: ImageKind,
    },
    /// An image is on disk, flushed and read back.
    ImageDone {
        /// Which image.
        image: ImageKind,
        /// Bytes written to the partition (decoded).
        written: u64,
    },
    /// Every image is in place; the inactive set is marked valid.
    MarkedValid {
        /// The inactive set.
        set: SetId,
    },
    /// The boot flags now point at the new set.
    Flipped {
        /// The set that boots next.
        set: SetId,
    },
    /// The run finished: what is staged where (and, after `updog update`, flipped to), or
    /// that there was nothing to stage. The last event of a run that succeeded.
    Done {
        /// The version staged; `None` when there was nothing to stage (`no_update` says why).
        version: Option<Version>,
        /// The set it is on; `None` when there was nothing to stage.
        set: Option<SetId>,
        /// Whether the boot flags point at it now (`updog update` flips after staging;
        /// [`crate::updater::Updater::stage`] alone never does).
        applied: bool,
        /// Why there was nothing to stage, when there was not.
        #[serde(skip_serializing_if = "Option::is_none")]
        no_update: Option<NoUpdateReason>,
    },
    /// The run failed (or was cancelled); the message says what happened and what the disk
    /// holds. The last event of a run that failed.
    Error {
        /// The error and its causes, for people.
        message: String,
        /// Whether it was a cancellation (the `updog` exit code is then 5).
        cancelled: bool,
        /// When a boot-flag write failed part-way: what the disk reads now (re-read after the
        /// failure), so an agent reading the stream learns which set boots next.
        #[serde(skip_serializing_if = "Option::is_none")]
        disk_now: Option<DiskNow>,
    },
}

/// What the disk reads after a boot-flag write that failed part-way (a flush that returned an
/// error may still have taken effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskNow {
    /// The set the bootloader picks next; `None` when no set is bootable.
    pub next_boot: Option<SetId>,
}

impl DiskNow {
    /// What `error` (or any error in its chain of causes) says the disk reads after a failed
    /// boot-flag write; `None` when it reports no such re-read.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<DiskNow> {
        crate::advice::causes(error).find_map(|e| match e.downcast_ref::<signpost::Error>() {
            Some(signpost::Error::WriteFailed { now: Some(now), .. }) => Some(DiskNow {
                next_boot: now.next_boot(),
            }),
            _ => None,
        })
    }
}

impl ProgressEvent {
    /// Whether this event ends a run ([`ProgressEvent::Done`] or [`ProgressEvent::Error`]).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ProgressEvent::Done { .. } | ProgressEvent::Error { .. }
        )
    }

    /// The event that ends a staging run with `result`: `done` with what was staged (or, for
    /// [`UpdateError::NoUpdate`], why nothing was), else `error` with the error's causes.
    /// `applied` says whether the boot flags were flipped to it afterwards.
    pub fn finished(result: &Result<Staged, UpdateError>, applied: bool) -> ProgressEvent {
        match result {
            Ok(staged) => ProgressEvent::done(staged, applied),
            Err(UpdateError::NoUpdate(reason)) => ProgressEvent::nothing_to_stage(reason),
            Err(e) => ProgressEvent::failed(e, crate::advice::error_chain(e)),
        }
    }

    /// The `done` event for `staged` (`applied`: flipped to it afterwards).
    pub fn done(staged: &Staged, applied: bool) -> ProgressEvent {
        ProgressEvent::Done {
            version: Some(staged.version.clone()),
            set: Some(staged.set),
            applied,
            no_update: None,
        }
    }

    /// The `done` event of a run that found nothing to stage.
    pub fn nothing_to_stage(reason: &NoUpdateReason) -> ProgressEvent {
        ProgressEvent::Done {
            version: None,
            set: None,
            applied: false,
            no_update: Some(reason.clone()),
        }
    }

    /// The `error` event for `error`, with `message` as people should read it.
    pub fn failed(error: &UpdateError, message: String) -> ProgressEvent {
        ProgressEvent::Error {
            message,
            cancelled: error.is_cancelled(),
            disk_now: DiskNow::of(error),
        }
    }
}

/// The JSON line (without the trailing newline) for an event.
pub fn json_line(event: &ProgressEvent) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        v: u32,
        #[serde(flatten)]
        event: &'a ProgressEvent,
    }
    serde_json::to_string(&Line {
        v: PROGRESS_PROTOCOL_VERSION,
        event,
    })
    .unwrap_or_default()
}

/// A one-line progress bar for a terminal, redrawn in place at most ten times a second:
/// the image, its bar and percentage, the whole update's percentage, the rate and the time
/// left. The line is fitted to the terminal's width (the bar shrinks, then the least useful
/// parts go), so a narrow terminal does not wrap each redraw onto a new line.
pub struct TerminalBar<W: Write> {
    out: W,
    last_draw: Option<Instant>,
    drawn: bool,
    width: Option<usize>,
    rate: Rate,
}

impl<W: Write> TerminalBar<W> {
    /// A bar drawing to `out` (normally stderr), as wide as stderr's terminal (80 columns when
    /// that is unknown).
    pub fn new(out: W) -> Self {
        TerminalBar {
            out,
            last_draw: None,
            drawn: false,
            width: None,
            rate: Rate::default(),
        }
    }

    /// A bar of a fixed width in columns, whatever the terminal says.
    pub fn with_width(mut self, columns: usize) -> Self {
        self.width = Some(columns);
        self
    }

    fn columns(&self) -> usize {
        self.width.unwrap_or_else(|| {
            terminal_size::terminal_size_of(std::io::stderr()).map_or(80, |(w, _)| usize::from(w.0))
        })
    }

    /// Shows an event: image bytes update the bar, other events print a line.
    pub fn event(&mut self, event: &ProgressEvent) {
        // Progress output is best effort: a closed terminal must not stop an update.
        let _ = self.draw(event);
    }

    fn draw(&mut self, event: &ProgressEvent) -> std::io::Result<()> {
        match event {
            ProgressEvent::Image {
                image,
                done,
                total,
                update_done,
                update_total,
                ..
            } => {
                let now = Instant::now();
                self.rate.sample(now, *update_done);
                let finished = done >= total;
                if !finished
                    && self
                        .last_draw
                        .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
                {
                    return Ok(());
                }
                self.last_draw = Some(now);
                let line = BarLine {
                    name: image.name(),
                    done: *done,
                    total: *total,
                    update_done: *update_done,
                    update_total: *update_total,
                    rate: self.rate.bytes_per_sec(),
                };
                // \r and erase to the end: a shorter line leaves nothing of the last one. The
                // last column stays free, where some terminals wrap.
                write!(
                    self.out,
                    "\r{}\x1b[K",
                    line.fit(self.columns().saturating_sub(1))
                )?;
                self.drawn = true;
            }
            other => {
                if self.drawn {
                    writeln!(self.out)?;
                    self.drawn = false;
                }
                if let Some(text) = describe(other) {
                    writeln!(self.out, "{text}")?;
                }
            }
        }
        self.out.flush()
    }

    /// Ends the current bar line, if any.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(self.out);
            self.drawn = false;
        }
    }
}

/// The transfer rate, averaged over the last few seconds so it follows a change of speed
/// without jumping at every sample.
#[derive(Default)]
struct Rate {
    /// (when, update bytes done), oldest first, at least 200 ms apart.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(5);

    fn sample(&mut self, now: Instant, done: u64) {
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now.duration_since(*t) < Duration::from_millis(200))
        {
            return;
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn bytes_per_sec(&self) -> Option<f64> {
        let ((t0, d0), (t1, d1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.duration_since(*t0).as_secs_f64();
        (secs >= 0.2 && d1 >= d0).then(|| (d1 - d0) as f64 / secs)
    }
}

/// The text of one redraw.
struct BarLine<'a> {
    name: &'a str,
    done: u64,
    total: u64,
    update_done: u64,
    update_total: u64,
    rate: Option<f64>,
}

impl BarLine<'_> {
    /// `root [########......]  45% 12.0/26.7 MiB | all 38% | 5.2 MiB/s | 0:14 left`, in at
    /// most `columns` characters: the bar shrinks to 10 cells, then goes; then the rate and
    /// time left, the update's percentage and the sizes go, in that order.
    fn fit(&self, columns: usize) -> String {
        let percent = |d: u64, t: u64| d.min(t).saturating_mul(100).checked_div(t).unwrap_or(100);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let head = format!("{:<4}", self.name);
        let pct = format!("{:>3}%", percent(self.done, self.total));
        let sizes = format!(
            "{:.1}/{:.1} MiB",
            mib(self.done.min(self.total)),
            mib(self.total)
        );
        let all = format!("all {}%", percent(self.update_done, self.update_total));
        let speed = self.rate.filter(|r| *r > 0.0).map(|r| {
            let left = self.update_total.saturating_sub(self.update_done) as f64 / r;
            format!("{:.1} MiB/s | {} left", r / (1024.0 * 1024.0), clock(left))
        });
        // Optional parts, most useful first.
        let mut parts: Vec<String> = vec![sizes, all];
        parts.extend(speed);
        let tail = |parts: &[String]| {
            let mut t = pct.clone();
            for (i, p) in parts.iter().enumerate() {
                t.push_str(if i == 0 { " " } else { " | " });
                t.push_str(p);
            }
            t
        };
        let len = |t: &str| t.chars().count();
        let full = tail(&parts);
        // head + " [" + bar + "] " + tail
        let cells = columns.saturating_sub(len(&head) + 4 + len(&full)).min(30);
        if cells >= 10 {
            let filled = percent(self.done, self.total) as usize * cells / 100;
            return format!(
                "{head} [{}{}] {full}",
                "#".repeat(filled),
                ".".repeat(cells - filled)
            );
        }
        loop {
            let text = format!("{head} {}", tail(&parts));
            if len(&text) <= columns || parts.is_empty() {
                return text.chars().take(columns).collect();
            }
            parts.pop();
        }
    }
}

/// Seconds as `m:ss` or `h:mm:ss`.
fn clock(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.round() as u64
    } else {
        0
    };
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A one-line description of a non-byte event.
pub fn describe(event: &ProgressEvent) -> Option<String> {
    Some(match event {
        ProgressEvent::LoadingMetadata => "Loading and verifying repository metadata".to_string(),
        ProgressEvent::Selected { version, set } => {
            format!("Staging {version} onto set {set}")
        }
        ProgressEvent::FetchingMigrations { count } => {
            format!("Fetching {count} migration file(s)")
        }
        ProgressEvent::ClearingInactive { set } => format!("Clearing set {set}"),
        ProgressEvent::Image { .. } => return None,
        ProgressEvent::DeltaPlan { image, plan } => {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            format!(
                "Delta {image}: {:.1} MiB reused ({} chunks from the running set, {} in place, {} zero), {:.1} MiB to download ({} chunks) of {:.1} MiB",
                mib(plan.reused_bytes()),
                plan.seed.chunks,
                plan.in_place.chunks,
                plan.zero.chunks,
                mib(plan.download.bytes),
                plan.download.chunks,
                mib(plan.image.bytes)
            )
        }
        ProgressEvent::DeltaFallback { image, reason } => {
            format!("Delta {image} not possible ({reason}); downloading the full image")
        }
        ProgressEvent::DeltaPatch {
            image,
            from,
            chunks,
            downloaded,
            not_used,
            ..
        } => {
            let why = if not_used.is_empty() {
                String::new()
            } else {
                format!(
                    "; not used: {} (those chunks came from the chunk store)",
                    not_used.join("; ")
                )
            };
            format!(
                "Delta {image}: a patch from {from} made {chunks} chunk(s) from {downloaded} byte(s){why}"
            )
        }
        ProgressEvent::Verifying { image } => format!("Reading back {image}"),
        ProgressEvent::ImageDone { image, written } => {
            format!("Wrote {image}: {written} bytes, verified")
        }
        ProgressEvent::MarkedValid { set } => format!("Set {set} marked valid"),
        ProgressEvent::Flipped { set } => format!("Set {set} boots next"),
        ProgressEvent::Done {
            version: Some(version),
            set: Some(set),
            applied,
            ..
        } => format!(
            "Done: {version} on set {set}{}",
            if *applied {
                ", boots next"
            } else {
                ", staged (not applied)"
            }
        ),
        ProgressEvent::Done { no_update, .. } => match no_update {
            Some(reason) => format!("Done: nothing to stage ({reason})"),
            None => "Done: nothing to stage".to_string(),
        },
        ProgressEvent::Error { message, .. } => format!("Failed: {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_versioned_and_tagged() {
        let line = json_line(&ProgressEvent::ClearingInactive { set: SetId::B });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["event"], "clearing_inactive");
        assert_eq!(v["set"], "B");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn typed_sets_and_images_serialize_as_the_strings_they_replaced() {
        // The lines of protocol version 1 as they were when these fields were strings, and
        // the two final events.
        let cases = [
            (
                ProgressEvent::Selected {
                    version: "1.1.0".to_string(),
                    set: SetId::B,
                },
                r#"{"v":1,"event":"selected","version":"1.1.0","set":"B"}"#,
            ),
            (
                ProgressEvent::ClearingInactive { set: SetId::A },
                r#"{"v":1,"event":"clearing_inactive","set":"A"}"#,
            ),
            (
                ProgressEvent::Verifying {
                    image: ImageKind::Hash,
                },
                r#"{"v":1,"event":"verifying","image":"hash"}"#,
            ),
            (
                ProgressEvent::ImageDone {
                    image: ImageKind::Boot,
                    written: 7,
                },
                r#"{"v":1,"event":"image_done","image":"boot","written":7}"#,
            ),
            (
                ProgressEvent::MarkedValid { set: SetId::B },
                r#"{"v":1,"event":"marked_valid","set":"B"}"#,
            ),
            (
                ProgressEvent::Flipped { set: SetId::B },
                r#"{"v":1,"event":"flipped","set":"B"}"#,
            ),
            (
                ProgressEvent::Done {
                    version: Some(Version::new(1, 1, 0)),
                    set: Some(SetId::B),
                    applied: true,
                    no_update: None,
                },
                r#"{"v":1,"event":"done","version":"1.1.0","set":"B","applied":true}"#,
            ),
            (
                ProgressEvent::nothing_to_stage(&NoUpdateReason::NoneNewer {
                    running: Version::new(1, 1, 0),
                }),
                r#"{"v":1,"event":"done","version":null,"set":null,"applied":false,"no_update":{"reason":"none_newer","running":"1.1.0"}}"#,
            ),
            (
                ProgressEvent::Error {
                    message: "disk: gone".to_string(),
                    cancelled: false,
                    disk_now: None,
                },
                r#"{"v":1,"event":"error","message":"disk: gone","cancelled":false}"#,
            ),
            (
                ProgressEvent::Error {
                    message: "flip failed".to_string(),
                    cancelled: false,
                    disk_now: Some(DiskNow {
                        next_boot: Some(SetId::B),
                    }),
                },
                r#"{"v":1,"event":"error","message":"flip failed","cancelled":false,"disk_now":{"next_boot":"B"}}"#,
            ),
        ];
        for (event, want) in cases {
            assert_eq!(json_line(&event), want);
        }
    }

    fn line(done: u64, total: u64, update_done: u64, rate: Option<f64>) -> BarLine<'static> {
        BarLine {
            name: "root",
            done,
            total,
            update_done,
            update_total: 4 * total,
            rate,
        }
    }

    #[test]
    fn bar_fills_with_progress() {
        let mib = 1024 * 1024;
        let empty = line(0, 100 * mib, 0, None).fit(79);
        assert!(
            empty.starts_with(&format!(
                "root [{}]   0% 0.0/100.0 MiB | all 0%",
                ".".repeat(30)
            )),
            "{empty}"
        );
        let half = line(50 * mib, 100 * mib, 150 * mib, Some(10.0 * mib as f64)).fit(120);
        assert!(
            half.contains(&format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))),
            "{half}"
        );
        // The whole update: 150 of 400 MiB; 250 MiB left at 10 MiB/s.
        assert!(
            half.contains("| all 37% | 10.0 MiB/s | 0:25 left"),
            "{half}"
        );
        let full = line(100, 100, 400, None).fit(79);
        assert!(
            full.contains(&format!("[{}] 100%", "#".repeat(30))),
            "{full}"
        );
        // Zero-length and overshoot do not panic.
        assert!(line(5, 0, 5, None).fit(79).contains("100%"));
        assert!(line(500, 100, 500, None).fit(79).contains("100%"));
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(f64::INFINITY), "0:00");
    }

    #[test]
    fn a_narrow_terminal_gets_a_line_that_fits() {
        let mib = 1024 * 1024;
        let l = line(50 * mib, 100 * mib, 150 * mib, Some(10.0 * mib as f64));
        let mut last = usize::MAX;
        for columns in (0..=120).rev() {
            let text = l.fit(columns);
            let n = text.chars().count();
            assert!(n <= columns, "{columns}: {text:?}");
            assert!(n <= last);
            last = n;
            if columns >= 20 {
                // The image and its percentage survive the squeeze.
                assert!(
                    text.starts_with("root") && text.contains("50%"),
                    "{columns}: {text:?}"
                );
            }
        }
        // The bar goes before the numbers do.
        let forty = l.fit(40);
        assert!(!forty.contains('['), "{forty}");
        assert!(forty.contains("MiB"), "{forty}");
    }

    #[test]
    fn terminal_bar_redraws_in_place_and_ends_its_line_before_messages() {
        let mut out = Vec::new();
        {
            let mut bar = TerminalBar::new(&mut out).with_width(30);
            for done in [5, 10] {
                bar.event(&ProgressEvent::Image {
                    image: ImageKind::Boot,
                    target: "b".to_string(),
                    done,
                    total: 10,
                    update_done: done,
                    update_total: 10,
                });
            }
            bar.event(&ProgressEvent::ImageDone {
                image: ImageKind::Boot,
                written: 20,
            });
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\rboot"), "{text:?}");
        // Each redraw: carriage return, at most 29 columns, erase to the end; no newline.
        let (redraws, rest) = text.split_once('\n').unwrap();
        for r in redraws.split('\r').skip(1) {
            let visible = r.strip_suffix("\x1b[K").expect("erase to end of line");
            assert!(visible.chars().count() <= 29, "{visible:?}");
        }
        assert_eq!(rest, "Wrote boot: 20 bytes, verified\n");
    }
}
