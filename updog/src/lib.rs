//! The updater library: TUF client, transports, update selection glue, the streaming image
//! writer, the update/apply/revert flow; and the thin `updog` CLI.

pub mod config;
pub mod exit;
pub mod lock;
pub mod migrations;
pub mod os_release;
pub mod pipeline;
pub mod progress;
pub mod reboot;
pub mod status;
pub mod transport;
pub mod tuf;
pub mod updater;
