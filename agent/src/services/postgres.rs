//! PostgreSQL: plain SQL dumps with `pg_dump`, restored with `psql` into a
//! scratch database that then takes the live one's name in one transaction.
//! Credentials reach the tools through `PG*` environment variables only.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use super::conn::ConnInfo;
use super::process::{self, Step};
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

/// Loads a dump into a new database `scratch` on `conn`'s server.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    scratch: &str,
    input: &mut R,
) -> Result<()> {
    let step = Step::new(service, "create scratch database", conn);
    query(
        tools,
        conn,
        &step,
        &format!("DROP DATABASE IF EXISTS {}", ident(scratch)),
    )
    .await?;
    query(
        tools,
        conn,
        &step,
        &format!("CREATE DATABASE {}", ident(scratch)),
    )
    .await?;
    let step = step.then("load");
    let mut cmd = psql(tools, conn, scratch);
    cmd.arg("--single-transaction");
    process::load_from(&step, cmd, input).await
}

/// Makes `scratch` the live database: the live one (if any) is renamed
/// aside in the same transaction, then dropped.
pub async fn switch(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    scratch: &str,
    old: &str,
) -> Result<()> {
    let step = Step::new(service, "switch", conn);
    let live = &conn.database;
    let exists = query(
        tools,
        conn,
        &step,
        &format!(
            "SELECT 1 FROM pg_database WHERE datname = {}",
            literal(live)
        ),
    )
    .await?;
    // Renaming needs the database idle: the app is stopped, end what remains.
    let kick = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ({}, {}) AND pid <> pg_backend_pid()",
        literal(live),
        literal(scratch)
    );
    query(tools, conn, &step, &kick).await?;
    let sql = if exists.trim() == "1" {
        format!(
            "BEGIN; ALTER DATABASE {live} RENAME TO {old}; ALTER DATABASE {scratch} RENAME TO {live}; COMMIT;",
            live = ident(live),
            old = ident(old),
            scratch = ident(scratch)
        )
    } else {
        format!(
            "ALTER DATABASE {} RENAME TO {}",
            ident(scratch),
            ident(live)
        )
    };
    let mut cmd = psql(tools, conn, "postgres");
    cmd.args(["-c", &sql]);
    process::output(&step, cmd).await?;
    drop_database(tools, service, conn, old).await
}

/// Drops a database if it exists (a scratch or an old copy).
pub async fn drop_database(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    name: &str,
) -> Result<()> {
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
