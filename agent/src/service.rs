//! The AgentService the controller calls.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hop3_proto::v1::{self, agent_service_server::AgentService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::events::EventSender;
use crate::state::AgentState;
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
            tracing::info!(app, backup_id = %req.backup_id, "backup: start");
            match backup::produce(&state, req, &tx).await {
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
            match restore::restore(&state, inbound, &tx).await {
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
