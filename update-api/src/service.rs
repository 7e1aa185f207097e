//! The update state machine of the API, over an [`updog::updater::Updater`] in this process.
//!
//! The reference (`thar-be-updates`) keeps the state in a file it writes after each command;
//! here the state of the disk is read from the GPT at every request (`Updater::status`):
//! `Staged` and `Ready` are what the boot flags and the staged record say, and only `Idle` and
//! `Available` (what the last refresh found), the offered versions, the chosen update and the
//! most recent command are remembered, in a small JSON file (`status_file`, under `/run` by
//! default, so it lasts as long as the boot, as the reference's does).
//!
//! Transitions (the reference's; each accepted command answers 204 and runs in the background,
//! one at a time):
//!
//! | command | allowed in | then |
//! |---|---|---|
//! | refresh | every state | `Available` when an update is chosen, else `Idle` (`Staged`/`Ready` stay) |
//! | prepare | `Available`, `Staged` (404 without a chosen update) | the chosen update is staged |
//! | activate | `Staged` (404 when nothing is staged) | the boot flags point at it: `Ready` |
//! | deactivate | `Ready` (404 when nothing is staged) | back to `Staged` |
//!
//! Anything else is 409; any command or status request while a command runs (or while another
//! process, such as the `updog` CLI, holds the disk lock) is 423.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};
use updog::lock::UpdateLock;
use updog::plan::UpdatePlan;
use updog::progress::ProgressEvent;
use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, UpdateError, Updater};

use crate::http::{Request, Response};
use crate::model::{
    CommandResult, CommandStatus, OsInfo, Progress, RunningCommand, StagedImage, UpdateCommand,
    UpdateImage, UpdateState, UpdateStatus,
};

/// Where the service remembers its state by default (a runtime directory: it lasts the boot).
pub const DEFAULT_STATUS_FILE: &str = "/run/updog-api/status.json";

/// The largest status file read back.
const MAX_STATUS_FILE: u64 = 1024 * 1024;

/// The reference's answer texts (the apiserver's error messages), which clients may show.
const LOCK_HELD: &str = "Update lock held";
const DISALLOWED: &str = "Update action not allowed according to update state";
const NO_CHOSEN_UPDATE: &str = "Previously chosen Update no longer exists";
const NO_STAGED_IMAGE: &str = "No update image applied to staging partition";
const UNINITIALIZED: &str = "Update status is uninitialized, refresh-updates to initialize it";

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The file the service's own state is kept in ([`DEFAULT_STATUS_FILE`]).
    pub status_file: PathBuf,
    /// The configuration file the updater was loaded from, named in error explanations.
    pub config_path: PathBuf,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            status_file: PathBuf::from(DEFAULT_STATUS_FILE),
            config_path: PathBuf::from(updog::config::DEFAULT_CONFIG_PATH),
        }
    }
}

/// Why the service's state file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the update API state {path}")]
pub struct StateFileError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// What the service remembers between requests (and restarts within a boot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Remembered {
    /// `Idle` or `Available`: what the last refresh found (the disk decides past that).
    refreshed: UpdateState,
    available_updates: Vec<Version>,
    chosen_update: Option<UpdateImage>,
    most_recent_command: Option<CommandResult>,
}

impl Remembered {
    fn new() -> Remembered {
        Remembered {
            refreshed: UpdateState::Idle,
            available_updates: Vec::new(),
            chosen_update: None,
            most_recent_command: None,
        }
    }
}

/// The command running now.
struct Running {
    cmd: UpdateCommand,
    started: DateTime<Utc>,
    progress: Arc<Mutex<ProgressMeter>>,
    cancel: CancelHandle,
}

#[derive(Default)]
struct Inner {
    remembered: Option<Remembered>,
    running: Option<Running>,
    /// The plan of the update the last refresh chose, for prepare to stage exactly that.
    plan: Option<UpdatePlan>,
    worker: Option<JoinHandle<()>>,
}

/// The API service: routes requests, runs commands in the background, answers status.
pub struct Service {
    updater: Updater,
    options: ServiceOptions,
    pretty_name: String,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("updater", &self.updater)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a running command produced, applied to the remembered state when it ends.
struct Outcome {
    result: Result<(), (i32, String)>,
    refresh: Option<RefreshFound>,
}

struct RefreshFound {
    available_updates: Vec<Version>,
    chosen: Option<(UpdateImage, UpdatePlan)>,
}

impl Service {
    /// A service over `updater`. Reads back the state a previous run of the service left in
    /// `options.status_file` (an unreadable one is ignored: the status is then uninitialized,
    /// as after a reboot).
    pub fn new(updater: Updater, options: ServiceOptions) -> Service {
        let remembered = read_state(&options.status_file);
        let pretty_name = pretty_name(&updater.config().os_release).unwrap_or_else(|| {
            format!(
                "{} {}",
                updater.os_release().variant_id,
                updater.os_release().version_id
            )
        });
        Service {
            updater,
            options,
            pretty_name,
            inner: Mutex::new(Inner {
                remembered,
                ..Inner::default()
            }),
        }
    }

    /// The updater in use.
    pub fn updater(&self) -> &Updater {
        &self.updater
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves data that is still consistent enough to
        // answer from (every change is one assignment).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers one request.
    pub fn handle(self: &Arc<Self>, req: &Request) -> Response {
        let route = |get: bool| {
            if (req.method == "GET") == get {
                None
            } else {
                let mut r = Response::text(405, format!("{} is not allowed here", req.method));
                r.headers
                    .push(("Allow", if get { "GET" } else { "POST" }.to_string()));
                Some(r)
            }
        };
        let (get, action) = match req.path.as_str() {
            "/updates/status" => (true, None),
            "/os" => (true, None),
            "/actions/refresh-updates" => (false, Some(UpdateCommand::Refresh)),
            "/actions/prepare-update" => (false, Some(UpdateCommand::Prepare)),
            "/actions/activate-update" => (false, Some(UpdateCommand::Activate)),
            "/actions/deactivate-update" => (false, Some(UpdateCommand::Deactivate)),
            "/actions/reboot" => (false, None),
            other => return Response::text(404, format!("no such resource: {other}")),
        };
        if let Some(refused) = route(get) {
            return refused;
        }
        match (req.path.as_str(), action) {
            ("/updates/status", _) => self.get_status(),
            ("/os", _) => Response::json(200, &self.os_info()),
            (_, Some(cmd)) => self.command(cmd),
            _ => self.reboot(),
        }
    }

    /// `GET /os`.
    pub fn os_info(&self) -> OsInfo {
        let os = self.updater.os_release();
        OsInfo {
            pretty_name: self.pretty_name.clone(),
            variant_id: os.variant_id.clone(),
            version_id: os.version_id.clone(),
            build_id: os.build_id.clone().unwrap_or_default(),
            arch: os.arch.clone(),
        }
    }

    /// Another process holds the disk lock (the `updog` CLI, `signpost`): what to answer.
    fn locked_elsewhere(&self) -> Option<Response> {
        match self.updater.busy() {
            Ok(Some(holder)) => Some(Response::text(
                423,
                format!(
                    "{LOCK_HELD}: {} holds the disk lock (an update or a boot-flag change is in progress)",
                    holder
                        .holder_pid
                        .map_or_else(|| "another process".to_string(), |p| format!("pid {p}"))
                ),
            )),
            Ok(None) => None,
            Err(e) => {
                log::debug!(
                    "cannot tell whether the disk is locked: {e}",
                    e = updog::advice::error_chain(&e)
                );
                None
            }
        }
    }

    fn get_status(&self) -> Response {
        let inner = self.inner();
        let Some(remembered) = &inner.remembered else {
            return Response::text(404, UNINITIALIZED);
        };
        let mut status = match self.derive(remembered) {
            Ok(s) => s,
            Err(e) => return Response::text(500, self.explain(&e)),
        };
        if let Some(running) = &inner.running {
            // As the reference: the status is locked while a command runs. Ours: what runs,
            // and how far a prepare is, in the body.
            status.running_command = Some(RunningCommand {
                cmd_type: running.cmd,
                started: running.started,
                progress: (running.cmd == UpdateCommand::Prepare).then(|| {
                    running
                        .progress
                        .lock()
                        .map(|m| m.progress.clone())
                        .unwrap_or_default()
                }),
            });
            return Response::json(423, &status);
        }
        if let Some(locked) = self.locked_elsewhere() {
            return locked;
        }
        Response::json(200, &status)
    }

    /// The status object: the remembered refresh and command, the rest from the GPT now.
    fn derive(&self, remembered: &Remembered) -> Result<UpdateStatus, UpdateError> {
        let disk = self.updater.status()?;
        let update_state = match disk.update_state {
            updog::updater::UpdateState::Staged => UpdateState::Staged,
            updog::updater::UpdateState::Ready => UpdateState::Ready,
            _ => remembered.refreshed,
        };
        let running = &disk.running;
        let active_partition = Some(StagedImage {
            image: Some(UpdateImage {
                arch: running.arch.clone(),
                version: running.version.clone(),
                variant: running.variant.clone(),
            }),
            next_to_boot: disk.next_boot == Some(running.set),
        });
        let staging_partition = match (&disk.staged, update_state) {
            (Some(r), _) => Some(StagedImage {
                image: Some(UpdateImage {
                    arch: r.arch.clone(),
                    version: r.version.clone(),
                    variant: r.variant.clone(),
                }),
                next_to_boot: disk.next_boot == Some(r.set),
            }),
            // Applied without a record (root's record unreadable, or lost): the next boot
            // tries it all the same.
            (None, UpdateState::Ready) => Some(StagedImage {
                image: None,
                next_to_boot: true,
            }),
            (None, _) => None,
        };
        Ok(UpdateStatus {
            update_state,
            available_updates: remembered.available_updates.clone(),
            chosen_update: remembered.chosen_update.clone(),
            active_partition,
            staging_partition,
            most_recent_command: remembered.most_recent_command.clone(),
            staged_record_problem: disk.record_problem,
            failed_boots: disk.failed_boots.into_iter().map(|f| f.version).collect(),
            running_command: None,
        })
    }

    fn explain(&self, e: &UpdateError) -> String {
        // One line, as `updog` prints it.
        updog::advice::explain(e, self.updater.config(), &self.options.config_path)
            .replace('\n', " ")
    }

    /// `POST /actions/...`: checks the state machine and starts the command, or refuses.
    fn command(self: &Arc<Self>, cmd: UpdateCommand) -> Response {
        let mut inner = self.inner();
        if let Some(running) = &inner.running {
            return Response::text(
                423,
                format!("{LOCK_HELD}: {} is running", running.cmd.name()),
            );
        }
        if let Some(locked) = self.locked_elsewhere() {
            return locked;
        }
        // As the reference, any command initializes the status, also one that is refused.
        if inner.remembered.is_none() {
            inner.remembered = Some(Remembered::new());
            self.persist(inner.remembered.as_ref());
        }
        let remembered = inner.remembered.clone().unwrap_or_else(Remembered::new);
        let status = match self.derive(&remembered) {
            Ok(s) => s,
            Err(e) => return Response::text(500, self.explain(&e)),
        };
        let state = status.update_state;
        let refused = |what: &str| {
            Response::text(
                409,
                format!("{DISALLOWED}: {what} is not allowed while {state:?}"),
            )
        };
        let staged_version = status
            .staging_partition
            .as_ref()
            .and_then(|s| s.image.as_ref())
            .map(|i| i.version.clone());
        let lock = match (cmd, state) {
            (UpdateCommand::Refresh, _) => None,
            (UpdateCommand::Prepare, UpdateState::Available | UpdateState::Staged) => {
                if remembered.chosen_update.is_none() {
                    return Response::text(404, NO_CHOSEN_UPDATE);
                }
                Some(self.updater.lock())
            }
            (UpdateCommand::Activate, UpdateState::Staged) => {
                let Some(staged) = staged_version else {
                    return Response::text(404, NO_STAGED_IMAGE);
                };
                // Ours: activate only the update that was chosen (the reference assumes it).
                if let Some(chosen) = &remembered.chosen_update
                    && chosen.version != staged
                {
                    return Response::text(
                        409,
                        format!(
                            "{DISALLOWED}: {staged} is staged, but the chosen update is {}: prepare-update first",
                            chosen.version
                        ),
                    );
                }
                Some(self.updater.lock())
            }
            (UpdateCommand::Deactivate, UpdateState::Ready) => {
                if status.staging_partition.is_none() {
                    return Response::text(404, NO_STAGED_IMAGE);
                }
                Some(self.updater.lock())
            }
            (other, _) => return refused(other.name()),
        };
        let lock = match lock.transpose() {
            Ok(lock) => lock,
            Err(UpdateError::Lock(e)) => {
                return Response::text(
                    423,
                    format!("{LOCK_HELD}: {e}", e = updog::advice::error_chain(&e)),
                );
            }
            Err(e) => return Response::text(500, self.explain(&e)),
        };
        let running = Running {
            cmd,
            started: Utc::now(),
            progress: Arc::new(Mutex::new(ProgressMeter::default())),
            cancel: CancelHandle::new(),
        };
        let job = Job {
            cmd,
            lock,
            chosen: remembered.chosen_update.clone(),
            plan: inner.plan.take(),
            progress: Arc::clone(&running.progress),
            cancel: running.cancel.clone(),
        };
        let service = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("update-api-{}", cmd.name()))
            .spawn(move || service.run_job(job));
        match spawned {
            Ok(handle) => {
                inner.running = Some(running);
                if let Some(old) = inner.worker.replace(handle) {
                    // Finished already: it cleared `running` before it ended.
                    let _ = old.join();
                }
                log::info!("{} accepted (state {state:?})", cmd.name());
                Response::no_content()
            }
            Err(e) => Response::text(
                500,
                format!(
                    "starting the {} command: {e}",
                    cmd.name(),
                    e = updog::advice::error_chain(&e)
                ),
            ),
        }
    }

    /// Runs a command to its end and records how it ended.
    fn run_job(self: Arc<Self>, job: Job) {
        let cmd = job.cmd;
        let outcome = self.execute(job);
        let mut inner = self.inner();
        let mut remembered = inner.remembered.clone().unwrap_or_else(Remembered::new);
        if let Some(found) = outcome.refresh {
            remembered.available_updates = found.available_updates;
            if let Some((image, plan)) = found.chosen {
                remembered.chosen_update = Some(image);
                remembered.refreshed = UpdateState::Available;
                inner.plan = Some(plan);
            } else {
                remembered.chosen_update = None;
                remembered.refreshed = UpdateState::Idle;
                inner.plan = None;
            }
        } else if cmd == UpdateCommand::Refresh {
            // A failed refresh: as the reference, `Available` falls back to `Idle`.
            remembered.refreshed = UpdateState::Idle;
        }
        let (cmd_status, exit_status, stderr) = match &outcome.result {
            Ok(()) => (CommandStatus::Success, 0, String::new()),
            Err((code, message)) => (CommandStatus::Failed, *code, message.clone()),
        };
        match &outcome.result {
            Ok(()) => log::info!("{} succeeded", cmd.name()),
            Err((_, message)) => log::warn!("{} failed: {message}", cmd.name()),
        }
        remembered.most_recent_command = Some(CommandResult {
            cmd_type: cmd,
            cmd_status,
            timestamp: Utc::now(),
            exit_status: Some(exit_status),
            stderr: Some(stderr),
        });
        self.persist(Some(&remembered));
        inner.remembered = Some(remembered);
        inner.running = None;
    }

    fn execute(&self, job: Job) -> Outcome {
        let failed = |e: &UpdateError| Err((i32::from(e.exit_code()), self.explain(e)));
        let ok = Outcome {
            result: Ok(()),
            refresh: None,
        };
        // The disk lock is released (dropped) before the outcome is recorded, so that the
        // next request does not find it held.
        match job.cmd {
            UpdateCommand::Refresh => match self.refresh(&job.cancel) {
                Ok(found) => Outcome {
                    result: Ok(()),
                    refresh: Some(found),
                },
                Err(e) => Outcome {
                    result: failed(&e),
                    refresh: None,
                },
            },
            UpdateCommand::Prepare => {
                let Some(lock) = job.lock else {
                    return Outcome {
                        result: Err((1, "internal error: prepare without the disk lock".into())),
                        refresh: None,
                    };
                };
                let result = self.prepare(&lock, job.chosen, job.plan, &job.progress, &job.cancel);
                drop(lock);
                Outcome {
                    result: match result {
                        Ok(()) => Ok(()),
                        Err(PrepareError::Update(e)) => failed(&e),
                        Err(PrepareError::Other(message)) => Err((1, message)),
                    },
                    refresh: None,
                }
            }
            UpdateCommand::Activate | UpdateCommand::Deactivate => {
                let Some(lock) = job.lock else {
                    return Outcome {
                        result: Err((1, "internal error: no disk lock".into())),
                        refresh: None,
                    };
                };
                let result = if job.cmd == UpdateCommand::Activate {
                    self.updater.apply_cancellable(&lock, &job.cancel)
                } else {
                    self.updater.revert(&lock)
                };
                drop(lock);
                match result {
                    Ok(set) => {
                        log::info!("set {set} boots next");
                        ok
                    }
                    Err(e) => Outcome {
                        result: failed(&e),
                        refresh: None,
                    },
                }
            }
        }
    }

    /// Refresh: the offered versions (`updog whats --all`) and the chosen update
    /// (`updog check-update`: version lock, waves and failed boots honoured).
    fn refresh(&self, cancel: &CancelHandle) -> Result<RefreshFound, UpdateError> {
        let opts = CheckOptions::default();
        let check = self.updater.check_cancellable(&opts, cancel)?;
        let available_updates = self
            .updater
            .list_updates(&opts)?
            .into_iter()
            .map(|u| u.version)
            .collect();
        let chosen = match check.outcome {
            CheckOutcome::Available(a) => Some((
                UpdateImage {
                    arch: a.update.arch.clone(),
                    version: a.update.version.clone(),
                    variant: a.update.variant.clone(),
                },
                a.plan,
            )),
            // A variant the repository does not offer is a mistake, not "nothing to do".
            CheckOutcome::NoUpdate(reason) if updog::advice::is_misconfiguration(&reason) => {
                return Err(UpdateError::NoUpdate(Box::new(reason)));
            }
            CheckOutcome::NoUpdate(reason) => {
                log::info!("no update chosen: {reason}");
                None
            }
        };
        Ok(RefreshFound {
            available_updates,
            chosen,
        })
    }

    /// Prepare: stages exactly the chosen update (its plan from the refresh when there is
    /// one; `stage_plan` refuses if the repository changed it since) and checks that what is
    /// staged is that update.
    fn prepare(
        &self,
        lock: &UpdateLock,
        chosen: Option<UpdateImage>,
        plan: Option<UpdatePlan>,
        meter: &Arc<Mutex<ProgressMeter>>,
        cancel: &CancelHandle,
    ) -> Result<(), PrepareError> {
        let Some(chosen) = chosen else {
            return Err(PrepareError::Other(NO_CHOSEN_UPDATE.to_string()));
        };
        let plan = match plan.filter(|p| p.version() == &chosen.version) {
            Some(plan) => plan,
            // No plan kept (the service restarted since the refresh): choose again.
            None => match self.updater.check(&CheckOptions::default())?.outcome {
                CheckOutcome::Available(a) if a.update.version == chosen.version => a.plan,
                CheckOutcome::Available(a) => {
                    return Err(PrepareError::Other(format!(
                        "the chosen update {} is no longer the one this host would take ({} is): refresh-updates again",
                        chosen.version, a.update.version
                    )));
                }
                CheckOutcome::NoUpdate(reason) => {
                    return Err(PrepareError::Other(format!(
                        "the chosen update {} is no longer offered to this host ({reason}): refresh-updates again",
                        chosen.version
                    )));
                }
            },
        };
        let progress = |event: &ProgressEvent| {
            if let Ok(mut m) = meter.lock() {
                m.event(event);
            }
        };
        let staged = self.updater.stage_plan(lock, plan, &progress, cancel)?;
        if staged.version != chosen.version {
            return Err(PrepareError::Other(format!(
                "{} was staged on set {}, not the chosen update {}",
                staged.version, staged.set, chosen.version
            )));
        }
        if staged.already_staged {
            log::info!(
                "{} is already staged on set {}: nothing was downloaded or written",
                staged.version,
                staged.set
            );
        }
        Ok(())
    }

    /// `POST /actions/reboot`: the configured reboot command (the library's hand-off: a
    /// command ended by SIGTERM is a reboot under way).
    fn reboot(&self) -> Response {
        if let Some(running) = &self.inner().running {
            return Response::text(
                423,
                format!("{LOCK_HELD}: {} is running", running.cmd.name()),
            );
        }
        match self.updater.reboot() {
            Ok(()) => Response::no_content(),
            Err(e) => Response::text(500, format!("Failed to reboot: {}", self.explain(&e))),
        }
    }

    /// Stops a running command (at its next buffer; staging leaves the set cleared) and waits
    /// for it to end. For the server's shutdown.
    pub fn shutdown(&self) {
        let worker = {
            let mut inner = self.inner();
            if let Some(r) = &inner.running {
                log::info!("stopping the running {}", r.cmd.name());
                r.cancel.cancel();
            }
            inner.worker.take()
        };
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }

    /// Whether a command is running.
    pub fn is_busy(&self) -> bool {
        self.inner().running.is_some()
    }

    fn persist(&self, remembered: Option<&Remembered>) {
        if let Some(r) = remembered
            && let Err(e) = write_state(&self.options.status_file, r)
        {
            // The state in memory still answers; a restart would lose it.
            log::warn!("{e}", e = updog::advice::error_chain(&e));
        }
    }
}

/// What a command thread takes along.
struct Job {
    cmd: UpdateCommand,
    lock: Option<UpdateLock>,
    chosen: Option<UpdateImage>,
    plan: Option<UpdatePlan>,
    progress: Arc<Mutex<ProgressMeter>>,
    cancel: CancelHandle,
}

enum PrepareError {
    Update(UpdateError),
    Other(String),
}

impl From<UpdateError> for PrepareError {
    fn from(e: UpdateError) -> Self {
        PrepareError::Update(e)
    }
}

/// Turns progress events into bytes, rate and time left.
#[derive(Default)]
struct ProgressMeter {
    progress: Progress,
    first_byte: Option<(Instant, u64)>,
}

impl ProgressMeter {
    fn event(&mut self, event: &ProgressEvent) {
        if let Ok(value) = serde_json::to_value(event)
            && let Some(name) = value.get("event").and_then(|v| v.as_str())
        {
            name.clone_into(&mut self.progress.step);
        }
        if let ProgressEvent::Image {
            image,
            update_done,
            update_total,
            ..
        } = event
        {
            self.progress.image = Some(image.to_string());
            self.progress.bytes_done = *update_done;
            self.progress.bytes_total = *update_total;
            let (since, from) = *self
                .first_byte
                .get_or_insert((Instant::now(), *update_done));
            let secs = since.elapsed().as_secs_f64();
            if secs > 0.2 && *update_done > from {
                let rate = (*update_done - from) as f64 / secs;
                self.progress.bytes_per_sec = rate as u64;
                let left = update_total.saturating_sub(*update_done) as f64;
                self.progress.secs_left = Some((left / rate).ceil() as u64);
            }
        }
    }
}

fn read_state(path: &Path) -> Option<Remembered> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "reading {}: {e}; starting uninitialized",
                path.display(),
                e = updog::advice::error_chain(&e)
            );
            return None;
        }
    };
    let mut text = Vec::new();
    if let Err(e) = file.take(MAX_STATUS_FILE).read_to_end(&mut text) {
        log::warn!(
            "reading {}: {e}; starting uninitialized",
            path.display(),
            e = updog::advice::error_chain(&e)
        );
        return None;
    }
    match serde_json::from_slice(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!(
                "{} is not valid: {e}; starting uninitialized",
                path.display(),
                e = updog::advice::error_chain(&e)
            );
            None
        }
    }
}

fn write_state(path: &Path, remembered: &Remembered) -> Result<(), StateFileError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| StateFileError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let text = serde_json::to_vec_pretty(remembered).map_err(|e| err(e.into()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A fresh file (never through a symlink or a file someone else left there); the rename
    // replaces the name, never what a link at it points to.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&text).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// `PRETTY_NAME` from an os-release file.
fn pretty_name(os_release: &Path) -> Option<String> {
    let text = std::fs::read_to_string(os_release).ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?.trim();
        Some(
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_a_bad_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/status.json");
        let mut r = Remembered::new();
        r.available_updates = vec![Version::new(1, 1, 0)];
        write_state(&path, &r).unwrap();
        assert_eq!(read_state(&path), Some(r));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(read_state(&path), None);
        assert_eq!(read_state(&dir.path().join("missing")), None);
    }

    #[test]
    fn pretty_name_is_unquoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("os-release");
        std::fs::write(&path, "NAME=x\nPRETTY_NAME=\"Demo OS 1.0\"\n").unwrap();
        assert_eq!(pretty_name(&path).as_deref(), Some("Demo OS 1.0"));
    }

    #[test]
    fn the_meter_computes_rate_and_time_left() {
        let mut m = ProgressMeter::default();
        let image = |done| ProgressEvent::Image {
            image: updog::ImageKind::Root,
            target: "root".into(),
            done,
            total: 1000,
            update_done: done,
            update_total: 1000,
        };
        m.event(&image(0));
        std::thread::sleep(std::time::Duration::from_millis(300));
        m.event(&image(500));
        assert_eq!(m.progress.step, "image");
        assert_eq!(m.progress.bytes_done, 500);
        assert!(m.progress.bytes_per_sec > 0);
        assert!(m.progress.secs_left.is_some());
    }
}
