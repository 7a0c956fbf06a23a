//! Restoring a backup streamed by the controller: every artifact is verified
//! and staged beside the app, then swapped in with one atomic rename, so the
//! app is either wholly as it was or wholly restored.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

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

use crate::apps::{self, APP_FILE, AppConfig, ENV_FILE, read_app_config};
use crate::archive;
use crate::error::{AgentError, Result};
use crate::events::{EventSender, StreamProgress};
use crate::progress::Progress;
use crate::state::AgentState;

/// Largest `env.json` accepted.
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
    let header = match next(&mut inbound).await? {
        Msg::Header(h) => h,
        _ => {
            return Err(AgentError::Protocol(
                "a restore must start with its header".into(),
            ));
        }
    };
    let manifest = Manifest::from_json(header.manifest_json.as_bytes())?;
    let app = header.app.clone();
    let live = state.root.app_dir(&app)?;
    let apps_dir = state.root.apps_dir();
    tokio::fs::create_dir_all(&apps_dir)
        .await
        .map_err(|e| AgentError::io("creating the apps directory", e))?;
    check_space(&apps_dir, header.total_bytes).await?;

    let staging = staging_dir(&apps_dir, &app, &manifest.backup_id);
    remove_tree(&staging).await?;
    tokio::fs::create_dir(&staging)
        .await
        .map_err(|e| AgentError::io("creating the staging directory", e))?;
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: staging");

    let progress = StreamProgress::new(out.clone(), header.total_bytes, |p| v1::RestoreAppEvent {
        event: Some(Event::Progress(p)),
    });
    let staged = async {
        receive(&mut inbound, &manifest, &staging, &progress).await?;
        write_app_config(&live, &staging, &manifest).await
    }
    .await;
    if let Err(e) = staged {
        discard(staging);
        return Err(e);
    }
    progress.step("swap", 0);
    swap_in(state, &app, &live, &staging, &manifest.backup_id).await?;
    tracing::info!(app, backup_id = %manifest.backup_id, "restore: done");
    let meta = &manifest.app_metadata;
    Ok(v1::RestoreDone {
        app,
        app_state: Some(v1::AppState {
            hostname: meta.hostname.clone().unwrap_or_default(),
            port: meta.port.unwrap_or_default(),
            run_state: meta.run_state.clone().unwrap_or_default(),
        }),
    })
}

async fn next(inbound: &mut Streaming<v1::RestoreAppMessage>) -> Result<Msg> {
    match inbound.next().await {
        Some(Ok(v1::RestoreAppMessage { msg: Some(m) })) => Ok(m),
        Some(Ok(_)) => Err(AgentError::Protocol("empty restore message".into())),
        Some(Err(_)) | None => Err(AgentError::Cancelled),
    }
}

/// Receives every artifact into `staging`, then the commit.
async fn receive(
    inbound: &mut Streaming<v1::RestoreAppMessage>,
    manifest: &Manifest,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut received = BTreeSet::new();
    loop {
        match next(inbound).await? {
            Msg::Start(s) => {
                validate_artifact_path(&s.path)?;
                let Some(expected) = manifest.checksums.get(&s.path) else {
                    return Err(AgentError::Protocol(format!(
                        "{} is not in the backup's manifest",
                        s.path
                    )));
                };
                if !received.insert(s.path.clone()) {
                    return Err(AgentError::Protocol(format!("{} sent twice", s.path)));
                }
                progress.step(&s.path, 0);
                receive_artifact(inbound, &s.path, expected, staging, progress).await?;
            }
            Msg::Commit(_) => break,
            _ => {
                return Err(AgentError::Protocol(
                    "expected an artifact or the commit".into(),
                ));
            }
        }
    }
    if let Some(missing) = manifest.checksums.keys().find(|p| !received.contains(*p)) {
        return Err(AgentError::Protocol(format!("{missing} was never sent")));
    }
    Ok(())
}

/// Where the bytes of one artifact go while they arrive.
enum Target {
    Archive {
        tx: Option<mpsc::Sender<io::Result<Bytes>>>,
        task: tokio::task::JoinHandle<Result<()>>,
    },
    Env(Vec<u8>),
    Ignored,
}

async fn receive_artifact(
    inbound: &mut Streaming<v1::RestoreAppMessage>,
    path: &str,
    expected: &Checksum,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut target = match path {
        "source.tar.gz" => spawn_unpack(path, staging, &["git", "src"]),
        "data.tar.gz" => spawn_unpack(path, staging, &["data"]),
        "env.json" => Target::Env(Vec::new()),
        other => {
            tracing::warn!(
                artifact = other,
                "this agent does not restore this artifact yet"
            );
            Target::Ignored
        }
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let end = loop {
        match next(inbound).await? {
            Msg::Chunk(data) => {
                hasher.update(&data);
                size += data.len() as u64;
                progress.advance(data.len() as u64);
                match &mut target {
                    Target::Archive { tx, .. } => {
                        // A failed unpack closes its end; keep hashing so a
                        // damaged artifact is still reported as a mismatch.
                        if let Some(sender) = tx
                            && sender.send(Ok(data)).await.is_err()
                        {
                            *tx = None;
                        }
                    }
                    Target::Env(buf) => {
                        if buf.len() + data.len() > MAX_ENV_BYTES {
                            return Err(AgentError::Protocol("env.json is too large".into()));
                        }
                        buf.extend_from_slice(&data);
                    }
                    Target::Ignored => {}
                }
            }
            Msg::End(end) => break end,
            _ => {
                return Err(AgentError::Protocol(format!(
                    "{path}: expected data or its end"
                )));
            }
        }
    };
    let actual = Checksum::from_hasher(hasher);
    let unpacked = match target {
        Target::Archive { tx, task } => {
            drop(tx);
            Some(task.await.unwrap_or_else(|e| {
                Err(AgentError::Protocol(format!(
                    "unpacking {path} panicked: {e}"
                )))
            }))
        }
        Target::Env(buf) if actual == *expected => {
            let env: std::collections::BTreeMap<String, String> = serde_json::from_slice(&buf)
                .map_err(|e| AgentError::BadArchive {
                    archive: path.into(),
                    reason: e.to_string(),
                })?;
            write_private(&staging.join(ENV_FILE), apps::format_env(&env).as_bytes()).await?;
            None
        }
        _ => None,
    };
    if actual != *expected || end.sha256 != expected.to_string() || end.size != size {
        return Err(AgentError::ChecksumMismatch {
            path: path.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    unpacked.unwrap_or(Ok(()))
}

fn spawn_unpack(path: &str, staging: &Path, allowed: &'static [&'static str]) -> Target {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let name = path.to_owned();
    let dst = staging.to_path_buf();
    let task = tokio::spawn(async move {
        let reader = StreamReader::new(ReceiverStream::new(rx));
        archive::unpack(&name, reader, &dst, allowed).await
    });
    Target::Archive { tx: Some(tx), task }
}

/// app.json of the restored app: the live one's fields (or none for a new
/// app) with hostname, port and run state from the backup.
async fn write_app_config(live: &Path, staging: &Path, manifest: &Manifest) -> Result<()> {
    let mut cfg = if tokio::fs::try_exists(live.join(APP_FILE))
        .await
        .unwrap_or(false)
    {
        read_app_config(&manifest.app_name, live).await?
    } else {
        AppConfig::default()
    };
    let meta = &manifest.app_metadata;
    cfg.hostname = meta.hostname.clone();
    cfg.port = meta.port;
    cfg.run_state = meta.run_state.clone();
    let json = serde_json::to_vec_pretty(&cfg).expect("app.json serialises");
    write_private(&staging.join(APP_FILE), &json).await
}

/// Stops the app, swaps the staged tree in, starts it again; rolls back if it
/// will not start. The old tree is deleted in the background.
async fn swap_in(
    state: &AgentState,
    app: &str,
    live: &Path,
    staging: &Path,
    id: &str,
) -> Result<()> {
    let existed = tokio::fs::try_exists(live).await.unwrap_or(false);
    if existed {
        if let Err(e) = state.hooks.stop(app).await {
            discard(staging.to_path_buf());
            return Err(e);
        }
        exchange(staging, live).await?;
        if let Err(e) = state.hooks.start(app).await {
            tracing::warn!(app, "restored app does not start; rolling back");
            exchange(staging, live).await?;
            discard(staging.to_path_buf());
            if let Err(again) = state.hooks.start(app).await {
                tracing::warn!(app, error = %again, "the previous version does not start either");
            }
            return Err(e);
        }
        // The old tree now sits at the staging path.
        let old = live.with_file_name(format!(".{app}.old-{id}"));
        remove_tree(&old).await?;
        rename(staging, &old).await?;
        discard(old);
    } else {
        rename(staging, live).await?;
    }
    Ok(())
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
