//! Serving the AgentService over gRPC, with health, and registering with the controller.

use std::sync::Arc;
use std::time::Duration;

use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::RegisterRequest;
use hop3_proto::v1::agent_registry_client::AgentRegistryClient;
use hop3_proto::v1::agent_service_server::AgentServiceServer;
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::callers::{Callers, ControllerToken};
use crate::restore::clean_leftovers;
use crate::service::AgentServiceImpl;
use crate::state::AgentState;
use hop3_wire::join_token::JoinToken;
use hop3_wire::tls::{CONTROLLER_NAME, TlsFiles};

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
    let reflection = hop3_wire::serving::reflection(&[AGENT_SERVICE]);
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

/// The agent's service, as health and reflection name it.
pub const AGENT_SERVICE: &str = "hop3.backup.v1.AgentService";

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
    let mut apps = crate::app_watch::watch(state.root.clone()).await;
    // The digest of the list the controller last took whole: until it
    // changes, heartbeats carry only the digest.
    let mut sent: Option<String> = None;
    loop {
        let seen = apps.borrow_and_update().clone();
        let digest = hop3_proto::app_list::digest(&seen.apps);
        let whole = sent.as_deref() != Some(digest.as_str());
        let mut req = tonic::Request::new(RegisterRequest {
            host_id: state.host_id.clone(),
            address: advertise.clone(),
            version: hop3_proto::HOP3_VERSION.into(),
            apps: if whole { seen.apps } else { Vec::new() },
            instance: instance.clone(),
            apps_digest: digest.clone(),
            apps_included: whole,
            apps_stale: seen.stale,
        });
        if let Some((join, _)) = &join {
            req.metadata_mut().insert("authorization", join.header());
        }
        let wait = match client.register(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                if let Some((_, calls)) = &join {
                    calls.set(&resp.call_token);
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
                if resp.send_apps && !whole {
                    // The controller lost the list (it restarted): at once.
                    sent = None;
                    continue;
                }
                sent = Some(digest);
                Duration::from_secs(resp.heartbeat_seconds.clamp(1, 300) as u64)
            }
            Err(status) => {
                tracing::warn!(controller, error = %status.message(), "cannot register with the controller; retrying");
                sent = None;
                REGISTER_RETRY
            }
        };
        // A changed list goes up at once, not at the next heartbeat.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = apps.changed() => if changed.is_err() { return },
        }
    }
}
