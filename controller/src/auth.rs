//! Who may call the CLI's API, in every mode: on the controller's Unix
//! socket, root, the controller's own user and the members of its group (by
//! the caller's kernel credentials); over TCP, holders of a bearer token, of
//! which the store's tokens file keeps only a SHA-256 (see [`crate::tokens`]).

use std::path::PathBuf;

use hop3_proto::Checksum;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::tokens::Tokens;

/// Prefix of every token, so a leaked one is easy to recognise and grep for.
pub const TOKEN_PREFIX: &str = "hop3_";

/// A new random token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the tokens file stores of a token.
pub fn token_hash(token: &str) -> String {
    Checksum::of(token.as_bytes()).to_string()
}

/// Who may use the controller's Unix socket.
#[derive(Clone, Debug)]
pub struct LocalCallers {
    /// The socket, named in refusals.
    pub socket: PathBuf,
    /// The controller's own user.
    pub uid: u32,
    /// The socket's group and its name, when there is one besides root's.
    pub group: Option<(u32, String)>,
}

impl LocalCallers {
    async fn check(&self, info: &UdsConnectInfo) -> Result<(), Status> {
        let Some(cred) = info.peer_cred else {
            return Err(Status::permission_denied(
                "permission denied: the caller's credentials cannot be read",
            ));
        };
        let uid = cred.uid();
        if uid == 0 || uid == self.uid {
            return Ok(());
        }
        if let Some((gid, _)) = &self.group
            && (cred.gid() == *gid || in_group(cred.pid(), *gid).await)
        {
            return Ok(());
        }
        tracing::warn!(uid, pid = ?cred.pid(), "refused a local caller");
        let group = match &self.group {
            Some((_, name)) => format!(
                "root, the controller's user and the members of group {name} (usermod -aG {name} USER, then log in again)"
            ),
            None => "root and the controller's user (make a group hop3-backup and restart the controller to let its members in)".to_owned(),
        };
        Err(Status::permission_denied(format!(
            "permission denied: the controller's socket {} is for {group}; or use a token over TCP (HOP3_TOKEN, made with hop3-controller tokens create NAME)",
            self.socket.display()
        )))
    }
}

/// Whether the process `pid` has `gid` among its supplementary groups.
async fn in_group(pid: Option<i32>, gid: u32) -> bool {
    let Some(pid) = pid else {
        return false;
    };
    let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| {
            groups
                .split_whitespace()
                .any(|g| g.parse::<u32>() == Ok(gid))
        })
}

/// How the CLI's API checks callers.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Tokens,
    pub local: LocalCallers,
}

impl Auth {
    /// Checks a request by where it came from; the error never says whether
    /// a token exists.
    pub async fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
            return self.local.check(info).await;
        }
        let denied = || {
            Status::unauthenticated(format!(
                "not authorized: set HOP3_TOKEN to a valid token (hop3-controller tokens create NAME), or as root on the controller's host use its socket (hop3 --controller unix:{})",
                self.local.socket.display()
            ))
        };
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(denied)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(denied)?;
        match self.tokens.name_of(&token_hash(token)).await {
            Ok(Some(name)) => {
                tracing::debug!(token = %name, "authorized");
                Ok(())
            }
            Ok(None) => {
                tracing::warn!("refused a call with an unknown or revoked token");
                Err(denied())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check a token");
                Err(Status::unavailable("cannot check the token now; retry"))
            }
        }
    }
}
