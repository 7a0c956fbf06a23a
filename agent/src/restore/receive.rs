//! Receiving the artifacts of a restore: each one routed to its target
//! (an archive unpacker, a scratch database, a buffer), hashed and counted
//! on the way, and checked against the manifest.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hop3_proto::Checksum;
use hop3_proto::manifest::Manifest;
use hop3_proto::v1::{self, restore_app_message::Msg};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use tonic::Streaming;

use crate::apps::ServiceConfig;
use crate::archive;
use crate::error::{AgentError, Result};
use crate::services;
use crate::state::AgentState;
use hop3_wire::chunks::ChannelReader;
use hop3_wire::progress::Progress;

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

/// Refuses a manifest with two archives of one tree (`data.tar.gz` and
/// `data.tar.zst`): both would unpack into the same directories, each
/// checking only its own links, so one could lead the other out.
pub(super) fn one_archive_per_tree(manifest: &Manifest) -> Result<()> {
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

/// Passes the chunks of one artifact to its target, hashing and counting
/// them, until its end arrives.
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

pub(super) async fn receive_artifact(
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
            actual: actual.to_string(),
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
