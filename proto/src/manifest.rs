//! `metadata.json`: the manifest of one backup, formats 1.0 and 1.1 (they
//! differ in the archives' compression only; see [`Format`]).
//!
//! Backups written by Hop3's Python server use the same layout but say
//! `addons` where this format says `services`, and write `created_at` with
//! microseconds and `+00:00`; both are read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::format::{Archive, Compression, ENCRYPTED_SUFFIX, Encoding, Format};
use crate::layout::Layout;
use crate::names::{self, InvalidName};
use crate::{BackupId, Checksum};

/// The name of the manifest inside a backup directory.
pub const MANIFEST_FILE: &str = "metadata.json";

/// Largest manifest accepted: a real one is a few KiB.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The manifest of one backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub backup_id: String,
    pub app_name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub format_version: String,
    pub hop3_version: String,
    /// Sum of the sizes of the files listed in `checksums`.
    pub size_bytes: u64,
    /// Every file of the backup but the manifest, by path relative to the backup directory.
    pub checksums: BTreeMap<String, Checksum>,
    /// How each artifact is stored; absent in backups made before it was
    /// recorded, whose version says ([`Format::encoding_of`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encodings: BTreeMap<String, Encoding>,
    pub app_metadata: AppMetadata,
    #[serde(alias = "addons", default)]
    pub services: Vec<ServiceEntry>,
    #[serde(default)]
    pub env_vars_count: u32,
    #[serde(default)]
    pub expires_after: u64,
    /// False when the backup was made with `--no-services`.
    #[serde(default = "yes")]
    pub services_included: bool,
    /// The host whose agent made the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How the app sat on disk (owners, linked trees, what was skipped);
    /// absent in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// What only a key holder may read, in a backup whose artifacts are
    /// encrypted: their plaintext digests ([`Plaintexts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<EncryptedSection>,
}

/// A section of the manifest encrypted with age to the backup's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncryptedSection {
    /// The ids of the keys it is encrypted to.
    pub keys: Vec<String>,
    /// An ASCII-armored age file (`age -d` reads it as it is).
    pub payload: String,
    /// The directory the encrypted artifacts lie in when they were
    /// encrypted again after the backup was made (`keys retire`):
    /// `sealed-2/data.tar.zst.age` opens as `data.tar.zst`. Each new
    /// encryption writes new objects under a new directory, so that the
    /// old stay whole until the manifest names the new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// What the encrypted section holds: per encrypted artifact (by stored path), the
/// digest and size of its plaintext, which a restore checks and which must
/// not be readable without a key (a digest confirms a guess of the content).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plaintexts {
    pub files: BTreeMap<String, PlainFile>,
}

/// One encrypted artifact's plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlainFile {
    pub sha256: Checksum,
    pub size: u64,
}

fn yes() -> bool {
    true
}

/// Hostname, port and run state of the app when it was backed up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppMetadata {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub run_state: Option<String>,
}

/// One attached service's dump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    /// Path of the dump relative to the backup directory.
    pub backup_file: String,
    #[serde(default)]
    pub size_bytes: u64,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("metadata.json is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("metadata.json has unsupported format version {0:?} (this build reads 1.0 and 1.1)")]
    UnsupportedVersion(String),
    #[error("metadata.json: the encoding of {0:?}, which it does not list")]
    UnlistedEncoding(String),
    #[error("the backup holds more than one {0} archive")]
    TwoArchives(&'static str),
    #[error("metadata.json: {0}")]
    BadId(#[from] crate::backup_id::InvalidBackupId),
    #[error("metadata.json: {0}")]
    BadName(#[from] InvalidName),
    #[error("metadata.json: created_at {0:?} is not an RFC 3339 time")]
    BadTime(String),
    #[error("metadata.json: service file {0:?} has no checksum")]
    UnlistedServiceFile(String),
    #[error(
        "metadata.json: {0:?} is encrypted but not named {ENCRYPTED_SUFFIX}, or named so and not encrypted"
    )]
    EncryptedName(String),
    #[error("metadata.json: encrypted artifacts but no encrypted section")]
    NoEncryptedSection,
    #[error("the encrypted section of metadata.json does not describe {0:?}")]
    UndescribedPlaintext(String),
    #[error("the encrypted section of metadata.json is not valid: {0}")]
    BadEncryptedSection(String),
    #[error("metadata.json: {0:?} is not where the encrypted section says encrypted artifacts lie")]
    OutsideSealedDir(String),
}

impl Manifest {
    /// Parses and validates a manifest. Every path it names is checked, so
    /// nothing it says can lead a reader outside the backup directory.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises the manifest as written to `metadata.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }

    /// Checks the rules `from_json` enforces.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.format()?;
        if let Some(path) = self
            .encodings
            .keys()
            .find(|p| !self.checksums.contains_key(*p))
        {
            return Err(ManifestError::UnlistedEncoding(
                path.chars().take(80).collect(),
            ));
        }
        self.backup_id.parse::<BackupId>()?;
        names::validate_app_name(&self.app_name)?;
        self.created_at()?;
        if let Some(dir) = self.sealed_dir()
            && (dir.contains('/')
                || ["services", "addons"].contains(&dir)
                || names::validate_artifact_path(dir).is_err())
        {
            return Err(ManifestError::BadEncryptedSection(format!(
                "{:?} is not a directory name",
                dir.chars().take(40).collect::<String>()
            )));
        }
        for path in self.checksums.keys() {
            // Encrypted artifacts in the directory, and nothing else: stripping
            // it can never make two paths one.
            let inside = self.in_sealed_dir(path);
            if self.sealed_dir().is_some() && inside.is_some() != self.is_encrypted(path) {
                return Err(ManifestError::OutsideSealedDir(
                    path.chars().take(80).collect(),
                ));
            }
            names::validate_artifact_path(inside.unwrap_or(path))?;
            if path == MANIFEST_FILE {
                return Err(InvalidName {
                    kind: "artifact path",
                    value: path.clone(),
                    reason: "the manifest cannot list itself",
                }
                .into());
            }
        }
        if let Some(layout) = &self.layout {
            layout.validate()?;
        }
        for s in &self.services {
            names::validate_artifact_path(
                self.in_sealed_dir(&s.backup_file).unwrap_or(&s.backup_file),
            )?;
            if !self.checksums.contains_key(&s.backup_file) {
                return Err(ManifestError::UnlistedServiceFile(s.backup_file.clone()));
            }
        }
        // A encrypted artifact carries the suffix and nothing else does, so
        // that stripping it can never make two paths one.
        for path in self.checksums.keys() {
            if self.is_encrypted(path) != path.ends_with(ENCRYPTED_SUFFIX) {
                return Err(ManifestError::EncryptedName(
                    path.chars().take(80).collect(),
                ));
            }
        }
        if self.encrypted.is_none() && self.checksums.keys().any(|p| self.is_encrypted(p)) {
            return Err(ManifestError::NoEncryptedSection);
        }
        Ok(())
    }

    /// Whether the artifact at `path` is encrypted.
    pub fn is_encrypted(&self, path: &str) -> bool {
        self.encodings
            .get(path)
            .is_some_and(|e| e.encryption.is_some())
    }

    /// Whether any artifact of the backup is encrypted.
    pub fn any_encrypted(&self) -> bool {
        self.encrypted.is_some() || self.checksums.keys().any(|p| self.is_encrypted(p))
    }

    /// The directory the encrypted artifacts lie in, when they were
    /// encrypted again ([`EncryptedSection::dir`]).
    pub fn sealed_dir(&self) -> Option<&str> {
        self.encrypted.as_ref()?.dir.as_deref()
    }

    /// `path` without the directory of a later encryption, when it lies there.
    fn in_sealed_dir<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.sealed_dir()?)?.strip_prefix('/')
    }

    /// The path the artifact stored at `path` has once opened (its
    /// `.age` suffix gone when it is encrypted, and the directory of a
    /// later encryption).
    pub fn plain_path<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_suffix(ENCRYPTED_SUFFIX) {
            Some(plain) if self.is_encrypted(path) => self.in_sealed_dir(plain).unwrap_or(plain),
            _ => path,
        }
    }

    /// The manifest as a reader of the opened artifacts sees it: plain
    /// paths, plaintext digests and sizes, no encryption. What a restore
    /// hands the agent, which then checks every plaintext byte it gets.
    pub fn opened(&self, plain: &Plaintexts) -> Result<Manifest, ManifestError> {
        let mut out = self.clone();
        out.encrypted = None;
        out.checksums.clear();
        out.encodings.clear();
        out.size_bytes = 0;
        for (path, checksum) in &self.checksums {
            let mut encoding = self.encoding(path);
            let (checksum, size) = if encoding.encryption.take().is_some() {
                let p = plain
                    .files
                    .get(path)
                    .ok_or_else(|| ManifestError::UndescribedPlaintext(path.clone()))?;
                (p.sha256, p.size)
            } else {
                // Backups are encrypted whole; a manifest that mixes is read as
                // written, its plain files' sizes left out of the total.
                (*checksum, 0)
            };
            let plain_path = self.plain_path(path).to_owned();
            out.size_bytes += size;
            if self.encodings.contains_key(path) {
                out.encodings.insert(plain_path.clone(), encoding);
            }
            out.checksums.insert(plain_path, checksum);
        }
        for s in &mut out.services {
            if let Some(p) = plain.files.get(&s.backup_file) {
                s.size_bytes = p.size;
            }
            s.backup_file = self.plain_path(&s.backup_file).to_owned();
        }
        out.validate()?;
        Ok(out)
    }

    /// The backup's format version.
    pub fn format(&self) -> Result<Format, ManifestError> {
        self.format_version.parse().map_err(|_| {
            ManifestError::UnsupportedVersion(self.format_version.chars().take(20).collect())
        })
    }

    /// How the artifact at `path` is stored: as recorded, else as its
    /// version stores it.
    pub fn encoding(&self, path: &str) -> Encoding {
        match self.encodings.get(path) {
            Some(e) => e.clone(),
            None => self
                .format()
                .map(|f| f.encoding_of(path))
                .unwrap_or_default(),
        }
    }

    /// The tree archives the backup holds, each with its path and
    /// compression. Two archives of one tree (`data.tar.gz` and
    /// `data.tar.zst`) are refused: both would unpack into the same
    /// directories, each checking only its own links, so one could lead
    /// the other out.
    pub fn archives(&self) -> Result<Vec<(String, Archive, Compression)>, ManifestError> {
        let mut out: Vec<(String, Archive, Compression)> = Vec::new();
        for path in self.checksums.keys() {
            if let Some((archive, _)) = Archive::of_path(path) {
                if out.iter().any(|(_, a, _)| *a == archive) {
                    return Err(ManifestError::TwoArchives(archive.stem()));
                }
                out.push((path.clone(), archive, self.encoding(path).compression));
            }
        }
        Ok(out)
    }

    /// When the backup was made.
    pub fn created_at(&self) -> Result<OffsetDateTime, ManifestError> {
        OffsetDateTime::parse(&self.created_at, &Rfc3339)
            .map_err(|_| ManifestError::BadTime(self.created_at.chars().take(40).collect()))
    }

    /// Formats a time the way manifests store it: `2025-11-08T14:30:22Z`.
    pub fn format_time(t: OffsetDateTime) -> String {
        t.to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond")
            .format(&Rfc3339)
            .expect("formatting a UTC time cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut checksums = BTreeMap::new();
        checksums.insert("source.tar.gz".into(), Checksum::of(b"s"));
        checksums.insert("data.tar.gz".into(), Checksum::of(b"d"));
        checksums.insert("env.json".into(), Checksum::of(b"e"));
        checksums.insert("services/postgres_db.sql".into(), Checksum::of(b"p"));
        Manifest {
            backup_id: "20251108_143022_a8f3d9".into(),
            app_name: "my-app".into(),
            created_at: "2025-11-08T14:30:22Z".into(),
            format_version: Format::V1_0.to_string(),
            hop3_version: "0.1.0".into(),
            size_bytes: 4,
            checksums,
            encodings: BTreeMap::new(),
            app_metadata: AppMetadata {
                hostname: Some("myapp.example.com".into()),
                port: Some(8000),
                run_state: Some("RUNNING".into()),
            },
            services: vec![ServiceEntry {
                kind: "postgres".into(),
                name: "db".into(),
                backup_file: "services/postgres_db.sql".into(),
                size_bytes: 1,
            }],
            env_vars_count: 12,
            expires_after: 0,
            services_included: true,
            host: Some("local".into()),
            layout: None,
            encrypted: None,
        }
    }

    /// `sample()` as an encrypted backup stores it.
    fn encrypted_sample() -> (Manifest, Plaintexts) {
        use crate::format::{Encryption, EncryptionScheme};
        let mut m = sample();
        let mut plain = Plaintexts::default();
        let sealed: BTreeMap<String, Checksum> = m
            .checksums
            .iter()
            .map(|(p, c)| (format!("{p}.age"), *c))
            .collect();
        for (n, path) in sealed.keys().enumerate() {
            let encoding = Encoding {
                encryption: Some(Encryption {
                    scheme: EncryptionScheme::Age,
                    keys: vec!["0123456789abcdef".into()],
                }),
                ..m.encoding(path.trim_end_matches(".age"))
            };
            m.encodings.insert(path.clone(), encoding);
            let body = format!("plain {n}");
            plain.files.insert(
                path.clone(),
                PlainFile {
                    sha256: Checksum::of(body.as_bytes()),
                    size: body.len() as u64,
                },
            );
        }
        m.checksums = sealed;
        m.services[0].backup_file.push_str(".age");
        m.encrypted = Some(EncryptedSection {
            keys: vec!["0123456789abcdef".into()],
            payload: "-----BEGIN AGE ENCRYPTED FILE-----".into(),
            dir: None,
        });
        (m, plain)
    }

    /// `m` with its encrypted artifacts moved under `dir`, as `keys retire` stores them.
    fn moved_under(m: &Manifest, plain: &Plaintexts, dir: &str) -> (Manifest, Plaintexts) {
        let mut out = m.clone();
        let moved = |p: &String| {
            if m.is_encrypted(p) {
                format!("{dir}/{p}")
            } else {
                p.clone()
            }
        };
        out.checksums = m.checksums.iter().map(|(p, c)| (moved(p), *c)).collect();
        out.encodings = m
            .encodings
            .iter()
            .map(|(p, e)| (moved(p), e.clone()))
            .collect();
        for s in &mut out.services {
            s.backup_file = moved(&s.backup_file);
        }
        out.encrypted.as_mut().unwrap().dir = Some(dir.to_owned());
        let plain = Plaintexts {
            files: plain.files.iter().map(|(p, f)| (moved(p), *f)).collect(),
        };
        (out, plain)
    }

    #[test]
    fn artifacts_encrypted_again_open_from_their_directory() {
        let (m, plain) = encrypted_sample();
        let (moved, moved_plain) = moved_under(&m, &plain, "sealed-2");
        moved.validate().unwrap();
        assert_eq!(moved.plain_path("sealed-2/data.tar.gz.age"), "data.tar.gz");
        assert_eq!(
            moved.plain_path("sealed-2/services/postgres_db.sql.age"),
            "services/postgres_db.sql"
        );
        assert_eq!(
            moved.opened(&moved_plain).unwrap(),
            m.opened(&plain).unwrap(),
            "a reader sees the same backup"
        );
        let back = Manifest::from_json(&moved.to_json()).unwrap();
        assert_eq!(back, moved);

        // An encrypted artifact outside the directory, or a directory that is no name.
        let (mut half, _) = moved_under(&m, &plain, "sealed-2");
        let c = half.checksums.remove("sealed-2/env.json.age").unwrap();
        let e = half.encodings.remove("sealed-2/env.json.age").unwrap();
        half.checksums.insert("env.json.age".into(), c);
        half.encodings.insert("env.json.age".into(), e);
        assert!(matches!(
            half.validate(),
            Err(ManifestError::OutsideSealedDir(p)) if p == "env.json.age"
        ));
        for bad in ["..", "a/b", ""] {
            let (mut odd, _) = moved_under(&m, &plain, "sealed-2");
            odd.encrypted.as_mut().unwrap().dir = Some(bad.into());
            assert!(odd.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_encrypted_manifest_opens_into_the_plain_one_a_reader_checks() {
        let (m, plain) = encrypted_sample();
        m.validate().unwrap();
        assert!(m.any_encrypted() && m.is_encrypted("data.tar.gz.age"));
        assert_eq!(m.plain_path("data.tar.gz.age"), "data.tar.gz");
        assert_eq!(
            m.archives().unwrap(),
            vec![],
            "no archive is read encrypted"
        );
        let opened = m.opened(&plain).unwrap();
        assert_eq!(
            opened.checksums.keys().collect::<Vec<_>>(),
            [
                "data.tar.gz",
                "env.json",
                "services/postgres_db.sql",
                "source.tar.gz"
            ]
        );
        assert_eq!(
            opened.checksums["env.json"],
            plain.files["env.json.age"].sha256
        );
        assert_eq!(opened.services[0].backup_file, "services/postgres_db.sql");
        assert_eq!(
            opened.services[0].size_bytes,
            plain.files["services/postgres_db.sql.age"].size
        );
        assert!(opened.encrypted.is_none() && !opened.any_encrypted());
        assert_eq!(opened.archives().unwrap().len(), 2);
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);

        let mut partial = plain.clone();
        partial.files.remove("env.json.age");
        let err = m.opened(&partial).unwrap_err().to_string();
        assert!(err.contains("does not describe \"env.json.age\""), "{err}");
    }

    #[test]
    fn encryption_names_and_sections_must_agree() {
        let (m, _) = encrypted_sample();
        let mut no_section = m.clone();
        no_section.encrypted = None;
        assert!(matches!(
            no_section.validate(),
            Err(ManifestError::NoEncryptedSection)
        ));
        let mut misnamed = m.clone();
        let e = misnamed.encodings.remove("env.json.age").unwrap();
        let c = misnamed.checksums.remove("env.json.age").unwrap();
        misnamed.encodings.insert("env.json".into(), e);
        misnamed.checksums.insert("env.json".into(), c);
        assert!(matches!(
            misnamed.validate(),
            Err(ManifestError::EncryptedName(_))
        ));
        let mut clear = sample();
        clear
            .checksums
            .insert("notes.age".into(), Checksum::of(b"x"));
        assert!(matches!(
            clear.validate(),
            Err(ManifestError::EncryptedName(_))
        ));
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(text.contains("\"sha256:"), "{text}");
    }

    #[test]
    fn reads_python_server_manifests() {
        let json = r#"{
          "backup_id": "20251108_143022_a8f3d9",
          "app_name": "my-app",
          "created_at": "2025-11-08T14:30:22.123456+00:00",
          "format_version": "1.0",
          "hop3_version": "0.8.0",
          "size_bytes": 100,
          "checksums": {
            "source.tar.gz": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "addons/postgres_db.sql": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
          },
          "app_metadata": {"hostname": null, "port": 8000, "run_state": "RUNNING"},
          "addons": [{"type": "postgres", "name": "db", "backup_file": "addons/postgres_db.sql", "size_bytes": 5}],
          "env_vars_count": 3,
          "expires_after": 0
        }"#;
        let m = Manifest::from_json(json.as_bytes()).unwrap();
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].backup_file, "addons/postgres_db.sql");
        assert!(m.services_included);
        assert_eq!(m.app_metadata.hostname, None);
        assert_eq!(
            m.created_at().unwrap(),
            time::macros::datetime!(2025-11-08 14:30:22.123456 UTC)
        );
    }

    #[test]
    fn refuses_hostile_or_broken_manifests() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("format", Box::new(|v| v["format_version"] = "2.0".into())),
            ("minor", Box::new(|v| v["format_version"] = "1.2".into())),
            (
                "traversal",
                Box::new(|v| {
                    v["checksums"]["../../x"] = Checksum::of(b"x").to_string().into();
                }),
            ),
            (
                "absolute",
                Box::new(|v| {
                    v["checksums"]["/etc/passwd"] = Checksum::of(b"x").to_string().into();
                }),
            ),
            ("app", Box::new(|v| v["app_name"] = "../etc".into())),
            ("id", Box::new(|v| v["backup_id"] = "nope".into())),
            ("types", Box::new(|v| v["size_bytes"] = "big".into())),
            ("time", Box::new(|v| v["created_at"] = "yesterday".into())),
            (
                "checksum",
                Box::new(|v| v["checksums"]["env.json"] = "sha256:00".into()),
            ),
            (
                "service file",
                Box::new(|v| v["services"][0]["backup_file"] = "services/other.sql".into()),
            ),
        ];
        for (what, mutate) in cases {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            mutate(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            assert!(Manifest::from_json(&bytes).is_err(), "{what} accepted");
        }
        assert!(Manifest::from_json(b"{not json").is_err());
    }
}
