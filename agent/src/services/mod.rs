//! Attached services (databases): dumping them into a backup, and restoring
//! them through a scratch copy so a failed restore leaves the live data as
//! it was.

pub mod conn;
pub mod mysql;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod tools;

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

/// A dump loaded into a scratch copy beside the live database, ready to switch.
#[derive(Debug)]
pub struct Staged {
    kind: Kind,
    label: String,
    conn: ConnInfo,
    scratch: String,
    old: String,
}

impl Staged {
    /// `type:name` of the service.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Loads a dump of `target` (the service to restore into) into a scratch
/// copy named after `tag` (unique per restore and service).
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    target: &ServiceConfig,
    tag: &str,
    input: &mut R,
) -> Result<Staged> {
    let kind = Kind::parse(target)?;
    let label = label(target);
    let conn = ConnInfo::parse(&label, &target.url)?;
    let (scratch, old) = match kind {
        Kind::Postgres | Kind::Mysql => (format!("hop3_scratch_{tag}"), format!("hop3_old_{tag}")),
        Kind::Redis => {
            let live = redis::db_of(&conn)?;
            let db = redis::empty_db(&label, &conn, &[live]).await?;
            (db.to_string(), String::new())
        }
    };
    let loaded = match kind {
        Kind::Postgres => postgres::load(tools, &label, &conn, &scratch, input).await,
        Kind::Mysql => mysql::load(tools, &label, &conn, &scratch, input).await,
        Kind::Redis => {
            let db = scratch.parse().expect("a DB number");
            redis::load(&label, &conn, db, input).await
        }
    };
    let staged = Staged {
        kind,
        label,
        conn,
        scratch,
        old,
    };
    match loaded {
        Ok(()) => Ok(staged),
        Err(e) => {
            // A half-loaded scratch copy is of no use to anyone.
            discard(tools, &staged).await;
            Err(e)
        }
    }
}

/// Makes the staged copy the live database.
pub async fn switch(tools: &Tools, staged: &Staged) -> Result<()> {
    let s = staged;
    match s.kind {
        Kind::Postgres => postgres::switch(tools, &s.label, &s.conn, &s.scratch, &s.old).await,
        Kind::Mysql => mysql::switch(tools, &s.label, &s.conn, &s.scratch).await,
        Kind::Redis => {
            let live = redis::db_of(&s.conn)?;
            let scratch = s.scratch.parse().expect("a DB number");
            redis::switch(&s.label, &s.conn, live, scratch).await
        }
    }
}

/// Throws a staged copy away; the live database was never touched.
pub async fn discard(tools: &Tools, staged: &Staged) {
    let s = staged;
    let res = match s.kind {
        Kind::Postgres => postgres::drop_database(tools, &s.label, &s.conn, &s.scratch).await,
        Kind::Mysql => mysql::drop_database(tools, &s.label, &s.conn, &s.scratch).await,
        Kind::Redis => {
            let scratch = s.scratch.parse().expect("a DB number");
            redis::flush(&s.label, &s.conn, scratch).await
        }
    };
    if let Err(e) = res {
        tracing::warn!(service = %s.label, error = %e, "could not remove a scratch copy");
    }
}

/// The URL of a clone's own copy of `source` for app `target_app`: a new
/// database on the same server (for Redis, an empty DB).
pub async fn clone_url(source: &ServiceConfig, target_app: &str) -> Result<String> {
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
            let db = redis::empty_db(&label, &conn, &[live]).await?;
            Ok(redis::url_for_db(&conn, db))
        }
    }
}
