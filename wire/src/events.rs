//! The serving side of a streaming RPC (the agent's to the controller, the
//! controller's to the CLI): a bounded channel of events, with progress that
//! is dropped rather than allowed to slow the data.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hop3_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use crate::progress::Progress;

/// The receiving end of an event stream has gone away (the peer hung up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the other end of the stream has gone away")]
pub struct Closed;

/// Depth of every outgoing stream: memory is bounded by this times the chunk size.
pub const STREAM_DEPTH: usize = 8;

/// The other end of an [`EventSender`]: what a streaming RPC returns.
pub type EventReceiver<T> = mpsc::Receiver<Result<T, Status>>;

/// Sends events of type `T` to the caller of a streaming RPC.
pub struct EventSender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> EventSender<T> {
    /// A sender and the stream to return from the RPC.
    pub fn channel() -> (Self, EventReceiver<T>) {
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        (Self { tx }, rx)
    }

    /// Sends one event, waiting for room; fails once the caller is gone.
    pub async fn send(&self, event: T) -> Result<(), Closed> {
        self.tx.send(Ok(event)).await.map_err(|_| Closed)
    }

    /// Sends one event from a blocking thread, waiting for room; fails once
    /// the caller is gone. Never call it on a runtime thread.
    pub fn blocking_send(&self, event: T) -> Result<(), Closed> {
        self.tx.blocking_send(Ok(event)).map_err(|_| Closed)
    }

    /// Whether the caller has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the receiving end has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Ends the stream with an error status.
    pub async fn fail(&self, status: Status) {
        // The caller may be gone already; then there is nobody to tell.
        let _ = self.tx.send(Err(status)).await;
    }

    /// Sends an event if there is room, else drops it: for progress, never for data.
    pub fn try_send(&self, event: T) {
        let _ = self.tx.try_send(Ok(event));
    }
}

/// Progress that becomes `v1::Progress` events on a stream, at most a few per second.
pub struct StreamProgress<T> {
    sender: EventSender<T>,
    wrap: fn(v1::Progress) -> T,
    state: Mutex<ProgressState>,
}

struct ProgressState {
    step: String,
    done: u64,
    total: u64,
    last_sent: Option<Instant>,
}

const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

impl<T: Send + 'static> StreamProgress<T> {
    /// Progress over `total` bytes, sent as events built by `wrap`.
    pub fn new(sender: EventSender<T>, total: u64, wrap: fn(v1::Progress) -> T) -> Self {
        Self {
            sender,
            wrap,
            state: Mutex::new(ProgressState {
                step: String::new(),
                done: 0,
                total,
                last_sent: None,
            }),
        }
    }

    fn emit(&self, state: &mut ProgressState, force: bool) {
        let now = Instant::now();
        if !force && state.last_sent.is_some_and(|t| now - t < PROGRESS_INTERVAL) {
            return;
        }
        state.last_sent = Some(now);
        self.sender.try_send((self.wrap)(v1::Progress {
            step: state.step.clone(),
            bytes_done: state.done.min(state.total.max(state.done)),
            bytes_total: state.total,
        }));
    }
}

impl<T: Send + 'static> Progress for StreamProgress<T> {
    /// Renames the current step; a non-zero `total` also restarts the count.
    fn step(&self, step: &str, total: u64) {
        let mut s = self.state.lock().expect("progress lock");
        s.step = step.to_owned();
        if total != 0 {
            s.total = total;
            s.done = 0;
        }
        self.emit(&mut s, true);
    }

    fn advance(&self, bytes: u64) {
        let mut s = self.state.lock().expect("progress lock");
        s.done += bytes;
        self.emit(&mut s, false);
    }
}
