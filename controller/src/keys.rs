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
/// The keys being retired (`keys retire`), one id per line: the
/// controller encrypts the backups sealed to them again, to the
/// recipients, and takes each off the list once none is left.
pub const RETIRING_FILE: &str = "retiring.txt";

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
    #[error("{0} does not exist: `keys init` makes the first key")]
    NoIdentity(String),
}

/// What the controller holds: the keys it encrypts to and those it opens with.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// Encrypted to these when encryption is on; None: backups are stored in the clear.
    pub encrypt_to: Option<Arc<Recipients>>,
    /// The identities held here (may be none: restores then refuse).
    pub identities: Arc<Identities>,
    /// The stores off the host that take no backup in the clear (none
    /// when --allow-plaintext-store or every store is local).
    pub clear_refused_by: Option<String>,
    /// `recipients.txt` as read at start, encryption on or not: what a
    /// retired key's backups are encrypted to again.
    pub recipients: Option<Arc<Recipients>>,
    /// Where the keys are (none in tests that need no retiring).
    pub dir: Option<KeysDir>,
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
        self.write_recipients(text).await?;
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
        match self.identity_text(passphrase).await? {
            None => Ok(Identities::default()),
            Some((text, _)) => {
                Identities::from_file_text(&text).map_err(|source| bad(&path, source))
            }
        }
    }

    /// The identity file's text, opened with `passphrase` when it is
    /// protected (then with true); None when there is no file.
    async fn identity_text(
        &self,
        passphrase: Option<SecretString>,
    ) -> Result<Option<(String, bool)>, KeysError> {
        let path = self.file(IDENTITY_FILE);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
            return Ok(Some((String::from_utf8_lossy(&bytes).into_owned(), false)));
        }
        let Some(passphrase) = passphrase else {
            return Err(KeysError::Locked(path.display().to_string()));
        };
        // scrypt, tuned to about a second: not on the runtime's threads.
        tokio::task::spawn_blocking(move || Identities::unlock_text(&bytes, passphrase))
            .await
            .map_err(|e| io_error(&path, io::Error::other(e)))?
            .map(|text| Some((text, true)))
            .map_err(|source| bad(&path, source))
    }

    /// Makes a new identity current: new backups are encrypted to it (and
    /// to the recipients whose identity is not here, such as an escrow
    /// key) instead of to this controller's older keys, whose identities
    /// stay in `identity.txt` for the backups encrypted to them. Returns
    /// the new key and the ids of those it replaced.
    pub async fn rotate(
        &self,
        created: &str,
        passphrase: Option<SecretString>,
    ) -> Result<(age::x25519::Recipient, Vec<KeyId>), KeysError> {
        let path = self.file(IDENTITY_FILE);
        let Some((old_text, locked)) = self.identity_text(passphrase.clone()).await? else {
            return Err(KeysError::NoIdentity(path.display().to_string()));
        };
        let old = Identities::from_file_text(&old_text).map_err(|source| bad(&path, source))?;
        let identity = Identities::generate();
        let recipient = identity.to_public();
        // Newest first; the older ones kept whole, comments included.
        let mut text = Identities::file_text(&identity, created);
        text.push_str(&old_text);
        if let Some(passphrase) = passphrase.filter(|_| locked) {
            text = tokio::task::spawn_blocking(move || Identities::lock(&text, passphrase))
                .await
                .map_err(|e| io_error(&path, io::Error::other(e)))?
                .map_err(|source| bad(&path, source))?;
        }
        let tmp = self.file(".identity.txt.tmp");
        let _ = tokio::fs::remove_file(&tmp).await;
        write_new_private(&tmp, text).await?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_error(&path, e))?;

        let replaced = old.key_ids();
        let others = self
            .recipients()
            .await?
            .map(|r| {
                r.to_strings()
                    .into_iter()
                    .zip(r.key_ids())
                    .filter(|(_, id)| !replaced.contains(id))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut list = String::from(
            "# The public keys every new backup is encrypted to (any one identity opens it).\n",
        );
        for (key, id) in &others {
            list.push_str(&format!("# {id}\n{key}\n"));
        }
        list.push_str(&format!(
            "# {} (this controller's key since {created})\n{recipient}\n",
            KeyId::of(&recipient)
        ));
        self.write_recipients(list).await?;
        Ok((recipient, replaced))
    }

    /// The ids of the keys being retired.
    pub async fn retiring(&self) -> Result<Vec<String>, KeysError> {
        let path = self.file(RETIRING_FILE);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// Adds `id` to the keys being retired; false when it was there already.
    pub async fn retire(&self, id: &KeyId) -> Result<bool, KeysError> {
        let mut ids = self.retiring().await?;
        if ids.iter().any(|i| i == id.as_str()) {
            return Ok(false);
        }
        ids.push(id.to_string());
        self.write_retiring(&ids).await?;
        Ok(true)
    }

    /// Takes `id` off the keys being retired: no backup is sealed to it any more.
    pub async fn retired(&self, id: &str) -> Result<(), KeysError> {
        let ids: Vec<String> = self
            .retiring()
            .await?
            .into_iter()
            .filter(|i| i != id)
            .collect();
        self.write_retiring(&ids).await
    }

    async fn write_retiring(&self, ids: &[String]) -> Result<(), KeysError> {
        let mut text = String::from(
            "# Keys being retired: the controller encrypts their backups again, to recipients.txt.\n",
        );
        for id in ids {
            text.push_str(id);
            text.push('\n');
        }
        self.replace(RETIRING_FILE, text).await
    }

    /// Replaces `recipients.txt` with `text`: written whole, then renamed,
    /// so that a crash leaves the old list or the new.
    async fn write_recipients(&self, text: String) -> Result<(), KeysError> {
        self.replace(RECIPIENTS_FILE, text).await
    }

    /// Replaces the file `name` with `text`: written whole, then renamed.
    async fn replace(&self, name: &str, text: String) -> Result<(), KeysError> {
        let (tmp, path) = (self.file(&format!(".{name}.tmp")), self.file(name));
        tokio::fs::write(&tmp, text)
            .await
            .map_err(|e| io_error(&tmp, e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_error(&path, e))
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
    async fn a_rotated_key_takes_over_new_backups_and_the_old_one_still_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeysDir(tmp.path().join("keys"));
        let first = dir.init("2026-12-01T00:00:00Z", None).await.unwrap();
        let escrow = Identities::generate().to_public();
        dir.add_recipient(&escrow, "escrow").await.unwrap();
        let old_backup = dir
            .recipients()
            .await
            .unwrap()
            .unwrap()
            .encrypt_armored(b"an old backup")
            .unwrap();

        let (second, replaced) = dir.rotate("2026-12-07T00:00:00Z", None).await.unwrap();
        assert_eq!(replaced, vec![KeyId::of(&first)]);
        let now = dir.recipients().await.unwrap().unwrap();
        assert_eq!(now.key_ids(), vec![KeyId::of(&escrow), KeyId::of(&second)]);
        let held = dir.identities(None).await.unwrap();
        assert_eq!(held.recipients(), vec![second, first]);
        assert_eq!(
            held.open_armored(&old_backup, "x").unwrap(),
            b"an old backup"
        );
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
