//! What `backup:import` may read: a backup directory below the import
//! directory, reached one component at a time from a handle without
//! following a link, every directory and file on the way owned by the
//! controller's user and writable by nobody else, so that no other user can
//! plant or swap what is read. A path outside the import directory is
//! refused before anything is looked at, so that the answer says nothing
//! about which paths exist.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::{ControllerError, Result};

/// A backup directory to import, held open.
#[derive(Clone)]
pub struct ImportSource {
    dir: Arc<OwnedFd>,
    /// The directory as the operator named it, for messages.
    shown: PathBuf,
}

/// The relative path of `requested` below `import_dir`: a relative path is
/// taken from there, an absolute one must lie below it; no `..`.
fn below(import_dir: &Path, requested: &Path) -> Result<PathBuf> {
    let outside = || {
        ControllerError::InvalidArgument(format!(
            "backup:import reads only below the import directory {}: copy the backup directory there (owned by the controller's user), then import it by its name there",
            import_dir.display()
        ))
    };
    let rel = if requested.is_absolute() {
        requested.strip_prefix(import_dir).map_err(|_| outside())?
    } else {
        requested
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(outside());
    }
    Ok(out)
}

/// Opens `name` below `at` without following a link, and checks it is of
/// `kind`, owned by us and writable by nobody else.
fn open_checked(at: &OwnedFd, name: &Path, kind: FileType) -> std::io::Result<OwnedFd> {
    let dir = if kind == FileType::Directory {
        OFlags::DIRECTORY
    } else {
        OFlags::empty()
    };
    let fd = rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | dir,
        Mode::empty(),
    )?;
    check(&fd, kind)?;
    Ok(fd)
}

fn check(fd: &OwnedFd, kind: FileType) -> std::io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let refuse = |why: &str| Err(std::io::Error::other(why.to_owned()));
    if FileType::from_raw_mode(st.st_mode) != kind {
        return refuse("not of the expected type");
    }
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return refuse("not owned by the controller's user");
    }
    if st.st_mode & 0o022 != 0 {
        return refuse("writable by others");
    }
    Ok(())
}

/// Walks the relative `rel` from `from`, every component a checked directory.
fn walk(from: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let mut at = rustix::io::dup(from)?;
    for c in rel.components() {
        at = open_checked(&at, Path::new(c.as_os_str()), FileType::Directory)?;
    }
    Ok(at)
}

impl ImportSource {
    /// Opens the backup directory `requested` below `import_dir`.
    pub async fn open(import_dir: &Path, requested: &Path) -> Result<Self> {
        let rel = below(import_dir, requested)?;
        let root = import_dir.to_owned();
        let shown = requested.to_owned();
        let opened = tokio::task::spawn_blocking(move || {
            let top = rustix::fs::open(
                &root,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            check(&top, FileType::Directory)?;
            walk(&top, &rel)
        })
        .await
        .expect("import walk task");
        match opened {
            Ok(fd) => Ok(Self {
                dir: Arc::new(fd),
                shown,
            }),
            Err(e) => Err(ControllerError::InvalidArgument(format!(
                "{}: not an importable backup directory ({e}); it must be a directory below {}, not a link, owned by the controller's user and writable by nobody else",
                shown.display(),
                import_dir.display()
            ))),
        }
    }

    /// Opens the file `rel` (a validated manifest path) of the directory.
    pub async fn file(&self, rel: &str) -> Result<tokio::fs::File> {
        let dir = self.dir.clone();
        let path = PathBuf::from(rel);
        let opened = tokio::task::spawn_blocking(move || {
            let parent = path.parent().unwrap_or(Path::new(""));
            let at = walk(&dir, parent)?;
            let name = path
                .file_name()
                .ok_or_else(|| std::io::Error::other("no file name"))?;
            open_checked(&at, Path::new(name), FileType::RegularFile)
        })
        .await
        .expect("import open task");
        match opened {
            Ok(fd) => Ok(tokio::fs::File::from_std(std::fs::File::from(fd))),
            Err(e) => Err(ControllerError::InvalidArgument(format!(
                "{}: cannot use {rel}: {e} (files to import must be regular files owned by the controller's user)",
                self.shown.display()
            ))),
        }
    }

    /// Reads the file `rel`, refused when it holds more than `limit` bytes.
    pub async fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let file = self.file(rel).await?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| {
                ControllerError::InvalidArgument(format!(
                    "{}: cannot read {rel}: {e}",
                    self.shown.display()
                ))
            })?;
        if bytes.len() as u64 > limit {
            return Err(ControllerError::InvalidArgument(format!(
                "{}: {rel} is larger than {limit} bytes",
                self.shown.display()
            )));
        }
        Ok(bytes)
    }

    /// The directory as the operator named it.
    pub fn shown(&self) -> &Path {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_below_the_import_directory_are_taken() {
        let dir = Path::new("/store/import");
        assert_eq!(
            below(dir, Path::new("/store/import/a/b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(
            below(dir, Path::new("a/./b")).unwrap(),
            PathBuf::from("a/b")
        );
        for bad in [
            "/tmp/x",
            "/store/import",
            "../x",
            "/store/import/a/../../x",
            ".",
        ] {
            assert!(below(dir, Path::new(bad)).is_err(), "{bad}");
        }
    }
}
