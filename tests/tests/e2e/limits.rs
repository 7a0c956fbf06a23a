//! Bad peers at the gRPC level: oversized messages, a client opening many
//! streams at once, and a stream that stops sending. Each gets a clear
//! status in bounded time, and the servers keep serving everyone else.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hop3_proto::v1::agent_registry_client::AgentRegistryClient;
use hop3_proto::v1::agent_service_client::AgentServiceClient;
use hop3_proto::v1::backup_service_client::BackupServiceClient;
use hop3_proto::v1::{self, restore_app_message::Msg};
use hop3_proto::{BackupId, Checksum, Manifest};
use hop3_tests::System;
use hop3_tests::fixtures::App;
use hop3_tests::harness::wait_until;
use tonic::Code;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

#[test]
fn oversized_messages_are_refused_and_the_server_keeps_serving() -> Result<()> {
    let sys = System::start()?;
    let url = sys.url.clone();
    runtime()?.block_on(async move {
        let mut api = BackupServiceClient::new(sys.socket_channel().await?)
            .max_encoding_message_size(64 * 1024 * 1024);
        // 8 MiB: twice what the API accepts in one message.
        let huge = "x".repeat(8 * 1024 * 1024);
        let err = api
            .import_backup(v1::ImportBackupRequest { path: huge.clone() })
            .await
            .expect_err("an 8 MiB request was accepted");
        ensure!(
            matches!(
                err.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "unexpected status for an oversized request: {err:?}"
        );
        let mut registry = AgentRegistryClient::connect(url.clone())
            .await?
            .max_encoding_message_size(64 * 1024 * 1024);
        let err = registry
            .register(v1::RegisterRequest {
                host_id: "big".into(),
                address: "http://127.0.0.1:1".into(),
                version: "x".into(),
                apps: vec![huge; 1],
                instance: String::new(),
                ..Default::default()
            })
            .await
            .expect_err("an 8 MiB registration was accepted");
        ensure!(err.code() != Code::Ok, "{err:?}");
        // Everyone else is still served, on a fresh connection too.
        let mut fresh = BackupServiceClient::new(sys.socket_channel().await?);
        fresh
            .list_backups(v1::ListBackupsRequest {
                app: String::new(),
                limit: 5,
                status: String::new(),
            })
            .await
            .context("the controller stopped serving after oversized messages")?;
        Ok(())
    })
}

#[test]
fn many_streams_from_one_client_stay_bounded() -> Result<()> {
    let mut sys = System::start()?;
    let pid = sys.controller().pid().context("controller not running")?;
    let started = Instant::now();
    runtime()?.block_on(async {
        let channel = sys.socket_channel().await?;
        // One call first: until the server's SETTINGS arrive, a client may
        // open more streams than the server allows, and the excess is
        // refused (UNAVAILABLE) rather than queued.
        BackupServiceClient::new(channel.clone())
            .list_backups(v1::ListBackupsRequest::default())
            .await?;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..400 {
            let mut api = BackupServiceClient::new(channel.clone());
            calls.spawn(async move {
                if i % 4 == 0 {
                    // Streams for an app nobody serves: each must end with NOT_FOUND.
                    api.create_backup(v1::CreateBackupRequest {
                        app: format!("nobody-{i}"),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(|s| (s.code(), s.message().to_owned()))
                } else {
                    api.list_backups(v1::ListBackupsRequest {
                        app: String::new(),
                        limit: 20,
                        status: String::new(),
                    })
                    .await
                    .map(drop)
                    .map_err(|s| (s.code(), s.message().to_owned()))
                }
            });
        }
        let mut not_found = 0;
        while let Some(done) = calls.join_next().await {
            match done? {
                Ok(()) => {}
                Err((Code::NotFound, _)) => not_found += 1,
                Err((code, message)) => anyhow::bail!("a call failed with {code:?}: {message}"),
            }
        }
        ensure!(
            not_found == 100,
            "{not_found} creates for unknown apps got NOT_FOUND, not 100"
        );
        Ok(())
    })?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(60), "400 calls took {took:?}");
    let rss = peak_rss_kib(pid)?;
    eprintln!(
        "400 concurrent calls on one connection: {took:?}, controller peak RSS {} MiB",
        rss / 1024
    );
    ensure!(rss < 64 * 1024, "controller peak RSS {} KiB", rss);
    Ok(())
}

#[test]
fn an_agent_gives_up_on_a_restore_stream_that_stops_sending() -> Result<()> {
    // Over TLS, so that the test can call the agent as the controller does:
    // with the controller's certificate.
    let mut sys = System::builder().local_agent(false).tls().start()?;
    let token = sys.create_token("ops")?;
    sys.set_token(Some(&token));
    let root = sys.agent_root("quiet")?;
    let scratch = sys.scratch("fixture")?;
    let app = App::build(&root, "quiet-app", 7, &scratch)?;
    let before = std::fs::read_dir(root.join("apps"))?.count();
    let agent = sys.start_agent_with("quiet", &["--idle-timeout", "3"])?;
    let agent_url = agent.process.url();
    let id = BackupId::generate();
    let mut checksums = std::collections::BTreeMap::new();
    checksums.insert("data.tar.gz".to_owned(), Checksum::of(b"never sent"));
    let manifest = Manifest {
        encodings: Default::default(),
        backup_id: id.to_string(),
        app_name: "quiet-app".into(),
        created_at: Manifest::format_time(id.timestamp()),
        format_version: "1.0".into(),
        hop3_version: "test".into(),
        size_bytes: 10,
        checksums,
        app_metadata: Default::default(),
        services: vec![],
        env_vars_count: 0,
        expires_after: 0,
        services_included: true,
        host: None,
        layout: None,
        encrypted: None,
    };
    let started = Instant::now();
    let tls = sys.tls_dir().context("tls()")?.to_owned();
    let controller = hop3_tests::harness::TlsProbe {
        ca: tls.join("ca.pem"),
        domain: "quiet".to_owned(),
        identity: Some((
            tls.join("hop3-controller.pem"),
            tls.join("hop3-controller.key"),
        )),
    }
    .client_config()?;
    let outcome = runtime()?.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(agent_url)?
            .tls_config(controller)?
            .connect()
            .await?;
        let mut agent = AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let msg = |m| v1::RestoreAppMessage { msg: Some(m) };
        tx.send(msg(Msg::Header(v1::RestoreHeader {
            app: "quiet-app".into(),
            manifest_json: String::from_utf8(manifest.to_json())?,
            total_bytes: 10,
            ..Default::default()
        })))
        .await?;
        tx.send(msg(Msg::Start(v1::ArtifactStart {
            path: "data.tar.gz".into(),
            ..Default::default()
        })))
        .await?;
        // ... and then nothing, while keeping the stream open.
        let mut events = agent
            .restore_app(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        })
        .await;
        drop(tx);
        anyhow::Ok(ended)
    })?;
    let took = started.elapsed();
    let status = match outcome {
        Err(_) => anyhow::bail!("the agent still waited after 30 s"),
        Ok(Ok(())) => anyhow::bail!("the stream ended without an error"),
        Ok(Err(status)) => status,
    };
    eprintln!("agent gave up on a silent restore stream after {took:?}: {status:?}");
    ensure!(took < Duration::from_secs(20), "took {took:?}");
    // The staging directory is removed; the app is as it was.
    wait_until(Duration::from_secs(10), "staging removed", || {
        Ok((std::fs::read_dir(root.join("apps"))?.count() == before).then_some(()))
    })?;
    ensure!(app.dir.join("app.json").exists(), "the app was touched");
    // And the agent still serves.
    let list = sys.hop3(["--json", "agent:list"]);
    ensure!(list.status.success(), "{list:?}");
    Ok(())
}

/// `GetBackup` with `summary_only` (the delete prompt's call) answers from
/// the catalog without reading the backup's files: a damaged file does not
/// show in it, while the full call still catches it.
#[test]
fn a_summary_only_lookup_reads_no_backup_file() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixture")?;
    App::build(&sys.root, "peek", 9, &scratch)?;
    let created: hop3_tests::cli::BackupSummary = sys
        .hop3(["--json", "backup:create", "peek"])
        .success()?
        .json()?;
    let data = sys
        .backup_dir("peek", &created.backup_id)
        .join("data.tar.zst");
    // Unreadable rather than changed: any attempt to hash it fails.
    std::fs::remove_file(&data)?;
    let id = created.backup_id.clone();
    runtime()?.block_on(async {
        let mut api = BackupServiceClient::new(sys.socket_channel().await?);
        let quick = api
            .get_backup(v1::GetBackupRequest {
                backup_id: id.clone(),
                summary_only: true,
            })
            .await?
            .into_inner();
        ensure!(quick.summary.map(|s| s.backup_id) == Some(id.clone()));
        ensure!(
            quick.files.is_empty(),
            "summary_only listed files: {:?}",
            quick.files
        );
        let full = api
            .get_backup(v1::GetBackupRequest {
                backup_id: id,
                summary_only: false,
            })
            .await?
            .into_inner();
        ensure!(!full.all_valid, "the full lookup missed a missing file");
        ensure!(
            full.files
                .iter()
                .any(|f| f.path == "data.tar.zst" && !f.valid)
        );
        Ok(())
    })
}
