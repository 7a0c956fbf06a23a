//! A fake controller for the CLI's tests: a real gRPC `BackupService` on a
//! free port whose answers depend on the app name or backup ID asked for.

use std::net::SocketAddr;
use std::pin::Pin;

use hop3_proto::v1::backup_service_server::{BackupService, BackupServiceServer};
use hop3_proto::v1::{
    AppState, BackupDetails, BackupSummary, CreateBackupEvent, CreateBackupRequest,
    DeleteBackupRequest, DeleteBackupResponse, FileCheck, GetBackupRequest, ListBackupsRequest,
    ListBackupsResponse, Progress, RestoreBackupEvent, RestoreBackupRequest, RestoreResult,
    ServiceInfo, create_backup_event, restore_backup_event,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A backup that verifies.
pub const GOOD_ID: &str = "20251108_143022_a8f3d9";
/// A backup whose `data.tar.gz` does not match and whose `env.json` is gone.
pub const BAD_ID: &str = "20251107_093015_b7e4c8";
/// A well-formed ID the fake does not know.
pub const UNKNOWN_ID: &str = "20240101_000000_000000";

/// The fake, serving until dropped.
pub struct FakeController {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl FakeController {
    /// Starts serving on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(BackupServiceServer::new(Fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            runtime: Some(runtime),
            addr,
        }
    }

    /// The URL to pass with `--controller`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Fake;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn progress(step: &str, done: u64, total: u64) -> Progress {
    Progress {
        step: step.into(),
        bytes_done: done,
        bytes_total: total,
    }
}

fn create_progress(step: &str, done: u64, total: u64) -> Result<CreateBackupEvent, Status> {
    Ok(CreateBackupEvent {
        event: Some(create_backup_event::Event::Progress(progress(
            step, done, total,
        ))),
    })
}

/// The summary of the backup the guide shows.
pub fn summary(id: &str, app: &str) -> BackupSummary {
    BackupSummary {
        backup_id: id.into(),
        app: app.into(),
        host: "host-1".into(),
        status: "COMPLETED".into(),
        created_at: "2025-11-08T14:30:22Z".into(),
        total_size: 16_357_785,
        services: vec!["postgres:my-database".into()],
        location: format!("/var/hop3/backups/apps/{app}/{id}"),
        error: String::new(),
    }
}

fn checksum(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn file(path: &str, actual: &str, valid: bool) -> FileCheck {
    FileCheck {
        path: path.into(),
        expected: checksum('a'),
        actual: actual.into(),
        size: 100,
        valid,
    }
}

#[tonic::async_trait]
impl BackupService for Fake {
    type CreateBackupStream = EventStream<CreateBackupEvent>;
    type RestoreBackupStream = EventStream<RestoreBackupEvent>;

    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Self::CreateBackupStream>, Status> {
        let app = request.into_inner().app;
        let completed = |s: BackupSummary| {
            Ok(CreateBackupEvent {
                event: Some(create_backup_event::Event::Completed(s)),
            })
        };
        let events: Vec<Result<CreateBackupEvent, Status>> = match app.as_str() {
            "ghost" => return Err(Status::not_found("Application not found: ghost")),
            "busy" => {
                return Err(Status::failed_precondition(
                    "Another operation is in progress for app 'busy'",
                ));
            }
            "full" => vec![
                create_progress("source", 10, 100),
                Err(Status::resource_exhausted(
                    "Insufficient disk space: 2.0 GB needed, 1.0 GB free",
                )),
            ],
            "cut" => vec![create_progress("source", 10, 100)],
            "broken" => vec![completed(BackupSummary {
                status: "FAILED".into(),
                error: "pg_dump exited with status 1".into(),
                ..summary(GOOD_ID, "broken")
            })],
            _ => vec![
                create_progress("source", 0, 1000),
                create_progress("source", 500, 1000),
                create_progress("source", 1000, 1000),
                create_progress("services/postgres_my-database", 4096, 0),
                completed(summary(GOOD_ID, &app)),
            ],
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn list_backups(
        &self,
        request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let request = request.into_inner();
        let mut older = summary(BAD_ID, "my-app");
        older.created_at = "2025-11-07T09:30:15.123456+00:00".into();
        older.total_size = 16_148_070;
        older.services.clear();
        let backups = [summary(GOOD_ID, "my-app"), older]
            .into_iter()
            .filter(|b| request.app.is_empty() || b.app == request.app)
            .take(request.limit as usize)
            .collect();
        Ok(Response::new(ListBackupsResponse { backups }))
    }

    async fn get_backup(
        &self,
        request: Request<GetBackupRequest>,
    ) -> Result<Response<BackupDetails>, Status> {
        let id = request.into_inner().backup_id;
        let files = match id.as_str() {
            GOOD_ID => vec![
                file("source.tar.gz", &checksum('a'), true),
                file("data.tar.gz", &checksum('a'), true),
                file("env.json", &checksum('a'), true),
            ],
            BAD_ID => vec![
                file("source.tar.gz", &checksum('a'), true),
                file("data.tar.gz", &checksum('b'), false),
                file("env.json", "", false),
            ],
            _ => return Err(Status::not_found(format!("Backup not found: {id}"))),
        };
        let all_valid = files.iter().all(|f| f.valid);
        Ok(Response::new(BackupDetails {
            summary: Some(summary(&id, "my-app")),
            format_version: "1.0".into(),
            hop3_version: "0.8.0".into(),
            env_vars_count: 12,
            files,
            services: vec![ServiceInfo {
                r#type: "postgres".into(),
                name: "my-database".into(),
                file: "services/postgres_my-database.sql".into(),
                size: 8_598_323,
            }],
            app_state: Some(AppState {
                hostname: "myapp.example.com".into(),
                port: 8000,
                run_state: "RUNNING".into(),
            }),
            all_valid,
            services_included: true,
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<RestoreBackupRequest>,
    ) -> Result<Response<Self::RestoreBackupStream>, Status> {
        let request = request.into_inner();
        if request.backup_id == BAD_ID {
            return Err(Status::failed_precondition(
                "Checksum mismatch: data.tar.gz (expected sha256:aaaa..., found sha256:bbbb...)",
            ));
        }
        if request.backup_id != GOOD_ID {
            return Err(Status::not_found(format!(
                "Backup not found: {}",
                request.backup_id
            )));
        }
        let app = if request.target_app.is_empty() {
            "my-app".to_owned()
        } else {
            request.target_app
        };
        let events = vec![
            Ok(RestoreBackupEvent {
                event: Some(restore_backup_event::Event::Progress(progress(
                    "data", 5, 10,
                ))),
            }),
            Ok(RestoreBackupEvent {
                event: Some(restore_backup_event::Event::Completed(RestoreResult {
                    backup_id: GOOD_ID.into(),
                    app,
                    host: "host-1".into(),
                    app_state: Some(AppState {
                        hostname: "myapp.example.com".into(),
                        port: 8000,
                        run_state: "STOPPED".into(),
                    }),
                })),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn delete_backup(
        &self,
        request: Request<DeleteBackupRequest>,
    ) -> Result<Response<DeleteBackupResponse>, Status> {
        let id = request.into_inner().backup_id;
        if id == GOOD_ID {
            Ok(Response::new(DeleteBackupResponse {}))
        } else {
            Err(Status::not_found(format!("Backup not found: {id}")))
        }
    }
}
