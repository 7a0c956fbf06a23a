//! Receiving the artifacts of a restore: each one routed to its target
//! (an archive unpacker, a scratch database, a buffer), hashed and counted
//! on the way, and checked against the manifest.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hop3_proto::Checksum;
use hop3_proto::v1::{self, restore_app_message::Msg};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use tonic::Streaming;

use crate::apps::ServiceConfig;
use crate::archive;
use crate::error::{AgentError, Result};
use crate::services;
use crate::state::AgentState;
use hop3_wire::artifacts::Ended;
use hop3_wire::chunks::ChannelReader;

use super::MAX_ENV_BYTES;

/// The next message, or `Cancelled` once the controller is gone or silent for `idle`.
pub(super) async fn next(
    inbound: &mut Streaming<v1::RestoreAppMessage>,
    idle: Duration,
) -> Result<Msg> {
    let msg = tokio::time::timeout(idle, inbound.next())
        .await
        .map_err(|_| AgentError::Stalled(idle.as_secs()))?;
    match msg {
        Some(Ok(v1::RestoreAppMessage { msg: Some(m) })) => Ok(m),
        Some(Ok(_)) => Err(AgentError::Protocol("empty restore message".into())),
        Some(Err(_)) | None => Err(AgentError::Cancelled),
    }
}

/// What arrived for one artifact.
pub(super) enum Received {
    Nothing,
    Env(Vec<u8>),
    EnvRaw(Vec<u8>),
    AppConfig(Vec<u8>),
    Unpacked(archive::Unpacked),
    Service(Box<services::Staged>),
}

pub(super) fn buffer(wrap: fn(Vec<u8>) -> Received) -> Target {
    Target::Buffer(Vec::new(), wrap)
}

/// Where the bytes of one artifact go while they arrive.
pub(super) enum Target {
    Archive {
        tx: Option<mpsc::Sender<io::Result<Bytes>>>,
        task: tokio::task::JoinHandle<Result<Received>>,
    },
    Buffer(Vec<u8>, fn(Vec<u8>) -> Received),
    Ignored,
}

impl Target {
    /// Passes one frame of the artifact at `path` on.
    pub(super) async fn write(&mut self, path: &str, data: Bytes) -> Result<()> {
        match self {
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
        Ok(())
    }

    /// Ends a target whose artifact will not arrive whole. The consumer must
    /// be done before the caller throws the staging directory away: left
    /// running, it could write into it, or create it again, afterwards.
    pub(super) async fn abandon(self, state: &AgentState) {
        if let Target::Archive { tx, task } = self {
            if let Some(tx) = tx {
                // The consumer is still reading (or gone): this cannot wait long.
                let _ = tx.send(Err(io::Error::other("restore abandoned"))).await;
            }
            if let Ok(Ok(Received::Service(staged))) = task.await {
                services::discard(&state.tools, &staged).await;
            }
        }
    }
}

/// Ends an artifact whose last frame has arrived: what its target made of
/// it, if it is what the manifest lists; else nothing of it is kept.
pub(super) async fn finish(
    state: &AgentState,
    ended: Ended<Target>,
    expected: &Checksum,
) -> Result<Received> {
    let intact = ended.intact() && ended.checksum == *expected;
    let path = ended.path.as_str();
    let result = match ended.sink {
        Target::Archive { tx, task } => {
            if !intact {
                // Cut the consumer's input short with an error: nothing damaged is kept.
                if let Some(tx) = &tx {
                    let _ = tx.send(Err(io::Error::other("checksum mismatch"))).await;
                }
            }
            drop(tx);
            task.await
                .unwrap_or_else(|e| Err(AgentError::Bug(format!("restoring {path} failed: {e}"))))
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
            actual: ended.checksum.to_string(),
        });
    }
    result
}

pub(super) fn spawn_unpack(
    path: &str,
    codec: archive::Codec,
    roots: Vec<(&'static str, PathBuf)>,
    ownership: archive::Ownership,
) -> Target {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let name = path.to_owned();
    // Decompressing and writing files is blocking work from start to end:
    // one blocking thread runs all of it, fed chunk by chunk.
    let task = tokio::task::spawn_blocking(move || {
        let roots: Vec<(&str, &Path)> = roots.iter().map(|(t, d)| (*t, d.as_path())).collect();
        archive::unpack(&name, ChannelReader::new(rx), codec, &roots, ownership)
            .map(Received::Unpacked)
    });
    Target::Archive { tx: Some(tx), task }
}

pub(super) fn spawn_load(tools: services::Tools, target: ServiceConfig, tag: String) -> Target {
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
