//! Packing an app tree into a compressed tar, on the calling (blocking)
//! thread: plain `Read`/`Write` with large buffers and no per-file trips
//! through the async runtime, so one archive moves at the speed of its
//! compressor.
//!
//! Everything a restore needs to put a tree back as it was goes in:
//! modes, owners and times; symlinks as written (wherever they point);
//! hard links as links; sparse files as GNU sparse entries (their holes
//! are not stored, and come back as holes); FIFOs; extended attributes and
//! POSIX ACLs as PAX records. Sockets and device nodes cannot be restored
//! meaningfully and are listed as skipped, with the reason.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use hop3_proto::layout::Skipped;
use rustix::fs::{FileType, Mode, OFlags, SeekFrom, Stat};
use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

use super::{Codec, walk, xattrs};
use crate::error::{AgentError, Result};
use hop3_wire::progress::Progress;

/// gzip level for format 1.0 archives: fast, since most of the time of a
/// backup is compression; `tar -xzf` reads any level.
const GZIP_LEVEL: u32 = 3;

/// zstd level for format 1.1 archives, compressed on all cores.
const ZSTD_LEVEL: i32 = 3;

/// Size of file reads and of the buffer in front of the compressor: few
/// syscalls and few compressor calls per MiB.
const IO_BUFFER: usize = 1024 * 1024;

/// What disk space is counted in: a file occupies whole blocks, and so
/// does every directory.
const DISK_BLOCK: u64 = 4096;

/// A tree to pack: its name in the archive (`data`) and its open directory.
pub struct Member {
    pub name: &'static str,
    pub dir: OwnedFd,
}

/// What packing learnt besides the bytes.
#[derive(Debug, Default)]
pub struct Packed {
    /// Entries left out, and why.
    pub skipped: Vec<Skipped>,
    /// Disk space each tree takes once unpacked: file data without holes,
    /// in whole blocks, each hard-linked file once, a block per directory.
    pub sizes: BTreeMap<String, u64>,
}

/// Writes a compressed tar of `members` into `out` and hands `out` back once
/// the compressor has finished. Blocking: call it from a blocking thread.
pub fn pack<W: Write>(
    members: Vec<Member>,
    out: W,
    codec: Codec,
    progress: &dyn Progress,
) -> Result<(W, Packed)> {
    let write_err = |e| AgentError::io("writing the archive", e);
    match codec {
        Codec::None => tar_into(members, out, progress),
        Codec::Gzip => {
            let encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            let (encoder, packed) = tar_into(members, encoder, progress)?;
            Ok((encoder.finish().map_err(write_err)?, packed))
        }
        Codec::Zstd => {
            let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(write_err)?;
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            // The frame checksum lets a reader catch damage the tar layer
            // would miss; jobs smaller than zstd's default (4x the window)
            // keep each worker's buffers, and so the agent's memory, small.
            encoder.multithread(workers).map_err(write_err)?;
            encoder
                .set_parameter(zstd::stream::raw::CParameter::JobSize(1024 * 1024))
                .map_err(write_err)?;
            encoder.include_checksum(true).map_err(write_err)?;
            let (encoder, packed) = tar_into(members, encoder, progress)?;
            Ok((encoder.finish().map_err(write_err)?, packed))
        }
    }
}

/// Writes the tar of `members` into `encoder` and hands it back, flushed.
fn tar_into<E: Write>(
    members: Vec<Member>,
    encoder: E,
    progress: &dyn Progress,
) -> Result<(E, Packed)> {
    let mut builder = Builder::new(BufWriter::with_capacity(IO_BUFFER, encoder));
    let mut packed = Packed::default();
    for member in members {
        let mut tree = Tree {
            builder: &mut builder,
            progress,
            packed: &mut packed,
            size: 0,
            linked: HashMap::new(),
        };
        walk::walk(member.dir, Path::new(member.name), &mut |node| {
            tree.append(node)
        })?;
        let size = tree.size;
        packed.sizes.insert(member.name.to_owned(), size);
    }
    let write_err = |e: io::Error| AgentError::io("writing the archive", e);
    let encoder = builder
        .into_inner()
        .map_err(write_err)?
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    Ok((encoder, packed))
}

/// Packing one tree.
struct Tree<'a, W: Write> {
    builder: &'a mut Builder<W>,
    progress: &'a dyn Progress,
    packed: &'a mut Packed,
    /// Disk space of the tree so far.
    size: u64,
    /// Files with several links met so far, by (device, inode): the path
    /// that holds their content. Only within one tree: a link between two
    /// trees could not be made on restore if they land on two volumes.
    linked: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Tree<'_, W> {
    fn append(&mut self, node: &walk::Node<'_>) -> Result<()> {
        let path = node.path;
        let shown = || path.display().to_string();
        let write_err = |e| AgentError::io(format!("archiving {}", shown()), e);
        match node.kind() {
            FileType::Directory => {
                let dir = node.dir.expect("directories come open");
                self.xattrs(path, dir)?;
                let mut header = header(node.stat, EntryType::Directory);
                self.builder
                    .append_data(&mut header, path, io::empty())
                    .map_err(write_err)?;
                self.size += DISK_BLOCK;
            }
            FileType::RegularFile => self.file(node)?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(node.parent, node.name, Vec::new())
                    .map_err(|e| AgentError::io(format!("reading link {}", shown()), e.into()))?;
                let target = std::ffi::OsString::from_vec(target.into_bytes());
                let mut header = header(node.stat, EntryType::Symlink);
                self.builder
                    .append_link(&mut header, path, &target)
                    .map_err(write_err)?;
            }
            FileType::Fifo => {
                let mut header = header(node.stat, EntryType::Fifo);
                self.builder
                    .append_data(&mut header, path, io::empty())
                    .map_err(write_err)?;
            }
            FileType::Socket => {
                self.skip(path, "a socket: its program makes it anew when it starts")
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                self.skip(path, "a device node: apps do not own devices")
            }
            FileType::Unknown => self.skip(path, "of an unknown file type"),
        }
        Ok(())
    }

    fn skip(&mut self, path: &Path, reason: &str) {
        tracing::warn!(entry = %path.display(), reason, "left out of the backup");
        self.packed.skipped.push(Skipped {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        });
    }

    /// Writes a PAX header with `fd`'s extended attributes, if it has any,
    /// for the entry that follows.
    fn xattrs(&mut self, path: &Path, fd: impl AsFd) -> Result<()> {
        let found = xattrs::read(fd)
            .map_err(|e| AgentError::io(format!("reading attributes of {}", path.display()), e))?;
        if found.is_empty() {
            return Ok(());
        }
        let records = xattrs::pax_records(&found);
        let mut header = Header::new_ustar();
        header.set_path("PaxHeader").expect("a short relative path");
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(records.len() as u64);
        header.set_cksum();
        self.builder
            .append(&header, &records[..])
            .map_err(|e| AgentError::io(format!("archiving {}", path.display()), e))
    }

    fn file(&mut self, node: &walk::Node<'_>) -> Result<()> {
        let path = node.path;
        let changed = || AgentError::FileChanged(path.to_path_buf());
        let file = match rustix::fs::openat(
            node.parent,
            node.name,
            // NONBLOCK: a file swapped for a FIFO meanwhile must not hang the
            // backup waiting for a writer (its type is checked just after).
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            // Replaced by a link or removed since it was listed.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT) => return Err(changed()),
            Err(e) => {
                return Err(AgentError::io(
                    format!("opening {}", path.display()),
                    e.into(),
                ));
            }
        };
        let stat = rustix::fs::fstat(&file)
            .map_err(|e| AgentError::io(format!("reading {}", path.display()), e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
            || stat.st_ino != node.stat.st_ino
        {
            return Err(changed());
        }
        let write_err = |e| AgentError::io(format!("archiving {}", path.display()), e);
        if stat.st_nlink > 1 {
            let key = (stat.st_dev, stat.st_ino);
            if let Some(first) = self.linked.get(&key) {
                let mut header = header(&stat, EntryType::Link);
                return self
                    .builder
                    .append_link(&mut header, path, first)
                    .map_err(write_err);
            }
            self.linked.insert(key, path.to_path_buf());
        }
        self.xattrs(path, &file)?;
        let size = stat.st_size as u64;
        let segments = data_segments(&file, &stat)
            .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?;
        if segments.is_none() {
            // Looking for holes may have moved the file's offset.
            rustix::fs::seek(&file, SeekFrom::Start(0))
                .map_err(|e| AgentError::io(format!("reading {}", path.display()), e.into()))?;
        }
        let mut header = header(&stat, EntryType::Regular);
        header.set_size(size);
        let (data, stored): (Box<dyn Read + '_>, u64) = match &segments {
            None => (Box::new(file.take(size)), size),
            Some(segments) => {
                let stored = segments.iter().map(|s| s.1).sum();
                set_sparse(&mut header, segments, size, stored);
                let ext = extension_headers(segments);
                let reader = SegmentReader {
                    file,
                    segments: segments.iter().rev().copied().collect(),
                    left: 0,
                };
                (Box::new(io::Cursor::new(ext).chain(reader)), stored)
            }
        };
        self.size += match &segments {
            None => size.div_ceil(DISK_BLOCK) * DISK_BLOCK,
            Some(segments) => segments
                .iter()
                .map(|s| s.1.div_ceil(DISK_BLOCK) * DISK_BLOCK)
                .sum(),
        };
        // The header already promises `stored` bytes: never write more (a
        // growing log), and refuse fewer (a file truncated meanwhile).
        let counted = CountingReader {
            inner: data,
            count: 0,
            progress: self.progress,
        };
        let mut reader = BufReader::with_capacity(IO_BUFFER.min(stored as usize + 1), counted);
        self.builder
            .append_data(&mut header, path, &mut reader)
            .map_err(write_err)?;
        let counted = reader.get_ref();
        let ext_len = segments.as_ref().map_or(0, |s| extension_count(s) * 512);
        if counted.count != stored + ext_len as u64 {
            return Err(changed());
        }
        Ok(())
    }
}

/// A GNU header for an entry of `kind` with `stat`'s mode, owner and time.
fn header(stat: &Stat, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(stat.st_uid.into());
    header.set_gid(stat.st_gid.into());
    // Times before 1970 are rare enough to come back as 1970.
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

/// Where a sparse file holds data: `(offset, length)` runs, each starting
/// and ending on a 512-byte boundary (the tar format wants that) but the
/// last, which ends at the file's end. None for a file without holes.
fn data_segments(file: &File, stat: &Stat) -> io::Result<Option<Vec<(u64, u64)>>> {
    let size = stat.st_size as u64;
    // A file with all its blocks allocated has no holes: no need to ask.
    if size == 0 || (stat.st_blocks as u64) * 512 >= size {
        return Ok(None);
    }
    let mut segments: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A file system without SEEK_DATA: store the file whole.
            Err(rustix::io::Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            Err(e) => return Err(e.into()),
        };
        let start = start / 512 * 512;
        let end = end.div_ceil(512).saturating_mul(512).min(size);
        match segments.last_mut() {
            Some(last) if last.0 + last.1 >= start => last.1 = end - last.0,
            _ => segments.push((start, end - start)),
        }
        at = end;
    }
    // A trailing hole is marked by an empty run at the file's end.
    if segments.last().is_none_or(|s| s.0 + s.1 < size) {
        segments.push((size, 0));
    }
    Ok(Some(segments))
}

/// Turns `header` into an old-GNU sparse header for `segments` (the first
/// four; the rest go into extension headers).
fn set_sparse(header: &mut Header, segments: &[(u64, u64)], size: u64, stored: u64) {
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(stored);
    let gnu = header.as_gnu_mut().expect("a GNU header");
    gnu.set_real_size(size);
    for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(segments) {
        slot.set_offset(*offset);
        slot.set_length(*len);
    }
    gnu.set_is_extended(segments.len() > gnu.sparse.len());
}

/// Runs that do not fit in the main header: 21 per extension header.
fn extension_count(segments: &[(u64, u64)]) -> usize {
    segments.len().saturating_sub(4).div_ceil(21)
}

fn extension_headers(segments: &[(u64, u64)]) -> Vec<u8> {
    let rest = segments.get(4..).unwrap_or_default();
    let mut out = Vec::with_capacity(extension_count(segments) * 512);
    let chunks: Vec<_> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ext = GnuExtSparseHeader::new();
        for (slot, (offset, len)) in ext.sparse.iter_mut().zip(chunk.iter()) {
            slot.set_offset(*offset);
            slot.set_length(*len);
        }
        ext.set_is_extended(i + 1 < chunks.len());
        out.extend_from_slice(ext.as_bytes());
    }
    out
}

/// Reads the data runs of a sparse file, one after another.
struct SegmentReader {
    file: File,
    /// Runs still to read, last first.
    segments: Vec<(u64, u64)>,
    /// Bytes left in the run being read.
    left: u64,
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Seek;
        while self.left == 0 {
            let Some((offset, len)) = self.segments.pop() else {
                return Ok(0);
            };
            self.file.seek(io::SeekFrom::Start(offset))?;
            self.left = len;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            // Shorter than when it was mapped: the caller sees the count fall short.
            self.left = 0;
            self.segments.clear();
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts bytes read and reports them as progress.
struct CountingReader<'a, R> {
    inner: R,
    count: u64,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if n > 0 {
            self.progress.advance(n as u64);
        }
        Ok(n)
    }
}
