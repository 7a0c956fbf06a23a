//! Walking an app tree through directory handles: every entry is reached
//! with `*at` calls relative to its parent's open directory, never through
//! a path from the root. So paths deeper than `PATH_MAX` (4,096 bytes) are
//! walked like any other, and no symlink inside the tree is ever followed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};

/// One entry met by [`walk`].
pub struct Node<'a> {
    /// Its path in the archive (`data/uploads/a.jpg`).
    pub path: &'a Path,
    /// The open directory that holds it (the tree's own for the top).
    pub parent: BorrowedFd<'a>,
    /// Its name in `parent` (empty for the top, which is `dir`).
    pub name: &'a OsStr,
    /// Its metadata, links not followed.
    pub stat: &'a Stat,
    /// For a directory, its own open handle.
    pub dir: Option<BorrowedFd<'a>>,
}

impl Node<'_> {
    /// What kind of entry it is.
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }
}

/// An open directory being walked: its children still to visit, last first.
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    pending: Vec<OsString>,
}

/// Opens directory `name` in `parent` without following a link at `name`.
pub fn open_dir(parent: impl AsFd, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Names in directory `fd`, sorted (`.` and `..` left out).
pub fn list(fd: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Visits the tree of directory `dir` (archived as `top`) depth first, in
/// name order, a directory before what it holds. An entry removed between
/// its listing and its visit is passed over, as `tar` does. `visit` sees
/// each entry once; an error from it ends the walk.
pub fn walk(
    dir: OwnedFd,
    top: &Path,
    visit: &mut dyn FnMut(&Node<'_>) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    let listing_err = |path: &Path, e: io::Error| {
        crate::error::AgentError::io(format!("listing {}", path.display()), e)
    };
    let stat = rustix::fs::fstat(&dir).map_err(|e| {
        crate::error::AgentError::io(format!("reading {}", top.display()), e.into())
    })?;
    visit(&Node {
        path: top,
        parent: dir.as_fd(),
        name: OsStr::new(""),
        stat: &stat,
        dir: Some(dir.as_fd()),
    })?;
    let mut pending = list(&dir).map_err(|e| listing_err(top, e))?;
    pending.reverse();
    let mut stack = vec![Frame {
        fd: dir,
        path: top.to_path_buf(),
        pending,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.pending.pop() else {
            stack.pop();
            continue;
        };
        let frame = stack.last().expect("just looked at");
        let path = frame.path.join(&name);
        let stat = match rustix::fs::statat(&frame.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                return Err(crate::error::AgentError::io(
                    format!("reading {}", path.display()),
                    e.into(),
                ));
            }
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            visit(&Node {
                path: &path,
                parent: frame.fd.as_fd(),
                name: &name,
                stat: &stat,
                dir: None,
            })?;
            continue;
        }
        let fd = match open_dir(&frame.fd, &name) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(listing_err(&path, e)),
        };
        visit(&Node {
            path: &path,
            parent: frame.fd.as_fd(),
            name: &name,
            stat: &stat,
            dir: Some(fd.as_fd()),
        })?;
        let mut pending = list(&fd).map_err(|e| listing_err(&path, e))?;
        pending.reverse();
        stack.push(Frame { fd, path, pending });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_deeper_than_path_max_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = open_dir(rustix::fs::CWD, tmp.path()).unwrap();
        // 25 levels of 200-byte names: 5,000 bytes, past PATH_MAX.
        let long = "d".repeat(200);
        let mut fd = root.try_clone().unwrap();
        for _ in 0..25 {
            rustix::fs::mkdirat(&fd, long.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            fd = open_dir(&fd, long.as_str()).unwrap();
        }
        let file = rustix::fs::openat(
            &fd,
            "deep.txt",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&file, b"deep").unwrap();
        std::fs::write(tmp.path().join("b"), b"").unwrap();
        std::fs::write(tmp.path().join("a"), b"").unwrap();

        let mut seen = Vec::new();
        walk(root, Path::new("data"), &mut |n| {
            seen.push((n.path.as_os_str().len(), n.kind()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1 + 2 + 25 + 1);
        assert_eq!(seen[1].0, "data/a".len());
        assert_eq!(seen[2].0, "data/b".len());
        let (deepest, kind) = seen.last().unwrap();
        assert!(*deepest > 5000, "{deepest}");
        assert_eq!(*kind, FileType::RegularFile);
    }
}
