//! PostgreSQL: plain SQL dumps with `pg_dump`, restored with `psql` into a
//! scratch database that then takes the live one's name in one transaction.
//! Credentials reach the tools through `PG*` environment variables only.
//!
//! Making and renaming databases needs CREATEDB. A restore picks, before
//! it changes anything, the first way its rights allow:
//! - an administrative connection configured for the server
//!   (`--pg-admin-url`, as Hop3's own PostgreSQL plugin has one) makes the
//!   scratch database, owned by the app's role, which loads it; the
//!   connection does the renames;
//! - the app's role has CREATEDB and does it all itself;
//! - neither: the dump is spooled to a private file while it arrives and,
//!   once the app is stopped, replayed into the live database after
//!   `DROP OWNED BY CURRENT_USER`, in one transaction. A failure leaves the
//!   old data; once committed it cannot be undone.
//!
//! A clone, which needs a database of its own, is refused up front without
//! the first two.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use super::conn::ConnInfo;
use super::process::{self, Step};
use super::records::{PgRecord, Phase, Record};
use super::tools::Tools;
use crate::error::{AgentError, Result};

/// A command for `tool` connected to `db` of `conn`'s server.
fn command(tools: &Tools, tool: &str, conn: &ConnInfo, db: &str) -> Command {
    let mut cmd = Command::new(tools.pg(tool));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PGHOST", &conn.host)
        .env("PGUSER", &conn.user)
        .env("PGDATABASE", db)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "hop3-backup");
    if let Some(port) = conn.port {
        cmd.env("PGPORT", port.to_string());
    }
    if let Some(pw) = &conn.password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

fn psql(tools: &Tools, conn: &ConnInfo, db: &str) -> Command {
    let mut cmd = command(tools, "psql", conn, db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    cmd
}

/// Runs SQL on the maintenance database and returns its unaligned output.
async fn query(tools: &Tools, conn: &ConnInfo, step: &Step<'_>, sql: &str) -> Result<String> {
    let mut cmd = psql(tools, conn, "postgres");
    cmd.args(["-A", "-t", "-c", sql]);
    process::output(step, cmd).await
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn major_of(version_num: &str) -> Option<u32> {
    version_num.trim().parse::<u32>().ok().map(|n| n / 10000)
}

/// Refuses a `pg_dump` older than the server: it would fail, or dump less.
async fn check_versions(tools: &Tools, conn: &ConnInfo, step: &Step<'_>) -> Result<()> {
    let server = query(tools, conn, step, "SHOW server_version_num").await?;
    let server = major_of(&server).ok_or_else(|| step.error("cannot read the server's version"))?;
    let mut cmd = Command::new(tools.pg("pg_dump"));
    cmd.arg("--version");
    let text = process::output(step, cmd).await?;
    // "pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
    let client = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| step.error(format!("cannot read pg_dump's version from {text:?}")))?;
    if client < server {
        return Err(step.error(format!(
            "pg_dump {client} is older than the PostgreSQL {server} server; install the version {server} client tools and point the agent at them with --pg-bin"
        )));
    }
    Ok(())
}

/// Connects to the service's database and checks pg_dump's version.
pub async fn check(tools: &Tools, service: &str, conn: &ConnInfo) -> Result<()> {
    let step = Step::new(service, "connect", conn);
    let mut cmd = psql(tools, conn, &conn.database);
    cmd.args(["-A", "-t", "-c", "SELECT 1"]);
    process::output(&step, cmd).await?;
    check_versions(tools, conn, &step).await
}

/// Streams a plain SQL dump of `conn`'s database into `out`.
pub async fn dump<W: AsyncWrite + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    out: &mut W,
) -> Result<()> {
    let step = Step::new(service, "dump", conn);
    let mut cmd = command(tools, "pg_dump", conn, &conn.database);
    cmd.args([
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--encoding=UTF8",
    ]);
    process::dump_to(&step, cmd, out).await
}

/// Which way a restore goes, picked by [`load`] before anything changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A scratch database made, handed to the app's role, and renamed by
    /// the administrative connection configured for the server.
    Admin,
    /// A scratch database made and renamed by the app's role (CREATEDB).
    Role,
    /// Neither: the dump, spooled to a private file, replaces the live
    /// database's content in one transaction.
    InPlace,
}

impl Via {
    fn load_step(self) -> &'static str {
        match self {
            Self::Admin => "load into a scratch database made by the admin connection",
            Self::Role => "load into a scratch database",
            Self::InPlace => {
                "spool the dump (to restore in place: no admin connection, no CREATEDB)"
            }
        }
    }

    fn switch_step(self) -> &'static str {
        match self {
            Self::Admin => "switch with the admin connection",
            Self::Role => "switch",
            Self::InPlace => {
                "restore in place, in one transaction (no admin connection, no CREATEDB)"
            }
        }
    }
}

/// A dump ready to switch in: loaded into a scratch database beside the
/// live one, or spooled for a restore in place.
#[derive(Debug)]
pub struct Staged {
    via: Via,
    scratch: String,
    /// The name the live database is renamed to by the switch.
    old: String,
    /// Whether a live database existed when the switch began.
    had_live: AtomicBool,
    /// The spooled dump of a restore in place.
    spool: Option<PathBuf>,
    /// Whether a restore in place committed.
    committed: AtomicBool,
}

impl Staged {
    fn named(via: Via, tag: &str) -> Self {
        let unique = super::unique_suffix(tag);
        Self {
            via,
            scratch: format!("{SCRATCH_PREFIX}{unique}"),
            old: format!("{OLD_PREFIX}{unique}"),
            had_live: AtomicBool::new(false),
            spool: None,
            committed: AtomicBool::new(false),
        }
    }

    fn record_name(&self) -> String {
        format!("postgres-{}", self.scratch)
    }

    fn record(&self, service: &str, conn: &ConnInfo, phase: Phase) -> Record {
        Record::Postgres(PgRecord {
            service: service.to_owned(),
            url: conn.url().to_owned(),
            scratch: self.scratch.clone(),
            old: self.old.clone(),
            phase,
            had_live: self.had_live.load(Ordering::SeqCst),
        })
    }
}

/// Scratch databases are named so that anyone can tell what they are.
const SCRATCH_PREFIX: &str = "hop3_scratch_";
/// What a switch replaced, until the restore is finished.
const OLD_PREFIX: &str = "hop3_old_";

/// Where databases are made, renamed and dropped: the administrative
/// connection configured for the server (on its own database), else the
/// app's role on the maintenance database.
fn maintenance<'a>(tools: &'a Tools, conn: &'a ConnInfo) -> (&'a ConnInfo, &'a str) {
    match tools.pg_admin_for(conn) {
        Some(admin) if !admin.database.is_empty() => (admin, &admin.database),
        Some(admin) => (admin, "postgres"),
        None => (conn, "postgres"),
    }
}

/// Runs SQL where databases are managed ([`maintenance`]).
async fn server_query(
    tools: &Tools,
    conn: &ConnInfo,
    step: &Step<'_>,
    sql: &str,
) -> Result<String> {
    let (on, db) = maintenance(tools, conn);
    let step = step.hiding(on);
    let mut cmd = psql(tools, on, db);
    cmd.args(["-A", "-t", "-c", sql]);
    process::output(&step, cmd).await
}

/// What the app's role may do on its server.
struct Rights {
    role: String,
    createdb: bool,
    live_exists: bool,
}

/// Asks the server, as the app's role, on its own database (the one it
/// surely may connect to) or else on the maintenance database.
async fn rights(tools: &Tools, conn: &ConnInfo, step: &Step<'_>) -> Result<Rights> {
    let sql = format!(
        "SELECT current_user, (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), \
         EXISTS (SELECT 1 FROM pg_database WHERE datname = {})",
        literal(&conn.database)
    );
    let mut out = Err(step.error("no database to ask"));
    for db in [conn.database.as_str(), "postgres"] {
        let mut cmd = psql(tools, conn, db);
        cmd.args(["-A", "-t", "-c", &sql]);
        out = process::output(step, cmd).await;
        if out.is_ok() {
            break;
        }
    }
    let out = out?;
    let fields: Vec<&str> = out.trim().split('|').collect();
    match fields[..] {
        [role, createdb, live] => Ok(Rights {
            role: role.to_owned(),
            createdb: createdb == "t",
            live_exists: live == "t",
        }),
        _ => Err(step.error(format!("unexpected answer {out:?}"))),
    }
}

/// Why no database can be made for `what`.
fn cannot_create(step: &Step<'_>, conn: &ConnInfo, role: &str, what: &str) -> AgentError {
    step.error(format!(
        "cannot create {what}: role {role} has no CREATEDB right and no administrative connection \
         is configured for {}:{} (set HOP3_PG_ADMIN_URL, or pg_admin_url in the agent's config file)",
        conn.host,
        conn.port.unwrap_or(DEFAULT_PORT)
    ))
}

/// PostgreSQL's port when a URL gives none.
const DEFAULT_PORT: u16 = 5432;

/// Fails up front unless a new database can be made on `conn`'s server
/// (for a clone): an administrative connection, or CREATEDB.
pub async fn can_create(tools: &Tools, service: &str, conn: &ConnInfo) -> Result<()> {
    if tools.pg_admin_for(conn).is_some() {
        return Ok(());
    }
    let step = Step::new(service, "check the role's rights", conn);
    let rights = rights(tools, conn, &step).await?;
    if rights.createdb {
        return Ok(());
    }
    Err(cannot_create(
        &step,
        conn,
        &rights.role,
        "the clone's own database",
    ))
}

/// Loads a dump beside the live database, the way the rights allow: into a
/// scratch database (on record before it is created) made by the
/// administrative connection or by the app's role, or, with neither, into
/// a private spool file for a restore in place.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    tag: &str,
    spool_dir: &Path,
    input: &mut R,
) -> Result<Staged> {
    let step = Step::new(service, "check the role's rights", conn);
    let (via, owner) = if tools.pg_admin_for(conn).is_some() {
        let role = if conn.user.is_empty() {
            rights(tools, conn, &step).await?.role
        } else {
            conn.user.clone()
        };
        (Via::Admin, Some(role))
    } else {
        let rights = rights(tools, conn, &step).await?;
        if rights.createdb {
            (Via::Role, None)
        } else if rights.live_exists {
            (Via::InPlace, None)
        } else {
            let what = format!("database {}", conn.database);
            return Err(cannot_create(&step, conn, &rights.role, &what));
        }
    };
    let mut staged = Staged::named(via, tag);
    let step = Step::new(service, via.load_step(), conn);
    if via == Via::InPlace {
        staged.spool = Some(spool(&step, spool_dir, &staged.scratch, input).await?);
        return Ok(staged);
    }
    if !tools
        .records
        .claim(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Staged),
        )
        .await?
    {
        return Err(step.error(format!("{} is on record already", staged.scratch)));
    }
    let loaded = async {
        let mut create = format!("CREATE DATABASE {}", ident(&staged.scratch));
        if let Some(owner) = &owner {
            // The app's role owns what it loads, and then the database.
            create.push_str(&format!(" OWNER {}", ident(owner)));
        }
        server_query(tools, conn, &step, &create).await?;
        let mut cmd = psql(tools, conn, &staged.scratch);
        cmd.arg("--single-transaction");
        process::load_from(&step, cmd, input).await
    }
    .await;
    if let Err(e) = loaded {
        // A half-loaded scratch copy is of no use to anyone.
        if let Err(again) = discard(tools, service, conn, &staged).await {
            tracing::warn!(service, error = %again, "could not remove a scratch copy; it stays on record");
        }
        return Err(e);
    }
    Ok(staged)
}

/// Writes the dump to a new private file in `dir` (0600 in 0700): it holds
/// the app's data, and waits there for the app to stop.
async fn spool<R: AsyncRead + Unpin>(
    step: &Step<'_>,
    dir: &Path,
    name: &str,
    input: &mut R,
) -> Result<PathBuf> {
    use tokio::io::AsyncWriteExt;
    let failed =
        |e: std::io::Error| step.error(format!("writing the dump to the spool directory: {e}"));
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(failed)?;
    let path = dir.join(format!("{name}.sql"));
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        tokio::io::copy(input, &mut file).await?;
        file.flush().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(failed(e));
    }
    Ok(path)
}

/// Whether database `name` exists on `conn`'s server.
pub async fn exists(tools: &Tools, service: &str, conn: &ConnInfo, name: &str) -> Result<bool> {
    let step = Step::new(service, "name the clone's database", conn);
    Ok(!existing(tools, conn, &step, &[name]).await?.is_empty())
}

/// Which of `names` exist on the server.
async fn existing(
    tools: &Tools,
    conn: &ConnInfo,
    step: &Step<'_>,
    names: &[&str],
) -> Result<Vec<String>> {
    let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
    let out = server_query(
        tools,
        conn,
        step,
        &format!(
            "SELECT datname FROM pg_database WHERE datname IN ({})",
            list.join(", ")
        ),
    )
    .await?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Ends every other session on `names`: renaming needs them idle, and the app is stopped.
async fn kick(tools: &Tools, conn: &ConnInfo, step: &Step<'_>, names: &[&str]) -> Result<()> {
    let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ({}) AND pid <> pg_backend_pid()",
        list.join(", ")
    );
    server_query(tools, conn, step, &sql).await.map(drop)
}

/// Makes the staged copy the live database. From a scratch database: the
/// live one (if any) is renamed aside in the same transaction as the
/// scratch one takes its name, and kept until [`finish`]. In place: the
/// role's objects in the live database are dropped and the spooled dump
/// replayed, in one transaction, so that a failure leaves the old data.
pub async fn switch(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, staged.via.switch_step(), conn);
    if let Some(spool) = &staged.spool {
        return switch_in_place(tools, &step, conn, staged, spool).await;
    }
    let live = &conn.database;
    let had_live = !existing(tools, conn, &step, &[live]).await?.is_empty();
    staged.had_live.store(had_live, Ordering::SeqCst);
    // On record before anything is renamed: an agent killed now finds
    // what to put back.
    tools
        .records
        .put(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Switching),
        )
        .await?;
    kick(tools, conn, &step, &[live, &staged.scratch]).await?;
    let sql = if had_live {
        format!(
            "BEGIN; ALTER DATABASE {live} RENAME TO {old}; ALTER DATABASE {scratch} RENAME TO {live}; COMMIT;",
            live = ident(live),
            old = ident(&staged.old),
            scratch = ident(&staged.scratch)
        )
    } else {
        format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(&staged.scratch),
            ident(live)
        )
    };
    server_query(tools, conn, &step, &sql).await.map(drop)
}

/// The restore in place: `DROP OWNED BY CURRENT_USER` and the dump under
/// `psql --single-transaction`, which rolls back at the first error. psql
/// reads the spool file itself, so that the agent dying cannot cut its
/// input short (psql would commit what it had read at the end of input).
/// Objects of the live database that another role owns stay, and one the
/// dump creates again makes the restore fail (and roll back).
async fn switch_in_place(
    tools: &Tools,
    step: &Step<'_>,
    conn: &ConnInfo,
    staged: &Staged,
    spool: &Path,
) -> Result<()> {
    let live = &conn.database;
    // The app is stopped; its idle sessions would hold the tables' locks.
    let mut kick = psql(tools, conn, live);
    kick.args([
        "-A",
        "-t",
        "-c",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()",
    ]);
    process::output(step, kick).await?;
    let mut cmd = psql(tools, conn, live);
    cmd.args([
        "--single-transaction",
        "-c",
        "DROP OWNED BY CURRENT_USER",
        "-f",
    ])
    .arg(spool);
    process::run(step, cmd).await?;
    staged.committed.store(true, Ordering::SeqCst);
    Ok(())
}

/// Puts the database the switch replaced back under the live name; the
/// restored one goes back to the scratch name, for [`discard`]. A restore
/// in place cannot be undone once committed: the error says so, and that
/// the live database holds the backup's data.
pub async fn undo(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, "undo the switch", conn);
    if staged.spool.is_some() {
        if staged.committed.load(Ordering::SeqCst) {
            return Err(step.error(format!(
                "database {} was restored in place, in one transaction that committed (no admin \
                 connection, no CREATEDB): it holds the backup's data and cannot be put back",
                conn.database
            )));
        }
        // The transaction rolled back: the live database is as it was.
        return Ok(());
    }
    put_back(tools, &step, conn, staged).await?;
    tools
        .records
        .put(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Staged),
        )
        .await
}

/// Undoes a switch that began, as far as it went: the server's databases
/// say how far (the renames happen in one transaction). True when
/// something was renamed.
async fn put_back(
    tools: &Tools,
    step: &Step<'_>,
    conn: &ConnInfo,
    staged: &Staged,
) -> Result<bool> {
    let live = &conn.database;
    let found = existing(tools, conn, step, &[live, &staged.scratch, &staged.old]).await?;
    let has = |n: &str| found.iter().any(|f| f == n);
    if has(&staged.scratch) {
        // Never switched, or already put back.
        return Ok(false);
    }
    let had_live = staged.had_live.load(Ordering::SeqCst);
    let sql = match (has(live), has(&staged.old)) {
        (true, true) => format!(
            "BEGIN; ALTER DATABASE {live} RENAME TO {scratch}; ALTER DATABASE {old} RENAME TO {live}; COMMIT;",
            live = ident(live),
            old = ident(&staged.old),
            scratch = ident(&staged.scratch)
        ),
        (false, true) => format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(&staged.old),
            ident(live)
        ),
        // There was no live database before the switch: the restored one goes.
        (true, false) if !had_live => format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(live),
            ident(&staged.scratch)
        ),
        _ => {
            return Err(step.error(format!(
                "neither {} nor {} is on the server: nothing to put back",
                staged.scratch, staged.old
            )));
        }
    };
    kick(tools, conn, step, &[live, &staged.old]).await?;
    server_query(tools, conn, step, &sql).await?;
    Ok(true)
}

/// Drops what the switch replaced (or the spooled dump); the restore succeeded.
pub async fn finish(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    if let Some(spool) = &staged.spool {
        return remove_spool(service, conn, spool).await;
    }
    // Committed first: an agent killed while dropping must not put the
    // replaced database back at its next start.
    let name = staged.record_name();
    tools
        .records
        .put(&name, &staged.record(service, conn, Phase::Committed))
        .await?;
    drop_database(tools, service, conn, &staged.old).await?;
    tools.records.remove(&name).await
}

/// Drops the scratch database (or the spooled dump).
pub async fn discard(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    if let Some(spool) = &staged.spool {
        return remove_spool(service, conn, spool).await;
    }
    drop_database(tools, service, conn, &staged.scratch).await?;
    tools.records.remove(&staged.record_name()).await
}

async fn remove_spool(service: &str, conn: &ConnInfo, spool: &Path) -> Result<()> {
    match tokio::fs::remove_file(spool).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Step::new(service, "drop", conn)
                .error(format!("cannot remove the spooled dump: {e}")))
        }
        _ => Ok(()),
    }
}

/// Undoes or finishes what an interrupted restore left, as `record` says;
/// returns what was done, for the log.
pub async fn recover(tools: &Tools, record: &PgRecord) -> Result<String> {
    let conn = ConnInfo::parse(&record.service, &record.url)?;
    let service = record.service.as_str();
    let via = if tools.pg_admin_for(&conn).is_some() {
        Via::Admin
    } else {
        Via::Role
    };
    let staged = Staged {
        scratch: record.scratch.clone(),
        old: record.old.clone(),
        had_live: AtomicBool::new(record.had_live),
        ..Staged::named(via, "")
    };
    let mut done = Vec::new();
    match record.phase {
        Phase::Committed => {
            finish(tools, service, &conn, &staged).await?;
            done.push(format!(
                "dropped {}, which a finished restore replaced",
                staged.old
            ));
        }
        Phase::Staged | Phase::Switching => {
            if record.phase == Phase::Switching {
                let step = Step::new(service, "undo the switch", &conn);
                if put_back(tools, &step, &conn, &staged).await? {
                    done.push(format!("put {} back", conn.database));
                }
            }
            discard(tools, service, &conn, &staged).await?;
            done.push(format!("dropped scratch database {}", staged.scratch));
        }
    }
    Ok(done.join(", "))
}

/// Drops a database if it exists (a scratch or an old copy).
async fn drop_database(tools: &Tools, service: &str, conn: &ConnInfo, name: &str) -> Result<()> {
    let step = Step::new(service, "drop", conn);
    server_query(
        tools,
        conn,
        &step,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)),
    )
    .await
    .map(drop)
}
