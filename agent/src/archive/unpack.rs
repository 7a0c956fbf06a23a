//! Unpacking an archive into a staging directory, refusing every entry that
//! could land outside it.

use std::io;
use std::path::{Component, Path, PathBuf};

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::sync::{Mutex, mpsc};

use tar::{Archive, EntryType};

use super::{Codec, escapes};
use crate::error::{AgentError, Result};

/// Files up to this size are read whole and written by the writer threads;
/// larger ones are written by the reading thread as they stream past.
const POOLED_FILE_MAX: u64 = 1024 * 1024;

/// Files waiting for a writer, at most: with `POOLED_FILE_MAX`, a bound on
/// the memory an unpack holds beyond the decompressor's window.
const POOL_DEPTH: usize = 8;

/// Unpacks a compressed tar from `input` into `dst` (which must exist), accepting
/// only regular files, directories and symlinks whose paths start with one of
/// `allowed_top` and stay inside it. Anything else fails with the entry named,
/// and the caller throws the partly filled `dst` away. Blocking: the calling
/// thread decompresses and checks every entry, and small files are written
/// by a few threads beside it, since creating many files is mostly waiting
/// on the filesystem.
pub fn unpack<R: Read>(
    archive: &str,
    input: R,
    codec: Codec,
    dst: &Path,
    allowed_top: &[&str],
) -> Result<()> {
    let dst = std::fs::canonicalize(dst)
        .map_err(|e| AgentError::io("opening the staging directory", e))?;
    let buffered = BufReader::with_capacity(hop3_proto::CHUNK_SIZE, input);
    let decoder: Box<dyn Read> =
        match codec {
            // Multi-member, as `tar -xzf` reads it.
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Codec::Zstd => Box::new(zstd::Decoder::with_buffer(buffered).map_err(|e| {
                AgentError::BadArchive {
                    archive: archive.to_owned(),
                    reason: e.to_string(),
                }
            })?),
        };
    let mut ar = Archive::new(decoder);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(false);
    ar.set_unpack_xattrs(false);
    // Only root can give files away; anyone else keeps them as their own, as tar does.
    let restore_owners = rustix::process::geteuid().is_root();
    // The extractor sets each entry's owner (links' own, with lchown)
    // before its mode, which keeps set-user-ID bits.
    ar.set_preserve_ownerships(restore_owners);
    let mut walk = Walk {
        archive,
        dst: &dst,
        allowed_top,
        links: HashSet::new(),
        dirs: HashSet::new(),
        dir_modes: Vec::new(),
    };
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let failure: Mutex<Option<AgentError>> = Mutex::new(None);
    let (tx, rx) = mpsc::sync_channel::<PooledFile>(POOL_DEPTH);
    let rx = Mutex::new(rx);
    let read = std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| write_pooled(&rx, &failure, archive, restore_owners));
        }
        walk.entries(ar, tx, &failure)
    });
    // A writer's failure stops the reader, so it is the cause to report.
    if let Some(e) = failure.into_inner().expect("writer failure lock") {
        return Err(e);
    }
    read?;
    // Each link was checked on its own as it arrived; together they can
    // still lead out (`a/b -> ..`, `a/c -> b/../..`), so each is resolved
    // once more through the links that now exist.
    let mut links: Vec<_> = walk.links.into_iter().collect();
    links.sort();
    for link in &links {
        if !resolves_inside(&dst, link) {
            return Err(walk_hostile(
                archive,
                link,
                "symlink points outside the target",
            ));
        }
    }
    for (dir, mode) in walk.dir_modes.iter().rev() {
        set_mode(dir, *mode)?;
    }
    Ok(())
}

/// The reading side of one unpack: what it has seen so far.
struct Walk<'a> {
    archive: &'a str,
    dst: &'a Path,
    allowed_top: &'a [&'a str],
    /// Symlinks unpacked so far (relative paths): nothing may go below one.
    links: HashSet<PathBuf>,
    /// Directories known to exist (relative paths).
    dirs: HashSet<PathBuf>,
    /// Directories are made owner-writable while unpacking so their content can
    /// be written, and get their archived modes back at the end, deepest first.
    dir_modes: Vec<(PathBuf, u32)>,
}

fn walk_hostile(archive: &str, entry: &Path, reason: &str) -> AgentError {
    AgentError::HostileEntry {
        archive: archive.to_owned(),
        entry: entry.display().to_string(),
        reason: reason.to_owned(),
    }
}

impl Walk<'_> {
    fn bad(&self, reason: String) -> AgentError {
        AgentError::BadArchive {
            archive: self.archive.to_owned(),
            reason,
        }
    }

    fn hostile(&self, entry: &Path, reason: &str) -> AgentError {
        walk_hostile(self.archive, entry, reason)
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
            check_entry_path(&path, self.allowed_top).map_err(|r| self.hostile(&path, r))?;
            // A tree archived from disk never has entries at or below a symlink:
            // one that does would write through the link.
            if path.ancestors().any(|a| self.links.contains(a)) {
                return Err(self.hostile(&path, "written through a symlink"));
            }
            let header = entry.header();
            let kind = header.entry_type();
            let mode = header.mode().unwrap_or(0o755);
            let owner = (header.uid().ok(), header.gid().ok());
            let size = entry.size();
            match kind {
                EntryType::Regular | EntryType::Continuous if size <= POOLED_FILE_MAX => {
                    let mtime = entry.header().mtime().unwrap_or(0);
                    self.parent_exists(&path)?;
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| unpack_error(self.archive, &path, e))?;
                    if data.len() as u64 != size {
                        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return Err(unpack_error(self.archive, &path, e));
                    }
                    let file = PooledFile {
                        at: self.dst.join(&path),
                        path,
                        data,
                        mode,
                        mtime,
                        owner,
                    };
                    if pool.send(file).is_err() {
                        return Ok(()); // every writer is gone: one failed
                    }
                    continue;
                }
                EntryType::Regular | EntryType::Directory | EntryType::Continuous => {}
                EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| self.bad(format!("unreadable link target: {e}")))?
                        .ok_or_else(|| self.hostile(&path, "symlink without a target"))?;
                    if escapes(&path, &target) {
                        return Err(self.hostile(&path, "symlink points outside the target"));
                    }
                    self.links.insert(path.clone());
                }
                EntryType::Link => return Err(self.hostile(&path, "hard links are not accepted")),
                EntryType::Char | EntryType::Block => {
                    return Err(self.hostile(&path, "device nodes are not accepted"));
                }
                EntryType::Fifo => return Err(self.hostile(&path, "FIFOs are not accepted")),
                _ => return Err(self.hostile(&path, "unsupported entry type")),
            }
            let unpacked = entry
                .unpack_in(self.dst)
                .map_err(|e| unpack_error(self.archive, &path, e))?;
            if !unpacked {
                return Err(self.hostile(&path, "refused by the extractor"));
            }
            let written = self.dst.join(&path);
            if kind == EntryType::Directory {
                set_mode(&written, mode | 0o700)?;
                self.dir_modes.push((written, mode));
                self.dirs.insert(path);
            }
        }
        drop(pool);
        // Reading on to the end checks the gzip trailer (CRC, length) or the zstd frame checksum.
        io::copy(&mut ar.into_inner(), &mut io::sink()).map_err(|e| self.bad(e.to_string()))?;
        Ok(())
    }

    /// Creates the parent of `path` when no entry made it (as `tar` does),
    /// so that a writer never has to.
    fn parent_exists(&mut self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.dirs.contains(parent) {
            return Ok(());
        }
        let at = self.dst.join(parent);
        std::fs::create_dir_all(&at).map_err(|e| unpack_error(self.archive, path, e))?;
        // As the extractor checks for what it writes: the parent, links
        // resolved, is inside the target. Once per directory.
        let real = std::fs::canonicalize(&at).map_err(|e| unpack_error(self.archive, path, e))?;
        if !real.starts_with(self.dst) {
            return Err(self.hostile(path, "written through a symlink"));
        }
        self.dirs.insert(parent.to_path_buf());
        Ok(())
    }
}

/// A small file read whole, waiting for a writer thread.
struct PooledFile {
    /// Where it goes on disk.
    at: PathBuf,
    /// Its path in the archive, for errors.
    path: PathBuf,
    data: Vec<u8>,
    mode: u32,
    mtime: u64,
    owner: (Option<u64>, Option<u64>),
}

impl PooledFile {
    /// Writes it as the extractor would: never over an existing entry (so
    /// never through a link), then owner, mode and modification time.
    fn write(&self, restore_owners: bool) -> io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.at)?;
        file.write_all(&self.data)?;
        if restore_owners {
            let to_u32 = |id: Option<u64>| id.and_then(|v| u32::try_from(v).ok());
            std::os::unix::fs::fchown(&file, to_u32(self.owner.0), to_u32(self.owner.1))?;
        }
        // After the owner: changing it clears set-user-ID bits.
        file.set_permissions(std::fs::Permissions::from_mode(self.mode & 0o7777))?;
        let mtime = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(self.mtime))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "modification time out of range")
            })?;
        file.set_modified(mtime)
    }
}

/// One writer thread: writes pooled files until the reader is done, and
/// records the first failure.
fn write_pooled(
    rx: &Mutex<mpsc::Receiver<PooledFile>>,
    failure: &Mutex<Option<AgentError>>,
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
        if let Err(e) = file.write(restore_owners) {
            let mut failed = failure.lock().expect("writer failure lock");
            failed.get_or_insert_with(|| unpack_error(archive, &file.path, e));
        }
    }
}

/// Whether the unpacked symlink `link` (relative to `dst`) resolves inside its
/// top directory (`data/`, `git/`, `src/`), following the links on its way
/// as the kernel would. Components that do not exist are taken as written,
/// so a dangling link inside the tree is fine.
fn resolves_inside(dst: &Path, link: &Path) -> bool {
    /// The kernel's limit on links followed in one lookup.
    const MAX_HOPS: usize = 40;
    let Some(Component::Normal(top)) = link.components().next() else {
        return false;
    };
    let top = dst.join(top);
    let link = dst.join(link);
    let Some(mut at) = link.parent().map(Path::to_path_buf) else {
        return false;
    };
    // Components still to walk, last first; `None` is `..`.
    let mut todo: Vec<Option<OsString>> = Vec::new();
    let follow = |todo: &mut Vec<Option<OsString>>, from: &Path| -> bool {
        match std::fs::read_link(from) {
            Ok(target) if !target.is_absolute() => {
                let steps = target.components().filter_map(|c| match c {
                    Component::Normal(n) => Some(Some(n.to_owned())),
                    Component::ParentDir => Some(None),
                    _ => None,
                });
                let steps: Vec<_> = steps.collect();
                todo.extend(steps.into_iter().rev());
                true
            }
            _ => false,
        }
    };
    if !follow(&mut todo, &link) {
        return false;
    }
    let mut hops = 0;
    while let Some(step) = todo.pop() {
        match step {
            None => {
                at.pop();
            }
            Some(name) => {
                let next = at.join(name);
                let is_link =
                    std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
                if !is_link {
                    at = next;
                } else {
                    hops += 1;
                    if hops > MAX_HOPS || !follow(&mut todo, &next) {
                        return false;
                    }
                }
            }
        }
        if !at.starts_with(&top) {
            return false;
        }
    }
    true
}

fn check_entry_path(path: &Path, allowed_top: &[&str]) -> std::result::Result<(), &'static str> {
    let mut components = path.components();
    match components.next() {
        Some(Component::Normal(top)) if allowed_top.iter().any(|a| top == *a) => {}
        Some(Component::RootDir | Component::Prefix(_)) => return Err("absolute path"),
        Some(Component::ParentDir) => return Err("path leaves the target"),
        _ => return Err("unexpected top-level directory"),
    }
    for c in components {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("path leaves the target"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(())
}

fn unpack_error(archive: &str, path: &Path, e: io::Error) -> AgentError {
    // The extractor wraps the real error in text naming the host's staging
    // path; what a user needs is the innermost cause, named by entry.
    let cause = innermost(&e);
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
            reason: format!("at {entry}: {cause}"),
        },
    }
}

/// The deepest error in a chain: the extractor's wrapper (which names the
/// host's staging path) reports the real cause as its `source`.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| AgentError::io("setting directory modes", e))
}
