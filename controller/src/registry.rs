//! The agents the controller knows: who they are, where they listen, when
//! they were last heard from.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use hop3_proto::MAX_MESSAGE_SIZE;
use hop3_proto::v1::ListAppsRequest;
use hop3_proto::v1::agent_service_client::AgentServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use hop3_wire::tls::TlsFiles;

use crate::error::{ControllerError, Result};

/// How often agents are asked to call in.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// An agent is offline after this long without a heartbeat.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(15);

/// How long the registry keeps an agent it no longer hears from, by
/// default: long enough for a host down over a weekend to come back listed.
/// The flag's default says it as `7d`; a test holds the two together.
#[cfg(test)]
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a live agent has to answer before a registration under its host
/// id from another process is refused.
const LIVENESS_PROBE: Duration = Duration::from_secs(2);

/// Fan-outs in a row an agent must miss to be shown degraded.
const DEGRADED_AFTER: u32 = 2;

/// Longest wait for the answers of several agents asked at once.
pub const FAN_OUT_DEADLINE: Duration = Duration::from_secs(2);

/// Adds the controller's join token to every call to a plain-mode agent
/// (over TLS the certificate speaks for the controller).
#[derive(Clone, Default)]
pub struct Credential(Option<MetadataValue<Ascii>>);

impl Interceptor for Credential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client for one agent.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, Credential>>;

/// An agent's registration or heartbeat.
#[derive(Clone, Debug)]
pub struct Hello {
    pub host_id: String,
    pub address: String,
    pub version: String,
    pub apps: Vec<String>,
    /// Random per agent process.
    pub instance: String,
}

#[derive(Clone)]
struct Entry {
    address: String,
    version: String,
    /// The in-process agent never heartbeats and is always online.
    pinned: bool,
    instance: String,
    last_seen: Instant,
    last_seen_at: SystemTime,
    apps: Vec<String>,
    /// Fan-outs in a row this agent did not answer in time.
    misses: u32,
    channel: Channel,
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
    /// Online, but it missed the deadline of the last fan-outs.
    pub degraded: bool,
}

/// Registered agents by host id.
pub struct Registry {
    agents: RwLock<BTreeMap<String, Entry>>,
    /// With TLS, agents are reached over mutual TLS at https:// addresses.
    tls: Option<TlsFiles>,
    /// Without TLS: the key each agent process's call token is derived from
    /// (new at every start: agents register again and get new tokens).
    call_key: Option<[u8; 32]>,
    /// Agents silent for this long are dropped; None: kept until forgotten by hand.
    forget_after: Option<Duration>,
}

/// Connects lazily to an agent, with keepalives so a dead peer is noticed;
/// over mutual TLS to an https:// address, checking the agent's certificate
/// is for `host_id`.
fn agent_channel(address: &str, host_id: &str, tls: Option<&TlsFiles>) -> Result<Channel> {
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
    Ok(endpoint.connect_lazy())
}

/// Whether the agent at the end of `channel` serves as a registered agent
/// does (health SERVING, or too slow to tell, which a dead one is not). A
/// restarted agent is NOT_SERVING until it has registered, so it can take
/// its host back from its dead predecessor at once.
async fn still_serving(channel: Channel) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let asked = tokio::time::timeout(
        LIVENESS_PROBE,
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await;
    match asked {
        Err(_) => true,
        Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
        Ok(Err(_)) => false,
    }
}

impl Registry {
    /// A registry whose agents are reached with `tls` when their address is
    /// https://, else with the join token `join`, and which drops agents
    /// silent for `forget_after` (never when None).
    pub fn new(tls: Option<TlsFiles>, plain: bool, forget_after: Option<Duration>) -> Self {
        Self {
            agents: RwLock::default(),
            tls,
            call_key: plain.then(rand::random),
            forget_after,
        }
    }

    /// The token the controller presents to the agent process `instance` of
    /// `host_id` (plain mode): its own, so that one agent's cannot open
    /// another.
    fn call_token(&self, host_id: &str, instance: &str) -> Option<String> {
        use hmac::{Hmac, KeyInit, Mac};
        let key = self.call_key.as_ref()?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(host_id.as_bytes());
        mac.update(&[0]);
        mac.update(instance.as_bytes());
        Some(format!(
            "hop3call_{}",
            hex::encode(mac.finalize().into_bytes())
        ))
    }

    fn client(&self, channel: Channel, token: Option<&str>) -> AgentClient {
        let credential = token.and_then(|t| {
            let mut v = MetadataValue::try_from(format!("Bearer {t}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        AgentServiceClient::with_interceptor(channel, Credential(credential))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Records the controller's in-process agent, reached over `channel`:
    /// always online, never forgotten, and its host id never taken by a
    /// network registration.
    pub fn pin_local(&self, host_id: &str, channel: Channel) {
        let mut agents = self.agents.write().expect("registry poisoned");
        agents.insert(
            host_id.to_owned(),
            Entry {
                address: "in-process".to_owned(),
                version: hop3_proto::HOP3_VERSION.to_owned(),
                pinned: true,
                instance: String::new(),
                last_seen: Instant::now(),
                last_seen_at: SystemTime::now(),
                apps: Vec::new(),
                misses: 0,
                client: AgentServiceClient::with_interceptor(
                    channel.clone(),
                    Credential::default(),
                )
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
                channel,
            },
        );
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

    /// Records an agent's registration or heartbeat. A host id held by a
    /// live agent of another process is refused (the in-process agent's
    /// always): one that is down, or restarted and not yet registered, is
    /// taken over.
    ///
    /// Returns the token the agent is to ask of the controller's calls
    /// (plain mode; empty over TLS).
    pub async fn register(&self, hello: &Hello) -> Result<String> {
        let token = self
            .call_token(&hello.host_id, &hello.instance)
            .unwrap_or_default();
        if let Some(holder) = self.record(hello, false)? {
            if still_serving(holder).await {
                let address = self
                    .agents
                    .read()
                    .expect("registry poisoned")
                    .get(&hello.host_id)
                    .map(|e| e.address.clone())
                    .unwrap_or_default();
                tracing::warn!(host_id = %hello.host_id, claimed_by = %hello.address, held_by = %address, "refused a registration under the host id of a live agent");
                return Err(ControllerError::HostTaken {
                    host: hello.host_id.clone(),
                    address,
                });
            }
            self.record(hello, true)?;
        }
        Ok(token)
    }

    /// Records `hello`, or gives back the channel of the live agent of
    /// another process that holds its host id (unless `take_over`).
    fn record(&self, hello: &Hello, take_over: bool) -> Result<Option<Channel>> {
        let mut agents = self.agents.write().expect("registry poisoned");
        // An agent forgotten for its silence that calls in again is new.
        self.expire(&mut agents);
        let now = Instant::now();
        let host_id = hello.host_id.as_str();
        match agents.get_mut(host_id) {
            Some(e) if e.pinned => {
                tracing::warn!(host_id, claimed_by = %hello.address, "refused a registration under the in-process agent's host id");
                return Err(ControllerError::LocalHostTaken(host_id.to_owned()));
            }
            Some(e) if e.instance == hello.instance && e.address == hello.address => {
                if !e.online() {
                    tracing::info!(host_id, address = %hello.address, "agent back online");
                }
                e.last_seen = now;
                e.last_seen_at = SystemTime::now();
                e.version.clone_from(&hello.version);
                e.apps.clone_from(&hello.apps);
                return Ok(None);
            }
            Some(e) if e.online() && !take_over => return Ok(Some(e.channel.clone())),
            _ => {}
        }
        tracing::info!(host_id, address = %hello.address, version = %hello.version, "agent registered");
        let channel = agent_channel(&hello.address, host_id, self.tls.as_ref())?;
        agents.insert(
            host_id.to_owned(),
            Entry {
                address: hello.address.clone(),
                version: hello.version.clone(),
                pinned: false,
                instance: hello.instance.clone(),
                last_seen: now,
                last_seen_at: SystemTime::now(),
                apps: hello.apps.clone(),
                misses: 0,
                client: self.client(
                    channel.clone(),
                    self.call_token(host_id, &hello.instance).as_deref(),
                ),
                channel,
            },
        );
        Ok(None)
    }

    /// The client of an online agent.
    pub fn client_of(&self, host_id: &str) -> Option<AgentClient> {
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
                degraded: e.online() && e.misses >= DEGRADED_AFTER,
            })
            .collect()
    }

    /// The host to restore onto when none is named and the backup does not
    /// say: the only online agent, if there is exactly one.
    pub fn only_online(&self) -> Option<String> {
        let online = self.online();
        (online.len() == 1).then(|| online[0].0.clone())
    }

    /// Every online agent with its client.
    pub fn online(&self) -> Vec<(String, AgentClient)> {
        let agents = self.agents.read().expect("registry poisoned");
        agents
            .iter()
            .filter(|(_, e)| e.online())
            .map(|(h, e)| (h.clone(), e.client.clone()))
            .collect()
    }

    /// The apps each of `hosts` serves, asked of them all at once with one
    /// deadline for the whole fan-out, so that a hung host delays nobody
    /// more than [`FAN_OUT_DEADLINE`]: each host's answer, or None.
    pub async fn ask_apps(
        &self,
        hosts: Vec<(String, AgentClient)>,
    ) -> Vec<(String, AgentClient, Option<Vec<String>>)> {
        let asks = hosts.into_iter().map(|(host, client)| async move {
            let asked = tokio::time::timeout(
                FAN_OUT_DEADLINE,
                client.clone().list_apps(ListAppsRequest {}),
            )
            .await;
            let apps = match asked {
                Ok(Ok(resp)) => Some(resp.into_inner().apps),
                Ok(Err(status)) => {
                    tracing::warn!(host, error = %status.message(), "agent did not list its apps");
                    None
                }
                Err(_) => {
                    tracing::warn!(host, "agent did not list its apps in time");
                    None
                }
            };
            (host, client, apps)
        });
        let answers = futures::future::join_all(asks).await;
        let mut agents = self.agents.write().expect("registry poisoned");
        for (host, _, apps) in &answers {
            if let Some(e) = agents.get_mut(host) {
                e.misses = if apps.is_some() { 0 } else { e.misses + 1 };
            }
        }
        answers
    }

    /// The apps `host` reported with its last heartbeat.
    pub fn reported_apps(&self, host: &str) -> Vec<String> {
        let agents = self.agents.read().expect("registry poisoned");
        agents.get(host).map(|e| e.apps.clone()).unwrap_or_default()
    }

    /// The host that serves `app`, asking every online agent now, all at
    /// once (a list may have changed since the last heartbeat); a host that
    /// does not answer in time is judged by its last heartbeat's list.
    pub async fn find_app(&self, app: &str, host: Option<&str>) -> Result<(String, AgentClient)> {
        let candidates = match host {
            Some(h) => vec![(
                h.to_owned(),
                self.client_of(h)
                    .ok_or_else(|| ControllerError::HostOffline(h.to_owned()))?,
            )],
            None => self.online(),
        };
        let mut found = Vec::new();
        for (host, client, apps) in self.ask_apps(candidates).await {
            let apps = apps.unwrap_or_else(|| self.reported_apps(&host));
            if apps.iter().any(|a| a == app) {
                found.push((host, client));
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

    fn hello(host_id: &str, apps: Vec<String>) -> Hello {
        Hello {
            host_id: host_id.into(),
            address: "http://127.0.0.1:2".into(),
            version: "v".into(),
            apps,
            instance: "one".into(),
        }
    }

    fn pin(r: &Registry, host_id: &str) {
        r.pin_local(
            host_id,
            Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
        );
    }

    fn hosts(r: &Registry) -> Vec<String> {
        r.list().into_iter().map(|a| a.host_id).collect()
    }

    #[tokio::test]
    async fn forget_refuses_online_unknown_and_local_agents() {
        let r = Registry::new(None, true, None);
        pin(&r, "local");
        r.register(&hello("web-1", vec![])).await.unwrap();
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
        let r = Registry::new(None, true, Some(after));
        pin(&r, "local");
        for h in ["a", "b"] {
            r.register(&hello(h, vec![])).await.unwrap();
        }
        silence(&r, "local", after * 2);
        silence(&r, "a", after + Duration::from_secs(1));
        silence(&r, "b", after - Duration::from_secs(1));
        assert_eq!(hosts(&r), ["b", "local"]);
        // A forgotten host calling in again is registered anew.
        r.register(&hello("a", vec!["app".into()])).await.unwrap();
        let a = r.list().into_iter().find(|v| v.host_id == "a").unwrap();
        assert!(a.online && a.apps == ["app"], "{a:?}");
        // Without an expiry, nothing goes by itself.
        let keep = Registry::new(None, true, None);
        keep.register(&hello("a", vec![])).await.unwrap();
        silence(&keep, "a", Duration::from_secs(100));
        assert_eq!(hosts(&keep), ["a"]);
    }

    #[tokio::test]
    async fn the_local_host_is_never_taken_and_a_dead_agents_is() {
        let r = Registry::new(None, true, None);
        pin(&r, "local");
        assert!(matches!(
            r.register(&hello("local", vec![])).await,
            Err(ControllerError::LocalHostTaken(_))
        ));
        r.register(&hello("web-1", vec![])).await.unwrap();
        // Another process, while the first is online by its heartbeat but
        // answers nothing at its address (nothing listens on port 2): taken over.
        let next = Hello {
            instance: "two".into(),
            apps: vec!["new".into()],
            ..hello("web-1", vec![])
        };
        let token = r.register(&next).await.unwrap();
        let web = r.list().into_iter().find(|v| v.host_id == "web-1").unwrap();
        assert_eq!(web.apps, ["new"]);
        // Each agent process has a call token of its own.
        assert!(token.starts_with("hop3call_"));
        assert_ne!(
            token,
            r.register(&hello("web-1", vec![]))
                .await
                .unwrap_or_default()
        );
        assert_ne!(token, r.call_token("web-2", "two").unwrap());
    }
}
