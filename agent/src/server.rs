//! Serving the AgentService over gRPC, with health, and registering with the controller.

use std::sync::Arc;
use std::time::Duration;

use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::RegisterRequest;
use hop3_proto::v1::agent_registry_client::AgentRegistryClient;
use hop3_proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::callers::{Callers, ControllerToken};
use crate::join_token::JoinToken;
use crate::restore::clean_leftovers;
use crate::service::AgentServiceImpl;
use crate::state::AgentState;
use crate::tls::{CONTROLLER_NAME, TlsFiles};

/// Retry delay after a failed registration.
const REGISTER_RETRY: Duration = Duration::from_secs(2);

/// Serves `state` on the connections of `incoming` to `callers` only, until
/// `shutdown` resolves. Health reports NOT_SERVING until `set_serving` is
/// called on the returned reporter.
pub async fn serve<I, IO, IE>(
    state: Arc<AgentState>,
    tls: Option<TlsFiles>,
    callers: Callers,
    incoming: I,
    health: (
        HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A restore interrupted by a crash is undone before anything else runs.
    let stopped = crate::swap::recover(&state.root.state_dir()).await;
    clean_leftovers(&state.root.apps_dir()).await;
    // Before serving: a restore retried at once must not meet the
    // leftovers of the one interrupted.
    crate::services::recover(&state.tools).await;
    // Files and databases both put back: apps a restore stopped run again.
    for app in stopped {
        if let Err(e) = state.hooks.start(&app).await {
            tracing::warn!(app, error = %e, "the app does not start after undoing a restore");
        }
    }
    let reflection = reflection(&[AGENT_SERVICE]);
    let svc = AgentServiceServer::new(AgentServiceImpl::new(state))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        // TLS checks the certificate chains to our CA, `callers` that it is
        // the controller's.
        builder = builder.tls_config(tls.server(false))?;
    }
    let svc =
        tonic::service::interceptor::InterceptedService::new(svc, move |req: tonic::Request<()>| {
            callers.check(&req).map(|()| req)
        });
    builder
        .max_concurrent_streams(Some(64))
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health.1)
        .add_service(svc)
        .add_service(reflection.0)
        .add_service(reflection.1)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// gRPC server reflection of `services` (full names) and of health, so that
/// grpcurl, grpcui and clients in any language need no `.proto` files.
/// Both versions: v1, and v1alpha, which older grpcurl and grpcio ask.
pub fn reflection(
    services: &[&str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hop3_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    (
        builder()
            .build_v1()
            .expect("the descriptors compiled in are valid"),
        builder()
            .build_v1alpha()
            .expect("the descriptors compiled in are valid"),
    )
}

/// The agent's service, as health and reflection name it.
pub const AGENT_SERVICE: &str = "hop3.backup.v1.AgentService";

/// A health service that starts as NOT_SERVING.
pub async fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in ["", AGENT_SERVICE] {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    (reporter, service)
}

/// Registers with the controller at `controller`, then again every heartbeat
/// the controller asks for, forever. Health turns SERVING after the first success.
pub async fn register_loop(
    state: Arc<AgentState>,
    tls: Option<TlsFiles>,
    join: Option<(JoinToken, Arc<ControllerToken>)>,
    controller: String,
    advertise: String,
    reporter: HealthReporter,
) {
    let mut endpoint = match Endpoint::from_shared(controller.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10)),
        Err(e) => {
            tracing::error!(controller, error = %e, "invalid controller URL");
            return;
        }
    };
    if let Some(tls) = &tls {
        endpoint = match endpoint.tls_config(tls.client(CONTROLLER_NAME)) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(controller, error = %e, "cannot set up TLS to the controller");
                return;
            }
        };
    }
    let mut client = AgentRegistryClient::new(endpoint.connect_lazy());
    let mut registered = false;
    // Tells this process's registrations from another's under the same host id.
    let instance = hex::encode(rand::random::<[u8; 16]>());
    loop {
        let apps = state.root.list_apps().await.unwrap_or_default();
        let mut req = tonic::Request::new(RegisterRequest {
            host_id: state.host_id.clone(),
            address: advertise.clone(),
            version: hop3_proto::HOP3_VERSION.into(),
            apps,
            instance: instance.clone(),
        });
        if let Some((join, _)) = &join {
            req.metadata_mut().insert("authorization", join.header());
        }
        let wait = match client.register(req).await {
            Ok(resp) => {
                if let Some((_, calls)) = &join {
                    calls.set(&resp.get_ref().call_token);
                }
                if !registered {
                    tracing::info!(controller, host_id = %state.host_id, "registered with the controller");
                    for name in ["", AGENT_SERVICE] {
                        reporter
                            .set_service_status(name, ServingStatus::Serving)
                            .await;
                    }
                    registered = true;
                }
                Duration::from_secs(resp.into_inner().heartbeat_seconds.clamp(1, 300) as u64)
            }
            Err(status) => {
                tracing::warn!(controller, error = %status.message(), "cannot register with the controller; retrying");
                REGISTER_RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Tells systemd (a `Type=notify` unit) that the server is listening; a
/// no-op outside systemd.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the service is ready");
    }
}

/// Resolves on SIGTERM or Ctrl-C: what stops a server gracefully.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Accepted connections with Nagle's algorithm off: small responses (a list,
/// a status) otherwise wait out the peer's delayed ACK, ~40 ms each.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    })
}
