//! What every handler and job of the controller shares.

use crate::auth::Auth;
use crate::catalog::{BackupRow, Catalog};
use crate::error::{ControllerError, Result};
use crate::locks::{AppLock, AppLocks, BackupLock, BackupLocks, BackupUse};
use crate::registry::Registry;
use crate::store::Store;
use hop3_proto::BackupId;
use hop3_proto::v1;

/// The controller's state.
pub struct Controller {
    pub catalog: Catalog,
    pub store: Store,
    pub registry: Registry,
    pub locks: AppLocks,
    /// Backups in use: read by restores and verifications, written, deleted.
    pub backup_locks: BackupLocks,
    /// Who may call the CLI's API.
    pub auth: Auth,
    /// Longest silence accepted from an agent in the middle of a backup.
    pub idle_timeout: std::time::Duration,
    /// Whether agents must prove their host with a certificate.
    pub mutual_tls: bool,
    /// Without TLS: what standalone agents must present to register.
    pub join_token: Option<hop3_wire::join_token::JoinToken>,
    /// Where `backup:import` may read from.
    pub import_dir: std::path::PathBuf,
    /// How schedules run.
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// Where alerts and pings go.
    pub alerts: crate::alerts::Alerter,
    /// The stores every backup is copied to (`--copy-to`).
    pub copies: crate::copies::Copies,
    /// The keys backups are sealed to and opened with.
    pub keys: crate::keys::Keys,
}

impl Controller {
    /// The catalog row of backup `id`: InvalidArgument for a malformed ID,
    /// BackupNotFound for one the catalog does not hold.
    pub async fn backup_row(&self, id: &str) -> Result<BackupRow> {
        let id: BackupId = id
            .parse()
            .map_err(|e: hop3_proto::backup_id::InvalidBackupId| {
                ControllerError::InvalidArgument(e.to_string())
            })?;
        self.catalog
            .get(id.as_str())
            .await?
            .ok_or_else(|| ControllerError::BackupNotFound(id.to_string()))
    }

    /// Takes the lock of `app` on `host` for `what` ("a backup", "a
    /// restore"), or says what holds it.
    pub fn lock_app(&self, host: &str, app: &str, what: &'static str) -> Result<AppLock> {
        self.locks
            .try_lock(host, app, what)
            .map_err(|holder| ControllerError::busy(app, holder))
    }

    /// Takes backup `id` for `used_for`, or says what it is busy with.
    pub fn use_backup(&self, id: &str, used_for: BackupUse) -> Result<BackupLock> {
        self.backup_locks
            .try_lock(id, used_for)
            .map_err(|busy| ControllerError::BackupBusy {
                id: id.to_owned(),
                doing: busy.doing(),
            })
    }

    /// A catalog row as the CLI sees it.
    pub fn summary(&self, row: &BackupRow) -> v1::BackupSummary {
        v1::BackupSummary {
            backup_id: row.backup_id.to_string(),
            app: row.app.clone(),
            host: row.host.clone(),
            status: row.status.as_str().into(),
            created_at: hop3_proto::Manifest::format_time(row.created_at),
            total_size: row.total_size,
            services: row.services.clone(),
            location: self.store.location(&row.app, &row.backup_id),
            error: row.error.clone().unwrap_or_default(),
            skipped: Vec::new(),
            pinned: row.pinned,
            // Filled by the callers that show them (list, info): they cost
            // a catalog query.
            locations: Vec::new(),
        }
    }
}
