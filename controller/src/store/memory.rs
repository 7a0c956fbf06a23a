//! A store in memory, shaped like object storage: no directories and no
//! rename, every artifact written in place under its final key, the
//! manifest last. For tests of everything above the storage seam, and the
//! model an object-storage backend follows.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use hop3_proto::manifest::MANIFEST_FILE;

use super::backend::{ArtifactSink, Backend, BackupKey, ByteStream, Scan, Spare, Staging};

/// The objects, by key (`apps/<app>/<id>/<path>`), and the marks.
#[derive(Debug, Default)]
struct Objects {
    objects: BTreeMap<String, Bytes>,
    marks: BTreeSet<String>,
}

/// A store in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    inner: Arc<Mutex<Objects>>,
    /// Deletes fail (as a read-only bucket or a lost connection would).
    failing_deletes: Arc<std::sync::atomic::AtomicBool>,
    /// New backups cannot be started (an unreachable service).
    failing_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Tells stores apart in what they describe (`memory:NAME`).
    name: Arc<str>,
}

fn prefix(key: &BackupKey) -> String {
    format!("apps/{}/{}/", key.app, key.id)
}

fn not_found(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{what}: no such object"))
}

impl Memory {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that describes itself as `memory:NAME`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Makes every new write fail from now on (or work again).
    pub fn fail_writes(&self, fail: bool) {
        self.failing_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Replaces object `key` (`apps/<app>/<id>/<path>`), as bit rot or a
    /// hand would.
    pub fn overwrite(&self, key: &str, bytes: &[u8]) {
        self.objects()
            .objects
            .insert(key.to_owned(), Bytes::copy_from_slice(bytes));
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.inner
            .lock()
            .expect("the memory store's lock is never poisoned")
    }

    fn get(&self, key: &BackupKey, path: &str) -> io::Result<Bytes> {
        let full = format!("{}{path}", prefix(key));
        self.objects()
            .objects
            .get(&full)
            .cloned()
            .ok_or_else(|| not_found(&full))
    }

    fn remove_prefix(&self, prefix: &str) -> usize {
        let mut o = self.objects();
        let doomed: Vec<String> = o
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            o.objects.remove(k);
        }
        doomed.len()
    }

    /// The keys under `prefix`, without it, sorted.
    fn names_under(&self, prefix: &str) -> Vec<String> {
        self.objects()
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k[prefix.len()..].to_owned())
            .collect()
    }

    /// Refused as [`Memory::fail_deletes`] asked.
    fn deletes_allowed(&self) -> io::Result<()> {
        if self
            .failing_deletes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "deletes refused by the test",
            ));
        }
        Ok(())
    }

    /// Makes every delete fail from now on (or work again).
    pub fn fail_deletes(&self, fail: bool) {
        self.failing_deletes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every key stored, for tests that look at what a backend holds.
    pub fn keys(&self) -> Vec<String> {
        self.objects().objects.keys().cloned().collect()
    }
}

#[async_trait::async_trait]
impl Backend for Memory {
    fn location(&self, key: &BackupKey) -> String {
        format!("{}{}", self.describe(), prefix(key).trim_end_matches('/'))
    }

    fn describe(&self) -> String {
        match &*self.name {
            "" => "memory:".into(),
            name => format!("memory:{name}/"),
        }
    }

    async fn begin(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        if self
            .failing_writes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "writes refused by the test",
            ));
        }
        Ok(Box::new(MemoryStaging {
            store: self.clone(),
            prefix: prefix(key),
            pending: BTreeSet::new(),
            rewrite: false,
        }))
    }

    async fn rewrite(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        self.get(key, MANIFEST_FILE)?;
        Ok(Box::new(MemoryStaging {
            store: self.clone(),
            prefix: prefix(key),
            pending: BTreeSet::new(),
            rewrite: true,
        }))
    }

    async fn list(&self, key: &BackupKey) -> io::Result<Vec<String>> {
        Ok(self.names_under(&prefix(key)))
    }

    async fn remove(&self, key: &BackupKey, path: &str) -> io::Result<()> {
        self.deletes_allowed()?;
        self.objects()
            .objects
            .remove(&format!("{}{path}", prefix(key)));
        Ok(())
    }

    async fn read_small(&self, key: &BackupKey, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        let bytes = self.get(key, path)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "too large"));
        }
        Ok(bytes.to_vec())
    }

    async fn replace_small(&self, key: &BackupKey, path: &str, bytes: &[u8]) -> io::Result<()> {
        let full = format!("{}{path}", prefix(key));
        self.objects()
            .objects
            .insert(full, Bytes::copy_from_slice(bytes));
        Ok(())
    }

    async fn open(&self, key: &BackupKey, path: &str) -> io::Result<ByteStream> {
        let bytes = self.get(key, path)?;
        // Read back in frames, as a ranged read of a large object would be.
        let frames: Vec<io::Result<Bytes>> = (0..bytes.len())
            .step_by(hop3_proto::FRAME_SIZE)
            .map(|at| Ok(bytes.slice(at..bytes.len().min(at + hop3_proto::FRAME_SIZE))))
            .collect();
        Ok(futures::stream::iter(frames).boxed())
    }

    async fn has(&self, key: &BackupKey, path: &str) -> io::Result<bool> {
        Ok(self.get(key, path).is_ok())
    }

    async fn exists(&self, key: &BackupKey) -> io::Result<bool> {
        let p = prefix(key);
        Ok(self
            .objects()
            .objects
            .range(p.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&p)))
    }

    async fn delete(&self, key: &BackupKey) -> io::Result<()> {
        self.deletes_allowed()?;
        // The manifest first: from then on, what is left is no backup.
        let p = prefix(key);
        self.objects()
            .objects
            .remove(&format!("{p}{MANIFEST_FILE}"));
        self.remove_prefix(&p);
        Ok(())
    }

    async fn discard(&self, key: &BackupKey) {
        self.remove_prefix(&prefix(key));
    }

    async fn scan(&self, spare: Spare<'_>) -> io::Result<Scan> {
        let mut places: BTreeMap<(String, String), bool> = BTreeMap::new();
        for key in self.keys() {
            let mut parts = key.splitn(4, '/');
            if let (Some("apps"), Some(app), Some(id), Some(rest)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                *places.entry((app.to_owned(), id.to_owned())).or_default() |=
                    rest == MANIFEST_FILE;
            }
        }
        let mut scan = Scan::default();
        for ((app, id), committed) in places {
            if committed {
                scan.backups.push((app, id));
            } else if !spare(&BackupKey::new(&app, &id)) {
                // No manifest: a write that never committed, or a delete cut short.
                self.remove_prefix(&format!("apps/{app}/{id}/"));
                scan.removed += 1;
            }
        }
        Ok(scan)
    }

    async fn free_space(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }

    async fn has_mark(&self, name: &str) -> io::Result<bool> {
        Ok(self.objects().marks.contains(name))
    }

    async fn set_mark(&self, name: &str) -> io::Result<()> {
        self.objects().marks.insert(name.to_owned());
        Ok(())
    }

    async fn read_doc(&self, dir: &str, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(bytes) = self
            .objects()
            .objects
            .get(&format!("{dir}/{name}"))
            .cloned()
        else {
            return Ok(None);
        };
        if bytes.len() as u64 > limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "too large"));
        }
        Ok(Some(bytes.to_vec()))
    }

    async fn write_doc(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.objects()
            .objects
            .insert(format!("{dir}/{name}"), Bytes::copy_from_slice(bytes));
        Ok(())
    }

    async fn remove_doc(&self, dir: &str, name: &str) -> io::Result<()> {
        self.objects().objects.remove(&format!("{dir}/{name}"));
        Ok(())
    }

    async fn list_docs(&self, dir: &str) -> io::Result<Vec<String>> {
        Ok(self.names_under(&format!("{dir}/")))
    }
}

struct MemoryStaging {
    store: Memory,
    prefix: String,
    /// Artifacts created, written when they finish.
    pending: BTreeSet<String>,
    /// Adding to a complete backup: an abort removes only what was created.
    rewrite: bool,
}

#[async_trait::async_trait]
impl Staging for MemoryStaging {
    async fn create(&mut self, path: &str) -> io::Result<Box<dyn ArtifactSink>> {
        let key = format!("{}{path}", self.prefix);
        if self.store.objects().objects.contains_key(&key) || !self.pending.insert(key.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{key} exists"),
            ));
        }
        Ok(Box::new(MemorySink {
            store: self.store.clone(),
            key,
            bytes: Vec::new(),
        }))
    }

    async fn commit(
        self: Box<Self>,
        extra: Vec<(String, Vec<u8>)>,
        manifest: Vec<u8>,
    ) -> io::Result<()> {
        let mut o = self.store.objects();
        for (name, bytes) in extra {
            o.objects
                .insert(format!("{}{name}", self.prefix), bytes.into());
        }
        o.objects
            .insert(format!("{}{MANIFEST_FILE}", self.prefix), manifest.into());
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        if self.rewrite {
            let mut o = self.store.objects();
            for key in &self.pending {
                o.objects.remove(key);
            }
        } else {
            self.store.remove_prefix(&self.prefix);
        }
    }
}

struct MemorySink {
    store: Memory,
    key: String,
    bytes: Vec<u8>,
}

#[async_trait::async_trait]
impl ArtifactSink for MemorySink {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> io::Result<()> {
        let MemorySink { store, key, bytes } = *self;
        store.objects().objects.insert(key, bytes.into());
        Ok(())
    }
}
