//! Looking at a system from outside: health checks (plain and TLS), and
//! the directories and files a test watches.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::process::wait_until;

/// One `grpc.health.v1.Health/Check` for the whole server (service ""):
/// `Ok(true)` when SERVING. Runs on a thread of its own with its own
/// runtime, so it works from plain tests and from async ones alike.
pub fn health_check(url: &str) -> Result<bool> {
    health_check_tls(url, None)
}

/// [`health_check`] over TLS as `tls` says (plain without it): for an
/// `https://` controller or agent.
pub fn health_check_tls(url: &str, tls: Option<&TlsProbe>) -> Result<bool> {
    let url = url.to_owned();
    let tls = tls.map(TlsProbe::client_config).transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                use tonic_health::pb::health_check_response::ServingStatus;
                use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
                let mut endpoint = tonic::transport::Endpoint::from_shared(url)?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2));
                if let Some(tls) = tls {
                    endpoint = endpoint.tls_config(tls)?;
                }
                let channel = endpoint.connect().await?;
                let response = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(response.into_inner().status == ServingStatus::Serving as i32)
            })
        })
        .join()
        .map_err(|_| anyhow!("the health check thread panicked"))?
    })
}

/// How a process serving TLS is health-checked: the authority its
/// certificate must chain to, the name it must be for (`hop3-controller`
/// for the controller, the host ID for an agent), and the client
/// certificate to present to a server that requires one (an agent does).
#[derive(Clone, Debug)]
pub struct TlsProbe {
    /// PEM of the certificate authority (`ca.pem`).
    pub ca: PathBuf,
    /// The name the server's certificate must be valid for.
    pub domain: String,
    /// PEM certificate and key to present, if any.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsProbe {
    /// The client side of TLS to the server probed.
    pub fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        // A workspace build links aws-lc-rs too (the controller's S3 client).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &Path| {
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .domain_name(self.domain.clone());
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// What counts as a started process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Its health service answers SERVING.
    Serving,
    /// It accepts TCP connections: for one that is not meant to turn
    /// healthy (an agent its controller refuses).
    Listening,
}

impl Ready {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Ready::Serving => "SERVING",
            Ready::Listening => "listening",
        }
    }
}

/// Where and how [`Process::start_probed`] checks that a process started.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The address it listens on and is checked at.
    pub host: String,
    /// TLS for its health check, when it serves TLS.
    pub tls: Option<TlsProbe>,
    /// What counts as started.
    pub ready: Ready,
}

impl Probe {
    /// Plain gRPC health at `host`, until SERVING.
    pub fn plain(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            tls: None,
            ready: Ready::Serving,
        }
    }

    /// Health over TLS at 127.0.0.1, until SERVING.
    pub fn tls(tls: TlsProbe) -> Self {
        Self {
            tls: Some(tls),
            ..Self::plain("127.0.0.1")
        }
    }

    /// The same probe, waiting only until the process listens.
    pub fn listening(self) -> Self {
        Self {
            ready: Ready::Listening,
            ..self
        }
    }
}

/// The sorted names in `dir`; none when it does not exist (yet, or any
/// more: the product creates and removes these directories under us).
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        }
    }
    names.sort();
    Ok(names)
}

/// Waits until the names in `dir` are exactly `expected` (sorted), for at
/// most `deadline`: the product may remove leftovers (an old tree after a
/// restore, a failed backup's files) in the background, after it answered.
pub fn wait_for_entries(dir: &Path, expected: &[&str], deadline: Duration) -> Result<()> {
    let mut last = Vec::new();
    let waited = wait_until(deadline, "the directory to settle", || {
        last = list_dir(dir)?;
        Ok((last == expected).then_some(()))
    });
    waited.with_context(|| format!("{} holds {last:?}, expected {expected:?}", dir.display()))
}

/// Total size of the regular files under `dir` (0 when it is gone).
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
