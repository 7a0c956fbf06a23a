//! Encryption at rest with age (age-encryption.org/v1, X25519 recipients):
//! the agents encrypt what they send to public keys only, and only a holder of
//! an identity (the controller, or an operator with the `age` CLI) opens it.
//! Every encrypted artifact is a standard age file.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use hop3_proto::{Checksum, Tally};
use sha2::{Digest, Sha256};

/// How every age file begins: a stream claimed encrypted must start with it.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Why keys or encrypted bytes could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{what} is not an age X25519 recipient (age1...): {reason}")]
    BadRecipient { what: String, reason: &'static str },
    #[error("line {line} of the identity file is not an age identity (AGE-SECRET-KEY-1...)")]
    BadIdentity { line: usize },
    #[error("no recipient to encrypt to")]
    NoRecipients,
    #[error("none of the identities held opens it (encrypted to {encrypted_to})")]
    NoMatchingIdentity { encrypted_to: String },
    #[error("it is not a valid age file: {0}")]
    Damaged(String),
    #[error("the passphrase does not open it")]
    WrongPassphrase,
    #[error(
        "{0:?} is neither a key id (16 hex digits, as `keys list` shows it) nor an age1... recipient"
    )]
    BadKeyId(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A short, stable name for a public key: the first 8 bytes of the SHA-256 of
/// its `age1...` string, in hex. What manifests record as "encrypted to".
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The id of `recipient`.
    pub fn of(recipient: &age::x25519::Recipient) -> Self {
        let digest = Sha256::digest(recipient.to_string().as_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    /// A key id as `keys list` and manifests write it, or the id of the
    /// `age1...` recipient given.
    pub fn parse(s: &str) -> Result<Self, EncryptionError> {
        let s = s.trim();
        if s.starts_with("age1") {
            return Ok(Self::of(&recipient(s)?));
        }
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(KeyId(s.to_ascii_lowercase()));
        }
        Err(EncryptionError::BadKeyId(s.chars().take(80).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// The public keys a backup is encrypted to: any one of their identities opens it.
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Parses `age1...` strings; refuses an empty list.
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Self, EncryptionError> {
        let list = keys
            .iter()
            .map(|k| parse_recipient(k.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(EncryptionError::NoRecipients);
        }
        Ok(Recipients(list))
    }

    /// Reads a recipients file as `age -R` does: one `age1...` per line,
    /// `#` comments and blank lines skipped.
    pub fn from_file_text(text: &str) -> Result<Self, EncryptionError> {
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        Self::parse(&keys)
    }

    /// The keys as `age1...` strings, for the wire and for files.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Their ids, in order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.0.iter().map(KeyId::of).collect()
    }

    pub fn contains(&self, r: &age::x25519::Recipient) -> bool {
        self.0.contains(r)
    }

    pub fn push(&mut self, r: age::x25519::Recipient) {
        if !self.contains(&r) {
            self.0.push(r);
        }
    }

    fn encryptor(&self) -> Result<age::Encryptor, EncryptionError> {
        age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|_| EncryptionError::NoRecipients)
    }

    /// A writer that encrypts what it is given into `out`, counting the
    /// plaintext; [`Encrypting::finish`] must be called.
    pub fn encrypt_into<W: Write>(&self, out: W) -> Result<Encrypting<W>, EncryptionError> {
        Ok(Encrypting {
            inner: self.encryptor()?.wrap_output(out)?,
            plain: Tally::default(),
        })
    }

    /// `bytes` encrypted, ASCII-armored (the PEM-like form `age -a` writes and
    /// `age -d` reads): for a encrypted section inside a JSON file.
    pub fn encrypt_armored(&self, bytes: &[u8]) -> Result<String, EncryptionError> {
        let armor =
            age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor)?;
        let mut w = self.encryptor()?.wrap_output(armor)?;
        w.write_all(bytes)?;
        let out = w.finish()?.finish()?;
        Ok(String::from_utf8(out).expect("armor is ASCII"))
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.key_ids()).finish()
    }
}

fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, EncryptionError> {
    age::x25519::Recipient::from_str(s).map_err(|reason| EncryptionError::BadRecipient {
        // A public key is no secret; a long paste is cut short.
        what: format!("{:?}", s.chars().take(70).collect::<String>()),
        reason,
    })
}

/// Parses one `age1...` recipient.
pub fn recipient(s: &str) -> Result<age::x25519::Recipient, EncryptionError> {
    parse_recipient(s.trim())
}

/// A [`Write`] that encrypts into `W` and counts the plaintext it was given.
pub struct Encrypting<W: Write> {
    inner: age::stream::StreamWriter<W>,
    plain: Tally,
}

impl<W: Write> Encrypting<W> {
    /// Writes age's last chunk; returns `W` and the plaintext's digest and size.
    pub fn finish(self) -> io::Result<(W, (Checksum, u64))> {
        let out = self.inner.finish()?;
        Ok((out, self.plain.finish()))
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.plain.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The private keys that open backups: the current one and older ones kept
/// for the backups encrypted to them.
#[derive(Clone, Default)]
pub struct Identities(Vec<age::x25519::Identity>);

impl Identities {
    /// Parses an identity file as `age-keygen` writes it: `AGE-SECRET-KEY-1...`
    /// lines, `#` comments and blank lines skipped.
    pub fn from_file_text(text: &str) -> Result<Self, EncryptionError> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(
                age::x25519::Identity::from_str(line)
                    .map_err(|_| EncryptionError::BadIdentity { line: n + 1 })?,
            );
        }
        Ok(Identities(out))
    }

    /// A new identity, for `keys init` and `keys rotate`.
    pub fn generate() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    /// `identity` in the file format `age-keygen` writes.
    pub fn file_text(identity: &age::x25519::Identity, created: &str) -> String {
        format!(
            "# created: {created}\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids of the public keys these identities answer for.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.0.iter().map(|i| KeyId::of(&i.to_public())).collect()
    }

    /// The public keys these identities answer for.
    pub fn recipients(&self) -> Vec<age::x25519::Recipient> {
        self.0.iter().map(|i| i.to_public()).collect()
    }

    /// A reader of the plaintext encrypted in `input`. Damage further on shows
    /// as a read error ([`io::ErrorKind::InvalidData`] or `UnexpectedEof`).
    pub fn open<R: BufRead>(
        &self,
        input: R,
        encrypted_to: &str,
    ) -> Result<age::stream::StreamReader<R>, EncryptionError> {
        let decryptor =
            age::Decryptor::new_buffered(input).map_err(|e| decrypt_error(e, encrypted_to))?;
        decryptor
            .decrypt(self.0.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| decrypt_error(e, encrypted_to))
    }

    /// Opens an armored section written by [`Recipients::encrypt_armored`].
    pub fn open_armored(
        &self,
        armored: &str,
        encrypted_to: &str,
    ) -> Result<Vec<u8>, EncryptionError> {
        let reader = io::BufReader::new(age::armor::ArmoredReader::new(armored.as_bytes()));
        let mut out = Vec::new();
        self.open(reader, encrypted_to)?
            .read_to_end(&mut out)
            .map_err(|e| EncryptionError::Damaged(e.to_string()))?;
        Ok(out)
    }
}

/// The first line of an armored age file.
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// Whether an identity file is itself encrypted with a passphrase (as
/// `age -p` and `keys init --passphrase` write it), binary or armored.
pub fn is_encrypted_file(bytes: &[u8]) -> bool {
    bytes.starts_with(AGE_MAGIC) || bytes.starts_with(ARMOR_BEGIN)
}

impl Identities {
    /// An identity file's `text` encrypted with `passphrase` (scrypt, as
    /// `age -p`), armored; `age -d` asks for the passphrase and opens it.
    pub fn lock(text: &str, passphrase: SecretString) -> Result<String, EncryptionError> {
        let armor =
            age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor)?;
        let mut w = age::Encryptor::with_user_passphrase(passphrase).wrap_output(armor)?;
        w.write_all(text.as_bytes())?;
        let out = w.finish()?.finish()?;
        Ok(String::from_utf8(out).expect("armor is ASCII"))
    }

    /// Parses an identity file that [`Identities::lock`] (or `age -p`)
    /// encrypted. CPU-bound for about a second (scrypt): off the runtime.
    pub fn unlock(bytes: &[u8], passphrase: SecretString) -> Result<Self, EncryptionError> {
        Self::from_file_text(&Self::unlock_text(bytes, passphrase)?)
    }

    /// The text of an identity file [`Identities::lock`] encrypted.
    pub fn unlock_text(bytes: &[u8], passphrase: SecretString) -> Result<String, EncryptionError> {
        let reader = io::BufReader::new(age::armor::ArmoredReader::new(bytes));
        let d = age::Decryptor::new_buffered(reader)
            .map_err(|e| EncryptionError::Damaged(e.to_string()))?;
        if !d.is_scrypt() {
            return Err(EncryptionError::Damaged(
                "it is encrypted to keys, not with a passphrase".into(),
            ));
        }
        let identity = age::scrypt::Identity::new(passphrase);
        let mut text = String::new();
        d.decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::DecryptionFailed => EncryptionError::WrongPassphrase,
                other => EncryptionError::Damaged(other.to_string()),
            })?
            .read_to_string(&mut text)
            .map_err(|e| EncryptionError::Damaged(e.to_string()))?;
        Ok(text)
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.key_ids()).finish()
    }
}

fn decrypt_error(e: age::DecryptError, encrypted_to: &str) -> EncryptionError {
    match e {
        age::DecryptError::NoMatchingKeys => EncryptionError::NoMatchingIdentity {
            encrypted_to: encrypted_to.to_owned(),
        },
        age::DecryptError::Io(e) => EncryptionError::Damaged(e.to_string()),
        other => EncryptionError::Damaged(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Identities, Recipients) {
        let id = Identities::generate();
        let r = Recipients(vec![id.to_public()]);
        (Identities(vec![id]), r)
    }

    fn encrypted(r: &Recipients, plain: &[u8]) -> (Vec<u8>, (Checksum, u64)) {
        let mut w = r.encrypt_into(Vec::new()).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn what_is_encrypted_to_several_keys_opens_with_any_one() {
        let (a, ra) = pair();
        let (b, rb) = pair();
        let mut both = ra.clone();
        both.push(rb.0[0].clone());
        let plain = vec![7u8; 200_000];
        let (bytes, (digest, size)) = encrypted(&both, &plain);
        assert!(bytes.starts_with(AGE_MAGIC));
        assert_eq!((digest, size), (Checksum::of(&plain), plain.len() as u64));
        for ids in [&a, &b] {
            let mut out = Vec::new();
            ids.open(&bytes[..], "x")
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain);
        }
        let (c, _) = pair();
        let err = c.open(&bytes[..], "a, b").err().unwrap().to_string();
        assert_eq!(
            err,
            "none of the identities held opens it (encrypted to a, b)"
        );
    }

    #[test]
    fn damage_and_truncation_are_read_errors() {
        let (ids, r) = pair();
        let plain = vec![1u8; 150_000];
        let (bytes, _) = encrypted(&r, &plain);
        let mut flipped = bytes.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        let truncated = &bytes[..bytes.len() - 70_000];
        for bad in [&flipped[..], truncated] {
            let mut out = Vec::new();
            let err = ids
                .open(bad, "x")
                .unwrap()
                .read_to_end(&mut out)
                .unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_locked_identity_file_opens_with_its_passphrase_only() {
        let id = Identities::generate();
        let text = Identities::file_text(&id, "2026-12-07T00:00:00Z");
        let locked = Identities::lock(&text, SecretString::from("correct horse")).unwrap();
        assert!(is_encrypted_file(locked.as_bytes()) && !is_encrypted_file(text.as_bytes()));
        assert!(!locked.contains("AGE-SECRET-KEY"));
        let opened =
            Identities::unlock(locked.as_bytes(), SecretString::from("correct horse")).unwrap();
        assert_eq!(opened.recipients(), vec![id.to_public()]);
        let err = Identities::unlock(locked.as_bytes(), SecretString::from("wrong"))
            .err()
            .unwrap();
        assert!(matches!(err, EncryptionError::WrongPassphrase), "{err}");
    }

    #[test]
    fn armored_sections_round_trip_and_key_files_parse() {
        let (ids, r) = pair();
        let armored = r.encrypt_armored(b"{\"a\":1}").unwrap();
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert_eq!(ids.open_armored(&armored, "x").unwrap(), b"{\"a\":1}");

        let id = Identities::generate();
        let text = Identities::file_text(&id, "2026-12-07T00:00:00Z");
        let parsed = Identities::from_file_text(&text).unwrap();
        assert_eq!(parsed.recipients(), vec![id.to_public()]);
        assert!(!text.lines().nth(1).unwrap().contains("SECRET"));
        let err = Identities::from_file_text("# c\n\nnot a key\n")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "line 3 of the identity file is not an age identity (AGE-SECRET-KEY-1...)"
        );
        let rs = Recipients::from_file_text(&format!("# escrow\n{}\n\n", id.to_public())).unwrap();
        assert_eq!(rs.key_ids(), vec![KeyId::of(&id.to_public())]);
        assert_eq!(KeyId::of(&id.to_public()).as_str().len(), 16);
        let err = Recipients::parse(&["age1nope"]).err().unwrap().to_string();
        assert!(
            err.starts_with("\"age1nope\" is not an age X25519 recipient"),
            "{err}"
        );
        assert!(matches!(
            Recipients::parse::<&str>(&[]),
            Err(EncryptionError::NoRecipients)
        ));
    }
}
