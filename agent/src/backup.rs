//! Producing a backup: the app's artifacts, one after another, as chunks on
//! the BackupApp stream, each closed by its SHA-256 and size.

use std::future::Future;
use std::path::{Path, PathBuf};

use hop3_proto::v1::{self, backup_app_event::Event};
use hop3_proto::{CHUNK_SIZE, Checksum};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::apps::{APP_FILE, read_app_config, read_env};
use crate::archive;
use crate::chunks::next_chunk;
use crate::error::{AgentError, Result};
use crate::events::{EventSender, StreamProgress};
use crate::progress::Progress;
use crate::services;
use crate::state::AgentState;

type Sender = EventSender<v1::BackupAppEvent>;

fn event(e: Event) -> v1::BackupAppEvent {
    v1::BackupAppEvent { event: Some(e) }
}

/// Streams a backup of `req.app` to `out`.
pub async fn produce(state: &AgentState, req: v1::BackupAppRequest, out: &Sender) -> Result<()> {
    let dir = state.root.existing_app(&req.app).await?;
    let cfg = read_app_config(&req.app, &dir).await?;
    let env = read_env(&dir).await?;
    // Every service is checked before anything is sent: an unknown type
    // fails the backup up front instead of after minutes of archiving.
    let dumps = if req.include_services {
        cfg.services
            .iter()
            .map(services::artifact_path)
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    if req.include_services {
        for service in &cfg.services {
            services::check(&state.tools, service).await?;
        }
    }
    let trees = ["git", "src", "data"].map(|t| dir.join(t));
    let estimated = tree_size(trees.to_vec()).await;
    out.send(event(Event::Plan(v1::BackupPlan {
        estimated_bytes: estimated,
        app_state: Some(v1::AppState {
            hostname: cfg.hostname.clone().unwrap_or_default(),
            port: cfg.port.unwrap_or_default(),
            run_state: cfg.run_state.clone().unwrap_or_default(),
        }),
        env_vars_count: env.len() as u32,
    })))
    .await?;

    let codec = archive::Codec::for_format(&req.format)?;
    let progress = StreamProgress::new(out.clone(), estimated, |p| event(Event::Progress(p)));
    progress.step("source", estimated);
    let source = [("git", dir.join("git")), ("src", dir.join("src"))];
    artifact(out, file(&codec.file("source")), |w| async {
        archive::pack(&source, w, codec, &progress).await.map(drop)
    })
    .await?;
    progress.step("data", 0);
    let data = [("data", dir.join("data"))];
    artifact(out, file(&codec.file("data")), |w| async {
        archive::pack(&data, w, codec, &progress).await.map(drop)
    })
    .await?;
    progress.step("env", 0);
    let env_json = serde_json::to_vec_pretty(&env).expect("a string map serialises");
    artifact(out, file("env.json"), |w| write_all(w, env_json)).await?;
    // app.json carries the service connections a restore on a fresh host needs.
    let app_json = tokio::fs::read(dir.join(APP_FILE))
        .await
        .map_err(|e| AgentError::io("reading app.json", e))?;
    artifact(out, file(APP_FILE), |w| write_all(w, app_json)).await?;
    for (service, (_, path)) in cfg.services.iter().zip(&dumps) {
        progress.step(&format!("services/{}", services::label(service)), 0);
        let start = v1::ArtifactStart {
            path: path.clone(),
            service_type: service.kind.clone(),
            service_name: service.name.clone(),
        };
        artifact(out, start, |mut w| async move {
            services::dump(&state.tools, service, &mut w).await
        })
        .await?;
    }
    Ok(())
}

/// Sends one artifact: its start, the bytes `produce` writes, cut into
/// chunks of `CHUNK_SIZE`, and its end with digest and size.
async fn artifact<F, Fut>(out: &Sender, start: v1::ArtifactStart, produce: F) -> Result<()>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let path = start.path.clone();
    let path = path.as_str();
    out.send(event(Event::Start(start))).await?;
    let (writer, mut reader) = tokio::io::duplex(CHUNK_SIZE);
    let pump = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = next_chunk(&mut reader)
            .await
            .map_err(|e| AgentError::io(format!("producing {path}"), e))?
        {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.send(event(Event::Chunk(chunk))).await?;
        }
        out.send(event(Event::End(v1::ArtifactEnd {
            sha256: Checksum::from_hasher(hasher).to_string(),
            size,
        })))
        .await
    };
    tokio::try_join!(produce(writer), pump)?;
    Ok(())
}

fn file(path: &str) -> v1::ArtifactStart {
    v1::ArtifactStart {
        path: path.into(),
        ..Default::default()
    }
}

async fn write_all(mut w: DuplexStream, bytes: Vec<u8>) -> Result<()> {
    w.write_all(&bytes)
        .await
        .map_err(|e| AgentError::io("streaming a file", e))?;
    w.shutdown()
        .await
        .map_err(|e| AgentError::io("streaming a file", e))
}

/// Bytes of the regular files under `roots`, without following symlinks:
/// an upper bound of what the archives hold before compression.
async fn tree_size(roots: Vec<PathBuf>) -> u64 {
    tokio::task::spawn_blocking(move || roots.iter().map(|r| walk_size(r)).sum())
        .await
        .unwrap_or(0)
}

fn walk_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}
