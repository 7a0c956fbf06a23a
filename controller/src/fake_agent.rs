//! The middle test tier: the controller's jobs (create, restore, delete) in
//! process, against a fake agent served over in-memory gRPC and a store in
//! memory. What the real agent does is tested end to end; here, what the
//! controller makes of what an agent sends, and what it sends an agent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hop3_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use hop3_proto::v1::{self, backup_app_event::Event, restore_app_message::Msg};
use hop3_proto::{Checksum, Format};
use hop3_wire::artifacts::{Carrier, Decoder, Frame};
use hop3_wire::events::{EventReceiver, EventSender};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, LocalCallers};
use crate::catalog::{BackupStatus, Catalog};
use crate::create::{self, CreateRequest};
use crate::error::ControllerError;
use crate::locks::{AppLocks, BackupLocks};
use crate::prune::PruneRequest;
use crate::registry::Registry;
use crate::restore::{self, RestoreRequest};
use crate::retention::Policy;
use crate::state::Controller;
use crate::store::{Memory, Store};
use crate::tokens::Tokens;

const HOST: &str = "host-a";
const APP: &str = "shop";

/// What the fake agent does when asked for a backup.
#[derive(Clone, Copy, Default)]
struct Script {
    /// Claim another digest for data.tar.zst than the bytes it sends.
    lie_about_data: bool,
    /// Answer ListApps after the controller's fan-out deadline.
    slow_listing: bool,
    /// Send a gzip data archive beside the zstd one.
    two_data_archives: bool,
}

/// The artifacts the fake agent's app has, as a format 1.1 backup holds them.
fn artifacts() -> Artifacts {
    let big: Vec<u8> = (0..hop3_proto::FRAME_SIZE * 3 + 5)
        .map(|i| (i % 249) as u8)
        .collect();
    BTreeMap::from([
        ("source.tar.zst".to_owned(), b"source archive".to_vec()),
        ("data.tar.zst".to_owned(), big),
        ("env.json".to_owned(), br#"{"A":"1"}"#.to_vec()),
        ("app.json".to_owned(), b"{}".to_vec()),
    ])
}

#[derive(Clone, Default)]
struct FakeAgent {
    script: Script,
    /// What the last restore delivered, by path, once committed.
    restored: Arc<Mutex<Option<Artifacts>>>,
}

/// Artifacts' bytes by path.
type Artifacts = BTreeMap<String, Vec<u8>>;

#[tonic::async_trait]
impl AgentService for FakeAgent {
    async fn list_apps(
        &self,
        _: Request<v1::ListAppsRequest>,
    ) -> Result<Response<v1::ListAppsResponse>, Status> {
        if self.script.slow_listing {
            tokio::time::sleep(crate::registry::FAN_OUT_DEADLINE * 2).await;
        }
        Ok(Response::new(v1::ListAppsResponse {
            apps: vec![APP.into()],
        }))
    }

    type BackupAppStream = EventReceiverStream<v1::BackupAppEvent>;

    async fn backup_app(
        &self,
        req: Request<v1::BackupAppRequest>,
    ) -> Result<Response<Self::BackupAppStream>, Status> {
        assert_eq!(req.get_ref().format, "1.1");
        let recipients = req.get_ref().recipients.clone();
        let (out, rx) = EventSender::channel();
        let script = self.script;
        tokio::spawn(async move {
            let ev = |e| v1::BackupAppEvent { event: Some(e) };
            out.send(ev(Event::Plan(v1::BackupPlan {
                estimated_bytes: 1,
                ..Default::default()
            })))
            .await
            .unwrap();
            // Every artifact open at once, their frames interleaved.
            let mut all = artifacts();
            if script.two_data_archives {
                all.insert("data.tar.gz".into(), b"another data archive".to_vec());
            }
            // Encrypted as the agent does, when it is given recipients.
            let mut plain = BTreeMap::new();
            if !recipients.is_empty() {
                let to = hop3_wire::encryption::Recipients::parse(&recipients).unwrap();
                all = all
                    .into_iter()
                    .map(|(path, bytes)| {
                        let mut w = to.encrypt_into(Vec::new()).unwrap();
                        std::io::Write::write_all(&mut w, &bytes).unwrap();
                        let (sealed, digest) = w.finish().unwrap();
                        let path = hop3_proto::format::stored_path(&path, true);
                        plain.insert(path.clone(), digest);
                        (path, sealed)
                    })
                    .collect();
            }
            for (id, path) in (0..).zip(all.keys()) {
                let start = v1::ArtifactStart {
                    path: path.clone(),
                    id,
                    ..Default::default()
                };
                out.send(Carrier::carry(Frame::Start(start))).await.unwrap();
            }
            let frames: Vec<Vec<&[u8]>> = all
                .values()
                .map(|b| b.chunks(hop3_proto::FRAME_SIZE).collect())
                .collect();
            for round in 0..frames.iter().map(Vec::len).max().unwrap() {
                for (id, f) in (0..).zip(&frames) {
                    if let Some(data) = f.get(round) {
                        let data = v1::ArtifactData {
                            id,
                            data: data.to_vec().into(),
                        };
                        out.send(Carrier::carry(Frame::Data(data))).await.unwrap();
                    }
                }
            }
            for (id, (path, bytes)) in (0..).zip(&all) {
                let claimed = if script.lie_about_data && path == "data.tar.zst" {
                    Checksum::of(b"something else")
                } else {
                    Checksum::of(bytes)
                };
                let (plain_sha256, plain_size) = plain
                    .get(path)
                    .map(|(c, n): &(Checksum, u64)| (c.to_string(), *n))
                    .unwrap_or_default();
                let end = v1::ArtifactEnd {
                    sha256: claimed.to_string(),
                    size: bytes.len() as u64,
                    id,
                    plain_sha256,
                    plain_size,
                };
                out.send(Carrier::carry(Frame::End(end))).await.unwrap();
            }
            let layout_json =
                serde_json::to_string(&hop3_proto::layout::Layout::default()).unwrap();
            let _ = out
                .send(ev(Event::Layout(v1::BackupLayout { layout_json })))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type RestoreAppStream = EventReceiverStream<v1::RestoreAppEvent>;

    async fn restore_app(
        &self,
        req: Request<Streaming<v1::RestoreAppMessage>>,
    ) -> Result<Response<Self::RestoreAppStream>, Status> {
        let mut inbound = req.into_inner();
        let restored = self.restored.clone();
        let (out, rx) = EventSender::channel();
        tokio::spawn(async move {
            let mut decoder: Decoder<Vec<u8>> = Decoder::default();
            let mut got = BTreeMap::new();
            let mut app = String::new();
            while let Some(Ok(m)) = inbound.message().await.transpose() {
                match m.msg.unwrap() {
                    Msg::Header(h) => app = h.app,
                    Msg::Start(s) => decoder.start(&s, Vec::new()).unwrap(),
                    Msg::Data(d) => decoder.data(&d).unwrap().1.extend_from_slice(&d.data),
                    Msg::End(e) => {
                        let ended = decoder.end(e).unwrap();
                        assert!(ended.intact(), "{}", ended.path);
                        got.insert(ended.path, ended.sink);
                    }
                    Msg::Commit(_) => {
                        *restored.lock().unwrap() = Some(got);
                        let done = v1::RestoreDone {
                            app,
                            start: "unmanaged".into(),
                            ..Default::default()
                        };
                        let _ = out
                            .send(v1::RestoreAppEvent {
                                event: Some(v1::restore_app_event::Event::Done(done)),
                            })
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type EventReceiverStream<T> = ReceiverStream<Result<T, Status>>;

/// A controller with a store in memory and `agent` as its only host.
async fn controller(agent: FakeAgent, dir: &std::path::Path) -> (Arc<Controller>, Memory) {
    controller_copying(agent, dir, Vec::new()).await
}

/// [`controller`], copying every backup to `copies`.
async fn controller_copying(
    agent: FakeAgent,
    dir: &std::path::Path,
    copies: Vec<Store>,
) -> (Arc<Controller>, Memory) {
    controller_with_keys(agent, dir, copies, Default::default()).await
}

/// [`controller_copying`], with `keys`.
async fn controller_with_keys(
    agent: FakeAgent,
    dir: &std::path::Path,
    copies: Vec<Store>,
    keys: crate::keys::Keys,
) -> (Arc<Controller>, Memory) {
    let memory = Memory::new();
    let store = Store::with_backend(Arc::new(memory.clone()), dir)
        .await
        .unwrap();
    let catalog = Catalog::open(&format!("sqlite://{}", dir.join("catalog.db").display()))
        .await
        .unwrap();
    let registry = Registry::new(None, true, None);
    let (channel, incoming) = crate::in_process::channel();
    registry.pin_local(HOST, channel);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(agent))
            .serve_with_incoming(incoming),
    );
    let ctl = Controller {
        catalog,
        store,
        registry,
        locks: AppLocks::default(),
        backup_locks: BackupLocks::default(),
        auth: Auth {
            tokens: Tokens::new(dir),
            local: LocalCallers {
                socket: dir.join("ctl.sock"),
                uid: 0,
                group: None,
            },
        },
        idle_timeout: std::time::Duration::from_secs(10),
        mutual_tls: false,
        join_token: None,
        import_dir: dir.join("import"),
        scheduler: Default::default(),
        alerts: crate::alerts::Alerter::new(Default::default()),
        copies: crate::copies::Copies::new(copies),
        keys,
    };
    (Arc::new(ctl), memory)
}

/// The last event of a job's stream: its result, or its error.
async fn last<T>(mut rx: EventReceiver<T>) -> Result<T, Status> {
    let mut last = None;
    while let Some(ev) = rx.recv().await {
        last = Some(ev);
    }
    last.expect("a job ends with an event")
}

/// A restore of backup `id` into its own app and host.
fn restore_request(id: &str) -> RestoreRequest {
    RestoreRequest {
        backup_id: id.to_owned(),
        target_app: None,
        target_host: None,
        replace: false,
        hostname: None,
        trust_imported: false,
        no_start: false,
        cancel_on_disconnect: false,
    }
}

fn create_request() -> CreateRequest {
    CreateRequest {
        app: APP.into(),
        host: None,
        include_services: true,
        format: None,
        cancel_on_disconnect: false,
    }
}

#[tokio::test]
async fn a_create_stores_interleaved_artifacts_and_commits_the_manifest_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, memory) = controller(FakeAgent::default(), tmp.path()).await;
    let done = last(create::start(&ctl, create_request()).await.unwrap())
        .await
        .unwrap();
    let Some(v1::create_backup_event::Event::Completed(summary)) = done.event else {
        panic!("not completed: {done:?}");
    };
    let row = ctl.catalog.get(&summary.backup_id).await.unwrap().unwrap();
    assert_eq!(row.status, BackupStatus::Completed);
    assert_eq!(row.host, HOST);
    let manifest = ctl.store.read_manifest(APP, &row.backup_id).await.unwrap();
    let want = artifacts();
    assert_eq!(
        manifest.checksums,
        want.iter()
            .map(|(p, b)| (p.clone(), Checksum::of(b)))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(manifest.format().unwrap(), Format::V1_1);
    assert_eq!(
        manifest.encodings["data.tar.zst"].compression,
        hop3_proto::format::Compression::Zstd
    );
    assert!(ctl.store.sealed(APP, &row.backup_id).await);
    let prefix = format!("apps/{APP}/{}/", row.backup_id);
    let keys: Vec<String> = memory
        .keys()
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    assert_eq!(
        keys,
        [
            "app.json",
            "data.tar.zst",
            "env.json",
            "metadata.json",
            "metadata.seal",
            "source.tar.zst"
        ]
    );
}

/// Runs a create against an agent following `script`, which must fail:
/// the row FAILED and nothing left in the store. Returns the error.
async fn failed_create(script: Script) -> Status {
    let tmp = tempfile::tempdir().unwrap();
    let agent = FakeAgent {
        script,
        ..Default::default()
    };
    let (ctl, memory) = controller(agent, tmp.path()).await;
    let err = last(create::start(&ctl, create_request()).await.unwrap())
        .await
        .unwrap_err();
    let rows = ctl.catalog.list(None, None, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, BackupStatus::Failed);
    assert!(memory.keys().is_empty(), "{:?}", memory.keys());
    err
}

#[tokio::test]
async fn a_digest_that_does_not_match_fails_the_create_and_leaves_nothing() {
    let err = failed_create(Script {
        lie_about_data: true,
        ..Default::default()
    })
    .await;
    assert!(
        err.message().contains("Checksum mismatch") && err.message().contains("data.tar.zst"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_restore_sends_every_stored_byte_and_a_delete_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = FakeAgent::default();
    let restored = agent.restored.clone();
    let (ctl, memory) = controller(agent, tmp.path()).await;
    let done = last(create::start(&ctl, create_request()).await.unwrap())
        .await
        .unwrap();
    let Some(v1::create_backup_event::Event::Completed(summary)) = done.event else {
        panic!("not completed: {done:?}");
    };
    let id = summary.backup_id;
    let result = last(restore::start(&ctl, restore_request(&id)).await.unwrap())
        .await
        .unwrap();
    let Some(v1::restore_backup_event::Event::Completed(r)) = result.event else {
        panic!("not completed: {result:?}");
    };
    assert_eq!((r.app.as_str(), r.host.as_str()), (APP, HOST));
    assert_eq!(restored.lock().unwrap().take().unwrap(), artifacts());

    let row = ctl.backup_row(&id).await.unwrap();
    crate::delete::delete(&ctl, &row).await.unwrap();
    assert!(ctl.catalog.get(&id).await.unwrap().is_none());
    assert!(memory.keys().is_empty(), "{:?}", memory.keys());
}

#[tokio::test]
async fn an_agent_that_keeps_missing_the_deadline_is_shown_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = FakeAgent {
        script: Script {
            slow_listing: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (ctl, _) = controller(agent, tmp.path()).await;
    let view = |ctl: &Controller| ctl.registry.list().remove(0);
    for _ in 0..2 {
        assert!(!view(&ctl).degraded);
        // Not in the index (the pinned fake reports nothing), so asked, and
        // named as the host that did not answer.
        let err = create::start(&ctl, create_request()).await.err().unwrap();
        assert!(
            matches!(&err, crate::error::ControllerError::AppNotFoundUnanswered { silent, .. } if silent == HOST),
            "{err}"
        );
    }
    let v = view(&ctl);
    assert!(v.online && v.degraded, "{v:?}");
}

#[tokio::test]
async fn a_backup_a_restore_would_refuse_is_never_completed() {
    let err = failed_create(Script {
        two_data_archives: true,
        ..Default::default()
    })
    .await;
    assert!(
        err.message().contains("more than one data archive"),
        "{err:?}"
    );
}

/// Backs the fake app up `n` times; the IDs, newest first.
async fn backups(ctl: &Arc<Controller>, n: usize) -> Vec<String> {
    for _ in 0..n {
        last(create::start(ctl, create_request()).await.unwrap())
            .await
            .unwrap();
    }
    ctl.catalog
        .list(Some(APP), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.backup_id.to_string())
        .collect()
}

async fn prune(ctl: &Arc<Controller>, policy: Policy) -> Vec<v1::PruneDecision> {
    let req = PruneRequest {
        app: Some(APP.into()),
        policy,
        tz: chrono_tz::Tz::UTC,
        dry_run: false,
    };
    let mut rx = crate::prune::start(ctl, req).await.unwrap();
    let mut out = Vec::new();
    while let Some(d) = rx.recv().await {
        out.push(d.unwrap());
    }
    out
}

fn stored(memory: &Memory, id: &str) -> Vec<String> {
    let prefix = format!("apps/{APP}/{id}/");
    memory
        .keys()
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_prune_removes_store_first_and_a_refused_delete_stays_pending_until_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, memory) = controller(FakeAgent::default(), tmp.path()).await;
    let ids = backups(&ctl, 3).await;
    let (newest, middle, oldest) = (&ids[0], &ids[1], &ids[2]);

    // A pin lives in the store too, and a catalog rebuilt from it keeps it.
    crate::pin::set_pinned(&ctl, oldest, true).await.unwrap();
    assert!(stored(&memory, oldest).contains(&"pin.json".to_owned()));
    ctl.catalog.delete(oldest).await.unwrap();
    crate::recovery::rebuild_catalog(&ctl).await.unwrap();
    let row = ctl.backup_row(oldest).await.unwrap();
    assert!(row.pinned, "{row:?}");
    let err = crate::delete::delete(&ctl, &row).await.unwrap_err();
    assert!(matches!(err, ControllerError::Pinned(_)), "{err}");

    memory.fail_deletes(true);
    let policy = Policy {
        keep_last: Some(1),
        ..Default::default()
    };
    let decisions = prune(&ctl, policy.clone()).await;
    let by_id = |id: &str| {
        decisions
            .iter()
            .find(|d| d.backup.as_ref().unwrap().backup_id == id)
            .unwrap()
            .clone()
    };
    assert!(by_id(newest).keep);
    assert_eq!(
        by_id(newest).reasons,
        ["last backup", "newest successful backup"]
    );
    assert_eq!(
        (by_id(oldest).keep, by_id(oldest).reasons[0].as_str()),
        (true, "pinned")
    );
    let failed = by_id(middle);
    assert!(!failed.keep && !failed.removed, "{failed:?}");
    assert!(failed.error.contains("Permission denied"), "{failed:?}");
    // Listed as being removed, with why; its files untouched; never restored.
    let row = ctl.backup_row(middle).await.unwrap();
    assert_eq!(row.status, BackupStatus::DeletePending);
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .starts_with("deletion failed: "),
        "{row:?}"
    );
    assert!(stored(&memory, middle).contains(&"metadata.json".to_owned()));
    let err = restore::start(&ctl, restore_request(middle))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("DELETE_PENDING"), "{err}");

    // The store works again: even an empty policy finishes the removal.
    memory.fail_deletes(false);
    let decisions = prune(&ctl, Policy::default()).await;
    let retried = decisions
        .iter()
        .find(|d| d.backup.as_ref().unwrap().backup_id == *middle)
        .unwrap();
    assert!(retried.removed, "{retried:?}");
    assert_eq!(retried.reasons, ["an earlier deletion did not finish"]);
    assert!(ctl.catalog.get(middle).await.unwrap().is_none());
    assert!(stored(&memory, middle).is_empty());
    assert!(decisions.iter().filter(|d| d.keep).count() == 2);

    // Unpinned, the oldest goes like any other.
    crate::pin::set_pinned(&ctl, oldest, false).await.unwrap();
    let decisions = prune(&ctl, policy).await;
    assert!(decisions.iter().any(|d| d.removed), "{decisions:?}");
    assert!(stored(&memory, oldest).is_empty());
    assert_eq!(backups(&ctl, 0).await, std::slice::from_ref(newest));
}

/// The objects of backup `id` in `memory`, by path.
fn objects(memory: &Memory, id: &str) -> BTreeMap<String, Vec<u8>> {
    let key = crate::store::BackupKey::new(APP, id);
    stored(memory, id)
        .into_iter()
        .map(|path| {
            let bytes = futures::executor::block_on(crate::store::Backend::read_small(
                memory,
                &key,
                &path,
                u64::MAX,
            ))
            .unwrap(); // The memory store never waits.
            (path, bytes)
        })
        .collect()
}

#[tokio::test]
async fn copies_are_checked_retried_restored_from_and_deleted_with_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = FakeAgent::default();
    let restored_bytes = agent.restored.clone();
    let offsite = Memory::named("offsite");
    let copy_store = Store::with_backend(Arc::new(offsite.clone()), tmp.path())
        .await
        .unwrap();
    let (ctl, memory) = controller_copying(agent, tmp.path(), vec![copy_store]).await;
    async fn located(ctl: &Controller, id: &str) -> Vec<v1::BackupLocation> {
        let row = ctl.backup_row(id).await.unwrap();
        crate::copies::locate(ctl, &[row]).await.unwrap().remove(0)
    }
    async fn restored(ctl: &Arc<Controller>, id: &str) -> Result<v1::RestoreResult, Status> {
        let result = last(restore::start(ctl, restore_request(id)).await.unwrap()).await?;
        let Some(v1::restore_backup_event::Event::Completed(r)) = result.event else {
            panic!("not completed: {result:?}");
        };
        Ok(r)
    }

    // The copy store is down: the backup is COMPLETED all the same, its
    // copy pending, then failed with the reason, and not retried at once.
    offsite.fail_writes(true);
    let id = backups(&ctl, 1).await.remove(0);
    assert_eq!(located(&ctl, &id).await[1].state, "pending");
    assert_eq!(crate::copies::pass(&ctl).await.unwrap(), 0);
    let failed = located(&ctl, &id).await.remove(1);
    assert_eq!(
        (failed.state.as_str(), failed.attempts, failed.primary),
        ("failed", 1, false)
    );
    assert!(failed.reason.contains("writes refused"), "{failed:?}");
    assert_eq!(crate::copies::pass(&ctl).await.unwrap(), 0);
    assert_eq!(
        located(&ctl, &id).await[1].attempts,
        1,
        "retried before its backoff"
    );

    // Back: the retry due copies it, byte for byte, seal included, over
    // what an interrupted attempt left.
    offsite.fail_writes(false);
    offsite.overwrite(&format!("apps/{APP}/{id}/data.tar.zst"), b"half");
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let retries = crate::copies::Scope::Retries;
    assert_eq!(
        crate::copies::pass_at(&ctl, later, retries)
            .await
            .unwrap()
            .made,
        1
    );
    let ok = located(&ctl, &id).await;
    assert_eq!(
        ok.iter().map(|l| l.state.as_str()).collect::<Vec<_>>(),
        ["ok", "ok"]
    );
    assert_eq!(ok[1].url, format!("memory:offsite/apps/{APP}/{id}"));
    assert_eq!(objects(&offsite, &id), objects(&memory, &id));

    // A primary whose archive rotted: the restore reads the copy, and says so.
    memory.overwrite(&format!("apps/{APP}/{id}/data.tar.zst"), b"rotten");
    let r = restored(&ctl, &id).await.unwrap();
    assert_eq!(r.source, ok[1].url);
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("read from the copy at memory:offsite/")),
        "{:?}",
        r.notes
    );
    assert_eq!(restored_bytes.lock().unwrap().take().unwrap(), artifacts());

    // A copy whose seal is not this controller's is never read: the
    // restore fails with the primary's own error.
    let seal_key = format!("apps/{APP}/{id}/metadata.seal");
    let seal = objects(&offsite, &id)["metadata.seal"].clone();
    offsite.overwrite(&seal_key, b"forged");
    let err = restored(&ctl, &id).await.unwrap_err();
    assert!(err.message().contains("data.tar.zst"), "{err:?}");
    assert!(restored_bytes.lock().unwrap().is_none());
    offsite.overwrite(&seal_key, &seal);

    // The primary lost it whole, and the controller restarted: the catalog
    // keeps the backup, which restores from the copy.
    crate::store::Backend::discard(&memory, &crate::store::BackupKey::new(APP, &id)).await;
    crate::recovery::rebuild_catalog(&ctl).await.unwrap();
    assert_eq!(
        ctl.backup_row(&id).await.unwrap().status,
        BackupStatus::Completed
    );
    assert_eq!(restored(&ctl, &id).await.unwrap().source, ok[1].url);
    assert_eq!(restored_bytes.lock().unwrap().take().unwrap(), artifacts());

    // A source that does not match its manifest is never copied.
    // (Made within the same second, it may sort either side of the first.)
    let second = backups(&ctl, 1)
        .await
        .into_iter()
        .find(|b| *b != id)
        .unwrap();
    memory.overwrite(&format!("apps/{APP}/{second}/env.json"), b"{}");
    assert_eq!(crate::copies::pass(&ctl).await.unwrap(), 0);
    let refused = located(&ctl, &second).await.remove(1);
    assert!(
        refused
            .reason
            .contains("env.json does not match its recorded checksum"),
        "{refused:?}"
    );
    assert!(stored(&offsite, &second).is_empty());

    // A delete removes the copies too.
    let row = ctl.backup_row(&id).await.unwrap();
    crate::delete::delete(&ctl, &row).await.unwrap();
    assert!(stored(&offsite, &id).is_empty());
    assert!(stored(&memory, &id).is_empty());
}

#[tokio::test]
async fn the_copier_comes_back_soon_for_a_backup_it_found_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let offsite = Memory::named("offsite");
    let copy_store = Store::with_backend(Arc::new(offsite.clone()), tmp.path())
        .await
        .unwrap();
    let (ctl, _) = controller_copying(FakeAgent::default(), tmp.path(), vec![copy_store]).await;
    let id = backups(&ctl, 1).await.remove(0);
    // Held as a create holds it until its last step: the copier's first
    // look finds it busy, which is no failure with a retry time.
    let held = ctl
        .use_backup(&id, crate::locks::BackupUse::Create)
        .unwrap();
    crate::copies::spawn(ctl.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(stored(&offsite, &id).is_empty());
    drop(held);
    // Well before the 30 s tick for failed copies.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored(&offsite, &id).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a busy backup waited for the retry tick"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let row = ctl.backup_row(&id).await.unwrap();
    let copied = crate::copies::locate(&ctl, &[row]).await.unwrap().remove(0);
    assert_eq!(copied[1].state, "ok");
}

/// The keys of a controller whose backups are sealed to `old` and whose
/// recipients are now `new` alone (a `keys rotate` in effect), with the
/// identities of both.
fn rotated_keys() -> (crate::keys::Keys, String, String) {
    use hop3_wire::encryption::{Identities, KeyId, Recipients};
    let (old, new) = (Identities::generate(), Identities::generate());
    let text = format!(
        "{}{}",
        Identities::file_text(&new, "now"),
        Identities::file_text(&old, "before")
    );
    let to = |i: &age::x25519::Identity| {
        Some(Arc::new(
            Recipients::parse(&[i.to_public().to_string()]).unwrap(),
        ))
    };
    let keys = crate::keys::Keys {
        encrypt_to: to(&old),
        identities: Arc::new(Identities::from_file_text(&text).unwrap()),
        clear_refused_by: None,
        recipients: to(&new),
        dir: None,
    };
    let ids = (
        KeyId::of(&old.to_public()).to_string(),
        KeyId::of(&new.to_public()).to_string(),
    );
    (keys, ids.0, ids.1)
}

#[tokio::test]
async fn a_retired_key_leaves_every_backup_and_copy_sealed_to_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let offsite = Memory::named("offsite");
    let copy_store = Store::with_backend(Arc::new(offsite.clone()), tmp.path())
        .await
        .unwrap();
    let (keys, old, new) = rotated_keys();
    let agent = FakeAgent::default();
    let restored = agent.restored.clone();
    let (ctl, memory) = controller_with_keys(agent, tmp.path(), vec![copy_store], keys).await;
    let ids = backups(&ctl, 2).await;
    assert_eq!(crate::copies::pass(&ctl).await.unwrap(), 2);
    let keys_of = |id: &str| {
        let ctl = ctl.clone();
        let id = id.to_owned();
        async move {
            let m = ctl.store.read_manifest(APP, &id).await.unwrap();
            m.encrypted.unwrap().keys
        }
    };
    assert_eq!(keys_of(&ids[0]).await, vec![old.clone()]);

    // A damaged artifact: that backup is left exactly as it was, the other
    // encrypted again.
    let env = format!("apps/{APP}/{}/env.json.age", ids[1]);
    let (damaged_before, good_env) = (stored(&memory, &ids[1]), {
        let mut s = ctl
            .store
            .open_artifact(APP, &ids[1], "env.json.age")
            .await
            .unwrap();
        let mut b = Vec::new();
        while let Some(x) = futures::StreamExt::next(&mut s).await {
            b.extend_from_slice(&x.unwrap());
        }
        b
    });
    let mut flipped = good_env.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 1;
    memory.overwrite(&env, &flipped);
    let first = crate::retire::pass(&ctl, &old).await.unwrap();
    assert_eq!((first.done, first.left), (1, 1));
    assert_eq!(
        stored(&memory, &ids[1]),
        damaged_before,
        "nothing added or removed"
    );
    assert_eq!(keys_of(&ids[1]).await, vec![old.clone()]);
    assert_eq!(keys_of(&ids[0]).await, vec![new.clone()]);

    // Mended, with what a rewrite stopped before its switch leaves: the
    // next pass removes that and finishes.
    memory.overwrite(&env, &good_env);
    memory.overwrite(
        &format!("apps/{APP}/{}/sealed-2/env.json.age", ids[1]),
        b"half",
    );
    let second = crate::retire::pass(&ctl, &old).await.unwrap();
    assert_eq!((second.done, second.left), (1, 0));
    assert_eq!(crate::retire::pass(&ctl, &old).await.unwrap().done, 0);

    // A stop between the switch and the removal of the old objects (or a
    // delete the store refused) leaves an object sealed to the old key:
    // the key is not let go while it is there.
    let left_over = format!("apps/{APP}/{}/env.json.age", ids[0]);
    memory.overwrite(&left_over, &good_env);
    memory.fail_deletes(true);
    let refused = crate::retire::pass(&ctl, &old).await.unwrap();
    assert_eq!((refused.done, refused.left), (0, 1));
    assert!(memory.keys().contains(&left_over));
    memory.fail_deletes(false);
    let cleaned = crate::retire::pass(&ctl, &old).await.unwrap();
    assert_eq!((cleaned.done, cleaned.left), (0, 0));
    assert!(!memory.keys().contains(&left_over), "the old object stayed");
    for id in &ids {
        assert_eq!(keys_of(id).await, vec![new.clone()]);
        assert!(ctl.store.sealed(APP, id).await, "sealed anew");
        assert_eq!(
            stored(&memory, id),
            [
                "metadata.json",
                "metadata.seal",
                "sealed-2/app.json.age",
                "sealed-2/data.tar.zst.age",
                "sealed-2/env.json.age",
                "sealed-2/source.tar.zst.age"
            ]
        );
        let row = ctl.catalog.get(id).await.unwrap().unwrap();
        let m = ctl.store.read_manifest(APP, id).await.unwrap();
        assert_eq!(row.total_size, m.size_bytes);
        // Every plaintext byte comes back.
        let result = last(restore::start(&ctl, restore_request(id)).await.unwrap()).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(restored.lock().unwrap().take().unwrap(), artifacts());
    }

    // The copies are brought up to date the same way, when their retry is due.
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let made = crate::copies::pass_at(&ctl, later, crate::copies::Scope::Retries)
        .await
        .unwrap()
        .made;
    assert_eq!(made, 2);
    let copy = &ctl.copies.stores()[0];
    for id in &ids {
        assert_eq!(stored(&offsite, id), stored(&memory, id));
        assert_eq!(
            copy.read_manifest(APP, id).await.unwrap(),
            ctl.store.read_manifest(APP, id).await.unwrap()
        );
        assert!(copy.sealed(APP, id).await);
    }
}

#[tokio::test]
async fn a_manifest_sealed_to_a_key_no_one_here_holds_is_refused_before_the_agent_hears_of_it() {
    use hop3_wire::encryption::{Identities, KeyId, Recipients};
    let tmp = tempfile::tempdir().unwrap();
    let (keys, _, _) = rotated_keys();
    let agent = FakeAgent::default();
    let restored = agent.restored.clone();
    let (ctl, memory) = controller_with_keys(agent, tmp.path(), Vec::new(), keys).await;
    let id = backups(&ctl, 1).await.remove(0);
    // The section re-sealed to a stranger's key, the seal made anew: only
    // the key decides.
    let stranger = Identities::generate().to_public();
    let stranger_id = KeyId::of(&stranger).to_string();
    let mut m = ctl.store.read_manifest(APP, &id).await.unwrap();
    let to = Recipients::parse(&[stranger.to_string()]).unwrap();
    let section = m.encrypted.as_mut().unwrap();
    section.payload = to.encrypt_armored(br#"{"files":{}}"#).unwrap();
    section.keys = vec![stranger_id.clone()];
    memory.overwrite(&format!("apps/{APP}/{id}/metadata.json"), &m.to_json());
    ctl.store.seal_stored(APP, &id).await.unwrap();
    let err = last(restore::start(&ctl, restore_request(&id)).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains(&format!("is encrypted to key {stranger_id}"))
            && err.message().contains("holds no identity"),
        "{err:?}"
    );
    assert!(
        restored.lock().unwrap().is_none(),
        "the agent restored something"
    );
}
