//! Producing a backup: the app's artifacts, produced at the same time, as
//! chunks on the BackupApp stream (each tagged with its artifact), each
//! artifact closed by its SHA-256 and size.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hop3_proto::FRAME_SIZE;
use hop3_proto::format::{APP_JSON, Archive, ENV_JSON, ENV_RAW, Format, stored_path};
use hop3_proto::layout::{APP_FILES, Layout, Owner, TREES};
use hop3_proto::v1::{self, backup_app_event::Event};
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::apps::{APP_FILE, parse_env, read_app_config, read_env_file};
use crate::archive;
use crate::encrypt::{self, Sink};
use crate::error::{AgentError, Result};
use crate::services;
use crate::state::AgentState;
use crate::trees;
use hop3_wire::artifacts::{self, FrameWriter};
use hop3_wire::encryption::Recipients;
use hop3_wire::events::{EventSender, StreamProgress};
use hop3_wire::progress::Progress;

type Sender = EventSender<v1::BackupAppEvent>;

fn event(e: Event) -> v1::BackupAppEvent {
    v1::BackupAppEvent { event: Some(e) }
}

/// Streams a backup of `req.app` to `out`.
pub async fn produce(state: &AgentState, req: v1::BackupAppRequest, out: &Sender) -> Result<()> {
    crate::failpoint::hit(&format!("backup:{}", req.app));
    let dir = state.root.existing_app(&req.app).await?;
    let cfg = read_app_config(&req.app, &dir).await?;
    let env_raw = read_env_file(&dir).await?;
    let env = env_raw
        .as_deref()
        .map(|raw| parse_env(&String::from_utf8_lossy(raw)))
        .unwrap_or_default();
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
    let estimated = tree_size(dir.clone()).await?;
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
    let mut layout = app_layout(&dir).await?;

    let format = Format::from_wire(&req.format).map_err(|e| AgentError::Protocol(e.to_string()))?;
    let recipients = encrypt::recipients(&req)?;
    let encrypted = recipients.is_some();
    let file = move |id, path: &str| file(id, &stored_path(path, encrypted));
    let progress = Arc::new(StreamProgress::new(out.clone(), estimated, |p| {
        event(Event::Progress(p))
    }));
    progress.step("archives", estimated);
    let env_json = serde_json::to_vec_pretty(&env).expect("a string map serialises");
    let encrypt_to = recipients.as_ref();
    artifact(out, file(0, ENV_JSON), encrypt_to, |w| {
        write_all(w, env_json)
    })
    .await?;
    // app.json carries the service connections a restore on a fresh host needs.
    let app_json = tokio::fs::read(dir.join(APP_FILE))
        .await
        .map_err(|e| AgentError::io("reading app.json", e))?;
    artifact(out, file(1, APP_JSON), encrypt_to, |w| {
        write_all(w, app_json)
    })
    .await?;
    // ENV as written (comments, quoting, order): env.json is its parsed view.
    if let Some(raw) = env_raw {
        artifact(out, file(2, ENV_RAW), encrypt_to, |w| write_all(w, raw)).await?;
    }

    // The archives and the dumps are produced at the same time, each on a
    // task of its own so that compression runs on every core; their chunks
    // interleave on the stream, tied to their artifact by id.
    let mut jobs = tokio::task::JoinSet::new();
    for (id, archive) in (3..).zip(Archive::ALL) {
        let (out, progress, dir) = (out.clone(), progress.clone(), dir.clone());
        let recipients = recipients.clone();
        let codec = format.compression();
        // Packing is file I/O and compression from start to end: one
        // blocking thread runs all of it, sending chunks as they fill.
        jobs.spawn_blocking(move || {
            let opened = trees::open_for_backup(&dir, archive.trees())?;
            let links: Vec<_> = opened
                .iter()
                .filter_map(|o| o.link.clone().map(|l| (o.name.to_owned(), l)))
                .collect();
            let members = opened
                .into_iter()
                .map(|o| archive::Member {
                    name: o.name,
                    dir: o.dir,
                })
                .collect();
            let start = file(id, &format.archive_path(archive));
            let writer = Sink::new(
                FrameWriter::start(out.clone(), start)?,
                recipients.as_deref(),
            )?;
            match archive::pack(members, writer, codec, &*progress) {
                Ok((writer, packed)) => {
                    writer.finish()?;
                    Ok(Some((packed, links)))
                }
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
                path: stored_path(&path, encrypted),
                service_type: service.kind.clone(),
                service_name: service.name.clone(),
                id: 5 + n as u32,
            };
            let tools = &tools;
            artifact(&dump_out, start, recipients.as_ref(), |mut w| async move {
                services::dump(tools, &service, &mut w).await
            })
            .await?;
        }
        Ok(None)
    });
    // The first failure ends the backup; dropping the set aborts the others.
    while let Some(done) = jobs.join_next().await {
        let outcome = done.map_err(|e| AgentError::Bug(format!("a backup task failed: {e}")))??;
        if let Some((packed, links)) = outcome {
            layout.skipped.extend(packed.skipped);
            layout.sizes.extend(packed.sizes);
            layout.links.extend(links);
        }
    }
    layout.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let layout_json = serde_json::to_string(&layout).expect("a layout serialises");
    out.send(event(Event::Layout(v1::BackupLayout { layout_json })))
        .await?;
    Ok(())
}

/// The app directory's and its files' modes and owners.
async fn app_layout(dir: &Path) -> Result<Layout> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let owner = |path: &Path| -> std::io::Result<Owner> {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(path)?;
            Ok(Owner {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            })
        };
        let app_dir = owner(&dir).map_err(|e| AgentError::io("reading the app directory", e))?;
        let mut layout = Layout {
            app_dir: Some(app_dir),
            app_owner_names: Some(crate::owners::names_of(app_dir.uid, app_dir.gid)),
            machine_id: crate::owners::machine_id(),
            ..Layout::default()
        };
        for name in APP_FILES {
            match owner(&dir.join(name)) {
                Ok(o) => {
                    layout.files.insert(name.to_owned(), o);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io(format!("reading {name}"), e)),
            }
        }
        Ok(layout)
    })
    .await
    .map_err(|e| AgentError::Bug(format!("reading the app's layout failed: {e}")))?
}

/// Sends one artifact: its start, the bytes `produce` writes (encrypted to
/// `encrypt_to` when given), and its end with digest and size.
async fn artifact<F, Fut>(
    out: &Sender,
    start: v1::ArtifactStart,
    encrypt_to: Option<&Arc<Recipients>>,
    produce: F,
) -> Result<()>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let (writer, mut reader) = tokio::io::duplex(FRAME_SIZE);
    let Some(recipients) = encrypt_to else {
        let pump = async {
            artifacts::send(out, start, &mut reader).await?;
            Ok::<(), AgentError>(())
        };
        tokio::try_join!(produce(writer), pump)?;
        return Ok(());
    };
    // Encrypting is CPU work on every byte: a blocking thread does it, as it
    // does compression.
    let (out, recipients) = (out.clone(), recipients.clone());
    let encrypt = tokio::task::spawn_blocking(move || {
        let mut sink = Sink::new(FrameWriter::start(out, start)?, Some(&recipients))?;
        std::io::copy(&mut tokio_util::io::SyncIoBridge::new(reader), &mut sink)
            .map_err(|e| AgentError::io("encrypting an artifact", e))?;
        sink.finish()
    });
    let pump = async {
        encrypt
            .await
            .map_err(|e| AgentError::Bug(format!("encrypting an artifact failed: {e}")))?
    };
    tokio::try_join!(produce(writer), pump)?;
    Ok(())
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

/// Bytes of the regular files of the app's trees (a linked tree's target
/// included), links not followed: an upper bound of what the archives hold
/// before compression.
async fn tree_size(dir: PathBuf) -> Result<u64> {
    tokio::task::spawn_blocking(move || {
        let mut total = 0;
        for tree in trees::open_for_backup(&dir, &TREES)? {
            archive::walk::walk(tree.dir, Path::new(tree.name), &mut |node| {
                if node.kind() == rustix::fs::FileType::RegularFile {
                    total += node.stat.st_size as u64;
                }
                Ok(())
            })?;
        }
        Ok(total)
    })
    .await
    .map_err(|e| AgentError::Bug(format!("measuring the app failed: {e}")))?
}
