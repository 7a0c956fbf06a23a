//! The store on the local file system: `<root>/apps/<app>/<id>/`, written
//! as `<id>.partial/` and renamed when whole (the manifest written last
//! inside it, as the contract asks), deleted by renaming to `<id>.deleting/`
//! first. Files 0600, directories 0700, whatever the umask.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use hop3_proto::manifest::MANIFEST_FILE;
use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use super::backend::{ArtifactSink, Backend, BackupKey, ByteStream, Scan, Spare, Staging};

/// A store directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// Opens the store at `root`, creating it (0700) if needed.
    pub async fn open(root: &Path) -> io::Result<Self> {
        make_dir(&root.join("apps")).await?;
        set_mode(root, 0o700).await?;
        Ok(Self {
            root: fs::canonicalize(root).await?,
        })
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, key: &BackupKey) -> PathBuf {
        self.root.join("apps").join(&key.app).join(&key.id)
    }

    fn beside(&self, key: &BackupKey, suffix: &str) -> PathBuf {
        self.root
            .join("apps")
            .join(&key.app)
            .join(format!("{}{suffix}", key.id))
    }

    /// Every `(app, entry name, path)` under `apps/*/`.
    /// Every `(app, entry)` under `apps/`. The app's name is shared by its
    /// entries: a listing of 100,000 backups holds 1,000 names, not 100,000.
    async fn entries(&self) -> io::Result<Vec<(std::sync::Arc<str>, String)>> {
        let mut out = Vec::new();
        let mut apps = fs::read_dir(self.root.join("apps")).await?;
        while let Some(app) = apps.next_entry().await? {
            let app_name: std::sync::Arc<str> = app.file_name().to_string_lossy().into();
            let Ok(mut entries) = fs::read_dir(app.path()).await else {
                continue;
            };
            while let Ok(Some(e)) = entries.next_entry().await {
                out.push((
                    app_name.clone(),
                    e.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Backend for LocalDir {
    fn location(&self, key: &BackupKey) -> String {
        self.dir(key).display().to_string()
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn begin(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        let app_dir = self.root.join("apps").join(&key.app);
        make_dir(&app_dir).await?;
        let dir = self.beside(key, ".partial");
        fs::create_dir(&dir).await?;
        set_mode(&dir, 0o700).await?;
        Ok(Box::new(LocalStaging {
            dir,
            final_dir: self.dir(key),
        }))
    }

    async fn rewrite(&self, key: &BackupKey) -> io::Result<Box<dyn Staging>> {
        let dir = self.dir(key);
        if !fs::try_exists(dir.join(MANIFEST_FILE)).await? {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} holds no backup", dir.display()),
            ));
        }
        Ok(Box::new(LocalRewrite {
            dir,
            created: Vec::new(),
        }))
    }

    async fn list(&self, key: &BackupKey) -> io::Result<Vec<String>> {
        let root = self.dir(key);
        let mut out = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let mut entries = fs::read_dir(&dir).await?;
            while let Some(e) = entries.next_entry().await? {
                let path = e.path();
                if e.file_type().await?.is_dir() {
                    dirs.push(path);
                } else if let Ok(rel) = path.strip_prefix(&root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn remove(&self, key: &BackupKey, path: &str) -> io::Result<()> {
        remove_below(&self.dir(key), &self.dir(key).join(path)).await
    }

    async fn read_small(&self, key: &BackupKey, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        read_private(&self.dir(key).join(path), limit).await
    }

    async fn replace_small(&self, key: &BackupKey, path: &str, bytes: &[u8]) -> io::Result<()> {
        replace_file(&self.dir(key), path, bytes).await
    }

    async fn open(&self, key: &BackupKey, path: &str) -> io::Result<ByteStream> {
        let file = File::open(self.dir(key).join(path)).await?;
        Ok(ReaderStream::with_capacity(file, hop3_proto::FRAME_SIZE).boxed())
    }

    async fn has(&self, key: &BackupKey, path: &str) -> io::Result<bool> {
        fs::try_exists(self.dir(key).join(path)).await
    }

    async fn exists(&self, key: &BackupKey) -> io::Result<bool> {
        for dir in [
            self.dir(key),
            self.beside(key, ".partial"),
            self.beside(key, ".deleting"),
        ] {
            if fs::try_exists(dir).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn delete(&self, key: &BackupKey) -> io::Result<()> {
        // Renaming first makes the deletion look atomic to readers of the store.
        let doomed = self.beside(key, ".deleting");
        match fs::rename(self.dir(key), &doomed).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        fs::remove_dir_all(&doomed).await
    }

    async fn discard(&self, key: &BackupKey) {
        for d in [self.beside(key, ".partial"), self.dir(key)] {
            match fs::remove_dir_all(&d).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "could not remove"),
            }
        }
    }

    async fn scan(&self, spare: Spare<'_>) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for (app, name) in self.entries().await? {
            let left = name
                .strip_suffix(".partial")
                .or_else(|| name.strip_suffix(".deleting"));
            if let Some(id) = left {
                if spare(&BackupKey::new(&app, id)) {
                    continue;
                }
                let path = self.root.join("apps").join(&*app).join(&name);
                match fs::remove_dir_all(&path).await {
                    // Its delete finished between the listing and now.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                    Ok(()) => scan.removed += 1,
                }
            } else {
                scan.backups.push((app.to_string(), name));
            }
        }
        Ok(scan)
    }

    async fn free_space(&self) -> io::Result<Option<u64>> {
        let root = self.root.clone();
        let st = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&root))
            .await
            .map_err(io::Error::other)??;
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }

    async fn has_mark(&self, name: &str) -> io::Result<bool> {
        fs::try_exists(self.root.join(mark_file(name))).await
    }

    async fn set_mark(&self, name: &str) -> io::Result<()> {
        fs::write(self.root.join(mark_file(name)), b"").await
    }

    async fn read_doc(&self, dir: &str, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        match read_private(&self.root.join(dir).join(name), limit).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_doc(&self, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let dir = self.root.join(dir);
        make_dir(&dir).await?;
        replace_file(&dir, name, bytes).await?;
        sync_dir(&dir).await
    }

    async fn remove_doc(&self, dir: &str, name: &str) -> io::Result<()> {
        match fs::remove_file(self.root.join(dir).join(name)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn list_docs(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut entries = match fs::read_dir(self.root.join(dir)).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        while let Some(e) = entries.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            // A write cut short leaves its temporary file: not a document.
            if !name.ends_with(".tmp") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A mark's file in the store's root: hidden, as `.sealed-once` always was.
fn mark_file(name: &str) -> String {
    format!(".{name}")
}

/// A backup being written in `<id>.partial/`.
struct LocalStaging {
    dir: PathBuf,
    final_dir: PathBuf,
}

/// Creates artifact `path` in `dir`, and the directories it is in.
async fn create_artifact(dir: &Path, path: &str) -> io::Result<Box<dyn ArtifactSink>> {
    let full = dir.join(path);
    if let Some(parent) = full.parent()
        && parent != dir
    {
        make_dir(parent).await?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&full)
        .await?;
    set_mode(&full, 0o600).await?;
    Ok(Box::new(LocalSink {
        file: BufWriter::with_capacity(hop3_proto::FRAME_SIZE, file),
    }))
}

#[async_trait::async_trait]
impl Staging for LocalStaging {
    async fn create(&mut self, path: &str) -> io::Result<Box<dyn ArtifactSink>> {
        create_artifact(&self.dir, path).await
    }

    async fn commit(
        self: Box<Self>,
        extra: Vec<(String, Vec<u8>)>,
        manifest: Vec<u8>,
    ) -> io::Result<()> {
        for (name, bytes) in &extra {
            replace_file(&self.dir, name, bytes).await?;
        }
        let path = self.dir.join(MANIFEST_FILE);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        set_mode(&path, 0o600).await?;
        f.write_all(&manifest).await?;
        f.sync_all().await?;
        if fs::try_exists(self.dir.join("services")).await? {
            sync_dir(&self.dir.join("services")).await?;
        }
        sync_dir(&self.dir).await?;
        fs::rename(&self.dir, &self.final_dir).await?;
        sync_dir(self.final_dir.parent().expect("under apps/")).await
    }

    async fn abort(self: Box<Self>) {
        if let Err(e) = fs::remove_dir_all(&self.dir).await {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a partial backup");
        }
    }
}

/// New artifacts being written into a complete backup's directory.
struct LocalRewrite {
    dir: PathBuf,
    created: Vec<PathBuf>,
}

#[async_trait::async_trait]
impl Staging for LocalRewrite {
    async fn create(&mut self, path: &str) -> io::Result<Box<dyn ArtifactSink>> {
        let sink = create_artifact(&self.dir, path).await?;
        self.created.push(self.dir.join(path));
        Ok(sink)
    }

    async fn commit(
        self: Box<Self>,
        extra: Vec<(String, Vec<u8>)>,
        manifest: Vec<u8>,
    ) -> io::Result<()> {
        // The new files' names durable before a manifest names them.
        let mut dirs: Vec<&Path> = self.created.iter().filter_map(|p| p.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            sync_dir(d).await?;
        }
        for (name, bytes) in &extra {
            replace_file(&self.dir, name, bytes).await?;
        }
        replace_file(&self.dir, MANIFEST_FILE, &manifest).await?;
        sync_dir(&self.dir).await
    }

    async fn abort(self: Box<Self>) {
        for path in &self.created {
            if let Err(e) = remove_below(&self.dir, path).await {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a file of an unfinished rewrite");
            }
        }
    }
}

/// Removes the file `full` below the backup directory `dir`, and the
/// directories it leaves empty (`sealed-2/services/`, then `sealed-2/`); a
/// missing file is not an error.
async fn remove_below(dir: &Path, full: &Path) -> io::Result<()> {
    match fs::remove_file(full).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut parent = full.parent();
    while let Some(p) = parent
        && p != dir
        && fs::remove_dir(p).await.is_ok()
    {
        parent = p.parent();
    }
    Ok(())
}

struct LocalSink {
    file: BufWriter<File>,
}

#[async_trait::async_trait]
impl ArtifactSink for LocalSink {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await
    }

    async fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await
    }
}

async fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).await?;
    set_mode(dir, 0o700).await
}

async fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await
}

/// Writes `bytes` as `name` in directory `dir`, in place of any there,
/// through a temporary file renamed over it; never through a link.
async fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(&tmp)
        .await?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    fs::rename(&tmp, &path).await
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

async fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).await?.sync_all().await
}
