//! The controller's command line (each flag has an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use hop3_agent::AgentOptions;

/// hop3-backup controller: holds the backup catalog and store, and
/// orchestrates backups and restores through the hosts' agents.
#[derive(Debug, clap::Parser)]
#[command(name = "hop3-controller", version)]
pub struct Config {
    /// Address to serve the gRPC API (CLI and agents) on.
    #[arg(long, env = "HOP3_LISTEN", default_value = "127.0.0.1:7410")]
    pub listen: SocketAddr,
    /// The backup store: backups live in STORE/apps/<app>/<id>/.
    #[arg(long, env = "HOP3_STORE", default_value = "/var/hop3/backups")]
    pub store: PathBuf,
    /// The catalog database [default: sqlite://STORE/catalog.db].
    #[arg(long, env = "HOP3_CATALOG")]
    pub catalog: Option<String>,
    /// Also serve this host's apps with an agent inside this process.
    #[arg(long, env = "HOP3_LOCAL_AGENT")]
    pub local_agent: bool,
    /// TOML file of settings, keyed by flag name (flags and environment win over it).
    #[arg(long, env = "HOP3_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentOptions,
}

impl Config {
    /// The catalog URL, defaulting to a SQLite file in the store.
    pub fn catalog_url(&self) -> String {
        self.catalog
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.store.join("catalog.db").display()))
    }
}
