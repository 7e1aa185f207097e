//! The update part of Bottlerocket's API on a Unix socket, over the `updog` library in
//! process: what Bottlerocket's `apiclient update check|apply|cancel` and its update operator
//! (brupop) drive on a Bottlerocket host, for any host running this updater.
//!
//! | request | answer |
//! |---|---|
//! | `GET /updates/status` | the status object ([`model::UpdateStatus`]); 404 before the first command, 423 while one runs (its progress in the body) |
//! | `POST /actions/refresh-updates` | 204: refresh the offered updates and choose one |
//! | `POST /actions/prepare-update` | 204: stage the chosen update (409 unless `Available`/`Staged`, 404 without one) |
//! | `POST /actions/activate-update` | 204: point the boot flags at it (409 unless `Staged`) |
//! | `POST /actions/deactivate-update` | 204: undo that (409 unless `Ready`) |
//! | `POST /actions/reboot` | 204 once the configured reboot command has run |
//! | `GET /os` | `pretty_name`, `variant_id`, `version_id`, `build_id`, `arch` |
//!
//! Commands run in the background, one at a time (423 for another); their result is the
//! status's `most_recent_command`. The state machine is in [`service`]; the bounded HTTP/1.1
//! handling in [`http`]; the socket (systemd socket activation or a path) and the accept loop
//! in [`server`]. `updog serve` (package `updog-cli`) is the program.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicBool;
//! use update_api::server::{self, ServerOptions};
//! use update_api::service::{Service, ServiceOptions};
//! use updog::config::Config;
//! use updog::updater::Updater;
//!
//! let (config, _warnings) = Config::from_path("/etc/updog.toml".as_ref())?;
//! let service = Arc::new(Service::new(Updater::new(config)?, ServiceOptions::default()));
//! let listener = match server::listener_from_systemd()? {
//!     Some(listener) => listener,
//!     None => server::bind("/run/api.sock".as_ref())?,
//! };
//! // A signal handler sets `stop`; `serve` then stops a running command and returns.
//! let stop = AtomicBool::new(false);
//! server::serve(&listener, &service, &stop, ServerOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod http;
pub mod model;
pub mod server;
pub mod service;

pub use server::{ServerOptions, bind, listener_from_systemd, serve};
pub use service::{Service, ServiceOptions};
