//! Keeps the host's app list current, so that the controller learns of a
//! new or removed app within a second, from the agent, without asking:
//! the list is read every [`POLL`], and whoever watches is told when it
//! changes. A listing that hangs (a hung mount under `apps/`) is waited
//! for, never started twice, and reported stale meanwhile.

use std::time::Duration;

use tokio::sync::watch;

use crate::apps::HostRoot;

/// How often the apps directory is read: a directory listing and one
/// `stat` per app.
pub const POLL: Duration = Duration::from_secs(1);

/// A listing running longer than this is reported stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// The host's apps as last read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppsSeen {
    /// Sorted names, from the last listing that succeeded.
    pub apps: Vec<String>,
    /// The last listing failed, or the current one hangs.
    pub stale: bool,
}

/// Reads `root`'s apps now and then every [`POLL`], for as long as a
/// receiver lives. The first list is in the receiver when this returns,
/// unless reading it takes longer than [`STALE_AFTER`]: then the receiver
/// starts empty and stale, so that a hung mount never keeps the agent from
/// registering.
pub async fn watch(root: HostRoot) -> watch::Receiver<AppsSeen> {
    let (tx, mut rx) = watch::channel(AppsSeen {
        apps: Vec::new(),
        stale: true,
    });
    tokio::spawn(poll(root, tx));
    let _ = tokio::time::timeout(STALE_AFTER, rx.changed()).await;
    rx
}

/// Lists the apps into `tx` until no receiver is left.
async fn poll(root: HostRoot, tx: watch::Sender<AppsSeen>) {
    let mut first = true;
    loop {
        let listing = root.list_apps();
        tokio::pin!(listing);
        let listed = loop {
            match tokio::time::timeout(STALE_AFTER, &mut listing).await {
                Ok(listed) => break listed,
                Err(_) => {
                    if first || !tx.borrow().stale {
                        tracing::warn!(
                            waited_s = STALE_AFTER.as_secs(),
                            "listing the apps directory hangs; the controller is told this host's app list is stale"
                        );
                        tx.send_modify(|seen| seen.stale = true);
                        first = false;
                    }
                }
            }
        };
        match listed {
            Ok(apps) => {
                tx.send_if_modified(|seen| {
                    let changed = seen.apps != apps || seen.stale;
                    *seen = AppsSeen { apps, stale: false };
                    changed
                });
            }
            Err(e) => {
                if first || !tx.borrow().stale {
                    tracing::warn!(error = %e, "cannot list the apps directory; the controller is told this host's app list is stale");
                    tx.send_modify(|seen| seen.stale = true);
                }
            }
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_app_is_seen_within_a_poll() {
        let tmp = tempfile::tempdir().unwrap();
        let root = HostRoot::new(tmp.path());
        let mut rx = watch(root.clone()).await;
        assert_eq!(*rx.borrow_and_update(), AppsSeen::default());
        let app = root.apps_dir().join("shop");
        tokio::fs::create_dir_all(&app).await.unwrap();
        tokio::fs::write(app.join("app.json"), "{}").await.unwrap();
        tokio::time::timeout(POLL * 3, rx.changed())
            .await
            .expect("seen within a few polls")
            .unwrap();
        assert_eq!(rx.borrow().apps, ["shop"]);
        assert!(!rx.borrow().stale);

        // A listing that fails keeps the last list, marked stale.
        tokio::fs::remove_dir_all(root.apps_dir()).await.unwrap();
        tokio::fs::write(root.apps_dir(), "not a directory")
            .await
            .unwrap();
        tokio::time::timeout(POLL * 3, rx.changed())
            .await
            .expect("seen within a few polls")
            .unwrap();
        assert_eq!(
            *rx.borrow(),
            AppsSeen {
                apps: vec!["shop".into()],
                stale: true
            }
        );

        // Unreadable from the start: the watcher says so at once.
        let started = std::time::Instant::now();
        let rx = watch(root.clone()).await;
        assert!(started.elapsed() < STALE_AFTER, "{:?}", started.elapsed());
        assert_eq!(
            *rx.borrow(),
            AppsSeen {
                apps: Vec::new(),
                stale: true
            }
        );
    }
}
