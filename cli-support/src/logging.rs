//! Log records (the `log` facade, used by our libraries and by tough, reqwest and rustls)
//! written to stderr, one line each.
//!
//! The level comes from `--log-level` ([`LogArgs`]), else from `RUST_LOG` (`info`, or
//! directives like `warn,updog=debug,tuf=trace`), else the default: `info` when stderr
//! is the systemd journal, `warn` otherwise (a person at a terminal sees progress already).
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM` to the device and inode of the
//! stream it connected, and stderr is still that stream), every line starts with the sd-daemon
//! priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace), which
//! journald turns into the entry's priority: `journalctl -u updog -p warning` shows the
//! warnings and errors. Elsewhere lines read `updog: warning: ...`.
//!
//! ```
//! use cli_support::logging::{Destination, Filter, LogLevel, line};
//! let filter = Filter::new(Some(LogLevel::Debug), Some("updog=trace"), Destination::Terminal);
//! // --log-level wins over RUST_LOG.
//! assert!(!filter.enabled("updog::tuf", log::Level::Trace));
//! assert!(filter.enabled("updog::tuf", log::Level::Debug));
//! let text = line("updog", Destination::Journal, log::Level::Warn, "updog", "disk is slow");
//! assert_eq!(text, "<4>disk is slow\n");
//! ```

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use log::{Level, LevelFilter};

/// A `--log-level` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything, including each request and decision.
    Trace,
    /// Details useful when something goes wrong.
    Debug,
    /// What happened: metadata verified, update chosen, bytes and time per image, the flip.
    Info,
    /// Problems that did not stop the command.
    Warn,
    /// Only errors.
    Error,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Trace => LevelFilter::Trace,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Error => LevelFilter::Error,
        }
    }
}

/// The `--log-level` option, to `#[command(flatten)]` into a binary's arguments. It is global:
/// it works before or after the subcommand.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// How much to log on stderr: trace, debug, info, warn or error. Default: RUST_LOG if set,
    /// else info when stderr is the systemd journal, warn otherwise.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "LEVEL",
        hide_possible_values = true
    )]
    pub log_level: Option<LogLevel>,
}

/// Where stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The systemd journal: lines carry `<N>` priority prefixes.
    Journal,
    /// A terminal: a log line first clears a progress bar drawn on the same line.
    Terminal,
    /// A file or a pipe: plain lines.
    Plain,
}

impl Destination {
    /// Where this process's stderr goes now.
    pub fn of_stderr() -> Destination {
        if stderr_is_journal() {
            Destination::Journal
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        {
            Destination::Terminal
        } else {
            Destination::Plain
        }
    }
}

/// Whether stderr is the stream systemd connected to the journal (`JOURNAL_STREAM=dev:inode`
/// names it; a child whose stderr was redirected inherits the variable but not the stream).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Which records are written: a default level and per-target levels (the longest matching
/// module-path prefix wins).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// The filter for a `--log-level` value (which wins), a `RUST_LOG` value, and where stderr
    /// goes (which sets the default). Directives of `RUST_LOG` that do not parse are ignored.
    pub fn new(flag: Option<LogLevel>, rust_log: Option<&str>, dest: Destination) -> Filter {
        let default = if dest == Destination::Journal {
            LevelFilter::Info
        } else {
            LevelFilter::Warn
        };
        if let Some(level) = flag {
            return Filter {
                default: level.filter(),
                targets: Vec::new(),
            };
        }
        let mut filter = Filter {
            default,
            targets: Vec::new(),
        };
        for directive in rust_log.unwrap_or("").split(',').map(str::trim) {
            if directive.is_empty() {
                continue;
            }
            match directive.split_once('=') {
                None => match directive.parse::<LevelFilter>() {
                    Ok(level) => filter.default = level,
                    // A bare module name means everything from it.
                    Err(_) => filter
                        .targets
                        .push((directive.to_string(), LevelFilter::Trace)),
                },
                Some((target, level)) => {
                    if let Ok(level) = level.trim().parse::<LevelFilter>() {
                        filter.targets.push((target.trim().to_string(), level));
                    }
                }
            }
        }
        filter
    }

    /// The most verbose level any target may log at.
    pub fn max_level(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .chain([self.default])
            .max()
            .unwrap_or(LevelFilter::Off)
    }

    /// Whether a record of `level` from `target` (a module path) is written.
    pub fn enabled(&self, target: &str, level: Level) -> bool {
        let matches = |prefix: &str| {
            target == prefix
                || target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        };
        let limit = self
            .targets
            .iter()
            .filter(|(prefix, _)| matches(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, l)| *l);
        level <= limit
    }
}

/// The sd-daemon priority of a level (syslog numbering).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The text written for one record, with its newline. Debug and trace lines name their
/// target; on the journal every line of a multi-line message carries the priority.
pub fn line(program: &str, dest: Destination, level: Level, target: &str, message: &str) -> String {
    let message = if level >= Level::Debug {
        format!("[{target}] {message}")
    } else {
        message.to_string()
    };
    match dest {
        Destination::Journal => {
            let prefix = format!("<{}>", priority(level));
            let mut out = String::new();
            for l in message.lines() {
                out.push_str(&prefix);
                out.push_str(l);
                out.push('\n');
            }
            if out.is_empty() {
                out = format!("{prefix}\n");
            }
            out
        }
        Destination::Terminal | Destination::Plain => {
            let word = match level {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            // \r and erase-line: a progress bar drawn without a newline is not run into.
            let clear = if dest == Destination::Terminal {
                "\r\x1b[K"
            } else {
                ""
            };
            format!("{clear}{program}: {word}: {message}\n")
        }
    }
}

struct Logger {
    program: &'static str,
    dest: Destination,
    filter: Filter,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = line(
            self.program,
            self.dest,
            record.level(),
            record.target(),
            &record.args().to_string(),
        );
        // One write per record so lines from several threads do not interleave; a closed
        // stderr must not stop the program.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

static OUTPUT: OnceLock<(&'static str, Destination)> = OnceLock::new();

/// Installs the logger for `program` (the name lines start with on a terminal), with the level
/// from `--log-level`, `RUST_LOG` or the default. Call once, after parsing the arguments; a
/// second call changes nothing.
pub fn init(program: &'static str, args: &LogArgs) {
    let dest = Destination::of_stderr();
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = Filter::new(args.log_level, rust_log.as_deref(), dest);
    let max = filter.max_level();
    if OUTPUT.set((program, dest)).is_err() {
        return;
    }
    if log::set_boxed_logger(Box::new(Logger {
        program,
        dest,
        filter,
    }))
    .is_ok()
    {
        log::set_max_level(max);
    }
}

/// Prints the message a command fails with, whatever the log level: `updog: MESSAGE` on a
/// terminal, with the error priority (`<3>`) on the journal.
pub fn print_error(program: &str, message: &str) {
    let dest = OUTPUT
        .get()
        .map_or_else(Destination::of_stderr, |(_, d)| *d);
    let text = match dest {
        Destination::Journal => line(program, dest, Level::Error, program, message),
        Destination::Terminal | Destination::Plain => format!("{program}: {message}\n"),
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_level_depends_on_the_destination() {
        let journal = Filter::new(None, None, Destination::Journal);
        assert!(journal.enabled("updog", Level::Info));
        assert!(!journal.enabled("updog", Level::Debug));
        let terminal = Filter::new(None, None, Destination::Terminal);
        assert!(terminal.enabled("updog", Level::Warn));
        assert!(!terminal.enabled("updog", Level::Info));
    }

    #[test]
    fn rust_log_directives() {
        let f = Filter::new(
            None,
            Some("error, updog=debug,updog::tuf=trace,tough=bogus,rustls"),
            Destination::Plain,
        );
        assert!(f.enabled("updog::tuf::root", Level::Trace));
        assert!(f.enabled("updog::pipeline", Level::Debug));
        assert!(!f.enabled("updog::pipeline", Level::Trace));
        // A prefix matches at a module boundary only.
        assert!(!f.enabled("updogx", Level::Warn));
        assert!(f.enabled("updogx", Level::Error));
        // A directive with a bad level is ignored: tough falls back to the default.
        assert!(!f.enabled("tough", Level::Warn));
        assert!(f.enabled("rustls::client", Level::Trace));
        assert_eq!(f.max_level(), LevelFilter::Trace);
    }

    #[test]
    fn the_flag_wins_over_rust_log() {
        let f = Filter::new(Some(LogLevel::Error), Some("trace"), Destination::Journal);
        assert!(!f.enabled("updog", Level::Warn));
        assert_eq!(f.max_level(), LevelFilter::Error);
    }

    #[test]
    fn journal_lines_carry_priorities_on_every_line() {
        assert_eq!(
            line("updog", Destination::Journal, Level::Error, "updog", "a\nb"),
            "<3>a\n<3>b\n"
        );
        assert_eq!(
            line(
                "updog",
                Destination::Journal,
                Level::Trace,
                "updog::tuf",
                "x"
            ),
            "<7>[updog::tuf] x\n"
        );
        assert_eq!(
            line("updog", Destination::Plain, Level::Warn, "updog", "slow"),
            "updog: warning: slow\n"
        );
        assert!(
            line(
                "signpost",
                Destination::Terminal,
                Level::Info,
                "signpost",
                "ok"
            )
            .starts_with("\r\x1b[Ksignpost: info: ok")
        );
    }
}
