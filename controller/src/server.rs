//! Wiring: open the catalog and store, recover from an interrupted run,
//! start the local agent, serve.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::agent_registry_server::AgentRegistryServer;
use hop3_proto::v1::backup_service_server::BackupServiceServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use hop3_wire::tls::{CONTROLLER_NAME, TlsFiles};

use crate::api::{BackupApi, RegistryApi};
use crate::auth::{Auth, Authorized};
use crate::config::{Config, DEFAULT_SOCKET_GROUP};
use crate::locks::{AppLocks, BackupLocks};
use crate::registry::Registry;
use crate::state::Controller;
use crate::tokens::Tokens;

/// The controller's services, as health and reflection name them.
const BACKUP_SERVICE: &str = "hop3.backup.v1.BackupService";
const REGISTRY_SERVICE: &str = "hop3.backup.v1.AgentRegistry";

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    hop3_wire::tls::use_ring_provider();
    let store = config.open_store().await?;
    // Checked before anything else starts: a store off the host with no
    // keys must not take a single backup in the clear.
    let keys = config.keys().await?;
    match &keys.encrypt_to {
        Some(r) => tracing::info!(keys = ?r, "backups are encrypted with age"),
        None => tracing::info!("backups are stored in the clear"),
    }
    let tokens = Tokens::new(store.root());
    let catalog = crate::recovery::open_catalog(&config.catalog_url(), &tokens)
        .await
        .context("cannot open the catalog")?;
    // Nothing can still be running from a previous process.
    let interrupted = catalog.fail_interrupted().await?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "backups of an interrupted run marked FAILED");
    }
    let tls = match &config.tls_dir {
        Some(dir) => Some(TlsFiles::load(dir, CONTROLLER_NAME)?),
        None => None,
    };
    if tls.is_none() && !config.listen.ip().is_loopback() && !config.insecure {
        anyhow::bail!(
            "refusing to serve plain gRPC on {}, where tokens would cross the network in clear: use --tls-dir DIR (see certs init), listen on a loopback address, or pass --insecure",
            config.listen
        );
    }
    // Without TLS, standalone agents and the controller know each other by it.
    let join_token = match &tls {
        Some(_) => None,
        None => {
            let root = store.root().to_owned();
            // File I/O: off the runtime's threads, as everything else.
            let token = tokio::task::spawn_blocking(move || {
                hop3_wire::join_token::JoinToken::load_or_create(&root)
            })
            .await?
            .context("cannot set up the agents' join token")?;
            Some(token)
        }
    };
    let (socket, local_callers) = crate::socket::bind(
        &config.socket,
        config
            .socket_group
            .as_deref()
            .unwrap_or(DEFAULT_SOCKET_GROUP),
        config.socket_group.is_some(),
    )
    .await?;
    let ctl = Arc::new(Controller {
        catalog,
        store,
        registry: Registry::new(tls.clone(), tls.is_none(), config.forget_agents_after.0),
        locks: AppLocks::default(),
        backup_locks: BackupLocks::default(),
        auth: Auth {
            tokens,
            local: local_callers,
        },
        idle_timeout: std::time::Duration::from_secs(config.agent.idle_timeout),
        mutual_tls: tls.is_some(),
        join_token,
        import_dir: config.import_dir(),
        scheduler: config.scheduler(),
        alerts: crate::alerts::Alerter::new(config.alerts().await?),
        copies: crate::copies::Copies::new(config.open_copies().await?),
        keys,
    });
    crate::recovery::start_up(&ctl)
        .await
        .context("cannot check the catalog against the store")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;

    if config.local_agent {
        let state = Arc::new(config.agent.state());
        let (reporter, health) =
            hop3_wire::serving::health(&[hop3_agent::server::AGENT_SERVICE]).await;
        for name in ["", hop3_agent::server::AGENT_SERVICE] {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        // No port: only this process holds the other end of its connections.
        let (channel, incoming) = crate::in_process::channel();
        ctl.registry.pin_local(&state.host_id, channel);
        // The in-process agent has no heartbeat: its app list is fed to
        // the index as it changes.
        let mut apps = hop3_agent::watch_apps(state.root.clone()).await;
        let (index, host_id) = (ctl.clone(), state.host_id.clone());
        tokio::spawn(async move {
            loop {
                let seen = apps.borrow_and_update().clone();
                index
                    .registry
                    .report_local_apps(&host_id, seen.apps, seen.stale);
                if apps.changed().await.is_err() {
                    return;
                }
            }
        });
        tracing::info!(root = %config.agent.root.display(), host_id = %state.host_id, "local agent serving in-process");
        tokio::spawn(async move {
            if let Err(e) = hop3_agent::server::serve(
                state,
                None,
                hop3_agent::Callers::InProcess,
                incoming,
                (reporter, health),
                std::future::pending(),
            )
            .await
            {
                tracing::error!(error = %e, "local agent stopped");
            }
        });
    }

    let (reporter, health) = tonic_health::server::health_reporter();
    // Health by service name too, as load balancers and grpc-health-probe ask.
    for name in [BACKUP_SERVICE, REGISTRY_SERVICE] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = hop3_wire::serving::reflection(&[BACKUP_SERVICE, REGISTRY_SERVICE]);
    // Every call of the CLI's API is checked before any handler runs.
    let backup = Authorized::new(
        BackupServiceServer::new(BackupApi::new(ctl.clone()))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
        ctl.auth.clone(),
    );
    let (stop_socket, socket_stopped) = tokio::sync::oneshot::channel::<()>();
    let on_socket = Server::builder()
        .max_concurrent_streams(Some(64))
        .concurrency_limit_per_connection(64)
        .add_service(health.clone())
        .add_service(backup.clone())
        .add_service(reflection.0.clone())
        .add_service(reflection.1.clone())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(socket),
            async {
                let _ = socket_stopped.await;
            },
        );
    let socket_path = config.socket.clone();
    let on_socket = tokio::spawn(async move {
        if let Err(e) = on_socket.await {
            tracing::error!(error = %e, "the socket stopped serving");
        }
    });
    // Registrations are small: a large one is refused before it is buffered.
    let registry = AgentRegistryServer::new(RegistryApi::new(ctl.clone()))
        .max_decoding_message_size(1024 * 1024);
    tracing::info!(listen = %local, socket = %socket_path.display(), store = %config.store, "hop3-controller serving");
    if let Some(addr) = config.metrics_listen {
        crate::telemetry::serve(ctl.clone(), addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    crate::scheduler::spawn(ctl.clone());
    crate::sweep::spawn(ctl.clone(), config.store_sweep_interval);
    crate::copies::spawn(ctl.clone());
    crate::retire::spawn(ctl.clone());
    hop3_wire::serving::notify_ready();
    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server(true))?;
    }
    builder
        // Bounds what one client can hold open: streams per connection and requests in flight.
        .max_concurrent_streams(Some(64))
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(backup)
        .add_service(registry)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .serve_with_incoming_shutdown(hop3_wire::serving::incoming(listener), shutdown)
        .await?;
    let _ = stop_socket.send(());
    let _ = on_socket.await;
    let _ = tokio::fs::remove_file(&socket_path).await;
    ctl.catalog.checkpoint().await;
    Ok(())
}
