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
use super::tools::Tools;
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

/// Finds an empty DB other than `avoid` on the server, for a scratch or a clone.
pub async fn empty_db(
    _tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    avoid: &[u32],
) -> Result<u32> {
    let step = Step::new(service, "find an empty DB", conn);
    let mut con = connect(&step, conn.url()).await?;
    let configured: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    let count: u32 = configured.get(1).and_then(|n| n.parse().ok()).unwrap_or(16);
    // From the top: low DBs (0 above all) are the ones apps use without asking.
    for db in (0..count).rev() {
        if avoid.contains(&db) {
            continue;
        }
        let mut c = connect(&step, &url_for_db(conn, db)).await?;
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut c)
            .await
            .map_err(|e| step.error(e.to_string()))?;
        if size == 0 {
            return Ok(db);
        }
    }
    Err(step.error("every DB of the server holds data; none is free"))
}

/// A dump replayed into a scratch DB beside the live one.
#[derive(Debug)]
pub struct Staged {
    live: u32,
    scratch: u32,
}

/// Replays a dump into an empty scratch DB of the live DB's server.
pub async fn load<R: AsyncRead + Unpin>(
    tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    _tag: &str,
    input: &mut R,
) -> Result<Staged> {
    let live = db_of(conn)?;
    let scratch = empty_db(tools, service, conn, &[live]).await?;
    let staged = Staged { live, scratch };
    if let Err(e) = replay(service, conn, scratch, input).await {
        if let Err(again) = flush(service, conn, scratch).await {
            tracing::warn!(service, error = %again, "could not empty a scratch DB");
        }
        return Err(e);
    }
    Ok(staged)
}

/// Replays a dump into DB `scratch` (emptied first).
async fn replay<R: AsyncRead + Unpin>(
    service: &str,
    conn: &ConnInfo,
    scratch: u32,
    input: &mut R,
) -> Result<()> {
    let step = Step::new(service, "load", conn);
    let mut con = connect(&step, &url_for_db(conn, scratch)).await?;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))?;
    let mut reader = BufReader::with_capacity(hop3_proto::CHUNK_SIZE, input);
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

async fn swap(step: &Step<'_>, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    let mut con = connect(step, &url_for_db(conn, staged.scratch)).await?;
    redis::cmd("SWAPDB")
        .arg(staged.live)
        .arg(staged.scratch)
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))
}

/// Swaps the scratch DB with the live one in one step; the scratch DB then
/// holds the old data until [`finish`].
pub async fn switch(_tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    swap(&Step::new(service, "switch", conn), conn, staged).await
}

/// Swaps the DBs back.
pub async fn undo(_tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    swap(&Step::new(service, "undo the switch", conn), conn, staged).await
}

/// Empties the scratch DB, which holds the data the switch replaced.
pub async fn finish(_tools: &Tools, service: &str, conn: &ConnInfo, staged: &Staged) -> Result<()> {
    flush(service, conn, staged.scratch).await
}

/// Empties the scratch DB.
pub async fn discard(
    _tools: &Tools,
    service: &str,
    conn: &ConnInfo,
    staged: &Staged,
) -> Result<()> {
    flush(service, conn, staged.scratch).await
}

/// Empties DB `db` (a scratch that is no longer needed).
async fn flush(service: &str, conn: &ConnInfo, db: u32) -> Result<()> {
    let step = Step::new(service, "drop", conn);
    let mut con = connect(&step, &url_for_db(conn, db)).await?;
    redis::cmd("FLUSHDB")
        .query_async(&mut con)
        .await
        .map_err(|e| step.error(e.to_string()))
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
