//! Who may call an agent's AgentService: the controller, and nobody else.

use tonic::{Request, Status};

use crate::join_token::JoinToken;
use crate::tls::peer_identity;

/// How an agent recognises its controller.
#[derive(Clone, Debug)]
pub enum Callers {
    /// Over mutual TLS: a certificate of the authority with the controller's
    /// name and marker (an agent's certificate, whatever its name, is not).
    ControllerCertificate,
    /// Plain mode: the controller's join token in `authorization`.
    JoinToken(JoinToken),
    /// The controller's in-process agent: served on an in-memory channel
    /// only the controller holds, so whoever calls is the controller.
    InProcess,
}

impl Callers {
    /// Lets the controller's requests through.
    pub fn check(&self, req: &Request<()>) -> Result<(), Status> {
        match self {
            Self::InProcess => Ok(()),
            Self::JoinToken(token) if token.presented_in(req.metadata()) => Ok(()),
            Self::JoinToken(_) => {
                tracing::warn!("refused a caller without the controller's join token");
                Err(Status::unauthenticated(
                    "only the controller may call this agent",
                ))
            }
            Self::ControllerCertificate => match peer_identity(req) {
                Some(peer) if peer.is_controller() => Ok(()),
                Some(peer) if peer.name == crate::tls::CONTROLLER_NAME => {
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
