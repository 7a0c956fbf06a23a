//! The gRPC services of the controller: the CLI's BackupService and the
//! agents' AgentRegistry. Handlers check, call a job and convert; the jobs
//! (create, restore, delete, import) do the work, callable without a
//! request.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hop3_proto::names::validate_app_name;
use hop3_proto::v1::{
    self, agent_registry_server::AgentRegistry, backup_service_server::BackupService,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::catalog::BackupStatus;
use crate::create;
use crate::error::{ControllerError, Result};
use crate::locks::BackupUse;
use crate::registry::HEARTBEAT;
use crate::restore;
use crate::state::Controller;

/// Default and largest page of `ListBackups`.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100_000;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The CLI's API.
pub struct BackupApi {
    ctl: Arc<Controller>,
}

impl BackupApi {
    /// The API over `ctl`.
    pub fn new(ctl: Arc<Controller>) -> Self {
        Self { ctl }
    }
}

fn check_app(name: &str) -> Result<()> {
    validate_app_name(name).map_err(|e| ControllerError::InvalidArgument(e.to_string()))
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    type CreateBackupStream = EventStream<v1::CreateBackupEvent>;

    async fn create_backup(
        &self,
        req: Request<v1::CreateBackupRequest>,
    ) -> Result<Response<Self::CreateBackupStream>, Status> {
        let req = req.into_inner();
        let rx = create::start(
            &self.ctl,
            create::CreateRequest {
                app: req.app,
                host: (!req.host.is_empty()).then_some(req.host),
                include_services: !req.no_services,
                format: (!req.format.is_empty()).then_some(req.format),
                cancel_on_disconnect: req.cancel_on_disconnect,
            },
        )
        .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_backups(
        &self,
        req: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::ListBackupsResponse>, Status> {
        let req = req.into_inner();
        let app = (!req.app.is_empty()).then_some(req.app.as_str());
        if let Some(app) = app {
            check_app(app)?;
        }
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let status = match req.status.as_str() {
            "" => None,
            s => Some(
                s.to_ascii_uppercase()
                    .parse::<BackupStatus>()
                    .map_err(|_| {
                        ControllerError::InvalidArgument(format!(
                            "unknown status {s:?}: use STARTED, COMPLETED, FAILED or DELETE_PENDING"
                        ))
                    })?,
            ),
        };
        let rows = self
            .ctl
            .catalog
            .list(app, status, limit)
            .await
            .map_err(ControllerError::from)?;
        let locations = crate::copies::locate(&self.ctl, &rows).await?;
        Ok(Response::new(v1::ListBackupsResponse {
            backups: rows
                .iter()
                .zip(locations)
                .map(|(r, locations)| v1::BackupSummary {
                    locations,
                    ..self.ctl.summary(r)
                })
                .collect(),
        }))
    }

    async fn get_backup(
        &self,
        req: Request<v1::GetBackupRequest>,
    ) -> Result<Response<v1::BackupDetails>, Status> {
        let row = self.ctl.backup_row(&req.get_ref().backup_id).await?;
        let locations = crate::copies::locate(&self.ctl, std::slice::from_ref(&row))
            .await?
            .pop()
            .unwrap_or_default();
        let mut details = v1::BackupDetails {
            summary: Some(v1::BackupSummary {
                locations,
                ..self.ctl.summary(&row)
            }),
            ..Default::default()
        };
        if row.status != BackupStatus::Completed || req.get_ref().summary_only {
            return Ok(Response::new(details));
        }
        // Held while the files are hashed (dropped with this call if the CLI goes).
        let _reading = self.ctl.use_backup(&row.backup_id, BackupUse::Verify)?;
        details.trusted = self.ctl.store.sealed(&row.app, &row.backup_id).await;
        let manifest = self
            .ctl
            .store
            .read_manifest(&row.app, &row.backup_id)
            .await
            .map_err(ControllerError::from)?;
        let checks = self
            .ctl
            .store
            .verify(&row.app, &row.backup_id, &manifest, &|_| {})
            .await;
        if let Some(summary) = &mut details.summary {
            summary.skipped = create::skipped_entries(&manifest);
        }
        details.format_version = manifest.format_version.clone();
        details.hop3_version = manifest.hop3_version.clone();
        details.env_vars_count = manifest.env_vars_count;
        details.services_included = manifest.services_included;
        details.all_valid = checks.iter().all(|c| c.valid());
        details.files = checks
            .iter()
            .map(|c| v1::FileCheck {
                path: c.path.clone(),
                expected: c.expected.to_string(),
                actual: c.actual.map(|a| a.to_string()).unwrap_or_default(),
                size: c.size,
                valid: c.valid(),
            })
            .collect();
        details.services = manifest
            .services
            .iter()
            .map(|s| v1::ServiceInfo {
                r#type: s.kind.clone(),
                name: s.name.clone(),
                file: s.backup_file.clone(),
                size: s.size_bytes,
            })
            .collect();
        let meta = &manifest.app_metadata;
        details.app_state = Some(v1::AppState {
            hostname: meta.hostname.clone().unwrap_or_default(),
            port: meta.port.unwrap_or_default(),
            run_state: meta.run_state.clone().unwrap_or_default(),
        });
        Ok(Response::new(details))
    }

    type RestoreBackupStream = EventStream<v1::RestoreBackupEvent>;

    async fn restore_backup(
        &self,
        req: Request<v1::RestoreBackupRequest>,
    ) -> Result<Response<Self::RestoreBackupStream>, Status> {
        let req = req.into_inner();
        let present = |s: String| (!s.is_empty()).then_some(s);
        let rx = restore::start(
            &self.ctl,
            restore::RestoreRequest {
                backup_id: req.backup_id,
                target_app: present(req.target_app),
                target_host: present(req.target_host),
                replace: req.replace,
                hostname: present(req.hostname),
                trust_imported: req.trust_imported,
                no_start: req.no_start,
                cancel_on_disconnect: req.cancel_on_disconnect,
            },
        )
        .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_backup(
        &self,
        req: Request<v1::DeleteBackupRequest>,
    ) -> Result<Response<v1::DeleteBackupResponse>, Status> {
        let row = self.ctl.backup_row(&req.get_ref().backup_id).await?;
        crate::delete::delete(&self.ctl, &row).await?;
        Ok(Response::new(v1::DeleteBackupResponse {}))
    }

    type PruneBackupsStream = EventStream<v1::PruneDecision>;

    async fn prune_backups(
        &self,
        req: Request<v1::PruneBackupsRequest>,
    ) -> Result<Response<Self::PruneBackupsStream>, Status> {
        let req = crate::prune::PruneRequest::from_wire(&self.ctl, req.into_inner()).await?;
        let rx = crate::prune::start(&self.ctl, req).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pin_backup(
        &self,
        req: Request<v1::PinBackupRequest>,
    ) -> Result<Response<v1::BackupSummary>, Status> {
        let req = req.into_inner();
        let row = crate::pin::set_pinned(&self.ctl, &req.backup_id, req.pinned).await?;
        Ok(Response::new(self.ctl.summary(&row)))
    }

    async fn set_schedule(
        &self,
        req: Request<v1::SetScheduleRequest>,
    ) -> Result<Response<v1::ScheduleInfo>, Status> {
        let schedule = req.into_inner().schedule.unwrap_or_default();
        Ok(Response::new(
            crate::schedules::set(&self.ctl, schedule).await?,
        ))
    }

    async fn list_schedules(
        &self,
        req: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        let app = req.into_inner().app;
        let app = (!app.is_empty()).then_some(app.as_str());
        if let Some(app) = app {
            check_app(app)?;
        }
        let schedules = crate::schedules::list(&self.ctl, app).await?;
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn delete_schedule(
        &self,
        req: Request<v1::DeleteScheduleRequest>,
    ) -> Result<Response<v1::DeleteScheduleResponse>, Status> {
        let req = req.into_inner();
        check_app(&req.app)?;
        crate::schedules::delete(&self.ctl, &req.app, &req.name).await?;
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn import_backup(
        &self,
        req: Request<v1::ImportBackupRequest>,
    ) -> Result<Response<v1::BackupSummary>, Status> {
        let path = std::path::PathBuf::from(&req.get_ref().path);
        let row = crate::recovery::import(&self.ctl, &path).await?;
        Ok(Response::new(self.ctl.summary(&row)))
    }

    async fn list_agents(
        &self,
        _req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        // The index the agents keep current: no agent is asked, so a hung
        // one delays nothing.
        let agents = self
            .ctl
            .registry
            .list()
            .into_iter()
            .map(|a| v1::AgentInfo {
                degraded: a.degraded,
                apps: a.apps,
                host: a.host_id,
                address: a.address,
                version: a.version,
                online: a.online,
                last_seen: hop3_proto::manifest::Manifest::format_time(a.last_seen.into()),
            })
            .collect();
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    async fn forget_agent(
        &self,
        req: Request<v1::ForgetAgentRequest>,
    ) -> Result<Response<v1::ForgetAgentResponse>, Status> {
        let host = req.into_inner().host;
        hop3_proto::names::validate_host_id(&host)
            .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        self.ctl.registry.forget(&host)?;
        Ok(Response::new(v1::ForgetAgentResponse {}))
    }
}

/// The agents' API.
pub struct RegistryApi {
    ctl: Arc<Controller>,
}

impl RegistryApi {
    /// The API over `ctl`.
    pub fn new(ctl: Arc<Controller>) -> Self {
        Self { ctl }
    }
}

#[tonic::async_trait]
impl AgentRegistry for RegistryApi {
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        if let Some(join) = &self.ctl.join_token
            && !join.presented_in(req.metadata())
        {
            tracing::warn!(claimed = %req.get_ref().host_id, "refused a registration without the join token");
            return Err(Status::unauthenticated(
                "agents must present the controller's join token (STORE/join-token; --join-token-file or HOP3_JOIN_TOKEN)",
            ));
        }
        if self.ctl.mutual_tls {
            let hello = req.get_ref();
            match hop3_wire::tls::peer_name(&req) {
                Some(name) if name == hello.host_id => {}
                Some(name) => {
                    tracing::warn!(claimed = %hello.host_id, certificate = %name, "refused an agent registering as another host");
                    return Err(Status::permission_denied(format!(
                        "this agent's certificate is for host {name:?}, not {:?}",
                        hello.host_id
                    )));
                }
                None => {
                    tracing::warn!(claimed = %hello.host_id, "refused an agent without a certificate");
                    return Err(Status::unauthenticated(
                        "agents must present their host's certificate (hop3-controller certs issue-agent)",
                    ));
                }
            }
        }
        let req = req.into_inner();
        hop3_proto::names::validate_host_id(&req.host_id)
            .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        let hello = crate::registry::Hello {
            host_id: req.host_id,
            address: req.address,
            version: req.version,
            apps: crate::registry::AppsReport::from_wire(
                req.apps,
                req.apps_digest,
                req.apps_included,
            ),
            instance: req.instance,
            apps_stale: req.apps_stale,
        };
        let welcome = self.ctl.registry.register(&hello).await?;
        Ok(Response::new(v1::RegisterResponse {
            heartbeat_seconds: HEARTBEAT.as_secs() as u32,
            call_token: welcome.call_token,
            send_apps: welcome.send_apps,
        }))
    }
}
