//! The CLI's API tokens, kept as `<store>/tokens.json`: names, SHA-256
//! hashes and dates, never a token itself. They live beside the backups
//! rather than in the catalog because the catalog is only an index of the
//! store: it can be lost, or found corrupt and rebuilt, and the tokens with
//! it would be lost for good. The file is 0600 in the 0700 store, written
//! whole to a temporary file and renamed over the old one, under a lock
//! file so that two `tokens create` at once do not lose one another.
//!
//! ```json
//! {"version": 1, "tokens": [{"name": "alice", "hash": "sha256:<64 hex>",
//!   "created_at": "2026-12-01T20:45:00Z", "revoked_at": null}]}
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hop3_proto::Checksum;
use serde::{Deserialize, Serialize};

/// The tokens file's name in the store.
pub const TOKENS_FILE: &str = "tokens.json";

/// Held (flock) while the tokens file is read and rewritten.
const LOCK_FILE: &str = "tokens.lock";

/// The one version of the file's layout.
const VERSION: u32 = 1;

/// Largest tokens file read: thousands of tokens, far more than any fleet has.
const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What the tokens file can fail with. The messages name the file, never a
/// token (there is none to name: only hashes are kept).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid tokens file: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("a token named {0:?} already exists")]
    Exists(String),
    #[error("no live token named {0:?}")]
    NoLiveToken(String),
}

/// One token as the file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// `sha256:<hex>` of the token.
    pub hash: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC; None while the token is live.
    #[serde(default)]
    pub revoked_at: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// What identifies one version of the file: it is replaced by a rename, so
/// a new version has a new inode even within one tick of the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

#[derive(Default)]
struct Cache {
    /// None: the file did not exist when last looked at.
    stamp: Option<Stamp>,
    /// Live tokens: hash -> name.
    live: HashMap<String, String>,
}

/// The tokens file of a store. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    dir: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

impl Tokens {
    /// The tokens of the store at `store_dir` (the file need not exist).
    pub fn new(store_dir: &Path) -> Self {
        Self {
            dir: store_dir.to_owned(),
            cache: Arc::default(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(TOKENS_FILE)
    }

    /// The name of the live token with this hash. Looks at the file on
    /// every call (one stat) and reads it again only when it was replaced,
    /// so that `tokens create` and `tokens revoke`, run as other processes,
    /// take effect at once.
    pub async fn name_of(&self, hash: &str) -> Result<Option<String>, TokenError> {
        let path = self.path();
        let stamp = match tokio::fs::metadata(&path).await {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(TokenError::Io {
                    context: "reading",
                    path,
                    source,
                });
            }
        };
        let fresh = self.cache.lock().expect("tokens cache poisoned").stamp == stamp;
        if !fresh {
            let this = self.clone();
            let (stamp, live) = tokio::task::spawn_blocking(move || this.load_live())
                .await
                .expect("tokens reader panicked")?;
            let mut cache = self.cache.lock().expect("tokens cache poisoned");
            cache.stamp = stamp;
            cache.live = live;
        }
        let cache = self.cache.lock().expect("tokens cache poisoned");
        Ok(cache.live.get(hash).cloned())
    }

    /// Reads the file (blocking): its stamp and its live tokens.
    fn load_live(&self) -> Result<(Option<Stamp>, HashMap<String, String>), TokenError> {
        let path = self.path();
        let Some((stamp, records)) = read(&path)? else {
            return Ok((None, HashMap::new()));
        };
        let live = records
            .into_iter()
            .filter(|r| r.revoked_at.is_none())
            .map(|r| (r.hash, r.name))
            .collect();
        Ok((Some(stamp), live))
    }

    /// Every token, by name.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let this = self.clone();
        blocking(move || {
            let mut records = read(&this.path())?.map(|(_, r)| r).unwrap_or_default();
            records.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(records)
        })
        .await
    }

    /// Whether the file exists (tokens have been moved out of the catalog).
    pub async fn exists(&self) -> Result<bool, TokenError> {
        let path = self.path();
        tokio::fs::try_exists(&path)
            .await
            .map_err(|source| TokenError::Io {
                context: "reading",
                path,
                source,
            })
    }

    /// Records a new token by its hash; refused if the name is taken (even
    /// by a revoked token: names say who a token was for).
    pub async fn create(&self, name: &str, hash: &str, now: &str) -> Result<(), TokenError> {
        let record = TokenRecord {
            name: name.to_owned(),
            hash: hash.to_owned(),
            created_at: now.to_owned(),
            revoked_at: None,
        };
        self.update(move |records| {
            if records.iter().any(|r| r.name == record.name) {
                return Err(TokenError::Exists(record.name.clone()));
            }
            records.push(record);
            Ok(true)
        })
        .await
        .map(drop)
    }

    /// Revokes the live token `name`.
    pub async fn revoke(&self, name: &str, now: &str) -> Result<(), TokenError> {
        let (name, now) = (name.to_owned(), now.to_owned());
        self.update(move |records| {
            match records
                .iter_mut()
                .find(|r| r.name == name && r.revoked_at.is_none())
            {
                Some(r) => {
                    r.revoked_at = Some(now);
                    Ok(true)
                }
                None => Err(TokenError::NoLiveToken(name)),
            }
        })
        .await
        .map(drop)
    }

    /// Writes the file with `records` (tokens found in a catalog written
    /// before tokens moved here) unless it exists already; true if written.
    /// The file's existence marks the move done: later starts never read
    /// the catalog's tokens again.
    pub async fn adopt(&self, records: Vec<TokenRecord>) -> Result<bool, TokenError> {
        let this = self.clone();
        blocking(move || {
            let _lock = this.lock()?;
            let path = this.path();
            if read(&path)?.is_some() {
                return Ok(false);
            }
            let mut kept: Vec<TokenRecord> = Vec::new();
            for r in records {
                // The catalog's UNIQUE constraints make clashes impossible;
                // a damaged row is not carried over.
                if valid(&r).is_ok() && !kept.iter().any(|k| k.name == r.name || k.hash == r.hash) {
                    kept.push(r);
                }
            }
            write(&this.dir, &kept)?;
            Ok(true)
        })
        .await
    }

    /// Reads, changes with `change` and rewrites the file, under the lock.
    /// `change` returns whether it changed anything.
    async fn update(
        &self,
        change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<bool, TokenError> + Send + 'static,
    ) -> Result<bool, TokenError> {
        let this = self.clone();
        blocking(move || {
            let _lock = this.lock()?;
            let mut records = read(&this.path())?.map(|(_, r)| r).unwrap_or_default();
            let changed = change(&mut records)?;
            if changed {
                write(&this.dir, &records)?;
            }
            Ok(changed)
        })
        .await
    }

    /// Takes the lock file (blocking until any other writer is done).
    fn lock(&self) -> Result<File, TokenError> {
        let path = self.dir.join(LOCK_FILE);
        let io = |source| TokenError::Io {
            context: "locking",
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        Ok(file)
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TokenError> + Send + 'static,
) -> Result<T, TokenError> {
    tokio::task::spawn_blocking(work)
        .await
        .expect("tokens file task panicked")
}

/// The file's stamp and records; None when it does not exist.
fn read(path: &Path) -> Result<Option<(Stamp, Vec<TokenRecord>)>, TokenError> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenError::Io {
                context: "reading",
                path: path.to_owned(),
                source,
            });
        }
    };
    let io = |source| TokenError::Io {
        context: "reading",
        path: path.to_owned(),
        source,
    };
    let stamp = Stamp::of(&file.metadata().map_err(io)?);
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let invalid = |reason: String| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(invalid(format!("larger than {MAX_BYTES} bytes")));
    }
    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if doc.version != VERSION {
        return Err(invalid(format!(
            "version {} (this controller reads version {VERSION})",
            doc.version
        )));
    }
    for (i, r) in doc.tokens.iter().enumerate() {
        valid(r).map_err(|why| invalid(format!("token {}: {why}", i + 1)))?;
        if doc.tokens[..i]
            .iter()
            .any(|o| o.name == r.name || o.hash == r.hash)
        {
            return Err(invalid(format!("token {:?} is listed twice", r.name)));
        }
    }
    Ok(Some((stamp, doc.tokens)))
}

/// Why a record cannot be used, if it cannot.
fn valid(r: &TokenRecord) -> Result<(), String> {
    hop3_proto::names::validate_host_id(&r.name).map_err(|e| format!("name: {e}"))?;
    r.hash
        .parse::<Checksum>()
        .map_err(|e| format!("hash: {e}"))?;
    Ok(())
}

/// Replaces the file in `dir` with `records`: a 0600 temporary file,
/// synced, renamed into place, the directory synced.
fn write(dir: &Path, records: &[TokenRecord]) -> Result<(), TokenError> {
    let path = dir.join(TOKENS_FILE);
    let tmp = dir.join(format!("{TOKENS_FILE}.tmp"));
    let io = |context, source| TokenError::Io {
        context,
        path: path.clone(),
        source,
    };
    let doc = Document {
        version: VERSION,
        tokens: records.to_vec(),
    };
    let mut text = serde_json::to_vec_pretty(&doc).expect("tokens serialise");
    text.push(b'\n');
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing", e))?;
    // A leftover temporary file keeps its mode: make sure of it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io("writing", e))?;
    f.write_all(&text).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("writing", e))?;
    fs::rename(&tmp, &path).map_err(|e| io("writing", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-01T20:45:00Z";

    fn hash(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[tokio::test]
    async fn create_revoke_list_and_look_up() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        assert_eq!(tokens.name_of(&hash('a')).await.unwrap(), None);
        assert!(!tokens.exists().await.unwrap());
        tokens.create("alice", &hash('a'), NOW).await.unwrap();
        tokens.create("bob", &hash('b'), NOW).await.unwrap();
        assert!(matches!(
            tokens.create("alice", &hash('c'), NOW).await,
            Err(TokenError::Exists(_))
        ));
        let mode = fs::metadata(tokens.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(
            tokens.name_of(&hash('a')).await.unwrap().as_deref(),
            Some("alice")
        );
        // Another process revokes: seen at the next call.
        Tokens::new(dir.path()).revoke("alice", NOW).await.unwrap();
        assert_eq!(tokens.name_of(&hash('a')).await.unwrap(), None);
        assert_eq!(
            tokens.name_of(&hash('b')).await.unwrap().as_deref(),
            Some("bob")
        );
        assert!(matches!(
            tokens.revoke("alice", NOW).await,
            Err(TokenError::NoLiveToken(_))
        ));
        let list = tokens.list().await.unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|r| (r.name.as_str(), r.revoked_at.is_some()))
            .collect();
        assert_eq!(names, [("alice", true), ("bob", false)]);
        // Adopting a catalog's tokens does nothing once the file exists.
        assert!(!tokens.adopt(Vec::new()).await.unwrap());
        assert_eq!(tokens.list().await.unwrap(), list);
    }

    #[tokio::test]
    async fn adopts_valid_catalog_tokens_once() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        let record = |name: &str, h: String| TokenRecord {
            name: name.into(),
            hash: h,
            created_at: NOW.into(),
            revoked_at: None,
        };
        let adopted = tokens
            .adopt(vec![
                record("alice", hash('a')),
                record("bad name", hash('b')),
                record("carol", "md5:0".into()),
            ])
            .await
            .unwrap();
        assert!(adopted);
        let names: Vec<_> = tokens
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["alice"]);
        assert!(!tokens.adopt(vec![record("dave", hash('d'))]).await.unwrap());
    }

    #[tokio::test]
    async fn a_damaged_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        fs::write(tokens.path(), "{\"version\": 1, \"tokens\": [").unwrap();
        let err = tokens.name_of(&hash('a')).await.unwrap_err();
        assert!(matches!(err, TokenError::Invalid { .. }), "{err}");
        assert!(tokens.create("alice", &hash('a'), NOW).await.is_err());
        fs::write(tokens.path(), "{\"version\": 2, \"tokens\": []}").unwrap();
        let err = tokens.list().await.unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
