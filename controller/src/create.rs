//! A create job: receive the agent's artifacts into a partial backup,
//! checking each digest, then commit it and mark it COMPLETED; on any
//! failure remove what was written and mark it FAILED.

use std::sync::Arc;

use hop3_proto::format::{ENCRYPTED_SUFFIX, Encryption, EncryptionScheme, stored_path};
use hop3_proto::layout::Layout;
use hop3_proto::manifest::{AppMetadata, Manifest, ServiceEntry};
use hop3_proto::manifest::{EncryptedSection, PlainFile, Plaintexts};
use hop3_proto::names::{validate_app_name, validate_artifact_path};
use hop3_proto::v1::{self, backup_app_event::Event, create_backup_event};
use hop3_proto::{BackupId, Format, HOP3_VERSION};
use hop3_wire::artifacts::Decoder;
use hop3_wire::encryption::{AGE_MAGIC, Recipients};
use hop3_wire::events::{EventReceiver, EventSender};

use crate::catalog::{BackupRow, BackupStatus};
use crate::error::{ControllerError, Result};
use crate::locks::{AppLock, BackupLock, BackupUse};
use crate::registry::AgentClient;
use crate::state::Controller;
use crate::store::{ArtifactWriter, PartialBackup};

/// Free space kept beyond the agent's estimate.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// A create, ready to run: the app is found and locked, the row is STARTED.
pub struct CreateJob {
    pub app: String,
    pub host: String,
    pub client: AgentClient,
    pub id: BackupId,
    pub include_services: bool,
    /// The on-disk format version to write.
    pub format: Format,
    pub lock: AppLock,
    /// Keeps the backup from being deleted (or read) while it is written.
    pub writing: BackupLock,
    /// End the backup (FAILED) if the CLI goes away before it is stored.
    pub cancel_on_disconnect: bool,
    /// Every artifact encrypted (on the agent) to these; None: in the clear.
    pub encrypt_to: Option<Arc<Recipients>>,
}

type Out = EventSender<v1::CreateBackupEvent>;

/// A backup asked for, by the CLI or by anything else that runs jobs.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub app: String,
    /// The host whose copy of the app to back up; None: the only one.
    pub host: Option<String>,
    pub include_services: bool,
    /// A format version ("1.0", "1.1"); None: [`Format::DEFAULT`].
    pub format: Option<String>,
    /// End the backup if whoever follows its events goes away.
    pub cancel_on_disconnect: bool,
}

/// Starts a backup: checks the request, finds the app's host, takes the
/// app's lock, records the backup STARTED and runs it in the background.
/// Returns its events, the first one the STARTED row; the backup runs to
/// its end whether or not they are read (unless `cancel_on_disconnect`).
pub async fn start(
    ctl: &Arc<Controller>,
    req: CreateRequest,
) -> Result<EventReceiver<v1::CreateBackupEvent>> {
    validate_app_name(&req.app).map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
    let format = match req.format.as_deref() {
        None => Format::DEFAULT,
        Some(f) => f.parse().map_err(|e: hop3_proto::format::UnknownFormat| {
            ControllerError::InvalidArgument(e.to_string())
        })?,
    };
    let (host, client) = ctl.registry.find_app(&req.app, req.host.as_deref()).await?;
    let lock = ctl.lock_app(&host, &req.app, "a backup")?;
    let mut id = BackupId::generate();
    while ctl.catalog.get(id.as_str()).await?.is_some() {
        id = BackupId::generate();
    }
    // A delete of the STARTED row must wait for the files it would miss.
    let writing = ctl.use_backup(id.as_str(), BackupUse::Create)?;
    let job = CreateJob {
        app: req.app,
        host,
        client,
        id,
        include_services: req.include_services,
        format,
        lock,
        writing,
        cancel_on_disconnect: req.cancel_on_disconnect,
        encrypt_to: ctl.keys.encrypt_to.clone(),
    };
    let started = started_row(&job);
    ctl.catalog.insert(&started).await?;
    tracing::info!(app = %job.app, backup_id = %job.id, host = %job.host, "backup started");
    let (tx, rx) = EventSender::channel();
    // The channel is new and has room: this cannot wait.
    let _ = tx
        .send(v1::CreateBackupEvent {
            event: Some(create_backup_event::Event::Started(ctl.summary(&started))),
        })
        .await;
    tokio::spawn(run(ctl.clone(), job, tx));
    Ok(rx)
}

/// Runs the job to its end, reporting on `out`.
pub async fn run(ctl: Arc<Controller>, job: CreateJob, out: Out) {
    let id = job.id.to_string();
    let started = std::time::Instant::now();
    let result = execute(&ctl, &job, &out).await;
    let size = result.as_ref().map_or(0, |(row, _)| row.total_size);
    let completed = result.is_ok();
    crate::telemetry::backup_ended(&job.app, completed, started.elapsed(), size);
    match result {
        Ok((row, skipped)) => {
            tracing::info!(app = %job.app, backup_id = %id, size = row.total_size, "backup completed");
            let mut summary = ctl.summary(&row);
            summary.skipped = skipped;
            // Where it is now: the primary, and the copies still to make.
            if let Ok(mut found) = crate::copies::locate(&ctl, std::slice::from_ref(&row)).await {
                summary.locations = found.pop().unwrap_or_default();
            }
            let done = create_backup_event::Event::Completed(summary);
            let _ = out.send(v1::CreateBackupEvent { event: Some(done) }).await;
        }
        Err(e) => {
            if e.is_failure() {
                tracing::error!(app = %job.app, backup_id = %id, error = %e, "backup failed");
            } else if matches!(e, ControllerError::Cancelled) {
                tracing::warn!(app = %job.app, backup_id = %id, "backup cancelled: its CLI went away");
            } else {
                tracing::warn!(app = %job.app, backup_id = %id, error = %e, "backup refused");
            }
            if let Err(ce) = ctl.catalog.fail(&id, &e.to_string()).await {
                tracing::error!(backup_id = %id, error = %ce, "could not record the failure");
            }
            out.fail(e.into()).await;
        }
    }
    drop(job.lock);
    drop(job.writing);
    // Only now: a copier woken while this job still held the backup would
    // find it busy and pass it by.
    if completed {
        ctl.copies.wake();
    }
}

/// Runs the create; returns the completed row and the entries the backup
/// could not hold.
async fn execute(
    ctl: &Controller,
    job: &CreateJob,
    out: &Out,
) -> Result<(BackupRow, Vec<v1::SkippedEntry>)> {
    let id = job.id.to_string();
    let mut client = job.client.clone();
    let stream = client
        .backup_app(v1::BackupAppRequest {
            app: job.app.clone(),
            include_services: job.include_services,
            backup_id: id.clone(),
            format: job.format.to_string(),
            recipients: job
                .encrypt_to
                .as_ref()
                .map(|r| r.to_strings())
                .unwrap_or_default(),
        })
        .await
        .map_err(|s| ControllerError::from_agent(&job.host, s))?
        .into_inner();
    let mut partial = ctl.store.begin(&job.app, &id).await?;
    // Dropping the agent's stream ends the agent's side as a lost
    // controller would; the partial files go with `abort` below.
    let receiving = tokio::select! {
        r = receive(ctl, job, stream, &mut partial, out) => r,
        () = out.closed(), if job.cancel_on_disconnect => Err(ControllerError::Cancelled),
    };
    let received = match receiving {
        Ok(r) => r,
        Err(e) => {
            partial.abort().await;
            return Err(e);
        }
    };
    let manifest = match manifest(job, received, &partial) {
        Ok(m) => m,
        Err(e) => {
            partial.abort().await;
            return Err(e);
        }
    };
    // What every reader checks, checked before the backup can be COMPLETED:
    // a backup a restore would refuse must fail now.
    if let Err(e) = manifest
        .validate()
        .and_then(|()| manifest.archives().map(drop))
    {
        partial.abort().await;
        return Err(ControllerError::Protocol {
            host: job.host.clone(),
            detail: e.to_string(),
        });
    }
    let size = manifest.size_bytes;
    if let Err(e) = partial.commit(&manifest, true).await {
        ctl.store.discard(&job.app, &id).await;
        return Err(e.into());
    }
    let services: Vec<String> = manifest
        .services
        .iter()
        .map(|s| format!("{}:{}", s.kind, s.name))
        .collect();
    if let Err(e) = ctl.catalog.complete(&id, size, &services).await {
        // Keep the catalog and the store in agreement: no record, no files.
        ctl.store.discard(&job.app, &id).await;
        return Err(e.into());
    }
    let row = ctl
        .catalog
        .get(&id)
        .await?
        .expect("the row was just completed");
    Ok((row, skipped_entries(&manifest)))
}

/// The entries a backup's manifest says were left out.
pub fn skipped_entries(manifest: &Manifest) -> Vec<v1::SkippedEntry> {
    manifest
        .layout
        .iter()
        .flat_map(|l| &l.skipped)
        .map(|s| v1::SkippedEntry {
            path: s.path.clone(),
            reason: s.reason.clone(),
        })
        .collect()
}

/// Receives the agent's stream into `partial`; returns the agent's plan.
async fn receive(
    ctl: &Controller,
    job: &CreateJob,
    mut stream: tonic::Streaming<v1::BackupAppEvent>,
    partial: &mut PartialBackup,
    out: &Out,
) -> Result<Received> {
    let host = job.host.as_str();
    let protocol = |detail: String| ControllerError::Protocol {
        host: host.to_owned(),
        detail,
    };
    let mut plan = None;
    // The agent produces several artifacts at once: their frames interleave.
    let mut decoder: Decoder<ArtifactWriter> = Decoder::default();
    let mut services = Vec::new();
    let mut layout = None;
    let mut plaintexts = Plaintexts::default();
    // Encrypted artifacts whose first bytes were seen to be an age header.
    let mut age_checked = std::collections::HashSet::new();
    loop {
        let msg = tokio::time::timeout(ctl.idle_timeout, stream.message())
            .await
            .map_err(|_| ControllerError::AgentLost {
                host: host.to_owned(),
                detail: format!("no data for {}s", ctl.idle_timeout.as_secs()),
            })?
            .map_err(|s| ControllerError::from_agent(host, s))?;
        let Some(msg) = msg else { break };
        match msg.event {
            Some(Event::Plan(p)) => {
                let needed = p.estimated_bytes.saturating_add(SPACE_MARGIN);
                if let Some(available) = ctl.store.free_space().await?
                    && available < needed
                {
                    return Err(ControllerError::InsufficientSpace { needed, available });
                }
                plan = Some(p);
            }
            Some(Event::Start(s)) => {
                if plan.is_none() {
                    return Err(protocol(format!("unexpected start of {}", s.path)));
                }
                validate_artifact_path(&s.path).map_err(|e| protocol(e.to_string()))?;
                if job.encrypt_to.is_some() && !s.path.ends_with(ENCRYPTED_SUFFIX) {
                    return Err(protocol(format!(
                        "{} came in the clear, in a backup to be encrypted",
                        s.path
                    )));
                }
                decoder
                    .check_start(&s)
                    .map_err(|e| protocol(e.to_string()))?;
                if !s.service_type.is_empty() {
                    services.push(ServiceEntry {
                        kind: s.service_type.clone(),
                        name: s.service_name.clone(),
                        backup_file: s.path.clone(),
                        size_bytes: 0,
                    });
                }
                let w = partial.create(&s.path).await?;
                decoder.start(&s, w).map_err(|e| protocol(e.to_string()))?;
            }
            Some(Event::Data(data)) => {
                let (path, w) = decoder.data(&data).map_err(|e| protocol(e.to_string()))?;
                // Checked at its first bytes: an artifact to be encrypted is an age file.
                if job.encrypt_to.is_some()
                    && age_checked.insert(data.id)
                    && !data.data.starts_with(AGE_MAGIC)
                {
                    return Err(protocol(format!("{path} is not an age file")));
                }
                w.write(&data.data).await?;
            }
            Some(Event::End(end)) => {
                let ended = decoder.end(end).map_err(|e| protocol(e.to_string()))?;
                let intact = ended.intact();
                ended.sink.finish().await?;
                if !intact {
                    return Err(ControllerError::ChecksumMismatch {
                        detail: format!(
                            "the agent sent {} bytes with {}, the store received {} bytes with {}",
                            ended.claimed.size, ended.claimed.sha256, ended.size, ended.checksum
                        ),
                        path: ended.path,
                    });
                }
                if job.encrypt_to.is_some() {
                    if !age_checked.remove(&ended.claimed.id) {
                        return Err(protocol(format!("{} is not an age file", ended.path)));
                    }
                    let sha256 = ended.claimed.plain_sha256.parse().map_err(|_| {
                        protocol(format!("{} came without its plaintext digest", ended.path))
                    })?;
                    plaintexts.files.insert(
                        ended.path.clone(),
                        PlainFile {
                            sha256,
                            size: ended.claimed.plain_size,
                        },
                    );
                }
                partial.record(ended.path, ended.checksum, ended.size);
            }
            Some(Event::Layout(l)) => {
                if !decoder.is_idle() || layout.is_some() {
                    return Err(protocol(
                        "the layout must come once, after every artifact".into(),
                    ));
                }
                let parsed: Layout = serde_json::from_str(&l.layout_json)
                    .map_err(|e| protocol(format!("the layout is not valid: {e}")))?;
                parsed
                    .validate()
                    .map_err(|e| protocol(format!("the layout is not valid: {e}")))?;
                layout = Some(parsed);
            }
            Some(Event::Progress(p)) => {
                out.try_send(v1::CreateBackupEvent {
                    event: Some(create_backup_event::Event::Progress(p)),
                });
            }
            None => return Err(protocol("empty event".into())),
        }
    }
    if !decoder.is_idle() {
        return Err(protocol("the stream ended inside an artifact".into()));
    }
    let plan = plan.ok_or_else(|| protocol("the stream ended before the plan".into()))?;
    let encrypted = job.encrypt_to.is_some();
    if let Some(missing) = job
        .format
        .required()
        .into_iter()
        .map(|p| stored_path(&p, encrypted))
        .find(|p| !partial.files().contains_key(p))
    {
        return Err(protocol(format!("the stream ended without {missing}")));
    }
    for s in &mut services {
        s.size_bytes = partial.files()[&s.backup_file].1;
    }
    Ok(Received {
        plan,
        services,
        layout,
        plaintexts,
    })
}

/// What a complete stream delivered besides the files.
struct Received {
    plan: v1::BackupPlan,
    services: Vec<ServiceEntry>,
    /// Absent from agents older than the layout.
    layout: Option<Layout>,
    /// The plaintext digests of the encrypted artifacts.
    plaintexts: Plaintexts,
}

fn manifest(job: &CreateJob, received: Received, partial: &PartialBackup) -> Result<Manifest> {
    let plan = received.plan;
    let state = plan.app_state.unwrap_or_default();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let keys: Vec<String> = job
        .encrypt_to
        .iter()
        .flat_map(|r| r.key_ids())
        .map(|k| k.to_string())
        .collect();
    let encoding = |path: &str| {
        let plain = path
            .strip_suffix(ENCRYPTED_SUFFIX)
            .filter(|_| job.encrypt_to.is_some());
        let mut e = job.format.encoding_of(plain.unwrap_or(path));
        if plain.is_some() {
            e.encryption = Some(Encryption {
                scheme: EncryptionScheme::Age,
                keys: keys.clone(),
            });
        }
        e
    };
    // The plaintext digests would confirm a guess of the content: they are
    // encrypted to the same keys, in the manifest.
    let encrypted = match &job.encrypt_to {
        None => None,
        Some(r) => {
            let json = serde_json::to_vec(&received.plaintexts).expect("digests serialise");
            let payload = r
                .encrypt_armored(&json)
                .map_err(|e| ControllerError::Encryption(format!("the manifest's digests: {e}")))?;
            Some(EncryptedSection {
                keys: keys.clone(),
                payload,
                dir: None,
            })
        }
    };
    let manifest = Manifest {
        backup_id: job.id.to_string(),
        app_name: job.app.clone(),
        created_at: Manifest::format_time(job.id.timestamp()),
        format_version: job.format.to_string(),
        hop3_version: HOP3_VERSION.into(),
        size_bytes: partial.files().values().map(|(_, s)| s).sum(),
        checksums: partial
            .files()
            .iter()
            .map(|(p, (c, _))| (p.clone(), *c))
            .collect(),
        // What the agent was asked for is what it wrote: the controller
        // checked every artifact the version requires arrived.
        encodings: partial
            .files()
            .keys()
            .map(|p| (p.clone(), encoding(p)))
            .collect(),
        app_metadata: AppMetadata {
            hostname: non_empty(state.hostname),
            port: (state.port != 0).then_some(state.port),
            run_state: non_empty(state.run_state),
        },
        services: received.services,
        env_vars_count: plan.env_vars_count,
        expires_after: 0,
        services_included: job.include_services,
        host: Some(job.host.clone()),
        layout: received.layout,
        encrypted,
    };
    if job.encrypt_to.is_some() {
        // What a restore will read once decrypted, checked now as well.
        manifest
            .opened(&received.plaintexts)
            .and_then(|m| m.archives().map(drop))
            .map_err(|e| ControllerError::Protocol {
                host: job.host.clone(),
                detail: e.to_string(),
            })?;
    }
    Ok(manifest)
}

/// The catalog row of a backup that is starting.
pub fn started_row(job: &CreateJob) -> BackupRow {
    BackupRow {
        backup_id: job.id.clone(),
        app: job.app.clone(),
        host: job.host.clone(),
        status: BackupStatus::Started,
        created_at: job.id.timestamp(),
        total_size: 0,
        services: Vec::new(),
        error: None,
        pinned: false,
    }
}
