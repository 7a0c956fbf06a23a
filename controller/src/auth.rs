//! Who may call the CLI's API, in every mode: on the controller's Unix
//! socket, root, the controller's own user and the members of its group (by
//! the caller's kernel credentials); over TCP, holders of a bearer token, of
//! which the store's tokens file keeps only a SHA-256 (see [`crate::tokens`]).

use std::convert::Infallible;
use std::path::PathBuf;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hop3_proto::Checksum;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::UdsConnectInfo;

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
    /// Checks a call by where it came from (its connection's credentials,
    /// else its bearer token); the error never says whether a token exists.
    async fn check(&self, caller: Caller) -> Result<(), Status> {
        if let Some(info) = &caller.local {
            return self.local.check(info).await;
        }
        let denied = || {
            Status::unauthenticated(format!(
                "not authorized: set HOP3_TOKEN to a valid token (hop3-controller tokens create NAME), or as root on the controller's host use its socket (hop3 --controller unix:{})",
                self.local.socket.display()
            ))
        };
        let header = caller.authorization.as_deref().ok_or_else(denied)?;
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

/// What a call says of who makes it, taken from the request before the
/// check awaits (a request body cannot be shared across threads).
struct Caller {
    /// The kernel credentials of a caller on the Unix socket.
    local: Option<UdsConnectInfo>,
    /// The `authorization` header, if it is text.
    authorization: Option<String>,
}

impl Caller {
    fn of(req: &http::Request<Body>) -> Self {
        Self {
            local: req.extensions().get::<UdsConnectInfo>().cloned(),
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// Wraps a gRPC service so that every call to it is checked by [`Auth`]
/// before it reaches a handler: a new handler cannot forget the check.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: Auth,
}

impl<S> Authorized<S> {
    /// `inner`, behind `auth`.
    pub fn new(inner: S, auth: Auth) -> Self {
        Self { inner, auth }
    }
}

impl<S> tower::Service<http::Request<Body>> for Authorized<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh one
        // stays for the next (tower's usual swap).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        let caller = Caller::of(&req);
        Box::pin(async move {
            match auth.check(caller).await {
                Ok(()) => inner.call(req).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}
