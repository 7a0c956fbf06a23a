//! SHA-256 checksums as written in `metadata.json`: `sha256:<64 hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checksum([u8; 32]);

/// Why a string is not a checksum.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid checksum {0:?}: expected sha256:<64 hex digits>")]
pub struct InvalidChecksum(pub String);

impl Checksum {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest accumulated by `hasher`.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

/// The digest and size of bytes as they pass: the one hash-and-count every
/// stream of artifacts uses, sending, receiving, storing and verifying.
#[derive(Clone, Default)]
pub struct Tally {
    hasher: Sha256,
    size: u64,
}

impl Tally {
    /// Counts `bytes` in.
    pub fn add(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes counted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest and size of everything counted.
    pub fn finish(self) -> (Checksum, u64) {
        (Checksum::from_hasher(self.hasher), self.size)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Checksum {
    type Err = InvalidChecksum;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidChecksum(s.chars().take(80).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256sum() {
        // printf abc | sha256sum
        let c = Checksum::of(b"abc");
        assert_eq!(
            c.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(c.to_string().parse::<Checksum>().unwrap(), c);
    }

    #[test]
    fn accepts_upper_case_hex() {
        let lower = Checksum::of(b"abc").to_string();
        let upper = format!("sha256:{}", lower[7..].to_ascii_uppercase());
        assert_eq!(upper.parse::<Checksum>().unwrap(), Checksum::of(b"abc"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "abc",
            "md5:900150983cd24fb0d6963f7d28e17f72",
            "sha256:",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad:?} accepted");
        }
    }
}
