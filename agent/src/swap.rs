//! Swapping a staged restore in, part by part, on record.
//!
//! A restore stages each part it restores (`git/`, `src/`, `data/`, `ENV`,
//! `app.json`, and trees kept on other volumes) beside the live one, then
//! exchanges each pair with one `renameat2(RENAME_EXCHANGE)`. Only the parts
//! the backup holds are touched: whatever else the app directory holds
//! (`venv/`, `log/`, files of its own) stays where it is, and the app
//! directory itself keeps its inode. Every swap is written to a record in
//! the agent's state directory before it is made, with the inode of what
//! it moves in, so an agent killed halfway undoes exactly the swaps that
//! happened when it starts again (a live path holding a staged inode was
//! swapped), then removes what the restore staged.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hop3_proto::layout::Owner;
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// Directory of the state directory that holds the records.
const RECORDS: &str = "restores";

/// A restore in progress, as recorded.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    app: String,
    backup_id: String,
    /// Directories the restore made: removed when it ends, whatever happens.
    staging: Vec<PathBuf>,
    /// Set once the app was stopped: a recovery starts it again.
    stopped: bool,
    /// Swaps, in the order they are made.
    swaps: Vec<Swap>,
    /// The app directory and its mode and owner before the restore set them.
    app_dir_before: Option<(PathBuf, Owner)>,
    /// Set once the restored app runs (and its databases are being made
    /// final): from then on a recovery keeps the swaps and only cleans up.
    #[serde(default)]
    committed: bool,
}

/// One staged entry and the live one it replaces.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Swap {
    staged: PathBuf,
    live: PathBuf,
    /// (device, inode) of the staged entry: the live path holds it once swapped.
    inode: (u64, u64),
    /// Whether a live entry was there to exchange with (else a plain rename).
    exchange: bool,
}

/// The record of one restore, kept up to date on disk.
pub struct Journal {
    path: PathBuf,
    record: Record,
    /// Set by [`Journal::end`]: a journal dropped without it was abandoned.
    ended: bool,
}

impl Drop for Journal {
    /// Only a panic (a bug) or a dropped restore gets here, halfway: the
    /// live app is put back at once (blocking, on this rare path); the
    /// record stays, emptied of swaps, so the next start removes what was
    /// staged and starts the app if the restore had stopped it.
    fn drop(&mut self) {
        // A committed restore stands; its record is left for the next start
        // to clean up after.
        if self.ended || self.record.committed {
            return;
        }
        tracing::warn!(app = %self.record.app, "a restore was abandoned halfway; putting the app back");
        let swaps = std::mem::take(&mut self.record.swaps);
        self.record.swaps = undo(&swaps, self.record.app_dir_before.take().as_ref());
        let bytes = serde_json::to_vec_pretty(&self.record).expect("a record serialises");
        if let Err(e) = write_durably(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not update a restore record");
        }
    }
}

impl Journal {
    /// Starts the record of a restore of `backup_id` into `app`.
    pub async fn begin(state_dir: &Path, app: &str, backup_id: &str) -> Result<Journal> {
        let path = state_dir.join(RECORDS).join(format!("{app}.json"));
        let mut record = Record {
            app: app.to_owned(),
            backup_id: backup_id.to_owned(),
            ..Record::default()
        };
        // A record left by an abandoned restore of the same app: what it
        // staged is removed with this one's; one that could not be undone
        // stops this restore, or its staged copy of the app's data would go.
        if let Ok(bytes) = tokio::fs::read(&path).await
            && let Ok(old) = serde_json::from_slice::<Record>(&bytes)
        {
            if !old.committed && !old.swaps.is_empty() {
                return Err(AgentError::io(
                    format!(
                        "a previous restore of {app} could not be undone; its record is {}",
                        path.display()
                    ),
                    io::Error::other("unfinished restore"),
                ));
            }
            record.staging = old.staging;
        }
        let journal = Journal {
            path,
            record,
            ended: false,
        };
        journal.save().await?;
        Ok(journal)
    }

    /// Records a directory the restore made.
    pub async fn staging(&mut self, dir: PathBuf) -> Result<()> {
        self.record.staging.push(dir);
        self.save().await
    }

    /// Records that the app was stopped.
    pub async fn stopped(&mut self) -> Result<()> {
        self.record.stopped = true;
        self.save().await
    }

    /// Records that the restore succeeded: what it swapped in stays, even
    /// if the agent dies before the record ends.
    pub async fn commit(&mut self) -> Result<()> {
        self.record.committed = true;
        self.save().await
    }

    /// Makes each `(staged, live)` swap in order, on record. On a failure,
    /// undoes the swaps already made and returns the error.
    pub async fn swap_all(&mut self, pairs: Vec<(PathBuf, PathBuf)>) -> Result<()> {
        for (staged, live) in pairs {
            let (staged2, live2) = (staged.clone(), live.clone());
            let (inode, exchange) = blocking(move || {
                let meta = std::fs::symlink_metadata(&staged2)?;
                let exists = match std::fs::symlink_metadata(&live2) {
                    Ok(_) => true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                };
                Ok(((meta.dev(), meta.ino()), exists))
            })
            .await
            .map_err(|e| AgentError::io("preparing the swap", e))?;
            let swap = Swap {
                staged,
                live,
                inode,
                exchange,
            };
            self.record.swaps.push(swap.clone());
            self.save().await?;
            if let Err(e) = blocking(move || make(&swap)).await {
                let e = AgentError::io("swapping the restored app in", e);
                self.revert().await;
                return Err(e);
            }
            crate::failpoint::hit(&format!("restore-swapped:{}", self.record.app));
        }
        Ok(())
    }

    /// Sets the app directory's mode and owner to `owner`, keeping the old
    /// ones on record. Owners only as root.
    pub async fn set_app_dir(&mut self, dir: &Path, owner: Owner) -> Result<()> {
        let d = dir.to_path_buf();
        let before = blocking(move || {
            let meta = std::fs::symlink_metadata(&d)?;
            Ok(Owner {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            })
        })
        .await
        .map_err(|e| AgentError::io("reading the app directory", e))?;
        self.record.app_dir_before = Some((dir.to_path_buf(), before));
        self.save().await?;
        let d = dir.to_path_buf();
        blocking(move || apply_owner(&d, owner))
            .await
            .map_err(|e| AgentError::io("setting the app directory's owner", e))
    }

    /// Undoes every swap made so far, last first, and the app directory's
    /// owner. A swap that cannot be undone stays on record, and with it
    /// the staging that holds what it replaced (see [`Journal::end`]).
    pub async fn revert(&mut self) {
        let record = std::mem::take(&mut self.record.swaps);
        let before = self.record.app_dir_before.take();
        self.record.swaps = blocking(move || Ok(undo(&record, before.as_ref())))
            .await
            .unwrap_or_default();
        let _ = self.save().await;
    }

    /// Ends the record: the restore's staging directories (holding what the
    /// swaps replaced) are removed in the background.
    pub async fn end(mut self) {
        self.ended = true;
        if !self.record.committed && !self.record.swaps.is_empty() {
            // Staging holds live data a failed undo did not put back.
            tracing::error!(app = %self.record.app, record = %self.path.display(), "a restore could not be undone: its staging and record are kept for an operator");
            return;
        }
        for dir in &self.record.staging {
            // Renamed first: the next restore of the same backup stages at
            // the same path while this one may still be deleting.
            let trash = dir.with_file_name(format!(
                "{}.old-{:016x}",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                rand::random::<u64>()
            ));
            match tokio::fs::rename(dir, &trash).await {
                Ok(()) => crate::restore::discard(trash),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "could not set a staging directory aside");
                    crate::restore::discard(dir.clone());
                }
            }
        }
        let path = self.path.clone();
        if let Err(e) = tokio::fs::remove_file(&path).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a restore record");
        }
    }

    async fn save(&self) -> Result<()> {
        let path = self.path.clone();
        let bytes = serde_json::to_vec_pretty(&self.record).expect("a record serialises");
        blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|e| AgentError::io("recording the restore", e))
    }
}

/// Finishes what restores interrupted by a crash left: each recorded swap
/// that happened is undone, the app directory's owner put back, and what
/// was staged removed. Returns the apps such a restore had stopped, to be
/// started once the databases are put back too. Run once at start, before
/// serving. A record whose swaps cannot all be undone is kept, with its
/// staging, for an operator.
pub async fn recover(state_dir: &Path) -> Vec<String> {
    let mut to_start = Vec::new();
    let dir = state_dir.join(RECORDS);
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
        return to_start;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = tokio::fs::remove_file(&path).await;
            continue;
        }
        let mut record: Record = match tokio::fs::read(&path)
            .await
            .map(|b| serde_json::from_slice(&b))
        {
            Ok(Ok(r)) => r,
            _ => {
                tracing::warn!(path = %path.display(), "unreadable restore record; left for an operator");
                continue;
            }
        };
        if record.committed {
            tracing::info!(app = %record.app, backup_id = %record.backup_id, "cleaning up after a restore that had succeeded");
        } else {
            tracing::warn!(app = %record.app, backup_id = %record.backup_id, "undoing a restore interrupted by a crash");
            let (swaps, before) = (record.swaps.clone(), record.app_dir_before.clone());
            let left = blocking(move || Ok(undo(&swaps, before.as_ref())))
                .await
                .unwrap_or_default();
            if !left.is_empty() {
                tracing::error!(app = %record.app, record = %path.display(), "a restore could not be undone: its staging and record are kept for an operator");
                record.swaps = left;
                let bytes = serde_json::to_vec_pretty(&record).expect("a record serialises");
                let _ = blocking(move || write_durably(&path, &bytes)).await;
                continue;
            }
            if record.stopped {
                to_start.push(record.app.clone());
            }
        }
        for staged in record.staging {
            if let Err(e) = tokio::fs::remove_dir_all(&staged).await
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %staged.display(), error = %e, "could not remove what a restore staged");
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
    }
    to_start
}

fn make(swap: &Swap) -> io::Result<()> {
    if swap.exchange {
        exchange(&swap.staged, &swap.live)
    } else {
        std::fs::rename(&swap.staged, &swap.live)
    }
}

/// Undoes, last first, each swap whose live path holds the staged inode;
/// returns those that could not be undone.
fn undo(swaps: &[Swap], before: Option<&(PathBuf, Owner)>) -> Vec<Swap> {
    let mut left = Vec::new();
    if let Some((dir, owner)) = before
        && let Err(e) = apply_owner(dir, *owner)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not put the app directory's owner back");
    }
    for swap in swaps.iter().rev() {
        let swapped =
            std::fs::symlink_metadata(&swap.live).is_ok_and(|m| (m.dev(), m.ino()) == swap.inode);
        if !swapped {
            continue;
        }
        let back = if swap.exchange {
            exchange(&swap.staged, &swap.live)
        } else {
            std::fs::rename(&swap.live, &swap.staged)
        };
        if let Err(e) = back {
            tracing::warn!(live = %swap.live.display(), error = %e, "could not undo a swap");
            left.push(swap.clone());
        }
    }
    left.reverse();
    left
}

/// Sets mode and (as root) owner of `path`, without following a link.
pub fn apply_owner(path: &Path, owner: Owner) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))?;
    }
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(owner.mode))
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(io::Error::from)
}

/// Writes `bytes` to `path` so that a crash leaves the old content or the
/// new, whole: a temporary file, synced, renamed over, directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().expect("records live in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("a file task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_crash_halfway_is_undone_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let app = tmp.path().join("app");
        let staging = tmp.path().join(".app.restore-x");
        for (dir, tag) in [(&app, "old"), (&staging, "new")] {
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(dir.join("data/f"), tag).unwrap();
            std::fs::write(dir.join("ENV"), tag).unwrap();
        }
        std::fs::write(app.join("venv"), b"kept").unwrap();
        let mut journal = Journal::begin(&state, "app", "id").await.unwrap();
        journal.staging(staging.clone()).await.unwrap();
        journal
            .swap_all(vec![
                (staging.join("data"), app.join("data")),
                (staging.join("ENV"), app.join("ENV")),
            ])
            .await
            .unwrap();
        assert_eq!(std::fs::read(app.join("data/f")).unwrap(), b"new");
        // Killed here (nothing runs on the way out): a new agent starts.
        std::mem::forget(journal);
        recover(&state).await;
        assert_eq!(std::fs::read(app.join("data/f")).unwrap(), b"old");
        assert_eq!(std::fs::read(app.join("ENV")).unwrap(), b"old");
        assert_eq!(std::fs::read(app.join("venv")).unwrap(), b"kept");
        assert!(!staging.exists());
        assert!(
            std::fs::read_dir(state.join(RECORDS))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_ended_restore_frees_its_staging_path_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join(".app.restore-x");
        std::fs::create_dir_all(staging.join("data")).unwrap();
        let mut journal = Journal::begin(&tmp.path().join("state"), "app", "x")
            .await
            .unwrap();
        journal.staging(staging.clone()).await.unwrap();
        journal.end().await;
        // The next restore of the same backup may stage there right away.
        assert!(!staging.exists());
        std::fs::create_dir(&staging).unwrap();
    }

    #[tokio::test]
    async fn a_swap_recorded_but_not_made_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let (staged, live) = (tmp.path().join("staged"), tmp.path().join("live"));
        std::fs::write(&staged, b"new").unwrap();
        std::fs::write(&live, b"old").unwrap();
        let meta = std::fs::metadata(&staged).unwrap();
        let record = Record {
            app: "app".into(),
            swaps: vec![Swap {
                staged: staged.clone(),
                live: live.clone(),
                inode: (meta.dev(), meta.ino()),
                exchange: true,
            }],
            ..Record::default()
        };
        write_durably(
            &state.join(RECORDS).join("app.json"),
            &serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        recover(&state).await;
        assert_eq!(std::fs::read(&live).unwrap(), b"old");
    }
}
