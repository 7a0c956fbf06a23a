//! The controller's Unix socket: how root and the members of the `hop3`
//! group on the controller's host use the CLI with no token, each caller
//! known by the kernel's credentials of its connection.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::auth::LocalCallers;

/// Why the socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another controller is serving on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or pass --socket PATH")]
    NotASocket(PathBuf),
    #[error("cannot serve the socket {path}: {source} (pass --socket PATH to put it elsewhere)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown group {0:?} for --socket-group")]
    UnknownGroup(String),
    #[error(
        "{0} can be written by other users: put the socket in a directory only root can write (pass --socket PATH)"
    )]
    OpenDirectory(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The group of `--socket-group`: a name or a number. The default name
/// (`hop3`) may be missing, and then only root and the controller's user get
/// in; a name given by hand must exist.
fn resolve_group(group: &str, required: bool) -> Result<Option<(u32, String)>, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Some((gid, group.to_owned())));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(Some((g.gid.as_raw(), group.to_owned()))),
        _ if required => Err(SocketError::UnknownGroup(group.to_owned())),
        _ => Ok(None),
    }
}

/// Binds `path` (0660, group `group`), after removing a socket left by a
/// controller that is gone; refuses one another controller still serves.
pub async fn bind(
    path: &Path,
    group: &str,
    group_required: bool,
) -> Result<(UnixListener, LocalCallers), SocketError> {
    // getgrnam may ask NSS (LDAP, say): off the runtime's threads.
    let name = group.to_owned();
    let group = tokio::task::spawn_blocking(move || resolve_group(&name, group_required))
        .await
        .map_err(|e| io(path)(std::io::Error::other(e)))??;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !tokio::fs::try_exists(dir).await.unwrap_or(false)
    {
        // Made traversable whatever the umask (the unit's is 0077): the
        // socket's own mode and group decide who gets in.
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(io(dir))?;
    }
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse(path.to_owned()));
            }
            tokio::fs::remove_file(path).await.map_err(io(path))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = tokio::fs::metadata(dir).await.map_err(io(dir))?;
    // In a directory others may write and rename in, what is bound could be
    // swapped for a link before its mode is set.
    if meta.permissions().mode() & 0o022 != 0 && meta.permissions().mode() & 0o1000 == 0 {
        return Err(SocketError::OpenDirectory(dir.to_owned()));
    }
    // Bound, given its group and mode in a directory of our own, then moved
    // into place: nothing is ever set through a path another user controls.
    let private = dir.join(format!(
        ".hop3-socket-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    tokio::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .await
        .map_err(io(&private))?;
    let staged = private.join("socket");
    let placed = async {
        let listener = UnixListener::bind(&staged).map_err(io(&staged))?;
        if let Some((gid, _)) = &group {
            rustix::fs::chown(&staged, None, Some(rustix::fs::Gid::from_raw(*gid)))
                .map_err(|e| io(&staged)(e.into()))?;
        }
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        tokio::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io(&staged))?;
        tokio::fs::rename(&staged, path).await.map_err(io(path))?;
        Ok::<_, SocketError>(listener)
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&private).await;
    let listener = placed?;
    let callers = LocalCallers {
        socket: path.to_owned(),
        uid: rustix::process::geteuid().as_raw(),
        group,
    };
    Ok((listener, callers))
}
