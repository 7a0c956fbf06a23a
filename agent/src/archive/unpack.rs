//! Unpacking an archive into staging directories, with the kernel keeping
//! every write inside them.
//!
//! Entries are created relative to open directory handles, one path
//! component at a time, each opened with `O_NOFOLLOW`: a path that leads
//! through a symlink fails in the kernel instead of being followed, so no
//! entry is ever written, chowned, chmodded or timed through a link, and
//! paths deeper than `PATH_MAX` unpack like any other. Symlinks themselves
//! come back exactly as archived, wherever they point: creating a link
//! writes nothing outside the target, and nothing here follows one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tar::{Archive, EntryType};

use super::{Codec, walk, xattrs};
use crate::error::{AgentError, Result};

/// Files up to this size are read whole and written by the writer threads;
/// larger ones are written by the reading thread as they stream past.
const POOLED_FILE_MAX: u64 = 1024 * 1024;

/// Files waiting for a writer, at most: with `POOLED_FILE_MAX`, a bound on
/// the memory an unpack holds beyond the decompressor's window.
const POOL_DEPTH: usize = 8;

/// Runs of zeros at least this long, block-aligned, are left as holes when
/// a sparse file is written back.
const HOLE_BLOCK: usize = 4096;

/// What an unpack could not do exactly, for the restore's notes.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Extended attributes the file system or the agent's rights refused.
    pub refused_xattrs: Vec<String>,
}

/// Who the unpacked entries belong to, and which set-ID bits come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The target app's owner `(uid, gid)` (owners are applied only when the
    /// agent runs as root).
    pub owner: (u32, u32),
    /// The archive's own owners stand (a sealed backup of this very app on
    /// this very machine), and set-user-ID (set-group-ID) bits and file
    /// capabilities of files archived as owned by `owner`'s user (group).
    /// Otherwise every entry goes to `owner`, and none of those bits or
    /// capabilities come back: no restore creates a privilege the app did
    /// not have.
    pub exact: bool,
}

impl Ownership {
    /// The owner an entry archived as `archived` gets.
    fn owner_of(&self, archived: (Option<u32>, Option<u32>)) -> (u32, u32) {
        if self.exact {
            (
                archived.0.unwrap_or(self.owner.0),
                archived.1.unwrap_or(self.owner.1),
            )
        } else {
            self.owner
        }
    }

    /// Whether an entry archived as owned by `archived` keeps its privileges.
    fn keeps_privileges(&self, archived: Option<u32>) -> bool {
        self.exact && archived == Some(self.owner.0)
    }

    /// The mode an entry of `kind` archived with `mode` and `archived`
    /// owner gets. A directory's set-group-ID bit only passes the group on
    /// to new files, and stays.
    fn mode(&self, kind: EntryType, mode: u32, archived: (Option<u32>, Option<u32>)) -> u32 {
        let mut mode = mode & 0o7777;
        if kind == EntryType::Directory {
            return mode & !0o4000;
        }
        if !self.keeps_privileges(archived.0) {
            mode &= !0o4000;
        }
        if !(self.exact && archived.1 == Some(self.owner.1)) {
            mode &= !0o2000;
        }
        mode
    }
}

/// Unpacks a compressed tar from `input`: every entry must start with one
/// of the tops of `roots` and goes below that top's directory (`data/x`
/// into `DIR/data/x`); each directory must exist. Accepted: directories,
/// regular and sparse files, symlinks, hard links to a file of the same
/// archive, FIFOs. Anything else, or an entry that would be written
/// through a link, fails with the entry named, and the caller throws the
/// partly filled directories away. Blocking: the calling thread decompresses
/// and checks every entry, and small files are written by a few threads
/// beside it, since creating many files is mostly waiting on the filesystem.
pub fn unpack<R: Read>(
    archive: &str,
    input: R,
    codec: Codec,
    roots: &[(&str, &Path)],
    ownership: Ownership,
) -> Result<Unpacked> {
    let mut tops = HashMap::new();
    for (top, dir) in roots {
        let fd = walk::open_dir(rustix::fs::CWD, *dir)
            .map_err(|e| AgentError::io("opening the staging directory", e))?;
        tops.insert(OsString::from(top), Arc::new(fd));
    }
    let buffered = BufReader::with_capacity(hop3_proto::FRAME_SIZE, input);
    let decoder: Box<dyn Read> =
        match codec {
            Codec::None => Box::new(buffered),
            // Multi-member, as `tar -xzf` reads it.
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Codec::Zstd => Box::new(zstd::Decoder::with_buffer(buffered).map_err(|e| {
                AgentError::BadArchive {
                    archive: archive.to_owned(),
                    reason: e.to_string(),
                }
            })?),
        };
    let ar = Archive::new(decoder);
    // Only root can give files away; anyone else keeps them as their own, as tar does.
    let restore_owners = rustix::process::geteuid().is_root();
    let mut walk = Extract {
        archive,
        tops,
        open: Vec::new(),
        restore_owners,
        ownership,
        dirs: Vec::new(),
        hard_links: Vec::new(),
        unpacked: Unpacked::default(),
    };
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let failure: Mutex<Option<AgentError>> = Mutex::new(None);
    let refused: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let (tx, rx) = mpsc::sync_channel::<PooledFile>(POOL_DEPTH);
    let rx = Mutex::new(rx);
    let read = std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| write_pooled(&rx, &failure, &refused, archive, restore_owners));
        }
        walk.entries(ar, tx, &failure)
    });
    // A writer's failure stops the reader, so it is the cause to report.
    if let Some(e) = failure.into_inner().expect("writer failure lock") {
        return Err(e);
    }
    read?;
    walk.unpacked
        .refused_xattrs
        .extend(refused.into_inner().expect("refused lock"));
    walk.finish()
}

/// A directory whose mode, attributes and time are set once everything
/// inside it is written: it stays owner-writable until then, and a default
/// ACL set early would be inherited by what is created in it.
struct DirFix {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    xattrs: Vec<xattrs::Xattr>,
}

/// The reading side of one unpack: what it has seen so far.
struct Extract<'a> {
    archive: &'a str,
    /// The directory each top goes into.
    tops: HashMap<OsString, Arc<OwnedFd>>,
    /// The directories of the last entry's path, open, from its top down.
    open: Vec<(OsString, Arc<OwnedFd>)>,
    restore_owners: bool,
    ownership: Ownership,
    dirs: Vec<DirFix>,
    /// Hard links, made once every file is written: `(link, target)`.
    hard_links: Vec<(PathBuf, PathBuf)>,
    unpacked: Unpacked,
}

/// What a tar entry says about its metadata.
#[derive(Clone)]
struct Meta {
    mode: u32,
    mtime: u64,
    owner: (Option<u32>, Option<u32>),
    xattrs: Vec<xattrs::Xattr>,
}

fn hostile(archive: &str, entry: &Path, reason: &str) -> AgentError {
    AgentError::HostileEntry {
        archive: archive.to_owned(),
        entry: entry.display().to_string(),
        reason: reason.to_owned(),
    }
}

impl Extract<'_> {
    fn bad(&self, reason: String) -> AgentError {
        AgentError::BadArchive {
            archive: self.archive.to_owned(),
            reason,
        }
    }

    fn hostile(&self, entry: &Path, reason: &str) -> AgentError {
        hostile(self.archive, entry, reason)
    }

    fn failed(&self, path: &Path, e: io::Error) -> AgentError {
        unpack_error(self.archive, path, e)
    }

    /// Reads every entry: checks it, then unpacks it here or hands it to a
    /// writer. Stops early, without an error of its own, once a writer failed.
    fn entries<R: Read>(
        &mut self,
        mut ar: Archive<R>,
        pool: mpsc::SyncSender<PooledFile>,
        failure: &Mutex<Option<AgentError>>,
    ) -> Result<()> {
        for entry in ar.entries().map_err(|e| self.bad(e.to_string()))? {
            if failure.lock().expect("writer failure lock").is_some() {
                return Ok(());
            }
            let mut entry = entry.map_err(|e| self.bad(e.to_string()))?;
            let path = entry
                .path()
                .map_err(|e| self.bad(format!("unreadable entry path: {e}")))?
                .into_owned();
            let path = self.check_path(&path)?;
            let mut xattrs = match entry.pax_extensions() {
                Ok(Some(records)) => {
                    xattrs::from_pax(records).map_err(|e| self.failed(&path, e))?
                }
                Ok(None) => Vec::new(),
                Err(e) => return Err(self.bad(format!("at {}: {e}", path.display()))),
            };
            let archived = {
                let header = entry.header();
                let to_u32 = |id: io::Result<u64>| id.ok().and_then(|v| u32::try_from(v).ok());
                (to_u32(header.uid()), to_u32(header.gid()))
            };
            // File capabilities are privileges as set-user-ID bits are.
            if !self.ownership.keeps_privileges(archived.0) {
                xattrs.retain(|(name, _)| name.as_slice() != b"security.capability");
            }
            let header = entry.header();
            let kind = header.entry_type();
            let (uid, gid) = self.ownership.owner_of(archived);
            let meta = Meta {
                mode: self
                    .ownership
                    .mode(kind, header.mode().unwrap_or(0o644), archived),
                mtime: header.mtime().unwrap_or(0),
                owner: (Some(uid), Some(gid)),
                xattrs,
            };
            let size = entry.size();
            // A tree itself is a directory: a link in its place would have
            // the restore swap a link to anywhere into the app.
            if path.components().count() == 1 && kind != EntryType::Directory {
                return Err(self.hostile(&path, "a tree must be a directory"));
            }
            match kind {
                EntryType::Regular | EntryType::Continuous if size <= POOLED_FILE_MAX => {
                    let (parent, name) = self.parent_of(&path)?;
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| self.failed(&path, e))?;
                    if data.len() as u64 != size {
                        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return Err(self.failed(&path, e));
                    }
                    let file = PooledFile {
                        parent,
                        name,
                        path,
                        data,
                        meta,
                    };
                    if pool.send(file).is_err() {
                        return Ok(()); // every writer is gone: one failed
                    }
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let (parent, name) = self.parent_of(&path)?;
                    let sparse = kind == EntryType::GNUSparse;
                    let written = write_file(&parent, &name, &meta, self.restore_owners, |f| {
                        if sparse {
                            copy_sparse(&mut entry, f, size)
                        } else {
                            copy_all(&mut entry, f, size)
                        }
                    })
                    .map_err(|e| self.failed(&path, e))?;
                    self.unpacked.refused_xattrs.extend(named(&path, written));
                }
                EntryType::Directory => self.directory(&path, meta)?,
                EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.bad(format!("unreadable link target: {e}")))?
                        .ok_or_else(|| self.hostile(&path, "symlink without a target"))?
                        .into_owned();
                    self.symlink(&path, &target, &meta)?;
                }
                EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.bad(format!("unreadable link target: {e}")))?
                        .ok_or_else(|| self.hostile(&path, "hard link without a target"))?;
                    // Only to another entry of this archive: nothing outside
                    // the target can be reached through a hard link.
                    let target = self
                        .check_path(&target)
                        .map_err(|_| self.hostile(&path, "hard link to outside the archive"))?;
                    if target.components().next() != path.components().next() {
                        return Err(self.hostile(&path, "hard link across trees"));
                    }
                    self.hard_links.push((path, target));
                }
                EntryType::Fifo => self.fifo(&path, &meta)?,
                EntryType::Char | EntryType::Block => {
                    return Err(self.hostile(&path, "device nodes are not accepted"));
                }
                _ => return Err(self.hostile(&path, "unsupported entry type")),
            }
        }
        drop(pool);
        // Reading on to the end checks the gzip trailer (CRC, length) or the zstd frame checksum.
        io::copy(&mut ar.into_inner(), &mut io::sink()).map_err(|e| self.bad(e.to_string()))?;
        Ok(())
    }

    /// The entry's path without `.` components, if it is relative, free of
    /// `..` and below one of the tops.
    fn check_path(&self, path: &Path) -> Result<PathBuf> {
        let mut out = PathBuf::new();
        for c in path.components() {
            match c {
                // The first name (after any `./`) must be one of the tops.
                Component::Normal(n)
                    if !out.as_os_str().is_empty() || self.tops.contains_key(n) =>
                {
                    out.push(n)
                }
                Component::Normal(_) => {
                    return Err(self.hostile(path, "unexpected top-level directory"));
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(self.hostile(path, "path leaves the target")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.hostile(path, "absolute path"));
                }
            }
        }
        if out.as_os_str().is_empty() {
            return Err(self.hostile(path, "empty path"));
        }
        Ok(out)
    }

    /// The open directory that holds `path` and its last component, the
    /// directories on the way opened (or made, as `tar` makes missing
    /// parents) one by one without following a link.
    fn parent_of(&mut self, path: &Path) -> Result<(Arc<OwnedFd>, OsString)> {
        let parts: Vec<&OsStr> = path.iter().collect();
        let (name, dirs) = parts.split_last().expect("checked paths are not empty");
        let top = self
            .tops
            .get(parts[0])
            .expect("checked paths start with a top")
            .clone();
        let kept = self
            .open
            .iter()
            .zip(dirs.iter())
            .take_while(|((open, _), want)| open == *want)
            .count();
        self.open.truncate(kept);
        for dir in &dirs[kept..] {
            let parent = self.open.last().map_or(&top, |(_, fd)| fd).clone();
            let fd = match walk::open_dir(&*parent, *dir) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    rustix::fs::mkdirat(&*parent, *dir, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.failed(path, e.into()))?;
                    walk::open_dir(&*parent, *dir).map_err(|e| self.failed(path, e))?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let is_link = rustix::fs::statat(&*parent, *dir, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
                    return Err(self.hostile(
                        path,
                        if is_link {
                            "written through a symlink"
                        } else {
                            "below an entry that is not a directory"
                        },
                    ));
                }
                Err(e) => return Err(self.failed(path, e)),
            };
            self.open.push(((*dir).to_owned(), Arc::new(fd)));
        }
        let parent = self.open.last().map_or(&top, |(_, fd)| fd).clone();
        Ok((parent, (*name).to_owned()))
    }

    fn directory(&mut self, path: &Path, meta: Meta) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        match rustix::fs::mkdirat(&*parent, &name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            // Made earlier as a missing parent: fine; anything else is a duplicate.
            Err(Errno::EXIST)
                if rustix::fs::statat(&*parent, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory) => {}
            Err(e) => return Err(self.failed(path, e.into())),
        }
        if self.restore_owners {
            let fd = walk::open_dir(&*parent, &name).map_err(|e| self.failed(path, e))?;
            chown(&fd, meta.owner).map_err(|e| self.failed(path, e))?;
        }
        self.dirs.push(DirFix {
            path: path.to_path_buf(),
            mode: meta.mode,
            mtime: meta.mtime,
            xattrs: meta.xattrs,
        });
        Ok(())
    }

    fn symlink(&mut self, path: &Path, target: &Path, meta: &Meta) -> Result<()> {
        if target.as_os_str().is_empty() {
            return Err(self.hostile(path, "symlink without a target"));
        }
        let (parent, name) = self.parent_of(path)?;
        rustix::fs::symlinkat(target, &*parent, &name).map_err(|e| self.failed(path, e.into()))?;
        self.owner_and_time(&parent, &name, path, meta)
    }

    /// Sets the owner (as root) and time of the link `name` in `parent`,
    /// by name and without following it (a link cannot be opened).
    fn owner_and_time(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let failed = |e: Errno| self.failed(path, e.into());
        if self.restore_owners {
            let (uid, gid) = ids(meta.owner);
            rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(failed)?;
        }
        rustix::fs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(failed)
    }

    fn fifo(&mut self, path: &Path, meta: &Meta) -> Result<()> {
        let (parent, name) = self.parent_of(path)?;
        let failed = |e: Errno| self.failed(path, e.into());
        rustix::fs::mkfifoat(&*parent, &name, Mode::from_raw_mode(0o600)).map_err(failed)?;
        // Opened without blocking for a peer and without following a link,
        // then set up through its handle like any file.
        let fd = rustix::fs::openat(
            &*parent,
            &name,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(failed)?;
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd).map_err(failed)?.st_mode);
        if kind != FileType::Fifo {
            return Err(self.hostile(path, "replaced while it was being made"));
        }
        if self.restore_owners {
            chown(&fd, meta.owner).map_err(|e| self.failed(path, e))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(failed)?;
        rustix::fs::futimens(&fd, &times(meta.mtime)).map_err(failed)
    }

    /// Makes the hard links, then gives each directory its mode, attributes
    /// and time, deepest first.
    fn finish(mut self) -> Result<Unpacked> {
        for (link, target) in std::mem::take(&mut self.hard_links) {
            let (tparent, tname) = self.parent_of(&target)?;
            let is_file = rustix::fs::statat(&*tparent, &tname, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile);
            if !is_file {
                return Err(self.hostile(&link, "hard link to an entry that is not a file"));
            }
            let (lparent, lname) = self.parent_of(&link)?;
            rustix::fs::linkat(&*tparent, &tname, &*lparent, &lname, AtFlags::empty())
                .map_err(|e| self.failed(&link, e.into()))?;
        }
        for dir in std::mem::take(&mut self.dirs).into_iter().rev() {
            let (parent, name) = self.parent_of(&dir.path)?;
            let fd = walk::open_dir(&*parent, &name).map_err(|e| self.failed(&dir.path, e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(dir.mode))
                .map_err(|e| self.failed(&dir.path, e.into()))?;
            let refused = xattrs::write(&fd, &dir.xattrs).map_err(|e| self.failed(&dir.path, e))?;
            self.unpacked
                .refused_xattrs
                .extend(named(&dir.path, refused));
            rustix::fs::futimens(&fd, &times(dir.mtime))
                .map_err(|e| self.failed(&dir.path, e.into()))?;
        }
        Ok(self.unpacked)
    }
}

/// Refused attributes as notes: `data/x: user.origin (Operation not supported)`.
fn named(path: &Path, refused: Vec<(String, io::Error)>) -> impl Iterator<Item = String> + '_ {
    refused
        .into_iter()
        .map(move |(name, e)| format!("{}: {name} ({e})", path.display()))
}

/// Owners as numbers, as tar keeps them: names may differ between hosts.
fn ids(owner: (Option<u32>, Option<u32>)) -> (Option<Uid>, Option<Gid>) {
    (owner.0.map(Uid::from_raw), owner.1.map(Gid::from_raw))
}

fn chown(fd: impl AsFd, owner: (Option<u32>, Option<u32>)) -> io::Result<()> {
    let (uid, gid) = ids(owner);
    rustix::fs::fchown(fd, uid, gid).map_err(io::Error::from)
}

fn times(mtime: u64) -> Timestamps {
    let mtime = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// Creates file `name` in `parent` (never over an existing entry, so never
/// through a link), fills it with `fill`, then sets owner, mode, extended
/// attributes and time through its handle, in an order that keeps each:
/// a change of owner clears set-user-ID bits and file capabilities.
/// Returns the attributes that were refused.
fn write_file(
    parent: &OwnedFd,
    name: &OsStr,
    meta: &Meta,
    restore_owners: bool,
    fill: impl FnOnce(&std::fs::File) -> io::Result<()>,
) -> io::Result<Vec<(String, io::Error)>> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let file = std::fs::File::from(fd);
    fill(&file)?;
    if restore_owners {
        chown(&file, meta.owner)?;
    }
    rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))?;
    let refused = xattrs::write(&file, &meta.xattrs)?;
    if meta.mtime > i64::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "modification time out of range",
        ));
    }
    rustix::fs::futimens(&file, &times(meta.mtime))?;
    Ok(refused)
}

/// Copies exactly `size` bytes of `entry` into `file`.
fn copy_all(entry: &mut impl Read, file: &std::fs::File, size: u64) -> io::Result<()> {
    let mut out = file;
    let copied = io::copy(&mut entry.take(size), &mut out)?;
    if copied != size {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Copies a sparse file's `size` bytes into `file`, leaving aligned blocks
/// of zeros unwritten: its holes come back as holes, and take no space.
fn copy_sparse(entry: &mut impl Read, file: &std::fs::File, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1024 * 1024];
    let mut at = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match entry.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let mut run: Option<usize> = None;
        for (i, block) in buf[..filled].chunks(HOLE_BLOCK).enumerate() {
            let zero = block.iter().all(|b| *b == 0);
            match (zero, run) {
                (false, None) => run = Some(i * HOLE_BLOCK),
                (true, Some(start)) => {
                    file.write_all_at(&buf[start..i * HOLE_BLOCK], at + start as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            file.write_all_at(&buf[start..filled], at + start as u64)?;
        }
        at += filled as u64;
    }
    if at != size {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    file.set_len(size)
}

/// A small file read whole, waiting for a writer thread.
struct PooledFile {
    /// The directory it goes into, and its name there.
    parent: Arc<OwnedFd>,
    name: OsString,
    /// Its path in the archive, for errors.
    path: PathBuf,
    data: Vec<u8>,
    meta: Meta,
}

/// One writer thread: writes pooled files until the reader is done, and
/// records the first failure.
fn write_pooled(
    rx: &Mutex<mpsc::Receiver<PooledFile>>,
    failure: &Mutex<Option<AgentError>>,
    refused: &Mutex<Vec<String>>,
    archive: &str,
    restore_owners: bool,
) {
    loop {
        let next = rx.lock().expect("pool lock").recv();
        let Ok(file) = next else {
            return;
        };
        // After a failure the queue is only drained, so the reader never
        // blocks on it; it sees the failure and stops.
        if failure.lock().expect("writer failure lock").is_some() {
            continue;
        }
        let written = write_file(&file.parent, &file.name, &file.meta, restore_owners, |f| {
            let mut out = f;
            io::Write::write_all(&mut out, &file.data)
        });
        match written {
            Ok(r) if r.is_empty() => {}
            Ok(r) => refused
                .lock()
                .expect("refused lock")
                .extend(named(&file.path, r)),
            Err(e) => {
                let mut failed = failure.lock().expect("writer failure lock");
                failed.get_or_insert_with(|| unpack_error(archive, &file.path, e));
            }
        }
    }
}

fn unpack_error(archive: &str, path: &Path, e: io::Error) -> AgentError {
    let entry = path.display().to_string();
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => AgentError::HostFull(entry),
        io::ErrorKind::PermissionDenied => {
            AgentError::PermissionDenied(format!("unpacking {entry}"))
        }
        io::ErrorKind::AlreadyExists => AgentError::HostileEntry {
            archive: archive.to_owned(),
            entry,
            reason: "duplicate entry".into(),
        },
        _ => AgentError::BadArchive {
            archive: archive.to_owned(),
            reason: format!("at {entry}: {}", innermost(&e)),
        },
    }
}

/// The deepest error in a chain: the tar reader wraps the real cause.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
