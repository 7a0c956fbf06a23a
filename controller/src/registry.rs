//! The agents the controller knows: who they are, where they listen, when
//! they were last heard from.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::ListAppsRequest;
use hop3_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Channel, Endpoint};

use hop3_agent::tls::TlsFiles;

use crate::error::{ControllerError, Result};

/// How often agents are asked to call in.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// An agent is offline after this long without a heartbeat.
const OFFLINE_AFTER: Duration = Duration::from_secs(15);

/// A client for one agent.
pub type AgentClient = AgentServiceClient<Channel>;

#[derive(Clone)]
struct Entry {
    address: String,
    version: String,
    /// The in-process agent never heartbeats and is always online.
    pinned: bool,
    last_seen: Instant,
    last_seen_at: SystemTime,
    apps: Vec<String>,
    client: AgentClient,
}

/// What the controller knows of one agent.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub host_id: String,
    pub address: String,
    pub version: String,
    pub online: bool,
    pub last_seen: SystemTime,
    pub apps: Vec<String>,
}

/// Registered agents by host id.
#[derive(Default)]
pub struct Registry {
    agents: RwLock<BTreeMap<String, Entry>>,
    /// With TLS, agents are reached over mutual TLS at https:// addresses.
    tls: Option<TlsFiles>,
}

/// Connects lazily to an agent, with keepalives so a dead peer is noticed;
/// over mutual TLS to an https:// address, checking the agent's certificate
/// is for `host_id`.
pub fn agent_client(address: &str, host_id: &str, tls: Option<&TlsFiles>) -> Result<AgentClient> {
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| {
            ControllerError::InvalidArgument(format!("bad agent address {address:?}: {e}"))
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if address.starts_with("https://") {
        let tls = tls.ok_or_else(|| {
            ControllerError::InvalidArgument(format!(
                "agent {host_id} is at an https:// address but the controller has no --tls-dir"
            ))
        })?;
        endpoint = endpoint.tls_config(tls.client(host_id)).map_err(|e| {
            ControllerError::InvalidArgument(format!("TLS for agent {host_id}: {e}"))
        })?;
    }
    Ok(AgentServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

impl Registry {
    /// A registry whose agents are reached with `tls` when their address is https://.
    pub fn new(tls: Option<TlsFiles>) -> Self {
        Self {
            agents: RwLock::default(),
            tls,
        }
    }

    /// Records an agent's registration or heartbeat.
    pub fn register(
        &self,
        host_id: &str,
        address: &str,
        version: &str,
        apps: Vec<String>,
        pinned: bool,
    ) -> Result<()> {
        let mut agents = self.agents.write().expect("registry poisoned");
        let now = Instant::now();
        match agents.get_mut(host_id) {
            Some(e) if e.address == address => {
                if !e.online() {
                    tracing::info!(host_id, address, "agent back online");
                }
                e.last_seen = now;
                e.last_seen_at = SystemTime::now();
                e.version = version.to_owned();
                e.apps = apps;
            }
            _ => {
                tracing::info!(host_id, address, version, "agent registered");
                agents.insert(
                    host_id.to_owned(),
                    Entry {
                        address: address.to_owned(),
                        version: version.to_owned(),
                        pinned,
                        last_seen: now,
                        last_seen_at: SystemTime::now(),
                        apps,
                        client: agent_client(address, host_id, self.tls.as_ref())?,
                    },
                );
            }
        }
        Ok(())
    }

    /// The client of an online agent.
    pub fn client(&self, host_id: &str) -> Option<AgentClient> {
        let agents = self.agents.read().expect("registry poisoned");
        agents
            .get(host_id)
            .filter(|e| e.online())
            .map(|e| e.client.clone())
    }

    /// Every agent ever registered since start, online or not.
    pub fn list(&self) -> Vec<AgentView> {
        let agents = self.agents.read().expect("registry poisoned");
        agents
            .iter()
            .map(|(h, e)| AgentView {
                host_id: h.clone(),
                address: e.address.clone(),
                version: e.version.clone(),
                online: e.online(),
                last_seen: if e.pinned {
                    SystemTime::now()
                } else {
                    e.last_seen_at
                },
                apps: e.apps.clone(),
            })
            .collect()
    }

    /// The host to restore onto when none is named and the backup does not
    /// say: the only online agent, if there is exactly one.
    pub fn only_online(&self) -> Option<String> {
        let online = self.online();
        (online.len() == 1).then(|| online[0].0.clone())
    }

    fn online(&self) -> Vec<(String, AgentClient)> {
        let agents = self.agents.read().expect("registry poisoned");
        agents
            .iter()
            .filter(|(_, e)| e.online())
            .map(|(h, e)| (h.clone(), e.client.clone()))
            .collect()
    }

    /// The host that serves `app`, asking each online agent now (its list may
    /// have changed since its last heartbeat).
    pub async fn find_app(&self, app: &str, host: Option<&str>) -> Result<(String, AgentClient)> {
        let mut found = Vec::new();
        let candidates = match host {
            Some(h) => vec![(
                h.to_owned(),
                self.client(h)
                    .ok_or_else(|| ControllerError::HostOffline(h.to_owned()))?,
            )],
            None => self.online(),
        };
        for (host, mut client) in candidates {
            let asked = tokio::time::timeout(
                Duration::from_secs(10),
                client.list_apps(ListAppsRequest {}),
            )
            .await;
            match asked {
                Ok(Ok(resp)) if resp.get_ref().apps.iter().any(|a| a == app) => {
                    found.push((host, client))
                }
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::warn!(host, error = %status.message(), "agent did not list its apps")
                }
                Err(_) => tracing::warn!(host, "agent did not list its apps in time"),
            }
        }
        match found.len() {
            0 => Err(ControllerError::AppNotFound(app.to_owned())),
            1 => Ok(found.remove(0)),
            _ => Err(ControllerError::Ambiguous {
                app: app.to_owned(),
                hosts: found
                    .iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

impl Entry {
    fn online(&self) -> bool {
        self.pinned || self.last_seen.elapsed() < OFFLINE_AFTER
    }
}
