//! The end-to-end tests: one test binary (one link of the whole updater) of one module per
//! subject. Run one module with `cargo nextest run -p e2e-tests -E 'test(/^MODULE::/)'`.

mod agent_api;
mod crash_points;
mod delta;
mod dropin;
mod e2e;
mod e2e_network;
mod embed;
mod library;
mod logging;
mod migrations_fetch;
mod mistakes;
mod ownership;
mod packaging;
mod playground;
mod publishing;
mod real_boot;
mod units;
mod updata_delta;
mod update_api;
