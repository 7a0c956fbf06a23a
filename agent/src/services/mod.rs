//! Attached services (databases): dumping them into a backup, and restoring
//! them through a scratch copy so a failed restore leaves the live data as
//! it was.

pub mod conn;
pub mod mysql;
pub mod postgres;
pub mod process;
pub mod records;
pub mod redis;
pub mod tools;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use hop3_proto::names::validate_service_name;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::apps::ServiceConfig;
use crate::error::{AgentError, Result};
use conn::ConnInfo;
use records::Record;
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
    copy: Loaded,
    /// Set from the start of a switch until it is undone: the live
    /// database may then differ from before, so [`discard`] keeps away.
    touched: AtomicBool,
    /// The record that set the live database aside, when it is a clone's
    /// new one: it must still be absent at the switch, and the record goes
    /// once the restore is over.
    reservation: Option<String>,
}

/// The kind-specific part of a [`Staged`] copy.
#[derive(Debug)]
enum Loaded {
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
    let name = reservation_name(kind, &conn)?;
    let reservation = match tools.records.get(&name).await? {
        Some(Record::Reserved(r)) if r.url == target.url => Some(name),
        _ => None,
    };
    let copy = match kind {
        Kind::Postgres => {
            Loaded::Postgres(postgres::load(tools, &label, &conn, tag, spool_dir, input).await?)
        }
        Kind::Mysql => Loaded::Mysql(mysql::load(tools, &label, &conn, tag, input).await?),
        Kind::Redis => Loaded::Redis(redis::load(tools, &label, &conn, tag, input).await?),
    };
    Ok(Staged {
        label,
        conn,
        copy,
        touched: AtomicBool::new(false),
        reservation,
    })
}

/// Makes the staged copy the live database; run once the app is stopped.
/// What it replaces is kept until [`finish`] (or put back by [`undo`]). A
/// switch that fails puts back what it changed before it returns.
pub async fn switch(tools: &Tools, staged: &Staged) -> Result<()> {
    let s = staged;
    if s.reservation.is_some() {
        fresh_target(tools, s).await?;
    }
    s.touched.store(true, Ordering::SeqCst);
    let switched = match &s.copy {
        Loaded::Postgres(c) => postgres::switch(tools, &s.label, &s.conn, c).await,
        Loaded::Mysql(c) => mysql::switch(tools, &s.label, &s.conn, c).await,
        Loaded::Redis(c) => redis::switch(tools, &s.label, &s.conn, c).await,
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
        Loaded::Postgres(c) => postgres::undo(tools, &s.label, &s.conn, c).await?,
        Loaded::Mysql(c) => mysql::undo(tools, &s.label, &s.conn, c).await?,
        Loaded::Redis(c) => redis::undo(tools, &s.label, &s.conn, c).await?,
    }
    s.touched.store(false, Ordering::SeqCst);
    Ok(())
}

/// Drops what [`switch`] replaced, once the whole restore succeeded.
pub async fn finish(tools: &Tools, staged: &Staged) {
    let s = staged;
    let res = match &s.copy {
        Loaded::Postgres(c) => postgres::finish(tools, &s.label, &s.conn, c).await,
        Loaded::Mysql(c) => mysql::finish(tools, &s.label, &s.conn, c).await,
        Loaded::Redis(c) => redis::finish(tools, &s.label, &s.conn, c).await,
    };
    if let Err(e) = res {
        tracing::warn!(service = %s.label, error = %e, "could not drop the data a restore replaced");
    }
    release(tools, s).await;
}

/// Fails unless a clone's new database is still absent: one that appeared
/// since its name was chosen is someone's, and a switch would set it aside.
async fn fresh_target(tools: &Tools, s: &Staged) -> Result<()> {
    let taken = match &s.copy {
        Loaded::Postgres(_) => postgres::exists(tools, &s.label, &s.conn, &s.conn.database).await?,
        Loaded::Mysql(_) => mysql::exists(tools, &s.label, &s.conn, &s.conn.database).await?,
        // Its DB number is claimed on record and was empty.
        Loaded::Redis(_) => false,
    };
    if taken {
        return Err(AgentError::Service {
            service: s.label.clone(),
            step: "switch",
            detail: format!(
                "database {} appeared on the server since it was picked for the clone; retry the restore",
                s.conn.database
            ),
        });
    }
    Ok(())
}

/// Removes a clone's reservation: its app.json lists the database now, or
/// the restore failed.
async fn release(tools: &Tools, s: &Staged) {
    if let Some(name) = &s.reservation
        && let Err(e) = tools.records.remove(name).await
    {
        tracing::warn!(service = %s.label, error = %e, "could not release a clone's reservation");
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
        Loaded::Postgres(c) => postgres::discard(tools, &s.label, &s.conn, c).await,
        Loaded::Mysql(c) => mysql::discard(tools, &s.label, &s.conn, c).await,
        Loaded::Redis(c) => redis::discard(tools, &s.label, &s.conn, c).await,
    };
    if let Err(e) = res {
        tracing::warn!(service = %s.label, error = %e, "could not remove a scratch copy");
    }
    release(tools, s).await;
}

/// At agent start, undoes or drops whatever interrupted restores left on
/// database servers, as the records say (a killed agent's scratch copies,
/// switches half done), and removes spooled dumps. Each step is logged; a
/// record that cannot be dealt with now (its server is down) stays for the
/// next start. Objects are found by their records only, never by their
/// names: another host's agent may be restoring on the same server.
pub async fn recover(tools: &Tools) {
    if let Err(e) = tools.records.clear_spool().await {
        tracing::warn!(error = %e, "could not remove spooled dumps");
    }
    let listed = match tools.records.list().await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the records of interrupted restores");
            return;
        }
    };
    // Reservations last: a clone's switch that began is put back first.
    let (reserved, staged): (Vec<_>, Vec<_>) = listed
        .into_iter()
        .partition(|(_, r)| matches!(r, Record::Reserved(_)));
    for (name, record) in staged.into_iter().chain(reserved) {
        let done = match &record {
            Record::Postgres(r) => postgres::recover(tools, r).await,
            Record::Mysql(r) => mysql::recover(tools, r).await,
            Record::Redis(r) => redis::recover(tools, r).await,
            Record::Reserved(_) => tools
                .records
                .remove(&name)
                .await
                .map(|()| "released it".to_owned()),
        };
        match done {
            Ok(done) => tracing::info!(
                record = name,
                what = record.describe(),
                "cleaned what an interrupted restore left: {done}"
            ),
            Err(e) => tracing::warn!(
                record = name,
                what = record.describe(),
                error = %e,
                "could not clean what an interrupted restore left; it stays on record for the next start"
            ),
        }
    }
}

/// The URL of a clone's own copy of `source` for app `target_app`: a new
/// database on the same server (for Redis, an empty DB), checked not to
/// exist.
pub async fn clone_url(tools: &Tools, source: &ServiceConfig, target_app: &str) -> Result<String> {
    let kind = Kind::parse(source)?;
    let label = label(source);
    let conn = ConnInfo::parse(&label, &source.url)?;
    match kind {
        Kind::Postgres | Kind::Mysql => {
            if kind == Kind::Postgres {
                postgres::can_create(tools, &label, &conn).await?;
            }
            for name in clone_database_names(&conn.database, target_app) {
                if name == conn.database {
                    continue;
                }
                let taken = match kind {
                    Kind::Postgres => postgres::exists(tools, &label, &conn, &name).await?,
                    _ => mysql::exists(tools, &label, &conn, &name).await?,
                };
                if taken {
                    continue;
                }
                let url = conn.with_database(&name);
                let target = ConnInfo::parse(&label, &url)?;
                let reserved = Record::Reserved(records::Reserved {
                    service: label.clone(),
                    url: url.clone(),
                });
                if tools
                    .records
                    .claim(&reservation_name(kind, &target)?, &reserved)
                    .await?
                {
                    return Ok(url);
                }
            }
            Err(AgentError::Service {
                service: label,
                step: "name the clone's database",
                detail: format!(
                    "every name tried for it is taken (the first: {})",
                    clone_database_names(&conn.database, target_app)
                        .next()
                        .unwrap_or_default()
                ),
            })
        }
        Kind::Redis => redis::clone_url(tools, &label, &conn).await,
    }
}

/// `<tag>_<8 random hex digits>`: two restores of one backup at once (to
/// two clones, say) must not share a scratch name on one server.
fn unique_suffix(tag: &str) -> String {
    format!("{tag}_{:08x}", rand::random::<u32>())
}

/// The record that sets `target`'s database aside for a clone.
fn reservation_name(kind: Kind, target: &ConnInfo) -> Result<String> {
    match kind {
        // A Redis DB's claim is one for scratch copies and clones alike.
        Kind::Redis => redis::reservation_name(target),
        Kind::Postgres | Kind::Mysql => Ok(format!(
            "reserved-{}-{}-{}-{}",
            kind.name(),
            target.host.to_ascii_lowercase(),
            target.port.map(|p| p.to_string()).unwrap_or_default(),
            target.database
        )),
    }
}

/// Most names tried for a clone's database before giving up.
const CLONE_NAME_ATTEMPTS: u32 = 8;

/// Longest readable part of a clone's database name: with `_` and 8 hex
/// digits it makes 63 bytes, PostgreSQL's limit (MySQL's is 64 characters).
const CLONE_NAME_PREFIX: usize = 54;

/// Names for the database of clone `target_app` of database `source`, best
/// first: `<source>_<target_app>` folded to `[a-z0-9_]` and cut to
/// [`CLONE_NAME_PREFIX`] bytes (only ASCII is left, so any cut falls
/// between characters), then `_` and 8 hex digits of a SHA-256 of both
/// names as given and the attempt's number. The hash keeps apart names
/// that fold or cut alike (`my-app`, `my.app`, `my_app`); the caller still
/// checks each against the server.
pub fn clone_database_names(source: &str, target_app: &str) -> impl Iterator<Item = String> {
    let folded: String = format!("{source}_{target_app}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(CLONE_NAME_PREFIX)
        .collect();
    let (source, target) = (source.to_owned(), target_app.to_owned());
    (0..CLONE_NAME_ATTEMPTS).map(move |attempt| {
        let mut hash = Sha256::new();
        for part in [source.as_bytes(), target.as_bytes()] {
            // Lengths first: ("ab", "c") and ("a", "bc") hash apart.
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.update(attempt.to_le_bytes());
        let digest = hash.finalize();
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{folded}_{hex}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_names_are_valid_distinct_and_never_the_source() {
        let long = format!("shop_{}", "x".repeat(58));
        let unicode = format!("boutique_données_{}", "é".repeat(40));
        let mut seen = std::collections::BTreeSet::new();
        for source in ["shop", long.as_str(), unicode.as_str(), "Shop-DB"] {
            for target in ["my-app", "my.app", "my_app", "shop-clone"] {
                let names: Vec<String> = clone_database_names(source, target).collect();
                assert_eq!(names.len(), CLONE_NAME_ATTEMPTS as usize);
                for name in names {
                    assert!(name.len() <= 63, "{name}");
                    assert!(
                        name.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                        "{name}"
                    );
                    assert_ne!(name, source);
                    assert!(seen.insert(name.clone()), "{name} twice");
                }
            }
        }
        let first = clone_database_names("shop", "shop-clone").next().unwrap();
        assert!(first.starts_with("shop_shop_clone_"), "{first}");
        assert_eq!(
            first,
            clone_database_names("shop", "shop-clone").next().unwrap()
        );
    }
}
