//! Options shared by the standalone agent and the controller's local agent.

use std::path::PathBuf;

use crate::apps::HostRoot;
use crate::hooks::Hooks;
use crate::services::Tools;
use crate::services::conn::ConnInfo;
use crate::services::records::Records;
use crate::state::AgentState;

/// How an agent serves its host.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentOptions {
    /// The host's HOP3_ROOT: apps live in ROOT/apps/<app>.
    #[arg(long, env = "HOP3_ROOT", default_value = "/home/hop3")]
    pub root: PathBuf,
    /// This host's name in the fleet [default: the machine's host name].
    #[arg(long, env = "HOP3_HOST_ID")]
    pub host_id: Option<String>,
    /// Command that stops an app before a restore swaps it (run with sh -c; HOP3_APP is set).
    #[arg(long, env = "HOP3_STOP_CMD")]
    pub stop_cmd: Option<String>,
    /// Command that starts an app after a restore (run with sh -c; HOP3_APP is set).
    #[arg(long, env = "HOP3_START_CMD")]
    pub start_cmd: Option<String>,
    /// Backups and restores run at once on this host; more wait their turn.
    #[arg(long, env = "HOP3_MAX_JOBS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_jobs: u32,
    /// Seconds of silence from the other side after which a backup or restore
    /// stream is given up.
    #[arg(long, env = "HOP3_IDLE_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Directory of pg_dump and psql [default: found on PATH].
    #[arg(long, env = "HOP3_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Directory of mysqldump and mysql [default: found on PATH].
    #[arg(long, env = "HOP3_MYSQL_BIN")]
    pub mysql_bin: Option<PathBuf>,
    /// Administrative PostgreSQL connections, postgresql://USER:PW@HOST:PORT/DB,
    /// several separated by spaces, one per server (matched to a service by
    /// host and port): they create the scratch databases of app roles without
    /// CREATEDB, hand them to those roles, and rename. They hold passwords:
    /// set HOP3_PG_ADMIN_URL or pg_admin_url in the config file, not this
    /// flag, which every user of the host can read in the process list.
    #[arg(
        long,
        env = "HOP3_PG_ADMIN_URL",
        hide_env_values = true,
        value_name = "URLS"
    )]
    pub pg_admin_url: Option<Secret>,
    /// The user (name or uid) a restore into a new app gives its files to
    /// [default: the owner the backup recorded]. An existing app's files
    /// always go to the owner of its directory.
    #[arg(long, env = "HOP3_APP_USER", value_name = "USER")]
    pub app_user: Option<String>,
}

/// The `(uid, gid)` of `user`, a name or a number; None (logged) when unknown.
fn app_user(user: Option<&str>) -> Option<(u32, u32)> {
    let user = user?;
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Some((u.uid.as_raw(), u.gid.as_raw())),
        _ => match user.parse::<u32>() {
            // A uid without a passwd entry: its own number as the group.
            Ok(uid) => Some((uid, uid)),
            Err(_) => {
                tracing::error!(
                    user,
                    "unknown --app-user; new apps keep the owner their backup recorded"
                );
                None
            }
        },
    }
}

/// A setting that holds a password: never shown by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The administrative connections of `--pg-admin-url`; an entry that is
/// not a URL is reported (by its position: it holds a password) and left out.
fn pg_admin(urls: Option<&Secret>) -> Vec<ConnInfo> {
    if std::env::args_os().any(|a| a.to_string_lossy().starts_with("--pg-admin-url")) {
        tracing::warn!(
            "--pg-admin-url is on the command line, where every user of this host can read it; set HOP3_PG_ADMIN_URL or pg_admin_url in the config file instead"
        );
    }
    let Some(Secret(urls)) = urls else {
        return Vec::new();
    };
    urls.split_whitespace()
        .enumerate()
        .filter_map(|(i, url)| {
            let what = format!("administrative PostgreSQL connection {}", i + 1);
            ConnInfo::parse(&what, url)
                .map_err(|e| tracing::error!(error = %e, "left out"))
                .ok()
        })
        .collect()
}

impl AgentOptions {
    /// The state an agent with these options serves.
    pub fn state(&self) -> AgentState {
        let root = HostRoot::new(&self.root);
        AgentState {
            host_id: self.host_id.clone().unwrap_or_else(default_host_id),
            hooks: Hooks {
                stop: self.stop_cmd.clone(),
                start: self.start_cmd.clone(),
            },
            tools: Tools {
                pg_bin: self.pg_bin.clone(),
                mysql_bin: self.mysql_bin.clone(),
                pg_admin: pg_admin(self.pg_admin_url.as_ref()),
                records: Records::new(root.state_dir()),
                host: root.clone(),
            },
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
            jobs: std::sync::Arc::new(tokio::sync::Semaphore::new(self.max_jobs as usize)),
            app_user: app_user(self.app_user.as_deref()),
            root,
        }
    }
}

fn default_host_id() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
