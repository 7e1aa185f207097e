//! The JSON the API speaks: the reference's update status object (`thar-be-updates`'
//! `UpdateStatus`, as `GET /updates/status` returns it) and its parts, the `GET /os` object,
//! and the extra fields of ours that the reference's clients ignore.
//!
//! Field names, enum spellings and nullability are the reference's: `update_state` is one of
//! `Idle`, `Available`, `Staged`, `Ready`; `cmd_type` is kebab-case (`refresh`, `prepare`,
//! `activate`, `deactivate`); `cmd_status` is `Success`, `Failed` or `Unknown`; the timestamp
//! is RFC 3339 in UTC. Bottlerocket's update operator reads the status more strictly than
//! `apiclient` does: `most_recent_command` must be an object with a non-negative integer
//! `exit_status` and a string `stderr`, so this service always fills both once a command ran.

use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

/// The update state, in the reference's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    /// No update known (or the last refresh failed).
    Idle,
    /// A refresh found an update to take; nothing is staged.
    Available,
    /// An update is staged on the inactive set (from the GPT bits and the staged record).
    Staged,
    /// The boot flags point at the inactive set: the next boot tries the update.
    Ready,
}

/// One of the commands of the update API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateCommand {
    /// `POST /actions/refresh-updates`.
    Refresh,
    /// `POST /actions/prepare-update`.
    Prepare,
    /// `POST /actions/activate-update`.
    Activate,
    /// `POST /actions/deactivate-update`.
    Deactivate,
}

impl UpdateCommand {
    /// The name as `cmd_type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            UpdateCommand::Refresh => "refresh",
            UpdateCommand::Prepare => "prepare",
            UpdateCommand::Activate => "activate",
            UpdateCommand::Deactivate => "deactivate",
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// It succeeded.
    Success,
    /// It failed; `stderr` says why.
    Failed,
    /// Not known (the reference's third value; this service does not produce it).
    Unknown,
}

/// An OS image: the reference's `UpdateImage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateImage {
    /// The architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// The version.
    pub version: Version,
    /// The variant.
    pub variant: String,
}

/// A partition set and the image on it: the reference's `StagedImage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedImage {
    /// The image on the set; `null` only when the GPT says the set boots next but no staged
    /// record says what it holds.
    pub image: Option<UpdateImage>,
    /// Whether the bootloader picks this set at the next boot (read from the GPT at every
    /// request, where the reference writes it once).
    pub next_to_boot: bool,
}

/// The result of the most recent command: the reference's `CommandResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Which command.
    pub cmd_type: UpdateCommand,
    /// How it ended.
    pub cmd_status: CommandStatus,
    /// When it ended.
    pub timestamp: DateTime<Utc>,
    /// `updog`'s exit code for the same failure (see `updog::exit`), 0 on success.
    pub exit_status: Option<i32>,
    /// The one-line error on failure (what `updog` prints on stderr), empty on success.
    pub stderr: Option<String>,
}

/// Progress of a running prepare: ours, in the 423 answer to `GET /updates/status` while the
/// prepare runs (the reference's clients ignore it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The step under way, as the `updog --progress json` event names it (`loading_metadata`,
    /// `fetching_migrations`, `clearing_inactive`, `image`, `verifying`, ...).
    pub step: String,
    /// The image being written, when one is.
    pub image: Option<String>,
    /// Compressed bytes of all images received, verified and written so far.
    pub bytes_done: u64,
    /// Compressed bytes of all images of the update.
    pub bytes_total: u64,
    /// Average rate since the first image byte, in bytes per second.
    pub bytes_per_sec: u64,
    /// Estimated seconds left for the images at that rate, once there is a rate.
    pub secs_left: Option<u64>,
}

/// The command running now: ours, in the 423 answer to `GET /updates/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningCommand {
    /// Which command.
    pub cmd_type: UpdateCommand,
    /// When it was accepted.
    pub started: DateTime<Utc>,
    /// How far a prepare is (`None` for the other commands).
    pub progress: Option<Progress>,
}

/// The update status object of `GET /updates/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The state of the update state machine.
    pub update_state: UpdateState,
    /// The versions the last refresh found offered to this host (their wave is open), newest
    /// first.
    pub available_updates: Vec<Version>,
    /// The update the last refresh chose (version lock, waves, failed boots honoured).
    pub chosen_update: Option<UpdateImage>,
    /// The running set and its image.
    pub active_partition: Option<StagedImage>,
    /// The inactive set and its image, when the GPT says an update is staged or applied there.
    pub staging_partition: Option<StagedImage>,
    /// The most recent command and how it ended; `null` until one has run.
    pub most_recent_command: Option<CommandResult>,
    /// Ours: why the GPT and the staged record disagree, when they do (see `updog status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_record_problem: Option<String>,
    /// Ours: releases that failed to boot on this host and are not chosen again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_boots: Vec<Version>,
    /// Ours: the command running now (only in a 423 answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_command: Option<RunningCommand>,
}

/// `GET /os`: what the reference's `BottlerocketRelease` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    /// `PRETTY_NAME` (or `NAME VERSION_ID` without it).
    pub pretty_name: String,
    /// `VARIANT_ID`.
    pub variant_id: String,
    /// `VERSION_ID`.
    pub version_id: Version,
    /// `BUILD_ID` (empty without it).
    pub build_id: String,
    /// The architecture.
    pub arch: String,
}
