//! PostgreSQL: plain SQL dumps with `pg_dump`, restored with `psql` into a
//! scratch database that then takes the live one's name in one transaction.
//! Credentials reach the tools through `PG*` environment variables only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use super::conn::ConnInfo;
use super::process::{self, Step};
use super::records::{PgRecord, Phase, Record};
use super::tools::Tools;
use crate::error::Result;

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

/// A dump loaded into a scratch database beside the live one.
#[derive(Debug)]
pub struct Staged {
    scratch: String,
    /// The name the live database is renamed to by the switch.
    old: String,
    /// Whether a live database existed when the switch began.
    had_live: AtomicBool,
}

impl Staged {
    fn named(tag: &str) -> Self {
        let unique = super::unique_suffix(tag);
        Self {
            scratch: format!("{SCRATCH_PREFIX}{unique}"),
            old: format!("{OLD_PREFIX}{unique}"),
            had_live: AtomicBool::new(false),
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

/// Loads a dump into a new scratch database on `conn`'s server. The
/// database is on record before it is created.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    tag: &str,
    _spool_dir: &Path,
    input: &mut R,
) -> Result<Staged> {
    let staged = Staged::named(tag);
    let step = Step::new(service, "create scratch database", conn);
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
        query(
            tools,
            conn,
            &step,
            &format!("CREATE DATABASE {}", ident(&staged.scratch)),
        )
        .await?;
        let mut cmd = psql(tools, conn, &staged.scratch);
        cmd.arg("--single-transaction");
        process::load_from(&step.then("load"), cmd, input).await
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
    let out = query(
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
    query(tools, conn, step, &sql).await.map(drop)
}

/// Makes the scratch database the live one: the live one (if any) is
/// renamed aside in the same transaction, and kept until [`finish`].
pub async fn switch(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, "switch", conn);
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
    let mut cmd = psql(tools, conn, "postgres");
    cmd.args(["-c", &sql]);
    process::output(&step, cmd).await.map(drop)
}

/// Puts the database the switch replaced back under the live name; the
/// restored one goes back to the scratch name, for [`discard`].
pub async fn undo(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, "undo the switch", conn);
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
    let mut cmd = psql(tools, conn, "postgres");
    cmd.args(["-c", &sql]);
    process::output(step, cmd).await?;
    Ok(true)
}

/// Drops the database the switch replaced; the restore succeeded.
pub async fn finish(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
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

/// Drops the scratch database.
pub async fn discard(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    drop_database(tools, service, conn, &staged.scratch).await?;
    tools.records.remove(&staged.record_name()).await
}

/// Undoes or finishes what an interrupted restore left, as `record` says;
/// returns what was done, for the log.
pub async fn recover(tools: &Tools, record: &PgRecord) -> Result<String> {
    let conn = ConnInfo::parse(&record.service, &record.url)?;
    let service = record.service.as_str();
    let staged = Staged {
        scratch: record.scratch.clone(),
        old: record.old.clone(),
        had_live: AtomicBool::new(record.had_live),
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
    query(
        tools,
        conn,
        &step,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)),
    )
    .await
    .map(drop)
}
