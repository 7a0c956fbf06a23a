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
    #[arg(
        long,
        env = "HOP3_STORE",
        default_value = "/var/hop3/backups",
        global = true
    )]
    pub store: PathBuf,
    /// The catalog database: sqlite://PATH or postgres://USER:PW@HOST/DB [default: sqlite://STORE/catalog.db].
    #[arg(long, env = "HOP3_CATALOG", global = true)]
    pub catalog: Option<String>,
    /// Also serve this host's apps with an agent inside this process.
    #[arg(long, env = "HOP3_LOCAL_AGENT")]
    pub local_agent: bool,
    /// Serve TLS with the certificates in DIR (from `certs init`): agents must
    /// present certificates of their host, the CLI a token (tokens create).
    #[arg(long, env = "HOP3_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Allow plain, unauthenticated gRPC on a non-loopback address.
    #[arg(long, env = "HOP3_INSECURE")]
    pub insecure: bool,
    /// TOML file of settings, keyed by flag name (flags and environment win over it).
    #[arg(long, env = "HOP3_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentOptions,
    #[command(subcommand)]
    pub command: Option<Admin>,
}

/// Administration commands (the server runs when none is given).
#[derive(Debug, clap::Subcommand)]
pub enum Admin {
    /// Certificates for mutual TLS between the controller and its agents.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// API tokens of the CLI (HOP3_TOKEN); only their hashes are stored.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

/// `hop3-controller certs ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the certificate authority and the controller's certificate.
    Init {
        /// Where to write ca.pem, ca.key, hop3-controller.pem and .key.
        #[arg(long, default_value = "/etc/hop3/tls")]
        dir: PathBuf,
        /// Host names or IPs the controller is reached at (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Issue an agent's certificate for host HOST.
    IssueAgent {
        /// The agent's host id.
        host: String,
        /// The authority's directory (from certs init).
        #[arg(long, default_value = "/etc/hop3/tls")]
        dir: PathBuf,
        /// Where to write HOST.pem, HOST.key and ca.pem [default: DIR].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `hop3-controller tokens ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it once.
    Create { name: String },
    /// Revoke a token.
    Revoke { name: String },
    /// List tokens (names and dates; tokens themselves are not kept).
    List,
}

impl Config {
    /// The catalog URL, defaulting to a SQLite file in the store.
    pub fn catalog_url(&self) -> String {
        self.catalog
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.store.join("catalog.db").display()))
    }
}
