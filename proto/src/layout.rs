//! `metadata.json`'s `layout`: how an app sat on its host's disk when it was
//! backed up, beyond the bytes its artifacts hold. A restore needs it to put
//! the app back as it was: the app directory's own mode and owner, those of
//! `ENV` and `app.json`, trees that were links to another volume, and what
//! the archives could not hold.
//!
//! Backups without a layout (older ones, Hop3's Python server's) restore as
//! before: directories and files of the restoring agent's own defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::InvalidName;

/// The trees of an app, each an archive member: `git/`, `src/`, `data/`.
pub const TREES: [&str; 3] = ["git", "src", "data"];

/// The files of an app directory a backup holds besides its trees.
pub const APP_FILES: [&str; 2] = ["ENV", "app.json"];

/// A layout, as recorded by the agent that made the backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Mode and owner of the app directory itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_dir: Option<Owner>,
    /// Mode and owner of `ENV` and `app.json`, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Owner>,
    /// Trees that were symbolic links to a directory (data on another
    /// volume, say), by tree: the link's target as written. The archive
    /// holds what the link pointed to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, String>,
    /// Entries the archives could not hold (sockets, device nodes), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Disk space each tree takes once restored, by tree: file contents
    /// without their holes, in whole blocks, each set of hard-linked files
    /// once. What a restore checks free space against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
    /// The names of the app directory's owner and group, so that a restore
    /// on another host gives the app to the same names, whatever their
    /// numbers are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_owner_names: Option<OwnerNames>,
    /// The `/etc/machine-id` of the host that made the backup: what tells a
    /// new machine given an old host's name from that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
}

/// A user's and a group's names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Permission bits and owner of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Permission bits (`0o7777` at most), written in octal: `"0750"`.
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// An entry left out of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its path in the archive (`data/run/app.sock`).
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// Longest link target kept, as the kernel's own limit on a path.
const MAX_LINK: usize = 4096;

impl Layout {
    /// Checks what a manifest from the store may say: only known trees and
    /// files, modes that are permission bits, link targets that are paths.
    pub fn validate(&self) -> Result<(), InvalidName> {
        let refuse = |kind, value: &str, reason| InvalidName {
            kind,
            value: value.chars().take(80).collect(),
            reason,
        };
        for (name, owner) in self.files.iter() {
            if !APP_FILES.contains(&name.as_str()) {
                return Err(refuse("layout file", name, "is not ENV or app.json"));
            }
            owner.validate()?;
        }
        if let Some(owner) = &self.app_dir {
            owner.validate()?;
        }
        if let Some(tree) = self.sizes.keys().find(|t| !TREES.contains(&t.as_str())) {
            return Err(refuse("tree", tree, "is not git, src or data"));
        }
        for (tree, target) in &self.links {
            if !TREES.contains(&tree.as_str()) {
                return Err(refuse("linked tree", tree, "is not git, src or data"));
            }
            if target.is_empty() || target.len() > MAX_LINK || target.contains('\0') {
                return Err(refuse("link target", target, "is not a path"));
            }
        }
        Ok(())
    }
}

impl Owner {
    fn validate(&self) -> Result<(), InvalidName> {
        if self.mode > 0o7777 {
            return Err(InvalidName {
                kind: "mode",
                value: format!("{:o}", self.mode),
                reason: "is more than permission bits",
            });
        }
        Ok(())
    }
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_octal_modes() {
        let mut layout = Layout {
            app_dir: Some(Owner {
                mode: 0o750,
                uid: 1001,
                gid: 1002,
            }),
            ..Layout::default()
        };
        layout
            .links
            .insert("data".into(), "/srv/volume/data".into());
        let json = serde_json::to_string(&layout).unwrap();
        assert!(json.contains(r#""mode":"0750""#), "{json}");
        let back: Layout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, layout);
        back.validate().unwrap();
    }

    #[test]
    fn refuses_what_a_restore_must_not_act_on() {
        let mut bad = Layout::default();
        bad.links.insert("../etc".into(), "/x".into());
        assert!(bad.validate().is_err());
        let mut bad = Layout::default();
        bad.files.insert(
            "passwd".into(),
            Owner {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        );
        assert!(bad.validate().is_err());
        let bad = Layout {
            app_dir: Some(Owner {
                mode: 0o170000,
                uid: 0,
                gid: 0,
            }),
            ..Layout::default()
        };
        assert!(bad.validate().is_err());
    }
}
