//! Wiring shared by both servers: health and reflection by service name,
//! readiness for systemd, graceful shutdown, accepted TCP connections.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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

/// A health service that reports NOT_SERVING for the server as a whole
/// and for each of `services` (full names) until told otherwise.
pub async fn health(
    services: &[&str],
) -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(services.iter().copied()) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    (reporter, service)
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
