//! hop3-agent: serves one host's apps to the controller. It archives an app
//! (git repository, deployed tree, data, environment) as a stream of chunked,
//! hashed artifacts, and restores a streamed backup by staging it beside the
//! app and swapping it in.

pub mod apps;
pub mod archive;
pub mod backup;
pub mod callers;
pub mod chunks;
pub mod config;
pub mod config_file;
pub mod demo;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod hooks;
pub mod join_token;
pub mod logging;
pub mod memory;
pub mod owners;
pub mod progress;
pub mod restore;
pub mod server;
pub mod service;
pub mod services;
pub mod state;
pub mod swap;
pub mod tls;
pub mod trees;

pub use config::AgentOptions;
pub use error::AgentError;
pub use state::AgentState;
