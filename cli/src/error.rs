//! The CLI's one error type, and the one place it is mapped to what the user
//! sees: a message, an optional hint, a code for `--json` and an exit code.

use std::io;
use std::path::PathBuf;

use hop3_proto::backup_id::InvalidBackupId;
use hop3_proto::names::InvalidName;
use tonic::Code;

/// Exit codes, as documented in `hop3 --help`.
pub mod exit {
    /// Any failure without a more specific code.
    pub const FAILURE: u8 = 1;
    /// Bad arguments (clap uses 2 for its own usage errors too).
    pub const USAGE: u8 = 2;
    /// No such application, backup or directory.
    pub const NOT_FOUND: u8 = 3;
    /// Checksum mismatch, another operation in progress, backup already imported.
    pub const FAILED_PRECONDITION: u8 = 4;
    /// Not enough disk space.
    pub const RESOURCE_EXHAUSTED: u8 = 5;
    /// Permission denied or unauthenticated.
    pub const PERMISSION_DENIED: u8 = 6;
    /// The controller cannot be reached.
    pub const UNREACHABLE: u8 = 7;
    /// Ctrl-C during a create or restore (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

/// The job a Ctrl-C left, and what became of it.
#[derive(Debug)]
pub enum InterruptedJob {
    /// A `backup:create`; `id` is None when the controller had not yet
    /// said which backup it started.
    Backup {
        id: Option<String>,
        app: String,
        cancelled: bool,
    },
    /// A `backup:restore`; `target` is the app and host it goes to, once
    /// the controller has said.
    Restore {
        id: String,
        target: Option<(String, String)>,
        cancelled: bool,
    },
}

impl std::fmt::Display for InterruptedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const CANCEL: &str = "(--cancel-on-interrupt makes Ctrl-C cancel it instead)";
        match self {
            Self::Backup {
                id: Some(id),
                app,
                cancelled: false,
            } => write!(
                f,
                "Interrupted: backup {id} of {app} goes on on the controller; follow it with                  `hop3 backup:info {id}` (STARTED until it ends) {CANCEL}"
            ),
            Self::Backup {
                id: None,
                app,
                cancelled: false,
            } => write!(
                f,
                "Interrupted: a backup of {app}, if the controller had started it, goes on                  there; see `hop3 backup:list {app}` {CANCEL}"
            ),
            Self::Backup {
                id,
                app,
                cancelled: true,
            } => {
                let which = id.as_deref().map(|i| format!(" {i}")).unwrap_or_default();
                write!(
                    f,
                    "Interrupted: the backup{which} of {app} is cancelled: the controller                      records it FAILED and removes its partial files (`hop3 backup:list {app}`)"
                )
            }
            Self::Restore {
                id,
                target,
                cancelled,
            } => {
                let (app, on) = match target {
                    Some((app, host)) => (app.as_str(), format!(" into {app} on {host}")),
                    None => ("the app", String::new()),
                };
                if *cancelled {
                    write!(
                        f,
                        "Interrupted: the restore of {id}{on} is cancelled, unless the agent had                          begun swapping the restored files in, in which case it completes:                          {app} is as it was or fully restored, never half"
                    )
                } else {
                    write!(
                        f,
                        "Interrupted: the restore of {id}{on} goes on on the controller;                          {app} stays locked until it ends (a backup or restore of it is refused                          until then) {CANCEL}"
                    )
                }
            }
        }
    }
}

/// What a request was about, so that a NOT_FOUND gets the right hint
/// without reading the controller's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The request named an application.
    App,
    /// The request named a backup.
    Backup,
    /// The request named a backup directory on the controller's machine.
    Directory,
    /// The request named nothing in particular (e.g. listing the agents).
    Fleet,
    /// The request named an agent's host.
    Host,
}

/// Why a TLS handshake failed, for the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate does not chain to a trusted CA.
    UnknownIssuer,
    /// The certificate is not valid for the URL's host.
    WrongName,
    /// The peer did not speak TLS (a controller started without TLS).
    NotTls,
    /// Anything else (expired certificate, protocol error...).
    Other,
}

/// Everything that can make a `hop3` command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A backup ID on the command line is malformed.
    #[error(transparent)]
    InvalidBackupId(#[from] InvalidBackupId),

    /// An app or host name on the command line is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),

    /// A directory on the command line cannot be made absolute or sent.
    #[error("invalid backup directory {path:?}: {reason}")]
    InvalidPath { path: PathBuf, reason: String },

    /// The controller URL cannot be parsed.
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidControllerUrl { url: String, reason: String },

    /// The config file cannot be read or parsed.
    #[error("cannot use config file {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    /// The config file holds a token but others than its owner may read it.
    #[error(
        "Refusing to read the token from config file {file}: it is readable by group or \
         others (mode {mode:03o}). Run: chmod 600 {file}",
        file = path.display()
    )]
    TokenFileNotPrivate { path: PathBuf, mode: u32 },

    /// The token cannot be sent as a header. Never says what the token is.
    #[error(
        "The token from {origin} cannot be sent: it must be printable ASCII without spaces \
         (hop3_ followed by 64 hex digits)"
    )]
    InvalidToken { origin: String },

    /// The CA certificate for `https://` cannot be read or holds no certificate.
    #[error("Cannot use CA certificate {}: {reason}", path.display())]
    CaCert { path: PathBuf, reason: String },

    /// The TCP connection was made but the TLS handshake failed: an
    /// untrusted certificate, one for another name, or a plain-text server.
    #[error("TLS connection to the controller at {url} failed: {detail}{}", if *ca_cert {
        ""
    } else {
        " (no CA certificate given: pass --ca-cert FILE, set HOP3_CA_CERT, or put \
         ca_cert = \"FILE\" in the config file)"
    })]
    Tls {
        url: String,
        detail: String,
        kind: TlsFailure,
        /// Whether a CA certificate was given.
        ca_cert: bool,
    },

    /// The controller's socket refused this user by its permissions.
    #[error(
        "Permission denied: the controller's socket {} is for root and the members of its group",
        path.display()
    )]
    SocketDenied { path: std::path::PathBuf },

    /// No connection could be made to the controller.
    #[error(
        "Cannot reach the controller at {url}: is hop3-controller running? \
         (set --controller or HOP3_CONTROLLER)"
    )]
    Unreachable { url: String },

    /// The connection broke during a call.
    #[error("Lost the connection to the controller at {url}: {detail}")]
    ConnectionLost { url: String, detail: String },

    /// The controller answered with an error status. Its messages are written
    /// for users, so they are shown as they are.
    #[error("{message}")]
    Status {
        code: Code,
        message: String,
        subject: Subject,
    },

    /// A create or restore stream ended without its final `completed` event:
    /// the outcome is unknown, which is never a success.
    #[error(
        "The controller ended the {operation} without reporting its outcome; \
         check with: hop3 backup:list"
    )]
    Incomplete { operation: &'static str },

    /// Ctrl-C during a create or restore.
    #[error("{0}")]
    Interrupted(InterruptedJob),

    /// The controller reported the backup as FAILED.
    #[error("Backup {backup_id} failed: {reason}")]
    BackupFailed { backup_id: String, reason: String },

    /// The controller sent a reply that lacks a required part.
    #[error("Unexpected reply from the controller: {0}")]
    UnexpectedReply(&'static str),

    /// `backup:delete` without `--yes` and nobody at a terminal to ask.
    #[error(
        "Refusing to delete backup {backup_id} without confirmation: stdin is not a terminal. \
         Pass --yes to delete from a script"
    )]
    ConfirmationRequired { backup_id: String },

    /// The user did not type `yes` at the confirmation prompt.
    #[error("Deletion cancelled: backup {backup_id} was not deleted")]
    NotConfirmed { backup_id: String },

    /// `backup:info` found files whose checksum does not match (or are missing).
    #[error(
        "Backup {backup_id} failed its integrity check: {}",
        describe_bad(files)
    )]
    IntegrityFailed {
        backup_id: String,
        files: Vec<String>,
    },

    /// `backup:check-age` found no COMPLETED backup young enough.
    #[error("{0}")]
    CheckFailed(String),

    /// `backup:prune` could not remove some backups.
    #[error(
        "{failed} backup(s) could not be removed (see above); they stay DELETE_PENDING or kept, and the next prune retries them"
    )]
    PruneIncomplete { failed: usize },

    /// Reading the answer to the confirmation prompt failed.
    #[error("Cannot read the confirmation: {0}")]
    Prompt(#[source] io::Error),

    /// Writing the output failed (e.g. a closed pipe).
    #[error("Cannot write the output: {0}")]
    Output(#[source] io::Error),
}

fn describe_bad(files: &[String]) -> String {
    if files.is_empty() {
        "the controller reports it invalid".to_owned()
    } else {
        format!("checksum mismatch in {}", files.join(", "))
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidBackupId(_)
            | Self::InvalidName(_)
            | Self::InvalidPath { .. }
            | Self::InvalidControllerUrl { .. }
            | Self::Config { .. }
            | Self::TokenFileNotPrivate { .. }
            | Self::InvalidToken { .. }
            | Self::CaCert { .. }
            | Self::ConfirmationRequired { .. } => exit::USAGE,
            Self::Unreachable { .. } | Self::ConnectionLost { .. } | Self::Tls { .. } => {
                exit::UNREACHABLE
            }
            Self::SocketDenied { .. } => exit::PERMISSION_DENIED,
            Self::Status { code, .. } => status_exit_code(*code),
            Self::IntegrityFailed { .. } => exit::FAILED_PRECONDITION,
            Self::CheckFailed(_) | Self::PruneIncomplete { .. } => exit::FAILURE,
            Self::Interrupted(_) => exit::INTERRUPTED,
            Self::Incomplete { .. }
            | Self::BackupFailed { .. }
            | Self::UnexpectedReply(_)
            | Self::NotConfirmed { .. }
            | Self::Prompt(_)
            | Self::Output(_) => exit::FAILURE,
        }
    }

    /// A gRPC-style code name for the `--json` error document, so scripts
    /// can tell failures apart without parsing messages.
    pub fn code_name(&self) -> &'static str {
        match self {
            Self::InvalidBackupId(_)
            | Self::InvalidName(_)
            | Self::InvalidPath { .. }
            | Self::InvalidControllerUrl { .. }
            | Self::Config { .. }
            | Self::TokenFileNotPrivate { .. }
            | Self::InvalidToken { .. }
            | Self::CaCert { .. }
            | Self::ConfirmationRequired { .. } => "INVALID_ARGUMENT",
            Self::Unreachable { .. } | Self::ConnectionLost { .. } | Self::Tls { .. } => {
                "UNAVAILABLE"
            }
            Self::SocketDenied { .. } => "PERMISSION_DENIED",
            Self::Status { code, .. } => grpc_code_name(*code),
            Self::IntegrityFailed { .. } => "FAILED_PRECONDITION",
            Self::CheckFailed(_) => "FAILED_PRECONDITION",
            Self::PruneIncomplete { .. } => "INTERNAL",
            Self::NotConfirmed { .. } | Self::Interrupted(_) => "CANCELLED",
            Self::Incomplete { .. }
            | Self::BackupFailed { .. }
            | Self::UnexpectedReply(_)
            | Self::Prompt(_)
            | Self::Output(_) => "INTERNAL",
        }
    }

    /// What to do about it, in the spirit of the guide's Troubleshooting section.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Status { code, subject, .. } => match (code, subject) {
                (Code::NotFound, Subject::App) => Some("Check the application name."),
                (Code::NotFound, Subject::Backup) => {
                    Some("List backups with: hop3 backup:list (or hop3 backup:list APP)")
                }
                (Code::NotFound, Subject::Directory) => Some(
                    "The directory is read by the controller: give its path on the \
                     controller's machine.",
                ),
                (Code::AlreadyExists, Subject::Backup) => Some(
                    "Restore into a new name with --target-app NAME, or replace that app with \
                     --replace (its files, environment and databases become the backup's).",
                ),
                (Code::NotFound, Subject::Host) => {
                    Some("List the agents the controller knows with: hop3 agent:list")
                }
                (Code::AlreadyExists, _) => {
                    Some("The backup is already in the catalog: hop3 backup:list")
                }
                // A restore fills the app's host; everything else the store.
                (Code::ResourceExhausted, Subject::Backup) => Some(
                    "Free disk space on the app's host (df -h on its HOP3_ROOT), then retry \
                     the restore: the app is unchanged.",
                ),
                (Code::ResourceExhausted, _) => Some(
                    "Delete old backups: hop3 backup:list, then hop3 backup:delete ID \
                     (check space with: df -h on the backup store)",
                ),
                (Code::PermissionDenied, _) => Some(
                    "This usually indicates a system-level issue: contact your system \
                     administrator or check file permissions.",
                ),
                (Code::Unauthenticated, _) => Some(
                    "Create a token with: hop3-controller tokens create NAME, then export \
                     HOP3_TOKEN=... (as root on the controller's host, its socket needs none)",
                ),
                _ => None,
            },
            Self::SocketDenied { .. } => Some(
                "Ask an administrator to add you to the socket's group (hop3-backup by default: usermod -aG hop3-backup USER, \
                 then log in again), or use a token over TCP: HOP3_TOKEN=... hop3 \
                 --controller http://127.0.0.1:7410 ...",
            ),
            Self::Tls { kind, ca_cert, .. } => Some(match (kind, ca_cert) {
                (TlsFailure::NotTls, _) => {
                    "The controller does not serve TLS: use an http:// URL for a controller \
                     started without --tls-dir."
                }
                (TlsFailure::WrongName, _) => {
                    "The controller's certificate is not valid for the URL's host: connect \
                     with a name given to hop3-controller certs init --name."
                }
                (_, false) => {
                    "Pass the CA that signed the controller's certificate: \
                     --ca-cert DIR/ca.pem (the DIR of hop3-controller certs init)."
                }
                (_, true) => {
                    "Check that --ca-cert is the ca.pem of this controller's certificates \
                     (hop3-controller certs init)."
                }
            }),
            // What a plain-text client gets from a controller serving TLS.
            Self::ConnectionLost { url, .. } if url.starts_with("http://") => Some(
                "If the controller serves TLS (started with --tls-dir), use an https:// URL \
                 and --ca-cert FILE.",
            ),
            Self::IntegrityFailed { .. } => Some(
                "The backup has been corrupted or modified: do not use it. Use a different \
                 backup, or create a new one from the current state.",
            ),
            _ => None,
        }
    }

    /// Maps a status from a call: transport failures (which tonic reports as
    /// statuses carrying a source error) become connection errors, anything
    /// the controller itself answered is kept with its code and message.
    pub fn from_status(status: tonic::Status, subject: Subject, url: &str) -> Self {
        let local = std::error::Error::source(&status).is_some();
        // A plain client talking to a TLS server gets either a reset
        // (Unavailable/Unknown) or, depending on timing, an h2 protocol
        // error (Internal): both come from the transport, not the controller.
        if local
            && matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal
            )
        {
            return Self::ConnectionLost {
                url: url.to_owned(),
                detail: status.message().to_owned(),
            };
        }
        let message = if status.message().is_empty() {
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        Self::Status {
            code: status.code(),
            message,
            subject,
        }
    }
}

fn status_exit_code(code: Code) -> u8 {
    match code {
        Code::NotFound => exit::NOT_FOUND,
        // ABORTED is what a concurrency conflict is often reported as;
        // ALREADY_EXISTS is an import of a backup the catalog already holds.
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => exit::FAILED_PRECONDITION,
        Code::ResourceExhausted => exit::RESOURCE_EXHAUSTED,
        Code::PermissionDenied | Code::Unauthenticated => exit::PERMISSION_DENIED,
        Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
        // UNAVAILABLE answered by the controller itself (e.g. an agent is
        // down) is not "controller unreachable": that one comes from the
        // transport and is mapped in `from_status`.
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => exit::FAILURE,
    }
}

fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str, subject: Subject) -> CliError {
        CliError::from_status(tonic::Status::new(code, message), subject, "http://c")
    }

    #[test]
    fn controller_statuses_keep_their_message_and_get_a_code() {
        let e = status(
            Code::NotFound,
            "Backup not found: 20251108_143022_a8f3d9",
            Subject::Backup,
        );
        assert_eq!(e.to_string(), "Backup not found: 20251108_143022_a8f3d9");
        assert_eq!(e.exit_code(), 3);
        assert_eq!(e.code_name(), "NOT_FOUND");
        assert!(e.hint().unwrap().contains("hop3 backup:list"));

        let e = status(
            Code::NotFound,
            "Application not found: my-app",
            Subject::App,
        );
        assert_eq!(e.hint(), Some("Check the application name."));

        let cases = [
            (Code::FailedPrecondition, 4, "FAILED_PRECONDITION"),
            (Code::AlreadyExists, 4, "ALREADY_EXISTS"),
            (Code::ResourceExhausted, 5, "RESOURCE_EXHAUSTED"),
            (Code::PermissionDenied, 6, "PERMISSION_DENIED"),
            (Code::Unauthenticated, 6, "UNAUTHENTICATED"),
            (Code::InvalidArgument, 2, "INVALID_ARGUMENT"),
            (Code::Internal, 1, "INTERNAL"),
            (Code::Unavailable, 1, "UNAVAILABLE"),
        ];
        for (code, exit, name) in cases {
            let e = status(code, "m", Subject::App);
            assert_eq!((e.exit_code(), e.code_name()), (exit, name), "{code:?}");
        }
        assert!(
            status(Code::ResourceExhausted, "m", Subject::App)
                .hint()
                .unwrap()
                .contains("backup:delete")
        );
    }

    #[test]
    fn import_failures_get_their_own_hints() {
        let e = status(
            Code::NotFound,
            "Backup directory not found: /srv/x",
            Subject::Directory,
        );
        assert_eq!(e.exit_code(), 3);
        assert!(e.hint().unwrap().contains("controller's machine"));
        let e = status(
            Code::AlreadyExists,
            "Backup already exists: 20251108_143022_a8f3d9",
            Subject::Directory,
        );
        assert_eq!(e.exit_code(), exit::FAILED_PRECONDITION);
        assert_eq!(
            e.to_string(),
            "Backup already exists: 20251108_143022_a8f3d9"
        );
        assert!(e.hint().unwrap().contains("hop3 backup:list"));
        assert_eq!(status(Code::NotFound, "m", Subject::Fleet).hint(), None);
        let e = status(Code::NotFound, "Host not found: web-9", Subject::Host);
        assert_eq!(e.exit_code(), exit::NOT_FOUND);
        assert!(e.hint().unwrap().contains("hop3 agent:list"));
    }

    #[test]
    fn unauthenticated_and_permission_denied_exit_6_with_the_servers_message() {
        let message =
            "not authorized: set HOP3_TOKEN to a valid token (hop3-controller tokens create NAME)";
        let e = status(Code::Unauthenticated, message, Subject::Backup);
        assert_eq!(e.to_string(), message);
        assert_eq!(e.exit_code(), exit::PERMISSION_DENIED);
        assert_eq!(
            e.hint(),
            Some(
                "Create a token with: hop3-controller tokens create NAME, then export \
                 HOP3_TOKEN=... (as root on the controller's host, its socket needs none)"
            )
        );
        let e = status(Code::PermissionDenied, "denied", Subject::App);
        assert_eq!((e.to_string().as_str(), e.exit_code()), ("denied", 6));
    }

    #[test]
    fn tls_failures_exit_7_and_suggest_the_ca_cert() {
        let tls = |kind, ca_cert| CliError::Tls {
            url: "https://c:1".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
            kind,
            ca_cert,
        };
        let e = tls(TlsFailure::UnknownIssuer, false);
        assert_eq!((e.exit_code(), e.code_name()), (7, "UNAVAILABLE"));
        assert!(e.to_string().contains("--ca-cert FILE"), "{e}");
        assert!(e.hint().unwrap().contains("--ca-cert"));
        let e = tls(TlsFailure::UnknownIssuer, true);
        assert!(!e.to_string().contains("no CA certificate given"), "{e}");
        assert!(e.hint().unwrap().contains("ca.pem of this controller"));
        assert!(
            tls(TlsFailure::WrongName, true)
                .hint()
                .unwrap()
                .contains("--name")
        );
        assert!(
            tls(TlsFailure::NotTls, true)
                .hint()
                .unwrap()
                .contains("http://")
        );
        let lost = |url: &str| CliError::ConnectionLost {
            url: url.into(),
            detail: "transport error".into(),
        };
        assert!(lost("http://c:1").hint().unwrap().contains("https://"));
        assert_eq!(lost("https://c:1").hint(), None);
    }

    #[test]
    fn an_empty_status_message_is_replaced_by_the_code_description() {
        let e = status(Code::Internal, "", Subject::App);
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn unreachable_names_the_url_and_exits_7() {
        let e = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
        };
        assert!(
            e.to_string()
                .starts_with("Cannot reach the controller at http://127.0.0.1:1:")
        );
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        assert_eq!(e.code_name(), "UNAVAILABLE");
    }
}
