//! Compressed tar archives of app trees: packing everything a tree holds
//! (modes, owners, symlinks as written, hard links, sparse files, FIFOs,
//! extended attributes and ACLs, paths of any depth), and unpacking with the
//! kernel keeping every write inside the target.

mod pack;
mod unpack;
pub mod walk;
mod xattrs;

#[cfg(test)]
pub use pack::Packed;
pub use pack::{Member, pack};
pub use unpack::{Ownership, Unpacked, unpack};

/// How an archive is compressed: the manifest's record of it.
pub use hop3_proto::format::Compression as Codec;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use hop3_wire::progress::NoProgress;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;

    /// Packs `src` as the tree `data` with `codec`.
    fn pack_dir(src: &Path, codec: Codec) -> (Vec<u8>, Packed) {
        let dir = walk::open_dir(rustix::fs::CWD, src).unwrap();
        pack(
            vec![Member { name: "data", dir }],
            Vec::new(),
            codec,
            &NoProgress,
        )
        .unwrap()
    }

    /// Unpacks a `data` archive into `out` (which must exist).
    fn unpack_into(buf: Vec<u8>, codec: Codec, out: &Path) -> Result<Unpacked> {
        unpack(
            "data.tar",
            std::io::Cursor::new(buf),
            codec,
            &[("data", out)],
            Ownership {
                owner: (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                ),
                exact: true,
            },
        )
    }

    /// Packs `src` as `data/` with `codec` and unpacks it into `tmp/out`.
    fn round_trip(src: &Path, tmp: &Path, codec: Codec) -> std::path::PathBuf {
        let (buf, _) = pack_dir(src, codec);
        let out = tmp.join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_into(buf, codec, &out).unwrap();
        out
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
    fn links_out_of_the_tree_come_back_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir_all(src.join("venv/bin")).unwrap();
        let links = [
            ("venv/bin/python", "/usr/bin/python3"),
            ("shared", "../../../srv/shared"),
            ("self", "/home/hop3/apps/x/data/file"),
            ("loop-a", "loop-b"),
            ("loop-b", "loop-a"),
            ("up", ".."),
        ];
        for (at, target) in links {
            symlink(target, src.join(at)).unwrap();
        }
        let out = round_trip(&src, tmp.path(), Codec::Zstd);
        for (at, target) in links {
            assert_eq!(
                std::fs::read_link(out.join("data").join(at)).unwrap(),
                Path::new(target),
                "{at}"
            );
        }
    }

    #[test]
    fn hard_links_sparse_files_and_fifos_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/one"), b"shared bytes").unwrap();
        std::fs::hard_link(src.join("a/one"), src.join("two")).unwrap();
        // 64 MiB with 8 KiB of data in the middle and at the end.
        let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 8192], 32 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (64 << 20) - 3).unwrap();
        drop(sparse);
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            src.join("pipe"),
            rustix::fs::Mode::from_raw_mode(0o640),
        )
        .unwrap();

        let (buf, packed) = pack_dir(&src, Codec::Zstd);
        assert!(packed.skipped.is_empty(), "{:?}", packed.skipped);
        // The holes are neither stored nor counted as space to find.
        assert!(buf.len() < 1 << 20, "{} bytes stored", buf.len());
        assert!(packed.sizes["data"] < 1 << 20, "{:?}", packed.sizes);
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_into(buf, Codec::Zstd, &out).unwrap();
        let d = out.join("data");
        let one = std::fs::metadata(d.join("a/one")).unwrap();
        let two = std::fs::metadata(d.join("two")).unwrap();
        assert_eq!(one.ino(), two.ino(), "the hard link came back as a copy");
        assert_eq!(one.nlink(), 2);
        let img = std::fs::metadata(d.join("sparse.img")).unwrap();
        assert_eq!(img.len(), 64 << 20);
        assert!(img.blocks() * 512 < 1 << 20, "{} blocks", img.blocks());
        let bytes = std::fs::read(d.join("sparse.img")).unwrap();
        assert_eq!(bytes, std::fs::read(src.join("sparse.img")).unwrap());
        let pipe = std::fs::symlink_metadata(d.join("pipe")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()));
        assert_eq!(pipe.mode() & 0o777, 0o640);
    }

    #[test]
    fn sockets_are_listed_as_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(src.join("app.sock")).unwrap();
        let (_, packed) = pack_dir(&src, Codec::Gzip);
        assert_eq!(packed.skipped.len(), 1, "{:?}", packed.skipped);
        assert_eq!(packed.skipped[0].path, "data/app.sock");
        assert!(packed.skipped[0].reason.contains("socket"));
    }

    #[test]
    fn extended_attributes_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let file = std::fs::File::open(src.join("f")).unwrap();
        if rustix::fs::fsetxattr(
            &file,
            "user.origin",
            b"upload",
            rustix::fs::XattrFlags::empty(),
        )
        .is_err()
        {
            eprintln!("skipped: this file system keeps no user attributes");
            return;
        }
        let out = round_trip(&src, tmp.path(), Codec::Gzip);
        let back = std::fs::File::open(out.join("data/f")).unwrap();
        let mut value = [0u8; 16];
        let n = rustix::fs::fgetxattr(&back, "user.origin", &mut value[..]).unwrap();
        assert_eq!(&value[..n], b"upload");
    }

    #[test]
    fn paths_deeper_than_path_max_round_trip() {
        use rustix::fs::{Mode, OFlags};
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        let long = "p".repeat(250);
        let mut fd = walk::open_dir(rustix::fs::CWD, &src).unwrap();
        for _ in 0..20 {
            rustix::fs::mkdirat(&fd, long.as_str(), Mode::from_raw_mode(0o750)).unwrap();
            fd = walk::open_dir(&fd, long.as_str()).unwrap();
        }
        let f = rustix::fs::openat(
            &fd,
            "leaf",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o640),
        )
        .unwrap();
        rustix::io::write(&f, b"deep down").unwrap();

        let out = round_trip(&src, tmp.path(), Codec::Zstd);
        let mut fd = walk::open_dir(rustix::fs::CWD, out.join("data")).unwrap();
        for _ in 0..20 {
            fd = walk::open_dir(&fd, long.as_str()).unwrap();
        }
        let f = rustix::fs::openat(&fd, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
        let mut buf = [0u8; 32];
        let n = rustix::io::read(&f, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"deep down");
        assert_eq!(rustix::fs::fstat(&f).unwrap().st_mode & 0o777, 0o640);
    }

    #[test]
    fn zstd_round_trip_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let body: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(src.join("sub/f"), &body).unwrap();
        let (buf, _) = pack_dir(&src, Codec::Zstd);
        assert_eq!(&buf[..4], [0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_into(buf.clone(), Codec::Zstd, &out).unwrap();
        assert_eq!(std::fs::read(out.join("data/sub/f")).unwrap(), body);
        for cut in [buf.len() - 2, buf.len() / 2] {
            let out = tempfile::tempdir().unwrap();
            let res = unpack_into(buf[..cut].to_vec(), Codec::Zstd, out.path());
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn owners_and_set_id_bits_stand_only_for_an_exact_restore_of_the_owners_files() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: only root can give files away");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        for f in ["owned", "other"] {
            std::fs::write(src.join(f), b"x").unwrap();
        }
        symlink("owned", src.join("link")).unwrap();
        std::fs::create_dir(src.join("dir")).unwrap();
        let own = |p: &str, uid, gid, mode: Option<u32>| {
            std::os::unix::fs::lchown(src.join(p), Some(uid), Some(gid)).unwrap();
            if let Some(m) = mode {
                std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap();
            }
        };
        own("owned", 1234, 4321, Some(0o6755));
        own("other", 0, 0, Some(0o6755));
        own("link", 1235, 4322, None);
        own("dir", 1236, 4323, Some(0o2775));
        let (buf, _) = pack_dir(&src, Codec::Zstd);
        let unpack_as = |exact| {
            let out = tmp.path().join(format!("out-{exact}"));
            std::fs::create_dir(&out).unwrap();
            unpack(
                "data.tar.zst",
                std::io::Cursor::new(buf.clone()),
                Codec::Zstd,
                &[("data", &out)],
                Ownership {
                    owner: (1234, 4321),
                    exact,
                },
            )
            .unwrap();
            let meta = |p: &str| {
                let m = std::fs::symlink_metadata(out.join("data").join(p)).unwrap();
                (m.uid(), m.gid(), m.mode() & 0o7777)
            };
            (meta("owned"), meta("other"), meta("link"), meta("dir"))
        };
        // Exact (a sealed backup of this app on this machine): owners as
        // archived, set-ID bits only on the app owner's own files.
        let (owned, other, link, dir) = unpack_as(true);
        assert_eq!(owned, (1234, 4321, 0o6755), "the app's own set-ID file");
        assert_eq!(
            other,
            (0, 0, 0o0755),
            "root's set-ID file keeps its owner, not its bits"
        );
        assert_eq!((link.0, link.1), (1235, 4322));
        assert_eq!(dir, (1236, 4323, 0o2775), "a directory passes its group on");
        // Anything else: every entry the app's, no set-ID bit.
        let (owned, other, link, dir) = unpack_as(false);
        assert_eq!(owned, (1234, 4321, 0o0755));
        assert_eq!(other, (1234, 4321, 0o0755));
        assert_eq!((link.0, link.1), (1234, 4321));
        assert_eq!(dir, (1234, 4321, 0o2775));
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
                "top after ./",
                archive_with(|b| b.entry("./other/file", b'0', "", b"x")),
            ),
            (
                "a tree that is a link",
                archive_with(|b| b.entry("data", b'2', "/etc", b"")),
            ),
            (
                "a tree that is a file",
                archive_with(|b| b.entry("data", b'0', "", b"x")),
            ),
            (
                "file through a link out of the tree",
                archive_with(|b| {
                    b.entry("data/l", b'2', "/tmp", b"");
                    b.entry("data/l/evil", b'0', "", b"x");
                }),
            ),
            (
                "directory through a link out of the tree",
                archive_with(|b| {
                    b.entry("data/l", b'2', "../../..", b"");
                    b.entry("data/l/evil/", b'5', "", b"");
                }),
            ),
            (
                "file through a link through a link",
                archive_with(|b| {
                    b.entry("data/a/", b'5', "", b"");
                    b.entry("data/a/b", b'2', "..", b"");
                    b.entry("data/a/c", b'2', "b/../..", b"");
                    b.entry("data/a/c/evil", b'0', "", b"x");
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
                "hard link out of the archive",
                archive_with(|b| b.entry("data/h", b'1', "/etc/passwd", b"")),
            ),
            (
                "hard link up and out",
                archive_with(|b| b.entry("data/h", b'1', "data/../../etc/passwd", b"")),
            ),
            (
                "hard link to a missing entry",
                archive_with(|b| b.entry("data/h", b'1', "data/nothing", b"")),
            ),
            (
                "hard link to a symlink's target",
                archive_with(|b| {
                    b.entry("data/l", b'2', "/etc/passwd", b"");
                    b.entry("data/h", b'1', "data/l", b"");
                }),
            ),
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
                "write over a symlink",
                archive_with(|b| {
                    b.entry("data/l", b'2', "/tmp/target", b"");
                    b.entry("data/l", b'0', "", b"x");
                }),
            ),
        ];
        for (what, bytes) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let res = unpack_into(bytes, Codec::Gzip, tmp.path());
            assert!(res.is_err(), "{what} accepted");
            assert!(
                !Path::new("/tmp/evil").exists() && !Path::new("/tmp/target").exists(),
                "{what} wrote outside the target"
            );
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
            assert_eq!(ma.mtime(), mb.mtime(), "{rel}");
        }
    }

    #[test]
    fn refuses_truncated_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("d");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), vec![7u8; 100_000]).unwrap();
        let (buf, _) = pack_dir(&src, Codec::Gzip);
        for cut in [buf.len() - 4, buf.len() / 2, 10] {
            let out = tempfile::tempdir().unwrap();
            let res = unpack_into(buf[..cut].to_vec(), Codec::Gzip, out.path());
            assert!(res.is_err(), "cut at {cut} accepted");
        }
    }
}
