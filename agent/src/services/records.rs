//! What the agent keeps on record about the database objects it makes
//! beside live ones: scratch copies, what a switch replaced, and DBs it has
//! handed out. A record is written before its object is created and
//! removed once the object is gone, so that an agent killed in between
//! finds at its next start everything it has to undo or drop.
//!
//! Records live in `$HOP3_ROOT/.hop3-backup/services/`, one JSON file each
//! (`<kind>-<object>.json`), 0600 in a 0700 directory: they hold the
//! services' connection URLs, passwords included.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// How far the restore that owns a record got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A scratch copy is being made or is ready; the live database is as it was.
    Staged,
    /// The switch may have begun: what the server holds says how far it got.
    Switching,
    /// The restore succeeded: what the switch replaced is to be dropped.
    Committed,
}

/// One record: an object on a database server that the agent made.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A PostgreSQL scratch database, and the name the live one is renamed
    /// to by the switch.
    Postgres(PgRecord),
    /// A MySQL scratch database and the holding schema that receives the
    /// live tables at the switch.
    Mysql(MysqlRecord),
    /// A Redis scratch DB of the live DB's server.
    Redis(RedisRecord),
    /// A database (or Redis DB) set aside for a clone, until the clone's
    /// app.json lists it.
    Reserved(Reserved),
}

/// [`Record::Postgres`].
#[derive(Clone, Serialize, Deserialize)]
pub struct PgRecord {
    pub service: String,
    /// The live service's URL (a password in it).
    pub url: String,
    pub scratch: String,
    pub old: String,
    pub phase: Phase,
    /// Whether a live database existed when the switch began.
    #[serde(default)]
    pub had_live: bool,
}

/// [`Record::Mysql`].
#[derive(Clone, Serialize, Deserialize)]
pub struct MysqlRecord {
    pub service: String,
    /// The live service's URL (a password in it).
    pub url: String,
    pub scratch: String,
    pub holding: String,
    pub phase: Phase,
    /// What the switch found, written before it changes anything.
    #[serde(default)]
    pub switch: Option<MysqlSwitch>,
}

/// [`Record::Redis`].
#[derive(Clone, Serialize, Deserialize)]
pub struct RedisRecord {
    pub service: String,
    /// The live service's URL (a password in it).
    pub url: String,
    pub live: u32,
    pub scratch: u32,
    /// Marks the scratch DB's content as this restore's.
    pub tag: String,
    pub phase: Phase,
}

/// [`Record::Reserved`].
#[derive(Clone, Serialize, Deserialize)]
pub struct Reserved {
    pub service: String,
    /// The clone's URL (a password in it).
    pub url: String,
}

/// What a MySQL switch found before it moved anything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MysqlSwitch {
    /// Whether the live database existed.
    pub live_existed: bool,
    /// The live database's tables, moved to the holding schema.
    pub old_tables: Vec<String>,
    /// The scratch database's tables, moved into the live one.
    pub new_tables: Vec<String>,
    /// The live database's triggers, views, routines and events, as SQL
    /// (they cannot move between schemas: they are made again).
    pub old_objects: String,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it holds a password.
        write!(f, "{}", self.describe())
    }
}

impl Record {
    /// What the record is about, for logs (no URL).
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres(r) => format!("{}: scratch database {}", r.service, r.scratch),
            Self::Mysql(r) => format!("{}: scratch database {}", r.service, r.scratch),
            Self::Redis(r) => format!("{}: scratch DB {}", r.service, r.scratch),
            Self::Reserved(r) => format!("{}: set aside for a clone", r.service),
        }
    }
}

/// The record files in the agent's state directory.
#[derive(Clone, Debug)]
pub struct Records {
    state_dir: PathBuf,
}

impl Records {
    /// The records under `state_dir` (`HostRoot::state_dir`).
    pub fn new(state_dir: PathBuf) -> Self {
        Self { state_dir }
    }

    fn dir(&self) -> PathBuf {
        self.state_dir.join("services")
    }

    /// A private directory for dumps that wait on disk for their switch.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }

    /// Writes `record` as `name` unless a record of that name exists:
    /// `false` then. Claims a name among concurrent restores (and agents).
    pub async fn claim(&self, name: &str, record: &Record) -> Result<bool> {
        let (dir, name, json) = (self.dir(), file_name(name), to_json(record));
        blocking(move || {
            private_dirs(&dir)?;
            match write_new(&dir.join(&name), &json) {
                Ok(()) => sync_dir(&dir).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Writes `record` as `name`, replacing what was there in one step.
    pub async fn put(&self, name: &str, record: &Record) -> Result<()> {
        let (dir, name, json) = (self.dir(), file_name(name), to_json(record));
        blocking(move || {
            private_dirs(&dir)?;
            let tmp = dir.join(format!(".{name}.{:016x}", rand::random::<u64>()));
            write_new(&tmp, &json)?;
            std::fs::rename(&tmp, dir.join(&name))?;
            sync_dir(&dir)
        })
        .await
    }

    /// Removes record `name` (gone already is fine).
    pub async fn remove(&self, name: &str) -> Result<()> {
        let (dir, name) = (self.dir(), file_name(name));
        blocking(move || match std::fs::remove_file(dir.join(name)) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
    }

    /// Record `name`, if there is one (and it can be read).
    pub async fn get(&self, name: &str) -> Result<Option<Record>> {
        let path = self.dir().join(file_name(name));
        let bytes = blocking(move || match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every record, by name; unreadable ones are logged and left alone.
    pub async fn list(&self) -> Result<Vec<(String, Record)>> {
        let dir = self.dir();
        let files = blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry?;
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with('.') {
                    // A record whose write was cut short: never renamed in.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                if let Some(name) = file.strip_suffix(".json") {
                    files.push((name.to_owned(), std::fs::read(entry.path())?));
                }
            }
            files.sort();
            Ok(files)
        })
        .await?;
        let mut records = Vec::new();
        for (name, bytes) in files {
            match serde_json::from_slice(&bytes) {
                Ok(record) => records.push((name, record)),
                Err(e) => tracing::warn!(record = name, error = %e, "unreadable record left alone"),
            }
        }
        Ok(records)
    }

    /// Removes every spooled dump: nothing waits on them after a start.
    pub async fn clear_spool(&self) -> Result<()> {
        let dir = self.spool_dir();
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

/// A record's file name: `name` with every byte outside `[A-Za-z0-9._-]`
/// written as `%XX`, so that any object name maps to one file.
fn file_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}.json", out.trim_start_matches('.'))
}

fn to_json(record: &Record) -> Vec<u8> {
    serde_json::to_vec_pretty(record).expect("records serialise")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("record task")
        .map_err(|e| AgentError::io("keeping a record in the agent's state directory", e))
}

/// Creates `dir` and its parent (the state directory) private: 0700.
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    for d in [
        dir.parent().expect("records live in the state directory"),
        dir,
    ] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(d)?.permissions().mode() & 0o777;
                if mode != 0o700 {
                    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a new 0600 file and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory, so that a record's name survives a machine crash too.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record(scratch: &str) -> Record {
        Record::Postgres(PgRecord {
            service: "postgres:db".into(),
            url: "postgresql://u:hunter2@h/db".into(),
            scratch: scratch.into(),
            old: "o".into(),
            phase: Phase::Staged,
            had_live: false,
        })
    }

    #[tokio::test]
    async fn claims_puts_lists_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let records = Records::new(tmp.path().join(".hop3-backup"));
        assert!(records.list().await.unwrap().is_empty());
        assert!(records.claim("postgres-a", &record("a")).await.unwrap());
        assert!(!records.claim("postgres-a", &record("b")).await.unwrap());
        records.put("redis-h/1", &record("c")).await.unwrap();
        let listed = records.list().await.unwrap();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["postgres-a", "redis-h%2F1"]);
        assert!(!format!("{:?}", listed[0].1).contains("hunter2"));
        for (dir, mode) in [(".hop3-backup", 0o700), (".hop3-backup/services", 0o700)] {
            let m = std::fs::metadata(tmp.path().join(dir)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, mode, "{dir}");
        }
        let file = tmp.path().join(".hop3-backup/services/postgres-a.json");
        let m = std::fs::metadata(file).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        records.remove("postgres-a").await.unwrap();
        records.remove("postgres-a").await.unwrap();
        assert_eq!(records.list().await.unwrap().len(), 1);
    }
}
