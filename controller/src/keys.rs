//! The controller's age keys, in one directory (`--keys-dir`):
//!
//! - `recipients.txt`: the public keys every new backup is encrypted to, one
//!   `age1...` per line (the file `age -R` reads): the controller's own and
//!   any added, such as an offline escrow key. Agents get these and nothing
//!   else.
//! - `identity.txt` (0600): the private key, as `age-keygen` writes it.
//!   Needed to restore; a controller without it still backs up, copies and
//!   prunes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use age::secrecy::SecretString;
use hop3_wire::encryption::{EncryptionError, Identities, KeyId, Recipients, is_encrypted_file};

/// The private key file in the keys directory.
pub const IDENTITY_FILE: &str = "identity.txt";
/// The public keys file in the keys directory.
pub const RECIPIENTS_FILE: &str = "recipients.txt";

/// Why the keys could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Bad {
        path: String,
        #[source]
        source: EncryptionError,
    },
    #[error(
        "{0} exists: the keys are made once (every backup encrypted to them needs them to restore)"
    )]
    Exists(String),
    #[error("{0} is readable by other users: it must be 0600, as `keys init` makes it")]
    Exposed(String),
    #[error(
        "{0} is protected by a passphrase: give it in the file of --keys-passphrase-file or in HOP3_KEYS_PASSPHRASE"
    )]
    Locked(String),
}

/// What the controller holds: the keys it encrypts to and those it opens with.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// Encrypted to these when encryption is on; None: backups are stored in the clear.
    pub encrypt_to: Option<Arc<Recipients>>,
    /// The identities held here (may be none: restores then refuse).
    pub identities: Arc<Identities>,
}

/// The keys directory.
#[derive(Clone, Debug)]
pub struct KeysDir(pub PathBuf);

impl KeysDir {
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Makes a new identity (encrypted with `passphrase` when given) and
    /// starts `recipients.txt` with its public key.
    pub async fn init(
        &self,
        created: &str,
        passphrase: Option<SecretString>,
    ) -> Result<age::x25519::Recipient, KeysError> {
        let identity_path = self.file(IDENTITY_FILE);
        if tokio::fs::try_exists(&identity_path).await.unwrap_or(false) {
            return Err(KeysError::Exists(identity_path.display().to_string()));
        }
        create_dir_private(&self.0).await?;
        let identity = Identities::generate();
        let recipient = identity.to_public();
        let mut text = Identities::file_text(&identity, created);
        if let Some(passphrase) = passphrase {
            // scrypt, tuned to about a second: not on the runtime's threads.
            text = tokio::task::spawn_blocking(move || Identities::lock(&text, passphrase))
                .await
                .map_err(|e| io_error(&identity_path, io::Error::other(e)))?
                .map_err(|source| bad(&identity_path, source))?;
        }
        write_new_private(&identity_path, text).await?;
        self.add_recipient(&recipient, "this controller's key")
            .await?;
        Ok(recipient)
    }

    /// Adds `recipient` to the keys new backups are encrypted to; false when
    /// it was there already.
    pub async fn add_recipient(
        &self,
        recipient: &age::x25519::Recipient,
        note: &str,
    ) -> Result<bool, KeysError> {
        create_dir_private(&self.0).await?;
        let path = self.file(RECIPIENTS_FILE);
        let mut text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::from(
                "# The public keys every new backup is encrypted to (any one identity opens it).\n",
            ),
            Err(e) => return Err(io_error(&path, e)),
        };
        if Recipients::from_file_text(&text).is_ok_and(|r| r.contains(recipient)) {
            return Ok(false);
        }
        text.push_str(&format!(
            "# {} ({note})\n{recipient}\n",
            KeyId::of(recipient)
        ));
        // Written whole, then renamed: a crash leaves the old list or the new.
        let tmp = self.file(".recipients.txt.tmp");
        tokio::fs::write(&tmp, text)
            .await
            .map_err(|e| io_error(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_error(&path, e))?;
        Ok(true)
    }

    /// The recipients new backups are encrypted to; None when the file is absent.
    pub async fn recipients(&self) -> Result<Option<Recipients>, KeysError> {
        let path = self.file(RECIPIENTS_FILE);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Recipients::from_file_text(&text)
                .map(Some)
                .map_err(|source| bad(&path, source)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// The identities held here; none when the file is absent (kept
    /// offline). A file protected by a passphrase needs `passphrase`.
    pub async fn identities(
        &self,
        passphrase: Option<SecretString>,
    ) -> Result<Identities, KeysError> {
        let path = self.file(IDENTITY_FILE);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Identities::default()),
            Err(e) => return Err(io_error(&path, e)),
        };
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeysError::Exposed(path.display().to_string()));
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        if !is_encrypted_file(&bytes) {
            let text = String::from_utf8_lossy(&bytes);
            return Identities::from_file_text(&text).map_err(|source| bad(&path, source));
        }
        let Some(passphrase) = passphrase else {
            return Err(KeysError::Locked(path.display().to_string()));
        };
        tokio::task::spawn_blocking(move || Identities::unlock(&bytes, passphrase))
            .await
            .map_err(|e| io_error(&path, io::Error::other(e)))?
            .map_err(|source| bad(&path, source))
    }
}

impl Keys {
    /// Whether an identity held here opens what is encrypted to `keys`.
    pub fn opens_any(&self, keys: &[String]) -> bool {
        self.identities
            .key_ids()
            .iter()
            .any(|k| keys.iter().any(|s| s == k.as_str()))
    }
}

fn io_error(path: &Path, source: io::Error) -> KeysError {
    KeysError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, source: EncryptionError) -> KeysError {
    KeysError::Bad {
        path: path.display().to_string(),
        source,
    }
}

async fn create_dir_private(dir: &Path) -> Result<(), KeysError> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(|e| io_error(dir, e))
}

/// Writes a new file readable by its owner only; never replaces one.
async fn write_new_private(path: &Path, text: String) -> Result<(), KeysError> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    f.write_all(text.as_bytes())
        .await
        .map_err(|e| io_error(path, e))?;
    f.sync_all().await.map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_makes_a_private_identity_once_and_lists_its_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeysDir(tmp.path().join("keys"));
        let r = dir.init("2026-12-07T00:00:00Z", None).await.unwrap();
        let ids = dir.identities(None).await.unwrap();
        assert_eq!(ids.recipients(), vec![r.clone()]);
        let recipients = dir.recipients().await.unwrap().unwrap();
        assert_eq!(recipients.key_ids(), vec![KeyId::of(&r)]);
        let err = dir.init("later", None).await.unwrap_err().to_string();
        assert!(err.contains("exists: the keys are made once"), "{err}");

        let escrow = Identities::generate().to_public();
        assert!(dir.add_recipient(&escrow, "escrow").await.unwrap());
        assert!(!dir.add_recipient(&escrow, "escrow").await.unwrap());
        assert_eq!(
            dir.recipients().await.unwrap().unwrap().to_strings().len(),
            2
        );

        use std::os::unix::fs::PermissionsExt;
        let path = tmp.path().join("keys").join(IDENTITY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.identities(None).await.unwrap_err().to_string();
        assert!(err.contains("must be 0600"), "{err}");
    }

    #[tokio::test]
    async fn a_passphrase_protected_identity_needs_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeysDir(tmp.path().join("keys"));
        let pass = || Some(SecretString::from("a long passphrase"));
        let r = dir.init("2026-12-07T00:00:00Z", pass()).await.unwrap();
        let text = std::fs::read_to_string(tmp.path().join("keys").join(IDENTITY_FILE)).unwrap();
        assert!(text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----") && !text.contains("SECRET"));
        assert_eq!(dir.identities(pass()).await.unwrap().recipients(), vec![r]);
        let err = dir.identities(None).await.unwrap_err().to_string();
        assert!(err.contains("is protected by a passphrase"), "{err}");
        let wrong = Some(SecretString::from("another"));
        let err = dir.identities(wrong).await.unwrap_err().to_string();
        assert!(err.ends_with("the passphrase does not open it"), "{err}");
    }
}
