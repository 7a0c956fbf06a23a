//! The backup store: manifests, seals and digests over a [`Backend`] that
//! keeps the bytes (the local directory, [`LocalDir`]; in tests, memory).
//! Everything the controller does with stored backups goes through
//! [`Store`]; a new place to keep backups is a new [`Backend`].

mod backend;
#[cfg(test)]
mod contract;
mod local;
mod memory;
mod replica;
mod rewrite;
mod s3;
mod url;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use hop3_proto::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use hop3_proto::{Checksum, Tally};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use backend::{ArtifactSink, Backend, BackupKey, ByteStream, Scan, Spare, Staging};
pub use local::LocalDir;
pub use memory::Memory;
pub use replica::Copied;
pub use rewrite::Rewrite;
pub use s3::{CheckStep, PART_SIZE, PARTS_IN_FLIGHT, S3Bucket, S3Options, UploadChecksum};
pub use url::StoreUrl;

use crate::schedule::Schedule;
use crate::seal::{SEAL_FILE, SealKey};

/// Where the store keeps each app's schedules, as `<app>.json`.
const SCHEDULES_DIR: &str = "schedules";

/// The file that pins a backup, beside its metadata.json.
pub const PIN_FILE: &str = "pin.json";

/// Marks a store whose backups of before seals were sealed once.
const SEALED_ONCE: &str = "sealed-once";

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("metadata.json is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge,
    /// An artifact's bytes are not those its manifest records.
    #[error("{path} does not match its recorded checksum: {detail}")]
    Corrupt { path: String, detail: String },
    /// A copy store holds something else where a copy would go.
    #[error("{0}")]
    Conflict(String),
    /// A backup this controller did not seal, which it will not rewrite.
    #[error("{0} does not carry this controller's seal: it is left as it is")]
    Unsealed(String),
}

impl StoreError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The I/O error kind, if this is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// The store: a backend, and the seal key of the controller that owns it.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Where the controller keeps its keys: the local store's root.
    keys_dir: PathBuf,
    seal: SealKey,
    /// The seal key was made at this start: backups already in the store
    /// predate it.
    newly_keyed: bool,
}

/// A file of a stored backup, checked against the manifest.
#[derive(Clone, Debug)]
pub struct FileCheck {
    pub path: String,
    pub expected: Checksum,
    /// None when the file is missing or unreadable.
    pub actual: Option<Checksum>,
    pub size: u64,
}

impl FileCheck {
    /// Whether the file is there with the recorded digest.
    pub fn valid(&self) -> bool {
        self.actual == Some(self.expected)
    }
}

/// One backup found by a scan.
pub struct Scanned {
    /// Where it lies, for the log.
    pub location: String,
    /// The manifest, or why the place is not a usable backup.
    pub manifest: std::result::Result<Manifest, String>,
}

impl Store {
    /// Opens the local store at `root`, creating it (0700) if needed; the
    /// seal key lives there too.
    pub async fn open(root: &Path) -> Result<Self> {
        let local = LocalDir::open(root)
            .await
            .map_err(StoreError::io("opening the store"))?;
        let keys_dir = local.root().to_owned();
        Self::with_backend(Arc::new(local), &keys_dir).await
    }

    /// Opens the store at `url`; the seal key lives in `keys_dir`, on the
    /// controller's own disk (for a local store, its root).
    pub async fn open_url(url: &StoreUrl, keys_dir: &Path, s3: &S3Options) -> Result<Self> {
        match url {
            StoreUrl::Local(root) if root == keys_dir => Self::open(root).await,
            StoreUrl::Local(root) => {
                let local = LocalDir::open(root)
                    .await
                    .map_err(StoreError::io("opening the store"))?;
                Self::with_backend(Arc::new(local), &Self::keys_dir(keys_dir).await?).await
            }
            StoreUrl::S3 { bucket, prefix } => {
                let bucket = S3Bucket::open(bucket, prefix, s3)
                    .map_err(StoreError::io(format!("opening {url}")))?;
                Self::with_backend(Arc::new(bucket), &Self::keys_dir(keys_dir).await?).await
            }
        }
    }

    async fn keys_dir(dir: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(StoreError::io(format!("securing {}", dir.display())))?;
        tokio::fs::canonicalize(dir)
            .await
            .map_err(StoreError::io(format!("opening {}", dir.display())))
    }

    /// Where the store is, for people: a directory or `s3://...`.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Removes what failed writes and deletes left behind, except the
    /// backups `(app, id)` in `busy`, being written.
    pub async fn sweep(&self, busy: &[(String, String)]) -> Result<usize> {
        let busy = busy.iter().map(|(a, i)| BackupKey::new(a, i)).collect();
        self.backend
            .sweep(&busy)
            .await
            .map_err(StoreError::io("sweeping the store"))
    }

    /// A store over `backend`, with the seal key in `keys_dir`.
    pub async fn with_backend(backend: Arc<dyn Backend>, keys_dir: &Path) -> Result<Self> {
        let (seal, newly_keyed) = SealKey::load_or_create(keys_dir)
            .await
            .map_err(StoreError::io("reading the seal key"))?;
        Ok(Self {
            backend,
            keys_dir: keys_dir.to_owned(),
            seal,
            newly_keyed,
        })
    }

    /// The directory the controller keeps its keys and tokens in (the
    /// local store's root).
    pub fn root(&self) -> &Path {
        &self.keys_dir
    }

    /// Where backup `id` of `app` lies, for people.
    pub fn location(&self, app: &str, id: &str) -> String {
        self.backend.location(&BackupKey::new(app, id))
    }

    /// Whether the backups of an earlier version were sealed once already.
    pub async fn sealed_once(&self) -> Result<bool> {
        self.backend
            .has_mark(SEALED_ONCE)
            .await
            .map_err(StoreError::io("reading the store's marks"))
    }

    /// Records that the backups of an earlier version were sealed.
    pub async fn mark_sealed_once(&self) -> Result<()> {
        self.backend
            .set_mark(SEALED_ONCE)
            .await
            .map_err(StoreError::io("marking the store sealed"))
    }

    /// Whether the seal key was made at this start.
    pub fn newly_keyed(&self) -> bool {
        self.newly_keyed
    }

    /// Whether `seal` is this controller's seal of the metadata.json `manifest`.
    pub fn seal_verifies(&self, manifest: &[u8], seal: &[u8]) -> bool {
        self.seal.verify(manifest, seal)
    }

    /// Whether stored backup `id` of `app` carries this controller's seal
    /// over its metadata.json.
    pub async fn sealed(&self, app: &str, id: &str) -> bool {
        let key = BackupKey::new(app, id);
        let (Ok(manifest), Ok(seal)) = (
            self.backend
                .read_small(&key, MANIFEST_FILE, MAX_MANIFEST_BYTES)
                .await,
            self.backend.read_small(&key, SEAL_FILE, 1024).await,
        ) else {
            return false;
        };
        self.seal.verify(&manifest, &seal)
    }

    /// Seals stored backup `id` of `app` as it is (at the first start with
    /// seals, for the backups this controller made before).
    pub async fn seal_stored(&self, app: &str, id: &str) -> Result<()> {
        let key = BackupKey::new(app, id);
        let manifest = self
            .backend
            .read_small(&key, MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .await
            .map_err(StoreError::io("reading metadata.json"))?;
        self.backend
            .replace_small(&key, SEAL_FILE, self.seal.seal(&manifest).as_bytes())
            .await
            .map_err(StoreError::io("writing the seal"))
    }

    /// Pins or unpins stored backup `id` of `app`: a small file beside its
    /// manifest, outside the seal (a pin changes no byte of the backup),
    /// so that a catalog rebuilt from the store keeps its pins.
    pub async fn set_pinned(&self, app: &str, id: &str, pinned: bool) -> Result<()> {
        let body = serde_json::json!({ "pinned": pinned }).to_string();
        self.backend
            .replace_small(&BackupKey::new(app, id), PIN_FILE, body.as_bytes())
            .await
            .map_err(StoreError::io("writing the pin"))
    }

    /// Whether stored backup `id` of `app` is pinned; a missing or
    /// unreadable pin file is no pin.
    pub async fn pinned(&self, app: &str, id: &str) -> bool {
        let Ok(bytes) = self
            .backend
            .read_small(&BackupKey::new(app, id), PIN_FILE, 1024)
            .await
        else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("pinned")?.as_bool())
            .unwrap_or(false)
    }

    /// Writes `app`'s schedules to `schedules/<app>.json` (removing it when
    /// there are none): the store is what a rebuilt catalog reads them from.
    pub async fn save_schedules(&self, app: &str, schedules: &[Schedule]) -> Result<()> {
        let name = format!("{app}.json");
        let done = if schedules.is_empty() {
            self.backend.remove_doc(SCHEDULES_DIR, &name).await
        } else {
            let body = serde_json::to_vec_pretty(schedules).expect("schedules serialise");
            self.backend.write_doc(SCHEDULES_DIR, &name, &body).await
        };
        done.map_err(StoreError::io("writing the schedules"))
    }

    /// Every schedule the store holds; a document that cannot be read is
    /// logged and skipped (its app's schedules are then lost to the
    /// catalog, and the log says so).
    pub async fn all_schedules(&self) -> Result<Vec<Schedule>> {
        let names = self
            .backend
            .list_docs(SCHEDULES_DIR)
            .await
            .map_err(StoreError::io("listing the schedules"))?;
        let mut all = Vec::new();
        for name in names.iter().filter(|n| n.ends_with(".json")) {
            let read = self
                .backend
                .read_doc(SCHEDULES_DIR, name, MAX_MANIFEST_BYTES)
                .await;
            match read.map(|b| b.map(|b| serde_json::from_slice::<Vec<Schedule>>(&b))) {
                Ok(Some(Ok(schedules))) => all.extend(schedules),
                Ok(None) => {}
                Ok(Some(Err(e))) => {
                    tracing::warn!(file = %name, error = %e, "skipping an unreadable schedules file")
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "skipping an unreadable schedules file")
                }
            }
        }
        Ok(all)
    }

    /// Starts writing backup `id` of `app`.
    pub async fn begin(&self, app: &str, id: &str) -> Result<PartialBackup> {
        let staging = self
            .backend
            .begin(&BackupKey::new(app, id))
            .await
            .map_err(StoreError::io("creating the backup directory"))?;
        Ok(PartialBackup {
            staging,
            files: BTreeMap::new(),
            seal: self.seal.clone(),
        })
    }

    /// Bytes free for the store; None where the store has no such limit.
    pub async fn free_space(&self) -> Result<Option<u64>> {
        self.backend
            .free_space()
            .await
            .map_err(StoreError::io("checking free space"))
    }

    /// Reads and validates a stored manifest.
    pub async fn read_manifest(&self, app: &str, id: &str) -> Result<Manifest> {
        let bytes = self
            .backend
            .read_small(&BackupKey::new(app, id), MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => StoreError::ManifestTooLarge,
                _ => StoreError::io("reading metadata.json")(e),
            })?;
        Ok(Manifest::from_json(&bytes)?)
    }

    /// Hashes every file the manifest lists, calling `progress` with bytes read.
    pub async fn verify(
        &self,
        app: &str,
        id: &str,
        manifest: &Manifest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Vec<FileCheck> {
        let key = BackupKey::new(app, id);
        let mut out = Vec::new();
        for (path, expected) in &manifest.checksums {
            let (actual, size) = match self.hash(&key, path, progress).await {
                Ok((c, s)) => (Some(c), s),
                Err(_) => (None, 0),
            };
            out.push(FileCheck {
                path: path.clone(),
                expected: *expected,
                actual,
                size,
            });
        }
        out
    }

    async fn hash(
        &self,
        key: &BackupKey,
        path: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> io::Result<(Checksum, u64)> {
        let mut stream = self.backend.open(key, path).await?;
        let mut tally = Tally::default();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes?;
            tally.add(&bytes);
            progress(bytes.len() as u64);
        }
        Ok(tally.finish())
    }

    /// Opens a stored artifact for reading. `path` was validated with the manifest.
    pub async fn open_artifact(&self, app: &str, id: &str, path: &str) -> Result<ByteStream> {
        self.backend
            .open(&BackupKey::new(app, id), path)
            .await
            .map_err(StoreError::io(format!("opening {path}")))
    }

    /// Whether anything of backup `id` of `app` is in the store.
    pub async fn exists(&self, app: &str, id: &str) -> Result<bool> {
        self.backend
            .exists(&BackupKey::new(app, id))
            .await
            .map_err(StoreError::io("looking in the store"))
    }

    /// Deletes a backup; a missing one is not an error.
    pub async fn delete(&self, app: &str, id: &str) -> Result<()> {
        self.backend
            .delete(&BackupKey::new(app, id))
            .await
            .map_err(StoreError::io("deleting the backup"))
    }

    /// Removes whatever exists of backup `id` of `app`, partial or complete,
    /// after a failure that must leave nothing behind.
    pub async fn discard(&self, app: &str, id: &str) {
        self.backend.discard(&BackupKey::new(app, id)).await
    }

    /// One walk of the store: removes what interrupted writes and deletes
    /// left, except those of the backups `spare` names, and lists every
    /// place that may hold a complete backup (see [`Store::examine`]).
    pub async fn scan(&self, spare: Spare<'_>) -> Result<Scan> {
        self.backend
            .scan(spare)
            .await
            .map_err(StoreError::io("listing the store"))
    }

    /// What a scan found at `(app, name)`: its manifest, or why it cannot be
    /// used (a manifest unreadable, invalid, naming another app or ID than
    /// its place, or listing a missing file).
    pub async fn examine(&self, app: &str, name: &str) -> Scanned {
        Scanned {
            location: self.location(app, name),
            manifest: self.check_stored(app, name).await,
        }
    }

    /// Whether this store holds backup `id` of `app` whole: its manifest
    /// valid and naming it, every file it lists there; else why not.
    pub async fn holds(&self, app: &str, id: &str) -> std::result::Result<(), String> {
        self.check_stored(app, id).await.map(drop)
    }

    async fn check_stored(&self, app: &str, id: &str) -> std::result::Result<Manifest, String> {
        if hop3_proto::names::validate_app_name(app).is_err()
            || id.parse::<hop3_proto::BackupId>().is_err()
        {
            return Err("not a backup directory (bad app name or backup ID)".into());
        }
        let manifest = self
            .read_manifest(app, id)
            .await
            .map_err(|e| e.to_string())?;
        if manifest.app_name != app || manifest.backup_id != id {
            return Err(format!(
                "metadata.json names {}/{}, not where it lies",
                manifest.app_name, manifest.backup_id
            ));
        }
        let key = BackupKey::new(app, id);
        for path in manifest.checksums.keys() {
            if !self.backend.has(&key, path).await.unwrap_or(false) {
                return Err(format!("{path} is missing"));
            }
        }
        Ok(manifest)
    }
}

/// A backup being written.
pub struct PartialBackup {
    staging: Box<dyn Staging>,
    files: BTreeMap<String, (Checksum, u64)>,
    seal: SealKey,
}

impl PartialBackup {
    /// Creates artifact `path` (validated by the caller).
    pub async fn create(&mut self, path: &str) -> Result<ArtifactWriter> {
        let sink = self
            .staging
            .create(path)
            .await
            .map_err(StoreError::io(format!("creating {path}")))?;
        Ok(ArtifactWriter {
            path: path.to_owned(),
            sink,
        })
    }

    /// Writes artifact `path` from `reader`; returns its digest and size,
    /// and records it.
    pub async fn copy<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        reader: &mut R,
    ) -> std::result::Result<(Checksum, u64), CopyError> {
        let mut w = self.create(path).await?;
        let mut tally = Tally::default();
        let mut buf = vec![0u8; hop3_proto::FRAME_SIZE];
        loop {
            let n = reader.read(&mut buf).await.map_err(CopyError::Read)?;
            if n == 0 {
                break;
            }
            tally.add(&buf[..n]);
            w.write(&buf[..n]).await?;
        }
        w.finish().await?;
        let (sum, size) = tally.finish();
        self.record(path.to_owned(), sum, size);
        Ok((sum, size))
    }

    /// Records a finished artifact with its digest and size.
    pub fn record(&mut self, path: String, checksum: Checksum, size: u64) {
        self.files.insert(path, (checksum, size));
    }

    /// The artifacts written so far with their digests and sizes.
    pub fn files(&self) -> &BTreeMap<String, (Checksum, u64)> {
        &self.files
    }

    /// Writes the controller's seal over the manifest (when `sealed`), then
    /// the manifest, last: the backup exists from then on.
    pub async fn commit(self, manifest: &Manifest, sealed: bool) -> Result<()> {
        let bytes = manifest.to_json();
        let extra = if sealed {
            vec![(SEAL_FILE.to_owned(), self.seal.seal(&bytes).into_bytes())]
        } else {
            Vec::new()
        };
        self.staging
            .commit(extra, bytes)
            .await
            .map_err(StoreError::io("completing the backup"))
    }

    /// Removes everything written.
    pub async fn abort(self) {
        self.staging.abort().await
    }
}

/// Why [`PartialBackup::copy`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source could not be read.
    #[error("{0}")]
    Read(io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes one artifact of a partial backup.
pub struct ArtifactWriter {
    path: String,
    sink: Box<dyn ArtifactSink>,
}

impl ArtifactWriter {
    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.sink
            .write(bytes)
            .await
            .map_err(StoreError::io(format!("writing {}", self.path)))
    }

    /// Makes what was written durable.
    pub async fn finish(self) -> Result<()> {
        let ctx = format!("writing {}", self.path);
        self.sink.finish().await.map_err(StoreError::io(ctx))
    }
}
