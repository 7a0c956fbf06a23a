//! The controller's error type, and its one mapping to gRPC status codes.

use std::io;

use hop3_proto::manifest::ManifestError;
use tonic::{Code, Status};

use crate::catalog::CatalogError;
use crate::store::StoreError;
use crate::tokens::TokenError;

/// What can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Application not found: {0}")]
    AppNotFound(String),
    /// Not found on the hosts that answered; the others may have it.
    #[error(
        "Application not found: {app} (no host reported it, and {silent} did not answer when asked: retry, or name its host with --host)"
    )]
    AppNotFoundUnanswered { app: String, silent: String },
    /// The client went away and asked for its job to end with it.
    #[error("cancelled: the CLI that started it went away (--cancel-on-interrupt)")]
    Cancelled,
    #[error("No backups of app {0} in the catalog")]
    NoBackups(String),
    #[error("Schedule not found: {name} of app {app} (hop3 backup:schedules lists them)")]
    ScheduleNotFound { app: String, name: String },
    #[error("Backup not found: {0}")]
    BackupNotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "Another operation is in progress for app '{app}' ({what}, started {secs}s ago); wait for it to finish"
    )]
    Busy {
        app: String,
        what: &'static str,
        secs: u64,
    },
    #[error("Backup {id} is {doing}; wait for it to finish")]
    BackupBusy { id: String, doing: &'static str },
    #[error("Checksum mismatch: {path} ({detail}). Do not use this backup; use a different one")]
    ChecksumMismatch { path: String, detail: String },
    #[error("Backup {0} is pinned: unpin it first (hop3 backup:unpin {0})")]
    Pinned(String),
    #[error("Backup {id} is {status}: only a COMPLETED backup can be pinned")]
    NotPinnable { id: String, status: &'static str },
    #[error("Backup {id} is {status} and cannot be restored")]
    NotRestorable { id: String, status: &'static str },
    #[error(
        "Insufficient disk space in the store: about {needed} bytes needed, {available} available"
    )]
    InsufficientSpace { needed: u64, available: u64 },
    #[error("Insufficient disk space in the store ({0}); delete old backups and retry")]
    StoreFull(String),
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    #[error("host {0} is offline (no heartbeat from its agent)")]
    HostOffline(String),
    #[error("Host not found: {0} (the controller knows no agent of that host)")]
    HostNotFound(String),
    #[error(
        "host {host} is online (its agent called in {seen_secs}s ago): stop its agent first, or its next heartbeat registers it again"
    )]
    HostOnline { host: String, seen_secs: u64 },
    #[error("host {0} is the controller's own agent (--local-agent) and cannot be forgotten")]
    LocalAgent(String),
    #[error(
        "host {0} is the controller's own agent (--local-agent): no other agent may register under its host id"
    )]
    LocalHostTaken(String),
    #[error(
        "host {host} is registered by a live agent at {address}: stop that agent first, or give this one another --host-id"
    )]
    HostTaken { host: String, address: String },
    #[error(
        "backup {0} was not sealed by this controller (it was imported or copied in by hand): check where it came from, then restore it with --trust-imported"
    )]
    Untrusted(String),
    #[error(
        "host {0} is offline (no heartbeat from its agent); to restore onto another host, pass --target-host HOST"
    )]
    RestoreHostOffline(String),
    #[error(
        "no host to restore onto: the backup does not say which host made it; pass --target-host HOST"
    )]
    NoTargetHost,
    #[error("app {app} is served by several hosts ({hosts}); pass --host HOST")]
    Ambiguous { app: String, hosts: String },
    #[error("Backup {0} already exists in the catalog")]
    AlreadyExists(String),
    /// The agent answered with an error: its code and message are kept.
    #[error("{host}: {message}")]
    Agent {
        host: String,
        code: Code,
        message: String,
    },
    #[error("lost the agent on {host}: {detail}")]
    AgentLost { host: String, detail: String },
    #[error("agent on {host} broke the protocol: {detail}")]
    Protocol { host: String, detail: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error("store: {0}")]
    Store(StoreError),
    #[error("backup is unreadable: {0}")]
    Manifest(#[from] ManifestError),
    /// An encrypted backup, and no identity here opens it.
    #[error(
        "backup {id} is encrypted to key {keys}, and this controller holds no identity of {which}: start it with the keys directory that holds identity.txt (--keys-dir)"
    )]
    IdentityNeeded {
        id: String,
        keys: String,
        which: &'static str,
    },
    /// Encrypted bytes that do not open: damaged, truncated, not age.
    #[error("{path} cannot be decrypted: {detail}")]
    Decryption { path: String, detail: String },
    /// Encrypting failed (a bug: the keys were checked at start).
    #[error("cannot encrypt: {0}")]
    Encryption(String),
}

impl From<StoreError> for ControllerError {
    fn from(e: StoreError) -> Self {
        match (e.io_kind(), &e) {
            (Some(io::ErrorKind::StorageFull), StoreError::Io { context, .. }) => {
                Self::StoreFull(context.clone())
            }
            (Some(io::ErrorKind::PermissionDenied), StoreError::Io { context, .. }) => {
                Self::PermissionDenied(format!("{context} in the store"))
            }
            (_, StoreError::Manifest(_)) => match e {
                StoreError::Manifest(m) => Self::Manifest(m),
                _ => unreachable!(),
            },
            _ => Self::Store(e),
        }
    }
}

impl ControllerError {
    /// `app` is locked by `holder`.
    pub fn busy(app: &str, holder: crate::locks::AppHolder) -> Self {
        Self::Busy {
            app: app.to_owned(),
            what: holder.what,
            secs: holder.since.elapsed().as_secs(),
        }
    }

    /// The error an agent's status becomes.
    pub fn from_agent(host: &str, status: Status) -> Self {
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                Self::AgentLost {
                    host: host.to_owned(),
                    detail: status.message().to_owned(),
                }
            }
            code => Self::Agent {
                host: host.to_owned(),
                code,
                message: status.message().to_owned(),
            },
        }
    }

    /// Whether this is the system failing (worth an ERROR log) rather than a
    /// request being refused.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::AgentLost { .. }
                | Self::Protocol { .. }
                | Self::Catalog(_)
                | Self::Tokens(_)
                | Self::Store(_)
                | Self::StoreFull(_)
        ) || matches!(self, Self::Agent { code, .. } if *code == Code::Internal)
    }

    fn code(&self) -> Code {
        match self {
            Self::AppNotFound(_)
            | Self::AppNotFoundUnanswered { .. }
            | Self::BackupNotFound(_)
            | Self::NoBackups(_)
            | Self::ScheduleNotFound { .. }
            | Self::HostNotFound(_) => Code::NotFound,
            Self::InvalidArgument(_) | Self::Ambiguous { .. } => Code::InvalidArgument,
            Self::Busy { .. }
            | Self::BackupBusy { .. }
            | Self::ChecksumMismatch { .. }
            | Self::NotRestorable { .. }
            | Self::Pinned(_)
            | Self::NotPinnable { .. }
            | Self::HostOnline { .. }
            | Self::Untrusted(_)
            | Self::IdentityNeeded { .. }
            | Self::LocalAgent(_) => Code::FailedPrecondition,
            Self::HostTaken { .. } => Code::AlreadyExists,
            Self::LocalHostTaken(_) => Code::PermissionDenied,
            Self::InsufficientSpace { .. } | Self::StoreFull(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::HostOffline(_) | Self::RestoreHostOffline(_) | Self::AgentLost { .. } => {
                Code::Unavailable
            }
            Self::NoTargetHost => Code::InvalidArgument,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Agent { code, .. } => *code,
            Self::Protocol { .. } | Self::Catalog(_) | Self::Tokens(_) | Self::Store(_) => {
                Code::Internal
            }
            Self::Manifest(_) | Self::Decryption { .. } => Code::DataLoss,
            Self::Encryption(_) => Code::Internal,
            Self::Cancelled => Code::Cancelled,
        }
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        let message = match &e {
            // The agent's message already says what a user needs.
            ControllerError::Agent { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Status::new(e.code(), message)
    }
}

/// Shorthand for the controller's results.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
