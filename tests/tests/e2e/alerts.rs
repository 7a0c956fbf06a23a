//! Alerts and metrics of scheduled backups: a failing run sends a signed
//! webhook to a real HTTP server, a stopped agent makes a schedule overdue
//! (an alert although nothing was asked of anyone), its return a recovery;
//! `/metrics` is scraped and parsed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hmac::{Hmac, KeyInit, Mac};
use hop3_tests::System;
use hop3_tests::fixtures::App;
use hop3_tests::harness::{free_port, wait_until};
use serde_json::Value;

/// One request the webhook server received.
#[derive(Clone, Debug)]
struct Hook {
    /// The request's path and query.
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A plain HTTP server that answers 200 to everything and keeps what it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Hook>>>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hooks/secret-path", listener.local_addr()?);
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(hook) = read_request(stream) {
                    sink.lock().unwrap().push(hook);
                }
            }
        });
        Ok(Self { url, got })
    }

    /// The paths and queries of every request so far.
    fn targets(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.target.clone())
            .collect()
    }

    /// The alerts received so far, as (headers, parsed body).
    fn alerts(&self) -> Vec<(Hook, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| Some((h.clone(), serde_json::from_slice(&h.body).ok()?)))
            .collect()
    }
}

fn read_request(stream: TcpStream) -> Result<Hook> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
    Ok(Hook {
        target,
        headers,
        body,
    })
}

/// `GET /metrics`, parsed: `name{labels}` to value.
fn scrape(port: u16) -> Result<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn signed(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn find<'a>(alerts: &'a [(Hook, Value)], event: &str, app: &str) -> Option<&'a (Hook, Value)> {
    alerts
        .iter()
        .find(|(_, v)| v["event"] == event && v["app"] == app)
}

#[test]
fn failures_overdue_schedules_and_recoveries_alert_and_metrics_tell() -> Result<()> {
    let hook = Receiver::start()?;
    let metrics_port = free_port();
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("alert.key");
    std::fs::write(&key_file, "k3y-for-tests\n")?;
    let mut sys = System::builder()
        .local_agent(false)
        .controller_args([
            "--schedule-spread",
            "0s",
            "--schedule-retry-backoff",
            "1s",
            "--schedule-attempts",
            "2",
            "--overdue-grace",
            "2s",
            "--alert-webhook",
            hook.url.as_str(),
            "--alert-secret-file",
            key_file.to_str().context("a UTF-8 path")?,
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    let root = sys.agent_root("web-1")?;
    App::build(&root, "shop", 6, &scratch)?;
    let broken = App::build(&root, "broken", 7, &scratch)?;
    // broken's database is down: every backup of it fails.
    let url = format!("postgresql://app:s3cr3t-pw@127.0.0.1:{}/db", free_port());
    broken.set_services(&[("postgres", "db", &url)])?;
    sys.start_agent("web-1")?;
    let base = hook.url.rsplit_once('/').map_or("", |(b, _)| b).to_owned();
    // broken's slots 10 s apart: its retry (1 s after a first attempt that
    // may take seconds on a loaded machine) must come before the next slot,
    // or the scheduler rightly gives up after one attempt.
    for (app, cron) in [("shop", "*/2 * * * * *"), ("broken", "*/10 * * * * *")] {
        let ping = format!("{base}/ping/{app}");
        wait_until(
            Duration::from_secs(20),
            "the agent to report the app",
            || {
                let out = sys.hop3(["backup:schedule", app, "--cron", cron, "--ping-url", &ping]);
                Ok(out.status.success().then_some(()))
            },
        )?;
    }

    // A failing run: a signed webhook with what failed and why.
    let alerts = wait_until(Duration::from_secs(60), "broken's failure alert", || {
        let alerts = hook.alerts();
        Ok(find(&alerts, "backup_failed", "broken")
            .is_some()
            .then_some(alerts))
    })?;
    let (h, doc) = find(&alerts, "backup_failed", "broken").unwrap();
    ensure!(
        h.headers.get("x-hop3-signature") == Some(&signed(b"k3y-for-tests", &h.body)),
        "bad signature: {:?}",
        h.headers
    );
    ensure!(h.headers.get("x-hop3-event").map(String::as_str) == Some("backup_failed"));
    ensure!(
        doc["attempts"] == 2 && doc["schedule"] == "default",
        "{doc:#}"
    );
    ensure!(
        doc["backup_ids"].as_array().is_some_and(|a| a.len() == 2),
        "{doc:#}"
    );
    let text = String::from_utf8_lossy(&h.body);
    ensure!(
        !text.contains("s3cr3t-pw"),
        "the password is in the alert: {text}"
    );

    // Pings as healthchecks.io defines them, start and end paired by rid.
    let pings = wait_until(Duration::from_secs(30), "the pings", || {
        let t = hook.targets();
        let ok = t.iter().any(|p| p.starts_with("/hooks/ping/shop?rid="))
            && t.iter()
                .any(|p| p.starts_with("/hooks/ping/broken/fail?rid="));
        Ok(ok.then_some(t))
    })?;
    let ended = pings
        .iter()
        .find_map(|p| p.strip_prefix("/hooks/ping/shop?rid="))
        .context("no rid")?;
    ensure!(
        pings.contains(&format!("/hooks/ping/shop/start?rid={ended}")),
        "no start ping for rid {ended}: {pings:?}"
    );
    ensure!(ended.len() == 36, "not a UUID: {ended}");
    // The list shows the ping URL cut to its host.
    let listed: Vec<Value> = sys
        .hop3(["--json", "backup:schedules", "shop"])
        .success()?
        .json()?;
    ensure!(
        listed[0]["ping_url"] == "http://127.0.0.1/...",
        "{:#}",
        listed[0]
    );

    // shop succeeds meanwhile, and the metrics say so. The gauges are
    // refreshed every 5 s: broken's last status may still be the one from
    // before its run ended (failure counters are counted at once).
    wait_until(
        Duration::from_secs(30),
        "shop's first success and broken's failed run",
        || {
            let m = scrape(metrics_port)?;
            let shop_ok = m.keys().any(|k| {
                k.starts_with("hop3_backup_last_successful_timestamp{")
                    && k.contains("app=\"shop\"")
            });
            let broken_failed = m.iter().any(|(k, v)| {
                k.starts_with("hop3_backup_last_status{")
                    && k.contains("app=\"broken\"")
                    && *v == 0.0
            });
            Ok((shop_ok && broken_failed).then_some(()))
        },
    )?;
    let m = scrape(metrics_port)?;
    let value = |prefix: &str, needles: &[&str]| {
        m.iter()
            .find(|(k, _)| k.starts_with(prefix) && needles.iter().all(|n| k.contains(n)))
            .map(|(_, v)| *v)
    };
    ensure!(
        value("hop3_backup_total{", &["app=\"shop\""]) >= Some(1.0),
        "{m:#?}"
    );
    ensure!(
        value("hop3_backup_failure_total{", &["app=\"broken\""]) >= Some(2.0),
        "{m:#?}"
    );
    ensure!(
        value("hop3_agent_up{", &["host=\"web-1\""]) == Some(1.0),
        "{m:#?}"
    );
    ensure!(
        value(
            "hop3_schedule_expected_interval_seconds{",
            &["app=\"shop\"", "schedule=\"default\""]
        ) == Some(2.0),
        "{m:#?}"
    );
    ensure!(
        value("hop3_backup_last_status{", &["app=\"broken\""]) == Some(0.0),
        "{m:#?}"
    );
    ensure!(
        value("hop3_backup_duration_seconds_count{", &["app=\"shop\""]) >= Some(1.0),
        "{m:#?}"
    );
    ensure!(
        value("hop3_store_free_bytes", &[]).is_some_and(|v| v > 0.0),
        "{m:#?}"
    );

    // The agent stops: nothing asked fails loudly, yet shop goes overdue.
    sys.controller().allow_errors();
    sys.agent("web-1").process.stop();
    wait_until(Duration::from_secs(60), "shop's overdue alert", || {
        Ok(find(&hook.alerts(), "overdue", "shop").map(|_| ()))
    })?;
    wait_until(Duration::from_secs(30), "the agent seen down", || {
        Ok(
            (value_of(&scrape(metrics_port)?, "hop3_agent_up{", "host=\"web-1\"") == Some(0.0))
                .then_some(()),
        )
    })?;

    // Back: the next success is a recovery.
    sys.agent("web-1").process.restart()?;
    wait_until(Duration::from_secs(60), "shop's recovery alert", || {
        Ok(find(&hook.alerts(), "recovered", "shop").map(|_| ()))
    })?;
    Ok(())
}

fn value_of(m: &BTreeMap<String, f64>, prefix: &str, needle: &str) -> Option<f64> {
    m.iter()
        .find(|(k, _)| k.starts_with(prefix) && k.contains(needle))
        .map(|(_, v)| *v)
}
