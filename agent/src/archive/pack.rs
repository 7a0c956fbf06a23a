//! Packing an app tree into a compressed tar, on the calling (blocking)
//! thread: plain `Read`/`Write` with large buffers and no per-file trips
//! through the async runtime, so one archive moves at the speed of its
//! compressor.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header, HeaderMode};

use super::{Codec, escapes};
use crate::error::{AgentError, Result};
use crate::progress::Progress;

/// gzip level for format 1.0 archives: fast, since most of the time of a
/// backup is compression; `tar -xzf` reads any level.
const GZIP_LEVEL: u32 = 3;

/// zstd level for format 1.1 archives, compressed on all cores.
const ZSTD_LEVEL: i32 = 3;

/// Size of file reads and of the buffer in front of the compressor: few
/// syscalls and few compressor calls per MiB.
const IO_BUFFER: usize = 1024 * 1024;

/// Writes a compressed tar of `members` (name in the archive, directory on
/// disk) into `out` and hands `out` back once the compressor has finished.
/// Missing members are left out. Blocking: call it from a blocking thread.
pub fn pack<W: Write>(
    members: &[(&str, PathBuf)],
    out: W,
    codec: Codec,
    progress: &dyn Progress,
) -> Result<W> {
    let write_err = |e| AgentError::io("writing the archive", e);
    match codec {
        Codec::Gzip => {
            let encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            tar_into(members, encoder, progress)?
                .finish()
                .map_err(write_err)
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
            tar_into(members, encoder, progress)?
                .finish()
                .map_err(write_err)
        }
    }
}

/// Writes the tar of `members` into `encoder` and hands it back, flushed.
fn tar_into<E: Write>(
    members: &[(&str, PathBuf)],
    encoder: E,
    progress: &dyn Progress,
) -> Result<E> {
    let mut builder = Builder::new(BufWriter::with_capacity(IO_BUFFER, encoder));
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    for (name, dir) in members {
        match std::fs::symlink_metadata(dir) {
            Ok(_) => append_tree(&mut builder, Path::new(name), dir, progress)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AgentError::io(format!("reading {name}/"), e)),
        }
    }
    let write_err = |e: io::Error| AgentError::io("writing the archive", e);
    builder
        .into_inner()
        .map_err(write_err)?
        .into_inner()
        .map_err(|e| write_err(e.into_error()))
}

/// Appends `dir` and everything below it, depth first in name order, without
/// following symlinks.
fn append_tree<W: Write>(
    builder: &mut Builder<W>,
    name: &Path,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut stack = vec![(name.to_path_buf(), dir.to_path_buf())];
    while let Some((name, path)) = stack.pop() {
        let shown = || name.display().to_string();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| AgentError::io(format!("reading {}", shown()), e))?;
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
        let write_err = |e| AgentError::io(format!("archiving {}", shown()), e);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &name, io::empty())
                .map_err(write_err)?;
            let listing_err = |e| AgentError::io(format!("listing {}", shown()), e);
            let mut children = std::fs::read_dir(&path)
                .map_err(listing_err)?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
                .map_err(listing_err)?;
            // Reverse order on the stack pops them in name order.
            children.sort_by(|a, b| b.cmp(a));
            for child in children {
                stack.push((name.join(&child), path.join(&child)));
            }
        } else if ft.is_file() {
            let size = meta.len();
            let file =
                File::open(&path).map_err(|e| AgentError::io(format!("opening {}", shown()), e))?;
            // The header already promises `size` bytes: never write more (a
            // growing log), and refuse fewer (a file truncated meanwhile).
            let counted = CountingReader {
                inner: file.take(size),
                count: 0,
                progress,
            };
            let mut reader = BufReader::with_capacity(IO_BUFFER.min(size as usize + 1), counted);
            builder
                .append_data(&mut header, &name, &mut reader)
                .map_err(write_err)?;
            if reader.get_ref().count != size {
                return Err(AgentError::FileChanged(name));
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| AgentError::io(format!("reading link {}", shown()), e))?;
            if escapes(&name, &target) {
                tracing::warn!(entry = %shown(), "symlink points outside the app; a restore will refuse it");
            }
            header.set_size(0);
            header.set_entry_type(EntryType::Symlink);
            builder
                .append_link(&mut header, &name, &target)
                .map_err(write_err)?;
        } else {
            tracing::warn!(entry = %shown(), "skipping a special file (socket, FIFO or device)");
        }
    }
    Ok(())
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
