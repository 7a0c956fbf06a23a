//! hop3-controller: holds the backup catalog and the store, and orchestrates
//! backups and restores through the hosts' agents.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod certs;
pub mod config;
pub mod create;
pub mod error;
pub mod import_source;
pub mod in_process;
pub mod locks;
pub mod recovery;
pub mod registry;
pub mod restore;
pub mod seal;
pub mod server;
pub mod socket;
pub mod state;
pub mod store;
pub mod tokens;

pub use config::Config;
