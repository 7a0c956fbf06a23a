//! The on-disk format versions, as one type: per version, the artifacts a
//! backup holds and how each is encoded. Every reader and writer (agent,
//! controller, CLI) asks this module; no other code spells a version or an
//! archive's file name. A new version (chunked, encrypted) is a new variant
//! here and the encodings it records in the manifest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A backup format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Gzip archives (`source.tar.gz`, `data.tar.gz`), readable by every Hop3
    /// and by `tar -xzf`.
    V1_0,
    /// The same layout with zstd archives (`source.tar.zst`, `data.tar.zst`),
    /// readable with `tar --zstd -xf`. Readers that know only 1.0 refuse it
    /// by its version.
    V1_1,
}

/// A format version this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backup format {0:?}: this build reads and writes 1.0 (gzip) and 1.1 (zstd)")]
pub struct UnknownFormat(pub String);

impl Format {
    /// What this build writes unless asked otherwise: zstd compresses on
    /// every core, several times faster than gzip.
    pub const DEFAULT: Format = Format::V1_1;

    /// Every version this build reads and writes, oldest first.
    pub const ALL: [Format; 2] = [Format::V1_0, Format::V1_1];

    /// The version as `metadata.json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::V1_0 => "1.0",
            Format::V1_1 => "1.1",
        }
    }

    /// A version named on the wire, where empty means the default.
    pub fn from_wire(s: &str) -> Result<Self, UnknownFormat> {
        if s.is_empty() {
            Ok(Self::DEFAULT)
        } else {
            s.parse()
        }
    }

    /// How this version compresses its archives.
    pub fn compression(self) -> Compression {
        match self {
            Format::V1_0 => Compression::Gzip,
            Format::V1_1 => Compression::Zstd,
        }
    }

    /// The path of archive `archive` in a backup of this version.
    pub fn archive_path(self, archive: Archive) -> String {
        format!("{}.tar{}", archive.stem(), self.compression().extension())
    }

    /// The encoding this version gives the artifact at `path`.
    pub fn encoding_of(self, path: &str) -> Encoding {
        match Archive::of_path(path) {
            Some((_, compression)) => Encoding {
                compression,
                encryption: None,
            },
            None => Encoding::default(),
        }
    }

    /// The artifacts every backup of this version holds.
    pub fn required(self) -> Vec<String> {
        let mut out: Vec<String> = Archive::ALL.iter().map(|a| self.archive_path(*a)).collect();
        out.extend([ENV_JSON.to_owned(), APP_JSON.to_owned()]);
        out
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat(s.chars().take(20).collect()))
    }
}

/// The app's variables, parsed: a JSON object of strings.
pub const ENV_JSON: &str = "env.json";

/// The app's `app.json` as it was (its service connections).
pub const APP_JSON: &str = "app.json";

/// The app's `ENV` file as written (comments, quoting, order).
pub const ENV_RAW: &str = "ENV";

/// Where service dumps live in a backup.
pub const SERVICES_DIR: &str = "services";

/// The tree archives of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Archive {
    /// The git repository and the deployed tree.
    Source,
    /// The data directory.
    Data,
}

impl Archive {
    /// Both archives, in the order a backup lists them.
    pub const ALL: [Archive; 2] = [Archive::Source, Archive::Data];

    /// The archive's file name without its extensions.
    pub fn stem(self) -> &'static str {
        match self {
            Archive::Source => "source",
            Archive::Data => "data",
        }
    }

    /// The app's trees it holds, as top-level entries.
    pub fn trees(self) -> &'static [&'static str] {
        match self {
            Archive::Source => &["git", "src"],
            Archive::Data => &["data"],
        }
    }

    /// The archive at `path` and the compression its name says, in any
    /// version (a manifest listing two archives of one tree is refused by
    /// [`Manifest::archives`](crate::Manifest::archives)).
    pub fn of_path(path: &str) -> Option<(Archive, Compression)> {
        Archive::ALL.into_iter().find_map(|a| {
            let rest = path.strip_prefix(a.stem())?.strip_prefix(".tar")?;
            // An archive is compressed: a plain `data.tar` is no archive of any version.
            [Compression::Gzip, Compression::Zstd]
                .into_iter()
                .find(|c| c.extension() == rest)
                .map(|c| (a, c))
        })
    }
}

/// How an artifact's bytes are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as produced.
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The file-name extension of an archive so compressed.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    fn is_none(&self) -> bool {
        *self == Compression::None
    }
}

/// How one artifact is stored, as the manifest records it: the one place a
/// reader learns it (compression, encryption; chunking later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoding {
    #[serde(default, skip_serializing_if = "Compression::is_none")]
    pub compression: Compression,
    /// Encrypted after compression; absent: stored in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The name suffix of a encrypted artifact, after its codec's (`data.tar.zst.age`).
pub const ENCRYPTED_SUFFIX: &str = ".age";

/// How an artifact is encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: EncryptionScheme,
    /// The ids of the public keys it is encrypted to (any one's identity opens it).
    pub keys: Vec<String>,
}

/// An encryption scheme an artifact may be encrypted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionScheme {
    /// A standard age file (age-encryption.org/v1) to X25519 recipients:
    /// `age -d -i identity.txt` opens it.
    Age,
}

/// The path an artifact at `plain` is stored under, encrypted or not.
pub fn stored_path(plain: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{plain}{ENCRYPTED_SUFFIX}")
    } else {
        plain.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_their_artifacts() {
        assert_eq!(
            Format::V1_0.required(),
            ["source.tar.gz", "data.tar.gz", "env.json", "app.json"]
        );
        assert_eq!(
            Format::V1_1.required(),
            ["source.tar.zst", "data.tar.zst", "env.json", "app.json"]
        );
        assert_eq!(Format::from_wire("").unwrap(), Format::V1_1);
        assert_eq!("1.0".parse::<Format>().unwrap(), Format::V1_0);
        let err = "2.0".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("1.0 (gzip) and 1.1 (zstd)"), "{err}");
    }

    #[test]
    fn archives_are_known_by_their_paths() {
        assert_eq!(
            Archive::of_path("data.tar.zst"),
            Some((Archive::Data, Compression::Zstd))
        );
        assert_eq!(
            Archive::of_path("source.tar.gz"),
            Some((Archive::Source, Compression::Gzip))
        );
        assert_eq!(Archive::of_path("data.tar.xz"), None);
        assert_eq!(Archive::of_path("services/data.tar.gz"), None);
        assert_eq!(Archive::of_path("env.json"), None);
        assert_eq!(
            Format::V1_1.encoding_of("env.json").compression,
            Compression::None
        );
    }
}
