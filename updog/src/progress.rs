//! Progress of an update, as typed events for an embedding agent, and two renderings for the
//! CLI: a bar on a terminal and JSON lines (`--progress json`).
//!
//! Every JSON line carries `"v": 1`, the version of this protocol; fields may be added within a
//! version, never removed or renamed.
//!
//! ```
//! use updog::progress::{ImageKind, ProgressEvent};
//! let event = ProgressEvent::Image {
//!     image: ImageKind::Root,
//!     target: "os-root.ext4.lz4".to_string(),
//!     done: 512,
//!     total: 1024,
//! };
//! let line = updog::progress::json_line(&event);
//! assert!(line.starts_with(r#"{"v":1,"event":"image","image":"root""#));
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The version of the JSON-lines progress protocol.
pub const PROGRESS_PROTOCOL_VERSION: u32 = 1;

/// Which of the three images of a partition set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// The root filesystem.
    Root,
    /// The boot partition (kernel, initrd).
    Boot,
    /// The dm-verity hash tree of the root filesystem.
    Hash,
}

impl ImageKind {
    /// The order images are staged in.
    pub const ALL: [ImageKind; 3] = [ImageKind::Root, ImageKind::Boot, ImageKind::Hash];

    /// The lowercase name (`root`, `boot`, `hash`).
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Root => "root",
            ImageKind::Boot => "boot",
            ImageKind::Hash => "hash",
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of an update, reported as it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// Refreshing and verifying the TUF metadata and the manifest.
    LoadingMetadata,
    /// The update to stage was chosen.
    Selected {
        /// The version being staged.
        version: String,
        /// The inactive set it goes to.
        set: String,
    },
    /// Fetching the migrations the version jump needs.
    FetchingMigrations {
        /// How many migration files the plan lists.
        count: usize,
    },
    /// The inactive set is being cleared (and the GPT flushed) before the first write.
    ClearingInactive {
        /// The inactive set.
        set: String,
    },
    /// Bytes of an image received, verified and written so far.
    Image {
        /// Which image.
        image: ImageKind,
        /// Its TUF target name.
        target: String,
        /// Compressed bytes processed.
        done: u64,
        /// The signed compressed length.
        total: u64,
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
        set: String,
    },
    /// The boot flags now point at the new set.
    Flipped {
        /// The set that boots next.
        set: String,
    },
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

/// A one-line progress bar for a terminal, redrawn in place at most ten times a second.
pub struct TerminalBar<W: Write> {
    out: W,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl<W: Write> TerminalBar<W> {
    /// A bar drawing to `out` (normally stderr).
    pub fn new(out: W) -> Self {
        TerminalBar {
            out,
            last_draw: None,
            drawn: false,
        }
    }

    /// Shows an event: image bytes update the bar, other events print a line.
    pub fn event(&mut self, event: &ProgressEvent) {
        // Progress output is best effort: a closed terminal must not stop an update.
        let _ = self.draw(event);
    }

    fn draw(&mut self, event: &ProgressEvent) -> std::io::Result<()> {
        match event {
            ProgressEvent::Image {
                image, done, total, ..
            } => {
                let now = Instant::now();
                let finished = done >= total;
                if !finished
                    && self
                        .last_draw
                        .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
                {
                    return Ok(());
                }
                self.last_draw = Some(now);
                write!(self.out, "\r{}", bar_text(image.name(), *done, *total))?;
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

/// `root [#########...........]  45% 12.0/26.7 MiB`
fn bar_text(name: &str, done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = done
        .saturating_mul(WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "{name:<4} [{}{}] {percent:>3}% {:.1}/{:.1} MiB",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        mib(done),
        mib(total)
    )
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
                mib(plan.fetch.bytes),
                plan.fetch.chunks,
                mib(plan.image.bytes)
            )
        }
        ProgressEvent::DeltaFallback { image, reason } => {
            format!("Delta {image} not possible ({reason}); downloading the full image")
        }
        ProgressEvent::Verifying { image } => format!("Reading back {image}"),
        ProgressEvent::ImageDone { image, written } => {
            format!("Wrote {image}: {written} bytes, verified")
        }
        ProgressEvent::MarkedValid { set } => format!("Set {set} marked valid"),
        ProgressEvent::Flipped { set } => format!("Set {set} boots next"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_versioned_and_tagged() {
        let line = json_line(&ProgressEvent::ClearingInactive {
            set: "B".to_string(),
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["event"], "clearing_inactive");
        assert_eq!(v["set"], "B");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn bar_fills_with_progress() {
        assert!(bar_text("root", 0, 100).contains("[..............................]   0%"));
        assert!(
            bar_text("root", 50, 100).contains("] 50%")
                || bar_text("root", 50, 100).contains("  50%")
        );
        assert!(bar_text("root", 100, 100).contains(&format!("[{}] 100%", "#".repeat(30))));
        // Zero-length and overshoot do not panic.
        assert!(bar_text("hash", 5, 0).contains("100%"));
        assert!(bar_text("hash", 500, 100).contains("100%"));
    }

    #[test]
    fn terminal_bar_ends_its_line_before_messages() {
        let mut out = Vec::new();
        {
            let mut bar = TerminalBar::new(&mut out);
            bar.event(&ProgressEvent::Image {
                image: ImageKind::Boot,
                target: "b".to_string(),
                done: 10,
                total: 10,
            });
            bar.event(&ProgressEvent::ImageDone {
                image: ImageKind::Boot,
                written: 20,
            });
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\rboot"), "{text:?}");
        assert!(
            text.ends_with("\nWrote boot: 20 bytes, verified\n"),
            "{text:?}"
        );
    }
}
