//! Retiring a key (`keys retire KEY`): every backup sealed to it is
//! encrypted again, to the recipients of `recipients.txt`, in the
//! background, one backup at a time, each under the lock a delete takes.
//! Write-once, as everything in a store: the new objects go beside the old
//! (under `sealed-<n>/`), each read back and checked, then the manifest is
//! switched, then the old objects are removed. A stop anywhere leaves the
//! old backup or the new, whole; the next pass goes on where it stopped,
//! and the key is let go only once no old object is left either.
//! Once no backup is sealed to the key, it is taken off `retiring.txt` and
//! its identity can be destroyed.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hop3_proto::format::{ENCRYPTED_SUFFIX, Encryption, EncryptionScheme};
use hop3_proto::manifest::{EncryptedSection, Manifest, PlainFile, Plaintexts};
use hop3_proto::{Checksum, Tally};
use hop3_wire::encryption::Recipients;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;

use crate::catalog::{BackupRow, BackupStatus};
use crate::decrypt;
use crate::error::{ControllerError, Result};
use crate::locks::BackupUse;
use crate::state::Controller;
use crate::store::{Rewrite, StoreError};

/// How often the retirer looks at `retiring.txt`, and retries the backups a
/// pass found busy or could not encrypt again.
const TICK: Duration = Duration::from_secs(5);

/// How long a key whose last pass changed nothing (a damaged backup, one
/// held by a long restore) waits before the next: each pass reads every
/// manifest.
const IDLE: Duration = Duration::from_secs(60);

/// Manifests read at once when looking for a key's backups.
const MANIFESTS_AT_ONCE: usize = 16;

/// Bytes handed from the encrypting thread to the store at a time.
const BLOCK: usize = 256 * 1024;

/// Runs the retirer: every [`TICK`], each key of `retiring.txt` in turn.
pub fn spawn(ctl: Arc<Controller>) {
    let Some(dir) = ctl.keys.dir.clone() else {
        return;
    };
    tokio::spawn(async move {
        let mut warned = std::collections::HashSet::new();
        let mut idle: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
        loop {
            match dir.retiring().await {
                Ok(keys) => {
                    for key in keys {
                        if idle
                            .get(&key)
                            .is_some_and(|until| *until > tokio::time::Instant::now())
                        {
                            continue;
                        }
                        match pass(&ctl, &key).await {
                            Ok(Pass { left: 0, .. }) => {
                                tracing::info!(key = %key, "key retired: no backup is sealed to it any more; its identity can be destroyed");
                                if let Err(e) = dir.retired(&key).await {
                                    tracing::warn!(key = %key, error = %e, "could not take the key off retiring.txt");
                                }
                            }
                            Ok(p) => {
                                tracing::info!(key = %key, done = p.done, left = p.left, "retiring a key");
                                if p.done == 0 {
                                    idle.insert(key.clone(), tokio::time::Instant::now() + IDLE);
                                }
                            }
                            // Said once per key and reason, not every tick.
                            Err(e) if warned.insert((key.clone(), e.to_string())) => {
                                tracing::warn!(key = %key, error = %e, "cannot retire the key");
                            }
                            Err(_) => {}
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the keys being retired"),
            }
            tokio::time::sleep(TICK).await;
        }
    });
}

/// What one pass over a key's backups did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Backups encrypted again.
    pub done: usize,
    /// Backups still sealed to the key (busy, or failed: tried next pass).
    pub left: usize,
}

/// Encrypts every COMPLETED backup sealed to `key` again, to the
/// controller's recipients. Refuses when they include `key` (a `keys
/// rotate` not yet in effect) or when no identity of `key` is held.
pub async fn pass(ctl: &Controller, key: &str) -> Result<Pass> {
    let Some(to) = ctl.keys.recipients.clone() else {
        return Err(ControllerError::Encryption(
            "recipients.txt lists no key to encrypt the backups to".into(),
        ));
    };
    if to.key_ids().iter().any(|id| id.as_str() == key) {
        return Err(ControllerError::Encryption(format!(
            "key {key} is still a recipient of new backups: restart the controller after `keys rotate`"
        )));
    }
    if !ctl
        .keys
        .identities
        .key_ids()
        .iter()
        .any(|id| id.as_str() == key)
    {
        return Err(ControllerError::Encryption(format!(
            "no identity of key {key} is held here: its backups cannot be opened to encrypt them again"
        )));
    }
    let mut out = Pass::default();
    let found = find(ctl, key).await?;
    for row in &found.sealed {
        let done = match reencrypt(ctl, row, key, &to).await {
            Ok(()) => remove_old(ctl, row).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => out.done += 1,
            Err(ControllerError::BackupBusy { .. }) => out.left += 1,
            Err(e) => {
                out.left += 1;
                tracing::warn!(backup_id = %row.backup_id, app = %row.app, key, error = %e,
                    "could not encrypt a backup again, or remove its old objects; tried again");
            }
        }
    }
    // Before the key is let go: what a stop between a switch and the
    // removal of the old objects left, in any backup encrypted again.
    if out.left == 0 {
        for row in &found.rewritten {
            if let Err(e) = remove_old(ctl, row).await {
                out.left += 1;
                tracing::warn!(backup_id = %row.backup_id, app = %row.app, key, error = %e,
                    "could not remove objects an earlier encryption left; tried again");
            }
        }
    }
    Ok(out)
}

/// The COMPLETED backups a pass over a key works on.
#[derive(Default)]
struct Found {
    /// Sealed to the key.
    sealed: Vec<BackupRow>,
    /// Encrypted again before (their manifest names a `sealed-<n>/`), to
    /// other keys: old objects a stop left may lie beside them.
    rewritten: Vec<BackupRow>,
}

/// The backups of [`Found`], from every COMPLETED backup's manifest.
async fn find(ctl: &Controller, key: &str) -> Result<Found> {
    let rows = ctl
        .catalog
        .list(None, Some(BackupStatus::Completed), u32::MAX)
        .await?;
    let mut read = futures::stream::iter(rows)
        .map(|row| async move {
            let m = ctl
                .store
                .read_manifest(&row.app, row.backup_id.as_str())
                .await;
            (row, m)
        })
        .buffer_unordered(MANIFESTS_AT_ONCE);
    let mut found = Found::default();
    while let Some((row, m)) = read.next().await {
        // A manifest that cannot be read is for `backup:info` to explain.
        let Ok(m) = m else { continue };
        if m.encrypted
            .as_ref()
            .is_some_and(|e| e.keys.iter().any(|k| k == key))
        {
            found.sealed.push(row);
        } else if m.sealed_dir().is_some() {
            found.rewritten.push(row);
        }
    }
    Ok(found)
}

/// Removes the objects backup `row`'s manifest no longer names, under the
/// backup's exclusive lock and against its manifest as it is now (a
/// manifest read earlier could be one a rewrite has since replaced).
async fn remove_old(ctl: &Controller, row: &BackupRow) -> Result<()> {
    let id = row.backup_id.as_str();
    let _lock = ctl.use_backup(id, BackupUse::Reencrypt)?;
    let manifest = ctl.store.read_manifest(&row.app, id).await?;
    let removed = ctl.store.tidy(&row.app, id, &manifest).await?;
    if removed > 0 {
        tracing::info!(backup_id = id, app = %row.app, removed, "removed the objects of an earlier encryption");
    }
    Ok(())
}

/// Encrypts backup `row` again to `to`, if it is still sealed to `key`.
async fn reencrypt(
    ctl: &Controller,
    row: &BackupRow,
    key: &str,
    to: &Arc<Recipients>,
) -> Result<()> {
    let id = row.backup_id.as_str();
    // Exclusive: no restore reads the objects this removes.
    let _lock = ctl.use_backup(id, BackupUse::Reencrypt)?;
    match ctl.catalog.get(id).await? {
        Some(r) if r.status == BackupStatus::Completed => {}
        _ => return Ok(()),
    }
    let (manifest, mut rewrite) = ctl.store.rewrite(&row.app, id).await?;
    let plain = match manifest.encrypted.as_ref() {
        Some(e) if e.keys.iter().any(|k| k == key) => {
            match decrypt::open_plaintexts(&ctl.keys.identities, &manifest) {
                Ok(plain) => plain.unwrap_or_default(),
                Err(e) => {
                    rewrite.abort().await;
                    return Err(e);
                }
            }
        }
        _ => {
            rewrite.abort().await;
            return Ok(());
        }
    };
    let started = std::time::Instant::now();
    let new = match write_again(ctl, row, &manifest, &plain, to, &mut rewrite).await {
        Ok(new) => new,
        Err(e) => {
            rewrite.abort().await;
            return Err(e);
        }
    };
    rewrite.commit(&new).await?;
    ctl.catalog
        .complete(id, new.size_bytes, &row.services)
        .await?;
    refresh_copies(ctl, id).await?;
    tracing::info!(backup_id = id, app = %row.app, retired = key, to = %to.key_ids().iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        ms = started.elapsed().as_millis() as u64, "backup encrypted again");
    Ok(())
}

/// Writes every encrypted artifact of `manifest` again, encrypted to `to`,
/// under a new directory, each checked; returns the manifest that names
/// them.
async fn write_again(
    ctl: &Controller,
    row: &BackupRow,
    manifest: &Manifest,
    plain: &Plaintexts,
    to: &Arc<Recipients>,
    rewrite: &mut Rewrite,
) -> Result<Manifest> {
    let dir = next_dir(manifest.sealed_dir());
    let keys: Vec<String> = to.key_ids().iter().map(ToString::to_string).collect();
    let old_keys = manifest
        .encrypted
        .as_ref()
        .map(|e| e.keys.join(", "))
        .unwrap_or_default();
    let mut new = manifest.clone();
    new.checksums.clear();
    new.encodings.clear();
    let mut new_plain = Plaintexts::default();
    let mut moved = std::collections::BTreeMap::new();
    for (path, checksum) in &manifest.checksums {
        let mut encoding = manifest.encoding(path);
        let Some(expected) = plain
            .files
            .get(path)
            .filter(|_| encoding.encryption.is_some())
        else {
            // Kept as it is (a backup is encrypted whole; a mixed one is read as written).
            new.checksums.insert(path.clone(), *checksum);
            if let Some(e) = manifest.encodings.get(path) {
                new.encodings.insert(path.clone(), e.clone());
            }
            continue;
        };
        let new_path = format!("{dir}/{}{ENCRYPTED_SUFFIX}", manifest.plain_path(path));
        let stored =
            write_one(ctl, row, path, &old_keys, *expected, to, rewrite, &new_path).await?;
        check_again(ctl, row, &new_path, stored, *expected, &keys).await?;
        encoding.encryption = Some(Encryption {
            scheme: EncryptionScheme::Age,
            keys: keys.clone(),
        });
        new.checksums.insert(new_path.clone(), stored.0);
        new.encodings.insert(new_path.clone(), encoding);
        new_plain.files.insert(new_path.clone(), *expected);
        moved.insert(path.clone(), (new_path, stored.1));
    }
    for s in &mut new.services {
        if let Some((p, _)) = moved.get(&s.backup_file) {
            s.backup_file = p.clone();
        }
    }
    new.size_bytes = moved.values().map(|(_, size)| size).sum::<u64>()
        + kept_size(ctl, row, manifest, &moved).await?;
    let json = serde_json::to_vec(&new_plain).expect("digests serialise");
    let payload = to
        .encrypt_armored(&json)
        .map_err(|e| ControllerError::Encryption(format!("the manifest's digests: {e}")))?;
    new.encrypted = Some(EncryptedSection {
        keys,
        payload,
        dir: Some(dir),
    });
    new.validate()?;
    Ok(new)
}

/// The size of the files kept as they were, checked by digest (backups are
/// encrypted whole: only a mix made by hand has any).
async fn kept_size(
    ctl: &Controller,
    row: &BackupRow,
    manifest: &Manifest,
    moved: &std::collections::BTreeMap<String, (String, u64)>,
) -> Result<u64> {
    let mut kept = manifest.clone();
    kept.checksums.retain(|p, _| !moved.contains_key(p));
    if kept.checksums.is_empty() {
        return Ok(0);
    }
    let checks = ctl
        .store
        .verify(&row.app, row.backup_id.as_str(), &kept, &|_| {})
        .await;
    if let Some(bad) = checks.iter().find(|c| !c.valid()) {
        return Err(StoreError::Corrupt {
            path: bad.path.clone(),
            detail: "it does not match its recorded checksum".into(),
        }
        .into());
    }
    Ok(checks.iter().map(|c| c.size).sum())
}

/// `sealed-2` for a backup as made, `sealed-<n+1>` after `sealed-<n>`.
fn next_dir(current: Option<&str>) -> String {
    let n = current
        .and_then(|d| d.strip_prefix("sealed-")?.parse::<u64>().ok())
        .unwrap_or(1);
    format!("sealed-{}", n + 1)
}

/// Decrypts the artifact at `path`, checks its plaintext against
/// `expected`, and writes it encrypted to `to` as `new_path`; returns the
/// new object's digest and size.
#[allow(clippy::too_many_arguments)]
async fn write_one(
    ctl: &Controller,
    row: &BackupRow,
    path: &str,
    old_keys: &str,
    expected: PlainFile,
    to: &Arc<Recipients>,
    rewrite: &mut Rewrite,
    new_path: &str,
) -> Result<(Checksum, u64)> {
    let stream = ctl
        .store
        .open_artifact(&row.app, row.backup_id.as_str(), path)
        .await?;
    let plaintext = decrypt::plaintext(stream, ctl.keys.identities.clone(), old_keys.to_owned());
    let input = SyncIoBridge::new(plaintext);
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let recipients = to.clone();
    let encrypting = tokio::task::spawn_blocking(move || -> io::Result<(Checksum, u64)> {
        let mut input = input;
        let out = io::BufWriter::with_capacity(BLOCK, Blocks(tx));
        let mut w = recipients.encrypt_into(out).map_err(io::Error::other)?;
        io::copy(&mut input, &mut w)?;
        let (mut out, plain) = w.finish()?;
        out.flush()?;
        Ok(plain)
    });
    let mut writer = rewrite.create(new_path).await?;
    let mut tally = Tally::default();
    while let Some(block) = rx.recv().await {
        tally.add(&block);
        writer.write(&block).await?;
    }
    let plain = encrypting
        .await
        .map_err(|e| ControllerError::Encryption(format!("the encrypting thread: {e}")))?
        .map_err(|e| read_error(path, e))?;
    if plain != (expected.sha256, expected.size) {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "its plaintext is {} ({} bytes), the manifest says {} ({} bytes)",
                plain.0, plain.1, expected.sha256, expected.size
            ),
        }
        .into());
    }
    writer.finish().await?;
    Ok(tally.finish())
}

/// What a failed read of an old artifact means for the user.
fn read_error(path: &str, e: io::Error) -> ControllerError {
    if e.get_ref()
        .is_some_and(|i| i.is::<decrypt::Undecryptable>())
    {
        ControllerError::Decryption {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    } else {
        ControllerError::Store(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("reading it: {e}"),
        })
    }
}

/// Reads the new object back, once: its stored digest and, when an
/// identity of the new keys is here, its plaintext.
async fn check_again(
    ctl: &Controller,
    row: &BackupRow,
    new_path: &str,
    stored: (Checksum, u64),
    expected: PlainFile,
    keys: &[String],
) -> Result<()> {
    let mismatch = |what: &str, got: (Checksum, u64)| {
        ControllerError::Store(StoreError::Corrupt {
            path: new_path.to_owned(),
            detail: format!("read back, its {what} is {} ({} bytes)", got.0, got.1),
        })
    };
    let counted = Arc::new(std::sync::Mutex::new(Tally::default()));
    let stream = {
        let counted = counted.clone();
        ctl.store
            .open_artifact(&row.app, row.backup_id.as_str(), new_path)
            .await?
            .inspect(move |read| {
                if let Ok(bytes) = read {
                    counted.lock().expect("not poisoned").add(bytes);
                }
            })
            .boxed()
    };
    let held = ctl.keys.identities.key_ids();
    let opens = keys.iter().any(|k| held.iter().any(|h| h.as_str() == k));
    let mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if opens {
        Box::new(decrypt::plaintext(
            stream,
            ctl.keys.identities.clone(),
            keys.join(", "),
        ))
    } else {
        // Sealed to keys whose identities are elsewhere (escrow only): the
        // stored digest is what can be checked here.
        Box::new(tokio_util::io::StreamReader::new(stream))
    };
    let mut read = Tally::default();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| read_error(new_path, e))?;
        if n == 0 {
            break;
        }
        read.add(&buf[..n]);
    }
    drop(reader);
    let on_store = std::mem::take(&mut *counted.lock().expect("not poisoned")).finish();
    if on_store != stored {
        return Err(mismatch("digest", on_store));
    }
    let read = read.finish();
    if opens && read != (expected.sha256, expected.size) {
        return Err(mismatch("plaintext", read));
    }
    Ok(())
}

/// Makes the copies of backup `id` due again: the copier brings each up to
/// the new manifest, write-once as here.
async fn refresh_copies(ctl: &Controller, id: &str) -> Result<()> {
    let now = chrono::Utc::now();
    for store in ctl.copies.stores() {
        ctl.catalog
            .record_copy(
                id,
                &store.describe(),
                Some((
                    "encrypted again (keys retire): the copy is being brought up to date",
                    now,
                )),
            )
            .await?;
    }
    if !ctl.copies.stores().is_empty() {
        ctl.copies.wake();
    }
    Ok(())
}

/// The encrypting thread's output: blocks sent to the task writing to the store.
struct Blocks(mpsc::Sender<Bytes>);

impl Write for Blocks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store's writer stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_encryption_has_a_directory_of_its_own() {
        assert_eq!(next_dir(None), "sealed-2");
        assert_eq!(next_dir(Some("sealed-2")), "sealed-3");
        assert_eq!(next_dir(Some("sealed-9")), "sealed-10");
        assert_eq!(next_dir(Some("odd")), "sealed-2");
    }
}
