//! hop3-agent: serves one host's apps to the controller. It archives an app
//! (git repository, deployed tree, data, environment) as a stream of chunked,
//! hashed artifacts, and restores a streamed backup by staging it beside the
//! app and swapping it in.

mod app_watch;
mod apps;
mod archive;
mod backup;
mod callers;
mod config;
mod demo;
mod encrypt;
mod error;
mod failpoint;
mod hooks;
mod owners;
mod restore;
pub mod server;
mod service;
mod services;
mod state;
mod swap;
mod trees;

/// The host's app list, kept current (what heartbeats report).
pub use app_watch::{AppsSeen, watch as watch_apps};
/// A host's Hop3 root (`apps/` and the agent's state directory).
pub use apps::HostRoot;
/// Who may call the agent: the controller by TLS name, by call token, or in-process.
pub use callers::{Callers, ControllerToken};
/// The agent's settings (flags, environment, config file).
pub use config::AgentOptions;
/// Makes the quick start's demo app.
pub use demo::make as make_demo_app;
/// What can go wrong in the agent.
pub use error::AgentError;
/// What one agent serves with: its root, hooks and tools.
pub use state::AgentState;
