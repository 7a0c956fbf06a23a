//! Attached services (databases): dumping them into a backup, and restoring
//! them through a scratch copy so a failed restore leaves the live data as
//! it was.

pub mod conn;
pub mod mysql;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod tools;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hop3_proto::names::validate_service_name;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::apps::ServiceConfig;
use crate::error::{AgentError, Result};
use conn::ConnInfo;
pub use tools::Tools;

/// The kinds of service this agent can back up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mysql,
    Redis,
}

impl Kind {
    /// The kind named by an `app.json` service type.
    pub fn parse(service: &ServiceConfig) -> Result<Self> {
        match service.kind.as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::Mysql),
            "redis" => Ok(Self::Redis),
            other => Err(AgentError::UnknownService {
                service: service.name.clone(),
                kind: other.chars().take(40).collect(),
            }),
        }
    }

    /// The canonical type name, used in file names whatever alias app.json uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Postgres | Self::Mysql => "sql",
            Self::Redis => "resp",
        }
    }
}

/// `type:name`, as services are shown.
pub fn label(service: &ServiceConfig) -> String {
    format!("{}:{}", service.kind, service.name)
}

/// Checks a service and names its dump: `services/<type>_<name>.<ext>`.
pub fn artifact_path(service: &ServiceConfig) -> Result<(Kind, String)> {
    let kind = Kind::parse(service)?;
    validate_service_name(&service.name)?;
    Ok((
        kind,
        format!(
            "services/{}_{}.{}",
            service.kind,
            service.name,
            kind.extension()
        ),
    ))
}

/// Checks that `service` can be reached with its credentials (and, for
/// PostgreSQL, that pg_dump is recent enough), before a backup spends
/// minutes archiving files it would then throw away.
pub async fn check(tools: &Tools, service: &ServiceConfig) -> Result<()> {
    let kind = Kind::parse(service)?;
    let label = label(service);
    let conn = ConnInfo::parse(&label, &service.url)?;
    match kind {
        Kind::Postgres => postgres::check(tools, &label, &conn).await,
        Kind::Mysql => mysql::check(tools, &label, &conn).await,
        Kind::Redis => redis::check(&label, &conn).await,
    }
}

/// Streams a dump of `service` into `out`.
pub async fn dump<W: AsyncWrite + Unpin>(
    tools: &Tools,
    service: &ServiceConfig,
    out: &mut W,
) -> Result<()> {
    let kind = Kind::parse(service)?;
    let label = label(service);
    let conn = ConnInfo::parse(&label, &service.url)?;
    match kind {
        Kind::Postgres => postgres::dump(tools, &label, &conn, out).await,
        Kind::Mysql => mysql::dump(tools, &label, &conn, out).await,
        Kind::Redis => redis::dump(&label, &conn, out).await,
    }
}

/// A dump loaded into a scratch copy beside the live database, ready to
/// switch in; after the switch it holds what was replaced until
/// [`finish`] or [`undo`].
#[derive(Debug)]
pub struct Staged {
    label: String,
    conn: ConnInfo,
    copy: Copy,
    /// Set from the start of a switch until it is undone: the live
    /// database may then differ from before, so [`discard`] keeps away.
    touched: AtomicBool,
}

/// The kind-specific part of a [`Staged`] copy.
#[derive(Debug)]
enum Copy {
    Postgres(postgres::Staged),
    Mysql(mysql::Staged),
    Redis(redis::Staged),
}

impl Staged {
    /// `type:name` of the service.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Loads a dump of `target` (the service to restore into) into a scratch
/// copy named after `tag` (unique per restore and service), beside the live
/// database, which stays as it is: this runs while the app still runs.
/// `spool_dir` is a private directory for a dump that has to wait on disk
/// until the switch.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    target: &ServiceConfig,
    tag: &str,
    spool_dir: &Path,
    input: &mut R,
) -> Result<Staged> {
    let kind = Kind::parse(target)?;
    let label = label(target);
    let conn = ConnInfo::parse(&label, &target.url)?;
    let copy = match kind {
        Kind::Postgres => {
            Copy::Postgres(postgres::load(tools, &label, &conn, tag, spool_dir, input).await?)
        }
        Kind::Mysql => Copy::Mysql(mysql::load(tools, &label, &conn, tag, input).await?),
        Kind::Redis => Copy::Redis(redis::load(tools, &label, &conn, tag, input).await?),
    };
    Ok(Staged {
        label,
        conn,
        copy,
        touched: AtomicBool::new(false),
    })
}

/// Makes the staged copy the live database; run once the app is stopped.
/// What it replaces is kept until [`finish`] (or put back by [`undo`]). A
/// switch that fails puts back what it changed before it returns.
pub async fn switch(tools: &Tools, staged: &Staged) -> Result<()> {
    let s = staged;
    s.touched.store(true, Ordering::SeqCst);
    let switched = match &s.copy {
        Copy::Postgres(c) => postgres::switch(tools, &s.label, &s.conn, c).await,
        Copy::Mysql(c) => mysql::switch(tools, &s.label, &s.conn, c).await,
        Copy::Redis(c) => redis::switch(tools, &s.label, &s.conn, c).await,
    };
    if let Err(e) = switched {
        match undo(tools, s).await {
            Ok(()) => {}
            Err(again) => {
                tracing::error!(service = %s.label, error = %again, "could not put back what a failed switch changed");
            }
        }
        return Err(e);
    }
    Ok(())
}

/// Puts back what [`switch`] replaced (a later step of the restore failed);
/// the staged copy is then as before the switch, for [`discard`].
pub async fn undo(tools: &Tools, staged: &Staged) -> Result<()> {
    let s = staged;
    if !s.touched.load(Ordering::SeqCst) {
        return Ok(());
    }
    match &s.copy {
        Copy::Postgres(c) => postgres::undo(tools, &s.label, &s.conn, c).await?,
        Copy::Mysql(c) => mysql::undo(tools, &s.label, &s.conn, c).await?,
        Copy::Redis(c) => redis::undo(tools, &s.label, &s.conn, c).await?,
    }
    s.touched.store(false, Ordering::SeqCst);
    Ok(())
}

/// Drops what [`switch`] replaced, once the whole restore succeeded.
pub async fn finish(tools: &Tools, staged: &Staged) {
    let s = staged;
    let res = match &s.copy {
        Copy::Postgres(c) => postgres::finish(tools, &s.label, &s.conn, c).await,
        Copy::Mysql(c) => mysql::finish(tools, &s.label, &s.conn, c).await,
        Copy::Redis(c) => redis::finish(tools, &s.label, &s.conn, c).await,
    };
    if let Err(e) = res {
        tracing::warn!(service = %s.label, error = %e, "could not drop the data a restore replaced");
    }
}

/// Throws away a staged copy that was never switched in (or was undone);
/// the live database is not touched.
pub async fn discard(tools: &Tools, staged: &Staged) {
    let s = staged;
    if s.touched.load(Ordering::SeqCst) {
        tracing::warn!(service = %s.label, "not discarding a copy whose switch was not undone");
        return;
    }
    let res = match &s.copy {
        Copy::Postgres(c) => postgres::discard(tools, &s.label, &s.conn, c).await,
        Copy::Mysql(c) => mysql::discard(tools, &s.label, &s.conn, c).await,
        Copy::Redis(c) => redis::discard(tools, &s.label, &s.conn, c).await,
    };
    if let Err(e) = res {
        tracing::warn!(service = %s.label, error = %e, "could not remove a scratch copy");
    }
}

/// The URL of a clone's own copy of `source` for app `target_app`: a new
/// database on the same server (for Redis, an empty DB).
pub async fn clone_url(tools: &Tools, source: &ServiceConfig, target_app: &str) -> Result<String> {
    let kind = Kind::parse(source)?;
    let label = label(source);
    let conn = ConnInfo::parse(&label, &source.url)?;
    match kind {
        Kind::Postgres | Kind::Mysql => {
            let suffix: String = target_app
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let mut name = format!("{}_{suffix}", conn.database);
            name.truncate(63);
            Ok(conn.with_database(&name))
        }
        Kind::Redis => {
            let live = redis::db_of(&conn)?;
            let db = redis::empty_db(tools, &label, &conn, &[live]).await?;
            Ok(redis::url_for_db(&conn, db))
        }
    }
}
