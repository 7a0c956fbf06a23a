//! A throwaway Redis server: `redis-server` with a configuration file of its
//! own (port, password, no persistence) as a child process.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use tempfile::TempDir;

use super::{
    Daemon, clean_command, password, run_bytes, run_text, run_with_input, start_on_free_port,
};

/// A script that lists every key of the current DB, sorted, each with its
/// type and its value in a canonical order (set members and hash fields
/// sorted, sorted sets by rank with their scores): the same output means the
/// same data. Time to live is left to [`TTLS`].
const CONTENT: &str = r#"
local keys = redis.call('KEYS', '*')
table.sort(keys)
local out = {}
for _, k in ipairs(keys) do
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then
    v = {redis.call('GET', k)}
  elseif t == 'hash' then
    local flat = redis.call('HGETALL', k)
    local fields = {}
    for i = 1, #flat, 2 do table.insert(fields, flat[i]) end
    table.sort(fields)
    v = {}
    for _, f in ipairs(fields) do
      table.insert(v, f)
      table.insert(v, redis.call('HGET', k, f))
    end
  elseif t == 'list' then
    v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then
    v = redis.call('SMEMBERS', k)
    table.sort(v)
  elseif t == 'zset' then
    v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  else
    v = {'unsupported type'}
  end
  table.insert(out, {k, t, v})
end
return out
"#;

/// A script that lists `key, milliseconds left` for every key of the
/// current DB with a time to live, sorted by key.
const TTLS: &str = r#"
local keys = redis.call('KEYS', '*')
table.sort(keys)
local out = {}
for _, k in ipairs(keys) do
  local ttl = redis.call('PTTL', k)
  if ttl >= 0 then
    table.insert(out, k)
    table.insert(out, tostring(ttl))
  end
end
return out
"#;

/// A Redis server of its own; stopped and removed on drop.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    password: String,
    base: PathBuf,
    log: PathBuf,
    // Field order matters: the server stops before its directory goes.
    daemon: Option<Daemon>,
    _dir: TempDir,
}

impl Redis {
    /// Starts a server with a password and 16 DBs on a free port.
    pub fn start() -> Result<Redis> {
        let dir = tempfile::Builder::new().prefix("hop3-redis-").tempdir()?;
        let base = dir.path().to_owned();
        let mut redis = Redis {
            port: 0,
            password: password(),
            log: base.join("redis.log"),
            base,
            daemon: None,
            _dir: dir,
        };
        redis.launch(None)?;
        Ok(redis)
    }

    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let (port, daemon) = start_on_free_port(port, |port| {
            // The password in a private file, not on the command line.
            let conf = self.base.join("redis.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n\
                 save \"\"\nappendonly no\ndatabases 16\ndir {}\nrequirepass \"{}\"\n",
                self.base.display(),
                self.password
            );
            fs::write(&conf, text)?;
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o600))?;
            let mut cmd = clean_command("redis-server");
            cmd.arg(&conf);
            let mut daemon = Daemon::spawn("redis-server", cmd, &self.log, Signal::TERM)?;
            self.port = port;
            daemon.wait_ready(|| {
                self.cli(0)
                    .arg("PING")
                    .output()
                    .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"PONG"))
            })?;
            Ok(daemon)
        })?;
        self.port = port;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password (`requirepass`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// `redis://:password@127.0.0.1:PORT/db`.
    pub fn url(&self, db: u32) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}/{db}",
            super::url_encode(&self.password),
            self.port
        )
    }

    /// Stops the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) -> Result<()> {
        match self.daemon.take() {
            Some(mut daemon) => daemon.stop(),
            None => Ok(()),
        }
    }

    /// `redis-cli` on DB `db`, the password in its environment
    /// (`REDISCLI_AUTH`), printing replies in their quoted form, which shows
    /// binary bytes as escapes.
    pub fn cli(&self, db: u32) -> Command {
        let mut cmd = clean_command("redis-cli");
        cmd.env("REDISCLI_AUTH", &self.password)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &db.to_string(), "--no-raw"]);
        cmd
    }

    /// Runs one command on DB `db`; its reply as `redis-cli` prints it. A
    /// reply that is an error fails.
    pub fn cmd(&self, db: u32, args: &[&[u8]]) -> Result<String> {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = self.cli(db);
        for a in args {
            cmd.arg(std::ffi::OsStr::from_bytes(a));
        }
        let out = run_text(&mut cmd)?;
        if out.starts_with("(error)") {
            bail!("redis {:?}: {out}", String::from_utf8_lossy(args[0]));
        }
        Ok(out.trim_end().to_owned())
    }

    /// Sends `commands` (each a list of arguments, binary-safe) on DB `db`
    /// through `redis-cli --pipe`, and fails if any reply is an error.
    pub fn pipe(&self, db: u32, commands: &[Vec<Vec<u8>>]) -> Result<()> {
        let mut resp = Vec::new();
        for args in commands {
            resp.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                resp.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                resp.extend_from_slice(a);
                resp.extend_from_slice(b"\r\n");
            }
        }
        let mut cmd = self.cli(db);
        cmd.arg("--pipe");
        let out = run_with_input(&mut cmd, &resp)?;
        let out = String::from_utf8_lossy(&out);
        let ok = format!("errors: 0, replies: {}", commands.len());
        if !out.contains(&ok) {
            bail!("redis-cli --pipe did not report `{ok}`:\n{out}");
        }
        Ok(())
    }

    /// Every key of DB `db` with its type and value (see [`CONTENT`]), as
    /// `redis-cli` prints the reply: one line per element.
    pub fn content(&self, db: u32) -> Result<Vec<String>> {
        let mut cmd = self.cli(db);
        cmd.args(["EVAL", CONTENT, "0"]);
        let out = run_bytes(&mut cmd).context("listing a Redis DB")?;
        let text = String::from_utf8(out).context("redis-cli --no-raw printed invalid UTF-8")?;
        if text.starts_with("(error)") {
            bail!("listing a Redis DB: {text}");
        }
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// `(key as printed, milliseconds left)` for every key of DB `db` with a
    /// time to live.
    pub fn ttls(&self, db: u32) -> Result<Vec<(String, i64)>> {
        let mut cmd = self.cli(db);
        cmd.args(["--raw", "EVAL", TTLS, "0"]);
        // Raw output: one element a line; the keys used with a TTL are text.
        let text = run_text(&mut cmd)?;
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|pair| match pair {
                [k, ttl] => Ok(((*k).to_owned(), ttl.parse()?)),
                _ => bail!("odd TTL listing: {text}"),
            })
            .collect()
    }

    /// The number of keys in DB `db`.
    pub fn dbsize(&self, db: u32) -> Result<u64> {
        let out = self.cmd(db, &[b"DBSIZE"])?;
        out.trim_start_matches("(integer) ")
            .parse()
            .with_context(|| format!("DBSIZE said {out:?}"))
    }

    /// The DBs holding keys, with their sizes: what a restore may touch.
    pub fn nonempty_dbs(&self) -> Result<Vec<(u32, u64)>> {
        let mut found = Vec::new();
        for db in 0..16 {
            let n = self.dbsize(db)?;
            if n > 0 {
                found.push((db, n));
            }
        }
        Ok(found)
    }
}
