//! Compressed tar archives of app trees: packing with modes, symlinks and
//! empty directories kept, and unpacking that refuses anything that could
//! land outside the target.

mod pack;
mod unpack;

use std::path::{Component, Path};

pub use pack::pack;
pub use unpack::unpack;

use crate::error::{AgentError, Result};

/// How an archive is compressed: gzip (format 1.0) or zstd (format 1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    /// The codec of a backup format version ("" is the default, 1.1).
    pub fn for_format(format: &str) -> Result<Self> {
        match format {
            "1.0" => Ok(Self::Gzip),
            "" | "1.1" => Ok(Self::Zstd),
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

/// Whether a symlink at `entry` (a relative archive path) with `target`
/// resolves outside the archive's top directory.
pub(crate) fn escapes(entry: &Path, target: &Path) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// Packs `src` as `data/` with `codec` and unpacks it into `tmp/out`.
    fn round_trip(src: &Path, tmp: &Path, codec: Codec) -> std::path::PathBuf {
        let buf = pack(
            &[("data", src.to_path_buf())],
            Vec::new(),
            codec,
            &NoProgress,
        )
        .unwrap();
        let out = tmp.join("out");
        std::fs::create_dir(&out).unwrap();
        let name = codec.file("data");
        unpack(&name, std::io::Cursor::new(buf), codec, &out, &["data"]).unwrap();
        out
    }

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

    #[test]
    fn round_trip_keeps_modes_links_and_empty_dirs() {
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

        let out = round_trip(&src, tmp.path(), Codec::Gzip);
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

    #[test]
    fn zstd_round_trip_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let body: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(src.join("sub/f"), &body).unwrap();
        let buf = pack(&[("data", src)], Vec::new(), Codec::Zstd, &NoProgress).unwrap();
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
            );
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn owners_come_back_when_root() {
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
        let buf = pack(&[("data", src)], Vec::new(), Codec::Gzip, &NoProgress).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(
            "data.tar.gz",
            std::io::Cursor::new(buf),
            Codec::Gzip,
            &out,
            &["data"],
        )
        .unwrap();
        let f = std::fs::symlink_metadata(out.join("data/owned")).unwrap();
        assert_eq!((f.uid(), f.gid()), (1234, 4321));
        let l = std::fs::symlink_metadata(out.join("data/link")).unwrap();
        assert_eq!((l.uid(), l.gid()), (1235, 4322));
    }

    fn archive_with(build: impl FnOnce(&mut tar_sync::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar_sync::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
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
            /// Sets the last entry's mtime to the largest base-256 value.
            pub fn far_future_mtime(&mut self, data_len: usize) {
                let start = self.out.len() - 512 - data_len.div_ceil(512) * 512;
                let h = &mut self.out[start..start + 512];
                h[136] = 0x80;
                h[137..148].fill(0xff);
                h[148..156].copy_from_slice(b"        ");
                let sum: u32 = h.iter().map(|&b| b as u32).sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
            pub fn into_inner(mut self) -> std::io::Result<Vec<u8>> {
                self.out.extend(std::iter::repeat_n(0, 1024));
                Ok(self.out)
            }
        }
    }

    #[test]
    fn refuses_hostile_entries() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                archive_with(|b| b.entry("data/../../evil", b'0', "", b"x")),
            ),
            (
                "absolute",
                archive_with(|b| b.entry("/tmp/evil", b'0', "", b"x")),
            ),
            (
                "top",
                archive_with(|b| b.entry("other/file", b'0', "", b"x")),
            ),
            (
                "symlink out",
                archive_with(|b| b.entry("data/l", b'2', "../../..", b"")),
            ),
            (
                "link through a link",
                archive_with(|b| {
                    b.entry("data/a/", b'5', "", b"");
                    b.entry("data/a/b", b'2', "..", b"");
                    b.entry("data/a/c", b'2', "b/../..", b"");
                }),
            ),
            (
                "link through a link made later",
                archive_with(|b| {
                    b.entry("data/a/", b'5', "", b"");
                    b.entry("data/a/c", b'2', "b/../..", b"");
                    b.entry("data/a/b", b'2', "..", b"");
                }),
            ),
            (
                "mtime beyond what the clock holds",
                archive_with(|b| {
                    b.entry("data/f", b'0', "", b"x");
                    b.far_future_mtime(1);
                }),
            ),
            (
                "duplicate small file",
                archive_with(|b| {
                    b.entry("data/f", b'0', "", b"one");
                    b.entry("data/f", b'0', "", b"two");
                }),
            ),
            (
                "symlink abs",
                archive_with(|b| b.entry("data/l", b'2', "/etc", b"")),
            ),
            (
                "hardlink",
                archive_with(|b| b.entry("data/h", b'1', "/etc/passwd", b"")),
            ),
            ("fifo", archive_with(|b| b.entry("data/f", b'6', "", b""))),
            ("device", archive_with(|b| b.entry("data/d", b'3', "", b""))),
            (
                "file below an in-tree symlink",
                archive_with(|b| {
                    b.entry("data/sub", b'5', "", b"");
                    b.entry("data/l", b'2', "sub", b"");
                    b.entry("data/l/x", b'0', "", b"x");
                }),
            ),
            (
                "write through symlink",
                archive_with(|b| {
                    b.entry("data/l", b'2', "sub", b"");
                    b.entry("data/l", b'0', "", b"x");
                }),
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
            );
            assert!(res.is_err(), "{what} accepted");
        }
    }

    #[test]
    fn many_small_files_come_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        for i in 0..600u32 {
            let dir = src.join(format!("{:02}", i % 17));
            std::fs::create_dir_all(&dir).unwrap();
            let body: Vec<u8> = (0..(i * 37 % 5000)).map(|b| (b ^ i) as u8).collect();
            std::fs::write(dir.join(format!("f{i}")), &body).unwrap();
            let mode = if i % 3 == 0 { 0o640 } else { 0o755 };
            std::fs::set_permissions(
                dir.join(format!("f{i}")),
                std::fs::Permissions::from_mode(mode),
            )
            .unwrap();
        }
        let out = round_trip(&src, tmp.path(), Codec::Zstd);
        for i in 0..600u32 {
            let rel = format!("{:02}/f{i}", i % 17);
            let (a, b) = (src.join(&rel), out.join("data").join(&rel));
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&b).unwrap(),
                "{rel}"
            );
            let (ma, mb) = (
                std::fs::metadata(&a).unwrap(),
                std::fs::metadata(&b).unwrap(),
            );
            assert_eq!(ma.permissions().mode(), mb.permissions().mode(), "{rel}");
            assert_eq!(
                ma.modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                mb.modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                "{rel}"
            );
        }
    }

    #[test]
    fn refuses_truncated_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), vec![7u8; 100_000]).unwrap();
        let buf = pack(&[("data", src)], Vec::new(), Codec::Gzip, &NoProgress).unwrap();
        for cut in [buf.len() - 4, buf.len() / 2, 10] {
            let out = tempfile::tempdir().unwrap();
            let res = unpack(
                "data.tar.gz",
                std::io::Cursor::new(buf[..cut].to_vec()),
                Codec::Gzip,
                out.path(),
                &["data"],
            );
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }
}
