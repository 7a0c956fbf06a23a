//! MySQL and MariaDB: consistent `mysqldump` SQL dumps (one transaction, with
//! routines, triggers and events), restored with `mysql` into a scratch
//! database first. Credentials reach the tools through a 0600 option file.
//!
//! MySQL cannot rename a database, and tables with triggers cannot move
//! between databases, so the switch empties the live database and copies the
//! verified scratch one into it; the scratch copy is kept if that copy fails.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;

use super::conn::ConnInfo;
use super::process::{self, Step};
use super::records::{MysqlRecord, Phase, Record};
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
        let mut text = format!(
            "[client]\ndefault-character-set=utf8mb4\nhost={}\nuser={}\n",
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

async fn execute(tools: &Tools, step: &Step<'_>, opts: &OptionFile, sql: &str) -> Result<()> {
    let mut cmd = command(tools, "mysql", opts);
    cmd.args(["--batch", "-e", sql]);
    process::output(step, cmd).await.map(drop)
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
}

impl Staged {
    fn named(tag: &str) -> Self {
        let unique = super::unique_suffix(tag);
        Self {
            scratch: format!("hop3_scratch_{unique}"),
            holding: format!("hop3_old_{unique}"),
        }
    }

    fn record_name(&self) -> String {
        format!("mysql-{}", self.scratch)
    }

    fn record(&self, service: &str, conn: &ConnInfo, phase: Phase) -> Record {
        Record::Mysql(MysqlRecord {
            service: service.to_owned(),
            url: conn.url().to_owned(),
            scratch: self.scratch.clone(),
            holding: self.holding.clone(),
            phase,
            switch: None,
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

/// Replaces the live database's content with the scratch one's.
pub async fn switch(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let step = Step::new(service, "switch", conn);
    let opts = OptionFile::write(service, conn).await?;
    let live = ident(&conn.database);
    execute(
        tools,
        &step,
        &opts,
        &format!("DROP DATABASE IF EXISTS {live}; CREATE DATABASE {live} CHARACTER SET utf8mb4"),
    )
    .await?;
    let mut dump = command(tools, "mysqldump", &opts);
    dump.args(DUMP_ARGS).arg("--").arg(&staged.scratch);
    let mut load = command(tools, "mysql", &opts);
    load.args([
        "--binary-mode",
        "--default-character-set=utf8mb4",
        "--",
        &conn.database,
    ]);
    let (mut w, mut r) = tokio::io::duplex(hop3_proto::CHUNK_SIZE);
    let copy_out = async {
        let res = process::dump_to(&step, dump, &mut w).await;
        drop(w);
        res
    };
    tokio::try_join!(copy_out, process::load_from(&step, load, &mut r)).map(drop)
}

/// The copy switch makes cannot be put back.
pub async fn undo(_tools: &Tools, service: &str, conn: &ConnInfo, _staged: &Staged) -> Result<()> {
    Err(Step::new(service, "undo the switch", conn)
        .error("the live database was overwritten with the restored copy and cannot be put back"))
}

/// Drops the scratch database, once copied.
pub async fn finish(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    discard(tools, service, conn, staged).await
}

/// Drops the scratch database.
pub async fn discard(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    drop_database(tools, service, conn, &staged.scratch).await?;
    drop_database(tools, service, conn, &staged.holding).await?;
    tools.records.remove(&staged.record_name()).await
}

/// Drops what an interrupted restore left, as `record` says; returns what
/// was done, for the log.
pub async fn recover(tools: &Tools, record: &MysqlRecord) -> Result<String> {
    let conn = ConnInfo::parse(&record.service, &record.url)?;
    let staged = Staged {
        scratch: record.scratch.clone(),
        holding: record.holding.clone(),
    };
    discard(tools, &record.service, &conn, &staged).await?;
    Ok(format!("dropped scratch database {}", staged.scratch))
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
