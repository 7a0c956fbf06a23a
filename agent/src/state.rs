//! What every request handler of an agent shares.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::apps::HostRoot;
use crate::hooks::Hooks;
use crate::services::Tools;

/// An agent's configuration and host, shared by its handlers.
#[derive(Clone, Debug)]
pub struct AgentState {
    /// This host's `HOP3_ROOT`.
    pub root: HostRoot,
    /// This host's name in the fleet.
    pub host_id: String,
    /// Commands that stop and start apps around a restore.
    pub hooks: Hooks,
    /// Where the database dump and load tools are.
    pub tools: Tools,
    /// Longest silence accepted from the controller in the middle of a restore.
    pub idle_timeout: std::time::Duration,
    /// Permits for backups and restores running at once on this host.
    pub jobs: Arc<Semaphore>,
    /// `(uid, gid)` of `--app-user`: who a new app belongs to.
    pub app_user: Option<(u32, u32)>,
}
