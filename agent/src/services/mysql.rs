//! MySQL and MariaDB: consistent `mysqldump` SQL dumps (one transaction, with
//! routines, triggers and events), restored with `mysql` into a scratch
//! database first. Credentials reach the tools through a 0600 option file.
//!
//! MySQL cannot rename a database, so the switch moves tables: in one
//! atomic multi-table `RENAME TABLE`, the live tables go into a holding
//! schema and the scratch ones take their place. Triggers stop a table from
//! moving between schemas, and views, routines and events belong to their
//! schema, so those are dropped first and made again from SQL that
//! `mysqldump` writes without a schema name: the scratch database's in the
//! live one after the move; the live one's, kept on record, to undo it.
//! The holding schema is dropped only when the whole restore succeeded.

use std::path::PathBuf;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use super::conn::ConnInfo;
use super::process::{self, Step};
use super::records::{MysqlRecord, MysqlSwitch, Phase, Record};
use super::tools::Tools;
use crate::error::{AgentError, Result};

/// A private option file holding the credentials; removed on drop.
struct OptionFile {
    dir: PathBuf,
    path: PathBuf,
}

impl OptionFile {
    async fn write(service: &str, conn: &ConnInfo) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        // utf8mb4 for every statement and name: a database named in
        // unicode is otherwise sent in the client's default character set.
        // A connect timeout for the mysql client, as psql's: the agent's
        // start waits on it when it cleans up after an interrupted restore
        // (mysqldump knows no such setting: it goes in mysql's own group).
        let mut text = format!(
            "[mysql]\nconnect-timeout=10\n[client]\ndefault-character-set=utf8mb4\nhost={}\nuser={}\n",
            quote(&conn.host),
            quote(&conn.user)
        );
        if let Some(port) = conn.port {
            text.push_str(&format!("port={port}\nprotocol=TCP\n"));
        }
        if let Some(pw) = &conn.password {
            text.push_str(&format!("password={}\n", quote(pw)));
        }
        let dir = std::env::temp_dir().join(format!(
            "hop3-agent-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("client.cnf");
        let (d, p) = (dir.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::DirBuilder::new().mode(0o700).create(&d)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)?;
            std::io::Write::write_all(&mut f, text.as_bytes())
        })
        .await
        .expect("option file task")
        .map_err(|e| AgentError::Service {
            service: service.to_owned(),
            step: "connect",
            detail: format!("cannot write the client option file: {e}"),
        })?;
        Ok(Self { dir, path })
    }

    fn arg(&self) -> String {
        format!("--defaults-extra-file={}", self.path.display())
    }
}

impl Drop for OptionFile {
    fn drop(&mut self) {
        // Tiny and local: done inline so the secret never outlives its use.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A tool command; the option file must come first on its command line.
fn command(tools: &Tools, tool: &str, opts: &OptionFile) -> Command {
    let mut cmd = Command::new(tools.mysql(tool));
    cmd.env_remove("MYSQL_PWD").arg(opts.arg());
    cmd
}

const DUMP_ARGS: [&str; 7] = [
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--no-tablespaces",
    "--default-character-set=utf8mb4",
];

/// Runs SQL statements, fed on stdin (a list of tables can be long).
async fn execute(tools: &Tools, step: &Step<'_>, opts: &OptionFile, sql: &str) -> Result<()> {
    let mut cmd = command(tools, "mysql", opts);
    cmd.arg("--batch");
    process::load_from(step, cmd, &mut sql.as_bytes()).await
}

/// Runs SQL in database `db`, as the `mysql` client reads a dump
/// (`DELIMITER` lines and all).
async fn run_in(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    db: &str,
    sql: &str,
) -> Result<()> {
    let mut cmd = command(tools, "mysql", opts);
    cmd.args(["--binary-mode", "--default-character-set=utf8mb4", "--", db]);
    process::load_from(step, cmd, &mut sql.as_bytes()).await
}

/// The names a query returns as `HEX(name)`, one a row: hex survives any
/// character a name may hold, tabs and newlines included.
async fn names(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    sql: &str,
) -> Result<Vec<String>> {
    let mut cmd = command(tools, "mysql", opts);
    cmd.args(["--batch", "--skip-column-names", "-e", sql]);
    let out = process::output(step, cmd).await?;
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let bytes = (0..l.len())
                .step_by(2)
                .map(|i| l.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>();
            bytes
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| step.error(format!("unexpected name {l:?} from the server")))
        })
        .collect()
}

/// Connects to the service's database.
pub async fn check(tools: &Tools, service: &str, conn: &ConnInfo) -> Result<()> {
    let step = Step::new(service, "connect", conn);
    let opts = OptionFile::write(service, conn).await?;
    let mut cmd = command(tools, "mysql", &opts);
    cmd.args(["--batch", "-e", "SELECT 1", "--", &conn.database]);
    process::output(&step, cmd).await.map(drop)
}

/// Streams a dump of `conn`'s database into `out`.
pub async fn dump<W: AsyncWrite + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    out: &mut W,
) -> Result<()> {
    let step = Step::new(service, "dump", conn);
    let opts = OptionFile::write(service, conn).await?;
    let mut cmd = command(tools, "mysqldump", &opts);
    cmd.args(DUMP_ARGS).arg("--").arg(&conn.database);
    process::dump_to(&step, cmd, out).await
}

/// `s` as a string literal that no quoting can break: its bytes in hex.
fn literal(s: &str) -> String {
    let hex: String = s.bytes().map(|b| format!("{b:02X}")).collect();
    format!("CONVERT(X'{hex}' USING utf8mb4)")
}

/// Whether database `name` exists on `conn`'s server, as far as the
/// service's user can see.
pub async fn exists(tools: &Tools, service: &str, conn: &ConnInfo, name: &str) -> Result<bool> {
    let step = Step::new(service, "look up a database", conn);
    let opts = OptionFile::write(service, conn).await?;
    let mut cmd = command(tools, "mysql", &opts);
    cmd.args(["--batch", "--skip-column-names", "-e"])
        .arg(format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
            literal(name)
        ));
    Ok(process::output(&step, cmd).await?.trim() != "0")
}

/// A dump loaded into a scratch database beside the live one.
#[derive(Debug)]
pub struct Staged {
    scratch: String,
    /// Receives the live tables at the switch, until the restore is finished.
    holding: String,
    /// What the switch found, once it began.
    switch: Mutex<Option<MysqlSwitch>>,
}

impl Staged {
    fn named(tag: &str) -> Self {
        let unique = super::unique_suffix(tag);
        Self {
            scratch: format!("hop3_scratch_{unique}"),
            holding: format!("hop3_old_{unique}"),
            switch: Mutex::new(None),
        }
    }

    fn record_name(&self) -> String {
        format!("mysql-{}", self.scratch)
    }

    fn found(&self) -> Option<MysqlSwitch> {
        self.switch.lock().expect("switch state").clone()
    }

    fn record(&self, service: &str, conn: &ConnInfo, phase: Phase) -> Record {
        Record::Mysql(MysqlRecord {
            service: service.to_owned(),
            url: conn.url().to_owned(),
            scratch: self.scratch.clone(),
            holding: self.holding.clone(),
            phase,
            switch: self.found(),
        })
    }
}

/// Loads a dump into a new scratch database, on record before it is created.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    tag: &str,
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
        let opts = OptionFile::write(service, conn).await?;
        execute(
            tools,
            &step,
            &opts,
            &format!(
                "CREATE DATABASE {} CHARACTER SET utf8mb4",
                ident(&staged.scratch)
            ),
        )
        .await?;
        let mut cmd = command(tools, "mysql", &opts);
        cmd.args([
            "--binary-mode",
            "--default-character-set=utf8mb4",
            "--",
            &staged.scratch,
        ]);
        process::load_from(&step.then("load"), cmd, input).await
    }
    .await;
    if let Err(e) = loaded {
        if let Err(again) = discard(tools, service, conn, &staged).await {
            tracing::warn!(service, error = %again, "could not remove a scratch copy; it stays on record");
        }
        return Err(e);
    }
    Ok(staged)
}

/// The tables of `db` that move at a switch (base tables and sequences).
async fn tables(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    db: &str,
) -> Result<Vec<String>> {
    names(
        tools,
        step,
        opts,
        &format!(
            "SELECT HEX(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} \
             AND TABLE_TYPE IN ('BASE TABLE', 'SEQUENCE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
            literal(db)
        ),
    )
    .await
}

/// SQL that makes `db`'s routines, events, triggers and views again in
/// whatever database it is run in: mysqldump writes them without the
/// schema's name. Views come last, as they may call routines.
async fn objects_sql(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    db: &str,
) -> Result<String> {
    const ARGS: [&str; 6] = [
        "--no-data",
        "--skip-comments",
        "--skip-lock-tables",
        "--no-tablespaces",
        "--hex-blob",
        "--default-character-set=utf8mb4",
    ];
    let mut out = Vec::new();
    let mut cmd = command(tools, "mysqldump", opts);
    cmd.args(ARGS)
        .args([
            "--no-create-info",
            "--routines",
            "--triggers",
            "--events",
            "--",
        ])
        .arg(db);
    process::dump_to(step, cmd, &mut out).await?;
    let views = names(
        tools,
        step,
        opts,
        &format!(
            "SELECT HEX(TABLE_NAME) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {} ORDER BY TABLE_NAME",
            literal(db)
        ),
    )
    .await?;
    if !views.is_empty() {
        // Named, the views alone (with placeholders for the ones they read).
        let mut cmd = command(tools, "mysqldump", opts);
        cmd.args(ARGS)
            .args(["--skip-triggers", "--"])
            .arg(db)
            .args(&views);
        process::dump_to(step, cmd, &mut out).await?;
    }
    String::from_utf8(out)
        .map_err(|_| step.error(format!("the definitions of {db}'s routines are not UTF-8")))
}

/// Drops `db`'s triggers and views, and with `all` its routines and events.
async fn drop_objects(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    db: &str,
    all: bool,
) -> Result<()> {
    let schema = literal(db);
    let mut kinds = vec![
        (
            "TRIGGER",
            format!(
                "SELECT HEX(TRIGGER_NAME) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {schema}"
            ),
        ),
        (
            "VIEW",
            format!(
                "SELECT HEX(TABLE_NAME) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {schema}"
            ),
        ),
    ];
    if all {
        kinds.extend([
            ("PROCEDURE", format!("SELECT HEX(ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {schema} AND ROUTINE_TYPE = 'PROCEDURE'")),
            ("FUNCTION", format!("SELECT HEX(ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {schema} AND ROUTINE_TYPE = 'FUNCTION'")),
            ("EVENT", format!("SELECT HEX(EVENT_NAME) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {schema}")),
        ]);
    }
    let mut sql = String::new();
    for (kind, query) in kinds {
        for name in names(tools, step, opts, &query).await? {
            sql.push_str(&format!(
                "DROP {kind} IF EXISTS {}.{};\n",
                ident(db),
                ident(&name)
            ));
        }
    }
    if sql.is_empty() {
        return Ok(());
    }
    execute(tools, step, opts, &sql).await
}

/// Moves tables in one atomic `RENAME TABLE`: `(from, to, table)` each.
async fn move_tables(
    tools: &Tools,
    step: &Step<'_>,
    opts: &OptionFile,
    moves: &[(&str, &str, &str)],
) -> Result<()> {
    if moves.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = moves
        .iter()
        .map(|(from, to, t)| format!("{}.{} TO {}.{}", ident(from), ident(t), ident(to), ident(t)))
        .collect();
    execute(
        tools,
        step,
        opts,
        &format!("RENAME TABLE {};", list.join(", ")),
    )
    .await
}

/// Makes the scratch copy the live database: the live tables move into the
/// holding schema and the scratch ones take their place in one atomic
/// rename, then the scratch database's triggers, views, routines and
/// events are made in the live one. What it found is on record first.
pub async fn switch(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, "switch", conn);
    let opts = OptionFile::write(service, conn).await?;
    let live = conn.database.as_str();
    let live_existed = exists(tools, service, conn, live).await?;
    let (old_tables, old_objects) = if live_existed {
        (
            tables(tools, &step, &opts, live).await?,
            objects_sql(tools, &step, &opts, live).await?,
        )
    } else {
        (Vec::new(), String::new())
    };
    let new_tables = tables(tools, &step, &opts, &staged.scratch).await?;
    let new_objects = objects_sql(tools, &step, &opts, &staged.scratch).await?;
    *staged.switch.lock().expect("switch state") = Some(MysqlSwitch {
        live_existed,
        old_tables,
        new_tables,
        old_objects,
    });
    let found = staged.found().expect("just set");
    tools
        .records
        .put(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Switching),
        )
        .await?;

    let mut create = format!(
        "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4;",
        ident(&staged.holding)
    );
    if !live_existed {
        // Not IF NOT EXISTS: a database of that name the user cannot see is someone's.
        create.push_str(&format!(
            " CREATE DATABASE {} CHARACTER SET utf8mb4;",
            ident(live)
        ));
    }
    execute(tools, &step, &opts, &create).await?;
    drop_objects(tools, &step, &opts, live, true).await?;
    drop_objects(tools, &step, &opts, &staged.scratch, false).await?;
    let moves: Vec<(&str, &str, &str)> = found
        .old_tables
        .iter()
        .map(|t| (live, staged.holding.as_str(), t.as_str()))
        .chain(
            found
                .new_tables
                .iter()
                .map(|t| (staged.scratch.as_str(), live, t.as_str())),
        )
        .collect();
    move_tables(tools, &step, &opts, &moves).await?;
    crate::failpoint::reach("mysql-switch")
        .await
        .map_err(|e| step.error(e))?;
    run_in(tools, &step, &opts, live, &new_objects).await
}

/// Puts back what the switch replaced, as far as it went: the live tables
/// come back from the holding schema (the restored ones go back to the
/// scratch database), and the live database's triggers, views, routines
/// and events are made again.
pub async fn undo(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let Some(found) = staged.found() else {
        // The switch never began.
        return Ok(());
    };
    let step = Step::new(service, "undo the switch", conn);
    let opts = OptionFile::write(service, conn).await?;
    let live = conn.database.as_str();
    if exists(tools, service, conn, live).await? {
        drop_objects(tools, &step, &opts, live, true).await?;
    }
    // The rename is atomic: either every table moved, or none did.
    let moved = if !found.new_tables.is_empty() {
        let left = tables(tools, &step, &opts, &staged.scratch).await?;
        !found.new_tables.iter().any(|t| left.contains(t))
    } else if !found.old_tables.is_empty() {
        !tables(tools, &step, &opts, &staged.holding)
            .await?
            .is_empty()
    } else {
        false
    };
    if moved {
        let now = tables(tools, &step, &opts, live).await?;
        let moves: Vec<(&str, &str, &str)> = now
            .iter()
            .map(|t| (live, staged.scratch.as_str(), t.as_str()))
            .chain(
                found
                    .old_tables
                    .iter()
                    .map(|t| (staged.holding.as_str(), live, t.as_str())),
            )
            .collect();
        move_tables(tools, &step, &opts, &moves).await?;
    }
    if found.live_existed {
        run_in(tools, &step, &opts, live, &found.old_objects).await?;
    } else if exists(tools, service, conn, live).await?
        && tables(tools, &step, &opts, live).await?.is_empty()
    {
        // Made by the switch, for a clone: it goes again.
        execute(
            tools,
            &step,
            &opts,
            &format!("DROP DATABASE {};", ident(live)),
        )
        .await?;
    }
    *staged.switch.lock().expect("switch state") = None;
    tools
        .records
        .put(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Staged),
        )
        .await
}

/// Drops the holding schema (what the switch replaced) and the emptied
/// scratch database; the restore succeeded.
pub async fn finish(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    tools
        .records
        .put(
            &staged.record_name(),
            &staged.record(service, conn, Phase::Committed),
        )
        .await?;
    discard(tools, service, conn, staged).await
}

/// Drops the scratch database (and the holding schema, if any).
pub async fn discard(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    drop_database(tools, service, conn, &staged.scratch).await?;
    drop_database(tools, service, conn, &staged.holding).await?;
    tools.records.remove(&staged.record_name()).await
}

/// Undoes or finishes what an interrupted restore left, as `record` says;
/// returns what was done, for the log.
pub async fn recover(tools: &Tools, record: &MysqlRecord) -> Result<String> {
    let conn = ConnInfo::parse(&record.service, &record.url)?;
    let service = record.service.as_str();
    let staged = Staged {
        scratch: record.scratch.clone(),
        holding: record.holding.clone(),
        switch: Mutex::new(record.switch.clone()),
    };
    match record.phase {
        Phase::Committed => {
            finish(tools, service, &conn, &staged).await?;
            Ok(format!(
                "dropped {}, which a finished restore replaced",
                staged.holding
            ))
        }
        Phase::Staged | Phase::Switching => {
            let mut done = String::new();
            if record.switch.is_some() {
                undo(tools, service, &conn, &staged).await?;
                done = format!("put {} back, ", conn.database);
            }
            discard(tools, service, &conn, &staged).await?;
            Ok(format!("{done}dropped scratch database {}", staged.scratch))
        }
    }
}

/// Drops a database if it exists. Looked up first: a user without rights
/// on the name (who could not have made it) is refused even `IF EXISTS`.
async fn drop_database(tools: &Tools, service: &str, conn: &ConnInfo, name: &str) -> Result<()> {
    if !exists(tools, service, conn, name).await? {
        return Ok(());
    }
    let step = Step::new(service, "drop", conn);
    let opts = OptionFile::write(service, conn).await?;
    execute(
        tools,
        &step,
        &opts,
        &format!("DROP DATABASE IF EXISTS {}", ident(name)),
    )
    .await
}
