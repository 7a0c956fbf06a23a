//! What a place to keep backups must do: the storage seam. A backend keeps
//! objects under `apps/<app>/<id>/<path>` and knows nothing of manifests,
//! seals or digests ([`Store`](super::Store) does that above it).
//!
//! The contract, which every backend passes ([`super::contract`]):
//! - a backup exists once its `metadata.json` is written, and that write is
//!   the last of a backup ([`Staging::commit`]): a backend without atomic
//!   rename (object storage) writes the artifacts in place and the manifest
//!   last; a scan at start-up finds the rest as leftovers;
//! - artifacts are written once (creating one that exists fails), as byte
//!   streams of any length, and read back as byte streams;
//! - deleting a backup removes its manifest first, so that a backup half
//!   deleted is no backup.

use std::collections::HashSet;
use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;

/// The bytes of one stored object, as they are read.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Where backup `id` of `app` lies in a backend. Both names are valid
/// (checked by the caller): they are path components.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupKey {
    pub app: String,
    pub id: String,
}

impl BackupKey {
    /// The key of backup `id` of `app`.
    pub fn new(app: &str, id: &str) -> Self {
        Self {
            app: app.to_owned(),
            id: id.to_owned(),
        }
    }
}

/// Which backups a scan must leave alone, whatever it finds of them: the
/// ones being written or deleted while it runs. Asked just before each
/// removal, so that what began after the listing is spared too.
pub type Spare<'a> = &'a (dyn Fn(&BackupKey) -> bool + Send + Sync);

/// What a scan of a backend found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every place that may hold a complete backup: `(app, name)` as found,
    /// not yet validated.
    pub backups: Vec<(String, String)>,
    /// Leftovers of interrupted writes and deletes, removed by the scan.
    pub removed: usize,
}

/// A place to keep backups.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Where backup `key` lies, for people: a directory, a URL.
    fn location(&self, key: &BackupKey) -> String;

    /// Where the whole store is, for people: a directory, `s3://...`.
    fn describe(&self) -> String;

    /// Starts writing backup `key`. Nothing of it is a backup until
    /// [`Staging::commit`].
    async fn begin(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>>;

    /// Reads the small object `path` of backup `key` (its manifest, its
    /// seal), refusing more than `limit` bytes with
    /// [`io::ErrorKind::FileTooLarge`]. Never follows a link.
    async fn read_small(&self, key: &BackupKey, path: &str, limit: u64) -> io::Result<Vec<u8>>;

    /// Replaces the small object `path` of the complete backup `key` (its
    /// seal, when an older store's backups are sealed once).
    async fn replace_small(&self, key: &BackupKey, path: &str, bytes: &[u8]) -> io::Result<()>;

    /// Starts writing new artifacts into the complete backup `key`, beside
    /// its others (creating one that exists fails, as in [`Backend::begin`]).
    /// Readers see the backup as it was until [`Staging::commit`] replaces
    /// its `extra` files and then its manifest, each whole; aborting removes
    /// only what the rewrite wrote.
    async fn rewrite(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>>;

    /// The paths of every object of the complete backup `key`, its
    /// manifest and seal included, sorted.
    async fn list(&self, key: &BackupKey) -> io::Result<Vec<String>>;

    /// Removes object `path` of backup `key`; a missing one is not an error.
    async fn remove(&self, key: &BackupKey, path: &str) -> io::Result<()>;

    /// Opens artifact `path` of backup `key` for reading.
    async fn open(&self, key: &BackupKey, path: &str) -> io::Result<ByteStream>;

    /// Whether artifact `path` of backup `key` exists.
    async fn has(&self, key: &BackupKey, path: &str) -> io::Result<bool>;

    /// Whether anything of backup `key` exists, complete or not.
    async fn exists(&self, key: &BackupKey) -> io::Result<bool>;

    /// Deletes backup `key`, its manifest first; a missing one is not an error.
    async fn delete(&self, key: &BackupKey) -> io::Result<()>;

    /// Removes whatever exists of backup `key`, written or being written,
    /// after a failure that must leave nothing behind; logs what it cannot.
    async fn discard(&self, key: &BackupKey);

    /// One walk of the backend: removes the leftovers of interrupted
    /// writes and deletes, except those of the backups `spare` names, and
    /// lists every place that may hold a complete backup.
    async fn scan(&self, spare: Spare<'_>) -> io::Result<Scan>;

    /// While the controller runs: removes the leftovers of writes and
    /// deletes that failed and could not clean up (the service was
    /// unreachable), except the backups in `busy`, being written;
    /// returns how many places were cleaned. A backend whose failures leave
    /// nothing (renames on a local disk) has nothing to sweep.
    async fn sweep(&self, busy: &HashSet<BackupKey>) -> io::Result<usize> {
        let _ = busy;
        Ok(0)
    }

    /// Bytes free for new backups; None where there is no such limit to
    /// know (object storage, memory).
    async fn free_space(&self) -> io::Result<Option<u64>>;

    /// Whether the store-wide mark `name` is set.
    async fn has_mark(&self, name: &str) -> io::Result<bool>;

    /// Sets the store-wide mark `name`.
    async fn set_mark(&self, name: &str) -> io::Result<()>;

    /// Reads the store-wide document `dir/name` (a small JSON file, such as
    /// `schedules/blog.json`), refusing more than `limit` bytes; None when
    /// it does not exist.
    async fn read_doc(&self, dir: &str, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>>;

    /// Writes the document `dir/name` whole, in place of any there.
    async fn write_doc(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()>;

    /// Removes the document `dir/name`; a missing one is not an error.
    async fn remove_doc(&self, dir: &str, name: &str) -> io::Result<()>;

    /// The names of the documents in `dir`, sorted.
    async fn list_docs(&self, dir: &str) -> io::Result<Vec<String>>;
}

/// A backup being written.
#[async_trait::async_trait]
pub trait Staging: Send {
    /// Creates artifact `path` (validated by the caller); fails if it exists.
    async fn create(&mut self, path: &str) -> io::Result<Box<dyn ArtifactSink>>;

    /// Writes `extra` (the seal), then `manifest` as `metadata.json`, last:
    /// the backup exists from then on, durably.
    async fn commit(
        self: Box<Self>,
        extra: Vec<(String, Vec<u8>)>,
        manifest: Vec<u8>,
    ) -> io::Result<()>;

    /// Removes everything written.
    async fn abort(self: Box<Self>);
}

/// The bytes of one artifact being written.
#[async_trait::async_trait]
pub trait ArtifactSink: Send {
    /// Appends bytes.
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Makes what was written durable.
    async fn finish(self: Box<Self>) -> io::Result<()>;
}
