//! Attached services: an app's PostgreSQL, MariaDB and Redis databases,
//! each on a throwaway server of the test's own, backed up with the app and
//! brought back exactly, cloned into databases of their own, and never
//! changed by a backup or restore that fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hop3_tests::cli::{BackupSummary, Output};
use hop3_tests::fixtures::{self, App};
use hop3_tests::harness::{list_dir, wait_child, wait_for_entries, wait_until};
use hop3_tests::servers::{self, MariaDb, Postgres, Redis, diff_lines};
use hop3_tests::{Snapshot, System};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Restores that must lose nothing: clone names, Redis DBs, agents killed
/// and switches failed halfway, roles without CREATEDB.
#[path = "services_safety.rs"]
mod safety;

/// How long leftovers may outlive a restore.
const SETTLE: Duration = Duration::from_secs(30);

/// How long one backup or restore of these small apps may take on a loaded
/// two-core machine with debug binaries.
const OPERATION: Duration = Duration::from_secs(180);

/// The Redis DB the apps use (not 0, so that "DB 0 untouched" means something).
const REDIS_DB: u32 = 3;

// ---------------------------------------------------------------------------
// Apps with services

/// Sets the `services` of the app's `app.json`: `(type, name, url)` each.
pub(crate) fn attach(app: &App, services: &[(&str, &str, &str)]) -> Result<()> {
    let mut json = app.app_json()?;
    json["services"] = services
        .iter()
        .map(|(kind, name, url)| json!({"type": kind, "name": name, "url": url}))
        .collect();
    let text = serde_json::to_string_pretty(&json)? + "\n";
    fs::write(app.dir.join("app.json"), text)?;
    Ok(())
}

/// Adds `vars` to the app's `ENV`.
fn add_env(app: &App, vars: &[(&str, &str)]) -> Result<BTreeMap<String, String>> {
    let mut env = Snapshot::of(&app.dir)?.env;
    for (k, v) in vars {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    app.write_env(&env)?;
    Ok(env)
}

/// The `url` of the service `name` in the app's `app.json`.
fn service_url(app: &App, name: &str) -> Result<String> {
    let json = app.app_json()?;
    json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["url"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("app.json of {} has no service {name}: {json}", app.name))
}

/// The database a service URL names (its path, percent-decoded).
fn url_database(url: &str) -> Result<String> {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.split(['?', '#']).next().unwrap_or_default())
        .with_context(|| format!("no database in {url}"))?;
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3).context("bad percent-encoding")?;
            out.push(u8::from_str_radix(hex, 16)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// Whether `name` is a clone's database name made from `prefix` (the
/// source's database and the clone's name, folded and cut): the prefix,
/// `_` and 8 hex digits of a hash, within 63 bytes.
fn is_clone_name(name: &str, prefix: &str) -> bool {
    name.len() <= 63
        && name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|hash| hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Fails with both listings' differences unless they are equal.
pub(crate) fn same(expected: &[String], actual: &[String], what: &str) -> Result<()> {
    if expected != actual {
        bail!("{what} differs:\n{}", diff_lines(expected, actual, 15));
    }
    Ok(())
}

/// Fails unless the listings differ: a check that a later "equal" means
/// something.
pub(crate) fn differs(a: &[String], b: &[String], what: &str) -> Result<()> {
    ensure!(a != b, "{what}: the change made no difference");
    Ok(())
}

/// A PostgreSQL server with one app database, its owner and URL.
pub(crate) struct PgDb {
    server: Postgres,
    user: String,
    password: String,
    db: String,
    pub(crate) url: String,
}

impl PgDb {
    /// A new server with database `db` owned by `app_user`, filled with
    /// [`PG_SCHEMA`].
    pub(crate) fn start(db: &str) -> Result<PgDb> {
        let server = Postgres::start()?;
        let user = "app_user".to_owned();
        let password = servers::password();
        let url = server.create_app_database(&user, &password, db)?;
        let pg = PgDb {
            server,
            user,
            password,
            db: db.to_owned(),
            url,
        };
        pg.script(PG_SCHEMA)?;
        Ok(pg)
    }

    /// Runs `sql` as the app would (its user, its database).
    pub(crate) fn script(&self, sql: &str) -> Result<()> {
        self.server
            .script_as(&self.user, &self.password, &self.db, sql)
    }

    /// Runs one query as the app on database `db`.
    fn query_in(&self, db: &str, sql: &str) -> Result<String> {
        self.server.query_as(&self.user, &self.password, db, sql)
    }

    pub(crate) fn fingerprint(&self) -> Result<Vec<String>> {
        self.server.fingerprint(&self.db)
    }
}

/// Tables with a foreign key, serial columns and a sequence of their own,
/// an index, unicode text (quotes, newlines, tabs, emoji), binary values
/// (with NUL, CR, LF and 0xff), NULLs, numerics and times; 4000 rows.
const PG_SCHEMA: &str = r#"
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    balance numeric(12,2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    note text,
    payload bytea,
    placed_at timestamptz NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id, placed_at);
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL);
INSERT INTO customers (name, email, balance, created_at)
    SELECT 'Zoë ' || i || E' — 日本語 🚀 «l''apostrophe» "double" \\ back', 'c' || i || '@example.com',
           i * 1.25, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
    FROM generate_series(1, 1000) AS i;
INSERT INTO orders (customer_id, note, payload, placed_at)
    SELECT 1 + i % 1000,
           CASE WHEN i % 7 = 0 THEN NULL ELSE E'line one\nline two\ttab ' || i END,
           '\x00ff0d0a'::bytea || decode(md5(i::text), 'hex') || '\x00'::bytea,
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
    FROM generate_series(1, 3000) AS i;
SELECT setval('invoice_no', 1042);
INSERT INTO notes SELECT i, repeat('note ', i) FROM generate_series(1, 50) AS i;
"#;

/// Rows changed, deleted and added, the sequences moved on, a table dropped
/// and another created: everything a restore must undo.
pub(crate) const PG_CHANGES: &str = r#"
UPDATE customers SET name = 'changed', balance = 0 WHERE id % 10 = 0;
DELETE FROM orders WHERE id % 3 = 0;
INSERT INTO customers (name, email, created_at)
    SELECT 'new ' || i, 'n' || i || '@example.com', now() FROM generate_series(1, 200) AS i;
SELECT nextval('invoice_no');
DROP TABLE notes;
CREATE TABLE added_later (x integer);
"#;

/// A MariaDB server with one app database, its user and URL.
struct MyDb {
    server: MariaDb,
    user: String,
    password: String,
    db: String,
    url: String,
}

impl MyDb {
    /// A new server with database `db` filled with [`MY_SCHEMA`].
    fn start(db: &str) -> Result<MyDb> {
        let server = MariaDb::start()?;
        let user = "app_user".to_owned();
        let password = servers::password();
        let url = server.create_app_database(&user, &password, db)?;
        let my = MyDb {
            server,
            user,
            password,
            db: db.to_owned(),
            url,
        };
        my.script(MY_SCHEMA)?;
        Ok(my)
    }

    fn script(&self, sql: &str) -> Result<()> {
        self.server
            .script_as(&self.user, &self.password, &self.db, sql)
    }

    fn query(&self, sql: &str) -> Result<String> {
        self.server
            .query_as(&self.user, &self.password, &self.db, sql)
    }

    fn fingerprint(&self) -> Result<Vec<String>> {
        self.server.fingerprint(&self.db)
    }
}

/// Tables with a foreign key and AUTO_INCREMENT, a trigger that writes an
/// audit row for every order, a procedure, a function and a view; unicode
/// text, binary values, NULLs; about 7000 rows.
const MY_SCHEMA: &str = r#"
CREATE TABLE customers (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    email VARCHAR(200) UNIQUE,
    balance DECIMAL(12,2) NOT NULL DEFAULT 0,
    created_at DATETIME NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE orders (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    customer_id INT NOT NULL,
    note TEXT,
    payload VARBINARY(64),
    placed_at DATETIME NOT NULL,
    CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE audit (
    id INT AUTO_INCREMENT PRIMARY KEY,
    order_id BIGINT NOT NULL,
    message VARCHAR(200) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE notes (id INT PRIMARY KEY, body TEXT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DELIMITER ;;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
BEGIN
    INSERT INTO audit (order_id, message) VALUES (NEW.id, CONCAT('order for ', NEW.customer_id));
END;;
CREATE PROCEDURE add_order(IN cust INT, IN note_text TEXT)
BEGIN
    INSERT INTO orders (customer_id, note, payload, placed_at)
        VALUES (cust, note_text, UNHEX('00FF0D0A'), '2024-06-01 12:00:00');
END;;
CREATE FUNCTION order_count(cust INT) RETURNS INT READS SQL DATA
BEGIN
    RETURN (SELECT COUNT(*) FROM orders WHERE customer_id = cust);
END;;
DELIMITER ;
INSERT INTO customers (name, email, balance, created_at)
    SELECT CONCAT('Zoë ', seq, ' — 日本語 🚀 «l''apostrophe» "double" \\ back'),
           CONCAT('c', seq, '@example.com'), seq * 1.25, '2024-01-01' + INTERVAL seq HOUR
    FROM seq_1_to_1000;
INSERT INTO orders (customer_id, note, payload, placed_at)
    SELECT 1 + seq MOD 1000, IF(seq MOD 7 = 0, NULL, CONCAT('line one\nline two\ttab ', seq)),
           UNHEX(CONCAT('00FF0D0A', MD5(seq), '00')), '2024-01-01' + INTERVAL seq MINUTE
    FROM seq_1_to_3000;
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, COUNT(o.id) AS orders
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name;
INSERT INTO notes SELECT seq, REPEAT('note ', seq) FROM seq_1_to_50;
"#;

/// Rows changed, deleted and added (through the procedure, so the trigger
/// fires), a table, the trigger and the procedure dropped, the view replaced.
const MY_CHANGES: &str = r#"
UPDATE customers SET name = 'changed' WHERE id MOD 10 = 0;
DELETE FROM orders WHERE id MOD 3 = 0;
CALL add_order(5, 'after the backup');
DROP TABLE notes;
DROP TRIGGER orders_audit;
DROP PROCEDURE add_order;
CREATE OR REPLACE VIEW customer_totals AS SELECT 1 AS id;
CREATE TABLE added_later (x INT);
"#;

/// The commands that fill a Redis DB: strings (text, binary, large),
/// unicode keys, hashes (small and large), lists, sets (of strings and of
/// integers), sorted sets, and keys with a time to live; about 3600 keys.
fn redis_fixture(seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut cmd = |parts: Vec<Vec<u8>>| cmds.push(parts);
    let b = |s: &str| s.as_bytes().to_vec();
    for i in 0..1500 {
        cmd(vec![
            b("SET"),
            b(&format!("str:{i}")),
            b(&format!("value {i} ✓")),
        ]);
    }
    for i in 0..300 {
        let mut value = vec![0u8; 64];
        rng.fill_bytes(&mut value);
        // Every awkward byte, whatever the random draw.
        value.extend_from_slice(b"\0\r\n\xff");
        let mut key = b"bin:".to_vec();
        key.extend_from_slice(&[i as u8, 0, 0xff]);
        key.extend_from_slice(format!(":{i}").as_bytes());
        cmd(vec![b("SET"), key, value]);
    }
    let mut big = vec![0u8; 200 * 1024];
    rng.fill_bytes(&mut big);
    cmd(vec![b("SET"), b("bin:big"), big]);
    for i in 0..200 {
        cmd(vec![
            b("SET"),
            b(&format!("clé:日本:🚀:{i}")),
            b(&format!("données {i}")),
        ]);
    }
    for i in 0..200 {
        let mut hset = vec![b("HSET"), b(&format!("hash:{i}"))];
        for (f, v) in [("name", "Zoë"), ("champ-é", "日本"), ("n", &i.to_string())] {
            hset.extend([b(f), b(v)]);
        }
        hset.extend([b("bytes"), vec![0, 1, 2, 0xff, b'\n']]);
        cmd(hset);
    }
    let mut bighash = vec![b("HSET"), b("hash:big")];
    for f in 0..1000 {
        bighash.extend([
            b(&format!("field-{f}")),
            b(&format!("{}", rng.random::<u64>())),
        ]);
    }
    cmd(bighash);
    for i in 0..200 {
        let mut push = vec![b("RPUSH"), b(&format!("list:{i}"))];
        for j in 0..10 {
            push.push(b(&format!("item {j} of {i}")));
        }
        push.push(vec![0, 0xff, b'\r']);
        cmd(push);
    }
    for i in 0..200 {
        let mut add = vec![b("SADD"), b(&format!("set:{i}"))];
        for j in 0..8 {
            add.push(b(&format!("member-{j}-✓")));
        }
        cmd(add);
        cmd(vec![
            b("SADD"),
            b(&format!("intset:{i}")),
            b("1"),
            b("-7"),
            b(&i.to_string()),
        ]);
    }
    for i in 0..200 {
        let mut add = vec![b("ZADD"), b(&format!("zset:{i}"))];
        for (j, score) in ["1.5", "-3", "1e10", "0", "2.25"].iter().enumerate() {
            add.extend([b(score), b(&format!("z{j}-{i}"))]);
        }
        cmd(add);
    }
    for i in 0..300 {
        let ms = 3_600_000 + i * 1000;
        cmd(vec![
            b("SET"),
            b(&format!("ttl:{i}")),
            b(&format!("expires {i}")),
            b("PX"),
            b(&ms.to_string()),
        ]);
    }
    cmd(vec![b("HSET"), b("ttl:hash"), b("a"), b("1")]);
    cmd(vec![b("EXPIRE"), b("ttl:hash"), b("7200")]);
    cmd(vec![
        b("SET"),
        b("délai:⏳"),
        b("bientôt"),
        b("EX"),
        b("5000"),
    ]);
    cmds
}

/// Keys changed, deleted, added; a TTL removed, one added.
fn redis_changes() -> Vec<Vec<Vec<u8>>> {
    let b = |s: &str| s.as_bytes().to_vec();
    let mut cmds = vec![
        vec![b("SET"), b("str:1"), b("changed")],
        vec![b("SET"), b("brand-new"), b("new")],
        vec![b("HSET"), b("hash:1"), b("name"), b("changed")],
        vec![b("LPUSH"), b("list:1"), b("pushed")],
        vec![b("SREM"), b("set:1"), b("member-0-✓")],
        vec![b("ZADD"), b("zset:1"), b("99"), b("z0-1")],
        vec![b("PERSIST"), b("ttl:1")],
        vec![b("EXPIRE"), b("str:3"), b("100")],
        vec![b("DEL"), b("ttl:2"), b("bin:big"), b("hash:big")],
    ];
    for i in 10..60 {
        cmds.push(vec![b("DEL"), b(&format!("str:{i}"))]);
    }
    cmds
}

/// A Redis server with the app's data in [`REDIS_DB`] and another app's
/// key in DB 0.
fn start_redis(seed: u64) -> Result<Redis> {
    let redis = Redis::start()?;
    redis.pipe(REDIS_DB, &redis_fixture(seed))?;
    redis.pipe(
        0,
        &[vec![
            b"SET".to_vec(),
            b"other-app:key".to_vec(),
            b"keep".to_vec(),
        ]],
    )?;
    Ok(redis)
}

/// Fails unless DB `db` has exactly the keys with a time to live that
/// `before` had, each with some time left and no more than before.
fn ttls_kept(before: &[(String, i64)], redis: &Redis, db: u32) -> Result<()> {
    let after = redis.ttls(db)?;
    let keys = |l: &[(String, i64)]| l.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    same(&keys(before), &keys(&after), "the keys with a TTL")?;
    for ((key, was), (_, now)) in before.iter().zip(&after) {
        ensure!(
            *now > 0 && now <= was,
            "{key}: {now} ms left after the restore, {was} ms before the backup"
        );
    }
    Ok(())
}

/// An idle `psql` session on a database, as an app's connection pool
/// holds; closed on drop.
struct IdleSession(std::process::Child);

impl IdleSession {
    fn open(pg: &PgDb, db: &str) -> Result<IdleSession> {
        let mut cmd = pg.server.psql_as(&pg.user, &pg.password, db);
        cmd.env("PGAPPNAME", "idle-app-session")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let session = IdleSession(cmd.spawn()?);
        wait_until(Duration::from_secs(30), "the idle session", || {
            let n = pg.server.query(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle-app-session'",
            )?;
            Ok((n.trim() == "1").then_some(()))
        })?;
        Ok(session)
    }
}

impl Drop for IdleSession {
    fn drop(&mut self) {
        // End of input ends psql.
        drop(self.0.stdin.take());
        let _ = wait_child(&mut self.0, Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------
// The store

/// `metadata.json` of a backup, as a script would read it.
fn metadata(sys: &System, app: &str, id: &str) -> Result<Value> {
    let path = sys.backup_dir(app, id).join("metadata.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Checks that the backup holds the dump `file` of service `kind:name`, listed
/// in metadata.json with its size and SHA-256, private (0600), and in
/// `backup:info` with its size; returns its bytes.
fn stored_dump(sys: &System, app: &str, id: &str, kind: &str, name: &str) -> Result<Vec<u8>> {
    let ext = if kind == "redis" { "resp" } else { "sql" };
    let file = format!("services/{kind}_{name}.{ext}");
    let path = sys.backup_dir(app, id).join(&file);
    let bytes = fs::read(&path).with_context(|| format!("the backup has no {file}"))?;
    let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "{file} has mode {mode:o}");

    let meta = metadata(sys, app, id)?;
    ensure!(meta["services_included"] == json!(true), "{meta}");
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    ensure!(
        meta["checksums"][&file] == json!(expected),
        "metadata.json's checksum of {file} is {}, the file's {expected}",
        meta["checksums"][&file]
    );
    let entry = meta["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["type"] == kind && s["name"] == name)
        .with_context(|| format!("metadata.json lists no {kind}:{name}: {meta}"))?;
    ensure!(entry["backup_file"] == json!(file), "{entry}");
    ensure!(entry["size_bytes"] == json!(bytes.len()), "{entry}");

    let info = sys.info(id)?;
    ensure!(info.services_included && info.all_valid, "{info:?}");
    ensure!(info.file(&file)?.valid, "{info:?}");
    let listed = info
        .service_dumps
        .iter()
        .find(|s| s["type"] == kind && s["name"] == name)
        .with_context(|| {
            format!(
                "backup:info lists no {kind}:{name}: {:?}",
                info.service_dumps
            )
        })?;
    ensure!(
        info.services.contains(&format!("{kind}:{name}")),
        "backup:info's services: {:?}",
        info.services
    );
    ensure!(
        listed["file"] == json!(file) && listed["size"] == json!(bytes.len()),
        "{listed}"
    );
    Ok(bytes)
}

/// The `services` of the backup's `backup:list` entry.
fn listed_services(sys: &System, id: &str) -> Result<Vec<String>> {
    let listed = sys.list(&[])?;
    let entry = listed
        .iter()
        .find(|b| b.backup_id == id)
        .with_context(|| format!("backup:list lacks {id}: {listed:?}"))?;
    let mut services = entry.services.clone();
    services.sort();
    Ok(services)
}

/// Runs a create that must fail: non-zero exit, an error naming `label`, a
/// FAILED catalog entry whose reason names it too, and nothing in the store.
fn create_fails(sys: &System, app: &str, label: &str) -> Result<Vec<Output>> {
    let before: BTreeSet<String> = sys.list(&[app])?.into_iter().map(|b| b.backup_id).collect();
    let stored = sys.store_entries(app)?;
    let out = sys.hop3(["backup:create", app]).failure(&[label])?;
    let json = sys
        .hop3(["--json", "backup:create", app])
        .failure(&[label])?;
    let after = sys.list(&[app])?;
    let new: Vec<&BackupSummary> = after
        .iter()
        .filter(|b| !before.contains(&b.backup_id))
        .collect();
    ensure!(new.len() == 2, "two failed creates, catalog: {after:?}");
    for b in &new {
        ensure!(
            b.status == "FAILED" && b.error().contains(label),
            "a failed create is listed as {b:?}"
        );
    }
    let stored: Vec<&str> = stored.iter().map(String::as_str).collect();
    store_holds(sys, app, &stored)?;
    // Both runs' output, for the secrets check.
    Ok(vec![out, json])
}

/// The store holds exactly the backup directories `expected` of `app`, and
/// no partial one of any app.
fn store_holds(sys: &System, app: &str, expected: &[&str]) -> Result<()> {
    wait_for_entries(&sys.store.join("apps").join(app), expected, SETTLE)
        .context("a failed create left something in the store")?;
    ensure!(sys.partials()?.is_empty(), "{:?}", sys.partials()?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Round trips

#[test]
fn postgres_database_comes_back_exactly() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 101, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    add_env(&app, &[("DATABASE_URL", &pg.url)])?;
    let original = pg.fingerprint()?;
    let databases = pg.server.databases()?;

    let created = sys.create("shop")?;
    ensure!(created.services == ["postgres:db"], "{created:?}");
    ensure!(listed_services(&sys, &created.backup_id)? == ["postgres:db"]);
    let dump = stored_dump(&sys, "shop", &created.backup_id, "postgres", "db")?;
    let text = String::from_utf8(dump).context("the PostgreSQL dump is not text")?;
    for needle in [
        "PostgreSQL database dump",
        "CREATE TABLE public.customers",
        "invoice_no",
    ] {
        ensure!(text.contains(needle), "the dump lacks {needle:?}");
    }
    same(
        &original,
        &pg.fingerprint()?,
        "the database after its backup",
    )?;

    pg.script(PG_CHANGES)?;
    differs(&original, &pg.fingerprint()?, "PG_CHANGES")?;

    // Without stop/start hooks the app keeps its connections open (an idle
    // pool); the restore must still get the database to itself.
    let session = IdleSession::open(&pg, "shop")?;
    sys.restore(&created.backup_id, None)?;
    drop(session);
    same(
        &original,
        &pg.fingerprint()?,
        "the database after the restore",
    )?;
    // No scratch or old copy left behind.
    ensure!(
        pg.server.databases()? == databases,
        "{:?}",
        pg.server.databases()?
    );
    // The app can go on: its user owns what came back, the sequence goes on
    // from where it was at the backup.
    let id = pg.query_in(
        "shop",
        "INSERT INTO customers (name, created_at) VALUES ('after', now()) RETURNING id",
    )?;
    ensure!(id.trim() == "1001", "the next customer ID is {id:?}");
    let next = pg.query_in("shop", "SELECT nextval('invoice_no')")?;
    ensure!(next.trim() == "1043", "the next invoice number is {next:?}");

    // And again: a restore can be repeated.
    sys.restore(&created.backup_id, None)?;
    same(
        &original,
        &pg.fingerprint()?,
        "the database after a second restore",
    )?;
    Ok(())
}

#[test]
fn mariadb_database_comes_back_with_its_triggers_routines_and_views() -> Result<()> {
    let my = MyDb::start("shop")?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 102, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    add_env(&app, &[("DATABASE_URL", &my.url)])?;
    let original = my.fingerprint()?;
    for needle in [
        "trigger orders_audit",
        "routine PROCEDURE add_order",
        "routine FUNCTION order_count",
        "view customer_totals",
        "rows audit 3000",
    ] {
        ensure!(
            original.iter().any(|l| l.starts_with(needle)),
            "the fixture lacks {needle:?}: {original:#?}"
        );
    }
    let databases = my.server.databases()?;

    let created = sys.create("shop")?;
    ensure!(created.services == ["mysql:db"], "{created:?}");
    ensure!(listed_services(&sys, &created.backup_id)? == ["mysql:db"]);
    let dump = stored_dump(&sys, "shop", &created.backup_id, "mysql", "db")?;
    let text = String::from_utf8(dump).context("the MariaDB dump is not text")?;
    for needle in [
        "CREATE TABLE `customers`",
        "TRIGGER",
        "PROCEDURE",
        "FUNCTION",
        "VIEW",
    ] {
        ensure!(text.contains(needle), "the dump lacks {needle:?}");
    }
    same(
        &original,
        &my.fingerprint()?,
        "the database after its backup",
    )?;

    my.script(MY_CHANGES)?;
    differs(&original, &my.fingerprint()?, "MY_CHANGES")?;

    sys.restore(&created.backup_id, None)?;
    same(
        &original,
        &my.fingerprint()?,
        "the database after the restore",
    )?;
    ensure!(
        my.server.databases()? == databases,
        "{:?}",
        my.server.databases()?
    );
    // The routines run, and the trigger fires.
    let count = my.query("SELECT order_count(2)")?;
    my.query("CALL add_order(2, 'after the restore')")?;
    let again = my.query("SELECT order_count(2)")?;
    ensure!(
        again.trim().parse::<u64>()? == count.trim().parse::<u64>()? + 1,
        "order_count went from {count:?} to {again:?}"
    );
    let audited = my.query("SELECT COUNT(*) FROM audit")?;
    ensure!(
        audited.trim() == "3001",
        "the trigger did not fire: {audited:?} audit rows"
    );
    Ok(())
}

#[test]
fn redis_keys_come_back_with_their_types_values_and_ttls() -> Result<()> {
    let redis = start_redis(103)?;
    let url = redis.url(REDIS_DB);
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 103, &sys.scratch("fixtures")?)?;
    attach(&app, &[("redis", "cache", &url)])?;
    add_env(&app, &[("REDIS_URL", &url)])?;
    let original = redis.content(REDIS_DB)?;
    let keys = redis.dbsize(REDIS_DB)?;
    ensure!(keys > 3000, "only {keys} keys");
    let ttls = redis.ttls(REDIS_DB)?;
    ensure!(ttls.len() == 302, "{} keys with a TTL", ttls.len());
    let dbs = redis.nonempty_dbs()?;
    ensure!(dbs == [(0, 1), (REDIS_DB, keys)], "{dbs:?}");

    let created = sys.create("shop")?;
    ensure!(created.services == ["redis:cache"], "{created:?}");
    ensure!(listed_services(&sys, &created.backup_id)? == ["redis:cache"]);
    let dump = stored_dump(&sys, "shop", &created.backup_id, "redis", "cache")?;
    ensure!(
        dump.starts_with(b"*5\r\n$7\r\nRESTORE\r\n"),
        "the dump is not RESTORE commands"
    );

    redis.pipe(REDIS_DB, &redis_changes())?;
    differs(&original, &redis.content(REDIS_DB)?, "redis_changes")?;

    sys.restore(&created.backup_id, None)?;
    same(
        &original,
        &redis.content(REDIS_DB)?,
        "the DB after the restore",
    )?;
    ttls_kept(&ttls, &redis, REDIS_DB)?;
    // The other app's DB is untouched, and no scratch DB holds anything.
    ensure!(redis.nonempty_dbs()? == dbs, "{:?}", redis.nonempty_dbs()?);
    ensure!(redis.cmd(0, &[b"GET", b"other-app:key"])? == "\"keep\"");
    Ok(())
}

#[test]
fn an_app_lost_with_its_databases_comes_back_from_its_backup() -> Result<()> {
    // Two databases on one server, one URL with parameters, a service name
    // with a dash, as app.json examples have them.
    let pg = PgDb::start("shop")?;
    pg.server
        .query("postgres", "CREATE DATABASE analytics OWNER app_user")?;
    pg.query_in(
        "analytics",
        "CREATE TABLE events AS SELECT i AS id, 'event ' || i AS name FROM generate_series(1, 500) AS i",
    )?;
    let main_url = format!("{}?sslmode=disable", pg.url);
    let analytics_url = pg.server.url(&pg.user, &pg.password, "analytics");
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 115, &sys.scratch("fixtures")?)?;
    attach(
        &app,
        &[
            ("postgres", "my-database", &main_url),
            ("postgres", "analytics", &analytics_url),
        ],
    )?;
    add_env(&app, &[("DATABASE_URL", &main_url)])?;
    let app_json = app.app_json()?;
    let files = Snapshot::of(&app.dir)?;
    let shop = pg.fingerprint()?;
    let analytics = pg.server.fingerprint("analytics")?;
    let created = sys.create("shop")?;
    let mut services = created.services.clone();
    services.sort();
    ensure!(
        services == ["postgres:analytics", "postgres:my-database"],
        "{created:?}"
    );

    // The host is lost, and the database server comes back empty but for
    // the app's role.
    fs::remove_dir_all(&app.dir)?;
    for db in ["shop", "analytics"] {
        pg.server
            .query("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))?;
    }

    sys.restore(&created.backup_id, None)?;
    files.assert_same(&Snapshot::of(&app.dir)?, "the app brought back")?;
    ensure!(
        app.app_json()?["services"] == app_json["services"],
        "{}",
        app.app_json()?
    );
    same(&shop, &pg.fingerprint()?, "the app's main database")?;
    same(
        &analytics,
        &pg.server.fingerprint("analytics")?,
        "the app's second database",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Clones

#[test]
fn a_clone_gets_databases_of_its_own() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let redis = start_redis(104)?;
    let redis_url = redis.url(REDIS_DB);
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 104, &sys.scratch("fixtures")?)?;
    attach(
        &app,
        &[("postgres", "db", &pg.url), ("redis", "cache", &redis_url)],
    )?;
    let pool = format!("url={};pool=5", pg.url);
    let source_env = add_env(
        &app,
        &[
            ("DATABASE_URL", &pg.url),
            ("REDIS_URL", &redis_url),
            ("DB_SETTINGS", &pool),
        ],
    )?;
    let source_json = app.app_json()?;
    let pg_data = pg.fingerprint()?;
    let redis_data = redis.content(REDIS_DB)?;
    let id = sys.create("shop")?.backup_id;

    let restored = sys.restore(&id, Some("shop-clone"))?;
    ensure!(restored.app == "shop-clone", "{restored:?}");
    wait_for_entries(&sys.root.join("apps"), &["shop", "shop-clone"], SETTLE)?;
    let clone = App::existing(&sys.root, "shop-clone");

    // Its services point at new databases on the same servers, named
    // after the source and the clone, with a hash of both.
    let clone_db_name = url_database(&service_url(&clone, "db")?)?;
    let clone_db = clone_db_name.as_str();
    ensure!(is_clone_name(clone_db, "shop_shop_clone"), "{clone_db}");
    let clone_pg_url = pg.server.url(&pg.user, &pg.password, clone_db);
    // The highest DB, which was empty.
    let clone_redis_url = redis.url(15);
    ensure!(
        service_url(&clone, "db")? == clone_pg_url,
        "the clone's PostgreSQL URL is {}",
        service_url(&clone, "db")?
    );
    ensure!(
        service_url(&clone, "cache")? == clone_redis_url,
        "the clone's Redis URL is {}",
        service_url(&clone, "cache")?
    );
    let env = Snapshot::of(&clone.dir)?.env;
    let mut expected_env = source_env.clone();
    expected_env.insert("DATABASE_URL".into(), clone_pg_url.clone());
    expected_env.insert("REDIS_URL".into(), clone_redis_url.clone());
    expected_env.insert("DB_SETTINGS".into(), format!("url={clone_pg_url};pool=5"));
    ensure!(
        env == expected_env,
        "the clone's ENV:\n{env:#?}\nexpected:\n{expected_env:#?}"
    );
    // The source is as it was.
    ensure!(app.app_json()? == source_json, "{}", app.app_json()?);
    ensure!(Snapshot::of(&app.dir)?.env == source_env);

    // Nothing else on the servers: no scratch copy left over.
    let mut databases = pg.server.databases()?;
    databases.sort();
    let mut expected = vec!["postgres", "shop", clone_db, "template0", "template1"];
    expected.sort();
    ensure!(databases == expected, "{databases:?}");
    let dbs = redis.nonempty_dbs()?;
    let keys = redis.dbsize(REDIS_DB)?;
    ensure!(dbs == [(0, 1), (REDIS_DB, keys), (15, keys)], "{dbs:?}");

    // Same data on both sides.
    same(
        &pg_data,
        &pg.server.fingerprint(clone_db)?,
        "the clone's PostgreSQL database",
    )?;
    same(
        &pg_data,
        &pg.fingerprint()?,
        "the source's PostgreSQL database",
    )?;
    same(&redis_data, &redis.content(15)?, "the clone's Redis DB")?;
    same(
        &redis_data,
        &redis.content(REDIS_DB)?,
        "the source's Redis DB",
    )?;

    // Writing to the clone leaves the source alone...
    pg.query_in(clone_db, "DELETE FROM orders WHERE id <= 100")?;
    pg.query_in(
        clone_db,
        "UPDATE customers SET name = 'clone only' WHERE id = 1",
    )?;
    redis.cmd(15, &[b"SET", b"str:1", b"clone only"])?;
    let clone_pg = pg.server.fingerprint(clone_db)?;
    let clone_redis = redis.content(15)?;
    differs(
        &pg_data,
        &clone_pg,
        "writing to the clone's PostgreSQL database",
    )?;
    differs(&redis_data, &clone_redis, "writing to the clone's Redis DB")?;
    same(
        &pg_data,
        &pg.fingerprint()?,
        "the source's database after writes to the clone",
    )?;
    same(
        &redis_data,
        &redis.content(REDIS_DB)?,
        "the source's Redis DB after writes to the clone",
    )?;

    // ...and the other way round.
    pg.script(PG_CHANGES)?;
    redis.pipe(REDIS_DB, &redis_changes())?;
    same(
        &clone_pg,
        &pg.server.fingerprint(clone_db)?,
        "the clone's database after writes to the source",
    )?;
    same(
        &clone_redis,
        &redis.content(15)?,
        "the clone's Redis DB after writes to the source",
    )?;
    Ok(())
}

#[test]
fn a_mariadb_clone_gets_a_database_of_its_own() -> Result<()> {
    let my = MyDb::start("shop")?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 114, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    add_env(&app, &[("DATABASE_URL", &my.url)])?;
    let data = my.fingerprint()?;
    let id = sys.create("shop")?.backup_id;

    sys.restore(&id, Some("shop-clone"))?;
    let clone = App::existing(&sys.root, "shop-clone");
    let clone_db_name = url_database(&service_url(&clone, "db")?)?;
    let clone_db = clone_db_name.as_str();
    ensure!(is_clone_name(clone_db, "shop_shop_clone"), "{clone_db}");
    let clone_url = my.server.url(&my.user, &my.password, clone_db);
    ensure!(
        service_url(&clone, "db")? == clone_url,
        "the clone's URL is {}",
        service_url(&clone, "db")?
    );
    let env = Snapshot::of(&clone.dir)?.env;
    ensure!(
        env.get("DATABASE_URL") == Some(&clone_url),
        "the clone's DATABASE_URL is {:?}",
        env.get("DATABASE_URL")
    );
    ensure!(service_url(&app, "db")? == my.url);

    // The same tables, rows, trigger and routines; the view reads the
    // clone's own tables.
    let cloned = my.server.fingerprint(clone_db)?;
    let view = cloned
        .iter()
        .find(|l| l.starts_with("view "))
        .context("the clone has no view")?;
    ensure!(
        view.contains(&format!("`{clone_db}`.`customers`")) && !view.contains("`shop`."),
        "the clone's view reads another database: {view}"
    );
    let renamed: Vec<String> = cloned
        .iter()
        .map(|l| l.replace(&format!("`{clone_db}`."), "`shop`."))
        .collect();
    same(&data, &renamed, "the clone's database")?;

    // Writes on either side stay there; the clone's trigger writes to the
    // clone's audit table.
    my.server.query_as(
        &my.user,
        &my.password,
        clone_db,
        "CALL add_order(1, 'clone only'); DELETE FROM customers WHERE id = 2",
    )?;
    same(
        &data,
        &my.fingerprint()?,
        "the source after writes to the clone",
    )?;
    let audit = my.server.query(&format!(
        "SELECT (SELECT COUNT(*) FROM shop.audit), (SELECT COUNT(*) FROM {clone_db}.audit)"
    ))?;
    ensure!(
        audit.trim() == "3000\t3001",
        "audit rows (source, clone): {audit:?}"
    );
    let clone_now = my.server.fingerprint(clone_db)?;
    my.script(MY_CHANGES)?;
    same(
        &clone_now,
        &my.server.fingerprint(clone_db)?,
        "the clone after writes to the source",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Without services

#[test]
fn no_services_leaves_the_databases_out() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 105, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;

    let out = sys
        .hop3(["--json", "backup:create", "shop", "--no-services"])
        .success()?;
    let created: BackupSummary = out.json()?;
    ensure!(
        created.status == "COMPLETED" && created.services.is_empty(),
        "{created:?}"
    );
    let id = created.backup_id;
    let dir = sys.backup_dir("shop", &id);
    let services = list_dir(&dir.join("services"))?;
    ensure!(services.is_empty(), "services/ holds {services:?}");
    let meta = metadata(&sys, "shop", &id)?;
    ensure!(meta["services_included"] == json!(false), "{meta}");
    ensure!(meta["services"] == json!([]), "{meta}");
    let stray: Vec<&String> = meta["checksums"]
        .as_object()
        .context("checksums")?
        .keys()
        .filter(|k| k.starts_with("services/"))
        .collect();
    ensure!(stray.is_empty(), "metadata.json checksums {stray:?}");
    let info = sys.info(&id)?;
    ensure!(
        !info.services_included && info.service_dumps.is_empty() && info.services.is_empty(),
        "{info:?}"
    );
    ensure!(listed_services(&sys, &id)?.is_empty());

    // Restoring it leaves the database as it is now.
    pg.script(PG_CHANGES)?;
    let changed = pg.fingerprint()?;
    sys.restore(&id, None)?;
    same(
        &changed,
        &pg.fingerprint()?,
        "the database after restoring a backup without services",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Failures

#[test]
fn create_fails_cleanly_when_postgres_refuses_or_is_down() -> Result<()> {
    let mut pg = PgDb::start("shop")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 106, &sys.scratch("fixtures")?)?;
    let wrong = pg.server.url(&pg.user, "not-the-password", &pg.db);
    attach(&app, &[("postgres", "db", &wrong)])?;
    sys.controller().allow_errors();
    create_fails(&sys, "shop", "postgres:db")?;

    attach(&app, &[("postgres", "db", &pg.url)])?;
    pg.server.stop()?;
    create_fails(&sys, "shop", "postgres:db")?;

    // The failures were the server's: with it back, the same app backs up.
    pg.server.restart()?;
    let created = sys.create("shop")?;
    ensure!(created.services == ["postgres:db"], "{created:?}");
    Ok(())
}

#[test]
fn create_fails_cleanly_when_mariadb_refuses_or_is_down() -> Result<()> {
    let mut my = MyDb::start("shop")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 107, &sys.scratch("fixtures")?)?;
    let wrong = my.server.url(&my.user, "not-the-password", &my.db);
    attach(&app, &[("mysql", "db", &wrong)])?;
    sys.controller().allow_errors();
    create_fails(&sys, "shop", "mysql:db")?;

    attach(&app, &[("mysql", "db", &my.url)])?;
    my.server.stop()?;
    create_fails(&sys, "shop", "mysql:db")?;

    my.server.restart()?;
    let created = sys.create("shop")?;
    ensure!(created.services == ["mysql:db"], "{created:?}");
    Ok(())
}

#[test]
fn create_fails_cleanly_when_redis_refuses_or_is_down() -> Result<()> {
    let mut redis = start_redis(108)?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 108, &sys.scratch("fixtures")?)?;
    let wrong = format!(
        "redis://:not-the-password@127.0.0.1:{}/{REDIS_DB}",
        redis.port()
    );
    attach(&app, &[("redis", "cache", &wrong)])?;
    sys.controller().allow_errors();
    create_fails(&sys, "shop", "redis:cache")?;

    attach(&app, &[("redis", "cache", &redis.url(REDIS_DB))])?;
    redis.stop()?;
    create_fails(&sys, "shop", "redis:cache")?;
    Ok(())
}

#[test]
fn an_unknown_service_type_fails_the_backup_up_front() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 109, &sys.scratch("fixtures")?)?;
    attach(
        &app,
        &[
            ("postgres", "db", &pg.url),
            ("mongodb", "docs", "mongodb://u:p@127.0.0.1:27017/docs"),
        ],
    )?;
    sys.controller().allow_errors();
    sys.hop3(["backup:create", "shop"])
        .failure(&["unknown service type"])?;
    sys.hop3(["--json", "backup:create", "shop"])
        .failure(&["unknown service type"])?;
    store_holds(&sys, "shop", &[])?;
    for b in sys.list(&["shop"])? {
        ensure!(b.status == "FAILED", "{b:?}");
    }
    // --no-services does not look at the services.
    let out = sys
        .hop3(["--json", "backup:create", "shop", "--no-services"])
        .success()?;
    let created: BackupSummary = out.json()?;
    ensure!(
        created.status == "COMPLETED" && created.services.is_empty(),
        "{created:?}"
    );
    Ok(())
}

#[test]
fn a_failed_load_leaves_every_live_database_untouched() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let redis = start_redis(110)?;
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 110, &scratch)?;
    attach(
        &app,
        &[
            ("redis", "cache", &redis.url(REDIS_DB)),
            ("postgres", "db", &pg.url),
        ],
    )?;
    let pg_original = pg.fingerprint()?;
    let redis_original = redis.content(REDIS_DB)?;
    let id = sys.create("shop")?.backup_id;

    // The app moves on, so that a restore that went ahead would show.
    pg.script(PG_CHANGES)?;
    redis.pipe(REDIS_DB, &redis_changes())?;
    fixtures::overwrite_in_place(&app.data_dir().join("db/app.sqlite"), 0, b"moved on")?;
    let pg_now = pg.fingerprint()?;
    let redis_now = redis.content(REDIS_DB)?;
    let files_now = Snapshot::of(&app.dir)?;
    let databases = pg.server.databases()?;
    let dbs = redis.nonempty_dbs()?;

    // A table in template1 is in every new database, so the dump's own
    // CREATE TABLE customers fails in the scratch database.
    pg.server.query(
        "template1",
        "CREATE TABLE public.customers (poison integer)",
    )?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["postgres:db", "load"])?;

    same(
        &pg_now,
        &pg.fingerprint()?,
        "PostgreSQL after a failed restore",
    )?;
    same(
        &redis_now,
        &redis.content(REDIS_DB)?,
        "Redis after a failed restore",
    )?;
    files_now.assert_same(&Snapshot::of(&app.dir)?, "the app after a failed restore")?;
    ensure!(
        pg.server.databases()? == databases,
        "scratch databases left: {:?}",
        pg.server.databases()?
    );
    ensure!(
        redis.nonempty_dbs()? == dbs,
        "scratch DBs left: {:?}",
        redis.nonempty_dbs()?
    );
    wait_for_entries(&sys.root.join("apps"), &["shop"], SETTLE)?;

    // With the server fixed, the same backup restores.
    pg.server
        .query("template1", "DROP TABLE public.customers")?;
    sys.restore(&id, None)?;
    same(
        &pg_original,
        &pg.fingerprint()?,
        "PostgreSQL after the restore",
    )?;
    same(
        &redis_original,
        &redis.content(REDIS_DB)?,
        "Redis after the restore",
    )?;
    Ok(())
}

#[test]
fn a_restore_while_postgres_is_down_changes_nothing() -> Result<()> {
    let mut pg = PgDb::start("shop")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 111, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = pg.fingerprint()?;
    let id = sys.create("shop")?.backup_id;
    pg.script(PG_CHANGES)?;
    let changed = pg.fingerprint()?;
    let files = Snapshot::of(&app.dir)?;

    pg.server.stop()?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["postgres:db"])?;
    files.assert_same(&Snapshot::of(&app.dir)?, "the app after a failed restore")?;

    pg.server.restart()?;
    same(
        &changed,
        &pg.fingerprint()?,
        "the database once its server is back",
    )?;
    sys.restore(&id, None)?;
    same(
        &original,
        &pg.fingerprint()?,
        "the database after the restore",
    )?;
    Ok(())
}

#[test]
fn a_restore_without_the_right_to_create_databases_changes_nothing() -> Result<()> {
    let my = MyDb::start("shop")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 112, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    let original = my.fingerprint()?;
    let id = sys.create("shop")?.backup_id;
    my.script(MY_CHANGES)?;
    let changed = my.fingerprint()?;
    let databases = my.server.databases()?;

    // The user keeps every right on its own database, and no other.
    let user = format!("'{}'@'%'", my.user);
    my.server.query(&format!(
        "REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user}; GRANT ALL ON `shop`.* TO {user}"
    ))?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["mysql:db", "create scratch database"])?;
    same(
        &changed,
        &my.fingerprint()?,
        "the database after a failed restore",
    )?;
    ensure!(
        my.server.databases()? == databases,
        "{:?}",
        my.server.databases()?
    );

    my.server
        .query(&format!("GRANT ALL PRIVILEGES ON *.* TO {user}"))?;
    sys.restore(&id, None)?;
    same(
        &original,
        &my.fingerprint()?,
        "the database after the restore",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Secrets

/// Watches the process table on a thread of its own until dropped: every
/// command line that holds a secret, and the names of the programs seen.
struct ProcessWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, BTreeSet<String>)>>,
}

impl ProcessWatch {
    fn start(secrets: Vec<String>) -> ProcessWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut leaks = Vec::new();
            let mut seen = BTreeSet::new();
            while !stopped.load(Ordering::Relaxed) {
                let Ok(entries) = fs::read_dir("/proc") else {
                    break;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if let Some(program) = line.split(' ').next() {
                        let base = Path::new(program).file_name().unwrap_or_default();
                        seen.insert(base.to_string_lossy().into_owned());
                    }
                    if secrets.iter().any(|s| line.contains(s.as_str())) {
                        leaks.push(line);
                    }
                }
            }
            (leaks, seen)
        });
        ProcessWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching: the leaking command lines, the programs seen.
    fn finish(mut self) -> (Vec<String>, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the watcher does not panic")
    }
}

impl Drop for ProcessWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The forms a password can take: as is, and percent-encoded in a URL.
fn forms(password: &str) -> Vec<String> {
    vec![password.to_owned(), servers::url_encode(password)]
}

#[test]
fn passwords_never_show_in_process_tables_logs_or_output() -> Result<()> {
    let pg = PgDb::start("shop")?;
    let my = MyDb::start("shop")?;
    let redis = start_redis(113)?;
    // The administrative PostgreSQL connection is a secret too: restores
    // make and rename their databases through it.
    let admin_url = pg.server.url(
        servers::postgres::ADMIN,
        pg.server.admin_password(),
        "postgres",
    );
    let mut sys = System::builder()
        .controller_env("HOP3_PG_ADMIN_URL", &admin_url)
        .start()?;
    let app = App::build(&sys.root, "shop", 113, &sys.scratch("fixtures")?)?;
    attach(
        &app,
        &[
            ("postgres", "db", &pg.url),
            ("mysql", "sql", &my.url),
            ("redis", "cache", &redis.url(REDIS_DB)),
        ],
    )?;
    // Refused passwords must not be echoed in errors either.
    let wrong_pg = format!("wrong@{}", servers::password());
    let wrong_my = format!("wrong@{}", servers::password());
    let wrong_redis = format!("wrong@{}", servers::password());
    let mut secrets = Vec::new();
    for password in [
        pg.password.as_str(),
        &my.password,
        redis.password(),
        &wrong_pg,
        &wrong_my,
        &wrong_redis,
        pg.server.admin_password(),
    ] {
        secrets.extend(forms(password));
    }
    let mut outputs: Vec<Output> = Vec::new();

    // --help shows which variable holds it, never its value.
    for bin in ["hop3-agent", "hop3-controller"] {
        let out = std::process::Command::new(hop3_tests::harness::binary(bin))
            .arg("--help")
            .env("HOP3_PG_ADMIN_URL", &admin_url)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success() && text.contains("HOP3_PG_ADMIN_URL"),
            "{bin} --help:\n{text}"
        );
        for secret in &secrets {
            ensure!(
                !text.contains(secret.as_str()),
                "{bin} --help shows a password"
            );
        }
    }

    // Backups until both dump tools have been caught running (each lasts a
    // moment only), then a restore in place and one to a new name.
    let watch = ProcessWatch::start(secrets.clone());
    let mut id = String::new();
    for attempt in 1..=5 {
        let watch_round = ProcessWatch::start(secrets.clone());
        let out = sys
            .hop3_spawn(["--json", "backup:create", "shop"])?
            .wait(OPERATION)?
            .success()?;
        id = out.json::<BackupSummary>()?.backup_id;
        outputs.push(out);
        let (_, seen) = watch_round.finish();
        let mysqldump = seen.contains("mysqldump") || seen.contains("mariadb-dump");
        if seen.contains("pg_dump") && mysqldump {
            break;
        }
        ensure!(
            attempt < 5,
            "never saw pg_dump and mysqldump run in 5 backups (saw {seen:?}): inconclusive"
        );
    }
    outputs.push(
        sys.hop3_spawn(["backup:restore", &id])?
            .wait(OPERATION)?
            .success()?,
    );
    outputs.push(
        sys.hop3_spawn(["--json", "backup:restore", &id, "--target-app", "shop-copy"])?
            .wait(OPERATION)?
            .success()?,
    );
    outputs.push(sys.hop3(["backup:info", &id]).success()?);
    outputs.push(sys.hop3(["--json", "backup:list"]).success()?);

    // Then backups with a refused password, each service in turn.
    sys.controller().allow_errors();
    let pg_url = pg.server.url(&pg.user, &wrong_pg, &pg.db);
    attach(&app, &[("postgres", "db", &pg_url)])?;
    outputs.extend(create_fails(&sys, "shop", "postgres:db")?);
    let my_url = my.server.url(&my.user, &wrong_my, &my.db);
    attach(&app, &[("mysql", "sql", &my_url)])?;
    outputs.extend(create_fails(&sys, "shop", "mysql:sql")?);
    let redis_url = format!(
        "redis://:{}@127.0.0.1:{}/{REDIS_DB}",
        servers::url_encode(&wrong_redis),
        redis.port()
    );
    attach(&app, &[("redis", "cache", &redis_url)])?;
    outputs.extend(create_fails(&sys, "shop", "redis:cache")?);

    let (leaks, seen) = watch.finish();
    ensure!(
        leaks.is_empty(),
        "a password was on a command line:\n{}",
        leaks.join("\n")
    );
    for tool in ["pg_dump", "psql", "mysql"] {
        ensure!(seen.contains(tool), "never saw {tool} run: {seen:?}");
    }

    for out in &outputs {
        for secret in &secrets {
            ensure!(
                !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
                "a password is in the output of\n{}",
                out.report()
            );
        }
    }
    for log in sys.log_paths() {
        let text = String::from_utf8_lossy(&fs::read(&log)?).into_owned();
        for secret in &secrets {
            ensure!(
                !text.contains(secret.as_str()),
                "a password is in {}",
                log.display()
            );
        }
    }
    // No option file or other copy of a password outlives its use in the
    // processes' TMPDIR (<test dir>/tmp, beside scratch/).
    let tmp = sys
        .scratch("x")?
        .parent()
        .and_then(Path::parent)
        .context("scratch lives in the test directory")?
        .join("tmp");
    for file in files_under(&tmp)? {
        let text = String::from_utf8_lossy(&fs::read(&file)?).into_owned();
        for secret in &secrets {
            ensure!(
                !text.contains(secret.as_str()),
                "a password is in {}",
                file.display()
            );
        }
    }
    Ok(())
}

/// Every regular file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for name in list_dir(dir)? {
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            files.extend(files_under(&path)?);
        } else if meta.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

/// A `pg_dump` older than the server is refused before anything is archived,
/// with a message saying what to install; `--pg-bin` picks the tools.
#[test]
fn an_old_pg_dump_is_refused_clearly() -> Result<()> {
    let pg = PgDb::start("shop")?;
    // A tool directory whose psql is the real one and whose pg_dump says it is 12.
    let tools = tempfile::tempdir()?;
    std::os::unix::fs::symlink(
        servers::postgres::pg_bin().join("psql"),
        tools.path().join("psql"),
    )?;
    let fake = tools.path().join("pg_dump");
    fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")?;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755))?;
    let tools_dir = tools.path().to_str().context("tool dir")?.to_owned();
    let mut sys = System::builder()
        .controller_args(["--pg-bin", tools_dir.as_str()])
        .start()?;
    let app = App::build(&sys.root, "shop", 108, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    sys.controller().allow_errors();
    let out = sys.hop3(["backup:create", "shop"]).failure(&[
        "postgres:db",
        "pg_dump 12 is older than the PostgreSQL 15 server",
    ])?;
    ensure!(
        out.stderr.contains("--pg-bin"),
        "the error does not say how to point at newer tools: {}",
        out.report()
    );
    store_holds(&sys, "shop", &[])?;
    Ok(())
}
