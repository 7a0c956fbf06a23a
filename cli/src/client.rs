//! The one client of the controller: connects, makes the calls, and turns
//! every failure into a [`CliError`] in one place.

use std::time::Duration;

use hop3_proto::BackupId;
use hop3_proto::v1::backup_service_client::BackupServiceClient;
use hop3_proto::v1::{
    AgentInfo, BackupDetails, BackupSummary, CreateBackupEvent, CreateBackupRequest,
    DeleteBackupRequest, GetBackupRequest, ImportBackupRequest, ListAgentsRequest,
    ListBackupsRequest, RestoreBackupEvent, RestoreBackupRequest,
};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CliError, Subject};

/// How long to wait for the connection before calling the controller
/// unreachable. Calls themselves have no deadline: a backup of a large app
/// takes minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the controller's `BackupService`.
pub struct Controller {
    client: BackupServiceClient<Channel>,
    url: String,
}

impl Controller {
    /// Connects now rather than at the first call, so that an unreachable
    /// controller is reported as such (exit 7) and not as a failed call.
    pub async fn connect(url: &str) -> Result<Self, CliError> {
        let url = normalize_url(url)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| CliError::InvalidControllerUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|_| CliError::Unreachable { url: url.clone() })?;
        let client = BackupServiceClient::new(channel)
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
        no_services: bool,
        host: Option<&str>,
    ) -> Result<Streaming<CreateBackupEvent>, CliError> {
        let request = CreateBackupRequest {
            app: app.to_owned(),
            no_services,
            host: host.unwrap_or_default().to_owned(),
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
    ) -> Result<Vec<BackupSummary>, CliError> {
        let request = ListBackupsRequest {
            app: app.unwrap_or_default().to_owned(),
            limit,
        };
        match self.client.list_backups(request).await {
            Ok(response) => Ok(response.into_inner().backups),
            Err(status) => Err(self.error(status, Subject::App)),
        }
    }

    /// `GetBackup`: details with every checksum verified again.
    pub async fn get_backup(&mut self, id: &BackupId) -> Result<BackupDetails, CliError> {
        let request = GetBackupRequest {
            backup_id: id.to_string(),
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
        target_app: Option<&str>,
        target_host: Option<&str>,
    ) -> Result<Streaming<RestoreBackupEvent>, CliError> {
        let request = RestoreBackupRequest {
            backup_id: id.to_string(),
            target_app: target_app.unwrap_or_default().to_owned(),
            target_host: target_host.unwrap_or_default().to_owned(),
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
}

/// Accepts `host:port` as a shorthand for `http://host:port`, and refuses
/// `https://` up front: this build has no TLS, and a connection attempt
/// would only fail with a misleading "cannot reach".
fn normalize_url(url: &str) -> Result<String, CliError> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Err(CliError::InvalidControllerUrl {
            url: url.to_owned(),
            reason: "TLS (https) is not supported by this build of hop3; use http://".to_owned(),
        });
    }
    if url.contains("://") {
        Ok(url.to_owned())
    } else {
        Ok(format!("http://{url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_scheme_get_http() {
        assert_eq!(
            normalize_url("127.0.0.1:7410").unwrap(),
            "http://127.0.0.1:7410"
        );
        assert_eq!(normalize_url("http://c:1").unwrap(), "http://c:1");
        assert!(normalize_url("https://c:1").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let err = Controller::connect("http://127.0.0.1:1")
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
    }
}
