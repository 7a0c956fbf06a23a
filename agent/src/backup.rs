//! Producing a backup: the app's artifacts, one after another, as chunks on
//! the BackupApp stream, each closed by its SHA-256 and size.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let progress = Arc::new(StreamProgress::new(out.clone(), estimated, |p| {
        event(Event::Progress(p))
    }));
    progress.step("archives", estimated);
    let env_json = serde_json::to_vec_pretty(&env).expect("a string map serialises");
    artifact(out, file(0, "env.json"), |w| write_all(w, env_json)).await?;
    // app.json carries the service connections a restore on a fresh host needs.
    let app_json = tokio::fs::read(dir.join(APP_FILE))
        .await
        .map_err(|e| AgentError::io("reading app.json", e))?;
    artifact(out, file(1, APP_FILE), |w| write_all(w, app_json)).await?;

    // The archives and the dumps are produced at the same time, each on a
    // task of its own so that compression runs on every core; their chunks
    // interleave on the stream, tied to their artifact by id.
    let mut jobs = tokio::task::JoinSet::new();
    let archives = [
        (
            2,
            "source",
            vec![("git", dir.join("git")), ("src", dir.join("src"))],
        ),
        (3, "data", vec![("data", dir.join("data"))]),
    ];
    for (id, stem, members) in archives {
        let (out, progress) = (out.clone(), progress.clone());
        // Packing is file I/O and compression from start to end: one
        // blocking thread runs all of it, sending chunks as they fill.
        jobs.spawn_blocking(move || {
            out.blocking_send(event(Event::Start(file(id, &codec.file(stem)))))?;
            let writer = ChunkWriter::new(id, out.clone());
            match archive::pack(&members, writer, codec, &*progress) {
                Ok(writer) => writer.finish(),
                // The controller hung up: that, not the write that noticed, is the error.
                Err(_) if out.is_closed() => Err(AgentError::Cancelled),
                Err(e) => Err(e),
            }
        });
    }
    let dumps: Vec<_> = cfg.services.iter().cloned().zip(dumps).collect();
    let (tools, dump_out) = (state.tools.clone(), out.clone());
    jobs.spawn(async move {
        for (n, (service, (_, path))) in dumps.into_iter().enumerate() {
            let start = v1::ArtifactStart {
                path,
                service_type: service.kind.clone(),
                service_name: service.name.clone(),
                id: 4 + n as u32,
            };
            let tools = &tools;
            artifact(&dump_out, start, |mut w| async move {
                services::dump(tools, &service, &mut w).await
            })
            .await?;
        }
        Ok(())
    });
    // The first failure ends the backup; dropping the set aborts the others.
    while let Some(done) = jobs.join_next().await {
        done.map_err(|e| AgentError::Protocol(format!("a backup task failed: {e}")))??;
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
    let (id, path) = (start.id, start.path.clone());
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
            out.send(event(Event::Data(v1::ArtifactData { id, data: chunk })))
                .await?;
        }
        out.send(event(Event::End(v1::ArtifactEnd {
            sha256: Checksum::from_hasher(hasher).to_string(),
            size,
            id,
        })))
        .await
    };
    tokio::try_join!(produce(writer), pump)?;
    Ok(())
}

/// The `Write` end of one artifact for a producer on a blocking thread: cuts
/// what is written into chunks, hashes them, and sends each once full,
/// waiting for room on the stream.
struct ChunkWriter {
    id: u32,
    buf: Vec<u8>,
    hasher: Sha256,
    size: u64,
    out: Sender,
}

impl ChunkWriter {
    fn new(id: u32, out: Sender) -> Self {
        Self {
            id,
            buf: Vec::with_capacity(CHUNK_SIZE),
            hasher: Sha256::new(),
            size: 0,
            out,
        }
    }

    fn send_chunk(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        self.out.blocking_send(event(Event::Data(v1::ArtifactData {
            id: self.id,
            data: chunk.into(),
        })))
    }

    /// Sends the last chunk and the artifact's end: digest and size.
    fn finish(mut self) -> Result<()> {
        self.send_chunk()?;
        self.out.blocking_send(event(Event::End(v1::ArtifactEnd {
            sha256: Checksum::from_hasher(self.hasher).to_string(),
            size: self.size,
            id: self.id,
        })))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.send_chunk().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the controller hung up")
            })?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn file(id: u32, path: &str) -> v1::ArtifactStart {
    v1::ArtifactStart {
        path: path.into(),
        id,
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
