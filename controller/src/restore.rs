//! A restore job: verify every stored checksum, then stream the artifacts
//! to the target agent, which verifies, stages and swaps.

use std::sync::{Arc, Mutex};

use hop3_proto::manifest::Manifest;
use hop3_proto::v1::{self, restore_app_event, restore_app_message::Msg, restore_backup_event};
use hop3_wire::chunks::next_chunk;
use hop3_wire::events::{EventSender, StreamProgress};
use hop3_wire::progress::Progress;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::catalog::BackupRow;
use crate::error::{ControllerError, Result};
use crate::locks::{AppLock, BackupLock};
use crate::registry::AgentClient;
use crate::state::Controller;

/// A restore, ready to run: the target app is locked, the backup held for reading.
pub struct RestoreJob {
    pub row: BackupRow,
    pub target_app: String,
    /// Restore into `target_app` even though it exists and is another app.
    pub replace: bool,
    /// The hostname a clone gets; empty: none.
    pub hostname: String,
    /// The backup carries this controller's seal.
    pub trusted: bool,
    /// Leave the app stopped after the swap.
    pub no_start: bool,
    /// End the restore, while the agent still receives, if the CLI goes away.
    pub cancel_on_disconnect: bool,
    pub host: String,
    pub client: AgentClient,
    pub lock: AppLock,
    /// Keeps the backup from being deleted until the restore ends.
    pub reading: BackupLock,
}

type Out = EventSender<v1::RestoreBackupEvent>;

/// Whether the commit went to the agent: a cancel must not race it (once
/// the agent swaps, the restore ends either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    Committed,
    Cancelled,
}

/// The [`Phase`] both the sender and the canceller look at.
type SharedPhase = Arc<Mutex<Phase>>;

/// Moves `phase` from `Sending` to `to`; false if it had already moved.
fn advance(phase: &SharedPhase, to: Phase) -> bool {
    let mut p = phase.lock().expect("the phase lock is never poisoned");
    if *p != Phase::Sending {
        return false;
    }
    *p = to;
    true
}

/// Runs the job to its end, reporting on `out`.
pub async fn run(ctl: Arc<Controller>, job: RestoreJob, out: Out) {
    let id = job.row.backup_id.clone();
    match execute(&ctl, &job, &out).await {
        Ok(done) => {
            tracing::info!(backup_id = %id, app = %job.target_app, host = %job.host, "restore completed");
            let result = v1::RestoreResult {
                backup_id: id,
                app: done.app,
                host: job.host.clone(),
                app_state: done.app_state,
                notes: done.notes,
                start: done.start,
            };
            let _ = out
                .send(v1::RestoreBackupEvent {
                    event: Some(restore_backup_event::Event::Completed(result)),
                })
                .await;
        }
        Err(e) => {
            if e.is_failure() {
                tracing::error!(backup_id = %id, app = %job.target_app, error = %e, "restore failed");
            } else if matches!(e, ControllerError::Cancelled) {
                tracing::warn!(backup_id = %id, app = %job.target_app, "restore cancelled: its CLI went away");
            } else {
                tracing::warn!(backup_id = %id, app = %job.target_app, error = %e, "restore refused");
            }
            out.fail(e.into()).await;
        }
    }
    drop(job.lock);
    drop(job.reading);
}

fn progress_event(p: v1::Progress) -> v1::RestoreBackupEvent {
    v1::RestoreBackupEvent {
        event: Some(restore_backup_event::Event::Progress(p)),
    }
}

async fn execute(ctl: &Arc<Controller>, job: &RestoreJob, out: &Out) -> Result<v1::RestoreDone> {
    let (app, id) = (&job.row.app, &job.row.backup_id);
    let manifest = ctl.store.read_manifest(app, id).await?;
    let progress = StreamProgress::new(out.clone(), manifest.size_bytes, progress_event);
    progress.step("verify", manifest.size_bytes.max(1));
    let advance_by = |n| progress.advance(n);
    let verifying = ctl.store.verify(app, id, &manifest, &advance_by);
    let checks = tokio::select! {
        c = verifying => c,
        () = out.closed(), if job.cancel_on_disconnect => return Err(ControllerError::Cancelled),
    };
    if let Some(bad) = checks.iter().find(|c| !c.valid()) {
        return Err(ControllerError::ChecksumMismatch {
            path: bad.path.clone(),
            detail: match bad.actual {
                None => "the file is missing".into(),
                Some(actual) => format!("expected {}, found {actual}", bad.expected),
            },
        });
    }
    let total: u64 = checks.iter().map(|c| c.size).sum();

    let (tx, rx) = mpsc::channel(hop3_wire::events::STREAM_DEPTH);
    let header = v1::RestoreHeader {
        app: job.target_app.clone(),
        manifest_json: String::from_utf8(manifest.to_json()).expect("JSON is UTF-8"),
        total_bytes: total,
        replace: job.replace,
        hostname: job.hostname.clone(),
        trusted: job.trusted,
        no_start: job.no_start,
    };
    let phase: SharedPhase = Arc::new(Mutex::new(Phase::Sending));
    let sender = tokio::spawn(send_backup(
        ctl.clone(),
        job.row.clone(),
        header,
        manifest,
        tx,
        phase.clone(),
    ));
    let mut client = job.client.clone();
    let result = async {
        let mut events = client
            .restore_app(ReceiverStream::new(rx))
            .await
            .map_err(|s| ControllerError::from_agent(&job.host, s))?
            .into_inner();
        let mut cancellable = job.cancel_on_disconnect;
        loop {
            let next = tokio::select! {
                m = events.message() => m,
                () = out.closed(), if cancellable => {
                    if advance(&phase, Phase::Cancelled) {
                        // The agent sees its stream end before the commit
                        // and discards what it staged.
                        return Err(ControllerError::Cancelled);
                    }
                    cancellable = false;
                    continue;
                }
            };
            let Some(ev) = next.map_err(|s| ControllerError::from_agent(&job.host, s))? else {
                break;
            };
            match ev.event {
                Some(restore_app_event::Event::Progress(p)) => out.try_send(progress_event(p)),
                Some(restore_app_event::Event::Done(done)) => return Ok(done),
                None => {}
            }
        }
        Err(ControllerError::AgentLost {
            host: job.host.clone(),
            detail: "the restore stream ended without a result".into(),
        })
    }
    .await;
    match result {
        Ok(done) => Ok(done),
        Err(e) => {
            // A read error in the store explains an agent that saw the stream stop.
            sender.abort();
            match sender.await {
                Ok(Err(store_err)) => Err(store_err),
                _ => Err(e),
            }
        }
    }
}

/// Streams the header, every artifact and the commit to the agent.
async fn send_backup(
    ctl: Arc<Controller>,
    row: BackupRow,
    header: v1::RestoreHeader,
    manifest: Manifest,
    tx: mpsc::Sender<v1::RestoreAppMessage>,
    phase: SharedPhase,
) -> Result<()> {
    let msg = |m| v1::RestoreAppMessage { msg: Some(m) };
    // A closed channel means the agent gave up; its status says why.
    if tx.send(msg(Msg::Header(header))).await.is_err() {
        return Ok(());
    }
    for (path, checksum) in &manifest.checksums {
        let mut file = ctl
            .store
            .open_artifact(&row.app, &row.backup_id, path)
            .await?;
        if tx
            .send(msg(Msg::Start(v1::ArtifactStart {
                path: path.clone(),
                ..Default::default()
            })))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut size = 0u64;
        while let Some(chunk) =
            next_chunk(&mut file)
                .await
                .map_err(|e| crate::store::StoreError::Io {
                    context: format!("reading {path}"),
                    source: e,
                })?
        {
            size += chunk.len() as u64;
            if tx.send(msg(Msg::Chunk(chunk))).await.is_err() {
                return Ok(());
            }
        }
        let end = v1::ArtifactEnd {
            sha256: checksum.to_string(),
            size,
            ..Default::default()
        };
        if tx.send(msg(Msg::End(end))).await.is_err() {
            return Ok(());
        }
    }
    if advance(&phase, Phase::Committed) {
        let _ = tx.send(msg(Msg::Commit(v1::RestoreCommit {}))).await;
    }
    Ok(())
}
