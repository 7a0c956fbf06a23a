//! The live part of a restore: stopping the app, switching its databases,
//! swapping the staged trees in on record, starting it again, and rolling
//! back when it will not start.

use std::path::PathBuf;

use hop3_proto::layout::{Owner, TREES};

use crate::apps::{APP_FILE, ENV_FILE};
use crate::error::{AgentError, Result};
use crate::services;
use crate::swap::{Journal, apply_owner};
use crate::trees::Place;

use super::{Restoring, entry_names, exists};

impl Restoring<'_> {
    /// Stops the app, switches the databases, swaps the staged parts in and
    /// starts the app again; rolls the files back if it will not start.
    pub(super) async fn swap_in(&mut self, journal: &mut Journal, is_app: bool) -> Result<()> {
        let (state, app) = (self.state, self.app.clone());
        let live = self.live.clone();
        let existed = exists(&live).await;
        if is_app {
            state.hooks.stop(&app).await?;
            journal.stopped().await?;
        }
        if let Err(e) = self.switch_services().await {
            if is_app {
                let _ = state.hooks.start(&app).await;
            }
            return Err(e);
        }
        let mut swaps = match self.linked_swaps().await {
            Ok(swaps) => swaps,
            Err(e) => {
                self.undo_services().await;
                if is_app {
                    let _ = state.hooks.start(&app).await;
                }
                return Err(e);
            }
        };
        if existed {
            for part in TREES.iter().chain([ENV_FILE, APP_FILE].iter()) {
                let staged = self.staging.join(part);
                if exists(&staged).await {
                    swaps.push((staged, live.join(part)));
                }
            }
        } else {
            // Older backups do not say: an app directory as `mkdir` makes one.
            let owner = Some(self.owned(self.layout.app_dir.unwrap_or(Owner {
                mode: 0o755,
                uid: 0,
                gid: 0,
            })));
            if let Some(owner) = owner {
                let at = self.staging.clone();
                tokio::task::spawn_blocking(move || apply_owner(&at, owner))
                    .await
                    .map_err(|e| AgentError::Bug(format!("setting the app's owner failed: {e}")))?
                    .map_err(|e| AgentError::io("setting the app directory's owner", e))?;
            }
            swaps.push((self.staging.clone(), live.clone()));
        }
        let swapped = journal.swap_all(swaps).await;
        let swapped = match (swapped, existed, self.layout.app_dir.map(|o| self.owned(o))) {
            (Ok(()), true, Some(owner)) => journal.set_app_dir(&live, owner).await,
            (result, _, _) => result,
        };
        if let Err(e) = swapped {
            journal.revert().await;
            self.undo_services().await;
            if is_app {
                let _ = state.hooks.start(&app).await;
            }
            return Err(e);
        }
        // A new app (a clone, a fresh host) is left for its operator to
        // start, and so is one the operator asked to leave stopped.
        if is_app
            && !self.header.no_start
            && let Err(e) = state.hooks.start(&app).await
        {
            tracing::warn!(
                app,
                "restored app does not start; rolling its files and databases back"
            );
            journal.revert().await;
            self.undo_services().await;
            if let Err(again) = state.hooks.start(&app).await {
                tracing::warn!(app, error = %again, "the previous version does not start either");
            }
            return Err(e);
        }
        // Past this point the restore stands, even across a crash: the
        // databases are made final to match the files.
        if let Err(e) = journal.commit().await {
            tracing::warn!(app, error = %e, "could not record the restore as done");
        }
        self.finish_services().await;
        Ok(())
    }

    /// The swaps of the trees staged beside a link's target: the tree for
    /// its target, or for a mount root (which cannot be renamed) each entry
    /// for its namesake, the target's entries the backup lacks moved into
    /// the staging directory. Each target must still be the directory that
    /// was chosen when the restore began.
    async fn linked_swaps(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        use std::os::unix::fs::MetadataExt;
        let mut swaps = Vec::new();
        for (tree, placement) in &self.places {
            let Place::Linked {
                target,
                inode,
                mount_root,
                ..
            } = &placement.place
            else {
                continue;
            };
            let staged = self.roots[tree].join(tree);
            if !exists(&staged).await {
                continue;
            }
            let now = tokio::fs::symlink_metadata(target)
                .await
                .map(|m| (m.dev(), m.ino()))
                .ok();
            if now != Some(*inode) {
                return Err(AgentError::LinkedTree {
                    tree: (*tree).to_owned(),
                    target: target.display().to_string(),
                    reason: "it changed while the restore was staging".into(),
                });
            }
            if !mount_root {
                swaps.push((staged, target.clone()));
                continue;
            }
            let new = entry_names(&staged).await?;
            let mut old = entry_names(target).await?;
            if let Some(stage) = self.roots[tree].file_name() {
                old.remove(stage);
            }
            for name in &new {
                swaps.push((staged.join(name), target.join(name)));
            }
            for name in old.difference(&new) {
                // Moved into the staging directory, which then holds the old tree.
                swaps.push((target.join(name), staged.join(name)));
            }
        }
        Ok(swaps)
    }

    /// Switches every staged service in turn. On a failure the ones already
    /// switched are undone, last first; all stay in `staged` for [`discard`](Self::discard).
    async fn switch_services(&mut self) -> Result<()> {
        let tools = &self.state.tools;
        for i in 0..self.staged.len() {
            if let Err(e) = services::switch(tools, &self.staged[i]).await {
                for done in self.staged[..i].iter().rev() {
                    undo_logged(tools, done).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Puts back what the switches replaced, last first (a later step failed).
    async fn undo_services(&mut self) {
        for staged in self.staged.iter().rev() {
            undo_logged(&self.state.tools, staged).await;
        }
    }

    /// Drops what the switches replaced: the restore succeeded.
    async fn finish_services(&mut self) {
        for staged in self.staged.drain(..) {
            services::finish(&self.state.tools, &staged).await;
        }
    }

    /// Removes what a failed restore staged; live data is untouched.
    pub(super) async fn discard(&mut self, journal: Journal) {
        for staged in self.staged.drain(..) {
            services::discard(&self.state.tools, &staged).await;
        }
        journal.end().await;
    }
}

/// [`services::undo`], logged when it fails: the service stays on record
/// for the agent's next start, which tries again.
async fn undo_logged(tools: &services::Tools, staged: &services::Staged) {
    if let Err(e) = services::undo(tools, staged).await {
        tracing::error!(service = staged.label(), error = %e, "could not undo a database switch");
    }
}
