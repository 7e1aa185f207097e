//! The reboot hand-off: flush every filesystem, then run the configured reboot command.
//!
//! The command is configurable (`reboot_command`, default `systemctl reboot`) so tests and
//! demos point it at a script that records the call instead of rebooting.
//!
//! Under a service manager the reboot the command starts stops the caller's own service, and
//! with it the command: systemd sends SIGTERM to every process of `updog.service` as the
//! shutdown begins, often before `systemctl reboot` has returned. A command ended by SIGTERM
//! therefore counts as a reboot under way, not as a failure (the reference's updog ignores
//! SIGTERM once it has asked for the reboot, for the same reason).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

/// Why the reboot command did not run or did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebootError {
    /// The command list is empty.
    #[error("no reboot command configured")]
    NoCommand,
    /// The command could not be started.
    #[error("starting reboot command {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("reboot command {program} failed: {status}")]
    Failed {
        /// The program.
        program: PathBuf,
        /// How it exited.
        status: std::process::ExitStatus,
    },
}

/// Flushes all filesystems (`sync`), then runs `command` (program and arguments) and waits for
/// it. Returns once the command exits successfully (a real `systemctl reboot` returns while the
/// system shuts down), or when SIGTERM ended it: the shutdown it started stops the service the
/// caller runs in.
///
/// ```
/// updog::reboot::reboot(&["true".to_string()]).unwrap();
/// assert!(updog::reboot::reboot(&["false".to_string()]).is_err());
/// // What a shutdown does to the command when the caller runs under systemd.
/// updog::reboot::reboot(&["sh".into(), "-c".into(), "kill -TERM $$".into()]).unwrap();
/// ```
pub fn reboot(command: &[String]) -> Result<(), RebootError> {
    let (program, args) = command.split_first().ok_or(RebootError::NoCommand)?;
    nix::unistd::sync();
    log::info!("filesystems flushed; rebooting with {}", command.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|source| RebootError::Spawn {
            program: PathBuf::from(program),
            source,
        })?;
    if status.success() {
        Ok(())
    } else if status.signal() == Some(libc::SIGTERM) {
        log::info!(
            "the reboot command was stopped by SIGTERM: the shutdown it started is stopping this service"
        );
        Ok(())
    } else {
        Err(RebootError::Failed {
            program: PathBuf::from(program),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_command_with_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("called");
        let cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("echo \"$0 $1\" > {}", out.display()),
            "reboot-now".to_string(),
            "please".to_string(),
        ];
        reboot(&cmd).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "reboot-now please"
        );
    }

    #[test]
    fn failures_name_the_program() {
        assert!(matches!(reboot(&[]), Err(RebootError::NoCommand)));
        let e = reboot(&["/nonexistent/reboot".to_string()]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/reboot"), "{e}");
        let e = reboot(&["false".to_string()]).unwrap_err();
        assert!(matches!(e, RebootError::Failed { .. }), "{e}");
        // Another signal is no shutdown of ours.
        let e = reboot(&["sh".into(), "-c".into(), "kill -KILL $$".into()]).unwrap_err();
        assert!(e.to_string().contains("signal: 9"), "{e}");
    }
}
