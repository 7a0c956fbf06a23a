//! Extended attributes of files and directories, POSIX ACLs among them
//! (`system.posix_acl_access`, `system.posix_acl_default`): read from and
//! written to open handles, and carried in tar as PAX records: `SCHILY.xattr.NAME`
//! with the raw value, as GNU tar's `--xattrs` writes them, or, for a name or
//! value holding a newline, `LIBARCHIVE.xattr.NAME` (name percent-encoded,
//! value in base64), as bsdtar writes them. Raw newlines must never reach a
//! record: the tar reader splits records at newlines, so a value chosen by an
//! app's user could otherwise forge a record (a `size`) and shift the rest
//! of the archive. An ACL's mask comes back with it, so a restore never
//! widens what a group may do.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

/// One extended attribute: its full name (`user.origin`) and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// The PAX record prefix GNU tar and libarchive use for raw extended attributes.
pub const PAX_PREFIX: &str = "SCHILY.xattr.";

/// The prefix libarchive uses for encoded ones (name percent-encoded, value base64).
pub const PAX_ENCODED_PREFIX: &str = "LIBARCHIVE.xattr.";

/// Largest value the kernel accepts for one attribute: a bound on what a
/// hostile archive can make a restore hold per entry.
const MAX_VALUE: usize = 64 * 1024;

/// The extended attributes of `fd`, sorted by name; none where the file
/// system keeps none.
pub fn read(fd: impl AsFd) -> io::Result<Vec<Xattr>> {
    let fd = fd.as_fd();
    let names = loop {
        let len = match rustix::fs::flistxattr_query(fd) {
            Ok(0) => return Ok(Vec::new()),
            Ok(len) => len,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; len];
        match rustix::fs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // Grew between the two calls: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let value = loop {
            let len = match rustix::fs::fgetxattr_query(fd, name) {
                Ok(len) => len,
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            };
            let mut value = vec![0u8; len];
            match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    break Some(value);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(value) = value {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets each attribute on `fd`; returns those the file system or the
/// agent's rights refused (the caller says so), failing only on other errors.
pub fn write(fd: impl AsFd, xattrs: &[Xattr]) -> io::Result<Vec<(String, io::Error)>> {
    let fd = fd.as_fd();
    let mut refused = Vec::new();
    for (name, value) in xattrs {
        match rustix::fs::fsetxattr(fd, &name[..], value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS)) => {
                refused.push((String::from_utf8_lossy(name).into_owned(), e.into()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(refused)
}

/// The PAX extended-header body carrying `xattrs`: records of the form
/// `"<len> <key>=<value>\n"`, where `len` counts the whole record, its own
/// digits included.
pub fn pax_records(xattrs: &[Xattr]) -> Vec<u8> {
    use base64::Engine;
    let mut out = Vec::new();
    for (name, value) in xattrs {
        let raw = !name.contains(&b'\n') && !name.contains(&b'=') && !value.contains(&b'\n');
        let (key, value) = if raw {
            ([PAX_PREFIX.as_bytes(), name].concat(), value.clone())
        } else {
            (
                [PAX_ENCODED_PREFIX.as_bytes(), &percent_encode(name)].concat(),
                base64::engine::general_purpose::STANDARD
                    .encode(value)
                    .into_bytes(),
            )
        };
        let body = key.len() + 1 + value.len() + 1;
        // The length's digits count themselves: grow until it is stable.
        let mut len = body + 2;
        while len != body + 1 + len.to_string().len() {
            len = body + 1 + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&key);
        out.push(b'=');
        out.extend_from_slice(&value);
        out.push(b'\n');
    }
    out
}

/// `%XX` for every byte but letters, digits and `._-`, as libarchive does.
fn percent_encode(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = std::str::from_utf8(text.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The extended attributes a tar entry's PAX records carry.
pub fn from_pax<'a>(
    records: impl Iterator<Item = io::Result<tar::PaxExtension<'a>>>,
) -> io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for record in records {
        use base64::Engine;
        let record = record?;
        let malformed = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "an extended attribute record is malformed",
            )
        };
        let key = record.key_bytes();
        let (name, value) = if let Some(name) = key.strip_prefix(PAX_PREFIX.as_bytes()) {
            (name.to_vec(), record.value_bytes().to_vec())
        } else if let Some(name) = key.strip_prefix(PAX_ENCODED_PREFIX.as_bytes()) {
            let name = percent_decode(name).ok_or_else(malformed)?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(record.value_bytes())
                .map_err(|_| malformed())?;
            (name, value)
        } else {
            continue;
        };
        if name.is_empty() || name.contains(&0) || value.len() > MAX_VALUE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an extended attribute record is malformed",
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for value_len in [0usize, 1, 80, 84, 85, 86, 990, 995, 996, 9990] {
            let xattrs = vec![(b"user.k".to_vec(), vec![b'v'; value_len])];
            let bytes = pax_records(&xattrs);
            let text = String::from_utf8(bytes.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), bytes.len(), "{value_len}");
        }
    }

    #[test]
    fn values_with_newlines_cannot_forge_records() {
        // A value an app's user chose, holding what would parse as a record.
        let hostile = b"x\n17 size=99999999\n".to_vec();
        let xattrs = vec![
            (b"user.k".to_vec(), hostile.clone()),
            (
                b"system.posix_acl_access".to_vec(),
                vec![2, 0, 0, 0, 10, 0, 0x0a],
            ),
            (b"user.plain".to_vec(), b"camera-7".to_vec()),
        ];
        let bytes = pax_records(&xattrs);
        let records: Vec<_> = tar::PaxExtensions::new(&bytes).collect();
        assert_eq!(records.len(), 3);
        assert!(
            records
                .iter()
                .flatten()
                .all(|r| r.key().is_ok_and(|k| k.contains("xattr."))),
            "a record other than an attribute was read"
        );
        let back = from_pax(tar::PaxExtensions::new(&bytes)).unwrap();
        assert_eq!(back, xattrs);
        assert!(String::from_utf8_lossy(&bytes).contains("SCHILY.xattr.user.plain=camera-7"));
    }

    #[test]
    fn user_attributes_round_trip_through_handles() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let wanted = vec![(b"user.origin".to_vec(), b"\0binary\xff".to_vec())];
        match write(&file, &wanted) {
            Ok(refused) if refused.is_empty() => {}
            other => {
                eprintln!("skipped: this file system keeps no user attributes ({other:?})");
                return;
            }
        }
        assert_eq!(read(&file).unwrap(), wanted);
    }
}
