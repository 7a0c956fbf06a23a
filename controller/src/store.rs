//! The backup store on the local file system:
//! `<store>/apps/<app>/<id>/`, written as `<id>.partial/` and renamed when whole.
//! Files 0600, directories 0700, whatever the umask.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hop3_proto::Checksum;
use hop3_proto::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestError};

use crate::seal::{SEAL_FILE, SealKey};

/// Marks a store whose backups of before seals were sealed once.
const SEALED_ONCE: &str = ".sealed-once";
use sha2::{Digest, Sha256};
use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

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

/// The store's root directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
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

impl Store {
    /// Opens the store at `root`, creating it (0700) if needed.
    pub async fn open(root: &Path) -> Result<Self> {
        make_dir(&root.join("apps")).await?;
        set_mode(root, 0o700).await?;
        let root = fs::canonicalize(root)
            .await
            .map_err(StoreError::io("opening the store"))?;
        let (seal, newly_keyed) = SealKey::load_or_create(&root)
            .await
            .map_err(StoreError::io("reading the seal key"))?;
        Ok(Self {
            root,
            seal,
            newly_keyed,
        })
    }

    /// Whether the backups of an earlier version were sealed once already.
    pub async fn sealed_once(&self) -> bool {
        fs::try_exists(self.root.join(SEALED_ONCE))
            .await
            .unwrap_or(false)
    }

    /// Records that the backups of an earlier version were sealed.
    pub async fn mark_sealed_once(&self) -> Result<()> {
        fs::write(self.root.join(SEALED_ONCE), b"")
            .await
            .map_err(StoreError::io("marking the store sealed"))
    }

    /// Whether the seal key was made at this start.
    pub fn newly_keyed(&self) -> bool {
        self.newly_keyed
    }

    /// Whether the backup directory `dir` carries this controller's seal
    /// over its metadata.json. Nothing in it is followed through a link.
    pub async fn sealed_in(&self, dir: &Path) -> bool {
        let (Ok(manifest), Ok(seal)) = (
            read_private(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES).await,
            read_private(&dir.join(SEAL_FILE), 1024).await,
        ) else {
            return false;
        };
        self.seal.verify(&manifest, &seal)
    }

    /// Whether `seal` is this controller's seal of the metadata.json `manifest`.
    pub fn seal_verifies(&self, manifest: &[u8], seal: &[u8]) -> bool {
        self.seal.verify(manifest, seal)
    }

    /// Whether stored backup `id` of `app` carries this controller's seal.
    pub async fn sealed(&self, app: &str, id: &str) -> bool {
        self.sealed_in(&self.backup_dir(app, id)).await
    }

    /// Seals stored backup `id` of `app` as it is (at the first start with
    /// seals, for the backups this controller made before).
    pub async fn seal_stored(&self, app: &str, id: &str) -> Result<()> {
        let dir = self.backup_dir(app, id);
        let manifest = read_private(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)
            .await
            .map_err(StoreError::io("reading metadata.json"))?;
        write_seal(&dir, &self.seal.seal(&manifest)).await
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where backup `id` of `app` lives once complete. Both names are validated by callers.
    pub fn backup_dir(&self, app: &str, id: &str) -> PathBuf {
        self.root.join("apps").join(app).join(id)
    }

    /// Starts writing backup `id` of `app` in a `.partial` directory.
    pub async fn begin(&self, app: &str, id: &str) -> Result<PartialBackup> {
        let app_dir = self.root.join("apps").join(app);
        make_dir(&app_dir).await?;
        let dir = app_dir.join(format!("{id}.partial"));
        fs::create_dir(&dir)
            .await
            .map_err(StoreError::io("creating the backup directory"))?;
        set_mode(&dir, 0o700).await?;
        Ok(PartialBackup {
            dir,
            final_dir: app_dir.join(id),
            files: BTreeMap::new(),
            seal: self.seal.clone(),
        })
    }

    /// Bytes free for the store.
    pub async fn free_space(&self) -> Result<u64> {
        let root = self.root.clone();
        let st = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&root))
            .await
            .expect("statvfs task")
            .map_err(|e| StoreError::Io {
                context: "checking free space".into(),
                source: e.into(),
            })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Reads and validates a stored manifest.
    pub async fn read_manifest(&self, app: &str, id: &str) -> Result<Manifest> {
        read_manifest_in(&self.backup_dir(app, id)).await
    }

    /// Hashes every file the manifest lists, calling `progress` with bytes read.
    pub async fn verify(
        &self,
        app: &str,
        id: &str,
        manifest: &Manifest,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Vec<FileCheck> {
        let dir = self.backup_dir(app, id);
        let mut out = Vec::new();
        for (path, expected) in &manifest.checksums {
            let (actual, size) = match hash_file(&dir.join(path), progress).await {
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

    /// Opens a stored artifact for reading. `path` was validated with the manifest.
    pub async fn open_artifact(&self, app: &str, id: &str, path: &str) -> Result<File> {
        File::open(self.backup_dir(app, id).join(path))
            .await
            .map_err(StoreError::io(format!("opening {path}")))
    }

    /// Deletes a backup's directory; a missing one is not an error.
    pub async fn delete(&self, app: &str, id: &str) -> Result<()> {
        let dir = self.backup_dir(app, id);
        // Renaming first makes the deletion look atomic to readers of the store.
        let doomed = dir.with_file_name(format!("{id}.deleting"));
        match fs::rename(&dir, &doomed).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("deleting the backup")(e)),
        }
        fs::remove_dir_all(&doomed)
            .await
            .map_err(StoreError::io("deleting the backup"))
    }

    /// One walk of the store at start-up, when nothing can still be writing:
    /// removes the `.partial` and `.deleting` directories a stopped
    /// controller left, and returns every complete backup with its manifest
    /// or why it cannot be used (a manifest unreadable, invalid, naming
    /// another app or ID than its place, or listing a missing file), and how
    /// many leftovers were removed.
    pub async fn recover(&self) -> Result<(Vec<Scanned>, usize)> {
        let mut backups = Vec::new();
        let mut removed = 0;
        for (app, name, path) in self.entries().await? {
            if name.ends_with(".partial") || name.ends_with(".deleting") {
                fs::remove_dir_all(&path)
                    .await
                    .map_err(StoreError::io("removing a partial backup"))?;
                removed += 1;
            } else {
                backups.push(Scanned {
                    manifest: self.check_stored(&app, &name).await,
                    path,
                });
            }
        }
        Ok((backups, removed))
    }

    /// Every `(app, entry name, path)` under `apps/*/`.
    async fn entries(&self) -> Result<Vec<(String, String, PathBuf)>> {
        let mut out = Vec::new();
        let mut apps = fs::read_dir(self.root.join("apps"))
            .await
            .map_err(StoreError::io("listing the store"))?;
        while let Some(app) = apps
            .next_entry()
            .await
            .map_err(StoreError::io("listing the store"))?
        {
            let app_name = app.file_name().to_string_lossy().into_owned();
            let Ok(mut entries) = fs::read_dir(app.path()).await else {
                continue;
            };
            while let Ok(Some(e)) = entries.next_entry().await {
                out.push((
                    app_name.clone(),
                    e.file_name().to_string_lossy().into_owned(),
                    e.path(),
                ));
            }
        }
        Ok(out)
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
        let dir = self.backup_dir(app, id);
        for path in manifest.checksums.keys() {
            if !fs::try_exists(dir.join(path)).await.unwrap_or(false) {
                return Err(format!("{path} is missing"));
            }
        }
        Ok(manifest)
    }

    /// Removes whatever exists of backup `id` of `app`, partial or complete,
    /// after a failure that must leave nothing behind.
    pub async fn discard(&self, app: &str, id: &str) {
        let dir = self.backup_dir(app, id);
        for d in [dir.with_file_name(format!("{id}.partial")), dir] {
            match fs::remove_dir_all(&d).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "could not remove"),
            }
        }
    }
}

/// One backup directory found by a scan.
pub struct Scanned {
    pub path: PathBuf,
    /// The manifest, or why the directory is not a usable backup.
    pub manifest: std::result::Result<Manifest, String>,
}

/// A backup being written.
pub struct PartialBackup {
    dir: PathBuf,
    final_dir: PathBuf,
    files: BTreeMap<String, (Checksum, u64)>,
    seal: SealKey,
}

impl PartialBackup {
    /// Creates artifact `path` (validated by the caller).
    pub async fn create(&mut self, path: &str) -> Result<ArtifactWriter> {
        let full = self.dir.join(path);
        if let Some(parent) = full.parent()
            && parent != self.dir
        {
            make_dir(parent).await?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .await
            .map_err(StoreError::io(format!("creating {path}")))?;
        set_mode(&full, 0o600).await?;
        Ok(ArtifactWriter {
            path: path.to_owned(),
            file: BufWriter::with_capacity(hop3_proto::FRAME_SIZE, file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Records a finished artifact.
    pub fn record(&mut self, path: String, checksum: Checksum, size: u64) {
        self.files.insert(path, (checksum, size));
    }

    /// The artifacts written so far with their digests and sizes.
    pub fn files(&self) -> &BTreeMap<String, (Checksum, u64)> {
        &self.files
    }

    /// Writes the manifest (and, when `sealed`, the controller's seal over
    /// it), syncs, and renames the directory to its final name.
    pub async fn commit(self, manifest: &Manifest, sealed: bool) -> Result<PathBuf> {
        let path = self.dir.join(MANIFEST_FILE);
        let bytes = manifest.to_json();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(StoreError::io("writing metadata.json"))?;
        set_mode(&path, 0o600).await?;
        f.write_all(&bytes)
            .await
            .map_err(StoreError::io("writing metadata.json"))?;
        f.sync_all()
            .await
            .map_err(StoreError::io("writing metadata.json"))?;
        if sealed {
            write_seal(&self.dir, &self.seal.seal(&bytes)).await?;
        }
        if self.dir.join("services").exists() {
            sync_dir(&self.dir.join("services")).await?;
        }
        sync_dir(&self.dir).await?;
        fs::rename(&self.dir, &self.final_dir)
            .await
            .map_err(StoreError::io("completing the backup"))?;
        sync_dir(self.final_dir.parent().expect("under apps/")).await?;
        Ok(self.final_dir)
    }

    /// Removes everything written.
    pub async fn abort(self) {
        if let Err(e) = fs::remove_dir_all(&self.dir).await {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a partial backup");
        }
    }
}

/// Writes one artifact, hashing what is written.
pub struct ArtifactWriter {
    path: String,
    file: BufWriter<File>,
    hasher: Sha256,
    size: u64,
}

impl ArtifactWriter {
    /// The artifact's path in the backup.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.file
            .write_all(bytes)
            .await
            .map_err(StoreError::io(format!("writing {}", self.path)))
    }

    /// Flushes and syncs; returns the digest and size of what was written.
    pub async fn finish(mut self) -> Result<(Checksum, u64)> {
        let ctx = format!("writing {}", self.path);
        self.file
            .flush()
            .await
            .map_err(StoreError::io(ctx.clone()))?;
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(StoreError::io(ctx))?;
        Ok((Checksum::from_hasher(self.hasher), self.size))
    }
}

async fn hash_file(
    path: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> io::Result<(Checksum, u64)> {
    let mut f = File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        progress(n as u64);
    }
    Ok((Checksum::from_hasher(hasher), size))
}

async fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir_all(dir).await {
        Ok(()) => set_mode(dir, 0o700).await,
        Err(e) => Err(StoreError::io("creating a store directory")(e)),
    }
}

async fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(StoreError::io("setting store permissions"))
}

/// Writes `seal` as the seal file of the backup directory `dir`, in place
/// of any there.
async fn write_seal(dir: &Path, seal: &str) -> Result<()> {
    let path = dir.join(SEAL_FILE);
    let tmp = dir.join(format!("{SEAL_FILE}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(&tmp)
        .await
        .map_err(StoreError::io("writing the seal"))?;
    f.write_all(seal.as_bytes())
        .await
        .map_err(StoreError::io("writing the seal"))?;
    f.sync_all()
        .await
        .map_err(StoreError::io("writing the seal"))?;
    fs::rename(&tmp, &path)
        .await
        .map_err(StoreError::io("writing the seal"))
}

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Reads at most `limit` bytes of the regular file `path`, not following a
/// link at its last component.
async fn read_private(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .await?;
    if !file.metadata().await?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, "too large"));
    }
    Ok(bytes)
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir)
        .await
        .map_err(StoreError::io("syncing the store"))?;
    f.sync_all()
        .await
        .map_err(StoreError::io("syncing the store"))
}

/// Reads and validates the manifest of the backup directory `dir`, wherever
/// it is (in the store, or a copy being imported), never more than
/// `MAX_MANIFEST_BYTES` of it.
pub async fn read_manifest_in(dir: &Path) -> Result<Manifest> {
    let bytes = read_private(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::FileTooLarge => StoreError::ManifestTooLarge,
            _ => StoreError::io("reading metadata.json")(e),
        })?;
    Ok(Manifest::from_json(&bytes)?)
}
