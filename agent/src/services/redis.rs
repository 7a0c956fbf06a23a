//! Redis: every key dumped with `DUMP` and its remaining TTL, written as a
//! file of `RESTORE key ttl payload REPLACE` commands in the Redis protocol
//! (RESP), which `redis-cli --pipe` also replays by hand. A restore replays
//! it into an empty scratch DB on the same server, then `SWAPDB`s it with
//! the live DB in one step and flushes the old data.
//!
//! The dump walks the key space with `SCAN`: keys written during the dump
//! may or may not be in it (Redis offers no snapshot to a client).

use redis::aio::MultiplexedConnection;
use redis::{Client, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

use super::conn::ConnInfo;
use super::process::Step;
use super::records::{Phase, Record, RedisRecord, Reserved};
use super::tools::Tools;
use crate::apps::read_app_config;
use crate::error::Result;

/// Keys fetched per round trip.
const BATCH: usize = 500;

/// Largest RESP bulk string accepted when replaying (Redis's own limit).
const MAX_BULK: usize = 512 * 1024 * 1024;

async fn connect(step: &Step<'_>, url: &str) -> Result<MultiplexedConnection> {
    let client = Client::open(url).map_err(|e| step.error(e.to_string()))?;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| step.error("connection timed out"))?
    .map_err(|e| step.error(e.to_string()))
}

/// The DB number a URL names (0 by default).
pub fn db_of(conn: &ConnInfo) -> Result<u32> {
    if conn.database.is_empty() {
        return Ok(0);
    }
    conn.database
        .parse()
        .map_err(|_| crate::error::AgentError::Service {
            service: "redis".into(),
            step: "connect",
            detail: format!("DB {:?} is not a number", conn.database),
        })
}

fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Connects and pings.
pub async fn check(service: &str, conn: &ConnInfo) -> Result<()> {
    let step = Step::new(service, "connect", conn);
    let mut con = connect(&step, conn.url()).await?;
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .map(drop)
        .map_err(|e| step.error(e.to_string()))
}

/// Streams every key of the URL's DB into `out` as RESTORE commands.
pub async fn dump<W: AsyncWrite + Unpin>(
    service: &str,
    conn: &ConnInfo,
    out: &mut W,
) -> Result<()> {
    let step = Step::new(service, "dump", conn);
    let mut con = connect(&step, conn.url()).await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut con)
            .await
            .map_err(|e| step.error(e.to_string()))?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("PTTL").arg(k).cmd("DUMP").arg(k);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut con)
                .await
                .map_err(|e| step.error(e.to_string()))?;
            let mut buf = Vec::new();
            for (k, pair) in keys.iter().zip(replies.chunks(2)) {
                let (Value::Int(ttl), Value::BulkString(payload)) = (&pair[0], &pair[1]) else {
                    // Gone between SCAN and DUMP.
                    continue;
                };
                if *ttl == -2 {
                    continue;
                }
                let ttl = (*ttl).max(0).to_string();
                buf.extend_from_slice(b"*5\r\n");
                for part in [&b"RESTORE"[..], k, ttl.as_bytes(), payload, b"REPLACE"] {
                    write_bulk(&mut buf, part);
                }
            }
            out.write_all(&buf)
                .await
                .map_err(|e| step.error(format!("streaming the dump: {e}")))?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    out.flush()
        .await
        .map_err(|e| step.error(format!("streaming the dump: {e}")))
}

/// Reads one RESP array of bulk strings; None at a clean end of input.
async fn read_command<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    let count = parse_header(&line, b'*').ok_or_else(|| bad("expected a RESP array"))?;
    if count > 64 {
        return Err(bad("RESP array too long"));
    }
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        r.read_until(b'\n', &mut line).await?;
        let len = parse_header(&line, b'$').ok_or_else(|| bad("expected a RESP bulk string"))?;
        if len > MAX_BULK {
            return Err(bad("RESP bulk string too long"));
        }
        let mut data = vec![0u8; len + 2];
        r.read_exact(&mut data).await?;
        if &data[len..] != b"\r\n" {
            return Err(bad("RESP bulk string not terminated"));
        }
        data.truncate(len);
        parts.push(data);
    }
    Ok(Some(parts))
}

fn parse_header(line: &[u8], kind: u8) -> Option<usize> {
    let body = line.strip_prefix(&[kind])?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// A URL for DB `db` of the same server.
pub fn url_for_db(conn: &ConnInfo, db: u32) -> String {
    conn.with_database(&db.to_string())
}

/// Whether two URLs name the same Redis server (host as written, port).
fn same_server(a: &ConnInfo, b: &ConnInfo) -> bool {
    a.host.eq_ignore_ascii_case(&b.host)
        && a.port.unwrap_or(DEFAULT_PORT) == b.port.unwrap_or(DEFAULT_PORT)
}

/// The DBs of `conn`'s server that an app of this host is configured with,
/// empty or not: none may be handed to another. An app.json that cannot be
/// read stops the search: its DBs cannot be known.
async fn configured_dbs(tools: &Tools, step: &Step<'_>, conn: &ConnInfo) -> Result<Vec<u32>> {
    let mut dbs = Vec::new();
    for app in tools.host.list_apps().await? {
        let dir = tools.host.app_dir(&app)?;
        let cfg = read_app_config(&app, &dir)
            .await
            .map_err(|e| step.error(format!("cannot tell which DBs app {app} uses: {e}")))?;
        for service in cfg.services {
            if super::Kind::parse(&service).ok() != Some(super::Kind::Redis) {
                continue;
            }
            // A URL that does not parse names no server of ours.
            let Ok(other) = ConnInfo::parse(&super::label(&service), &service.url) else {
                continue;
            };
            if same_server(&other, conn)
                && let Ok(db) = db_of(&other)
            {
                dbs.push(db);
            }
        }
    }
    Ok(dbs)
}

/// Sets aside an empty DB of `source`'s server for a clone (on record until
/// the clone's restore finishes or fails), and returns its URL.
pub async fn clone_url(tools: &Tools, service: &str, source: &ConnInfo) -> Result<String> {
    let step = Step::new(service, "find an empty DB", source);
    let live = db_of(source)?;
    let db = claim_empty_db(tools, &step, source, &[live], |db| {
        Record::Reserved(Reserved {
            service: service.to_owned(),
            url: url_for_db(source, db),
        })
    })
    .await?;
    Ok(url_for_db(source, db))
}

/// The record that claims `conn`'s DB: a clone's reservation of it, say.
pub fn reservation_name(conn: &ConnInfo) -> Result<String> {
    Ok(record_name(conn, db_of(conn)?))
}

/// A key in a scratch DB that says whose data it holds: `new <tag>` for a
/// restore's copy, `old <tag>` for what its switch replaced. The marker
/// moves with the data in the same transaction as the SWAPDB, so what a
/// scratch DB holds is never in doubt, even after a crash. It never
/// reaches the live DB.
const MARKER: &str = "hop3-backup:restore-marker";

/// A dump replayed into a scratch DB beside the live one.
#[derive(Debug)]
pub struct Staged {
    live: u32,
    scratch: u32,
    tag: String,
}

impl Staged {
    fn record(&self, service: &str, conn: &ConnInfo, phase: Phase) -> Record {
        Record::Redis(RedisRecord {
            service: service.to_owned(),
            url: conn.url().to_owned(),
            live: self.live,
            scratch: self.scratch,
            tag: self.tag.clone(),
            phase,
        })
    }

    fn marker(&self, which: &str) -> String {
        format!("{which} {}", self.tag)
    }
}

/// The record name of DB `db` of `conn`'s server: one claim per DB number.
fn record_name(conn: &ConnInfo, db: u32) -> String {
    format!(
        "redis-{}-{}-{db}",
        conn.host.to_ascii_lowercase(),
        conn.port.unwrap_or(DEFAULT_PORT)
    )
}

/// Redis's port when a URL gives none.
pub const DEFAULT_PORT: u16 = 6379;

/// The number of DBs the server has (16 when it will not say).
async fn db_count(step: &Step<'_>, conn: &ConnInfo) -> Result<u32> {
    let mut con = connect(step, conn.url()).await?;
    let configured: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    Ok(configured.get(1).and_then(|n| n.parse().ok()).unwrap_or(16))
}

async fn dbsize(step: &Step<'_>, conn: &ConnInfo, db: u32) -> Result<u64> {
    let mut c = connect(step, &url_for_db(conn, db)).await?;
    redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .map_err(|e| step.error(e.to_string()))
}

/// Claims an empty DB of the server other than `avoid` and every DB an app
/// of this host is configured with, from the top (low DBs, 0 above all,
/// are the ones apps use without asking): the claim is a record, made
/// before the DB is looked at, so that no two restores (nor an agent killed
/// and started again) hand one DB out twice.
async fn claim_empty_db(
    tools: &Tools,
    step: &Step<'_>,
    conn: &ConnInfo,
    avoid: &[u32],
    record: impl Fn(u32) -> Record,
) -> Result<u32> {
    let configured = configured_dbs(tools, step, conn).await?;
    for db in (0..db_count(step, conn).await?).rev() {
        if avoid.contains(&db) || configured.contains(&db) {
            continue;
        }
        let name = record_name(conn, db);
        if !tools.records.claim(&name, &record(db)).await? {
            continue;
        }
        match dbsize(step, conn, db).await {
            Ok(0) => return Ok(db),
            Ok(_) => tools.records.remove(&name).await?,
            Err(e) => {
                tools.records.remove(&name).await?;
                return Err(e);
            }
        }
    }
    Err(step.error("every DB of the server holds data or is taken; none is free"))
}

/// Replays a dump into an empty scratch DB of the live DB's server.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    tag: &str,
    input: &mut R,
) -> Result<Staged> {
    let live = db_of(conn)?;
    let step = Step::new(service, "find an empty DB", conn);
    let tag = super::unique_suffix(tag);
    let record = |db| {
        let candidate = Staged {
            live,
            scratch: db,
            tag: tag.clone(),
        };
        candidate.record(service, conn, Phase::Staged)
    };
    let scratch = claim_empty_db(tools, &step, conn, &[live], record).await?;
    let staged = Staged { live, scratch, tag };
    if let Err(e) = replay(service, conn, &staged, input).await {
        if let Err(again) = discard(tools, service, conn, &staged).await {
            tracing::warn!(service, error = %again, "could not empty a scratch DB");
        }
        return Err(e);
    }
    Ok(staged)
}

/// Replays a dump into the scratch DB (emptied first, then marked).
async fn replay<R: AsyncRead + Unpin>(
    service: &str,
    conn: &ConnInfo,
    staged: &Staged,
    input: &mut R,
) -> Result<()> {
    let step = Step::new(service, "load", conn);
    let mut con = connect(&step, &url_for_db(conn, staged.scratch)).await?;
    let _: () = redis::pipe()
        .atomic()
        .cmd("FLUSHDB")
        .ignore()
        .cmd("SET")
        .arg(MARKER)
        .arg(staged.marker("new"))
        .ignore()
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))?;
    let mut reader = BufReader::with_capacity(hop3_proto::FRAME_SIZE, input);
    loop {
        let mut pipe = redis::pipe();
        let mut n = 0;
        while n < BATCH {
            let Some(parts) = read_command(&mut reader)
                .await
                .map_err(|e| step.error(format!("reading the dump: {e}")))?
            else {
                break;
            };
            if parts.first().map(Vec::as_slice) != Some(b"RESTORE") {
                return Err(step.error("the dump holds a command other than RESTORE"));
            }
            let mut cmd = redis::cmd("RESTORE");
            for p in &parts[1..] {
                cmd.arg(p.as_slice());
            }
            pipe.add_command(cmd).ignore();
            n += 1;
        }
        if n == 0 {
            break;
        }
        let _: () = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| step.error(e.to_string()))?;
    }
    Ok(())
}

/// Swaps the scratch and live DBs, the marker moving from the data that
/// leaves the scratch DB to the data that arrives in it, in one transaction.
async fn swap(
    step: &Step<'_>,
    conn: &ConnInfo,
    staged: &Staged,
    from: &str,
    to: &str,
) -> Result<()> {
    let mut con = connect(step, &url_for_db(conn, staged.scratch)).await?;
    let marker: Option<String> = redis::cmd("GET")
        .arg(MARKER)
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))?;
    if marker.as_deref() == Some(staged.marker(to).as_str()) {
        // Done already.
        return Ok(());
    }
    if marker.as_deref() != Some(staged.marker(from).as_str()) {
        return Err(step.error(format!(
            "scratch DB {} does not hold this restore's data",
            staged.scratch
        )));
    }
    // This connection stays on DB `scratch`, whose data the SWAPDB changes.
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(MARKER)
        .ignore()
        .cmd("SWAPDB")
        .arg(staged.live)
        .arg(staged.scratch)
        .ignore()
        .cmd("SET")
        .arg(MARKER)
        .arg(staged.marker(to))
        .ignore()
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))
}

/// Swaps the scratch DB with the live one in one step; the scratch DB then
/// holds the old data until [`finish`].
pub async fn switch(_tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    swap(
        &Step::new(service, "switch", conn),
        conn,
        staged,
        "new",
        "old",
    )
    .await
}

/// Swaps the DBs back.
pub async fn undo(_tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    swap(
        &Step::new(service, "undo the switch", conn),
        conn,
        staged,
        "old",
        "new",
    )
    .await
}

/// Empties the scratch DB, which holds the data the switch replaced.
pub async fn finish(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let name = record_name(conn, staged.scratch);
    tools
        .records
        .put(&name, &staged.record(service, conn, Phase::Committed))
        .await?;
    let emptied = empty_if_ours(service, conn, staged, "old").await;
    tools.records.remove(&name).await?;
    emptied
}

/// Empties the scratch DB.
pub async fn discard(tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    discard_marked(tools, service, conn, staged, "new").await
}

/// Empties the scratch DB if its marker says it holds `which` data of this
/// restore (or it is empty); anything else in it is left alone.
async fn empty_if_ours(service: &str, conn: &ConnInfo, staged: &Staged, which: &str) -> Result<()> {
    let step = Step::new(service, "drop", conn);
    let mut con = connect(&step, &url_for_db(conn, staged.scratch)).await?;
    let marker: Option<String> = redis::cmd("GET")
        .arg(MARKER)
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))?;
    if marker.as_deref() == Some(staged.marker(which).as_str()) {
        return redis::cmd("FLUSHDB")
            .query_async(&mut con)
            .await
            .map_err(|e| step.error(e.to_string()));
    }
    if marker.is_none() && dbsize(&step, conn, staged.scratch).await? == 0 {
        return Ok(());
    }
    Err(step.error(format!(
        "scratch DB {} holds data this restore did not put there; left as it is",
        staged.scratch
    )))
}

/// Undoes or finishes what an interrupted restore left, as `record` says
/// and the scratch DB's marker shows; returns what was done, for the log.
pub async fn recover(tools: &Tools, record: &RedisRecord) -> Result<String> {
    let conn = ConnInfo::parse(&record.service, &record.url)?;
    let service = record.service.as_str();
    let staged = Staged {
        live: record.live,
        scratch: record.scratch,
        tag: record.tag.clone(),
    };
    let step = Step::new(service, "undo the switch", &conn);
    let mut con = connect(&step, &url_for_db(&conn, staged.scratch)).await?;
    let marker: Option<String> = redis::cmd("GET")
        .arg(MARKER)
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))?;
    let mut done = String::new();
    if record.phase != Phase::Committed && marker.as_deref() == Some(staged.marker("old").as_str())
    {
        undo(tools, service, &conn, &staged).await?;
        done = format!("put DB {} back, ", staged.live);
    }
    let which = if marker.as_deref() == Some(staged.marker("old").as_str())
        && record.phase == Phase::Committed
    {
        "old"
    } else {
        "new"
    };
    discard_marked(tools, service, &conn, &staged, which).await?;
    Ok(format!("{done}emptied scratch DB {}", staged.scratch))
}

async fn discard_marked(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    staged: &Staged,
    which: &str,
) -> Result<()> {
    let emptied = empty_if_ours(service, conn, staged, which).await;
    tools
        .records
        .remove(&record_name(conn, staged.scratch))
        .await?;
    emptied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resp_round_trip() {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"*5\r\n");
        for part in [
            &b"RESTORE"[..],
            b"k\r\ney",
            b"0",
            &[0u8, 255, 10, 13],
            b"REPLACE",
        ] {
            write_bulk(&mut buf, part);
        }
        let mut r = BufReader::new(&buf[..]);
        let parts = read_command(&mut r).await.unwrap().unwrap();
        assert_eq!(parts[1], b"k\r\ney");
        assert_eq!(parts[3], [0u8, 255, 10, 13]);
        assert!(read_command(&mut r).await.unwrap().is_none());
        let mut cut = BufReader::new(&buf[..buf.len() - 3]);
        assert!(read_command(&mut cut).await.is_err());
    }
}
