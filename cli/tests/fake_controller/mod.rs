//! A fake controller for the CLI's tests: a real gRPC `BackupService` on a
//! free port whose answers depend on the app name, backup ID or directory
//! asked for. It records the requests that carry more than a name, so tests
//! can check what the CLI sent. It can require a bearer token and serve TLS,
//! as the real controller does in secure mode.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hop3_proto::v1::backup_service_server::{BackupService, BackupServiceServer};
use hop3_proto::v1::{
    AgentInfo, AppState, BackupDetails, BackupSummary, CreateBackupEvent, CreateBackupRequest,
    DeleteBackupRequest, DeleteBackupResponse, FileCheck, ForgetAgentRequest, ForgetAgentResponse,
    GetBackupRequest, ImportBackupRequest, ListAgentsRequest, ListAgentsResponse,
    ListBackupsRequest, ListBackupsResponse, Progress, RestoreBackupEvent, RestoreBackupRequest,
    RestoreResult, ServiceInfo, create_backup_event, restore_backup_event,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// A backup that verifies.
pub const GOOD_ID: &str = "20251108_143022_a8f3d9";
/// A backup whose `data.tar.gz` does not match and whose `env.json` is gone.
pub const BAD_ID: &str = "20251107_093015_b7e4c8";
/// A well-formed ID the fake does not know.
pub const UNKNOWN_ID: &str = "20240101_000000_000000";

/// The requests the fake received, in order.
#[derive(Debug, Default)]
pub struct Received {
    pub creates: Vec<CreateBackupRequest>,
    pub restores: Vec<RestoreBackupRequest>,
    pub imports: Vec<ImportBackupRequest>,
    pub forgets: Vec<ForgetAgentRequest>,
}

/// The fake, serving until dropped.
pub struct FakeController {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    https: bool,
    received: Arc<Mutex<Received>>,
}

/// The agents [`FakeController::start`] knows: one online serving two
/// apps, one offline serving none.
pub fn agents() -> Vec<AgentInfo> {
    vec![
        AgentInfo {
            host: "web-1".into(),
            address: "http://10.0.0.5:7411".into(),
            version: "0.1.0".into(),
            online: true,
            last_seen: "2025-11-08T14:30:22Z".into(),
            apps: vec!["blog".into(), "my-app".into()],
            degraded: false,
        },
        AgentInfo {
            host: "db-server-2".into(),
            address: "http://10.0.0.17:7411".into(),
            version: "0.0.9".into(),
            online: false,
            last_seen: "2025-11-07T10:30:15.123456+01:00".into(),
            apps: Vec::new(),
            degraded: false,
        },
    ]
}

/// The message the real controller answers a call without a valid token with.
pub const NOT_AUTHORIZED: &str =
    "not authorized: set HOP3_TOKEN to a valid token (hop3-controller tokens create NAME)";

/// How the fake serves.
pub struct Options {
    /// The agents it knows.
    pub agents: Vec<AgentInfo>,
    /// When set, every call must carry `authorization: Bearer TOKEN`, or
    /// gets UNAUTHENTICATED as from the real controller in secure mode.
    pub token: Option<String>,
    /// When set, it serves TLS with this certificate, and its URL is https://.
    pub tls: Option<ServerCert>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            agents: agents(),
            token: None,
            tls: None,
        }
    }
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throw-away certificate authority, as `hop3-controller certs init` makes.
pub struct TestCa {
    /// The CA certificate, to pass with `--ca-cert`.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate valid for `names` (IP addresses or DNS names).
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "hop3-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl FakeController {
    /// Starts serving on a free port of 127.0.0.1, knowing [`agents`].
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts serving on a free port of 127.0.0.1, knowing `agents`.
    pub fn start_with_agents(agents: Vec<AgentInfo>) -> Self {
        Self::start_with(Options {
            agents,
            ..Options::default()
        })
    }

    /// Starts serving on a free port of 127.0.0.1 as `options` say.
    pub fn start_with(options: Options) -> Self {
        let Options { agents, token, tls } = options;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let fake = Fake {
            agents,
            received: Arc::clone(&received),
        };
        let expected = token.map(|t| format!("Bearer {t}"));
        let check = move |request: Request<()>| -> Result<Request<()>, Status> {
            let Some(expected) = &expected else {
                return Ok(request);
            };
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if given == Some(expected.as_str()) {
                Ok(request)
            } else {
                Err(Status::unauthenticated(NOT_AUTHORIZED))
            }
        };
        let mut server = tonic::transport::Server::builder();
        let https = tls.is_some();
        if let Some(cert) = tls {
            // A workspace build links two rustls providers: name one.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let identity = Identity::from_pem(cert.cert_pem, cert.key_pem);
            server = server
                .tls_config(ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        runtime.spawn(
            server
                .add_service(BackupServiceServer::with_interceptor(fake, check))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            runtime: Some(runtime),
            addr,
            https,
            received,
        }
    }

    /// The URL to pass with `--controller`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Runs `check` on the requests received so far.
    pub fn received<T>(&self, check: impl FnOnce(&Received) -> T) -> T {
        check(&self.received.lock().unwrap())
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Fake {
    agents: Vec<AgentInfo>,
    received: Arc<Mutex<Received>>,
}

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
        skipped: Vec::new(),
        pinned: false,
        locations: Vec::new(),
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
    type PruneBackupsStream = EventStream<hop3_proto::v1::PruneDecision>;

    async fn prune_backups(
        &self,
        _request: Request<hop3_proto::v1::PruneBackupsRequest>,
    ) -> Result<Response<Self::PruneBackupsStream>, Status> {
        // backup:prune is tested end to end, against a real controller.
        Err(Status::unimplemented("not faked"))
    }

    async fn set_schedule(
        &self,
        _request: Request<hop3_proto::v1::SetScheduleRequest>,
    ) -> Result<Response<hop3_proto::v1::ScheduleInfo>, Status> {
        // Schedules are tested end to end, against a real controller.
        Err(Status::unimplemented("not faked"))
    }

    async fn list_schedules(
        &self,
        _request: Request<hop3_proto::v1::ListSchedulesRequest>,
    ) -> Result<Response<hop3_proto::v1::ListSchedulesResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn delete_schedule(
        &self,
        _request: Request<hop3_proto::v1::DeleteScheduleRequest>,
    ) -> Result<Response<hop3_proto::v1::DeleteScheduleResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn pin_backup(
        &self,
        request: Request<hop3_proto::v1::PinBackupRequest>,
    ) -> Result<Response<BackupSummary>, Status> {
        let request = request.into_inner();
        Ok(Response::new(BackupSummary {
            pinned: request.pinned,
            ..summary(&request.backup_id, "my-app")
        }))
    }

    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Self::CreateBackupStream>, Status> {
        let request = request.into_inner();
        self.received.lock().unwrap().creates.push(request.clone());
        let app = request.app;
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
            trusted: true,
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<RestoreBackupRequest>,
    ) -> Result<Response<Self::RestoreBackupStream>, Status> {
        let request = request.into_inner();
        self.received.lock().unwrap().restores.push(request.clone());
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
        let host = if request.target_host.is_empty() {
            "host-1".to_owned()
        } else {
            request.target_host
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
                    host,
                    app_state: Some(AppState {
                        hostname: "myapp.example.com".into(),
                        port: 8000,
                        run_state: "STOPPED".into(),
                    }),
                    notes: Vec::new(),
                    start: "restarted".into(),
                    source: String::new(),
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

    /// Refuses a relative path as the controller would; otherwise the last
    /// component decides: `missing`, `dup`, or an import of [`GOOD_ID`].
    async fn import_backup(
        &self,
        request: Request<ImportBackupRequest>,
    ) -> Result<Response<BackupSummary>, Status> {
        let request = request.into_inner();
        self.received.lock().unwrap().imports.push(request.clone());
        let path = std::path::Path::new(&request.path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "The backup directory must be an absolute path: {}",
                request.path
            )));
        }
        match path.file_name().and_then(|n| n.to_str()) {
            Some("missing") => Err(Status::not_found(format!(
                "Backup directory not found: {}",
                request.path
            ))),
            Some("dup") => Err(Status::already_exists(format!(
                "Backup {GOOD_ID} already exists"
            ))),
            _ => Ok(Response::new(summary(GOOD_ID, "my-app"))),
        }
    }

    async fn list_agents(
        &self,
        _request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Ok(Response::new(ListAgentsResponse {
            agents: self.agents.clone(),
        }))
    }

    /// As the real controller: an online agent is refused, an offline one
    /// forgotten, an unknown one not found.
    async fn forget_agent(
        &self,
        request: Request<ForgetAgentRequest>,
    ) -> Result<Response<ForgetAgentResponse>, Status> {
        let request = request.into_inner();
        self.received.lock().unwrap().forgets.push(request.clone());
        let host = request.host;
        match self.agents.iter().find(|a| a.host == host) {
            None => Err(Status::not_found(format!(
                "Host not found: {host} (the controller knows no agent of that host)"
            ))),
            Some(a) if a.online => Err(Status::failed_precondition(format!(
                "host {host} is online (its agent called in 3s ago): stop its agent first, \
                 or its next heartbeat registers it again"
            ))),
            Some(_) => Ok(Response::new(ForgetAgentResponse {})),
        }
    }
}
