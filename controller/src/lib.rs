//! hop3-controller: holds the backup catalog and the store, and orchestrates
//! backups and restores through the hosts' agents.
//!
//! Public: what the `hop3-controller` binary's subcommands call (serving,
//! certificates, tokens and what they read); everything else is private.

pub mod alerts;
mod api;
pub mod auth;
pub mod catalog;
pub mod certs;
pub mod config;
mod copies;
mod create;
mod decrypt;
mod delete;
mod error;
#[cfg(test)]
mod fake_agent;
mod import_source;
mod in_process;
pub mod keys;
mod locks;
mod pin;
mod prune;
pub mod recovery;
mod registry;
mod restore;
pub mod retention;
mod retire;
pub mod schedule;
pub mod scheduler;
mod schedules;
mod seal;
pub mod server;
mod socket;
mod state;
pub mod store;
mod sweep;
mod telemetry;
pub mod tokens;

/// The controller's settings (flags, environment, config file).
pub use config::Config;
/// What can go wrong in the controller.
pub use error::ControllerError;
