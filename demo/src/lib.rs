//! The demo application deployctl rolls forward and back: an HTTP service keeping items in
//! SQLite, whose version 2 migrates the data irreversibly, with switches to make a release
//! misbehave on purpose. See `demo/README.md` for flags, env, endpoints and faults.

pub mod checksum;
pub mod commands;
pub mod config;
pub mod db;
pub mod dump;
pub mod faults;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod migrations;
pub mod proxy;
pub mod server;
