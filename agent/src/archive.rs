//! gzip tar archives of app trees: packing with modes, symlinks and empty
//! directories kept, and unpacking that refuses anything that could land
//! outside the target.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use async_compression::tokio::write::{GzipEncoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio_stream::StreamExt;
use tokio_tar::{Archive, ArchiveBuilder, Builder, EntryType, Header, HeaderMode};

use crate::error::{AgentError, Result};
use crate::progress::Progress;

/// gzip level for format 1.0 archives: fast, since most of the time of a
/// backup is compression; `tar -xzf` reads any level.
const GZIP_LEVEL: i32 = 3;

/// zstd level for format 1.1 archives, compressed on all cores.
const ZSTD_LEVEL: i32 = 3;

/// How an archive is compressed: gzip (format 1.0) or zstd (format 1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    /// The codec of a backup format version ("" is the default, 1.0).
    pub fn for_format(format: &str) -> Result<Self> {
        match format {
            "" | "1.0" => Ok(Self::Gzip),
            "1.1" => Ok(Self::Zstd),
            other => Err(AgentError::Protocol(format!(
                "unknown backup format {:?} (this agent writes 1.0 and 1.1)",
                other.chars().take(20).collect::<String>()
            ))),
        }
    }

    /// The file name of archive `stem` ("source", "data").
    pub fn file(self, stem: &str) -> String {
        match self {
            Self::Gzip => format!("{stem}.tar.gz"),
            Self::Zstd => format!("{stem}.tar.zst"),
        }
    }

    /// The codec and stem of an archive's file name.
    pub fn of_file(name: &str) -> Option<(Self, &str)> {
        name.strip_suffix(".tar.gz")
            .map(|stem| (Self::Gzip, stem))
            .or_else(|| name.strip_suffix(".tar.zst").map(|stem| (Self::Zstd, stem)))
    }
}

/// Writes a compressed tar of `members` (name in the archive, directory on
/// disk) into `out`, then flushes and shuts `out` down and hands it back.
/// Missing members are left out.
pub async fn pack<W>(
    members: &[(&str, PathBuf)],
    out: W,
    codec: Codec,
    progress: &dyn Progress,
) -> Result<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    match codec {
        Codec::Gzip => {
            let encoder = GzipEncoder::with_quality(out, Level::Precise(GZIP_LEVEL));
            Ok(tar_into(members, encoder, progress).await?.into_inner())
        }
        Codec::Zstd => {
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            // The frame checksum lets a reader catch damage the tar layer
            // would miss; jobs smaller than zstd's default (4x the window)
            // keep each worker's buffers, and so the agent's memory, small.
            let params = [
                CParameter::nb_workers(workers),
                CParameter::job_size(2 * 1024 * 1024),
                CParameter::checksum_flag(true),
            ];
            let encoder =
                ZstdEncoder::with_quality_and_params(out, Level::Precise(ZSTD_LEVEL), &params);
            Ok(tar_into(members, encoder, progress).await?.into_inner())
        }
    }
}

/// Writes the tar of `members` into `encoder` and shuts it down.
async fn tar_into<E>(members: &[(&str, PathBuf)], encoder: E, progress: &dyn Progress) -> Result<E>
where
    E: AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(encoder);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    for (name, dir) in members {
        match tokio::fs::symlink_metadata(dir).await {
            Ok(_) => append_tree(&mut builder, Path::new(name), dir, progress).await?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AgentError::io(format!("reading {name}/"), e)),
        }
    }
    let write_err = |e| AgentError::io("writing the archive", e);
    builder.finish().await.map_err(write_err)?;
    let mut encoder = builder.into_inner().await.map_err(write_err)?;
    encoder.shutdown().await.map_err(write_err)?;
    Ok(encoder)
}

/// Appends `dir` and everything below it, depth first in name order, without
/// following symlinks.
async fn append_tree<W>(
    builder: &mut Builder<W>,
    name: &Path,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<()>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut stack = vec![(name.to_path_buf(), dir.to_path_buf())];
    while let Some((name, path)) = stack.pop() {
        let shown = || name.display().to_string();
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| AgentError::io(format!("reading {}", shown()), e))?;
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
        let write_err = |e| AgentError::io(format!("archiving {}", shown()), e);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &name, tokio::io::empty())
                .await
                .map_err(write_err)?;
            let mut children = Vec::new();
            let mut rd = tokio::fs::read_dir(&path)
                .await
                .map_err(|e| AgentError::io(format!("listing {}", shown()), e))?;
            while let Some(entry) = rd
                .next_entry()
                .await
                .map_err(|e| AgentError::io(format!("listing {}", shown()), e))?
            {
                children.push(entry.file_name());
            }
            // Reverse order on the stack pops them in name order.
            children.sort_by(|a, b| b.cmp(a));
            for child in children {
                stack.push((name.join(&child), path.join(&child)));
            }
        } else if ft.is_file() {
            let size = meta.len();
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| AgentError::io(format!("opening {}", shown()), e))?;
            // The header already promises `size` bytes: never write more (a
            // growing log), and refuse fewer (a file truncated meanwhile).
            let mut reader = CountingReader {
                // Large reads: each read of a tokio File is a trip to the blocking pool.
                inner: tokio::io::BufReader::with_capacity(256 * 1024, file.take(size)),
                count: 0,
                progress,
            };
            builder
                .append_data(&mut header, &name, &mut reader)
                .await
                .map_err(write_err)?;
            if reader.count != size {
                return Err(AgentError::FileChanged(name));
            }
        } else if ft.is_symlink() {
            let target = tokio::fs::read_link(&path)
                .await
                .map_err(|e| AgentError::io(format!("reading link {}", shown()), e))?;
            if escapes(&name, &target) {
                tracing::warn!(entry = %shown(), "symlink points outside the app; a restore will refuse it");
            }
            header.set_size(0);
            header.set_entry_type(EntryType::Symlink);
            header.set_link_name(&target).map_err(write_err)?;
            builder
                .append_data(&mut header, &name, tokio::io::empty())
                .await
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

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.count += n;
        if n > 0 {
            self.progress.advance(n);
        }
        res
    }
}

/// Whether a symlink at `entry` (a relative archive path) with `target`
/// resolves outside the archive's top directory.
fn escapes(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    // Depth of the link's parent below the archive root.
    let mut depth = entry.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        // Depth 0 is the archive root itself (e.g. above `data/`): outside the tree.
        if depth < 1 {
            return true;
        }
    }
    false
}

/// Unpacks a compressed tar from `input` into `dst` (which must exist), accepting
/// only regular files, directories and symlinks whose paths start with one of
/// `allowed_top` and stay inside it. Anything else fails with the entry named,
/// and the caller throws the partly filled `dst` away.
pub async fn unpack<R>(
    archive: &str,
    input: R,
    codec: Codec,
    dst: &Path,
    allowed_top: &[&str],
) -> Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let bad = |reason: String| AgentError::BadArchive {
        archive: archive.to_owned(),
        reason,
    };
    let hostile = |entry: &Path, reason: &str| AgentError::HostileEntry {
        archive: archive.to_owned(),
        entry: entry.display().to_string(),
        reason: reason.to_owned(),
    };
    let dst = tokio::fs::canonicalize(dst)
        .await
        .map_err(|e| AgentError::io("opening the staging directory", e))?;
    let buffered = BufReader::with_capacity(hop3_proto::CHUNK_SIZE, input);
    let decoder: Box<dyn AsyncRead + Unpin + Send> = match codec {
        Codec::Gzip => Box::new(GzipDecoder::new(buffered)),
        Codec::Zstd => Box::new(ZstdDecoder::new(buffered)),
    };
    let mut ar: Archive<_> = ArchiveBuilder::new(decoder)
        .set_preserve_permissions(true)
        .set_preserve_mtime(true)
        .set_allow_external_symlinks(false)
        .set_overwrite(false)
        .set_unpack_xattrs(false)
        .build();
    let mut memo = Default::default();
    // Only root can give files away; anyone else keeps them as their own, as tar does.
    let restore_owners = rustix::process::geteuid().is_root();
    // Directories are made owner-writable while unpacking so their content can
    // be written, and get their archived modes back at the end, deepest first.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut links: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    {
        let mut entries = ar.entries().map_err(|e| bad(e.to_string()))?;
        while let Some(entry) = entries.next().await {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry
                .path()
                .map_err(|e| bad(format!("unreadable entry path: {e}")))?
                .into_owned();
            check_entry_path(&path, allowed_top).map_err(|r| hostile(&path, r))?;
            // A tree archived from disk never has entries below a symlink: one
            // that does would write through the link.
            if path.ancestors().skip(1).any(|a| links.contains(a)) {
                return Err(hostile(&path, "written through a symlink"));
            }
            let kind = entry.header().entry_type();
            if kind == EntryType::Symlink {
                links.insert(path.clone());
            }
            match kind {
                EntryType::Regular | EntryType::Directory | EntryType::Continuous => {}
                EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| bad(format!("unreadable link target: {e}")))?
                        .ok_or_else(|| hostile(&path, "symlink without a target"))?;
                    if escapes(&path, &target) {
                        return Err(hostile(&path, "symlink points outside the target"));
                    }
                }
                EntryType::Link => return Err(hostile(&path, "hard links are not accepted")),
                EntryType::Char | EntryType::Block => {
                    return Err(hostile(&path, "device nodes are not accepted"));
                }
                EntryType::Fifo => return Err(hostile(&path, "FIFOs are not accepted")),
                _ => return Err(hostile(&path, "unsupported entry type")),
            }
            let mode = entry.header().mode().unwrap_or(0o755);
            let owner = (entry.header().uid().ok(), entry.header().gid().ok());
            let unpacked = entry
                .unpack_in_raw(&dst, &mut memo)
                .await
                .map_err(|e| unpack_error(archive, &path, e))?;
            let Some(written) = unpacked else {
                return Err(hostile(&path, "refused by the extractor"));
            };
            if restore_owners {
                chown(&written, owner).await?;
            }
            if kind == EntryType::Directory {
                set_mode(&written, mode | 0o700).await?;
                dir_modes.push((written, mode));
            }
        }
    }
    // Reading on to the end checks the gzip trailer (CRC, length) or the zstd frame checksum.
    let mut rest = ar
        .into_inner()
        .map_err(|_| bad("archive still in use".into()))?;
    let mut sink = tokio::io::sink();
    tokio::io::copy(&mut rest, &mut sink)
        .await
        .map_err(|e| bad(e.to_string()))?;
    for (dir, mode) in dir_modes.iter().rev() {
        set_mode(dir, *mode).await?;
    }
    Ok(())
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

/// Gives an unpacked entry (a symlink itself, never its target) its archived owner.
async fn chown(path: &Path, (uid, gid): (Option<u64>, Option<u64>)) -> Result<()> {
    let path = path.to_path_buf();
    let to_u32 = |id: Option<u64>| id.and_then(|v| u32::try_from(v).ok());
    let (uid, gid) = (to_u32(uid), to_u32(gid));
    tokio::task::spawn_blocking(move || std::os::unix::fs::lchown(&path, uid, gid))
        .await
        .expect("chown task")
        .map_err(|e| AgentError::io("restoring file owners", e))
}

async fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .await
        .map_err(|e| AgentError::io("setting directory modes", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn escaping_symlinks() {
        let p = Path::new;
        assert!(!escapes(p("data/a/link"), p("../b")));
        assert!(!escapes(p("data/link"), p("missing-file")));
        assert!(escapes(p("data/link"), p("../../etc")));
        assert!(escapes(p("data/link"), p("..")));
        assert!(escapes(p("data/link"), p("/etc/passwd")));
        assert!(escapes(p("data/a/link"), p("../../x")));
    }

    #[tokio::test]
    async fn round_trip_keeps_modes_links_and_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src-data");
        std::fs::create_dir_all(src.join("nested/empty")).unwrap();
        std::fs::write(src.join("nested/file with space.txt"), b"hello").unwrap();
        std::fs::write(src.join("données.bin"), [0u8, 1, 2, 255]).unwrap();
        std::fs::write(src.join("run.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        symlink("nested/file with space.txt", src.join("link")).unwrap();
        std::fs::create_dir(src.join("ro")).unwrap();
        std::fs::write(src.join("ro/inside"), b"x").unwrap();
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();

        let buf = pack(
            &[("data", src.clone())],
            Vec::new(),
            Codec::Gzip,
            &NoProgress,
        )
        .await
        .unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(
            "data.tar.gz",
            std::io::Cursor::new(buf),
            Codec::Gzip,
            &out,
            &["data"],
        )
        .await
        .unwrap();
        let d = out.join("data");
        assert_eq!(
            std::fs::read(d.join("nested/file with space.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::read(d.join("données.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert!(d.join("nested/empty").is_dir());
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.join("run.sh")), 0o755);
        assert_eq!(mode(&d.join("ro")), 0o555);
        assert_eq!(
            std::fs::read_link(d.join("link")).unwrap(),
            Path::new("nested/file with space.txt")
        );
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn zstd_round_trip_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let body: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(src.join("sub/f"), &body).unwrap();
        let buf = pack(&[("data", src)], Vec::new(), Codec::Zstd, &NoProgress)
            .await
            .unwrap();
        assert_eq!(&buf[..4], [0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(
            "data.tar.zst",
            std::io::Cursor::new(buf.clone()),
            Codec::Zstd,
            &out,
            &["data"],
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(out.join("data/sub/f")).unwrap(), body);
        for cut in [buf.len() - 2, buf.len() / 2] {
            let out = tempfile::tempdir().unwrap();
            let res = unpack(
                "data.tar.zst",
                std::io::Cursor::new(buf[..cut].to_vec()),
                Codec::Zstd,
                out.path(),
                &["data"],
            )
            .await;
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }

    #[tokio::test]
    async fn owners_come_back_when_root() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: only root can restore owners");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("owned"), b"x").unwrap();
        symlink("owned", src.join("link")).unwrap();
        std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(4321)).unwrap();
        std::os::unix::fs::lchown(src.join("link"), Some(1235), Some(4322)).unwrap();
        let buf = pack(&[("data", src)], Vec::new(), Codec::Gzip, &NoProgress)
            .await
            .unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(
            "data.tar.gz",
            std::io::Cursor::new(buf),
            Codec::Gzip,
            &out,
            &["data"],
        )
        .await
        .unwrap();
        let f = std::fs::symlink_metadata(out.join("data/owned")).unwrap();
        assert_eq!((f.uid(), f.gid()), (1234, 4321));
        let l = std::fs::symlink_metadata(out.join("data/link")).unwrap();
        assert_eq!((l.uid(), l.gid()), (1235, 4322));
    }

    async fn archive_with(build: impl FnOnce(&mut tar_sync::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar_sync::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = GzipEncoder::new(Vec::new());
        gz.write_all(&tar).await.unwrap();
        gz.shutdown().await.unwrap();
        gz.into_inner()
    }

    mod tar_sync {
        //! A minimal raw tar writer for hostile test archives, which the
        //! real builders refuse to produce.
        pub struct Builder<W> {
            out: W,
        }
        impl Builder<Vec<u8>> {
            pub fn new(out: Vec<u8>) -> Self {
                Self { out }
            }
            pub fn entry(&mut self, name: &str, kind: u8, link: &str, data: &[u8]) {
                let mut h = [0u8; 512];
                h[..name.len()].copy_from_slice(name.as_bytes());
                h[100..107].copy_from_slice(b"0000644");
                h[108..115].copy_from_slice(b"0000000");
                h[116..123].copy_from_slice(b"0000000");
                let size = format!("{:011o}", data.len());
                h[124..135].copy_from_slice(size.as_bytes());
                h[136..147].copy_from_slice(b"00000000000");
                h[156] = kind;
                h[157..157 + link.len()].copy_from_slice(link.as_bytes());
                h[257..263].copy_from_slice(b"ustar\0");
                h[263..265].copy_from_slice(b"00");
                h[148..156].copy_from_slice(b"        ");
                let sum: u32 = h.iter().map(|&b| b as u32).sum();
                let cks = format!("{sum:06o}\0 ");
                h[148..156].copy_from_slice(cks.as_bytes());
                self.out.extend_from_slice(&h);
                self.out.extend_from_slice(data);
                let pad = (512 - data.len() % 512) % 512;
                self.out.extend(std::iter::repeat_n(0, pad));
            }
            pub fn into_inner(mut self) -> std::io::Result<Vec<u8>> {
                self.out.extend(std::iter::repeat_n(0, 1024));
                Ok(self.out)
            }
        }
    }

    #[tokio::test]
    async fn refuses_hostile_entries() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                archive_with(|b| b.entry("data/../../evil", b'0', "", b"x")).await,
            ),
            (
                "absolute",
                archive_with(|b| b.entry("/tmp/evil", b'0', "", b"x")).await,
            ),
            (
                "top",
                archive_with(|b| b.entry("other/file", b'0', "", b"x")).await,
            ),
            (
                "symlink out",
                archive_with(|b| b.entry("data/l", b'2', "../../..", b"")).await,
            ),
            (
                "symlink abs",
                archive_with(|b| b.entry("data/l", b'2', "/etc", b"")).await,
            ),
            (
                "hardlink",
                archive_with(|b| b.entry("data/h", b'1', "/etc/passwd", b"")).await,
            ),
            (
                "fifo",
                archive_with(|b| b.entry("data/f", b'6', "", b"")).await,
            ),
            (
                "device",
                archive_with(|b| b.entry("data/d", b'3', "", b"")).await,
            ),
            (
                "file below an in-tree symlink",
                archive_with(|b| {
                    b.entry("data/sub", b'5', "", b"");
                    b.entry("data/l", b'2', "sub", b"");
                    b.entry("data/l/x", b'0', "", b"x");
                })
                .await,
            ),
            (
                "write through symlink",
                archive_with(|b| {
                    b.entry("data/l", b'2', "sub", b"");
                    b.entry("data/l", b'0', "", b"x");
                })
                .await,
            ),
        ];
        for (what, bytes) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let res = unpack(
                "data.tar.gz",
                std::io::Cursor::new(bytes),
                Codec::Gzip,
                tmp.path(),
                &["data"],
            )
            .await;
            assert!(res.is_err(), "{what} accepted");
        }
    }

    #[tokio::test]
    async fn refuses_truncated_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), vec![7u8; 100_000]).unwrap();
        let buf = pack(&[("data", src)], Vec::new(), Codec::Gzip, &NoProgress)
            .await
            .unwrap();
        for cut in [buf.len() - 4, buf.len() / 2, 10] {
            let out = tempfile::tempdir().unwrap();
            let res = unpack(
                "data.tar.gz",
                std::io::Cursor::new(buf[..cut].to_vec()),
                Codec::Gzip,
                out.path(),
                &["data"],
            )
            .await;
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }
}
