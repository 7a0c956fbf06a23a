//! The `--json` documents. These are the CLI's own presentation types, kept
//! apart from the wire types so that the field names scripts rely on do not
//! move when the proto changes.

use hop3_proto::v1::{
    AgentInfo, AppState, BackupDetails, BackupLocation, BackupSummary, FileCheck, RestoreResult,
    ServiceInfo, SkippedEntry,
};
use serde::Serialize;

/// `None` for an empty string: an absent value is `null` in every document,
/// never `""`.
fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A backup: the same object in every document that shows one
/// (`backup:create`, each `backup:list` entry, `backup:import`, the `newest`
/// of `backup:check-age`, and the first keys of `backup:info`).
#[derive(Debug, Serialize)]
pub struct BackupView {
    pub backup_id: String,
    pub app: String,
    /// Null for a backup that names no host (Hop3's Python server's).
    pub host: Option<String>,
    pub status: String,
    pub created_at: String,
    pub total_size: u64,
    /// `type:name` of each database dump the backup holds.
    pub services: Vec<String>,
    pub location: String,
    /// Why a FAILED backup failed; null otherwise.
    pub error: Option<String>,
    /// Entries the backup could not hold (sockets, device nodes), and why;
    /// null in listings, which do not read the backups' manifests.
    pub skipped: Option<Vec<SkippedView>>,
    /// No retention policy and no delete removes it (`backup:pin`).
    pub pinned: bool,
    /// Where the backup is: the primary store, then each copy store; null
    /// where the controller did not say (create, import).
    pub locations: Option<Vec<LocationView>>,
}

/// One place a backup is kept.
#[derive(Debug, Serialize)]
pub struct LocationView {
    pub url: String,
    /// `ok`, `pending` or `failed` (a copy whose last attempt failed, tried
    /// again later); the primary of a backup being deleted: `deleting`.
    pub state: String,
    /// Why the last attempt failed; null otherwise.
    pub reason: Option<String>,
    pub primary: bool,
    /// Copy attempts made (0 for the primary).
    pub attempts: u32,
    /// When a copy's state last changed; null for the primary.
    pub updated_at: Option<String>,
}

impl From<BackupLocation> for LocationView {
    fn from(l: BackupLocation) -> Self {
        Self {
            url: l.url,
            state: l.state,
            reason: present(l.reason),
            primary: l.primary,
            attempts: l.attempts,
            updated_at: present(l.updated_at),
        }
    }
}

/// An entry left out of a backup.
#[derive(Debug, Serialize)]
pub struct SkippedView {
    pub path: String,
    pub reason: String,
}

impl From<SkippedEntry> for SkippedView {
    fn from(s: SkippedEntry) -> Self {
        Self {
            path: s.path,
            reason: s.reason,
        }
    }
}

impl BackupView {
    /// A backup as a listing shows it, from the catalog alone.
    pub fn listed(s: BackupSummary) -> Self {
        Self {
            skipped: None,
            ..Self::from(s)
        }
    }
}

impl From<BackupSummary> for BackupView {
    /// A backup whose manifest was read (create, import, info).
    fn from(s: BackupSummary) -> Self {
        Self {
            backup_id: s.backup_id,
            app: s.app,
            host: present(s.host),
            status: s.status,
            created_at: s.created_at,
            total_size: s.total_size,
            services: s.services,
            location: s.location,
            error: present(s.error),
            skipped: Some(s.skipped.into_iter().map(SkippedView::from).collect()),
            pinned: s.pinned,
            locations: (!s.locations.is_empty())
                .then(|| s.locations.into_iter().map(LocationView::from).collect()),
        }
    }
}

/// `backup:info`: the backup object, then what reading its files found.
#[derive(Debug, Serialize)]
pub struct DetailsView {
    #[serde(flatten)]
    pub backup: BackupView,
    pub format_version: String,
    pub hop3_version: String,
    pub env_vars_count: u32,
    pub services_included: bool,
    /// The database dumps, with their files and sizes.
    pub service_dumps: Vec<ServiceView>,
    pub files: Vec<FileView>,
    pub app_state: AppStateView,
    pub all_valid: bool,
    /// Sealed by this controller (false: imported by hand).
    pub trusted: bool,
}

impl From<BackupDetails> for DetailsView {
    fn from(d: BackupDetails) -> Self {
        Self {
            backup: d.summary.unwrap_or_default().into(),
            format_version: d.format_version,
            hop3_version: d.hop3_version,
            env_vars_count: d.env_vars_count,
            services_included: d.services_included,
            service_dumps: d.services.into_iter().map(ServiceView::from).collect(),
            files: d.files.into_iter().map(FileView::from).collect(),
            app_state: d.app_state.unwrap_or_default().into(),
            all_valid: d.all_valid,
            trusted: d.trusted,
        }
    }
}

/// One verified file of a backup.
#[derive(Debug, Serialize)]
pub struct FileView {
    pub path: String,
    pub expected: String,
    /// Null when the file is missing.
    pub actual: Option<String>,
    pub size: u64,
    pub valid: bool,
}

impl From<FileCheck> for FileView {
    fn from(f: FileCheck) -> Self {
        Self {
            path: f.path,
            expected: f.expected,
            actual: present(f.actual),
            size: f.size,
            valid: f.valid,
        }
    }
}

/// One service dump in a backup.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub file: String,
    pub size: u64,
}

impl From<ServiceInfo> for ServiceView {
    fn from(s: ServiceInfo) -> Self {
        Self {
            kind: s.r#type,
            name: s.name,
            file: s.file,
            size: s.size,
        }
    }
}

/// Hostname, port and run state of an app.
#[derive(Debug, Serialize)]
pub struct AppStateView {
    pub hostname: Option<String>,
    pub port: Option<u32>,
    pub run_state: Option<String>,
}

impl From<AppState> for AppStateView {
    fn from(a: AppState) -> Self {
        Self {
            hostname: present(a.hostname),
            port: (a.port != 0).then_some(a.port),
            run_state: present(a.run_state),
        }
    }
}

/// `backup:restore`.
#[derive(Debug, Serialize)]
pub struct RestoreView {
    pub backup_id: String,
    pub app: String,
    pub host: Option<String>,
    /// The app's hostname, port and run state; null where it has none.
    pub hostname: Option<String>,
    pub port: Option<u32>,
    pub run_state: Option<String>,
    /// What the restore did that its user should know.
    pub notes: Vec<String>,
    /// What became of the app's process: `restarted`, `stopped`, `new` or
    /// `unmanaged` (see `backup:restore --help`).
    pub start: String,
    /// Where the backup was read from: the primary store, or a copy.
    pub source: Option<String>,
}

impl From<RestoreResult> for RestoreView {
    fn from(r: RestoreResult) -> Self {
        let state = r.app_state.unwrap_or_default();
        Self {
            backup_id: r.backup_id,
            app: r.app,
            host: present(r.host),
            hostname: present(state.hostname),
            port: (state.port != 0).then_some(state.port),
            run_state: present(state.run_state),
            notes: r.notes,
            start: r.start,
            source: present(r.source),
        }
    }
}

/// One agent: `agent:list` prints an array of them.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub host: String,
    pub address: String,
    pub version: String,
    /// `online`, `degraded` (online, but not answering in time) or `offline`.
    pub status: &'static str,
    /// RFC 3339, as the controller gives it.
    pub last_seen: String,
    pub apps: Vec<String>,
}

impl From<AgentInfo> for AgentView {
    fn from(a: AgentInfo) -> Self {
        Self {
            status: agent_status(&a),
            host: a.host,
            address: a.address,
            version: a.version,
            last_seen: a.last_seen,
            apps: a.apps,
        }
    }
}

/// An agent's status as `agent:list` shows it, in both outputs.
pub fn agent_status(a: &AgentInfo) -> &'static str {
    match (a.online, a.degraded) {
        (false, _) => "offline",
        (true, true) => "degraded",
        (true, false) => "online",
    }
}

/// `backup:delete`.
#[derive(Debug, Serialize)]
pub struct DeletedView {
    pub deleted: String,
}

/// `agent:forget`.
#[derive(Debug, Serialize)]
pub struct ForgottenView {
    pub forgotten: String,
}

/// The error document printed on stderr with `--json`.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub error: ErrorBody,
}

/// The body of [`ErrorView`].
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_names_are_the_documented_ones() {
        let summary = BackupSummary {
            backup_id: "20251108_143022_a8f3d9".into(),
            app: "my-app".into(),
            host: "h1".into(),
            status: "COMPLETED".into(),
            created_at: "2025-11-08T14:30:22Z".into(),
            total_size: 10,
            services: vec!["postgres:db".into()],
            location: "/store".into(),
            error: String::new(),
            skipped: Vec::new(),
            pinned: true,
            locations: vec![
                BackupLocation {
                    url: "/store".into(),
                    state: "ok".into(),
                    primary: true,
                    ..Default::default()
                },
                BackupLocation {
                    url: "s3://offsite/apps/my-app/20251108_143022_a8f3d9".into(),
                    state: "failed".into(),
                    reason: "connection refused".into(),
                    attempts: 2,
                    updated_at: "2025-11-08T14:31:00Z".into(),
                    primary: false,
                },
            ],
        };
        let details = BackupDetails {
            summary: Some(summary.clone()),
            format_version: "1.0".into(),
            hop3_version: "0.8.0".into(),
            env_vars_count: 2,
            files: vec![FileCheck {
                path: "env.json".into(),
                expected: "sha256:aa".into(),
                actual: "sha256:aa".into(),
                size: 10,
                valid: true,
            }],
            services: vec![ServiceInfo {
                r#type: "postgres".into(),
                name: "db".into(),
                file: "services/postgres_db.sql".into(),
                size: 3,
            }],
            app_state: Some(AppState {
                hostname: "h".into(),
                port: 8000,
                run_state: "RUNNING".into(),
            }),
            all_valid: true,
            services_included: true,
            trusted: false,
        };
        let value = serde_json::to_value(DetailsView::from(details)).unwrap();
        assert_eq!(
            value,
            json!({
                "backup_id": "20251108_143022_a8f3d9", "app": "my-app", "host": "h1",
                "status": "COMPLETED", "created_at": "2025-11-08T14:30:22Z", "total_size": 10,
                "services": ["postgres:db"], "location": "/store", "error": null,
                "skipped": [], "pinned": true,
                "locations": [
                    {"url": "/store", "state": "ok", "reason": null, "primary": true,
                     "attempts": 0, "updated_at": null},
                    {"url": "s3://offsite/apps/my-app/20251108_143022_a8f3d9", "state": "failed",
                     "reason": "connection refused", "primary": false, "attempts": 2,
                     "updated_at": "2025-11-08T14:31:00Z"}
                ],
                "format_version": "1.0", "hop3_version": "0.8.0",
                "env_vars_count": 2, "services_included": true,
                "service_dumps": [{"type": "postgres", "name": "db",
                                   "file": "services/postgres_db.sql", "size": 3}],
                "files": [{"path": "env.json", "expected": "sha256:aa", "actual": "sha256:aa",
                           "size": 10, "valid": true}],
                "app_state": {"hostname": "h", "port": 8000, "run_state": "RUNNING"},
                "all_valid": true, "trusted": false
            })
        );
        // Every key of the backup object, with the same value, as in a listing.
        let listed = serde_json::to_value(BackupView::from(summary)).unwrap();
        for (key, v) in listed.as_object().unwrap() {
            assert_eq!(&value[key], v, "{key}");
        }
    }

    #[test]
    fn agent_field_names_are_the_documented_ones() {
        let agent = AgentInfo {
            host: "web-1".into(),
            address: "http://10.0.0.5:7411".into(),
            version: "0.1.0".into(),
            online: false,
            last_seen: "2025-11-08T14:30:22Z".into(),
            apps: vec!["blog".into(), "shop".into()],
            degraded: false,
        };
        let value = serde_json::to_value(AgentView::from(agent)).unwrap();
        assert_eq!(
            value,
            json!({
                "host": "web-1", "address": "http://10.0.0.5:7411", "version": "0.1.0",
                "status": "offline", "last_seen": "2025-11-08T14:30:22Z",
                "apps": ["blog", "shop"]
            })
        );
        let status = |online, degraded| {
            agent_status(&AgentInfo {
                online,
                degraded,
                ..Default::default()
            })
        };
        assert_eq!(status(true, false), "online");
        assert_eq!(status(true, true), "degraded");
        assert_eq!(status(false, true), "offline");
    }
}
