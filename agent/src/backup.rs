//! Producing a backup: the app's artifacts, one after another, as chunks on
//! the BackupApp stream, each closed by its SHA-256 and size.

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hop3_proto::v1::{self, backup_app_event::Event};
use hop3_proto::{CHUNK_SIZE, Checksum};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::apps::{read_app_config, read_env};
use crate::archive;
use crate::error::{AgentError, Result};
use crate::events::{EventSender, StreamProgress};
use crate::progress::Progress;
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

    let progress = StreamProgress::new(out.clone(), estimated, |p| event(Event::Progress(p)));
    progress.step("source", estimated);
    let source = [("git", dir.join("git")), ("src", dir.join("src"))];
    artifact(out, "source.tar.gz", |w| async {
        archive::pack(&source, w, &progress).await.map(drop)
    })
    .await?;
    progress.step("data", 0);
    let data = [("data", dir.join("data"))];
    artifact(out, "data.tar.gz", |w| async {
        archive::pack(&data, w, &progress).await.map(drop)
    })
    .await?;
    progress.step("env", 0);
    let env_json = serde_json::to_vec_pretty(&env).expect("a string map serialises");
    artifact(out, "env.json", |mut w| async move {
        w.write_all(&env_json)
            .await
            .map_err(|e| AgentError::io("writing env.json", e))?;
        w.shutdown()
            .await
            .map_err(|e| AgentError::io("writing env.json", e))
    })
    .await?;
    if req.include_services && !cfg.services.is_empty() {
        let kinds: Vec<_> = cfg.services.iter().map(|s| s.kind.as_str()).collect();
        return Err(AgentError::AppConfig {
            app: req.app.clone(),
            reason: format!(
                "attached services ({}) cannot be dumped by this agent yet; use --no-services",
                kinds.join(", ")
            ),
        });
    }
    Ok(())
}

/// Sends one artifact: its start, the bytes `produce` writes, cut into
/// chunks of `CHUNK_SIZE`, and its end with digest and size.
async fn artifact<F, Fut>(out: &Sender, path: &str, produce: F) -> Result<()>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    out.send(event(Event::Start(v1::ArtifactStart { path: path.into() })))
        .await?;
    let (writer, mut reader) = tokio::io::duplex(CHUNK_SIZE);
    let pump = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let mut filled = 0;
            while filled < CHUNK_SIZE {
                let n = reader
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| AgentError::io(format!("producing {path}"), e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            hasher.update(&buf);
            size += filled as u64;
            out.send(event(Event::Chunk(Bytes::from(buf)))).await?;
            if filled < CHUNK_SIZE {
                break;
            }
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
