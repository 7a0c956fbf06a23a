//! Alerts and pings. A JSON document is POSTed to every `--alert-webhook`
//! for each failed or skipped scheduled run, each retention failure, each
//! recovery (the first success after a failure or an overdue spell) and
//! each schedule found overdue; its body is signed with HMAC-SHA256 when a
//! secret is set (`X-Hop3-Signature: sha256=<hex>`, as GitHub signs its
//! webhooks). Schedules with a ping URL also ping it as healthchecks.io
//! defines (`/start`, success, `/fail`, paired by `?rid=`), so that an
//! outside dead man's switch notices a controller that is gone.
//!
//! Delivery is in the background, retried with backoff; a delivery that
//! fails for good is logged (the URL cut to its host: webhook paths often
//! hold a token) and counted, and changes nothing else.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;

/// Where and how alerts go.
#[derive(Clone, Debug, Default)]
pub struct AlertConfig {
    pub webhooks: Vec<String>,
    /// The HMAC key of `X-Hop3-Signature`; None: unsigned.
    pub secret: Option<Vec<u8>>,
    /// Tries per delivery, the first included.
    pub attempts: u32,
    /// The wait before the second try, doubled after each failure.
    pub backoff: Duration,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    BackupFailed,
    BackupSkipped,
    RetentionFailed,
    Recovered,
    Overdue,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::BackupFailed => "backup_failed",
            Self::BackupSkipped => "backup_skipped",
            Self::RetentionFailed => "retention_failed",
            Self::Recovered => "recovered",
            Self::Overdue => "overdue",
        }
    }
}

/// The document a webhook receives.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub event: Event,
    pub app: String,
    pub schedule: String,
    /// The slot concerned (RFC 3339, UTC); for `overdue`, the last success's.
    pub slot: Option<String>,
    pub attempts: Option<u32>,
    pub backup_ids: Vec<String>,
    pub reason: Option<String>,
    /// When the alert was raised (RFC 3339, UTC).
    pub at: String,
    /// The controller's host name, for fleets with several.
    pub controller: String,
}

impl Alert {
    /// An alert of `event` about schedule `schedule` of `app`, raised now.
    pub fn new(event: Event, app: &str, schedule: &str) -> Self {
        Self {
            event,
            app: app.to_owned(),
            schedule: schedule.to_owned(),
            slot: None,
            attempts: None,
            backup_ids: Vec::new(),
            reason: None,
            at: crate::schedule::slot_text(chrono::Utc::now()),
            controller: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// A healthchecks.io ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

/// Sends alerts and pings; clones share the HTTP client.
#[derive(Clone, Debug)]
pub struct Alerter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: AlertConfig,
    client: reqwest::Client,
}

/// A request's time limit: a hung endpoint must not hold deliveries.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Alerter {
    /// An alerter for `cfg`.
    pub fn new(cfg: AlertConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("hop3-backup/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with its defaults");
        Self {
            inner: Arc::new(Inner { cfg, client }),
        }
    }

    /// Sends `alert` to every webhook, in the background.
    pub fn send(&self, alert: Alert) {
        let cfg = &self.inner.cfg;
        if cfg.webhooks.is_empty() {
            return;
        }
        let body = serde_json::to_vec(&alert).expect("an alert serialises");
        let signature = cfg.secret.as_ref().map(|key| sign(key, &body));
        tracing::info!(event = alert.event.name(), app = %alert.app, schedule = %alert.schedule, "alert raised");
        for url in &cfg.webhooks {
            let this = self.clone();
            let (url, body, signature) = (url.clone(), body.clone(), signature.clone());
            tokio::spawn(async move {
                let request = || {
                    let mut r = this
                        .inner
                        .client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hop3-event", alert.event.name())
                        .body(body.clone());
                    if let Some(sig) = &signature {
                        r = r.header("x-hop3-signature", sig.as_str());
                    }
                    r
                };
                this.deliver(&url, request, "alert").await;
            });
        }
    }

    /// Pings `url` as healthchecks.io defines (`/start`, success, `/fail`),
    /// `rid` pairing a start with its end, `body` shown in its log.
    pub fn ping(&self, url: &str, ping: Ping, rid: &str, body: String) {
        let base = url.trim_end_matches('/');
        let url = match ping {
            Ping::Start => format!("{base}/start?rid={rid}"),
            Ping::Success => format!("{base}?rid={rid}"),
            Ping::Fail => format!("{base}/fail?rid={rid}"),
        };
        let this = self.clone();
        tokio::spawn(async move {
            let request = || this.inner.client.post(&url).body(body.clone());
            this.deliver(&url, request, "ping").await;
        });
    }

    /// Sends what `request` builds until a 2xx answer or the last try.
    async fn deliver(
        &self,
        url: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
        what: &'static str,
    ) {
        let cfg = &self.inner.cfg;
        let mut backoff = cfg.backoff;
        let attempts = cfg.attempts.max(1);
        for attempt in 1..=attempts {
            let why = match request().send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => describe(&e),
            };
            if attempt == attempts {
                tracing::warn!(to = %redact(url), attempts, error = %why, "could not deliver an {what}");
                crate::telemetry::alert_failed();
                return;
            }
            tracing::debug!(to = %redact(url), attempt, error = %why, "{what} delivery failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A URL as logs may show it: scheme and host, no path or query (a
/// webhook's path, a ping URL's UUID, are as good as a password).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}/...", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// An HTTP error without its URL (reqwest's Display includes it).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering its requests with `statuses` in turn (then 200);
    /// the count of requests it got.
    async fn server(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let code = statuses
                    .get(seen.fetch_add(1, SeqCst))
                    .copied()
                    .unwrap_or(200);
                // The whole request first: closing on an unread body resets it.
                let mut got = Vec::new();
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let answer =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (url, count)
    }

    fn alerter(url: &str, attempts: u32) -> Alerter {
        Alerter::new(AlertConfig {
            webhooks: vec![url.to_owned()],
            secret: Some(b"k".to_vec()),
            attempts,
            backoff: Duration::from_millis(10),
        })
    }

    #[tokio::test]
    async fn a_refused_delivery_is_retried_and_then_given_up() {
        // Two refusals, then a 200: three requests, delivered.
        let (url, count) = server(vec![500, 503]).await;
        let a = alerter(&url, 5);
        a.deliver(&url, || a.inner.client.post(&url).body("{}"), "alert")
            .await;
        assert_eq!(count.load(SeqCst), 3);
        // Refused every time: as many requests as attempts, then it stops.
        let (url, count) = server(vec![500; 10]).await;
        let a = alerter(&url, 2);
        a.deliver(&url, || a.inner.client.post(&url).body("{}"), "alert")
            .await;
        assert_eq!(count.load(SeqCst), 2);
        // Nobody listening: it gives up as well, without hanging.
        let dead = format!("http://127.0.0.1:{}/hook", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let a = alerter(&dead, 2);
        a.deliver(&dead, || a.inner.client.post(&dead).body("{}"), "alert")
            .await;
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_in_logs_keep_only_their_host() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T000/B000/XXXX?x=1"),
            "https://hooks.slack.com/..."
        );
        assert_eq!(redact("not a url"), "(an invalid URL)");
    }

    #[test]
    fn an_alert_has_the_documented_fields() {
        let mut a = Alert::new(Event::BackupFailed, "blog", "default");
        a.attempts = Some(3);
        let v = serde_json::to_value(&a).unwrap();
        for key in [
            "event",
            "app",
            "schedule",
            "slot",
            "attempts",
            "backup_ids",
            "reason",
            "at",
            "controller",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["event"], "backup_failed");
    }
}
