//! Locks held while operations run: per app (one create or restore at a
//! time on an app; an app is a name on a host, so the same name on two
//! hosts is two apps that never wait for each other), and per backup (a backup being read, by a restore or a
//! verification, is not deleted under its readers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What holds an app's lock, to tell whoever must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppHolder {
    /// "a backup", "a restore", "an import".
    pub what: &'static str,
    /// When it took the lock.
    pub since: Instant,
}

/// The apps with an operation running, and what runs.
#[derive(Clone, Default)]
pub struct AppLocks {
    held: Arc<Mutex<HashMap<AppKey, AppHolder>>>,
}

/// An app: its host and its name.
type AppKey = (String, String);

/// Held while an operation runs on an app; released on drop, whatever happens.
pub struct AppLock {
    held: Arc<Mutex<HashMap<AppKey, AppHolder>>>,
    app: AppKey,
}

impl AppLocks {
    /// Takes the lock on `app` of `host` for `what`, or says what holds it.
    pub fn try_lock(
        &self,
        host: &str,
        app: &str,
        what: &'static str,
    ) -> Result<AppLock, AppHolder> {
        let key = (host.to_owned(), app.to_owned());
        let mut held = self.held.lock().expect("locks poisoned");
        if let Some(holder) = held.get(&key) {
            return Err(*holder);
        }
        let since = Instant::now();
        held.insert(key.clone(), AppHolder { what, since });
        Ok(AppLock {
            held: self.held.clone(),
            app: key,
        })
    }
}

impl Drop for AppLock {
    fn drop(&mut self) {
        self.held.lock().expect("locks poisoned").remove(&self.app);
    }
}

/// What an operation does with a backup, to say why another must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupUse {
    /// A restore streams its files to an agent (shared).
    Restore,
    /// `backup:info` hashes its files (shared).
    Verify,
    /// An import reads or copies its files (shared).
    Import,
    /// A pin or unpin marks it (shared: only a delete must wait).
    Pin,
    /// The copier copies it to another store (shared).
    Copy,
    /// A create writes it (exclusive).
    Create,
    /// A delete removes it (exclusive).
    Delete,
    /// `keys retire` encrypts it again, replacing its objects (exclusive).
    Reencrypt,
}

impl BackupUse {
    /// "being restored", as in "Backup ID is being restored".
    pub fn doing(self) -> &'static str {
        match self {
            Self::Restore => "being restored",
            Self::Verify => "being verified (backup:info)",
            Self::Import => "being imported",
            Self::Pin => "being pinned or unpinned",
            Self::Copy => "being copied to another store",
            Self::Create => "being written",
            Self::Delete => "being deleted",
            Self::Reencrypt => "being encrypted again (keys retire)",
        }
    }

    fn exclusive(self) -> bool {
        matches!(self, Self::Create | Self::Delete | Self::Reencrypt)
    }
}

/// Who holds one backup: readers, or one writer.
#[derive(Default)]
struct Holders {
    readers: Vec<BackupUse>,
    writer: Option<BackupUse>,
}

impl Holders {
    /// The use that keeps a newcomer out, the most telling first: a restore
    /// says more to whoever waits than a verification does.
    fn blocker(&self, wants: BackupUse) -> Option<BackupUse> {
        if let Some(w) = self.writer {
            return Some(w);
        }
        if !wants.exclusive() {
            return None;
        }
        [BackupUse::Restore, BackupUse::Import, BackupUse::Verify]
            .into_iter()
            .find(|u| self.readers.contains(u))
    }
}

/// Backups in use, by ID: any number of readers at once, or one writer.
/// Never waits: a conflicting operation is refused at once and told why.
#[derive(Clone, Default)]
pub struct BackupLocks {
    held: Arc<Mutex<HashMap<String, Holders>>>,
}

/// Held while an operation uses a backup; released on drop, whatever happens.
pub struct BackupLock {
    held: Arc<Mutex<HashMap<String, Holders>>>,
    id: String,
    used_for: BackupUse,
}

impl BackupLocks {
    /// The backups something holds now.
    pub fn held_ids(&self) -> Vec<String> {
        self.held
            .lock()
            .expect("locks poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Whether anything holds backup `id` now.
    pub fn in_use(&self, id: &str) -> bool {
        self.held.lock().expect("locks poisoned").contains_key(id)
    }

    /// Takes backup `id` for `used_for` (shared for reading, exclusive for
    /// creating or deleting), or returns what it is in use for.
    pub fn try_lock(&self, id: &str, used_for: BackupUse) -> Result<BackupLock, BackupUse> {
        let mut held = self.held.lock().expect("locks poisoned");
        let holders = held.entry(id.to_owned()).or_default();
        if let Some(blocker) = holders.blocker(used_for) {
            return Err(blocker);
        }
        if used_for.exclusive() {
            holders.writer = Some(used_for);
        } else {
            holders.readers.push(used_for);
        }
        Ok(BackupLock {
            held: self.held.clone(),
            id: id.to_owned(),
            used_for,
        })
    }
}

impl Drop for BackupLock {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("locks poisoned");
        if let Some(holders) = held.get_mut(&self.id) {
            if self.used_for.exclusive() {
                holders.writer = None;
            } else if let Some(i) = holders.readers.iter().position(|u| *u == self.used_for) {
                holders.readers.swap_remove(i);
            }
            if holders.writer.is_none() && holders.readers.is_empty() {
                held.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_app() {
        let locks = AppLocks::default();
        let a = locks.try_lock("h", "a", "a backup").unwrap();
        assert_eq!(
            locks.try_lock("h", "a", "a restore").err().map(|h| h.what),
            Some("a backup")
        );
        let _b = locks.try_lock("h", "b", "a restore").unwrap();
        // The same name on another host is another app.
        let _other = locks.try_lock("h2", "a", "a restore").unwrap();
        drop(a);
        assert!(locks.try_lock("h", "a", "a restore").is_ok());
    }

    #[test]
    fn readers_share_a_backup_and_keep_a_delete_out() {
        use BackupUse::*;
        let locks = BackupLocks::default();
        let verify = locks.try_lock("x", Verify).unwrap();
        let restore = locks.try_lock("x", Restore).unwrap();
        let again = locks.try_lock("x", Restore).unwrap();
        // The most telling reader is named, whichever came first.
        assert_eq!(locks.try_lock("x", Delete).err(), Some(Restore));
        // Another backup is free.
        drop(locks.try_lock("y", Delete).unwrap());
        drop(restore);
        assert_eq!(locks.try_lock("x", Delete).err(), Some(Restore));
        drop(again);
        assert_eq!(locks.try_lock("x", Delete).err(), Some(Verify));
        drop(verify);
        let delete = locks.try_lock("x", Delete).unwrap();
        assert_eq!(locks.try_lock("x", Restore).err(), Some(Delete));
        assert_eq!(locks.try_lock("x", Delete).err(), Some(Delete));
        drop(delete);
        assert!(locks.held.lock().unwrap().is_empty(), "nothing left behind");
        let create = locks.try_lock("x", Create).unwrap();
        assert_eq!(locks.try_lock("x", Delete).err(), Some(Create));
        assert_eq!(locks.try_lock("x", Verify).err(), Some(Create));
        drop(create);
        drop(locks.try_lock("x", Import).unwrap());
        assert!(locks.held.lock().unwrap().is_empty());
    }
}
