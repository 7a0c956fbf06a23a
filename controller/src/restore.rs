//! A restore job: verify every stored checksum, then stream the artifacts
//! to the target agent, which verifies, stages and swaps.

use std::sync::{Arc, Mutex};

use hop3_proto::manifest::Manifest;
use hop3_proto::names::{validate_app_name, validate_host_id, validate_hostname};
use hop3_proto::v1::{self, restore_app_event, restore_app_message::Msg, restore_backup_event};
use hop3_wire::artifacts::{self, SendError};
use hop3_wire::encryption::Identities;
use hop3_wire::events::{EventReceiver, EventSender, StreamProgress};
use hop3_wire::progress::Progress;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;

use crate::catalog::{BackupRow, BackupStatus};
use crate::error::{ControllerError, Result};
use crate::locks::{AppLock, BackupLock, BackupUse};
use crate::registry::AgentClient;
use crate::state::Controller;
use crate::store::Store;

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
    /// The stores to read the backup from, in order: the first that holds
    /// it whole, then the others that may (a copy, when the first fails
    /// its checksums).
    pub sources: Vec<Store>,
    /// Where the backup is in the primary store.
    pub primary: String,
    /// What opens an encrypted backup.
    pub identities: Arc<Identities>,
}

type Out = EventSender<v1::RestoreBackupEvent>;

/// A restore asked for, by the CLI or by anything else that runs jobs.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup_id: String,
    /// Another app to restore into (a clone); None: the backup's own.
    pub target_app: Option<String>,
    /// Another host to restore onto; None: the backup's own.
    pub target_host: Option<String>,
    /// Restore into `target_app` even though it exists and is another app.
    pub replace: bool,
    /// The hostname a clone gets.
    pub hostname: Option<String>,
    /// Restore a backup this controller did not seal.
    pub trust_imported: bool,
    /// Leave the app stopped after the swap.
    pub no_start: bool,
    /// End the restore, while the agent still receives, if whoever follows
    /// its events goes away.
    pub cancel_on_disconnect: bool,
}

/// Starts a restore: checks the request and the backup, picks the host,
/// refuses a backup this controller did not seal unless trusted, takes the
/// backup for reading and the target app's lock, and runs the job in the
/// background. Returns its events, the first one where the restore goes.
pub async fn start(
    ctl: &Arc<Controller>,
    req: RestoreRequest,
) -> Result<EventReceiver<v1::RestoreBackupEvent>> {
    let invalid = |e: &dyn std::fmt::Display| ControllerError::InvalidArgument(e.to_string());
    let row = ctl.backup_row(&req.backup_id).await?;
    let target_app = req.target_app.clone().unwrap_or_else(|| row.app.clone());
    validate_app_name(&target_app).map_err(|e| invalid(&e))?;
    if let Some(hostname) = &req.hostname {
        validate_hostname(hostname).map_err(|e| invalid(&e))?;
    }
    if row.status != BackupStatus::Completed {
        return Err(ControllerError::NotRestorable {
            id: row.backup_id.to_string(),
            status: row.status.as_str(),
        });
    }
    let host = match &req.target_host {
        Some(host) => {
            validate_host_id(host).map_err(|e| invalid(&e))?;
            host.clone()
        }
        None if !row.host.is_empty() => row.host.clone(),
        None => ctl
            .registry
            .only_online()
            .ok_or(ControllerError::NoTargetHost)?,
    };
    let client = ctl.registry.client_of(&host).ok_or_else(|| {
        if req.target_host.is_none() {
            ControllerError::RestoreHostOffline(host.clone())
        } else {
            ControllerError::HostOffline(host.clone())
        }
    })?;
    let sources = usable_sources(crate::copies::sources(ctl, &row).await?, &row).await;
    // A backup nobody vouched for may hold anything (a set-user-ID root
    // shell, say): restored only when the operator says so.
    let trusted = sources[0].sealed(&row.app, &row.backup_id).await;
    if !trusted && !req.trust_imported {
        return Err(ControllerError::Untrusted(row.backup_id.to_string()));
    }
    // The backup read, whatever app it goes into: the app lock is the target's.
    let reading = ctl.use_backup(&row.backup_id, BackupUse::Restore)?;
    let lock = ctl.lock_app(&host, &target_app, "a restore")?;
    tracing::info!(backup_id = %row.backup_id, app = %target_app, host = %host, "restore started");
    let primary = ctl.store.location(&row.app, &row.backup_id);
    let job = RestoreJob {
        host,
        row,
        target_app,
        replace: req.replace,
        hostname: req.hostname.unwrap_or_default(),
        trusted,
        no_start: req.no_start,
        cancel_on_disconnect: req.cancel_on_disconnect,
        client,
        lock,
        reading,
        sources,
        primary,
        identities: ctl.keys.identities.clone(),
    };
    let (tx, rx) = EventSender::channel();
    let started = v1::RestoreStarted {
        backup_id: job.row.backup_id.to_string(),
        app: job.target_app.clone(),
        host: job.host.clone(),
        source: job.sources[0].location(&job.row.app, &job.row.backup_id),
    };
    // The channel is new and has room: this cannot wait.
    let _ = tx
        .send(v1::RestoreBackupEvent {
            event: Some(restore_backup_event::Event::Started(started)),
        })
        .await;
    tokio::spawn(run(job, tx));
    Ok(rx)
}

/// `sources` (the primary first) with the first that holds the backup
/// whole (its manifest valid, every file there) moved to the front; as they
/// are when none does, so that the primary's error is the one reported.
/// With the primary alone, nothing is looked at: the restore's own
/// verification reads it whole anyway.
async fn usable_sources(mut sources: Vec<Store>, row: &BackupRow) -> Vec<Store> {
    if sources.len() == 1 {
        return sources;
    }
    for i in 0..sources.len() {
        match sources[i].holds(&row.app, &row.backup_id).await {
            Ok(()) => {
                if i > 0 {
                    tracing::warn!(backup_id = %row.backup_id, from = %sources[i].describe(), "the primary store does not hold the backup whole: restoring from a copy");
                }
                sources[..=i].rotate_right(1);
                return sources;
            }
            Err(why) => {
                tracing::debug!(backup_id = %row.backup_id, store = %sources[i].describe(), reason = %why, "not a usable source")
            }
        }
    }
    sources
}

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
pub async fn run(job: RestoreJob, out: Out) {
    let id = job.row.backup_id.clone();
    let result = execute(&job, &out).await;
    crate::telemetry::restore_ended(&job.target_app, result.is_ok());
    match result {
        Ok(done) => {
            tracing::info!(backup_id = %id, app = %job.target_app, host = %job.host, "restore completed");
            let mut notes = done.done.notes;
            if done.source != job.primary {
                notes.push(format!(
                    "read from the copy at {}: the primary store does not hold the backup whole ({})",
                    done.source, job.primary
                ));
            }
            let result = v1::RestoreResult {
                backup_id: id.to_string(),
                source: done.source,
                app: done.done.app,
                host: job.host.clone(),
                app_state: done.done.app_state,
                notes,
                start: done.done.start,
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

/// A backup read and checked, ready to send.
struct Verified {
    /// As stored.
    manifest: Manifest,
    /// As the agent sees it once decrypted; None: not encrypted.
    opened: Option<Manifest>,
    /// Bytes to send.
    total: u64,
}

/// Reads the manifest at `source`, opens it when encrypted (before any
/// byte is read: without the identity nothing else is worth reading) and
/// checks every stored checksum there.
async fn verify(source: &Store, job: &RestoreJob, out: &Out) -> Result<Verified> {
    let (app, id) = (&job.row.app, &job.row.backup_id);
    let manifest = source.read_manifest(app, id).await?;
    let opened = crate::decrypt::open_manifest(&job.identities, &manifest)?;
    let progress = StreamProgress::new(out.clone(), manifest.size_bytes, progress_event);
    progress.step("verify", manifest.size_bytes.max(1));
    let advance_by = |n| progress.advance(n);
    let verifying = source.verify(app, id, &manifest, &advance_by);
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
    let total = match &opened {
        Some(m) => m.size_bytes,
        None => checks.iter().map(|c| c.size).sum(),
    };
    Ok(Verified {
        manifest,
        opened,
        total,
    })
}

/// What the agent reported, and where the backup was read from.
struct Done {
    done: v1::RestoreDone,
    source: String,
}

async fn execute(job: &RestoreJob, out: &Out) -> Result<Done> {
    let (app, id) = (&job.row.app, &job.row.backup_id);
    let mut first_error = None;
    let mut verified = None;
    for (i, source) in job.sources.iter().enumerate() {
        // The trust decided in `start` is the first source's seal: another
        // store is read only if it vouches as much (a copy store written by
        // someone else must not pass for this controller's backup).
        if i > 0 && job.trusted && !source.sealed(app, id).await {
            tracing::warn!(backup_id = %id, store = %source.describe(), "not sealed by this controller there: not read");
            first_error.get_or_insert(ControllerError::Untrusted(id.to_string()));
            continue;
        }
        match verify(source, job, out).await {
            Ok(v) => {
                verified = Some((source, v));
                break;
            }
            Err(
                e @ (ControllerError::ChecksumMismatch { .. }
                | ControllerError::Store(_)
                | ControllerError::Manifest(_)),
            ) => {
                tracing::warn!(backup_id = %id, store = %source.describe(), error = %e, "the backup failed its checks there");
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((source, verified)) = verified else {
        return Err(first_error.expect("a restore has a source"));
    };
    let Verified {
        manifest,
        opened,
        total,
    } = verified;

    let (tx, rx) = EventSender::channel();
    let header = v1::RestoreHeader {
        app: job.target_app.clone(),
        manifest_json: String::from_utf8(opened.as_ref().unwrap_or(&manifest).to_json())
            .expect("JSON is UTF-8"),
        total_bytes: total,
        replace: job.replace,
        hostname: job.hostname.clone(),
        trusted: job.trusted,
        no_start: job.no_start,
    };
    let phase: SharedPhase = Arc::new(Mutex::new(Phase::Sending));
    let sender = tokio::spawn(send_backup(
        source.clone(),
        job.row.clone(),
        header,
        manifest,
        job.identities.clone(),
        tx,
        phase.clone(),
    ));
    let mut client = job.client.clone();
    let result = async {
        let mut events = client
            // The stream ends at the first error: the agent sees it end
            // before the commit and discards what it staged.
            .restore_app(ReceiverStream::new(rx).map_while(Result::ok))
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
        Ok(done) => Ok(Done {
            done,
            source: source.location(app, id),
        }),
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

/// Streams the header, every artifact and the commit to the agent. The
/// small files go first, one after another (a service's load needs the
/// backup's app.json); then the archives and dumps at the same time, their
/// frames interleaved, so that the agent unpacks and loads them in parallel.
async fn send_backup(
    source: Store,
    row: BackupRow,
    header: v1::RestoreHeader,
    manifest: Manifest,
    identities: Arc<Identities>,
    tx: EventSender<v1::RestoreAppMessage>,
    phase: SharedPhase,
) -> Result<()> {
    let msg = |m| v1::RestoreAppMessage { msg: Some(m) };
    // A closed stream means the agent gave up; its status says why.
    if tx.send(msg(Msg::Header(header))).await.is_err() {
        return Ok(());
    }
    let bulky = |path: &str| {
        hop3_proto::format::Archive::of_path(manifest.plain_path(path)).is_some()
            || manifest.services.iter().any(|s| s.backup_file == path)
    };
    let (bulk, small): (Vec<_>, Vec<_>) = (0..)
        .zip(manifest.checksums.keys())
        .partition(|(_, path)| bulky(path));
    let artifact = |id, path: &str| Artifact {
        id,
        stored: path.to_owned(),
        plain: manifest.plain_path(path).to_owned(),
        keys: manifest
            .encoding(path)
            .encryption
            .map(|e| (identities.clone(), e.keys.join(", "))),
    };
    for (id, path) in small {
        if !send_one(&source, &row, &tx, artifact(id, path)).await? {
            return Ok(());
        }
    }
    let sent = futures::future::try_join_all(
        bulk.into_iter()
            .map(|(id, path)| send_one(&source, &row, &tx, artifact(id, path))),
    )
    .await?;
    if sent.contains(&false) {
        return Ok(());
    }
    if advance(&phase, Phase::Committed) {
        let _ = tx.send(msg(Msg::Commit(v1::RestoreCommit {}))).await;
    }
    Ok(())
}

/// One artifact to send.
struct Artifact {
    /// Its id on the stream.
    id: u32,
    /// Its path in the store.
    stored: String,
    /// Its path as the agent knows it (decrypted).
    plain: String,
    /// For an encrypted artifact: what opens it, and the keys it is encrypted to.
    keys: Option<(Arc<Identities>, String)>,
}

/// Sends `artifact` of the backup, decrypted; false if the agent hung up.
async fn send_one(
    source: &Store,
    row: &BackupRow,
    tx: &EventSender<v1::RestoreAppMessage>,
    artifact: Artifact,
) -> Result<bool> {
    let stream = source
        .open_artifact(&row.app, &row.backup_id, &artifact.stored)
        .await?;
    let start = v1::ArtifactStart {
        path: artifact.plain,
        id: artifact.id,
        ..Default::default()
    };
    let sent = match artifact.keys {
        None => artifacts::send(tx, start, &mut StreamReader::new(stream)).await,
        Some((identities, keys)) => {
            let mut plain = crate::decrypt::plaintext(stream, identities, keys);
            artifacts::send(tx, start, &mut plain).await
        }
    };
    match sent {
        Ok(_) => Ok(true),
        Err(SendError::Closed(_)) => Ok(false),
        Err(SendError::Read { source, .. }) => {
            if let Some(e) = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<crate::decrypt::Undecryptable>())
            {
                return Err(ControllerError::Decryption {
                    path: artifact.stored,
                    detail: e.0.clone(),
                });
            }
            Err(crate::store::StoreError::Io {
                context: format!("reading {}", artifact.stored),
                source,
            }
            .into())
        }
    }
}
