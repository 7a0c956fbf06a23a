//! The one client of the controller: connects (over TLS for `https://`),
//! adds the bearer token to every call, makes the calls, and turns every
//! failure into a [`CliError`] in one place.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hop3_proto::BackupId;
use hop3_proto::v1::backup_service_client::BackupServiceClient;
use hop3_proto::v1::{
    AgentInfo, BackupDetails, BackupSummary, CreateBackupEvent, CreateBackupRequest,
    DeleteBackupRequest, DeleteScheduleRequest, ForgetAgentRequest, GetBackupRequest,
    ImportBackupRequest, ListAgentsRequest, ListBackupsRequest, ListSchedulesRequest,
    PinBackupRequest, PruneBackupsRequest, PruneDecision, RestoreBackupEvent, RestoreBackupRequest,
    ScheduleInfo, SetScheduleRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::config::{Settings, Token};
use crate::error::{CliError, Subject, TlsFailure};

/// How long to wait for the connection before calling the controller
/// unreachable. Calls themselves have no deadline: a backup of a large app
/// takes minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `authorization: Bearer TOKEN` to every call, when there is a token.
/// The value is marked sensitive, so that its `Debug` does not show it.
#[derive(Clone, Default)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl Authorization {
    /// The header for `token`; refused (without quoting it) when it cannot
    /// be sent as a header value.
    pub fn bearer(token: &Token) -> Result<Self, CliError> {
        let invalid = || CliError::InvalidToken {
            origin: token.origin().to_owned(),
        };
        let secret = token.secret();
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut value =
            MetadataValue::try_from(format!("Bearer {secret}")).map_err(|_| invalid())?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to the controller's `BackupService`.
pub struct ControllerClient {
    client: BackupServiceClient<InterceptedService<Channel, Authorization>>,
    url: String,
}

impl ControllerClient {
    /// Connects now rather than at the first call, so that an unreachable
    /// controller is reported as such (exit 7) and not as a failed call.
    ///
    /// An `https://` URL is reached over TLS, trusting `settings.ca_cert`
    /// (no other root: without it the handshake fails, with a hint) and
    /// checking the certificate is for the URL's host. The token is sent
    /// over TLS, or in plain text only to a loopback host, where it never
    /// leaves the machine.
    pub async fn connect(settings: &Settings) -> Result<Self, CliError> {
        if let Some(path) = socket_path(&settings.url) {
            return Self::connect_socket(settings, path).await;
        }
        let url = normalize_url(&settings.url)?;
        let invalid_url = |reason: String| CliError::InvalidControllerUrl {
            url: url.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid_url(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let host = endpoint
            .uri()
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| invalid_url("it names no host".to_owned()))?;
        let tls = endpoint.uri().scheme_str() == Some("https");
        if tls {
            // Named here too, for callers other than main (tests): a workspace
            // build links aws-lc-rs beside ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut config = ClientTlsConfig::new().domain_name(host.clone());
            if let Some(path) = &settings.ca_cert {
                config = config.ca_certificate(read_ca_cert(path)?);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| match &settings.ca_cert {
                    Some(path) => CliError::CaCert {
                        path: path.clone(),
                        reason: describe(&e),
                    },
                    None => invalid_url(describe(&e)),
                })?;
        }
        let authorization = match &settings.token {
            Some(token) => {
                let header = Authorization::bearer(token)?;
                if tls || is_loopback(&host) {
                    header
                } else {
                    Authorization::default()
                }
            }
            None => Authorization::default(),
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(&e, &url, settings.ca_cert.is_some()))?;
        let client = BackupServiceClient::with_interceptor(channel, authorization)
            .max_decoding_message_size(hop3_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(hop3_proto::MAX_MESSAGE_SIZE);
        Ok(Self { client, url })
    }

    /// Connects to the controller's Unix socket at `path`, where the kernel
    /// tells it who calls (a token is sent too, when there is one: the
    /// socket never leaves the machine).
    async fn connect_socket(settings: &Settings, path: PathBuf) -> Result<Self, CliError> {
        let url = format!("unix:{}", path.display());
        let authorization = match &settings.token {
            Some(token) => Authorization::bearer(token)?,
            None => Authorization::default(),
        };
        let to = path.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let to = to.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(to).await?,
                ))
            }
        });
        let channel = Endpoint::from_static("http://controller.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|e| socket_error(&e, &path, &url))?;
        let client = BackupServiceClient::with_interceptor(channel, authorization)
            .max_decoding_message_size(hop3_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(hop3_proto::MAX_MESSAGE_SIZE);
        Ok(Self { client, url })
    }

    /// Maps a status received from this controller.
    pub fn error(&self, status: tonic::Status, subject: Subject) -> CliError {
        CliError::from_status(status, subject, &self.url)
    }

    /// `CreateBackup` of `host`'s copy of `app` (the controller picks the
    /// host when `None`): the stream of progress events ending with the summary.
    pub async fn create_backup(
        &mut self,
        app: &str,
        options: &crate::args::CreateOptions,
    ) -> Result<Streaming<CreateBackupEvent>, CliError> {
        let request = CreateBackupRequest {
            app: app.to_owned(),
            no_services: options.no_services,
            host: options.host.clone().unwrap_or_default(),
            format: options.format.clone().unwrap_or_default(),
            cancel_on_disconnect: options.cancel_on_interrupt,
        };
        match self.client.create_backup(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `ListBackups`, newest first.
    pub async fn list_backups(
        &mut self,
        app: Option<&str>,
        limit: u32,
        status: Option<&str>,
    ) -> Result<Vec<BackupSummary>, CliError> {
        let request = ListBackupsRequest {
            app: app.unwrap_or_default().to_owned(),
            limit,
            status: status.unwrap_or_default().to_owned(),
        };
        match self.client.list_backups(request).await {
            Ok(response) => Ok(response.into_inner().backups),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `GetBackup`: details with every checksum verified again, or with
    /// `summary_only` just the catalog's summary (no file is read).
    pub async fn get_backup(
        &mut self,
        id: &BackupId,
        summary_only: bool,
    ) -> Result<BackupDetails, CliError> {
        let request = GetBackupRequest {
            backup_id: id.to_string(),
            summary_only,
        };
        match self.client.get_backup(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::Backup)),
        }
    }

    /// `RestoreBackup` (into the backup's own app and host unless told
    /// otherwise): the stream of progress events ending with the result.
    pub async fn restore_backup(
        &mut self,
        id: &BackupId,
        target: &crate::args::RestoreTarget,
    ) -> Result<Streaming<RestoreBackupEvent>, CliError> {
        let request = RestoreBackupRequest {
            backup_id: id.to_string(),
            target_app: target.app.clone().unwrap_or_default(),
            target_host: target.host.clone().unwrap_or_default(),
            replace: target.replace,
            trust_imported: target.trust_imported,
            no_start: target.no_start,
            hostname: target.hostname.clone().unwrap_or_default(),
            cancel_on_disconnect: target.cancel_on_interrupt,
        };
        match self.client.restore_backup(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::Backup)),
        }
    }

    /// `DeleteBackup`.
    pub async fn delete_backup(&mut self, id: &BackupId) -> Result<(), CliError> {
        let request = DeleteBackupRequest {
            backup_id: id.to_string(),
        };
        match self.client.delete_backup(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status, Subject::Backup)),
        }
    }

    /// `PruneBackups`: every decision, in the controller's order (app by
    /// app, newest first), once the prune has ended.
    pub async fn prune_backups(
        &mut self,
        request: PruneBackupsRequest,
    ) -> Result<Vec<PruneDecision>, CliError> {
        let mut stream = match self.client.prune_backups(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.error(status, Subject::App)),
        };
        let mut decisions = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(d)) => decisions.push(d),
                Ok(None) => return Ok(decisions),
                Err(status) => return Err(self.error(status, Subject::App)),
            }
        }
    }

    /// `SetSchedule`: sets (or replaces) a schedule; answers with its next runs.
    pub async fn set_schedule(
        &mut self,
        schedule: hop3_proto::v1::Schedule,
    ) -> Result<ScheduleInfo, CliError> {
        let request = SetScheduleRequest {
            schedule: Some(schedule),
        };
        match self.client.set_schedule(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `ListSchedules`, of `app` or of every app.
    pub async fn list_schedules(
        &mut self,
        app: Option<&str>,
    ) -> Result<Vec<ScheduleInfo>, CliError> {
        let request = ListSchedulesRequest {
            app: app.unwrap_or_default().to_owned(),
        };
        match self.client.list_schedules(request).await {
            Ok(response) => Ok(response.into_inner().schedules),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `DeleteSchedule`: removes schedule `name` of `app`.
    pub async fn delete_schedule(&mut self, app: &str, name: &str) -> Result<(), CliError> {
        let request = DeleteScheduleRequest {
            app: app.to_owned(),
            name: name.to_owned(),
        };
        match self.client.delete_schedule(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `PinBackup`: pins or unpins backup `id`.
    pub async fn pin_backup(
        &mut self,
        id: &BackupId,
        pinned: bool,
    ) -> Result<BackupSummary, CliError> {
        let request = PinBackupRequest {
            backup_id: id.to_string(),
            pinned,
        };
        match self.client.pin_backup(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::Backup)),
        }
    }

    /// `ImportBackup` of the directory at `path` on the controller's machine.
    pub async fn import_backup(&mut self, path: &str) -> Result<BackupSummary, CliError> {
        let request = ImportBackupRequest {
            path: path.to_owned(),
        };
        match self.client.import_backup(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(status, Subject::Directory)),
        }
    }

    /// `ListAgents`: every agent the controller knows, online or not.
    pub async fn list_agents(&mut self) -> Result<Vec<AgentInfo>, CliError> {
        match self.client.list_agents(ListAgentsRequest {}).await {
            Ok(response) => Ok(response.into_inner().agents),
            Err(status) => Err(self.error(status, Subject::Fleet)),
        }
    }

    /// `ForgetAgent`: drops an offline agent from the controller's registry.
    pub async fn forget_agent(&mut self, host: &str) -> Result<(), CliError> {
        let request = ForgetAgentRequest {
            host: host.to_owned(),
        };
        match self.client.forget_agent(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.error(status, Subject::Host)),
        }
    }
}

/// Accepts `host:port` as a shorthand for `http://host:port`; refuses any
/// scheme but `http` and `https`.
/// The socket of a `unix:PATH` (or `unix://PATH`) controller URL.
fn socket_path(url: &str) -> Option<PathBuf> {
    let rest = url.trim().strip_prefix("unix:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    Some(PathBuf::from(path))
}

/// Why the socket at `path` cannot be used: a refusal by its permissions is
/// the caller's lack of rights (exit 6), anything else an unreachable
/// controller.
fn socket_error(err: &tonic::transport::Error, path: &Path, url: &str) -> CliError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return CliError::SocketDenied {
                path: path.to_owned(),
            };
        }
        source = e.source();
    }
    CliError::Unreachable {
        url: url.to_owned(),
    }
}

fn normalize_url(url: &str) -> Result<String, CliError> {
    let url = url.trim();
    match url.split_once("://") {
        None => Ok(format!("http://{url}")),
        Some(("http" | "https", _)) => Ok(url.to_owned()),
        Some((scheme, _)) => Err(CliError::InvalidControllerUrl {
            url: url.to_owned(),
            reason: format!("unsupported scheme {scheme:?}: use http://, https:// or unix:/PATH"),
        }),
    }
}

/// `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The CA certificate(s) in the PEM file at `path`.
fn read_ca_cert(path: &Path) -> Result<Certificate, CliError> {
    let err = |reason: String| CliError::CaCert {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let marker: &[u8] = b"-----BEGIN CERTIFICATE-----";
    if !pem.windows(marker.len()).any(|w| w == marker) {
        return Err(err(
            "it holds no PEM certificate (expected the ca.pem written by \
             hop3-controller certs init)"
                .to_owned(),
        ));
    }
    Ok(Certificate::from_pem(pem))
}

/// An error and its sources, as one line.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = e.source();
    }
    text
}

/// The rustls error somewhere in `err`'s sources, if any (tokio-rustls
/// wraps it in an `io::Error`).
fn find_tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// A failed connection: a failed TLS handshake is told apart from a
/// controller that cannot be reached at all.
fn connect_error(err: &tonic::transport::Error, url: &str, ca_cert: bool) -> CliError {
    let Some(tls) = find_tls_error(err) else {
        return CliError::Unreachable {
            url: url.to_owned(),
        };
    };
    use rustls::{CertificateError as C, Error as E, InvalidMessage};
    let kind = match tls {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => TlsFailure::UnknownIssuer,
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            TlsFailure::WrongName
        }
        E::InvalidMessage(InvalidMessage::InvalidContentType) => TlsFailure::NotTls,
        _ => TlsFailure::Other,
    };
    CliError::Tls {
        url: url.to_owned(),
        detail: tls.to_string(),
        kind,
        ca_cert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hop3_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn settings(url: &str) -> Settings {
        Settings {
            url: url.to_owned(),
            ca_cert: None,
            token: None,
        }
    }

    #[test]
    fn urls_without_a_scheme_get_http() {
        assert_eq!(
            normalize_url("127.0.0.1:7410").unwrap(),
            "http://127.0.0.1:7410"
        );
        assert_eq!(normalize_url("http://c:1").unwrap(), "http://c:1");
        assert_eq!(normalize_url("https://c:1").unwrap(), "https://c:1");
        let err = normalize_url("ftp://c:1").unwrap_err();
        assert!(
            err.to_string()
                .contains("use http://, https:// or unix:/PATH"),
            "{err}"
        );
        assert_eq!(
            socket_path("unix:/run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            socket_path("unix:///run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(socket_path("http://c:1"), None);
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.5", "controller.example.com", "::2", "0.0.0.0"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let err = ControllerClient::connect(&settings("http://127.0.0.1:1"))
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
        let err = ControllerClient::connect(&settings("https://127.0.0.1:1"))
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_missing_or_empty_ca_cert_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let mut s = settings("https://127.0.0.1:1");
            s.ca_cert = Some(path.clone());
            let err = ControllerClient::connect(&s).await.err().expect("refused");
            assert!(matches!(err, CliError::CaCert { .. }), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn the_header_is_a_sensitive_bearer_value() {
        let token = Token::new(SECRET, "HOP3_TOKEN").unwrap();
        let mut auth = Authorization::bearer(&token).unwrap();
        let request = auth.call(Request::new(())).unwrap();
        let value = request.metadata().get("authorization").unwrap();
        assert_eq!(value.to_str().unwrap(), format!("Bearer {SECRET}"));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains(SECRET));
        assert!(!format!("{:?}", request.metadata()).contains(SECRET));

        let mut none = Authorization::default();
        let request = none.call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn an_unsendable_token_is_refused_without_quoting_it() {
        for bad in ["hop3_abc def", "hop3_é", "hop3_\u{7f}x"] {
            let token = Token::new(bad, "HOP3_TOKEN").unwrap();
            let err = Authorization::bearer(&token).err().expect("refused");
            assert!(matches!(err, CliError::InvalidToken { .. }), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            let message = err.to_string();
            assert!(message.contains("HOP3_TOKEN"), "{message}");
            assert!(!message.contains(bad), "{message}");
            assert!(!format!("{err:?}").contains(bad));
        }
    }
}
