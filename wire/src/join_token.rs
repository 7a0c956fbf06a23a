//! The join token of plain mode: a secret the controller makes at its first
//! start (`STORE/join-token`, readable by its user only) that standalone
//! agents present when they register and the controller presents on every
//! call to them. Without TLS it is what tells the controller and its agents
//! apart from any other local process.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

/// Prefix of a join token, so that a leaked one is recognised.
pub const JOIN_TOKEN_PREFIX: &str = "hop3join_";

/// The environment variable an agent may read its join token from (rather
/// than from a file).
pub const JOIN_TOKEN_ENV: &str = "HOP3_JOIN_TOKEN";

/// The file name of the join token in the controller's store.
pub const JOIN_TOKEN_FILE: &str = "join-token";

/// Why a join token cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error(
        "cannot read the join token {path}: {source} (the controller writes it to STORE/join-token at its first start; give the agent --join-token-file or HOP3_JOIN_TOKEN)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the join token {path} can be read by other users (mode {mode:03o}): chmod 600 {path}")]
    Readable { path: PathBuf, mode: u32 },
    #[error("the join token {origin} is not one (expected {JOIN_TOKEN_PREFIX} and 64 hex digits)")]
    Malformed { origin: String },
    #[error("cannot write the join token {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A join token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct JoinToken {
    header: MetadataValue<Ascii>,
    digest: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(***)")
    }
}

impl JoinToken {
    fn parse(text: &str, origin: &str) -> Result<Self, JoinTokenError> {
        let token = text.trim();
        let malformed = || JoinTokenError::Malformed {
            origin: origin.to_owned(),
        };
        let hex = token
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .ok_or_else(malformed)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let mut header =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| malformed())?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Reads the token of the file `path`, which only its owner may read.
    pub fn load(path: &Path) -> Result<Self, JoinTokenError> {
        let read = |source| JoinTokenError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(JoinTokenError::Readable {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(1024).read_to_string(&mut text).map_err(read)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The token of `HOP3_JOIN_TOKEN` when set, else of the file `path`.
    pub fn from_env_or_file(path: &Path) -> Result<Self, JoinTokenError> {
        match std::env::var(JOIN_TOKEN_ENV) {
            Ok(text) => Self::parse(&text, JOIN_TOKEN_ENV),
            Err(_) => Self::load(path),
        }
    }

    /// The controller's token in `store`: read, or made (0600) when there is
    /// none yet.
    pub fn load_or_create(store: &Path) -> Result<Self, JoinTokenError> {
        let path = store.join(JOIN_TOKEN_FILE);
        let token = format!(
            "{JOIN_TOKEN_PREFIX}{}",
            hex::encode(rand::random::<[u8; 32]>())
        );
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut file) => {
                use std::io::Write;
                let write = |source| JoinTokenError::Write {
                    path: path.clone(),
                    source,
                };
                file.write_all(format!("{token}\n").as_bytes())
                    .map_err(write)?;
                file.sync_all().map_err(write)?;
                Self::parse(&token, &path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(source) => Err(JoinTokenError::Write { path, source }),
        }
    }

    /// The `authorization` value to send.
    pub fn header(&self) -> MetadataValue<Ascii> {
        self.header.clone()
    }

    /// Whether `metadata` carries this token. Digests are compared, so the
    /// time taken says nothing about how much of a guess was right.
    pub fn presented_in(&self, metadata: &MetadataMap) -> bool {
        bearer_digest(metadata) == Some(self.digest)
    }
}

/// The SHA-256 of the bearer token in `metadata`'s `authorization`, if any.
pub fn bearer_digest(metadata: &MetadataMap) -> Option<[u8; 32]> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = JoinToken::load_or_create(dir.path()).unwrap();
        let again = JoinToken::load_or_create(dir.path()).unwrap();
        assert_eq!(made.digest, again.digest);
        let mode = std::fs::metadata(dir.path().join(JOIN_TOKEN_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut md = MetadataMap::new();
        md.insert("authorization", made.header());
        assert!(again.presented_in(&md));
        md.insert("authorization", "Bearer hop3join_00".parse().unwrap());
        assert!(!again.presented_in(&md));
        assert!(!format!("{made:?}").contains(JOIN_TOKEN_PREFIX));
    }

    #[test]
    fn a_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        JoinToken::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(JOIN_TOKEN_FILE);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            JoinToken::load(&path),
            Err(JoinTokenError::Readable { .. })
        ));
    }
}
