//! A fleet: several hosts, one agent each, one controller. Which agents
//! are online, a host lost and its app brought back on a fresh one, the
//! same app name on two hosts, agents that limit how many jobs they run,
//! and hosts gone for good forgotten, by hand or after a long silence.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hop3_tests::cli::{AgentRow, BackupSummary};
use hop3_tests::fixtures::App;
use hop3_tests::harness::{LOCAL_HOST_ID, du, list_dir, wait_until};
use hop3_tests::servers::{self, Postgres, diff_lines};
use hop3_tests::snapshot::{self, Snapshot};
use hop3_tests::{Output, System};
use rustix::process::Signal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long an agent unheard of may take to be listed offline: 15 s
/// without a heartbeat, heartbeats every 5 s, and some slack for a loaded
/// machine.
const OFFLINE_DEADLINE: Duration = Duration::from_secs(25);

/// How long an agent's heartbeat may take to bring news (its apps).
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(20);

/// How long one backup or restore of a few dozen MiB may take on a loaded
/// two-core machine with debug binaries.
const OPERATION: Duration = Duration::from_secs(300);

/// A table of every awkward kind of value and a sequence: what the app's
/// database holds.
const PG_SCHEMA: &str = r#"
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    balance numeric(12,2) NOT NULL DEFAULT 0,
    payload bytea,
    created_at timestamptz NOT NULL
);
CREATE SEQUENCE invoice_no START 1000;
INSERT INTO customers (name, balance, payload, created_at)
    SELECT 'Zoë ' || i || E' — 日本語 🚀 «l''apostrophe»\nline two', i * 1.25,
           '\x00ff0d0a'::bytea || decode(md5(i::text), 'hex'),
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
    FROM generate_series(1, 2000) AS i;
SELECT setval('invoice_no', 1042);
"#;

/// Fails with both listings' differences unless they are equal.
fn same(expected: &[String], actual: &[String], what: &str) -> Result<()> {
    if expected != actual {
        bail!("{what} differs:\n{}", diff_lines(expected, actual, 15));
    }
    Ok(())
}

/// Waits until `agent:list` lists `host` as `status` and returns its row.
fn wait_status(sys: &System, host: &str, status: &str, deadline: Duration) -> Result<AgentRow> {
    let mut last = None;
    let waited = wait_until(deadline, &format!("{host} listed {status}"), || {
        last = sys.agent_row(host)?;
        Ok(last.clone().filter(|a| a.status == status))
    });
    waited.with_context(|| format!("agent:list says {last:?}"))
}

/// Fails unless `last_seen` is an RFC 3339 time within `window` before now.
fn seen_recently(row: &AgentRow, window: Duration) -> Result<()> {
    let t = OffsetDateTime::parse(&row.last_seen, &Rfc3339)
        .with_context(|| format!("last_seen is not RFC 3339: {row:?}"))?;
    let age = OffsetDateTime::now_utc() - t;
    ensure!(
        age >= -time::Duration::seconds(2) && age <= window,
        "last_seen {} is {age} ago: {row:?}",
        row.last_seen
    );
    Ok(())
}

/// Fails unless the human `agent:list` shows its header and, for each
/// `(host, status)`, a line naming both.
fn human_agent_list(out: &Output, expected: &[(&str, &str)]) -> Result<()> {
    let header = out.stdout.lines().next().unwrap_or_default();
    for column in ["HOST", "ADDRESS", "STATUS", "LAST SEEN", "APPS"] {
        ensure!(
            header.contains(column),
            "agent:list's header lacks {column}\n{}",
            out.report()
        );
    }
    for (host, status) in expected {
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == *host) && l.contains(status)),
            "agent:list has no line with {host} {status}\n{}",
            out.report()
        );
    }
    Ok(())
}

#[test]
fn a_lost_host_comes_back_on_a_fresh_one() -> Result<()> {
    let pg = Postgres::start()?;
    let password = servers::password();
    let url = pg.create_app_database("app_user", &password, "shop")?;
    pg.script_as("app_user", &password, "shop", PG_SCHEMA)?;
    let database = pg.fingerprint("shop")?;

    let mut sys = System::builder().local_agent(false).start()?;
    let root_a = sys.agent_root("host-a")?;
    let app = App::build(&root_a, "shop", 201, &sys.scratch("fixtures")?)?;
    app.set_services(&[("postgres", "db", &url)])?;
    let mut env = Snapshot::of(&app.dir)?.env;
    env.insert("DATABASE_URL".into(), url.clone());
    app.write_env(&env)?;
    let app_json = app.app_json()?;
    let original = Snapshot::of(&app.dir)?;
    snapshot::fsck(&app.git_dir())?;
    sys.start_agent("host-a")?;

    let created = sys.create("shop")?;
    ensure!(created.host == "host-a", "{created:?}");
    ensure!(created.services == ["postgres:db"], "{created:?}");

    // The fleet as the operator sees it.
    let a = wait_until(HEARTBEAT_DEADLINE, "host-a online with shop", || {
        Ok(sys
            .agent_row("host-a")?
            .filter(|a| a.status == "online" && a.apps == ["shop"]))
    })
    .with_context(|| format!("agent:list says {:?}", sys.agents()))?;
    ensure!(!a.address.is_empty() && !a.version.is_empty(), "{a:?}");
    seen_recently(&a, Duration::from_secs(20))?;
    let listed = sys.agents()?;
    ensure!(listed.len() == 1, "one agent was started: {listed:?}");
    human_agent_list(
        &sys.hop3(["agent:list"]).success()?,
        &[("host-a", "online")],
    )?;
    human_agent_list(
        &sys.hop3(["agent", "list"]).success()?,
        &[("host-a", "online")],
    )?;

    // The host is lost: its agent stops, its disk is gone, and the database
    // server comes back without the app's database (its role survives).
    let lost_at = Instant::now();
    let complaint = sys.agent("host-a").process.stop();
    ensure!(complaint.is_none(), "{complaint:?}");
    fs::remove_dir_all(&root_a)?;
    pg.query("postgres", "DROP DATABASE shop WITH (FORCE)")?;

    // A fresh host, its agent empty.
    let b = sys.start_agent("host-b")?;
    let root_b = b.root.clone();
    ensure!(list_dir(&root_b.join("apps"))?.is_empty());
    let a = wait_status(&sys, "host-a", "offline", OFFLINE_DEADLINE)?;
    eprintln!(
        "host-a listed offline {:.1?} after it stopped",
        lost_at.elapsed()
    );
    ensure!(
        a.apps == ["shop"],
        "an offline agent keeps what it last served: {a:?}"
    );
    let b = wait_status(&sys, "host-b", "online", HEARTBEAT_DEADLINE)?;
    ensure!(b.apps.is_empty(), "{b:?}");
    human_agent_list(
        &sys.hop3(["agent:list"]).success()?,
        &[("host-a", "offline"), ("host-b", "online")],
    )?;

    // The backup's own host is gone: the CLI says what to do.
    sys.hop3(["backup:restore", &created.backup_id])
        .failure(&["offline", "--target-host"])?;
    sys.hop3(["--json", "backup:restore", &created.backup_id])
        .failure(&["offline", "--target-host"])?;
    ensure!(
        list_dir(&root_b.join("apps"))?.is_empty(),
        "a refused restore left {:?} on host-b",
        list_dir(&root_b.join("apps"))?
    );

    let start = Instant::now();
    let restored = sys.restore_to(&created.backup_id, None, Some("host-b"))?;
    let took = start.elapsed();
    eprintln!(
        "host-loss restore of {} ({} bytes) onto host-b took {took:.2?}",
        created.backup_id, created.total_size
    );
    ensure!(
        restored.app == "shop" && restored.host == "host-b",
        "{restored:?}"
    );
    ensure!(
        Some(restored.hostname.as_str()) == original.hostname.as_deref()
            && Some(u64::from(restored.port)) == original.port,
        "{restored:?}"
    );

    let back = App::existing(&root_b, "shop");
    original.assert_same(&Snapshot::of(&back.dir)?, "the app brought back on host-b")?;
    snapshot::fsck(&back.git_dir())?;
    ensure!(
        back.app_json()?["services"] == app_json["services"],
        "{}",
        back.app_json()?
    );
    same(&database, &pg.fingerprint("shop")?, "the app's database")?;
    let next = pg.query_as(
        "app_user",
        &password,
        "shop",
        "SELECT nextval('invoice_no')",
    )?;
    ensure!(next.trim() == "1043", "the next invoice number is {next:?}");

    // The new host now serves it, as its next heartbeat tells.
    wait_until(HEARTBEAT_DEADLINE, "host-b to list shop", || {
        Ok(sys
            .agent_row("host-b")?
            .filter(|b| b.apps == ["shop"] && b.status == "online"))
    })?;
    Ok(())
}

#[test]
fn the_same_app_on_two_hosts_needs_a_host_named() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let scratch = sys.scratch("fixtures")?;
    // Each copy's work repository in a scratch directory of its own.
    let a = App::build(&sys.agent_root("host-a")?, "shop", 202, &sys.scratch("a")?)?;
    let b = App::build(&sys.agent_root("host-b")?, "shop", 203, &sys.scratch("b")?)?;
    let (orig_a, orig_b) = (Snapshot::of(&a.dir)?, Snapshot::of(&b.dir)?);
    ensure!(orig_a.port != orig_b.port, "the two copies must differ");
    sys.start_agent("host-a")?;
    sys.start_agent("host-b")?;

    sys.hop3(["backup:create", "shop"])
        .failure(&["several hosts", "--host"])?;
    sys.hop3(["--json", "backup:create", "shop"])
        .failure(&["several hosts", "--host"])?;
    let listed = sys.list(&[])?;
    ensure!(listed.is_empty(), "a refused create left {listed:?}");
    ensure!(sys.partials()?.is_empty());
    // agent:list points the clash out.
    let agents = sys.hop3(["agent:list"]).success()?;
    ensure!(
        agents
            .stdout
            .lines()
            .any(|l| l.contains("shop") && l.contains("host-a, host-b") && l.contains("--host")),
        "agent:list does not point out shop on two hosts\n{}",
        agents.report()
    );

    let from_b = sys.create_on("shop", "host-b")?;
    let from_a = sys.create_on("shop", "host-a")?;
    for (created, host, original) in [(&from_b, "host-b", &orig_b), (&from_a, "host-a", &orig_a)] {
        let listed = sys.list(&["shop"])?;
        let entry = listed
            .iter()
            .find(|l| l.backup_id == created.backup_id)
            .with_context(|| format!("{created:?} not listed: {listed:?}"))?;
        ensure!(entry.host == host, "{entry:?}");
        let info = sys.info(&created.backup_id)?;
        ensure!(info.host == host && info.all_valid, "{info:?}");
        ensure!(
            Some(u64::from(info.app_state.port)) == original.port,
            "the backup made with --host {host} holds another copy: {info:?}"
        );
    }

    // A restore goes back to the backup's own host, and only there.
    b.mutate(&scratch)?;
    let restored = sys.restore(&from_b.backup_id, None)?;
    ensure!(restored.host == "host-b", "{restored:?}");
    orig_b.assert_same(&Snapshot::of(&b.dir)?, "host-b's copy after its restore")?;
    orig_a.assert_same(&Snapshot::of(&a.dir)?, "host-a's copy, not restored")?;
    Ok(())
}

/// Partial backup directories of `apps`, by path, with their sizes.
fn partial_sizes(sys: &System, apps: &[&str]) -> Result<BTreeMap<String, u64>> {
    let mut sizes = BTreeMap::new();
    for p in sys.partials()? {
        let app = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if apps.contains(&app.as_str()) {
            sizes.insert(p.display().to_string(), du(&p));
        }
    }
    Ok(sizes)
}

#[test]
fn backups_on_two_agents_run_at_once_within_each_agents_limit() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let scratch = sys.scratch("fixtures")?;
    let root_a = sys.agent_root("host-a")?;
    let root_b = sys.agent_root("host-b")?;
    let mut originals = BTreeMap::new();
    for (root, name, seed) in [
        (&root_a, "one", 211),
        (&root_a, "two", 212),
        (&root_b, "three", 213),
    ] {
        let app = App::build(root, name, seed, &scratch)?;
        app.big_data(64)?;
        originals.insert(name, Snapshot::of(&app.dir)?);
    }
    sys.start_agent_with("host-a", &["--max-jobs", "1"])?;
    sys.start_agent("host-b")?;

    let mut running: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|app| sys.hop3_spawn(["--json", "backup:create", app]))
        .collect::<Result<_>>()?;

    // host-a runs one job at a time: never do both of its backups take in
    // data at once (both .partial directories growing between two looks).
    // A job that waits its turn may have an empty .partial meanwhile.
    let mut previous = BTreeMap::new();
    let (mut both_growing, mut looks, mut streak, mut longest) = (0, 0, 0, 0);
    let start = Instant::now();
    loop {
        let mut still = false;
        for create in &mut running {
            still |= create.is_running()?;
        }
        if !still {
            break;
        }
        if start.elapsed() > OPERATION {
            bail!("the three creates did not end within {OPERATION:?}");
        }
        let sizes = partial_sizes(&sys, &["one", "two"])?;
        let growing = sizes
            .iter()
            .filter(|(p, s)| previous.get(*p).is_some_and(|before| *s > before))
            .count();
        if growing >= 2 {
            both_growing += 1;
            streak += 1;
            longest = longest.max(streak);
        } else {
            streak = 0;
        }
        looks += 1;
        previous = sizes;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{looks} looks at host-a's .partial directories, {both_growing} with both growing, at most {longest} in a row"
    );
    // A look may straddle the moment one job hands over to the other: the
    // controller still writes the first job's queued chunks and commits
    // while the second starts, longer on a loaded machine (up to 3 looks of
    // 18 were seen). Two backups taken in at once would show in most looks,
    // and in long runs of them, not in a few in a row.
    ensure!(
        longest <= 3 && both_growing <= 3.max(looks / 4),
        "host-a started with --max-jobs 1 took in two backups at once in {both_growing} of {looks} looks ({longest} in a row)"
    );

    let mut created: BTreeMap<String, BackupSummary> = BTreeMap::new();
    for create in running {
        let summary: BackupSummary = create.wait(OPERATION)?.success()?.json()?;
        ensure!(summary.status == "COMPLETED", "{summary:?}");
        created.insert(summary.app.clone(), summary);
    }
    ensure!(
        created.keys().map(String::as_str).collect::<Vec<_>>() == ["one", "three", "two"],
        "{created:?}"
    );
    for (app, host) in [("one", "host-a"), ("two", "host-a"), ("three", "host-b")] {
        let summary = &created[app];
        ensure!(summary.host == host, "{summary:?}");
        let info = sys.info(&summary.backup_id)?;
        ensure!(info.all_valid && info.status == "COMPLETED", "{info:?}");
    }
    ensure!(sys.partials()?.is_empty(), "{:?}", sys.partials()?);
    let listed = sys.list(&[])?;
    ensure!(
        listed.len() == 3 && listed.iter().all(|b| b.status == "COMPLETED"),
        "{listed:?}"
    );

    // Whichever of host-a's two waited its turn, both hold their own app:
    // each restored in place after a bad deploy comes back exactly.
    for name in ["two", "one"] {
        let app = App::existing(&root_a, name);
        app.mutate(&scratch)?;
        sys.restore(&created[name].backup_id, None)?;
        originals[name].assert_same(
            &Snapshot::of(&app.dir)?,
            &format!("{name} restored from the concurrent backup"),
        )?;
    }
    Ok(())
}

/// What `hop3` exits with for NOT_FOUND and FAILED_PRECONDITION.
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_FAILED_PRECONDITION: i32 = 4;

/// Fails unless `out` exited with `code`.
fn exited(out: &Output, code: i32) -> Result<()> {
    ensure!(
        out.status.code() == Some(code),
        "expected exit {code}\n{}",
        out.report()
    );
    Ok(())
}

/// The hosts `agent:list --json` shows, sorted.
fn listed_hosts(sys: &System) -> Result<Vec<String>> {
    let mut hosts: Vec<String> = sys.agents()?.into_iter().map(|a| a.host).collect();
    hosts.sort();
    Ok(hosts)
}

/// How many lines of the log at `path` hold every one of `needles`.
fn log_lines(path: &std::path::Path, needles: &[&str]) -> usize {
    let text = String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn an_offline_agent_is_forgotten_on_request_and_an_online_one_is_not() -> Result<()> {
    // With the controller's own agent, which is never forgotten.
    let mut sys = System::start()?;
    sys.start_agent("web-1")?;
    ensure!(
        listed_hosts(&sys)? == [LOCAL_HOST_ID, "web-1"],
        "{:?}",
        sys.agents()
    );

    // Online: refused, and told why and what to do.
    let out = sys.hop3(["agent:forget", "web-1"]).failure(&[
        "web-1",
        "online",
        "stop its agent first",
    ])?;
    exited(&out, EXIT_FAILED_PRECONDITION)?;
    let out = sys
        .hop3(["--json", "agent", "forget", "web-1"])
        .failure(&["stop its agent first"])?;
    exited(&out, EXIT_FAILED_PRECONDITION)?;
    ensure!(
        out.json_error().map(|(code, _)| code).as_deref() == Some("FAILED_PRECONDITION"),
        "{}",
        out.report()
    );
    let out = sys
        .hop3(["agent:forget", LOCAL_HOST_ID])
        .failure(&[LOCAL_HOST_ID, "own agent"])?;
    exited(&out, EXIT_FAILED_PRECONDITION)?;
    let out = sys
        .hop3(["agent:forget", "web-9"])
        .failure(&["Host not found: web-9", "hop3 agent:list"])?;
    exited(&out, EXIT_NOT_FOUND)?;
    ensure!(
        listed_hosts(&sys)? == [LOCAL_HOST_ID, "web-1"],
        "a refused forget removed an agent: {:?}",
        sys.agents()
    );

    // Stopped: once offline it is forgotten, and no longer listed.
    let complaint = sys.agent("web-1").process.stop();
    ensure!(complaint.is_none(), "{complaint:?}");
    wait_status(&sys, "web-1", "offline", OFFLINE_DEADLINE)?;
    let out = sys.hop3(["--json", "agent:forget", "web-1"]).success()?;
    let doc: serde_json::Value = out.json()?;
    ensure!(
        doc == serde_json::json!({"forgotten": "web-1"}),
        "{}",
        out.report()
    );
    ensure!(listed_hosts(&sys)? == [LOCAL_HOST_ID], "{:?}", sys.agents());
    let human = sys.hop3(["agent:list"]).success()?;
    ensure!(!human.stdout.contains("web-1"), "{}", human.report());
    let out = sys
        .hop3(["agent", "forget", "web-1"])
        .failure(&["Host not found: web-1"])?;
    exited(&out, EXIT_NOT_FOUND)?;

    // Its agent started again registers again (healthy means registered).
    sys.agent("web-1").process.restart()?;
    wait_status(&sys, "web-1", "online", HEARTBEAT_DEADLINE)?;
    let out = sys.hop3(["agent:forget", "web-1"]).failure(&["online"])?;
    exited(&out, EXIT_FAILED_PRECONDITION)?;
    Ok(())
}

#[test]
fn agents_silent_for_longer_than_the_expiry_are_forgotten() -> Result<()> {
    // The environment variable, as a unit file would set it.
    let expiry = Duration::from_secs(20);
    let mut sys = System::builder()
        .controller_env("HOP3_FORGET_AGENTS_AFTER", "20s")
        .start()?;
    sys.start_agent("web-2")?;
    ensure!(
        listed_hosts(&sys)? == [LOCAL_HOST_ID, "web-2"],
        "{:?}",
        sys.agents()
    );
    let stopped = Instant::now();
    let complaint = sys.agent("web-2").process.stop();
    ensure!(complaint.is_none(), "{complaint:?}");
    wait_status(&sys, "web-2", "offline", OFFLINE_DEADLINE)?;
    wait_until(
        expiry + OFFLINE_DEADLINE,
        "web-2 to leave agent:list",
        || Ok(sys.agent_row("web-2")?.is_none().then_some(())),
    )
    .with_context(|| format!("agent:list says {:?}", sys.agents()))?;
    let silent = stopped.elapsed();
    eprintln!("web-2 forgotten {silent:.1?} after its agent stopped");
    // Its last heartbeat came at most 5 s before it stopped.
    ensure!(
        silent + Duration::from_secs(5) >= expiry,
        "web-2 was forgotten after {silent:?}, before its {expiry:?} of silence"
    );
    // The controller's own agent never heartbeats, and stays.
    ensure!(listed_hosts(&sys)? == [LOCAL_HOST_ID], "{:?}", sys.agents());
    let log = sys.controller().log_path().to_owned();
    ensure!(
        log_lines(&log, &["agent forgotten", "web-2"]) == 1,
        "no log line says web-2 was forgotten\n{}",
        hop3_tests::harness::tail(&log, 30)
    );

    // Calling in again, it is registered again as a new agent.
    sys.agent("web-2").process.restart()?;
    wait_status(&sys, "web-2", "online", HEARTBEAT_DEADLINE)?;
    ensure!(
        log_lines(&log, &["agent registered", "web-2"]) == 2,
        "web-2 was not registered anew\n{}",
        hop3_tests::harness::tail(&log, 30)
    );

    // A value that could not take effect is refused at start.
    let out = sys.admin(["--forget-agents-after", "5s", "tokens", "list"]);
    ensure!(
        out.status.code() == Some(2) && out.stderr.contains("offline"),
        "{}",
        out.report()
    );
    Ok(())
}

/// Hosts in the large fleet, and how many of them freeze.
const FLEET: usize = 100;
const FROZEN: usize = 10;

fn fleet_host(i: usize) -> String {
    format!("fleet-{i:03}")
}

/// A hundred agents on one controller, ten of them frozen (SIGSTOP: their
/// connections stay open, nothing answers). Finding an app's host, a
/// backup and a restore on a healthy host, and `agent:list` go on as if
/// nothing were frozen, because the controller's app index needs no
/// agent's answer; done before the frozen hosts' heartbeats lapse (15 s),
/// which this checks, so they were done while the frozen hosts counted as
/// online. The figures are `tests/bench/fleet.sh`'s.
#[test]
fn a_hundred_hosts_with_ten_frozen_stall_nothing() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let app = App::build(
        &sys.agent_root(&fleet_host(0))?,
        "shop",
        211,
        &sys.scratch("fixtures")?,
    )?;
    let original = Snapshot::of(&app.dir)?;
    // Every other host serves a small app of its own (an app is a directory
    // with its app.json), so that the index is a hundred hosts' worth.
    for i in 1..FLEET {
        let dir = sys.agent_root(&fleet_host(i))?.join(format!("apps/app{i}"));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("app.json"), "{}")?;
    }
    for i in 0..FLEET {
        sys.start_agent(&fleet_host(i))?;
    }
    let all_online = |sys: &System| -> Result<Option<Vec<AgentRow>>> {
        let agents = sys.agents()?;
        Ok(
            (agents.len() == FLEET && agents.iter().all(|a| a.status == "online"))
                .then_some(agents),
        )
    };
    let agents = wait_until(HEARTBEAT_DEADLINE, "all agents online", || all_online(&sys))?;
    let frozen_app = format!("app{}", FLEET - 1);
    ensure!(
        agents
            .iter()
            .find(|a| a.host == fleet_host(FLEET - 1))
            .is_some_and(|a| a.apps == [frozen_app.clone()]),
        "{agents:?}"
    );

    let frozen: Vec<String> = (FLEET - FROZEN..FLEET).map(fleet_host).collect();
    for host in &frozen {
        sys.agent(host).process.signal(Signal::STOP);
    }
    let frozen_at = std::time::Instant::now();

    let created = sys.create("shop")?;
    ensure!(created.host == fleet_host(0), "{created:?}");
    app.mutate(&sys.scratch("mutation")?)?;
    let restored = sys.restore(&created.backup_id, None)?;
    ensure!(restored.host == fleet_host(0), "{restored:?}");
    original.assert_same(&Snapshot::of(&app.dir)?, "shop after its restore")?;
    let agents = sys.agents()?;
    ensure!(agents.len() == FLEET, "{agents:?}");
    // An app no host has is asked of the online hosts, all at once, and
    // said to be missing, naming the frozen hosts, whose answers were not
    // awaited beyond the fan-out's deadline.
    sys.hop3(["backup:create", "nowhere"]).failure(&[
        "nowhere",
        "not found",
        "did not answer",
        &fleet_host(FLEET - 1),
    ])?;
    // Still within the frozen hosts' heartbeat grace: all of this ran while
    // the controller took them for online.
    let took = frozen_at.elapsed();
    let rows = sys.agents()?;
    let still_counted: Vec<&AgentRow> = rows
        .iter()
        .filter(|a| frozen.contains(&a.host) && a.status != "offline")
        .collect();
    ensure!(
        still_counted.len() == FROZEN,
        "the operations on a healthy host took {took:?}, long enough for the frozen hosts to go offline: {rows:?}"
    );

    // Frozen hosts are shown degraded once their heartbeats are late, and
    // offline once they lapse; a thawed one comes back online.
    let mut degraded = false;
    wait_until(OFFLINE_DEADLINE, "the frozen hosts offline", || {
        let rows = sys.agents()?;
        let states: Vec<&str> = rows
            .iter()
            .filter(|a| frozen.contains(&a.host))
            .map(|a| a.status.as_str())
            .collect();
        degraded |= states.contains(&"degraded");
        Ok(states.iter().all(|s| *s == "offline").then_some(()))
    })?;
    ensure!(degraded, "no frozen host was ever shown degraded");
    ensure!(
        sys.agents()?
            .iter()
            .filter(|a| !frozen.contains(&a.host))
            .all(|a| a.status == "online"),
        "a healthy host is not online"
    );
    for host in &frozen {
        sys.agent(host).process.signal(Signal::CONT);
    }
    wait_until(HEARTBEAT_DEADLINE, "the thawed hosts online", || {
        all_online(&sys)
    })?;
    Ok(())
}
