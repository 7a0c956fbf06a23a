//! Backup IDs: `YYYYMMDD_HHMMSS_<6 hex>`, in UTC.

use std::fmt;
use std::str::FromStr;

use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// A validated backup ID, e.g. `20251108_143022_a8f3d9`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

/// Why a string is not a backup ID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid backup ID {0:?}: expected YYYYMMDD_HHMMSS_xxxxxx (UTC time and 6 hex digits)")]
pub struct InvalidBackupId(pub String);

impl BackupId {
    /// A new ID for a backup starting now.
    pub fn generate() -> Self {
        Self::at(OffsetDateTime::now_utc(), rand::random::<[u8; 3]>())
    }

    /// The ID for a backup started at `when` with the given random suffix.
    pub fn at(when: OffsetDateTime, suffix: [u8; 3]) -> Self {
        let when = when.to_offset(time::UtcOffset::UTC);
        let stamp = when
            .format(format_description!(
                "[year][month][day]_[hour][minute][second]"
            ))
            .expect("formatting a UTC date cannot fail");
        Self(format!("{stamp}_{}", hex::encode(suffix)))
    }

    /// The ID as written in paths and the catalog.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTC time encoded in the ID.
    pub fn timestamp(&self) -> OffsetDateTime {
        PrimitiveDateTime::parse(
            &self.0[..15],
            format_description!("[year][month][day]_[hour][minute][second]"),
        )
        .expect("validated at parse time")
        .assume_utc()
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidBackupId(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() != 22 || b[8] != b'_' || b[15] != b'_' {
            return Err(bad());
        }
        let digits = b[..8].iter().chain(&b[9..15]);
        if !digits.into_iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        if !b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return Err(bad());
        }
        PrimitiveDateTime::parse(
            &s[..15],
            format_description!("[year][month][day]_[hour][minute][second]"),
        )
        .map_err(|_| bad())?;
        Ok(Self(s.to_owned()))
    }
}

/// A backup ID is a string that is known to be valid: it reads as one
/// wherever a `&str` is taken (paths, SQL, messages).
impl std::ops::Deref for BackupId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_and_parses_the_guide_example() {
        let id = BackupId::at(datetime!(2025-11-08 14:30:22 UTC), [0xa8, 0xf3, 0xd9]);
        assert_eq!(id.as_str(), "20251108_143022_a8f3d9");
        let parsed: BackupId = "20251108_143022_a8f3d9".parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.timestamp(), datetime!(2025-11-08 14:30:22 UTC));
    }

    #[test]
    fn generated_ids_parse() {
        let id = BackupId::generate();
        assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "20251108_143022",
            "20251108_143022_a8f3d",
            "20251108_143022_a8f3d9a",
            "20251108-143022_a8f3d9",
            "20251108_143022_A8F3D9",
            "20251308_143022_a8f3d9",
            "20251108_256022_a8f3d9",
            "../../../etc/passwd___",
            "20251108_143022_a8f/d9",
            "2025110８_143022_a8f3d9",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?} accepted");
        }
    }
}
