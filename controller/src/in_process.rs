//! The in-process agent's connection: gRPC over in-memory pipes, so that
//! no port or socket exists through which another process could call it.

use std::io;

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Bytes buffered in each direction of a pipe: a few chunks of a stream.
const PIPE_BUFFER: usize = 1024 * 1024;

/// A channel to the agent, and the connections the agent's server accepts:
/// each connection the channel makes is a new pipe whose other end comes out
/// of the stream.
pub fn channel() -> (Channel, ReceiverStream<io::Result<DuplexStream>>) {
    let (tx, rx) = mpsc::channel::<io::Result<DuplexStream>>(4);
    let connector = tower::service_fn(move |_: Uri| {
        let tx = tx.clone();
        async move {
            let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
            tx.send(Ok(theirs))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "local agent stopped"))?;
            Ok::<_, io::Error>(TokioIo::new(ours))
        }
    });
    let channel =
        Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(connector);
    (channel, ReceiverStream::new(rx))
}
