//! Mutual TLS between the controller and its agents, from a directory of
//! PEM files made by `hop3-controller certs`: `ca.pem`, and `<name>.pem` /
//! `<name>.key` for each party. Identities are certificate common names:
//! `hop3-controller` for the controller, the host id for an agent.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The common name of the controller's certificate.
pub const CONTROLLER_NAME: &str = "hop3-controller";

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source} (create it with hop3-controller certs)")]
pub struct TlsFileError {
    path: String,
    source: std::io::Error,
}

fn read(dir: &Path, file: &str) -> Result<String, TlsFileError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| TlsFileError {
        path: path.display().to_string(),
        source,
    })
}

/// The TLS material of one party.
#[derive(Clone)]
pub struct TlsFiles {
    ca: Certificate,
    identity: Identity,
}

impl TlsFiles {
    /// Loads `ca.pem` and the party `name`'s certificate and key from `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsFileError> {
        Ok(Self {
            ca: Certificate::from_pem(read(dir, "ca.pem")?),
            identity: Identity::from_pem(
                read(dir, &format!("{name}.pem"))?,
                read(dir, &format!("{name}.key"))?,
            ),
        })
    }

    /// Server side: present our identity; with `client_optional`, callers
    /// without a certificate (the CLI, which uses a token) get in too, and
    /// each handler checks what it needs.
    pub fn server(&self, client_optional: bool) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(client_optional)
    }

    /// Client side: verify the peer's certificate is for `peer_name`, and present ours.
    pub fn client(&self, peer_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer_name)
    }
}

/// The common name of the certificate the peer of `req` presented, if any
/// (the TLS layer has already checked it chains to our CA).
pub fn peer_name<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let der = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
