//! An app's trees (`git/`, `src/`, `data/`) on disk. A tree may itself be a
//! symlink to a directory elsewhere (data kept on another volume is
//! common): a backup follows that one link and records it, so the archive
//! holds the data and not the bare link, and a restore puts the data back
//! where the link leads when that directory exists on the restoring host.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::archive::walk;
use crate::error::{AgentError, Result};

/// One tree opened for a backup.
pub struct Opened {
    /// `git`, `src` or `data`.
    pub name: &'static str,
    /// The tree's directory (the link's target for a linked tree).
    pub dir: OwnedFd,
    /// The link as written, when the tree is a link.
    pub link: Option<String>,
}

/// Opens the trees `names` of the app in `app_dir` for archiving. A tree
/// that does not exist is left out (an app without data has none); a tree
/// that is a link must lead to a directory, or the backup fails: a backup
/// that did not capture the app's data must never be complete. Blocking.
pub fn open_for_backup(app_dir: &Path, names: &[&'static str]) -> Result<Vec<Opened>> {
    let app = walk::open_dir(rustix::fs::CWD, app_dir)
        .map_err(|e| AgentError::io("opening the app directory", e))?;
    let mut out = Vec::new();
    for &name in names {
        let stat = match rustix::fs::statat(&app, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(AgentError::io(format!("reading {name}/"), e.into())),
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => out.push(Opened {
                name,
                dir: walk::open_dir(&app, name)
                    .map_err(|e| AgentError::io(format!("opening {name}/"), e))?,
                link: None,
            }),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&app, name, Vec::new())
                    .map_err(|e| AgentError::io(format!("reading link {name}"), e.into()))?;
                let target = target.to_string_lossy().into_owned();
                // This one link is followed, on purpose: it is where the data lives.
                let dir = rustix::fs::openat(
                    &app,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| AgentError::LinkedTree {
                    tree: name.to_owned(),
                    target: target.clone(),
                    reason: std::io::Error::from(e).to_string(),
                })?;
                let owner = rustix::fs::fstat(&dir)
                    .map_err(|e| AgentError::io(format!("reading {name}/"), e.into()))?
                    .st_uid;
                let app_owner = rustix::fs::fstat(&app)
                    .map_err(|e| AgentError::io("reading the app directory", e.into()))?
                    .st_uid;
                if !trusted(app_owner, owner) {
                    return Err(AgentError::UntrustedLink {
                        tree: name.to_owned(),
                        target,
                        owner,
                        app_owner,
                    });
                }
                out.push(Opened {
                    name,
                    dir,
                    link: Some(target),
                });
            }
            _ => {
                return Err(AgentError::NotATree {
                    tree: name.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Whether a tree link in an app directory owned by `app_owner` may be
/// followed to a directory owned by `owner`. An app's own user can plant any
/// link in its directory (`data -> /etc`): the agent, as root, follows it
/// only to a directory that user owns anyway, or when root owns the app.
fn trusted(app_owner: u32, owner: u32) -> bool {
    app_owner == 0 || owner == app_owner
}

/// Where a restored tree goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A directory of the app's own, staged in the app's staging directory.
    InApp,
    /// The directory `target` that the app's link `link` leads to: staged
    /// beside it (same volume, so the swap is one rename) and swapped with
    /// it; the app keeps (or gets) the link.
    Linked { link: String, target: PathBuf },
}

/// How a tree should come back, and why not as it was when it cannot.
#[derive(Debug)]
pub struct Placement {
    pub place: Place,
    pub note: Option<String>,
}

/// Decides where tree `name` of the app at `app_dir` goes. `own` is true
/// when the app restored into is the backup's own (or `--replace` names
/// it): only then may a restore write into what a link leads to, since a
/// clone must never share its data with its source. The live app's own
/// link wins; else the link the backup recorded, when its target exists
/// here. Either way the target must pass [`trusted`] for the app's owner
/// (the live directory's, else `app_owner` as the backup recorded it).
/// Blocking.
pub fn place(
    name: &str,
    app_dir: &Path,
    own: bool,
    recorded: Option<&str>,
    app_owner: Option<u32>,
) -> Placement {
    use std::os::unix::fs::MetadataExt;
    let app_owner = std::fs::symlink_metadata(app_dir)
        .map(|m| m.uid())
        .ok()
        .or(app_owner)
        .unwrap_or(0);
    let in_app = |note: Option<String>| Placement {
        place: Place::InApp,
        note,
    };
    if !own {
        return in_app(recorded.map(|link| {
            format!("{name}/ was a link to {link} in the backup's app; this app gets a directory of its own")
        }));
    }
    let live = app_dir.join(name);
    if let Ok(link) = std::fs::read_link(&live)
        && let Some(target) = usable_target(app_dir, &link, app_owner)
    {
        return Placement {
            place: Place::Linked {
                link: link.to_string_lossy().into_owned(),
                target,
            },
            note: None,
        };
    }
    let Some(recorded) = recorded else {
        return in_app(None);
    };
    match usable_target(app_dir, Path::new(recorded), app_owner) {
        Some(target) => Placement {
            place: Place::Linked {
                link: recorded.to_owned(),
                target,
            },
            note: None,
        },
        None => in_app(Some(format!(
            "{name}/ was a link to {recorded}, which is not a directory on this host that the app's owner owns: restored as a directory in the app"
        ))),
    }
}

/// The directory `link` (read in `app_dir`) leads to, if it is one a
/// restore may write into: owned as [`trusted`] allows, and never the app
/// itself or a directory above it.
fn usable_target(app_dir: &Path, link: &Path, app_owner: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(app_dir.join(link)).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    if !meta.is_dir() || target.parent().is_none() || !trusted(app_owner, meta.uid()) {
        return None;
    }
    let app = std::fs::canonicalize(app_dir).unwrap_or_else(|_| app_dir.to_path_buf());
    if app.starts_with(&target) {
        return None;
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_linked_tree_is_followed_and_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("apps/shop");
        let volume = tmp.path().join("volume/shop-data");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("f"), b"x").unwrap();
        symlink(&volume, app.join("data")).unwrap();
        std::fs::create_dir(app.join("git")).unwrap();
        let opened = open_for_backup(&app, &["git", "src", "data"]).unwrap();
        let names: Vec<_> = opened.iter().map(|o| o.name).collect();
        assert_eq!(names, ["git", "data"]);
        assert_eq!(opened[1].link.as_deref(), Some(volume.to_str().unwrap()));

        std::fs::remove_dir_all(&volume).unwrap();
        let err = open_for_backup(&app, &["data"]).err().unwrap();
        assert!(err.to_string().contains("data/ is a link to"), "{err}");
    }

    #[test]
    fn a_restore_writes_through_a_link_only_into_its_own_app() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("apps/shop");
        let volume = tmp.path().join("volume/shop-data");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&volume).unwrap();
        let recorded = volume.to_str().unwrap();
        let own = place("data", &app, true, Some(recorded), None);
        assert_eq!(
            own.place,
            Place::Linked {
                link: recorded.into(),
                target: std::fs::canonicalize(&volume).unwrap()
            }
        );
        let clone = place(
            "data",
            &tmp.path().join("apps/copy"),
            false,
            Some(recorded),
            None,
        );
        assert_eq!(clone.place, Place::InApp);
        assert!(clone.note.is_some());
        let gone = place("data", &app, true, Some("/nowhere/at/all"), None);
        assert_eq!(gone.place, Place::InApp);
        assert!(gone.note.unwrap().contains("not a directory on this host"));
        // A link to the app itself or above is never written through.
        symlink("..", app.join("src")).unwrap();
        assert_eq!(place("src", &app, true, None, None).place, Place::InApp);
    }

    #[test]
    fn a_link_planted_by_the_apps_user_is_not_followed_out_of_its_own() {
        use std::os::unix::fs::chown;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to give the app to a user");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("apps/shop");
        let system = tmp.path().join("etc-like");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&system).unwrap();
        chown(&app, Some(4242), Some(4242)).unwrap();
        symlink(&system, app.join("data")).unwrap();
        let err = open_for_backup(&app, &["data"]).err().unwrap();
        assert!(err.to_string().contains("owned by uid 0"), "{err}");
        assert_eq!(place("data", &app, true, None, None).place, Place::InApp);
        // A directory of the app's user is followed.
        chown(&system, Some(4242), Some(4242)).unwrap();
        assert_eq!(open_for_backup(&app, &["data"]).unwrap().len(), 1);
        assert!(matches!(
            place("data", &app, true, None, None).place,
            Place::Linked { .. }
        ));
    }
}
