//! Who may call the CLI's API: bearer tokens, of which the store's
//! tokens file keeps only a SHA-256 (see [`crate::tokens`]). Plain loopback
//! mode (the one-host quick start) runs without them.

use hop3_proto::Checksum;
use tonic::Status;
use tonic::metadata::MetadataMap;

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

/// How the CLI's API checks callers.
#[derive(Clone)]
pub enum Auth {
    /// Anyone who can reach the (loopback) port.
    Open,
    /// A live bearer token in the `authorization` header.
    Tokens(Tokens),
}

impl Auth {
    /// Checks a request's metadata; the error never says whether a token exists.
    pub async fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Self::Tokens(tokens) = self else {
            return Ok(());
        };
        let denied = || {
            Status::unauthenticated(
                "not authorized: set HOP3_TOKEN to a valid token (hop3-controller tokens create NAME)",
            )
        };
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(denied)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(denied)?;
        match tokens.name_of(&token_hash(token)).await {
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
