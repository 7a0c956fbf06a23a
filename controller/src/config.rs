//! The controller's command line (each flag has an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hop3_agent::AgentOptions;

use crate::store::{S3Options, StoreUrl};

/// Where the controller serves its Unix socket, and `hop3` looks for it.
pub const DEFAULT_SOCKET: &str = "/run/hop3-backup/controller.sock";

/// The group whose members may use the socket, when it exists.
pub const DEFAULT_SOCKET_GROUP: &str = "hop3-backup";

/// hop3-backup controller: holds the backup catalog and store, and
/// orchestrates backups and restores through the hosts' agents.
#[derive(Debug, clap::Parser)]
#[command(name = "hop3-controller", version)]
pub struct Config {
    /// Address to serve the gRPC API (CLI and agents) on.
    #[arg(long, env = "HOP3_LISTEN", default_value = "127.0.0.1:7410")]
    pub listen: SocketAddr,
    /// The backup store, where backups must land before they are COMPLETED:
    /// a directory (backups in STORE/apps/<app>/<id>/) or s3://BUCKET/PREFIX
    /// (S3 or an S3-compatible service; see the --aws-* settings).
    #[arg(
        long,
        env = "HOP3_STORE",
        default_value = "/var/hop3/backups",
        global = true
    )]
    pub store: StoreUrl,
    /// Where the controller keeps its own files: the seal key, the tokens,
    /// the join token and the default SQLite catalog [default: the store,
    /// when it is a directory; else /var/lib/hop3-backup].
    #[arg(long, env = "HOP3_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Another store every backup is copied to once COMPLETED (repeatable):
    /// a directory or s3://BUCKET/PREFIX, reached with the same --aws-*
    /// settings. Copies are checked by digest and retried until they succeed;
    /// a restore reads from the first that holds the backup whole.
    #[arg(long, env = "HOP3_COPY_TO", value_name = "URL", value_delimiter = ',')]
    pub copy_to: Vec<StoreUrl>,
    #[command(flatten)]
    pub s3: S3Flags,
    /// How often the store is swept of what failed writes and deletes
    /// left (abandoned multipart uploads, objects of no backup); the
    /// backups being written are spared.
    #[arg(long, env = "HOP3_STORE_SWEEP_INTERVAL", value_name = "DURATION", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub store_sweep_interval: Duration,
    /// The catalog database: sqlite://PATH or postgres://USER:PW@HOST/DB [default: sqlite://STATE_DIR/catalog.db].
    #[arg(long, env = "HOP3_CATALOG", global = true)]
    pub catalog: Option<String>,
    /// The CLI's Unix socket: root, the controller's user and the members of
    /// --socket-group use it with no token (`hop3` finds it by itself).
    #[arg(
        long,
        env = "HOP3_SOCKET",
        value_name = "PATH",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// The group (name or number) whose members may use the socket
    /// [default: hop3-backup, when it exists; not the group apps run as,
    /// whose processes would then reach every app's backups].
    #[arg(long, env = "HOP3_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// `backup:import` reads backup directories from below DIR only, owned
    /// by the controller's user [default: STORE/import].
    #[arg(long, env = "HOP3_IMPORT_DIR", value_name = "DIR")]
    pub import_dir: Option<PathBuf>,
    /// Also serve this host's apps with an agent inside this process.
    #[arg(long, env = "HOP3_LOCAL_AGENT")]
    pub local_agent: bool,
    /// Serve TLS with the certificates in DIR (from `certs init`): agents must
    /// present certificates of their host, the CLI a token (tokens create).
    #[arg(long, env = "HOP3_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Forget agents not heard from for this long (e.g. 7d, 36h, 90m; at
    /// least 15s), so that hosts gone for good leave `agent:list`; `never`
    /// keeps them until `hop3 agent:forget HOST`.
    #[arg(
        long,
        env = "HOP3_FORGET_AGENTS_AFTER",
        value_name = "DURATION",
        default_value = "7d",
        value_parser = parse_expiry
    )]
    pub forget_agents_after: Expiry,
    /// Scheduled backups start a fixed delay (a hash of the app and
    /// schedule names) under this after their slot, and under a quarter of
    /// the schedule's period, so that many apps on `@daily` do not all
    /// start at midnight; 0s turns it off.
    #[arg(long, env = "HOP3_SCHEDULE_SPREAD", value_name = "DURATION", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub schedule_spread: Duration,
    /// A slot missed (the controller was down) by more than this is
    /// recorded as skipped instead of run late [default: the schedule's
    /// period].
    #[arg(long, env = "HOP3_SCHEDULE_LATENESS", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub schedule_lateness: Option<Duration>,
    /// Attempts per scheduled slot: a failed backup is retried, with a
    /// backoff doubled each time, while the next slot is not due.
    #[arg(long, env = "HOP3_SCHEDULE_ATTEMPTS", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub schedule_attempts: u32,
    /// The wait before the first retry of a failed scheduled backup.
    #[arg(long, env = "HOP3_SCHEDULE_RETRY_BACKOFF", value_name = "DURATION", default_value = "1m",
          value_parser = humantime::parse_duration)]
    pub schedule_retry_backoff: Duration,
    /// How long a scheduled backup waits for a backup or restore of its app
    /// to end before its slot is recorded as skipped.
    #[arg(long, env = "HOP3_SCHEDULE_BUSY_WAIT", value_name = "DURATION", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub schedule_busy_wait: Duration,
    /// A schedule is overdue when no success came within its interval plus
    /// this [default: half the interval, at least 1m].
    #[arg(long, env = "HOP3_OVERDUE_GRACE", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub overdue_grace: Option<Duration>,
    /// POST a JSON alert here for every failed or skipped scheduled run,
    /// retention failure, recovery and overdue schedule (repeatable; in the
    /// config file, a list). Signed with the key of --alert-secret-file or
    /// HOP3_ALERT_SECRET (`X-Hop3-Signature: sha256=...`).
    #[arg(
        long,
        env = "HOP3_ALERT_WEBHOOK",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub alert_webhook: Vec<String>,
    /// A file holding the alerts' HMAC key (its first line); the key may
    /// also come in HOP3_ALERT_SECRET, never on the command line, where
    /// process lists show it.
    #[arg(long, env = "HOP3_ALERT_SECRET_FILE", value_name = "FILE")]
    pub alert_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (any path, e.g. /metrics).
    #[arg(long, env = "HOP3_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The age keys (`keys init`): recipients.txt, the public keys backups
    /// are encrypted to, and identity.txt, the private key restores open them
    /// with [default: keys/ beside the config file, /etc/hop3/keys].
    #[arg(long, env = "HOP3_KEYS_DIR", value_name = "DIR", global = true)]
    pub keys_dir: Option<PathBuf>,
    /// A file whose first line is the passphrase of an identity.txt that
    /// `keys init --passphrase` protected; or the passphrase itself in
    /// HOP3_KEYS_PASSPHRASE, never on the command line.
    #[arg(
        long,
        env = "HOP3_KEYS_PASSPHRASE_FILE",
        value_name = "FILE",
        global = true
    )]
    pub keys_passphrase_file: Option<PathBuf>,
    /// Seal backups in a local store too (they always are in an s3:// store
    /// or copy); needs the keys of `keys init`.
    #[arg(long, env = "HOP3_ENCRYPT")]
    pub encrypt: bool,
    /// Store backups in the clear in an s3:// store or copy, readable by
    /// whoever reads the bucket (env values, database rows, files).
    #[arg(long, env = "HOP3_ALLOW_PLAINTEXT_STORE")]
    pub allow_plaintext_store: bool,
    /// Allow plain gRPC (tokens and the join token sent in clear) on a
    /// non-loopback address.
    #[arg(long, env = "HOP3_INSECURE")]
    pub insecure: bool,
    /// TOML file of settings, keyed by flag name (flags and environment win over it).
    /// [default: HOP3_CONTROLLER_CONFIG, else /etc/hop3/controller.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How logs are written on stderr.
    #[arg(
        long,
        env = "HOP3_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: hop3_wire::logging::LogFormat,
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
    /// API tokens of the CLI (HOP3_TOKEN); only their hashes are kept, in STORE/tokens.json.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Check a store before backups go there.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The age keys backups are encrypted with (see --keys-dir).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `hop3-controller keys ...`
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make the controller's age identity (identity.txt, 0600) and print its
    /// public key (age1...). A lost identity means lost backups: keep a copy
    /// offline, or add an escrow key with add-recipient.
    Init {
        /// Encrypt identity.txt with the passphrase of --keys-passphrase-file
        /// or HOP3_KEYS_PASSPHRASE (as `age -p` does); the controller then
        /// needs it at every start.
        #[arg(long)]
        passphrase: bool,
    },
    /// Seal every new backup to this public key too (an escrow key kept on
    /// paper or a hardware token: its identity alone restores).
    AddRecipient {
        /// An age X25519 public key, age1...
        recipient: String,
        /// What the key is, written beside it in recipients.txt.
        #[arg(long, default_value = "added")]
        note: String,
    },
    /// The keys new backups are encrypted to, and which of them this
    /// controller holds the identity of.
    List,
    /// Make a new identity current: new backups are encrypted to it (and to
    /// the recipients whose identity is not here, such as an escrow key)
    /// instead of to this controller's older keys, whose identities stay in
    /// identity.txt for the backups encrypted to them. Restart the
    /// controller afterwards.
    Rotate,
    /// Retire a key: the running controller encrypts every backup sealed
    /// to it again, to recipients.txt, in the background (new objects
    /// first, checked, then the manifest switched, then the old objects
    /// removed); `keys list` shows how many are left. Once none is, the
    /// key's identity can be destroyed.
    Retire {
        /// The key: its id (as `keys list` shows it) or its age1... recipient.
        key: String,
    },
}

/// `hop3-controller store ...`
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Try what backups need of an s3:// store (a write, a ranged read, a
    /// 2-part multipart upload, a conditional create that must conflict, a
    /// listing, deletes) on canary objects it removes, and print what works.
    Check {
        /// The store, s3://BUCKET/PREFIX, reached with the --aws-* settings.
        url: StoreUrl,
    },
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
    /// Issue the controller's certificate again with the authority of DIR:
    /// for other names, or to add the marker agents check (certificates
    /// made before version 0.4 lack it).
    ReissueController {
        /// The authority's directory (from certs init).
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

/// How the controller reaches S3: the standard AWS variables, or the same
/// names in the config file (`aws_access_key_id = ...`). Keys never belong
/// on a command line, where process lists show them.
#[derive(Clone, clap::Args)]
pub struct S3Flags {
    /// The access key id [env: AWS_ACCESS_KEY_ID].
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true,
        global = true,
        value_name = "ID"
    )]
    pub aws_access_key_id: Option<String>,
    /// The secret key: from the environment or the config file only
    /// [env: AWS_SECRET_ACCESS_KEY].
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        global = true,
        value_name = "KEY"
    )]
    pub aws_secret_access_key: Option<String>,
    /// A session token of temporary credentials [env: AWS_SESSION_TOKEN].
    #[arg(
        long,
        env = "AWS_SESSION_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub aws_session_token: Option<String>,
    /// The bucket's region [env: AWS_REGION; default: us-east-1].
    #[arg(long, env = "AWS_REGION", global = true, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// The service's endpoint, for services other than AWS (R2, B2, MinIO,
    /// Garage, ...) [env: AWS_ENDPOINT_URL].
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true, value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Allow a plain http:// endpoint (a test server) [env: AWS_ALLOW_HTTP].
    #[arg(long, env = "AWS_ALLOW_HTTP", global = true)]
    pub aws_allow_http: bool,
    /// How long a failed request to the service is retried before the
    /// backup or restore fails.
    #[arg(long, env = "HOP3_STORE_RETRY_TIMEOUT", value_name = "DURATION", default_value = "3m",
          value_parser = humantime::parse_duration, global = true)]
    pub store_retry_timeout: Duration,
    /// The checksum the service checks every upload against: sha256,
    /// crc64nvme, or off for a service that refuses the headers.
    #[arg(
        long,
        env = "HOP3_S3_CHECKSUM",
        value_name = "ALGORITHM",
        default_value = "sha256",
        global = true
    )]
    pub s3_checksum: crate::store::UploadChecksum,
}

impl std::fmt::Debug for S3Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Flags")
            .field("aws_region", &self.aws_region)
            .field("aws_endpoint_url", &self.aws_endpoint_url)
            .finish_non_exhaustive()
    }
}

impl S3Flags {
    /// The options of the S3 client.
    pub fn options(&self) -> S3Options {
        S3Options {
            access_key_id: self.aws_access_key_id.clone(),
            secret_access_key: self.aws_secret_access_key.clone(),
            session_token: self.aws_session_token.clone(),
            region: self.aws_region.clone(),
            endpoint: self.aws_endpoint_url.clone(),
            allow_http: self.aws_allow_http,
            retry_timeout: Some(self.store_retry_timeout),
            checksum: self.s3_checksum,
        }
    }
}

/// How long a silent agent stays registered; None: until forgotten by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry(pub Option<Duration>);

/// `never`, or a humantime duration no shorter than the silence that makes
/// an agent offline (a shorter one could not take effect any sooner).
fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry(None));
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 7d, 36h or 90m, or never)"))?;
    let min = crate::registry::OFFLINE_AFTER;
    if d < min {
        return Err(format!(
            "{s} is shorter than the {}s of silence after which an agent is offline",
            min.as_secs()
        ));
    }
    Ok(Expiry(Some(d)))
}

impl Config {
    /// The catalog URL, defaulting to a SQLite file in the state directory.
    pub fn catalog_url(&self) -> String {
        self.catalog.clone().unwrap_or_else(|| {
            format!("sqlite://{}", self.state_dir().join("catalog.db").display())
        })
    }

    /// Where the controller keeps its own files.
    pub fn state_dir(&self) -> PathBuf {
        match (&self.state_dir, self.store.local()) {
            (Some(dir), _) => dir.clone(),
            (None, Some(root)) => root.to_owned(),
            (None, None) => PathBuf::from("/var/lib/hop3-backup"),
        }
    }

    /// The keys directory: `--keys-dir`, else `keys/` beside the config file.
    pub fn keys_dir(&self) -> crate::keys::KeysDir {
        let dir = self.keys_dir.clone().unwrap_or_else(|| {
            let config = self
                .config
                .clone()
                .or_else(|| {
                    std::env::var_os(hop3_wire::config_file::CONTROLLER_CONFIG.env)
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| {
                    PathBuf::from(hop3_wire::config_file::CONTROLLER_CONFIG.default)
                });
            config
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .join("keys")
        });
        crate::keys::KeysDir(dir)
    }

    /// The keys the server uses, by the policy: encryption is on for any store
    /// off the host (an s3:// store or copy) unless plaintext is allowed
    /// there, and for a local store with --encrypt.
    pub async fn keys(&self) -> anyhow::Result<crate::keys::Keys> {
        let dir = self.keys_dir();
        let recipients = dir.recipients().await?;
        let identities = dir.identities(self.keys_passphrase().await?).await?;
        let remote: Vec<String> = std::iter::once(&self.store)
            .chain(&self.copy_to)
            .filter(|u| u.local().is_none())
            .map(ToString::to_string)
            .collect();
        let wanted = self.encrypt || (!remote.is_empty() && !self.allow_plaintext_store);
        let recipients = recipients.map(std::sync::Arc::new);
        let encrypt_to = match (wanted, recipients.clone()) {
            (false, _) => None,
            (true, Some(r)) => Some(r),
            (true, None) if self.encrypt => anyhow::bail!(
                "--encrypt needs keys and {} has none: run `hop3-controller keys init --keys-dir {}`",
                dir.0.display(),
                dir.0.display()
            ),
            (true, None) => anyhow::bail!(
                "{} is off this host, and backups there are encrypted with age, but {} holds no keys: run `hop3-controller keys init --keys-dir {}` (or pass --allow-plaintext-store to store them readable by whoever reads the bucket)",
                remote.join(", "),
                dir.0.display(),
                dir.0.display()
            ),
        };
        Ok(crate::keys::Keys {
            encrypt_to,
            identities: std::sync::Arc::new(identities),
            clear_refused_by: (!remote.is_empty() && !self.allow_plaintext_store)
                .then(|| remote.join(", ")),
            recipients,
            dir: Some(dir),
        })
    }

    /// The identity's passphrase: the first line of --keys-passphrase-file,
    /// else HOP3_KEYS_PASSPHRASE; None when neither is given.
    pub async fn keys_passphrase(&self) -> anyhow::Result<Option<age::secrecy::SecretString>> {
        use anyhow::Context;
        let text = match &self.keys_passphrase_file {
            Some(path) => tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read the keys passphrase {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => match env_passphrase() {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        anyhow::ensure!(!text.is_empty(), "the keys passphrase is empty");
        Ok(Some(text.into()))
    }

    /// Opens the store, with the seal key in the state directory.
    pub async fn open_store(&self) -> anyhow::Result<crate::store::Store> {
        use anyhow::Context;
        crate::store::Store::open_url(&self.store, &self.state_dir(), &self.s3.options())
            .await
            .with_context(|| format!("cannot open the store at {}", self.store))
    }

    /// Opens the copy stores, refusing one that is the primary store or
    /// named twice (a copy onto itself protects nothing).
    pub async fn open_copies(&self) -> anyhow::Result<Vec<crate::store::Store>> {
        use anyhow::Context;
        let mut seen = vec![self.store.to_string()];
        let mut out = Vec::new();
        for url in &self.copy_to {
            anyhow::ensure!(
                !seen.contains(&url.to_string()),
                "--copy-to {url} is the store itself or named twice"
            );
            seen.push(url.to_string());
            let store = crate::store::Store::open_url(url, &self.state_dir(), &self.s3.options())
                .await
                .with_context(|| format!("cannot open the copy store at {url}"))?;
            out.push(store);
        }
        Ok(out)
    }

    /// Where alerts go, with the key read from `--alert-secret-file` or
    /// `HOP3_ALERT_SECRET`.
    pub async fn alerts(&self) -> anyhow::Result<crate::alerts::AlertConfig> {
        use anyhow::Context;
        for url in &self.alert_webhook {
            let parsed = url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"));
            anyhow::ensure!(
                parsed.is_some(),
                "--alert-webhook {}: not an http:// or https:// URL",
                crate::alerts::redact(url)
            );
        }
        let secret = match &self.alert_secret_file {
            Some(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("cannot read the alert secret {}", path.display()))?;
                Some(text.lines().next().unwrap_or_default().trim().to_owned())
            }
            None => std::env::var("HOP3_ALERT_SECRET").ok(),
        };
        if let Some(s) = &secret {
            anyhow::ensure!(!s.is_empty(), "the alert secret is empty");
        }
        Ok(crate::alerts::AlertConfig {
            webhooks: self.alert_webhook.clone(),
            secret: secret.map(String::into_bytes),
            attempts: 5,
            backoff: Duration::from_secs(1),
        })
    }

    /// How the scheduler runs schedules.
    pub fn scheduler(&self) -> crate::scheduler::SchedulerConfig {
        crate::scheduler::SchedulerConfig {
            spread_window: self.schedule_spread,
            lateness: self.schedule_lateness,
            max_attempts: self.schedule_attempts,
            retry_backoff: self.schedule_retry_backoff,
            busy_wait: self.schedule_busy_wait,
            overdue_grace: self.overdue_grace,
        }
    }

    /// The directory `backup:import` reads from.
    pub fn import_dir(&self) -> PathBuf {
        self.import_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("import"))
    }
}

/// The variable a keys passphrase may be given in.
const PASSPHRASE_VAR: &str = "HOP3_KEYS_PASSPHRASE";

/// The passphrase of the environment, once [`take_env_passphrase`] took it.
static ENV_PASSPHRASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Moves `HOP3_KEYS_PASSPHRASE` out of the environment into the process,
/// so that no child (`pg_dump`, an app's start command run by the local
/// agent) inherits it. Call first thing in `main`, before any thread starts.
pub fn take_env_passphrase() {
    let value = std::env::var(PASSPHRASE_VAR).ok();
    if value.is_some() {
        // SAFETY: no other thread exists yet to read the environment.
        unsafe { std::env::remove_var(PASSPHRASE_VAR) };
    }
    let _ = ENV_PASSPHRASE.set(value);
}

/// The passphrase given in the environment, if any.
fn env_passphrase() -> Option<String> {
    match ENV_PASSPHRASE.get() {
        Some(taken) => taken.clone(),
        None => std::env::var(PASSPHRASE_VAR).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_humantime_durations_or_never() {
        let d = |s| parse_expiry(s).map(|e| e.0);
        assert_eq!(d("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(d("90m"), Ok(Some(Duration::from_secs(5_400))));
        assert_eq!(d("1h 30m"), Ok(Some(Duration::from_secs(5_400))));
        assert_eq!(d("15s"), Ok(Some(Duration::from_secs(15))));
        assert_eq!(d("never"), Ok(None));
        assert!(d("10s").unwrap_err().contains("offline"), "{:?}", d("10s"));
        assert!(d("0").is_err());
        assert!(d("soon").unwrap_err().contains("7d"), "{:?}", d("soon"));
    }

    #[test]
    fn expiry_defaults_to_a_week() {
        use clap::Parser;
        let config = Config::try_parse_from(["hop3-controller"]).unwrap();
        assert_eq!(
            config.forget_agents_after,
            Expiry(Some(crate::registry::DEFAULT_FORGET_AFTER))
        );
    }

    #[test]
    fn uploads_carry_a_sha256_unless_told_otherwise() {
        use crate::store::UploadChecksum;
        use clap::Parser;
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("hop3-controller").chain(args.iter().copied()))
                .map(|c| c.s3.s3_checksum)
        };
        assert_eq!(parse(&[]).unwrap(), UploadChecksum::Sha256);
        assert_eq!(
            parse(&["--s3-checksum", "CRC64NVME"]).unwrap(),
            UploadChecksum::Crc64Nvme
        );
        assert_eq!(
            parse(&["--s3-checksum", "off"]).unwrap(),
            UploadChecksum::Off
        );
        let err = parse(&["--s3-checksum", "md5"]).unwrap_err().to_string();
        assert!(err.contains("sha256, crc64nvme or off"), "{err}");
    }
}
