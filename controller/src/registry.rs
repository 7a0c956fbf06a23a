//! The agents the controller knows: who they are, where they listen, when
//! they were last heard from, and which apps each serves (the index the
//! controller finds an app's host by, kept current by the agents'
//! heartbeats, so that no request waits on asking them).

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

/// How long missed fan-out deadlines keep an agent shown degraded.
const MISSES_COUNT_FOR: Duration = Duration::from_secs(60);

/// A heartbeat older than this is late: two were missed.
const HEARTBEAT_LATE: Duration = Duration::from_secs(2 * HEARTBEAT.as_secs() + 1);

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
    pub apps: AppsReport,
    /// Random per agent process.
    pub instance: String,
    /// The agent cannot read its apps directory now.
    pub apps_stale: bool,
}

/// How a heartbeat reports the agent's apps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppsReport {
    /// The whole list (at registration, after a change, and always from
    /// agents that send no digest).
    Whole(Vec<String>),
    /// Only `hop3_proto::app_list::digest` of the list.
    Digest(String),
}

impl AppsReport {
    /// The report of a `RegisterRequest`: an agent that sends no digest
    /// (an older one) sends its whole list every time.
    pub fn from_wire(apps: Vec<String>, digest: String, included: bool) -> Self {
        if included || digest.is_empty() {
            Self::Whole(apps)
        } else {
            Self::Digest(digest)
        }
    }
}

/// What the controller answers a registration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Welcome {
    /// The token the agent is to ask of the controller's calls (plain mode;
    /// empty over TLS).
    pub call_token: String,
    /// The registry does not hold the app list the agent's digest names.
    pub send_apps: bool,
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
    /// Sorted.
    apps: Vec<String>,
    /// The agent said it cannot read its apps directory now.
    apps_stale: bool,
    /// Fan-outs in a row this agent did not answer in time.
    misses: u32,
    /// When it last did not.
    missed_at: Option<Instant>,
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
    /// Online, but late with its heartbeats, unable to list its apps, or
    /// it missed the deadline of the last fan-outs.
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
                apps_stale: false,
                misses: 0,
                missed_at: None,
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
    /// Returns the agent's call token, and whether it is to send its app
    /// list whole.
    pub async fn register(&self, hello: &Hello) -> Result<Welcome> {
        let call_token = self
            .call_token(&hello.host_id, &hello.instance)
            .unwrap_or_default();
        let recorded = self.record(hello, false)?;
        let send_apps = match recorded {
            Recorded::Held(holder) => {
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
                match self.record(hello, true)? {
                    Recorded::Done { send_apps } => send_apps,
                    Recorded::Held(_) => unreachable!("a take-over records"),
                }
            }
            Recorded::Done { send_apps } => send_apps,
        };
        Ok(Welcome {
            call_token,
            send_apps,
        })
    }

    /// Records `hello`, or gives back the channel of the live agent of
    /// another process that holds its host id (unless `take_over`).
    fn record(&self, hello: &Hello, take_over: bool) -> Result<Recorded> {
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
                let send_apps = e.take_apps(host_id, hello);
                return Ok(Recorded::Done { send_apps });
            }
            Some(e) if e.online() && !take_over => {
                return Ok(Recorded::Held(e.channel.clone()));
            }
            _ => {}
        }
        tracing::info!(host_id, address = %hello.address, version = %hello.version, "agent registered");
        let channel = agent_channel(&hello.address, host_id, self.tls.as_ref())?;
        let mut entry = Entry {
            address: hello.address.clone(),
            version: hello.version.clone(),
            pinned: false,
            instance: hello.instance.clone(),
            last_seen: now,
            last_seen_at: SystemTime::now(),
            apps: Vec::new(),
            apps_stale: false,
            misses: 0,
            missed_at: None,
            client: self.client(
                channel.clone(),
                self.call_token(host_id, &hello.instance).as_deref(),
            ),
            channel,
        };
        let send_apps = entry.take_apps(host_id, hello);
        agents.insert(host_id.to_owned(), entry);
        Ok(Recorded::Done { send_apps })
    }

    /// Records the app list of the in-process agent, which has no
    /// heartbeat to bring it.
    pub fn report_local_apps(&self, host_id: &str, apps: Vec<String>, stale: bool) {
        let mut agents = self.agents.write().expect("registry poisoned");
        if let Some(e) = agents.get_mut(host_id).filter(|e| e.pinned) {
            e.set_apps(host_id, apps, stale);
        }
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
                degraded: e.degraded(),
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
                if apps.is_some() {
                    e.misses = 0;
                } else {
                    e.misses += 1;
                    e.missed_at = Some(Instant::now());
                }
            }
        }
        answers
    }

    /// The online hosts among `hosts` whose reported apps include `app`.
    fn claimants(&self, app: &str, hosts: &[(String, AgentClient)]) -> Vec<(String, AgentClient)> {
        let agents = self.agents.read().expect("registry poisoned");
        hosts
            .iter()
            .filter(|(h, _)| {
                agents
                    .get(h)
                    .is_some_and(|e| e.apps.iter().any(|a| a == app))
            })
            .cloned()
            .collect()
    }

    /// The host that serves `app` (on `host` when named), by the apps the
    /// agents reported: no agent is asked. Only when none reported it
    /// (an app made in the last second) are the candidates asked, all at
    /// once, within [`FAN_OUT_DEADLINE`].
    pub async fn find_app(&self, app: &str, host: Option<&str>) -> Result<(String, AgentClient)> {
        let candidates = match host {
            Some(h) => vec![(
                h.to_owned(),
                self.client_of(h)
                    .ok_or_else(|| ControllerError::HostOffline(h.to_owned()))?,
            )],
            None => self.online(),
        };
        let mut found = self.claimants(app, &candidates);
        let mut silent = Vec::new();
        if found.is_empty() {
            for (host, client, apps) in self.ask_apps(candidates).await {
                match apps {
                    Some(apps) if apps.iter().any(|a| a == app) => found.push((host, client)),
                    Some(_) => {}
                    None => silent.push(host),
                }
            }
        }
        match found.len() {
            0 if silent.is_empty() => Err(ControllerError::AppNotFound(app.to_owned())),
            0 => Err(ControllerError::AppNotFoundUnanswered {
                app: app.to_owned(),
                silent: silent.join(", "),
            }),
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

/// What recording a registration did.
enum Recorded {
    /// Recorded; whether the agent is to send its app list whole.
    Done { send_apps: bool },
    /// Not recorded: a live agent of another process holds the host id.
    Held(Channel),
}

impl Entry {
    fn online(&self) -> bool {
        self.pinned || self.last_seen.elapsed() < OFFLINE_AFTER
    }

    /// Online but not to be relied on: heartbeats late (a frozen or
    /// overloaded host), its apps unreadable, or its answers too slow.
    fn degraded(&self) -> bool {
        let late = !self.pinned && self.last_seen.elapsed() > HEARTBEAT_LATE;
        // Nothing may ask again soon (the index answers most questions):
        // missed deadlines count for a while, not for ever.
        let missing = self.misses >= DEGRADED_AFTER
            && self
                .missed_at
                .is_some_and(|t| t.elapsed() < MISSES_COUNT_FOR);
        self.online() && (late || self.apps_stale || missing)
    }

    /// Takes the app list `hello` brings; true when it brings only a
    /// digest of a list other than the one held.
    fn take_apps(&mut self, host_id: &str, hello: &Hello) -> bool {
        match &hello.apps {
            AppsReport::Whole(apps) => {
                self.set_apps(host_id, apps.clone(), hello.apps_stale);
                false
            }
            AppsReport::Digest(d) => {
                self.apps_stale = hello.apps_stale;
                *d != hop3_proto::app_list::digest(&self.apps)
            }
        }
    }

    fn set_apps(&mut self, host_id: &str, mut apps: Vec<String>, stale: bool) {
        apps.sort();
        if apps != self.apps {
            tracing::debug!(host_id, apps = apps.len(), "agent's app list changed");
            self.apps = apps;
        }
        self.apps_stale = stale;
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
            apps: AppsReport::Whole(apps),
            instance: "one".into(),
            apps_stale: false,
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
            ..hello("web-1", vec!["new".into()])
        };
        let token = r.register(&next).await.unwrap().call_token;
        let web = r.list().into_iter().find(|v| v.host_id == "web-1").unwrap();
        assert_eq!(web.apps, ["new"]);
        // Each agent process has a call token of its own.
        assert!(token.starts_with("hop3call_"));
        assert_ne!(
            token,
            r.register(&hello("web-1", vec![]))
                .await
                .unwrap_or_default()
                .call_token
        );
        assert_ne!(token, r.call_token("web-2", "two").unwrap());
    }

    /// A heartbeat that carries only the digest of `apps`.
    fn beat(host_id: &str, apps: &[&str]) -> Hello {
        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
        Hello {
            apps: AppsReport::Digest(hop3_proto::app_list::digest(&apps)),
            ..hello(host_id, Vec::new())
        }
    }

    fn apps_of(r: &Registry, host_id: &str) -> Vec<String> {
        r.list()
            .into_iter()
            .find(|v| v.host_id == host_id)
            .unwrap()
            .apps
    }

    #[tokio::test]
    async fn heartbeats_keep_the_app_index_with_digests() {
        let r = Registry::new(None, true, None);
        let welcome = r
            .register(&hello("web-1", vec!["b".into(), "a".into()]))
            .await
            .unwrap();
        assert!(!welcome.send_apps);
        assert_eq!(apps_of(&r, "web-1"), ["a", "b"]);
        // The same list by its digest: nothing to send.
        assert!(
            !r.register(&beat("web-1", &["a", "b"]))
                .await
                .unwrap()
                .send_apps
        );
        assert_eq!(apps_of(&r, "web-1"), ["a", "b"]);
        // A digest of a list the registry lacks: the agent is asked for it
        // and the old list stands meanwhile.
        assert!(r.register(&beat("web-1", &["a"])).await.unwrap().send_apps);
        assert_eq!(apps_of(&r, "web-1"), ["a", "b"]);
        r.register(&hello("web-1", vec!["a".into()])).await.unwrap();
        assert_eq!(apps_of(&r, "web-1"), ["a"]);
        // A controller that restarted knows no list: a digest alone asks for
        // it (but for an empty list, which it then holds).
        let fresh = Registry::new(None, true, None);
        assert!(
            fresh
                .register(&beat("web-1", &["a"]))
                .await
                .unwrap()
                .send_apps
        );
        assert!(!fresh.register(&beat("web-2", &[])).await.unwrap().send_apps);
        // An agent without digests sends its whole list every time.
        let old = Hello {
            apps: AppsReport::from_wire(vec!["c".into()], String::new(), false),
            ..hello("web-2", Vec::new())
        };
        assert!(!r.register(&old).await.unwrap().send_apps);
        assert_eq!(apps_of(&r, "web-2"), ["c"]);
    }

    #[tokio::test]
    async fn apps_are_found_by_the_index_without_asking() {
        // Nothing listens at the agents' address: any ask would fail.
        let r = Registry::new(None, true, None);
        r.register(&hello("web-1", vec!["shop".into(), "blog".into()]))
            .await
            .unwrap();
        r.register(&hello("web-2", vec!["blog".into()]))
            .await
            .unwrap();
        assert_eq!(r.find_app("shop", None).await.unwrap().0, "web-1");
        assert!(matches!(
            r.find_app("blog", None).await,
            Err(ControllerError::Ambiguous { hosts, .. }) if hosts == "web-1, web-2"
        ));
        assert_eq!(r.find_app("blog", Some("web-2")).await.unwrap().0, "web-2");
        // Not in the index: asked, and nobody answers (nothing listens).
        assert!(matches!(
            r.find_app("nope", None).await,
            Err(ControllerError::AppNotFoundUnanswered { silent, .. }) if silent == "web-1, web-2"
        ));
        assert!(matches!(
            r.find_app("shop", Some("web-3")).await,
            Err(ControllerError::HostOffline(_))
        ));
        // An offline host's apps are not found there.
        silence(&r, "web-2", OFFLINE_AFTER + Duration::from_secs(1));
        assert_eq!(r.find_app("blog", None).await.unwrap().0, "web-1");
    }

    #[tokio::test]
    async fn late_heartbeats_and_unreadable_apps_show_degraded() {
        let r = Registry::new(None, true, None);
        r.register(&hello("web-1", vec![])).await.unwrap();
        let degraded = |r: &Registry| r.list()[0].degraded;
        assert!(!degraded(&r));
        silence(&r, "web-1", HEARTBEAT_LATE + Duration::from_secs(1));
        assert!(degraded(&r));
        r.register(&hello("web-1", vec![])).await.unwrap();
        assert!(!degraded(&r));
        let stale = Hello {
            apps_stale: true,
            ..beat("web-1", &[])
        };
        r.register(&stale).await.unwrap();
        assert!(degraded(&r));
        // Offline is offline, not degraded.
        silence(&r, "web-1", OFFLINE_AFTER + Duration::from_secs(1));
        assert!(!degraded(&r) && !r.list()[0].online);
    }
}
