//! Who may call an agent's AgentService: the controller, and nobody else.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use hop3_wire::join_token::bearer_digest;
use hop3_wire::tls::peer_identity;

/// What the controller presents on its calls to this agent in plain mode:
/// a secret it hands this process alone when it registers (none before).
#[derive(Debug, Default)]
pub struct ControllerToken(RwLock<Option<[u8; 32]>>);

impl ControllerToken {
    /// Keeps `token` (its digest) as the one to ask of callers.
    pub fn set(&self, token: &str) {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        *self.0.write().expect("controller token lock") = Some(digest);
    }

    fn presented_in(&self, req: &Request<()>) -> bool {
        let expected = *self.0.read().expect("controller token lock");
        expected.is_some() && bearer_digest(req.metadata()) == expected
    }
}

/// How an agent recognises its controller.
#[derive(Clone, Debug)]
pub enum Callers {
    /// Over mutual TLS: a certificate of the authority with the controller's
    /// name and marker (an agent's certificate, whatever its name, is not).
    ControllerCertificate,
    /// Plain mode: the token the controller handed this agent when it
    /// registered, in `authorization`.
    ControllerToken(Arc<ControllerToken>),
    /// The controller's in-process agent: served on an in-memory channel
    /// only the controller holds, so whoever calls is the controller.
    InProcess,
}

impl Callers {
    /// Lets the controller's requests through.
    pub fn check(&self, req: &Request<()>) -> Result<(), Status> {
        match self {
            Self::InProcess => Ok(()),
            Self::ControllerToken(token) if token.presented_in(req) => Ok(()),
            Self::ControllerToken(_) => {
                tracing::warn!("refused a caller without the controller's token");
                Err(Status::unauthenticated(
                    "only the controller may call this agent",
                ))
            }
            Self::ControllerCertificate => match peer_identity(req) {
                Some(peer) if peer.is_controller() => Ok(()),
                Some(peer) if peer.name == hop3_wire::tls::CONTROLLER_NAME => {
                    tracing::warn!(
                        "refused a certificate named after the controller without its marker: if it is the controller's own, reissue it (hop3-controller certs reissue-controller)"
                    );
                    Err(Status::permission_denied(
                        "only the controller may call this agent",
                    ))
                }
                peer => {
                    tracing::warn!(peer = ?peer.map(|p| p.name), "refused a caller that is not the controller");
                    Err(Status::permission_denied(
                        "only the controller may call this agent",
                    ))
                }
            },
        }
    }
}
