//! Mutual TLS between the controller and its agents, from a directory of
//! PEM files made by `hop3-controller certs`: `ca.pem`, and `<name>.pem` /
//! `<name>.key` for each party. Identities are certificate common names:
//! `hop3-controller` for the controller, the host id for an agent.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Names ring, the provider tonic is built with, as the process's TLS
/// provider. The controller's S3 client links aws-lc-rs too, and in one
/// workspace build every binary gets both, when rustls refuses to guess
/// (a panic at the first TLS config). Call first thing in `main`; a second
/// call is harmless.
pub fn use_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The common name of the controller's certificate.
pub const CONTROLLER_NAME: &str = "hop3-controller";

/// A URI subject alternative name only `certs init` and `certs
/// reissue-controller` put in a certificate: a caller is the controller when
/// its certificate carries it, not merely the controller's name, since
/// `issue-agent` could be given any name.
pub const CONTROLLER_MARKER: &str = "urn:hop3-backup:role:controller";

/// Names `issue-agent` refuses: the controller's, in any case.
pub fn is_reserved_name(name: &str) -> bool {
    name.eq_ignore_ascii_case(CONTROLLER_NAME)
}

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
        // Whoever loads TLS files uses them next: in tests, that is not a main.
        use_ring_provider();
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
    peer_identity(req).map(|p| p.name)
}

/// Who the peer of a mutual-TLS request is, by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's common name.
    pub name: String,
    /// It carries [`CONTROLLER_MARKER`].
    pub controller: bool,
}

impl PeerIdentity {
    /// The controller's certificate: its name and its marker.
    pub fn is_controller(&self) -> bool {
        self.controller && self.name == CONTROLLER_NAME
    }
}

/// The identity in the certificate the peer of `req` presented, if any.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    identity_of(certs.first()?.as_ref())
}

/// The names a PEM certificate is valid for: its common name and its DNS
/// and IP subject alternative names (lowercase).
pub fn pem_names(pem: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem) else {
        return Vec::new();
    };
    let Ok(cert) = pem.parse_x509() else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names.iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// The identity in a DER certificate.
pub fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let controller = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|n| {
                matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == CONTROLLER_MARKER)
            })
        });
    Some(PeerIdentity { name, controller })
}
