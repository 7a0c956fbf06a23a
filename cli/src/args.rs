//! Command-line arguments: the guide's colon form (`backup:list`) and Hop3's
//! newer space form (`backup list`), both turned into one validated [`Command`].

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use hop3_proto::BackupId;
use hop3_proto::names::{validate_app_name, validate_host_id, validate_hostname};

use crate::error::CliError;

/// Where the controller listens when neither a flag, the environment nor a
/// config file says otherwise.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7410";

/// `hop3 --version`: the release and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HOP3_BUILD_COMMIT"),
    ")"
);

/// The controller's Unix socket, used when no controller is named and it
/// exists (root and the `hop3-backup` group then need no token).
pub const DEFAULT_SOCKET: &str = "/run/hop3-backup/controller.sock";

/// How many backups `backup:list` shows by default, as in the guide.
pub const DEFAULT_LIMIT: u32 = 20;

const EXIT_CODES: &str = "\
Secure mode (a controller serving TLS):
  hop3 --controller https://HOST:7410 --ca-cert ca.pem backup:list
  with the token from hop3-controller tokens create NAME in HOP3_TOKEN
  (or `token = \"...\"` in a chmod 600 --config file).

Exit codes:
  0  success
  1  any other failure (including a declined confirmation)
  2  usage error: bad arguments, invalid backup ID, app or host name or path,
     --yes needed
  3  not found: no such application, backup, host or directory
  4  failed precondition: checksum mismatch, another operation in progress,
     backup being restored (delete), backup pinned (delete), backup already
     imported, agent still online (agent:forget)
  5  resource exhausted: not enough disk space
  6  permission denied or unauthenticated
  7  the controller cannot be reached
  130  interrupted (Ctrl-C during backup:create or backup:restore: the job
     goes on on the controller unless --cancel-on-interrupt)";

/// Back up and restore Hop3 applications through a hop3-backup controller.
#[derive(Debug, Parser)]
#[command(name = "hop3", version = VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    /// URL of the hop3-backup controller [default: http://127.0.0.1:7410]
    // No clap default: a config file sits between the environment and the
    // default, so the fallback is applied in `config::controller_url`.
    #[arg(long, global = true, env = "HOP3_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,

    /// Print one JSON document on stdout instead of the human output.
    #[arg(long, global = true)]
    pub json: bool,

    /// PEM file of the CA that signed the controller's certificate, for an
    /// https:// controller (the ca.pem of hop3-controller certs init).
    #[arg(long, global = true, env = "HOP3_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// TOML file with `controller = "URL"`, `ca_cert = "FILE"` and `token =
    /// "TOKEN"` (flags and environment win over it; a file with a token must
    /// be chmod 600).
    /// [default: HOP3_CLI_CONFIG, else ~/.config/hop3/cli.toml, else
    /// /etc/hop3/cli.toml, the first that exists]
    #[arg(long, global = true, env = "HOP3_CLI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    /// Back up an application.
    #[command(name = "backup:create")]
    Create(CreateArgs),
    /// List backups, newest first.
    #[command(name = "backup:list")]
    List(ListArgs),
    /// Exit 1 unless APP's newest COMPLETED backup is younger than --max-age
    /// (for cron, Nagios, systemd timers).
    #[command(name = "backup:check-age")]
    CheckAge(CheckAgeArgs),
    /// Show a backup's details and verify its checksums.
    #[command(name = "backup:info")]
    Info(IdArgs),
    /// Restore an application from a backup.
    #[command(name = "backup:restore")]
    Restore(RestoreArgs),
    /// Delete a backup.
    #[command(name = "backup:delete")]
    Delete(DeleteArgs),
    /// Register a backup directory found on the controller's machine.
    #[command(name = "backup:import")]
    Import(ImportArgs),
    /// Apply a retention policy: say, for every backup, keep or remove and
    /// why; remove unless --dry-run.
    #[command(name = "backup:prune")]
    Prune(PruneArgs),
    /// Pin a backup: no retention policy and no backup:delete removes it.
    #[command(name = "backup:pin")]
    Pin(IdArgs),
    /// Unpin a backup.
    #[command(name = "backup:unpin")]
    Unpin(IdArgs),
    /// Back an app up on a schedule (cron), with a retention policy applied
    /// after each success; prints the next 5 runs.
    #[command(name = "backup:schedule")]
    Schedule(ScheduleArgs),
    /// List every schedule: next run, last run, last success, state.
    #[command(name = "backup:schedules")]
    Schedules(SchedulesArgs),
    /// Remove a schedule of an app.
    #[command(name = "backup:unschedule")]
    Unschedule(UnscheduleArgs),
    /// List the agents the controller knows, online or not.
    #[command(name = "agent:list")]
    AgentList,
    /// Forget an offline agent, so that it leaves agent:list.
    #[command(name = "agent:forget")]
    AgentForget(HostArgs),
    /// Print a completion script for SHELL (e.g. `hop3 completions bash >
    /// /etc/bash_completion.d/hop3`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `hop3 man | man -l -`.
    Man,
    /// The same commands in Hop3's space form: `hop3 backup list`.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// The agent commands in Hop3's space form: `hop3 agent list`.
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Back up an application.
    Create(CreateArgs),
    /// List backups, newest first.
    List(ListArgs),
    /// Exit 1 unless APP's newest COMPLETED backup is younger than --max-age.
    CheckAge(CheckAgeArgs),
    /// Show a backup's details and verify its checksums.
    Info(IdArgs),
    /// Restore an application from a backup.
    Restore(RestoreArgs),
    /// Delete a backup.
    Delete(DeleteArgs),
    /// Register a backup directory found on the controller's machine.
    Import(ImportArgs),
    /// Apply a retention policy (remove unless --dry-run).
    Prune(PruneArgs),
    /// Pin a backup: no retention policy and no delete removes it.
    Pin(IdArgs),
    /// Unpin a backup.
    Unpin(IdArgs),
    /// Back an app up on a schedule (cron).
    Schedule(ScheduleArgs),
    /// List every schedule.
    Schedules(SchedulesArgs),
    /// Remove a schedule of an app.
    Unschedule(UnscheduleArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// List the agents the controller knows, online or not.
    List,
    /// Forget an offline agent, so that it leaves agent list.
    Forget(HostArgs),
}

#[derive(Debug, Args)]
struct HostArgs {
    /// The agent's host id, as agent:list shows it (stop its agent first:
    /// an online agent cannot be forgotten).
    #[arg(value_name = "HOST")]
    host: String,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The application to back up.
    app: String,
    /// Leave attached services (databases) out of the backup.
    #[arg(long)]
    no_services: bool,
    /// Back up this host's copy of the app (needed when several hosts serve it).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// On-disk format: 1.1 (zstd on every core; tar --zstd -xf) or 1.0
    /// (gzip, readable by every Hop3 and tar -xzf) [default: the
    /// controller's, 1.1].
    #[arg(long, value_name = "VERSION", value_parser = parse_format)]
    format: Option<String>,
    /// On Ctrl-C, cancel the operation instead of leaving it to run on the
    /// controller (a backup is then recorded FAILED, its partial files
    /// removed; a restore still receiving leaves the app as it was).
    #[arg(long)]
    cancel_on_interrupt: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only this application's backups.
    app: Option<String>,
    /// Only this application's backups (same as the positional APP).
    #[arg(long = "app", value_name = "APP", conflicts_with = "app")]
    app_flag: Option<String>,
    /// Show at most N backups.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Only backups in this status.
    #[arg(long, value_name = "STATUS", ignore_case = true,
          value_parser = ["STARTED", "COMPLETED", "FAILED", "DELETE_PENDING"])]
    status: Option<String>,
}

#[derive(Debug, Args)]
struct CheckAgeArgs {
    /// The application whose newest COMPLETED backup is checked.
    app: String,
    /// The oldest that backup may be, e.g. 26h, 2d, 90m.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    max_age: std::time::Duration,
}

/// A format version this build knows, as the controller spells it.
fn parse_format(s: &str) -> Result<String, String> {
    s.parse::<hop3_proto::Format>()
        .map(|f| f.to_string())
        .map_err(|e| e.to_string())
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 26h, 2d, 90m)"))
}

#[derive(Debug, Args)]
struct IdArgs {
    /// The backup ID, e.g. 20251108_143022_a8f3d9.
    id: String,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The backup ID, e.g. 20251108_143022_a8f3d9.
    id: String,
    /// Restore into this application instead of the backup's own (clones it).
    #[arg(long, value_name = "NAME")]
    target_app: Option<String>,
    /// Restore onto this host instead of the backup's own.
    #[arg(long, value_name = "HOST")]
    target_host: Option<String>,
    /// Replace the target app even though it exists and is another app: its
    /// files, environment and databases become the backup's.
    #[arg(long)]
    replace: bool,
    /// The hostname a clone gets (a clone never takes the source's).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Restore a backup this controller did not seal (imported or copied in
    /// by hand) after checking where it came from; its files still go to
    /// the app's owner, without set-user-ID bits.
    #[arg(long)]
    trust_imported: bool,
    /// Leave the app stopped after the restore (when the host's agent has
    /// start/stop commands, it otherwise restarts the app itself).
    #[arg(long)]
    no_start: bool,
    /// On Ctrl-C, cancel the operation instead of leaving it to run on the
    /// controller (a backup is then recorded FAILED, its partial files
    /// removed; a restore still receiving leaves the app as it was).
    #[arg(long)]
    cancel_on_interrupt: bool,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// The backup ID, e.g. 20251108_143022_a8f3d9.
    id: String,
    /// Delete without asking (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Only this application's backups [default: every app, each judged on
    /// its own].
    app: Option<String>,
    #[command(flatten)]
    policy: RetentionFlags,
    /// Apply the policy of this schedule of APP (backup:schedules lists
    /// them) instead of policy flags.
    #[arg(long, value_name = "NAME", requires = "app",
          conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                                "keep_monthly", "keep_yearly", "keep_within", "max_total_size", "tz"])]
    schedule: Option<String>,
    /// Only say what would be removed, and why.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct ScheduleArgs {
    /// The application to back up.
    app: String,
    /// When: 5 cron fields (minute hour day month weekday), 6 with seconds
    /// first, or @hourly, @daily, @weekly, @monthly, @yearly. Read in --tz.
    #[arg(long, value_name = "EXPR")]
    cron: String,
    /// The schedule's name: an app may have several (say hourly kept 2
    /// days, daily kept 30); setting a name again replaces it.
    #[arg(long, value_name = "NAME", default_value = "default")]
    name: String,
    /// Leave attached services (databases) out of the backups.
    #[arg(long)]
    no_services: bool,
    /// Back up this host's copy of the app (needed when several serve it).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Ping this URL as healthchecks.io defines (URL/start, URL, URL/fail)
    /// at each run, so that an outside check notices missed backups too.
    #[arg(long, value_name = "URL")]
    ping_url: Option<String>,
    /// Applied after each successful run; --tz is also the cron's zone.
    #[command(flatten)]
    policy: RetentionFlags,
}

#[derive(Debug, Args)]
struct SchedulesArgs {
    /// Only this application's schedules.
    app: Option<String>,
}

#[derive(Debug, Args)]
struct UnscheduleArgs {
    /// The application.
    app: String,
    /// Which of its schedules.
    #[arg(long, value_name = "NAME", default_value = "default")]
    name: String,
}

/// A retention policy: restic's `forget` rules. A count is of hours, days,
/// ... *that have backups*; the flags combine (a backup kept by any rule
/// stays). No flag at all keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RetentionFlags {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest hours that have one.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the N newest days that have one.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N newest ISO weeks (Monday
    /// first) that have one.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N newest months that have one.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the N newest years that have one.
    #[arg(long, value_name = "N", value_parser = count)]
    pub keep_yearly: Option<u32>,
    /// Keep every backup made within DURATION before the app's newest
    /// successful one (not before now), e.g. 7d, 36h, 2weeks, 1y.
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within: Option<std::time::Duration>,
    /// After the rules, remove the oldest kept backups while the app's
    /// backups total more than SIZE (e.g. 50GiB, 500MB), never its newest
    /// successful one or a pinned one.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_total_size: Option<u64>,
    /// The time zone hours, days, weeks, months and years are counted in
    /// (an IANA name, e.g. Europe/Paris) [default: UTC].
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
}

impl RetentionFlags {
    /// The policy as the controller takes it.
    pub fn to_wire(&self) -> hop3_proto::v1::RetentionPolicy {
        hop3_proto::v1::RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within_seconds: self.keep_within.map(|d| d.as_secs().max(1)),
            max_total_size: self.max_total_size,
            time_zone: self.tz.clone().unwrap_or_default(),
        }
    }
}

impl RetentionFlags {
    /// The flags that would give `wire`.
    pub fn from_wire(wire: &hop3_proto::v1::RetentionPolicy) -> Self {
        Self {
            keep_last: wire.keep_last,
            keep_hourly: wire.keep_hourly,
            keep_daily: wire.keep_daily,
            keep_weekly: wire.keep_weekly,
            keep_monthly: wire.keep_monthly,
            keep_yearly: wire.keep_yearly,
            keep_within: wire.keep_within_seconds.map(std::time::Duration::from_secs),
            max_total_size: wire.max_total_size,
            tz: (!wire.time_zone.is_empty()).then(|| wire.time_zone.clone()),
        }
    }
}

fn count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("0 would keep nothing: give at least 1, or leave the flag out".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration as humantime reads it, except a bare `m`: restic reads it
/// as months and humantime as minutes, so it is refused rather than
/// guessed.
fn parse_within(s: &str) -> Result<std::time::Duration, String> {
    let bytes = s.as_bytes();
    let bare_m = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'm'
            && i > 0
            && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b' ')
            && !bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic)
    });
    if bare_m {
        return Err(format!(
            "{s:?}: is `m` minutes or months? write `min` or `months` (e.g. 90min, 6months)"
        ));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("0 would keep nothing: give a duration such as 7d".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (e.g. 7d, 36h, 2weeks, 6months, 1y)")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (e.g. 50GiB, 500MB, 1TiB)"))
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The backup directory, as a path on the controller's machine (a
    /// relative path is taken from the current directory).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// One command, with its backup IDs and app names already validated, so no
/// request with a malformed one ever reaches the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `backup:create APP [--no-services] [--host HOST] [--format VERSION]`
    Create { app: String, options: CreateOptions },
    /// `backup:list [APP] [--limit N]`
    List {
        app: Option<String>,
        limit: u32,
        status: Option<String>,
    },
    /// `completions SHELL`
    Completions { shell: clap_complete::Shell },
    /// `man`
    Man,
    /// `backup:check-age APP --max-age DURATION`
    CheckAge {
        app: String,
        max_age: std::time::Duration,
    },
    /// `backup:info ID`
    Info { id: BackupId },
    /// `backup:restore ID [--target-app NAME] [--target-host HOST] [--replace] [--hostname NAME]`
    Restore { id: BackupId, target: RestoreTarget },
    /// `backup:delete ID [--yes]`
    Delete { id: BackupId, yes: bool },
    /// `backup:import DIR`, with DIR made absolute.
    Import { path: String },
    /// `backup:prune [APP] [policy flags | --schedule NAME] [--dry-run]`
    Prune {
        app: Option<String>,
        policy: RetentionFlags,
        schedule: Option<String>,
        dry_run: bool,
    },
    /// `backup:schedule APP --cron EXPR [--name NAME] [--no-services] [--host HOST] [policy flags]`
    Schedule(ScheduleSpec),
    /// `backup:schedules [APP]`
    Schedules { app: Option<String> },
    /// `backup:unschedule APP [--name NAME]`
    Unschedule { app: String, name: String },
    /// `backup:pin ID` / `backup:unpin ID`
    Pin { id: BackupId, pinned: bool },
    /// `agent:list`
    AgentList,
    /// `agent:forget HOST`
    AgentForget { host: String },
}

/// A schedule, as `backup:schedule` sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub app: String,
    pub name: String,
    pub cron: String,
    pub no_services: bool,
    pub host: Option<String>,
    pub ping_url: Option<String>,
    pub policy: RetentionFlags,
}

impl ScheduleSpec {
    /// The schedule as the controller takes it.
    pub fn to_wire(&self) -> hop3_proto::v1::Schedule {
        let retention = self.policy.to_wire();
        hop3_proto::v1::Schedule {
            app: self.app.clone(),
            name: self.name.clone(),
            cron: self.cron.clone(),
            time_zone: retention.time_zone.clone(),
            no_services: self.no_services,
            host: self.host.clone().unwrap_or_default(),
            retention: Some(retention),
            ping_url: self.ping_url.clone().unwrap_or_default(),
        }
    }
}

/// How `backup:create` backs up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Leave the app's databases out.
    pub no_services: bool,
    /// The host whose copy of the app to back up.
    pub host: Option<String>,
    /// The on-disk format; None: the controller's default.
    pub format: Option<String>,
    /// Cancel the backup on Ctrl-C.
    pub cancel_on_interrupt: bool,
}

/// Where and how `backup:restore` restores.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    /// Another app to restore into (a clone); None: the backup's own.
    pub app: Option<String>,
    /// Another host to restore onto; None: the backup's own.
    pub host: Option<String>,
    /// Restore into `app` even though it exists.
    pub replace: bool,
    /// The clone's hostname.
    pub hostname: Option<String>,
    /// Restore even though the controller did not seal the backup.
    pub trust_imported: bool,
    /// Leave the app stopped.
    pub no_start: bool,
    /// Cancel the restore on Ctrl-C (while the agent still receives).
    pub cancel_on_interrupt: bool,
}

impl Cli {
    /// The command to run, validated.
    pub fn command(&self) -> Result<Command, CliError> {
        use BackupCommand as B;
        use TopCommand as T;
        Ok(match &self.command {
            T::Create(a) | T::Backup(B::Create(a)) => Command::Create {
                app: app_name(&a.app)?,
                options: CreateOptions {
                    no_services: a.no_services,
                    host: a.host.as_deref().map(host_id).transpose()?,
                    format: a.format.clone(),
                    cancel_on_interrupt: a.cancel_on_interrupt,
                },
            },
            T::Completions { shell } => Command::Completions { shell: *shell },
            T::Man => Command::Man,
            T::List(a) | T::Backup(B::List(a)) => Command::List {
                app: a
                    .app
                    .as_deref()
                    .or(a.app_flag.as_deref())
                    .map(app_name)
                    .transpose()?,
                limit: a.limit,
                status: a.status.as_deref().map(str::to_ascii_uppercase),
            },
            T::CheckAge(a) | T::Backup(B::CheckAge(a)) => Command::CheckAge {
                app: app_name(&a.app)?,
                max_age: a.max_age,
            },
            T::Info(a) | T::Backup(B::Info(a)) => Command::Info {
                id: backup_id(&a.id)?,
            },
            T::Restore(a) | T::Backup(B::Restore(a)) => Command::Restore {
                id: backup_id(&a.id)?,
                target: RestoreTarget {
                    app: a.target_app.as_deref().map(app_name).transpose()?,
                    host: a.target_host.as_deref().map(host_id).transpose()?,
                    replace: a.replace,
                    hostname: a.hostname.as_deref().map(hostname).transpose()?,
                    trust_imported: a.trust_imported,
                    no_start: a.no_start,
                    cancel_on_interrupt: a.cancel_on_interrupt,
                },
            },
            T::Delete(a) | T::Backup(B::Delete(a)) => Command::Delete {
                id: backup_id(&a.id)?,
                yes: a.yes,
            },
            T::Import(a) | T::Backup(B::Import(a)) => Command::Import {
                path: absolute_path(&a.dir)?,
            },
            T::Prune(a) | T::Backup(B::Prune(a)) => Command::Prune {
                app: a.app.as_deref().map(app_name).transpose()?,
                policy: a.policy.clone(),
                schedule: a.schedule.clone(),
                dry_run: a.dry_run,
            },
            T::Schedule(a) | T::Backup(B::Schedule(a)) => Command::Schedule(ScheduleSpec {
                app: app_name(&a.app)?,
                name: a.name.clone(),
                cron: a.cron.clone(),
                no_services: a.no_services,
                host: a.host.as_deref().map(host_id).transpose()?,
                ping_url: a.ping_url.clone(),
                policy: a.policy.clone(),
            }),
            T::Schedules(a) | T::Backup(B::Schedules(a)) => Command::Schedules {
                app: a.app.as_deref().map(app_name).transpose()?,
            },
            T::Unschedule(a) | T::Backup(B::Unschedule(a)) => Command::Unschedule {
                app: app_name(&a.app)?,
                name: a.name.clone(),
            },
            T::Pin(a) | T::Backup(B::Pin(a)) => Command::Pin {
                id: backup_id(&a.id)?,
                pinned: true,
            },
            T::Unpin(a) | T::Backup(B::Unpin(a)) => Command::Pin {
                id: backup_id(&a.id)?,
                pinned: false,
            },
            T::AgentList | T::Agent(AgentCommand::List) => Command::AgentList,
            T::AgentForget(a) | T::Agent(AgentCommand::Forget(a)) => Command::AgentForget {
                host: host_id(&a.host)?,
            },
        })
    }
}

fn backup_id(s: &str) -> Result<BackupId, CliError> {
    Ok(s.parse::<BackupId>()?)
}

fn app_name(s: &str) -> Result<String, CliError> {
    validate_app_name(s)?;
    Ok(s.to_owned())
}

fn host_id(s: &str) -> Result<String, CliError> {
    validate_host_id(s)?;
    Ok(s.to_owned())
}

fn hostname(s: &str) -> Result<String, CliError> {
    validate_hostname(s)?;
    Ok(s.to_owned())
}

/// `dir` made absolute from the current directory, without resolving
/// symlinks (the controller reads it, possibly on another machine): as text,
/// since that is what goes on the wire.
fn absolute_path(dir: &Path) -> Result<String, CliError> {
    let invalid = |reason: String| CliError::InvalidPath {
        path: dir.to_path_buf(),
        reason,
    };
    let absolute = std::path::absolute(dir).map_err(|e| invalid(e.to_string()))?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| invalid("is not valid UTF-8".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("hop3").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("arguments parse")
    }

    fn command(args: &[&str]) -> Command {
        parse(args).command().expect("arguments are valid")
    }

    const ID: &str = "20251108_143022_a8f3d9";

    #[test]
    fn list_in_colon_form_with_app_and_limit() {
        assert_eq!(
            command(&["backup:list", "blog", "--limit", "5"]),
            Command::List {
                app: Some("blog".into()),
                limit: 5,
                status: None,
            }
        );
    }

    #[test]
    fn list_in_space_form_with_app_flag() {
        assert_eq!(
            command(&["backup", "list", "--app", "blog"]),
            Command::List {
                app: Some("blog".into()),
                limit: DEFAULT_LIMIT,
                status: None,
            }
        );
        assert_eq!(
            command(&["backup", "list", "--status", "failed"]),
            Command::List {
                app: None,
                limit: 20,
                status: Some("FAILED".into()),
            }
        );
        assert!(Cli::try_parse_from(["hop3", "backup:list", "--status", "gone"]).is_err());
        assert_eq!(
            command(&["backup:check-age", "shop", "--max-age", "26h"]),
            Command::CheckAge {
                app: "shop".into(),
                max_age: std::time::Duration::from_secs(26 * 3600),
            }
        );
        assert!(
            Cli::try_parse_from(["hop3", "backup:check-age", "shop", "--max-age", "soon"]).is_err()
        );
    }

    #[test]
    fn list_refuses_two_apps_and_a_zero_limit() {
        let argv = ["hop3", "backup", "list", "a", "--app", "b"];
        assert!(Cli::try_parse_from(argv).is_err());
        assert!(Cli::try_parse_from(["hop3", "backup:list", "--limit", "0"]).is_err());
    }

    #[test]
    fn both_forms_give_the_same_command() {
        let pairs: [(&[&str], &[&str]); 10] = [
            (
                &["backup:create", "my-app", "--no-services"],
                &["backup", "create", "my-app", "--no-services"],
            ),
            (
                &["backup:create", "my-app", "--host", "web-1"],
                &["backup", "create", "--host", "web-1", "my-app"],
            ),
            (
                &["backup:restore", ID, "--target-host", "web-2"],
                &["backup", "restore", ID, "--target-host", "web-2"],
            ),
            (
                &["backup:import", "/srv/in/x"],
                &["backup", "import", "/srv/in/x"],
            ),
            (&["agent:list"], &["agent", "list"]),
            (&["agent:forget", "web-2"], &["agent", "forget", "web-2"]),
            (&["backup:list", "blog"], &["backup", "list", "blog"]),
            (&["backup:info", ID], &["backup", "info", ID]),
            (
                &["backup:restore", ID, "--target-app", "copy"],
                &["backup", "restore", ID, "--target-app", "copy"],
            ),
            (
                &["backup:delete", ID, "--yes"],
                &["backup", "delete", ID, "-y"],
            ),
        ];
        for (colon, space) in pairs {
            assert_eq!(command(colon), command(space), "{colon:?} vs {space:?}");
        }
        assert_eq!(
            command(&["backup:create", "my-app", "--no-services"]),
            Command::Create {
                app: "my-app".into(),
                options: CreateOptions {
                    no_services: true,
                    host: None,
                    ..Default::default()
                },
            }
        );
    }

    #[test]
    fn create_takes_a_host() {
        assert_eq!(
            command(&["backup:create", "my-app", "--host", "web-1.example.com"]),
            Command::Create {
                app: "my-app".into(),
                options: CreateOptions {
                    host: Some("web-1.example.com".into()),
                    ..Default::default()
                },
            }
        );
        assert_eq!(
            command(&["backup", "create", "blog", "--no-services", "--host", "h2"]),
            Command::Create {
                app: "blog".into(),
                options: CreateOptions {
                    no_services: true,
                    host: Some("h2".into()),
                    ..Default::default()
                },
            }
        );
    }

    #[test]
    fn restore_takes_a_target_app_and_host() {
        let id: BackupId = ID.parse().unwrap();
        assert_eq!(
            command(&[
                "backup:restore",
                ID,
                "--target-app",
                "copy",
                "--target-host",
                "web-2"
            ]),
            Command::Restore {
                id: id.clone(),
                target: RestoreTarget {
                    app: Some("copy".into()),
                    host: Some("web-2".into()),
                    ..RestoreTarget::default()
                },
            }
        );
        assert_eq!(
            command(&["backup", "restore", ID, "--target-host", "web-2"]),
            Command::Restore {
                id: id.clone(),
                target: RestoreTarget {
                    host: Some("web-2".into()),
                    ..RestoreTarget::default()
                },
            }
        );
        assert_eq!(
            command(&["backup:restore", ID]),
            Command::Restore {
                id: id.clone(),
                target: RestoreTarget::default(),
            }
        );
        assert_eq!(
            command(&[
                "backup:restore",
                ID,
                "--target-app",
                "shop",
                "--replace",
                "--hostname",
                "staging.example.com"
            ]),
            Command::Restore {
                id,
                target: RestoreTarget {
                    app: Some("shop".into()),
                    replace: true,
                    hostname: Some("staging.example.com".into()),
                    ..RestoreTarget::default()
                },
            }
        );
    }

    #[test]
    fn agent_list_in_both_forms() {
        assert_eq!(command(&["agent:list"]), Command::AgentList);
        assert_eq!(command(&["agent", "list", "--json"]), Command::AgentList);
        assert!(parse(&["--json", "agent:list"]).json);
        assert!(Cli::try_parse_from(["hop3", "agent:list", "extra"]).is_err());
        assert!(Cli::try_parse_from(["hop3", "agent"]).is_err());
    }

    #[test]
    fn agent_forget_takes_one_valid_host() {
        assert_eq!(
            command(&["agent:forget", "web-2.example.com"]),
            Command::AgentForget {
                host: "web-2.example.com".into()
            }
        );
        assert!(parse(&["agent", "forget", "web-2", "--json"]).json);
        assert!(Cli::try_parse_from(["hop3", "agent:forget"]).is_err());
        assert!(Cli::try_parse_from(["hop3", "agent", "forget", "a", "b"]).is_err());
        let err = parse(&["agent:forget", "../etc"]).command().unwrap_err();
        assert!(matches!(err, CliError::InvalidName(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn import_makes_the_directory_absolute() {
        assert_eq!(
            command(&["backup:import", "/srv/incoming/20251108_143022_a8f3d9"]),
            Command::Import {
                path: "/srv/incoming/20251108_143022_a8f3d9".into()
            }
        );
        let cwd = std::env::current_dir().unwrap();
        let expected = cwd.join("incoming").join("b1");
        assert_eq!(
            command(&["backup", "import", "incoming/b1"]),
            Command::Import {
                path: expected.to_str().unwrap().to_owned()
            }
        );
        assert!(Cli::try_parse_from(["hop3", "backup:import"]).is_err());
    }

    #[test]
    fn an_unusable_import_directory_is_refused_before_any_call() {
        // clap refuses an empty path itself (a usage error, exit 2).
        assert!(Cli::try_parse_from(["hop3", "backup:import", ""]).is_err());
    }

    /// The path goes on the wire as text: non-UTF-8 cannot be sent.
    #[cfg(unix)]
    #[test]
    fn a_non_utf8_import_directory_is_refused_before_any_call() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let argv = [
            OsString::from("hop3"),
            OsString::from("backup:import"),
            OsString::from_vec(b"/srv/\xff".to_vec()),
        ];
        let err = Cli::try_parse_from(argv).unwrap().command().unwrap_err();
        assert!(matches!(err, CliError::InvalidPath { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid backup directory \"/srv/\\xFF\": is not valid UTF-8"
        );
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.code_name(), "INVALID_ARGUMENT");
    }

    #[test]
    fn json_is_accepted_before_or_after_the_command() {
        for args in [
            &["--json", "backup:list"][..],
            &["backup:list", "--json"],
            &["backup", "--json", "list"],
            &["backup", "list", "blog", "--json"],
        ] {
            assert!(parse(args).json, "{args:?}");
        }
        assert!(!parse(&["backup:list"]).json);
    }

    #[test]
    fn controller_and_config_flags_are_global() {
        let cli = parse(&[
            "backup:info",
            ID,
            "--controller",
            "http://h:1",
            "--config",
            "/x.toml",
            "--ca-cert",
            "/ca.pem",
        ]);
        assert_eq!(cli.controller.as_deref(), Some("http://h:1"));
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(cli.ca_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn invalid_backup_ids_are_refused_before_any_call() {
        for args in [
            &["backup:info", "not-an-id"][..],
            &["backup", "restore", "../../etc"],
            &["backup:delete", "20251108_143022_A8F3D9", "--yes"],
        ] {
            let err = parse(args).command().unwrap_err();
            assert!(
                matches!(err, CliError::InvalidBackupId(_)),
                "{args:?}: {err:?}"
            );
            assert!(err.to_string().contains("invalid backup ID"), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn invalid_app_names_are_refused_before_any_call() {
        for args in [
            &["backup:create", "../etc"][..],
            &["backup:list", "a b"],
            &["backup", "list", "--app", ".hidden"],
            &["backup:restore", ID, "--target-app", "x/y"],
        ] {
            let err = parse(args).command().unwrap_err();
            assert!(matches!(err, CliError::InvalidName(_)), "{args:?}: {err:?}");
            assert!(err.to_string().contains("invalid app name"), "{err}");
        }
    }

    #[test]
    fn invalid_host_names_are_refused_before_any_call() {
        for args in [
            &["backup:create", "my-app", "--host", "../etc"][..],
            &["backup", "create", "my-app", "--host", ""],
            &["backup:restore", ID, "--target-host", "a b"],
            &["backup", "restore", ID, "--target-host", ".hidden"],
        ] {
            let err = parse(args).command().unwrap_err();
            assert!(matches!(err, CliError::InvalidName(_)), "{args:?}: {err:?}");
            assert!(err.to_string().contains("invalid host id"), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
        let err = parse(&[
            "backup:restore",
            ID,
            "--target-app",
            "x",
            "--hostname",
            "a_b.com",
        ])
        .command()
        .unwrap_err();
        assert!(err.to_string().contains("invalid hostname"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
