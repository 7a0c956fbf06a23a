//! The free-space check a restore makes before it stages anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hop3_proto::manifest::Manifest;

use crate::error::{AgentError, Result};
use crate::trees::{self};

/// Free space kept beyond what a restore writes.
const SPACE_MARGIN: u64 = 16 * 1024 * 1024;

/// Refuses a restore that cannot fit: on each file system a tree lands on,
/// the disk space the backup says it takes (older backups: their stored
/// size, on the app's) must be free.
pub(super) async fn check_space(
    manifest: &Manifest,
    places: &[(&'static str, trees::Placement)],
    staging: &Path,
    total_bytes: u64,
) -> Result<()> {
    let mut needs: Vec<(PathBuf, u64)> = Vec::new();
    let apps_dir = staging.parent().expect("staging is in apps/").to_path_buf();
    match manifest.layout.as_ref().filter(|l| !l.sizes.is_empty()) {
        None => needs.push((apps_dir, total_bytes)),
        Some(layout) => {
            for (tree, placement) in places {
                let dir = match placement.place.staging(&manifest.backup_id) {
                    None => apps_dir.clone(),
                    Some(stage) => stage.parent().map_or(stage.clone(), Path::to_path_buf),
                };
                needs.push((dir, layout.sizes.get(*tree).copied().unwrap_or(0)));
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        // Trees on one file system add up.
        let mut by_fs: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (dir, needed) in needs {
            let stat = rustix::fs::statvfs(&dir)
                .map_err(|e| AgentError::io("checking free space", e.into()))?;
            let available = stat.f_bavail.saturating_mul(stat.f_frsize);
            let entry = by_fs.entry(stat.f_fsid).or_insert((0, available));
            entry.0 = entry.0.saturating_add(needed);
        }
        for (needed, available) in by_fs.into_values() {
            let needed = needed.saturating_add(SPACE_MARGIN);
            if available < needed {
                return Err(AgentError::InsufficientSpace { needed, available });
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| AgentError::Bug(format!("checking free space failed: {e}")))?
}
