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
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15);

/// How long the registry keeps an agent it no longer hears from, by
/// default: long enough for a host down over a weekend to come back listed.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

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
pub struct Registry {
    agents: RwLock<BTreeMap<String, Entry>>,
    /// With TLS, agents are reached over mutual TLS at https:// addresses.
    tls: Option<TlsFiles>,
    /// Agents silent for this long are dropped; None: kept until forgotten by hand.
    forget_after: Option<Duration>,
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
    /// A registry whose agents are reached with `tls` when their address is
    /// https://, and which drops agents silent for `forget_after` (never when None).
    pub fn new(tls: Option<TlsFiles>, forget_after: Option<Duration>) -> Self {
        Self {
            agents: RwLock::default(),
            tls,
            forget_after,
        }
    }

    /// Drops the agents silent for longer than `forget_after`. Done whenever
    /// the registry is listed or written rather than by a timer: what is
    /// shown is then exact, and there is nothing to stop at shutdown.
    fn expire(&self, agents: &mut BTreeMap<String, Entry>) {
        let Some(after) = self.forget_after else {
            return;
        };
        agents.retain(|host_id, e| {
            let keep = !e.expired(after);
            if !keep {
                tracing::info!(
                    host_id,
                    silent_s = e.last_seen.elapsed().as_secs(),
                    "agent forgotten: no heartbeat for longer than --forget-agents-after"
                );
            }
            keep
        });
    }

    /// Forgets the offline agent of `host_id` (an operator removing a host
    /// for good). An online one is refused, since its next heartbeat would
    /// bring it back, and so is the in-process agent.
    pub fn forget(&self, host_id: &str) -> Result<()> {
        let mut agents = self.agents.write().expect("registry poisoned");
        self.expire(&mut agents);
        match agents.get(host_id) {
            None => Err(ControllerError::HostNotFound(host_id.to_owned())),
            Some(e) if e.pinned => Err(ControllerError::LocalAgent(host_id.to_owned())),
            Some(e) if e.online() => Err(ControllerError::HostOnline {
                host: host_id.to_owned(),
                seen_secs: e.last_seen.elapsed().as_secs(),
            }),
            Some(_) => {
                agents.remove(host_id);
                tracing::info!(host_id, "agent forgotten on request");
                Ok(())
            }
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
        // An agent forgotten for its silence that calls in again is new.
        self.expire(&mut agents);
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

    /// Every agent registered since start, online or not, but those
    /// forgotten (by hand or for their silence).
    pub fn list(&self) -> Vec<AgentView> {
        let mut agents = self.agents.write().expect("registry poisoned");
        self.expire(&mut agents);
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

    /// Whether an agent silent for `after` is to be forgotten: never the
    /// in-process one, never one still online, whatever `after` says.
    fn expired(&self, after: Duration) -> bool {
        !self.online() && self.last_seen.elapsed() >= after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `host_id` look silent for `silence` (kept to minutes: the
    /// monotonic clock starts at boot, and a CI machine may be fresh).
    fn silence(r: &Registry, host_id: &str, silence: Duration) {
        let mut agents = r.agents.write().unwrap();
        let e = agents.get_mut(host_id).unwrap();
        e.last_seen = Instant::now().checked_sub(silence).unwrap();
    }

    fn hosts(r: &Registry) -> Vec<String> {
        r.list().into_iter().map(|a| a.host_id).collect()
    }

    #[tokio::test]
    async fn forget_refuses_online_unknown_and_local_agents() {
        let r = Registry::new(None, None);
        r.register("local", "http://127.0.0.1:1", "v", vec![], true)
            .unwrap();
        r.register("web-1", "http://127.0.0.1:2", "v", vec![], false)
            .unwrap();
        assert!(matches!(
            r.forget("web-1"),
            Err(ControllerError::HostOnline { .. })
        ));
        assert!(matches!(
            r.forget("nope"),
            Err(ControllerError::HostNotFound(_))
        ));
        silence(&r, "local", Duration::from_secs(100));
        assert!(matches!(
            r.forget("local"),
            Err(ControllerError::LocalAgent(_))
        ));
        silence(&r, "web-1", OFFLINE_AFTER + Duration::from_secs(1));
        r.forget("web-1").unwrap();
        assert_eq!(hosts(&r), ["local"]);
        assert!(matches!(
            r.forget("web-1"),
            Err(ControllerError::HostNotFound(_))
        ));
    }

    #[tokio::test]
    async fn silent_agents_expire_but_never_online_or_local_ones() {
        let after = Duration::from_secs(60);
        let r = Registry::new(None, Some(after));
        r.register("local", "http://127.0.0.1:1", "v", vec![], true)
            .unwrap();
        for h in ["a", "b"] {
            r.register(h, "http://127.0.0.1:2", "v", vec![], false)
                .unwrap();
        }
        silence(&r, "local", after * 2);
        silence(&r, "a", after + Duration::from_secs(1));
        silence(&r, "b", after - Duration::from_secs(1));
        assert_eq!(hosts(&r), ["b", "local"]);
        // A forgotten host calling in again is registered anew.
        r.register("a", "http://127.0.0.1:2", "v", vec!["app".into()], false)
            .unwrap();
        let a = r.list().into_iter().find(|v| v.host_id == "a").unwrap();
        assert!(a.online && a.apps == ["app"], "{a:?}");
        // Without an expiry, nothing goes by itself.
        let keep = Registry::new(None, None);
        keep.register("a", "http://127.0.0.1:2", "v", vec![], false)
            .unwrap();
        silence(&keep, "a", Duration::from_secs(100));
        assert_eq!(hosts(&keep), ["a"]);
    }
}
