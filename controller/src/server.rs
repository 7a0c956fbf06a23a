//! Wiring: open the catalog and store, recover from an interrupted run,
//! start the local agent, serve.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::agent_registry_server::AgentRegistryServer;
use hop3_proto::v1::backup_service_server::BackupServiceServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use hop3_agent::tls::{CONTROLLER_NAME, TlsFiles};

use crate::api::{BackupApi, RegistryApi};
use crate::auth::Auth;
use crate::config::Config;
use crate::locks::{AppLocks, BackupLocks};
use crate::registry::Registry;
use crate::state::Controller;
use crate::store::Store;
use crate::tokens::Tokens;

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let store = Store::open(&config.store)
        .await
        .with_context(|| format!("cannot open the store at {}", config.store.display()))?;
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
            "refusing to serve plain, unauthenticated gRPC on {}: use --tls-dir DIR (see certs init), listen on a loopback address, or pass --insecure",
            config.listen
        );
    }
    let auth = if tls.is_some() {
        Auth::Tokens(tokens)
    } else {
        Auth::Open
    };
    let ctl = Arc::new(Controller {
        catalog,
        store,
        registry: Registry::new(tls.clone(), config.forget_agents_after.0),
        locks: AppLocks::default(),
        backup_locks: BackupLocks::default(),
        auth,
        idle_timeout: std::time::Duration::from_secs(config.agent.idle_timeout),
        mutual_tls: tls.is_some(),
    });
    crate::recovery::rebuild_catalog(&ctl)
        .await
        .context("cannot check the catalog against the store")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;

    if config.local_agent {
        let state = Arc::new(config.agent.state());
        let agent_listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let agent_addr = agent_listener.local_addr()?;
        let (reporter, health) = hop3_agent::server::health().await;
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        ctl.registry.register(
            &state.host_id,
            &format!("http://{agent_addr}"),
            hop3_proto::HOP3_VERSION,
            Vec::new(),
            true,
        )?;
        tracing::info!(root = %config.agent.root.display(), host_id = %state.host_id, agent = %agent_addr, "local agent serving");
        tokio::spawn(async move {
            if let Err(e) = hop3_agent::server::serve(
                state,
                None,
                agent_listener,
                (reporter, health),
                std::future::pending(),
            )
            .await
            {
                tracing::error!(error = %e, "local agent stopped");
            }
        });
    }

    let (_reporter, health) = tonic_health::server::health_reporter();
    let backup = BackupServiceServer::new(BackupApi::new(ctl.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    // Registrations are small: a large one is refused before it is buffered.
    let registry = AgentRegistryServer::new(RegistryApi::new(ctl.clone()))
        .max_decoding_message_size(1024 * 1024);
    tracing::info!(listen = %local, store = %config.store.display(), "hop3-controller serving");
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
        .serve_with_incoming_shutdown(hop3_agent::server::incoming(listener), shutdown)
        .await?;
    ctl.catalog.checkpoint().await;
    Ok(())
}
