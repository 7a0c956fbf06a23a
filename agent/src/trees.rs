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
    /// on its volume and swapped with it; the app keeps (or gets) the link.
    Linked {
        link: String,
        target: PathBuf,
        /// (device, inode) of `target` when it was chosen: checked again
        /// just before the swap.
        inode: (u64, u64),
        /// `target` is the root of a mount (it cannot be renamed): its
        /// entries are swapped one by one, staged inside it.
        mount_root: bool,
    },
}

impl Place {
    /// The directory a restore of `backup_id` stages this tree in (the tree
    /// unpacks to `DIR/<tree>`); None for a tree staged with the app.
    pub fn staging(&self, backup_id: &str) -> Option<PathBuf> {
        match self {
            Self::InApp => None,
            Self::Linked {
                target, mount_root, ..
            } => {
                let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
                Some(if *mount_root {
                    target.join(format!(".hop3-restore-{backup_id}"))
                } else {
                    target.with_file_name(format!(
                        ".{}.restore-{backup_id}",
                        name.unwrap_or_default()
                    ))
                })
            }
        }
    }
}

/// How a tree should come back, and why not as it was when it cannot.
#[derive(Debug)]
pub struct Placement {
    pub place: Place,
    pub note: Option<String>,
}

/// Who may lead a restore through a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// The backup's own app: its live link, else the link the backup recorded.
    Own,
    /// An existing app replaced with `--replace`: only its own live link
    /// (the backup's link is another app's data).
    Live,
    /// A clone: never; it gets a directory of its own.
    Never,
}

/// Decides where tree `name` of the app at `app_dir` (in `apps_dir`) goes.
/// A live link is trusted as [`trusted`] says for the live app directory's
/// owner. A link recorded in the backup is data from the store, not the
/// host: it is followed only to a directory owned by the app's (non-root)
/// owner, never one root owns, and never into another app. Blocking.
pub fn place(
    name: &str,
    app_dir: &Path,
    apps_dir: &Path,
    follow: Follow,
    recorded: Option<&str>,
    recorded_owner: Option<u32>,
) -> Placement {
    use std::os::unix::fs::MetadataExt;
    let in_app = |note: Option<String>| Placement {
        place: Place::InApp,
        note,
    };
    if follow == Follow::Never {
        return in_app(recorded.map(|link| {
            format!("{name}/ was a link to {link} in the backup's app; this app gets a directory of its own")
        }));
    }
    let live_owner = std::fs::symlink_metadata(app_dir).map(|m| m.uid()).ok();
    if let Some(owner) = live_owner
        && let Ok(link) = std::fs::read_link(app_dir.join(name))
        && let Some(place) = linked(app_dir, apps_dir, &link, |uid| trusted(owner, uid))
    {
        return Placement { place, note: None };
    }
    let Some(recorded) = recorded.filter(|_| follow == Follow::Own) else {
        return in_app(None);
    };
    let owner = live_owner.or(recorded_owner).unwrap_or(0);
    match linked(app_dir, apps_dir, Path::new(recorded), |uid| {
        uid != 0 && uid == owner
    }) {
        Some(place) => Placement { place, note: None },
        None => in_app(Some(format!(
            "{name}/ was a link to {recorded}, which is not a directory of the app's owner on this host: restored as a directory in the app"
        ))),
    }
}

/// The placement through `link` (read in `app_dir`), if it leads to a
/// directory whose owner `owner_ok` accepts, that is not the app or above
/// it, nor inside another app.
fn linked(
    app_dir: &Path,
    apps_dir: &Path,
    link: &Path,
    owner_ok: impl Fn(u32) -> bool,
) -> Option<Place> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(app_dir.join(link)).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    let parent = target.parent()?;
    if !meta.is_dir() || !owner_ok(meta.uid()) {
        return None;
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (app, apps) = (canon(app_dir), canon(apps_dir));
    if app.starts_with(&target) || (target.starts_with(&apps) && !target.starts_with(&app)) {
        return None;
    }
    let parent_dev = std::fs::metadata(parent).ok()?.dev();
    Some(Place::Linked {
        link: link.to_string_lossy().into_owned(),
        inode: (meta.dev(), meta.ino()),
        mount_root: parent_dev != meta.dev(),
        target,
    })
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
        let apps = tmp.path().join("apps");
        let app = apps.join("shop");
        let volume = tmp.path().join("volume/shop-data");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&volume).unwrap();
        symlink(&volume, app.join("data")).unwrap();
        let recorded = volume.to_str().unwrap();
        // The live link of the app's own, or of an app replaced.
        for follow in [Follow::Own, Follow::Live] {
            match place("data", &app, &apps, follow, Some(recorded), None).place {
                Place::Linked {
                    target, mount_root, ..
                } => {
                    assert_eq!(target, std::fs::canonicalize(&volume).unwrap());
                    assert!(!mount_root);
                }
                other => panic!("{other:?}"),
            }
        }
        let clone = place(
            "data",
            &apps.join("copy"),
            &apps,
            Follow::Never,
            Some(recorded),
            None,
        );
        assert_eq!(clone.place, Place::InApp);
        assert!(clone.note.is_some());
        // A recorded link is store data: never to a directory root owns.
        std::fs::remove_file(app.join("data")).unwrap();
        let recorded_only = place("data", &app, &apps, Follow::Own, Some(recorded), Some(0));
        assert_eq!(recorded_only.place, Place::InApp);
        assert!(
            recorded_only
                .note
                .unwrap()
                .contains("not a directory of the app's owner")
        );
        let replaced = place("data", &app, &apps, Follow::Live, Some(recorded), None);
        assert_eq!(
            replaced.place,
            Place::InApp,
            "--replace followed the source's link"
        );
        // A link to the app itself or above, or into another app, is never written through.
        symlink("..", app.join("src")).unwrap();
        assert_eq!(
            place("src", &app, &apps, Follow::Own, None, None).place,
            Place::InApp
        );
        std::fs::create_dir_all(apps.join("other/data")).unwrap();
        symlink("../other/data", app.join("git")).unwrap();
        assert_eq!(
            place("git", &app, &apps, Follow::Own, None, None).place,
            Place::InApp
        );
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
        let apps = tmp.path().join("apps");
        assert_eq!(
            place("data", &app, &apps, Follow::Own, None, None).place,
            Place::InApp
        );
        // A directory of the app's user is followed, from the live link and
        // from the one a backup recorded.
        chown(&system, Some(4242), Some(4242)).unwrap();
        assert_eq!(open_for_backup(&app, &["data"]).unwrap().len(), 1);
        assert!(matches!(
            place("data", &app, &apps, Follow::Own, None, None).place,
            Place::Linked { .. }
        ));
        std::fs::remove_file(app.join("data")).unwrap();
        let recorded = system.to_str().unwrap();
        assert!(matches!(
            place("data", &app, &apps, Follow::Own, Some(recorded), None).place,
            Place::Linked { .. }
        ));
    }
}
