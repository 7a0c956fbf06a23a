//! The agent's error type, and its one mapping to gRPC status codes.

use std::io;
use std::path::PathBuf;

use hop3_proto::manifest::ManifestError;
use hop3_proto::names::InvalidName;
use tonic::{Code, Status};

/// What can go wrong on an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Application not found: {0}")]
    AppNotFound(String),
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("app {app}: app.json is not valid: {reason}")]
    AppConfig { app: String, reason: String },
    #[error("Checksum mismatch: {path} (expected {expected}, received {actual})")]
    ChecksumMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{archive}: refused entry {entry:?}: {reason}")]
    HostileEntry {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("{archive} is damaged or truncated: {reason}")]
    BadArchive { archive: String, reason: String },
    #[error("{0} changed size while it was being archived; retry the backup")]
    FileChanged(PathBuf),
    #[error(
        "Insufficient disk space on the app's host while unpacking {0}; free space there and retry"
    )]
    HostFull(String),
    #[error(
        "Insufficient disk space on the app's host: need {needed} bytes, {available} available"
    )]
    InsufficientSpace { needed: u64, available: u64 },
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{what} command failed: {detail}")]
    Hook { what: &'static str, detail: String },
    #[error("the controller went away before the operation finished")]
    Cancelled,
    #[error("the controller sent nothing for {0}s; gave up")]
    Stalled(u64),
    #[error("Service {service} failed ({step}): {detail}")]
    Service {
        service: String,
        step: &'static str,
        detail: String,
    },
    #[error(
        "unknown service type {kind:?} for service {service:?} (supported: postgres, mysql, redis)"
    )]
    UnknownService { service: String, kind: String },
    #[error(
        "{tree}/ is a link to {target}, which cannot be read ({reason}); is its volume mounted? A backup without it would not hold the app's {tree}"
    )]
    LinkedTree {
        tree: String,
        target: String,
        reason: String,
    },
    #[error(
        "{tree} in the app's directory is not a directory; only directories are backed up as {tree}/"
    )]
    NotATree { tree: String },
    #[error(
        "{tree}/ is a link to {target}, owned by uid {owner} while the app belongs to uid {app_owner}: not followed, since the app's user could have planted it; point it at a directory of the app's user"
    )]
    UntrustedLink {
        tree: String,
        target: String,
        owner: u32,
        app_owner: u32,
    },
    #[error(
        "app '{app}' already exists on this host and is not the backup's app ('{backup_app}'): restoring would replace its files, environment and databases. Pass --replace to do that, or choose another --target-app"
    )]
    TargetExists { app: String, backup_app: String },
    /// `demo-app` could not make its app.
    #[error("cannot make the demo app: {0}")]
    DemoApp(String),
    /// A task of the agent failed where it never should (a panic): a bug,
    /// reported as such instead of as a lost agent.
    #[error("the agent hit an internal error ({0}); its log has the details, please report it")]
    Bug(String),
}

impl AgentError {
    /// Wraps an I/O error with what was being done. Disk-full and permission
    /// errors keep their own kinds so callers can tell them apart.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::PermissionDenied(context),
            _ => Self::Io { context, source },
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::AppNotFound(_) => Code::NotFound,
            Self::InvalidName(_) => Code::InvalidArgument,
            Self::Manifest(_) => Code::InvalidArgument,
            Self::AppConfig { .. } => Code::FailedPrecondition,
            Self::ChecksumMismatch { .. } => Code::FailedPrecondition,
            Self::HostileEntry { .. } => Code::InvalidArgument,
            Self::BadArchive { .. } => Code::DataLoss,
            Self::FileChanged(_) => Code::Aborted,
            Self::InsufficientSpace { .. } | Self::HostFull(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                Code::ResourceExhausted
            }
            Self::Io { .. } => Code::Internal,
            Self::Protocol(_) => Code::InvalidArgument,
            Self::Hook { .. } => Code::FailedPrecondition,
            Self::Cancelled => Code::Cancelled,
            Self::Stalled(_) => Code::DeadlineExceeded,
            Self::Service { .. } => Code::FailedPrecondition,
            Self::UnknownService { .. } => Code::FailedPrecondition,
            Self::LinkedTree { .. } | Self::NotATree { .. } | Self::UntrustedLink { .. } => {
                Code::FailedPrecondition
            }
            Self::TargetExists { .. } => Code::AlreadyExists,
            Self::Bug(_) | Self::DemoApp(_) => Code::Internal,
        }
    }
}

impl From<hop3_wire::events::Closed> for AgentError {
    /// The controller hung up on an event stream.
    fn from(_: hop3_wire::events::Closed) -> Self {
        Self::Cancelled
    }
}

impl From<hop3_wire::artifacts::SendError> for AgentError {
    fn from(e: hop3_wire::artifacts::SendError) -> Self {
        match e {
            hop3_wire::artifacts::SendError::Read { path, source } => {
                Self::io(format!("producing {path}"), source)
            }
            hop3_wire::artifacts::SendError::Closed(_) => Self::Cancelled,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// Shorthand for the agent's results.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
