//! The AgentService the controller calls.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hop3_proto::v1::{self, agent_service_server::AgentService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::state::AgentState;
use hop3_wire::events::EventSender;

use crate::{backup, restore};

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves one host's apps.
pub struct AgentServiceImpl {
    state: Arc<AgentState>,
}

impl AgentServiceImpl {
    /// A service over `state`.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    async fn list_apps(
        &self,
        _req: Request<v1::ListAppsRequest>,
    ) -> Result<Response<v1::ListAppsResponse>, Status> {
        let apps = self.state.root.list_apps().await?;
        Ok(Response::new(v1::ListAppsResponse { apps }))
    }

    type BackupAppStream = EventStream<v1::BackupAppEvent>;

    async fn backup_app(
        &self,
        req: Request<v1::BackupAppRequest>,
    ) -> Result<Response<Self::BackupAppStream>, Status> {
        let req = req.into_inner();
        // Answer "not found" as a status of the call itself, before any stream.
        self.state.root.existing_app(&req.app).await?;
        let (tx, rx) = EventSender::channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            let app = req.app.clone();
            let Some(_permit) = wait_turn(&state, &tx, |p| v1::BackupAppEvent {
                event: Some(v1::backup_app_event::Event::Progress(p)),
            })
            .await
            else {
                return;
            };
            tracing::info!(app, backup_id = %req.backup_id, "backup: start");
            let (st, out) = (state.clone(), tx.clone());
            let work = async move { backup::produce(&st, req, &out).await };
            match guarded("the backup", work).await {
                Ok(()) => tracing::info!(app, "backup: sent"),
                Err(e) => {
                    tracing::warn!(app, error = %e, "backup: failed");
                    tx.fail(e.into()).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type RestoreAppStream = EventStream<v1::RestoreAppEvent>;

    async fn restore_app(
        &self,
        req: Request<Streaming<v1::RestoreAppMessage>>,
    ) -> Result<Response<Self::RestoreAppStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = EventSender::channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            let Some(_permit) = wait_turn(&state, &tx, |p| v1::RestoreAppEvent {
                event: Some(v1::restore_app_event::Event::Progress(p)),
            })
            .await
            else {
                return;
            };
            let (st, out) = (state.clone(), tx.clone());
            let work = async move { restore::restore(&st, inbound, &out).await };
            match guarded("the restore", work).await {
                Ok(done) => {
                    let _ = tx
                        .send(v1::RestoreAppEvent {
                            event: Some(v1::restore_app_event::Event::Done(done)),
                        })
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "restore: failed");
                    tx.fail(e.into()).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Runs `work` on a task of its own, so that a panic in it (a bug) comes
/// back as an internal error the controller is told about, instead of a
/// stream that just stops and reads as a lost agent.
async fn guarded<T: Send + 'static>(
    what: &'static str,
    work: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> crate::error::Result<T> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => {
            let detail = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            tracing::error!(detail, "{what} failed on a bug");
            Err(crate::error::AgentError::Bug(format!(
                "{what} failed: {detail}"
            )))
        }
    }
}

/// Waits for a job permit, telling the controller every few seconds that the
/// job is queued (so its idle timeout does not fire). None if the controller left.
async fn wait_turn<T: Send + 'static>(
    state: &AgentState,
    tx: &EventSender<T>,
    queued: fn(v1::Progress) -> T,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let acquire = state.jobs.clone().acquire_owned();
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            permit = &mut acquire => return permit.ok(),
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                let event = queued(v1::Progress { step: "queued".into(), bytes_done: 0, bytes_total: 0 });
                if tx.send(event).await.is_err() {
                    return None;
                }
            }
        }
    }
}
