//! The updater library: TUF client, transports, update selection glue, the streaming image
//! writer, the update/apply/revert flow; and the thin `updog` CLI.

pub mod pipeline;
pub mod transport;
pub mod tuf;
