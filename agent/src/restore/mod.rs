//! Restoring a backup streamed by the controller: every artifact is verified
//! and staged beside what it replaces, then swapped in part by part, on
//! record (see [`crate::swap`]), so the app is either wholly as it was or
//! wholly restored, and whatever the backup does not hold stays untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use hop3_proto::format::{APP_JSON, Archive, Compression, ENV_JSON, ENV_RAW};
use hop3_proto::layout::{Layout, Owner, TREES};
use hop3_proto::manifest::Manifest;
use hop3_proto::names::validate_artifact_path;
use hop3_proto::v1::restore_app_event::Event;
use hop3_proto::v1::{self, restore_app_message::Msg};

use tonic::Streaming;

use crate::apps::{APP_FILE, AppConfig, ENV_FILE, ServiceConfig, read_app_config};
use crate::archive;
use crate::error::{AgentError, Result};
use crate::services;
use crate::state::AgentState;
use crate::swap::{Journal, apply_owner};
use crate::trees::{self, Place};
use hop3_wire::artifacts::{DecodeError, Decoder};
use hop3_wire::events::{EventSender, StreamProgress};
use hop3_wire::progress::Progress;

/// Largest `env.json`, `ENV` or `app.json` accepted.
const MAX_ENV_BYTES: usize = 16 * 1024 * 1024;

mod config;
mod live;
mod receive;
mod space;

use receive::{Received, Target, buffer, finish, next, spawn_load, spawn_unpack};
use space::check_space;

type Sender = EventSender<v1::RestoreAppEvent>;

/// Prefix of staging directories under `apps/`: never an app (apps don't start with a dot).
pub fn staging_dir(apps_dir: &Path, app: &str, id: &str) -> PathBuf {
    apps_dir.join(format!(".{app}.restore-{id}"))
}

/// Runs one restore from the controller's stream; returns what was restored.
pub async fn restore(
    state: &AgentState,
    mut inbound: Streaming<v1::RestoreAppMessage>,
    out: &Sender,
) -> Result<v1::RestoreDone> {
    let header = match next(&mut inbound, state.idle_timeout).await? {
        Msg::Header(h) => h,
        _ => {
            return Err(AgentError::Protocol(
                "a restore must start with its header".into(),
            ));
        }
    };
    let manifest = Manifest::from_json(header.manifest_json.as_bytes())?;
    let archives = manifest.archives()?;
    let app = header.app.clone();
    let live = state.root.app_dir(&app)?;
    let apps_dir = state.root.apps_dir();
    tokio::fs::create_dir_all(&apps_dir)
        .await
        .map_err(|e| AgentError::io("creating the apps directory", e))?;
    let is_app = exists(&live.join(APP_FILE)).await;
    let own = app == manifest.app_name;
    // A restore into another app's name that exists replaces that app: only when asked.
    if !own && is_app && !header.replace {
        return Err(AgentError::TargetExists {
            app,
            backup_app: manifest.app_name.clone(),
        });
    }
    let live_cfg = if is_app {
        Some(read_app_config(&app, &live).await?)
    } else {
        None
    };
    let layout = manifest.layout.clone().unwrap_or_default();
    let ownership = ownership(state, &live, &layout, &header, &manifest).await;
    let mut notes = Vec::new();
    let follow = match (own, header.replace) {
        (true, _) => trees::Follow::Own,
        (false, true) => trees::Follow::Live,
        (false, false) => trees::Follow::Never,
    };
    let places = places(&live, &apps_dir, follow, &layout).await?;
    for (_, placement) in &places {
        notes.extend(placement.note.clone());
    }
    let staging = staging_dir(&apps_dir, &app, &manifest.backup_id);
    check_space(&manifest, &places, &staging, header.total_bytes).await?;

    let mut journal = Journal::begin(&state.root.state_dir(), &app, &manifest.backup_id).await?;
    let roots = match make_staging(&mut journal, &staging, &places, &manifest.backup_id).await {
        Ok(roots) => roots,
        Err(e) => {
            journal.end().await;
            return Err(e);
        }
    };
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: staging");

    let progress = StreamProgress::new(out.clone(), header.total_bytes, |p| v1::RestoreAppEvent {
        event: Some(Event::Progress(p)),
    });
    let mut job = Restoring {
        state,
        app: app.clone(),
        own,
        header: &header,
        manifest: &manifest,
        layout: &layout,
        ownership,
        live: live.clone(),
        live_cfg,
        staging: staging.clone(),
        roots,
        places,
        archives,
        backup_cfg: None,
        env: None,
        env_raw: None,
        targets: Vec::new(),
        staged: Vec::new(),
        notes,
    };
    let staged = async {
        job.receive(&mut inbound, &progress).await?;
        job.write_config().await
    }
    .await;
    if let Err(e) = staged {
        job.discard(journal).await;
        return Err(e);
    }
    progress.step("swap", 0);
    if let Err(e) = job.swap_in(&mut journal, is_app).await {
        job.discard(journal).await;
        return Err(e);
    }
    journal.end().await;
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: done");
    let meta = &manifest.app_metadata;
    let start = match (&state.hooks.start, is_app, header.no_start) {
        (None, _, _) => "unmanaged",
        (Some(_), false, _) => "new",
        (Some(_), true, true) => "stopped",
        (Some(_), true, false) => "restarted",
    };
    Ok(v1::RestoreDone {
        start: start.to_owned(),
        app,
        app_state: Some(v1::AppState {
            hostname: job.hostname().unwrap_or_default(),
            port: meta.port.unwrap_or_default(),
            run_state: meta.run_state.clone().unwrap_or_default(),
        }),
        notes: job.notes,
    })
}

/// Makes the staging directories, on record: the app's, and one beside
/// each linked tree's target. Returns the directory each tree unpacks into.
async fn make_staging(
    journal: &mut Journal,
    staging: &Path,
    places: &[(&'static str, trees::Placement)],
    backup_id: &str,
) -> Result<BTreeMap<&'static str, PathBuf>> {
    remove_tree(staging).await?;
    make_private_dir(staging).await?;
    journal.staging(staging.to_path_buf()).await?;
    let mut roots = BTreeMap::new();
    for (tree, placement) in places {
        let root = match placement.place.staging(backup_id) {
            None => staging.to_path_buf(),
            Some(dir) => {
                remove_tree(&dir).await?;
                make_private_dir(&dir).await?;
                journal.staging(dir.clone()).await?;
                dir
            }
        };
        roots.insert(*tree, root);
    }
    Ok(roots)
}

/// Where each tree the backup may hold goes.
async fn places(
    live: &Path,
    apps_dir: &Path,
    follow: trees::Follow,
    layout: &Layout,
) -> Result<Vec<(&'static str, trees::Placement)>> {
    let (live, links) = (live.to_path_buf(), layout.links.clone());
    let apps_dir = apps_dir.to_path_buf();
    let app_owner = layout.app_dir.map(|o| o.uid);
    tokio::task::spawn_blocking(move || {
        TREES
            .iter()
            .map(|tree| {
                let recorded = links.get(*tree).map(String::as_str);
                (
                    *tree,
                    trees::place(tree, &live, &apps_dir, follow, recorded, app_owner),
                )
            })
            .collect()
    })
    .await
    .map_err(|e| AgentError::Bug(format!("placing the trees failed: {e}")))
}

/// The names in directory `dir`.
async fn entry_names(dir: &Path) -> Result<BTreeSet<std::ffi::OsString>> {
    let err = |e| AgentError::io("listing a linked tree", e);
    let mut names = BTreeSet::new();
    let mut rd = tokio::fs::read_dir(dir).await.map_err(err)?;
    while let Some(entry) = rd.next_entry().await.map_err(err)? {
        names.insert(entry.file_name());
    }
    Ok(names)
}

/// Who the restored app belongs to, and what of the archive's owners and
/// set-ID bits stands.
///
/// A backup this controller sealed of this very app, made on this very
/// machine (its host id and machine id), comes back exactly as it was: the
/// owners it recorded, set-ID bits and capabilities of the app owner's own
/// files. Any other restore gives every file to the owner of the existing
/// app's directory, else to `--app-user`, else (a sealed backup) to the owner
/// it recorded when made on this machine, or to the user and group of the
/// names it recorded when this host knows both, else to the owner of the
/// host's apps directory; and no set-ID bit or capability comes back.
async fn ownership(
    state: &AgentState,
    live: &Path,
    layout: &Layout,
    header: &v1::RestoreHeader,
    manifest: &Manifest,
) -> archive::Ownership {
    use std::os::unix::fs::MetadataExt;
    let names = layout.app_owner_names.clone();
    let (by_name, here) = tokio::task::spawn_blocking(move || {
        (
            names.as_ref().and_then(crate::owners::ids_of),
            crate::owners::machine_id(),
        )
    })
    .await
    .unwrap_or((None, None));
    let own_backup = header.trusted
        && header.app == manifest.app_name
        && manifest.host.as_deref() == Some(state.host_id.as_str())
        // Both without one: only the host id tells.
        && layout.machine_id == here;
    let recorded = layout.app_dir.map(|o| (o.uid, o.gid));
    if own_backup && let Some(owner) = recorded {
        return archive::Ownership { owner, exact: true };
    }
    let owner_of = |meta: std::fs::Metadata| (meta.uid(), meta.gid());
    let existing = match tokio::fs::symlink_metadata(live).await {
        Ok(meta) if meta.is_dir() => Some(owner_of(meta)),
        _ => None,
    };
    // On the machine that made it, a sealed backup's numbers are this
    // machine's users (a clone of an app whose user has no name keeps it);
    // elsewhere only names mean the same user.
    let same_machine = header.trusted && layout.machine_id.is_some() && layout.machine_id == here;
    let owner = match existing
        .or(state.app_user)
        .or(recorded.filter(|_| same_machine))
        .or(by_name.filter(|_| header.trusted))
    {
        Some(owner) => owner,
        None => tokio::fs::metadata(state.root.apps_dir())
            .await
            .map(owner_of)
            .unwrap_or((
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )),
    };
    archive::Ownership {
        owner,
        exact: false,
    }
}

async fn exists(path: &Path) -> bool {
    tokio::fs::symlink_metadata(path).await.is_ok()
}

async fn make_private_dir(dir: &Path) -> Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.mode(0o700);
    builder
        .create(dir)
        .await
        .map_err(|e| AgentError::io("creating the staging directory", e))
}

/// One restore in progress.
struct Restoring<'a> {
    state: &'a AgentState,
    /// The app restored into.
    app: String,
    /// Whether that app is the backup's own.
    own: bool,
    header: &'a v1::RestoreHeader,
    manifest: &'a Manifest,
    layout: &'a Layout,
    ownership: archive::Ownership,
    /// The app's directory.
    live: PathBuf,
    /// The target app's app.json, if the app exists on this host.
    live_cfg: Option<AppConfig>,
    /// The app's staging directory.
    staging: PathBuf,
    /// The directory each tree is unpacked into.
    roots: BTreeMap<&'static str, PathBuf>,
    places: Vec<(&'static str, trees::Placement)>,
    /// The tree archives of the backup: path, which archive, its compression.
    archives: Vec<(String, Archive, Compression)>,
    /// The app.json saved in the backup (absent in older backups).
    backup_cfg: Option<AppConfig>,
    env: Option<BTreeMap<String, String>>,
    /// ENV as it was on disk (absent in older backups).
    env_raw: Option<Vec<u8>>,
    /// Each restored service: where its data was, where it goes.
    targets: Vec<(ServiceConfig, ServiceConfig)>,
    staged: Vec<services::Staged>,
    /// What the user should know about this restore.
    notes: Vec<String>,
}

impl Restoring<'_> {
    /// Receives every artifact into the staging directories and scratch
    /// databases (artifacts may interleave), then the commit.
    async fn receive(
        &mut self,
        inbound: &mut Streaming<v1::RestoreAppMessage>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut decoder = Decoder::default();
        let received = self.receive_into(&mut decoder, inbound, progress).await;
        if received.is_err() {
            for (_, target) in decoder.drain() {
                target.abandon(self.state).await;
            }
        }
        received?;
        if let Some(missing) = self.manifest.checksums.keys().find(|p| !decoder.started(p)) {
            return Err(AgentError::Protocol(format!("{missing} was never sent")));
        }
        Ok(())
    }

    async fn receive_into(
        &mut self,
        decoder: &mut Decoder<Target>,
        inbound: &mut Streaming<v1::RestoreAppMessage>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let protocol = |e: DecodeError| AgentError::Protocol(e.to_string());
        loop {
            match next(inbound, self.state.idle_timeout).await? {
                Msg::Start(s) => {
                    validate_artifact_path(&s.path)?;
                    if !self.manifest.checksums.contains_key(&s.path) {
                        return Err(AgentError::Protocol(format!(
                            "{} is not in the backup's manifest",
                            s.path
                        )));
                    }
                    decoder.check_start(&s).map_err(protocol)?;
                    progress.step(&s.path, 0);
                    let target = self.target_for(&s.path).await?;
                    decoder.start(&s, target).map_err(protocol)?;
                }
                Msg::Data(data) => {
                    progress.advance(data.data.len() as u64);
                    let (path, target) = decoder.data(&data).map_err(protocol)?;
                    target.write(path, data.data).await?;
                }
                Msg::End(end) => {
                    let ended = decoder.end(end).map_err(protocol)?;
                    let expected = self.manifest.checksums[&ended.path];
                    let path = ended.path.clone();
                    let received = finish(self.state, ended, &expected).await?;
                    self.take(&path, received)?;
                }
                Msg::Commit(_) if decoder.is_idle() => return Ok(()),
                _ => {
                    return Err(AgentError::Protocol(
                        "expected an artifact or the commit".into(),
                    ));
                }
            }
        }
    }

    /// Keeps what artifact `path` delivered.
    fn take(&mut self, path: &str, received: Received) -> Result<()> {
        let bad = |reason: String| AgentError::BadArchive {
            archive: path.to_owned(),
            reason,
        };
        match received {
            Received::Nothing => {}
            Received::Env(bytes) => {
                self.env = Some(serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?)
            }
            Received::EnvRaw(bytes) => self.env_raw = Some(bytes),
            Received::AppConfig(bytes) => {
                self.backup_cfg =
                    Some(serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?)
            }
            Received::Unpacked(unpacked) => {
                if !unpacked.refused_xattrs.is_empty() {
                    self.notes.push(format!(
                        "{} extended attribute(s) could not be set here: {}",
                        unpacked.refused_xattrs.len(),
                        unpacked.refused_xattrs.join("; ")
                    ));
                }
            }
            Received::Service(staged) => self.staged.push(*staged),
        }
        Ok(())
    }

    /// Where the bytes of artifact `path` go.
    async fn target_for(&mut self, path: &str) -> Result<Target> {
        let roots = |tops: &[&'static str]| -> Vec<(&'static str, PathBuf)> {
            tops.iter().map(|t| (*t, self.roots[t].clone())).collect()
        };
        if let Some((_, archive, compression)) = self.archives.iter().find(|(p, ..)| p == path) {
            return Ok(spawn_unpack(
                path,
                *compression,
                roots(archive.trees()),
                self.ownership,
            ));
        }
        Ok(match path {
            ENV_JSON => buffer(Received::Env),
            ENV_RAW => buffer(Received::EnvRaw),
            APP_JSON => buffer(Received::AppConfig),
            _ => match self
                .manifest
                .services
                .iter()
                .find(|s| s.backup_file == path)
            {
                Some(entry) => {
                    let (source, target) = self.resolve_service(&entry.kind, &entry.name).await?;
                    self.targets.push((source, target.clone()));
                    let tag = format!("{}_{}", self.manifest.backup_id, self.targets.len());
                    spawn_load(self.state.tools.clone(), target, tag)
                }
                None => {
                    tracing::warn!(artifact = path, "not restored: unknown artifact");
                    Target::Ignored
                }
            },
        })
    }

    /// The connection a service's data came from, and the one it goes to:
    /// the live app's own, or for a clone a new database of its own.
    async fn resolve_service(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<(ServiceConfig, ServiceConfig)> {
        let find = |cfg: &Option<AppConfig>| {
            cfg.as_ref()
                .and_then(|c| c.services.iter().find(|s| s.kind == kind && s.name == name))
                .cloned()
        };
        let source = find(&self.backup_cfg);
        let live = find(&self.live_cfg);
        let unknown = || AgentError::Service {
            service: format!("{kind}:{name}"),
            step: "connect",
            detail:
                "no connection is known for it: neither the backup nor the app's app.json lists it"
                    .into(),
        };
        match (source, live) {
            (Some(source), Some(live)) => Ok((source, live)),
            (None, Some(live)) => Ok((live.clone(), live)),
            (Some(source), None) if !self.own => {
                let url = services::clone_url(&self.state.tools, &source, &self.app).await?;
                let target = ServiceConfig {
                    url,
                    ..source.clone()
                };
                Ok((source, target))
            }
            (Some(source), None) => Ok((source.clone(), source)),
            (None, None) => Err(unknown()),
        }
    }

    /// The hostname the restored app gets ([`config::choose_hostname`]).
    fn hostname(&self) -> Option<String> {
        config::choose_hostname(
            &self.header.hostname,
            self.own,
            self.manifest.app_metadata.hostname.as_deref(),
            self.live_cfg.as_ref().and_then(|c| c.hostname.as_deref()),
        )
    }

    /// Writes ENV and app.json into the staging directory (with the modes
    /// and owners they had), pointing a clone's services and the variables
    /// that carried their URLs at its copies, and the links of linked trees.
    async fn write_config(&mut self) -> Result<()> {
        let rewrites = config::url_rewrites(&self.targets);
        let env = config::restored_env(
            self.env_raw.as_deref(),
            self.env.as_ref(),
            self.manifest.layout.is_some(),
            &rewrites,
        );
        if let Some(env) = env {
            let owner = self.owner_of(ENV_FILE).await;
            write_owned(&self.staging.join(ENV_FILE), &env, owner).await?;
        }

        let mut cfg = self
            .live_cfg
            .clone()
            .or_else(|| self.backup_cfg.clone())
            .unwrap_or_default();
        config::point_services(&mut cfg, &self.targets);
        let meta = &self.manifest.app_metadata;
        let hostname = self.hostname();
        if !self.own && meta.hostname.is_some() && hostname != meta.hostname {
            self.notes.push(match &hostname {
                Some(h) => format!("hostname: {h} (the backup's app has {})", meta.hostname.as_deref().unwrap_or_default()),
                None => format!(
                    "hostname: none, so that {} keeps its own ({}); give this app one with --hostname",
                    self.manifest.app_name,
                    meta.hostname.as_deref().unwrap_or_default()
                ),
            });
        }
        cfg.hostname = hostname;
        cfg.port = meta.port;
        cfg.run_state = meta.run_state.clone();
        let mut json = serde_json::to_vec_pretty(&cfg).expect("app.json serialises");
        json.push(b'\n');
        let owner = self.owner_of(APP_FILE).await;
        write_owned(&self.staging.join(APP_FILE), &json, owner).await?;

        for (tree, placement) in &self.places {
            if let Place::Linked { link, .. } = &placement.place {
                let at = self.staging.join(tree);
                tokio::fs::symlink(link, &at)
                    .await
                    .map_err(|e| AgentError::io("linking a tree", e))?;
                if let Some(owner) = self.layout.app_dir.map(|o| self.owned(o)) {
                    let _ = tokio::task::spawn_blocking(move || apply_owner(&at, owner)).await;
                }
            }
        }
        Ok(())
    }

    /// The mode and owner `name` gets: as the backup recorded, else as the
    /// live file has them, else none (0600, the agent's own).
    async fn owner_of(&self, name: &str) -> Option<Owner> {
        if let Some(owner) = self.layout.files.get(name) {
            return Some(self.owned(*owner));
        }
        use std::os::unix::fs::MetadataExt;
        match tokio::fs::symlink_metadata(self.live.join(name)).await {
            Ok(meta) if meta.is_file() => Some(Owner {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            }),
            _ => None,
        }
    }

    /// The mode and owner an entry recorded as `recorded` gets: as recorded
    /// for an exact restore, else the target app's owner; no set-ID bits.
    fn owned(&self, recorded: Owner) -> Owner {
        let (uid, gid) = if self.ownership.exact {
            (recorded.uid, recorded.gid)
        } else {
            self.ownership.owner
        };
        Owner {
            mode: recorded.mode & 0o1777,
            uid,
            gid,
        }
    }
}

async fn remove_tree(path: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io("removing an old staging directory", e)),
    }
}

/// Removes a tree in the background: deleting many files is slow, and nothing waits on it.
pub fn discard(path: PathBuf) {
    tokio::spawn(async move {
        if let Err(e) = remove_tree(&path).await {
            tracing::warn!(path = %path.display(), error = %e, "could not remove");
        }
    });
}

/// Writes a new file with `owner`'s mode and (as root) owner; 0600 and
/// the agent's own without one.
async fn write_owned(path: &Path, bytes: &[u8], owner: Option<Owner>) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let err = |e| AgentError::io("writing the restored app", e);
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(err)?;
    f.write_all(bytes).await.map_err(err)?;
    f.sync_all().await.map_err(err)?;
    drop(f);
    if let Some(owner) = owner {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || apply_owner(&path, owner))
            .await
            .map_err(|e| AgentError::Bug(format!("setting an owner failed: {e}")))?
            .map_err(err)?;
    }
    Ok(())
}

/// Removes staging and old trees left by a restore that was interrupted
/// (agent killed): they are never apps, and the live app is whole either way.
pub async fn clean_leftovers(apps_dir: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(apps_dir).await else {
        return;
    };
    while let Ok(Some(entry)) = rd.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.contains(".restore-") || name.contains(".old-")) {
            tracing::info!(dir = %name, "removing what an interrupted restore left");
            discard(entry.path());
        }
    }
}
