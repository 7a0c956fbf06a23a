//! `hop3-controller certs`: a private certificate authority for the fleet,
//! the controller's certificate, and one certificate per agent host.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use hop3_wire::tls::{CONTROLLER_MARKER, CONTROLLER_NAME, is_reserved_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What making certificates can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} already exists; remove it first to make a new authority")]
    Exists(String),
    #[error("invalid name {0:?}")]
    BadName(String),
    #[error(
        "{0:?} is reserved: the controller's certificate is for it; an agent's certificate is named after its host id"
    )]
    Reserved(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), CertsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

fn san(name: &str) -> Result<SanType, CertsError> {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(
            name.to_owned()
                .try_into()
                .map_err(|_| CertsError::BadName(name.to_owned()))?,
        )),
    }
}

/// Whose certificate is made: only the controller's carries the marker
/// agents check for, so no name an operator issues can stand in for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Controller,
    Agent,
}

fn leaf_params(cn: &str, names: &[String], role: Role) -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = std::iter::once(cn.to_owned())
        .chain(names.iter().cloned())
        .map(|n| san(&n))
        .collect::<Result<_, _>>()?;
    if role == Role::Controller {
        params.subject_alt_names.push(SanType::URI(
            CONTROLLER_MARKER
                .try_into()
                .map_err(|_| CertsError::BadName(CONTROLLER_MARKER.to_owned()))?,
        ));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// Creates the authority and the controller's certificate in `dir`; the
/// controller's certificate is valid for `names` (host names or IPs the CLI
/// and agents use to reach it) besides `hop3-controller`.
pub fn init(dir: &Path, names: &[String]) -> Result<(), CertsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(CertsError::Exists(ca_key_path.display().to_string()));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "hop3-backup CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&ca_key_path, &ca_key.serialize_pem(), 0o600)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    reissue_controller(dir, names)
}

/// Issues the controller's certificate again, with the authority in `dir`
/// (for new `names`, or to add the controller marker to a certificate made
/// before agents checked it).
pub fn reissue_controller(dir: &Path, names: &[String]) -> Result<(), CertsError> {
    sign(dir, dir, CONTROLLER_NAME, names, Role::Controller)
}

/// Issues the certificate of the agent of host `name`, signed by the
/// authority in `dir`, into `out`; the controller's name is refused.
pub fn issue_agent(dir: &Path, out: &Path, name: &str) -> Result<(), CertsError> {
    // Nor any name the controller is reached at: a certificate for it would
    // let its holder pass for the controller to the CLI.
    let controller = std::fs::read(dir.join(format!("{CONTROLLER_NAME}.pem"))).unwrap_or_default();
    if is_reserved_name(name)
        || hop3_wire::tls::pem_names(&controller).contains(&name.to_ascii_lowercase())
    {
        return Err(CertsError::Reserved(name.to_owned()));
    }
    sign(dir, out, name, &[], Role::Agent)
}

fn sign(
    dir: &Path,
    out: &Path,
    name: &str,
    names: &[String],
    role: Role,
) -> Result<(), CertsError> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).map_err(io(&dir.join("ca.pem")))?;
    let ca_key_pem =
        std::fs::read_to_string(dir.join("ca.key")).map_err(io(&dir.join("ca.key")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let cert = leaf_params(name, names, role)?.signed_by(&key, &issuer)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(io(out))?;
    write(
        &out.join(format!("{name}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    write(&out.join(format!("{name}.pem")), &cert.pem(), 0o644)?;
    if out != dir {
        write(&out.join("ca.pem"), &ca_pem, 0o644)?;
    }
    Ok(())
}
