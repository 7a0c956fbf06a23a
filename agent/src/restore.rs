//! Restoring a backup streamed by the controller: every artifact is verified
//! and staged beside the app, then swapped in with one atomic rename, so the
//! app is either wholly as it was or wholly restored.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hop3_proto::manifest::Manifest;
use hop3_proto::names::validate_artifact_path;
use hop3_proto::v1::{self, restore_app_message::Msg};
use hop3_proto::{Checksum, v1::restore_app_event::Event};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use tonic::Streaming;

use crate::apps::{self, APP_FILE, AppConfig, ENV_FILE, ServiceConfig, read_app_config};
use crate::archive;
use crate::chunks::ChannelReader;
use crate::error::{AgentError, Result};
use crate::events::{EventSender, StreamProgress};
use crate::progress::Progress;
use crate::services;
use crate::state::AgentState;

/// Largest `env.json` or `app.json` accepted.
const MAX_ENV_BYTES: usize = 16 * 1024 * 1024;

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
    one_archive_per_tree(&manifest)?;
    let app = header.app.clone();
    let live = state.root.app_dir(&app)?;
    let apps_dir = state.root.apps_dir();
    tokio::fs::create_dir_all(&apps_dir)
        .await
        .map_err(|e| AgentError::io("creating the apps directory", e))?;
    check_space(&apps_dir, header.total_bytes).await?;
    let live_cfg = if tokio::fs::try_exists(live.join(APP_FILE))
        .await
        .unwrap_or(false)
    {
        Some(read_app_config(&app, &live).await?)
    } else {
        None
    };

    let staging = staging_dir(&apps_dir, &app, &manifest.backup_id);
    remove_tree(&staging).await?;
    tokio::fs::create_dir(&staging)
        .await
        .map_err(|e| AgentError::io("creating the staging directory", e))?;
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: staging");

    let progress = StreamProgress::new(out.clone(), header.total_bytes, |p| v1::RestoreAppEvent {
        event: Some(Event::Progress(p)),
    });
    let mut job = Restoring {
        state,
        app: app.clone(),
        clone: app != manifest.app_name,
        manifest: &manifest,
        live_cfg,
        staging: staging.clone(),
        backup_cfg: None,
        env: None,
        targets: Vec::new(),
        staged: Vec::new(),
    };
    let staged = async {
        job.receive(&mut inbound, &progress).await?;
        job.write_config().await
    }
    .await;
    if let Err(e) = staged {
        job.discard().await;
        return Err(e);
    }
    progress.step("swap", 0);
    if let Err(e) = job.swap_in(&app, &live).await {
        job.discard().await;
        return Err(e);
    }
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: done");
    let meta = &manifest.app_metadata;
    Ok(v1::RestoreDone {
        app,
        app_state: Some(v1::AppState {
            hostname: meta.hostname.clone().unwrap_or_default(),
            port: meta.port.unwrap_or_default(),
            run_state: meta.run_state.clone().unwrap_or_default(),
        }),
        notes: Vec::new(),
    })
}

/// The next message, or `Cancelled` once the controller is gone or silent for `idle`.
async fn next(inbound: &mut Streaming<v1::RestoreAppMessage>, idle: Duration) -> Result<Msg> {
    let msg = tokio::time::timeout(idle, inbound.next())
        .await
        .map_err(|_| AgentError::Stalled(idle.as_secs()))?;
    match msg {
        Some(Ok(v1::RestoreAppMessage { msg: Some(m) })) => Ok(m),
        Some(Ok(_)) => Err(AgentError::Protocol("empty restore message".into())),
        Some(Err(_)) | None => Err(AgentError::Cancelled),
    }
}

/// One restore in progress.
struct Restoring<'a> {
    state: &'a AgentState,
    /// The app restored into.
    app: String,
    manifest: &'a Manifest,
    /// Restoring into another app's name: services get their own copies.
    clone: bool,
    /// The target app's app.json, if the app exists on this host.
    live_cfg: Option<AppConfig>,
    staging: PathBuf,
    /// The app.json saved in the backup (absent in older backups).
    backup_cfg: Option<AppConfig>,
    env: Option<BTreeMap<String, String>>,
    /// Each restored service: where its data was, where it goes.
    targets: Vec<(ServiceConfig, ServiceConfig)>,
    staged: Vec<services::Staged>,
}

/// What arrived for one artifact.
enum Received {
    Nothing,
    Env(Vec<u8>),
    AppConfig(Vec<u8>),
    Service(Box<services::Staged>),
}

impl Restoring<'_> {
    /// Receives every artifact into the staging directory and scratch
    /// databases, then the commit.
    async fn receive(
        &mut self,
        inbound: &mut Streaming<v1::RestoreAppMessage>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut received = BTreeSet::new();
        loop {
            match next(inbound, self.state.idle_timeout).await? {
                Msg::Start(s) => {
                    validate_artifact_path(&s.path)?;
                    let Some(expected) = self.manifest.checksums.get(&s.path) else {
                        return Err(AgentError::Protocol(format!(
                            "{} is not in the backup's manifest",
                            s.path
                        )));
                    };
                    if !received.insert(s.path.clone()) {
                        return Err(AgentError::Protocol(format!("{} sent twice", s.path)));
                    }
                    progress.step(&s.path, 0);
                    let target = self.target_for(&s.path).await?;
                    match receive_artifact(self.state, inbound, &s.path, expected, target, progress)
                        .await?
                    {
                        Received::Nothing => {}
                        Received::Env(bytes) => {
                            self.env = Some(serde_json::from_slice(&bytes).map_err(|e| {
                                AgentError::BadArchive {
                                    archive: s.path.clone(),
                                    reason: e.to_string(),
                                }
                            })?)
                        }
                        Received::AppConfig(bytes) => {
                            self.backup_cfg = Some(serde_json::from_slice(&bytes).map_err(|e| {
                                AgentError::BadArchive {
                                    archive: s.path.clone(),
                                    reason: e.to_string(),
                                }
                            })?)
                        }
                        Received::Service(staged) => self.staged.push(*staged),
                    }
                }
                Msg::Commit(_) => break,
                _ => {
                    return Err(AgentError::Protocol(
                        "expected an artifact or the commit".into(),
                    ));
                }
            }
        }
        if let Some(missing) = self
            .manifest
            .checksums
            .keys()
            .find(|p| !received.contains(*p))
        {
            return Err(AgentError::Protocol(format!("{missing} was never sent")));
        }
        Ok(())
    }

    /// Where the bytes of artifact `path` go.
    async fn target_for(&mut self, path: &str) -> Result<Target> {
        Ok(match (path, archive::Codec::of_file(path)) {
            (_, Some((codec, "source"))) => {
                spawn_unpack(path, codec, &self.staging, &["git", "src"])
            }
            (_, Some((codec, "data"))) => spawn_unpack(path, codec, &self.staging, &["data"]),
            ("env.json", _) => Target::Buffer(Vec::new(), Received::Env as fn(Vec<u8>) -> Received),
            (APP_FILE, _) => {
                Target::Buffer(Vec::new(), Received::AppConfig as fn(Vec<u8>) -> Received)
            }
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
            (Some(source), None) if self.clone => {
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

    /// Writes ENV and app.json into the staging directory, pointing a
    /// clone's services and the variables that carried their URLs at its copies.
    async fn write_config(&self) -> Result<()> {
        if let Some(env) = &self.env {
            let mut env = env.clone();
            for (source, target) in &self.targets {
                if source.url == target.url {
                    continue;
                }
                for value in env.values_mut() {
                    if value.contains(&source.url) {
                        *value = value.replace(&source.url, &target.url);
                    }
                }
            }
            write_private(
                &self.staging.join(ENV_FILE),
                apps::format_env(&env).as_bytes(),
            )
            .await?;
        }
        let mut cfg = self
            .live_cfg
            .clone()
            .or_else(|| self.backup_cfg.clone())
            .unwrap_or_default();
        for (_, target) in &self.targets {
            match cfg
                .services
                .iter_mut()
                .find(|s| s.kind == target.kind && s.name == target.name)
            {
                Some(s) => s.url = target.url.clone(),
                None => cfg.services.push(target.clone()),
            }
        }
        let meta = &self.manifest.app_metadata;
        cfg.hostname = meta.hostname.clone();
        cfg.port = meta.port;
        cfg.run_state = meta.run_state.clone();
        let json = serde_json::to_vec_pretty(&cfg).expect("app.json serialises");
        write_private(&self.staging.join(APP_FILE), &json).await
    }

    /// Stops the app, switches the databases and swaps the staged tree in,
    /// starts the app again; rolls the files and the databases back if it
    /// will not start. What the switches replaced is dropped only once the
    /// app runs on what was restored.
    async fn swap_in(&mut self, app: &str, live: &Path) -> Result<()> {
        let state = self.state;
        let existed = tokio::fs::try_exists(live).await.unwrap_or(false);
        if existed {
            state.hooks.stop(app).await?;
        }
        if let Err(e) = self.switch_services().await {
            if existed {
                let _ = state.hooks.start(app).await;
            }
            return Err(e);
        }
        let id = &self.manifest.backup_id;
        if !existed {
            if let Err(e) = rename(&self.staging, live).await {
                self.undo_services().await;
                return Err(e);
            }
            self.finish_services().await;
            return Ok(());
        }
        if let Err(e) = exchange(&self.staging, live).await {
            self.undo_services().await;
            let _ = state.hooks.start(app).await;
            return Err(e);
        }
        if let Err(e) = state.hooks.start(app).await {
            tracing::warn!(
                app,
                "restored app does not start; rolling its files and services back"
            );
            if let Err(back) = exchange(&self.staging, live).await {
                // The restored files stay in place: so do the restored databases.
                self.finish_services().await;
                return Err(back);
            }
            self.undo_services().await;
            if let Err(again) = state.hooks.start(app).await {
                tracing::warn!(app, error = %again, "the previous version does not start either");
            }
            return Err(e);
        }
        self.finish_services().await;
        // The old tree now sits at the staging path. Backups from Hop3's
        // Python server hold no deployed tree: keep the one the app had, as
        // that server's own restore does.
        if !tokio::fs::try_exists(live.join("src"))
            .await
            .unwrap_or(true)
            && tokio::fs::try_exists(self.staging.join("src"))
                .await
                .unwrap_or(false)
        {
            rename(&self.staging.join("src"), &live.join("src")).await?;
        }
        let old = live.with_file_name(format!(".{app}.old-{id}"));
        remove_tree(&old).await?;
        rename(&self.staging, &old).await?;
        discard(old);
        Ok(())
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
    async fn discard(&mut self) {
        for staged in self.staged.drain(..) {
            services::discard(&self.state.tools, &staged).await;
        }
        discard(self.staging.clone());
    }
}

/// [`services::undo`], logged when it fails: the service stays on record
/// for the agent's next start, which tries again.
async fn undo_logged(tools: &services::Tools, staged: &services::Staged) {
    if let Err(e) = services::undo(tools, staged).await {
        tracing::error!(service = staged.label(), error = %e, "could not undo a database switch");
    }
}

/// Where the bytes of one artifact go while they arrive.
enum Target {
    Archive {
        tx: Option<mpsc::Sender<io::Result<Bytes>>>,
        task: tokio::task::JoinHandle<Result<Received>>,
    },
    Buffer(Vec<u8>, fn(Vec<u8>) -> Received),
    Ignored,
}

/// Passes the chunks of one artifact to its target, hashing and counting
/// them, until its end arrives.
/// Refuses a manifest with two archives of one tree (`data.tar.gz` and
/// `data.tar.zst`): both would unpack into the same directories, each
/// checking only its own links, so one could lead the other out.
fn one_archive_per_tree(manifest: &Manifest) -> Result<()> {
    let mut stems = BTreeSet::new();
    for path in manifest.checksums.keys() {
        if let Some((_, stem)) = archive::Codec::of_file(path)
            && !stems.insert(stem)
        {
            return Err(AgentError::Protocol(format!(
                "the backup holds more than one {stem} archive"
            )));
        }
    }
    Ok(())
}

async fn feed(
    state: &AgentState,
    inbound: &mut Streaming<v1::RestoreAppMessage>,
    path: &str,
    target: &mut Target,
    progress: &dyn Progress,
) -> Result<(v1::ArtifactEnd, Checksum, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match next(inbound, state.idle_timeout).await? {
            Msg::Chunk(data) => {
                hasher.update(&data);
                size += data.len() as u64;
                progress.advance(data.len() as u64);
                match target {
                    Target::Archive { tx, .. } => {
                        // A failed consumer closes its end; keep hashing so a
                        // damaged artifact is still reported as a mismatch.
                        if let Some(sender) = tx
                            && sender.send(Ok(data)).await.is_err()
                        {
                            *tx = None;
                        }
                    }
                    Target::Buffer(buf, _) => {
                        if buf.len() + data.len() > MAX_ENV_BYTES {
                            return Err(AgentError::Protocol(format!("{path} is too large")));
                        }
                        buf.extend_from_slice(&data);
                    }
                    Target::Ignored => {}
                }
            }
            Msg::End(end) => return Ok((end, Checksum::from_hasher(hasher), size)),
            _ => {
                return Err(AgentError::Protocol(format!(
                    "{path}: expected data or its end"
                )));
            }
        }
    }
}

async fn receive_artifact(
    state: &AgentState,
    inbound: &mut Streaming<v1::RestoreAppMessage>,
    path: &str,
    expected: &Checksum,
    mut target: Target,
    progress: &dyn Progress,
) -> Result<Received> {
    let fed = feed(state, inbound, path, &mut target, progress).await;
    let (end, actual, size) = match fed {
        Ok(fed) => fed,
        Err(e) => {
            // The consumer must be done before the caller throws the staging
            // directory away: left running, it could write into it, or
            // create it again, afterwards.
            if let Target::Archive { tx, task } = target {
                if let Some(tx) = tx {
                    // The consumer is still reading (or gone): this cannot wait long.
                    let _ = tx.send(Err(io::Error::other("restore abandoned"))).await;
                }
                if let Ok(Ok(Received::Service(staged))) = task.await {
                    services::discard(&state.tools, &staged).await;
                }
            }
            return Err(e);
        }
    };
    let intact = actual == *expected && end.sha256 == expected.to_string() && end.size == size;
    let result = match target {
        Target::Archive { tx, task } => {
            if !intact {
                // Cut the consumer's input short with an error: nothing damaged is kept.
                if let Some(tx) = &tx {
                    let _ = tx.send(Err(io::Error::other("checksum mismatch"))).await;
                }
            }
            drop(tx);
            task.await.unwrap_or_else(|e| {
                Err(AgentError::Protocol(format!(
                    "restoring {path} panicked: {e}"
                )))
            })
        }
        Target::Buffer(buf, wrap) => Ok(wrap(buf)),
        Target::Ignored => Ok(Received::Nothing),
    };
    if !intact {
        if let Ok(Received::Service(staged)) = &result {
            tracing::warn!(
                service = staged.label(),
                "dropping a scratch copy of a damaged dump"
            );
            services::discard(&state.tools, staged).await;
        }
        return Err(AgentError::ChecksumMismatch {
            path: path.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    result
}

fn spawn_unpack(
    path: &str,
    codec: archive::Codec,
    staging: &Path,
    allowed: &'static [&'static str],
) -> Target {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let name = path.to_owned();
    let dst = staging.to_path_buf();
    // Decompressing and writing files is blocking work from start to end:
    // one blocking thread runs all of it, fed chunk by chunk.
    let task = tokio::task::spawn_blocking(move || {
        archive::unpack(&name, ChannelReader::new(rx), codec, &dst, allowed)
            .map(|()| Received::Nothing)
    });
    Target::Archive { tx: Some(tx), task }
}

fn spawn_load(tools: services::Tools, target: ServiceConfig, tag: String) -> Target {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let task = tokio::spawn(async move {
        let mut reader = StreamReader::new(ReceiverStream::new(rx));
        let spool = tools.spool_dir();
        services::load(&tools, &target, &tag, &spool, &mut reader)
            .await
            .map(|s| Received::Service(Box::new(s)))
    });
    Target::Archive { tx: Some(tx), task }
}

async fn exchange(a: &Path, b: &Path) -> Result<()> {
    let (a, b) = (a.to_path_buf(), b.to_path_buf());
    tokio::task::spawn_blocking(move || {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &a,
            rustix::fs::CWD,
            &b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
    })
    .await
    .expect("rename task")
    .map_err(|e| AgentError::io("swapping the restored app in", e.into()))
}

async fn rename(from: &Path, to: &Path) -> Result<()> {
    tokio::fs::rename(from, to)
        .await
        .map_err(|e| AgentError::io("moving the restored app in place", e))
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

async fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| AgentError::io("writing the restored app", e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| AgentError::io("writing the restored app", e))?;
    f.sync_all()
        .await
        .map_err(|e| AgentError::io("writing the restored app", e))
}

/// Refuses a restore that cannot fit: at least the backup's own size must be free.
async fn check_space(dir: &Path, needed: u64) -> Result<()> {
    let dir = dir.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
        .await
        .expect("statvfs task")
        .map_err(|e| AgentError::io("checking free space", e.into()))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if available < needed {
        return Err(AgentError::InsufficientSpace { needed, available });
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
