//! Restores that must lose nothing, whatever the names, the other apps on
//! the host, the rights of the app's role, or a crash halfway.

use super::*;

// ---------------------------------------------------------------------------
// Clone names

/// A clone's database is its own even when the source's name fills all
/// 63 bytes PostgreSQL allows (cut, `<db>_<clone>` gave back the source's
/// own name), when clone names differ only in punctuation (they folded into
/// one name), and when a database of the name a clone would get already
/// exists (an app deleted without its database).
#[test]
fn clone_databases_never_reuse_a_database() -> Result<()> {
    let long = format!("shop_{}", "x".repeat(58));
    ensure!(long.len() == 63);
    let pg = PgDb::start(&long)?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 120, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let backed_up = pg.fingerprint()?;
    let id = sys.create("shop")?.backup_id;
    // The source moves on: no clone may take it back to the backup.
    pg.script(PG_CHANGES)?;
    let source_now = pg.fingerprint()?;

    let mut clone_dbs = Vec::new();
    for target in ["my-app", "my.app", "my_app"] {
        sys.restore(&id, Some(target))?;
        let clone = App::existing(&sys.root, target);
        let db = url_database(&service_url(&clone, "db")?)?;
        ensure!(
            db != long,
            "the clone {target} was given the source's database"
        );
        ensure!(
            is_clone_name(&db, &long[..54]),
            "the clone {target} got the database name {db:?}"
        );
        ensure!(
            !clone_dbs.contains(&db),
            "the clone {target} got {db}, which another clone has: {clone_dbs:?}"
        );
        same(
            &backed_up,
            &pg.server.fingerprint(&db)?,
            &format!("the database of the clone {target}"),
        )?;
        clone_dbs.push(db);
    }
    same(
        &source_now,
        &pg.fingerprint()?,
        "the source's database after three clones",
    )?;
    // Each clone writes to its own.
    pg.query_in(&clone_dbs[0], "DELETE FROM orders")?;
    for db in &clone_dbs[1..] {
        same(&backed_up, &pg.server.fingerprint(db)?, db)?;
    }

    // my-app is deleted, its database kept (with what it wrote since). A
    // new clone of that name gets a database of its own.
    let kept = pg.server.fingerprint(&clone_dbs[0])?;
    fs::remove_dir_all(sys.root.join("apps").join("my-app"))?;
    sys.restore(&id, Some("my-app"))?;
    let again = url_database(&service_url(&App::existing(&sys.root, "my-app"), "db")?)?;
    ensure!(
        !clone_dbs.contains(&again) && again != long,
        "the new my-app reuses {again}"
    );
    same(
        &backed_up,
        &pg.server.fingerprint(&again)?,
        "the new my-app",
    )?;
    same(
        &kept,
        &pg.server.fingerprint(&clone_dbs[0])?,
        "the database the deleted my-app left",
    )?;
    same(&source_now, &pg.fingerprint()?, "the source's database")?;
    Ok(())
}

/// MySQL names count characters, so a cut by bytes could fall inside one
/// (it panicked the agent's task): a source database named in long
/// unicode gets a clone with a valid name of its own.
#[test]
fn a_mariadb_clone_of_a_long_unicode_database_name_gets_its_own() -> Result<()> {
    let db = format!("boutique_données_{}", "é".repeat(40));
    let my = MyDb::start(&db)?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 121, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    let data = my.fingerprint()?;
    let id = sys.create("shop")?.backup_id;

    sys.restore(&id, Some("shop-clone"))?;
    let clone = App::existing(&sys.root, "shop-clone");
    let clone_db = url_database(&service_url(&clone, "db")?)?;
    ensure!(clone_db != db, "the clone was given the source's database");
    ensure!(
        clone_db.len() <= 63 && clone_db.is_ascii(),
        "the clone's database is named {clone_db:?}"
    );
    let cloned: Vec<String> = my
        .server
        .fingerprint(&clone_db)?
        .iter()
        .map(|l| l.replace(&format!("`{clone_db}`."), &format!("`{db}`.")))
        .collect();
    same(&data, &cloned, "the clone's database")?;
    same(&data, &my.fingerprint()?, "the source's database")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// An agent killed in the middle

/// The agent's records of scratch and replaced databases
/// (`$HOP3_ROOT/.hop3-backup/services/`).
fn records(root: &Path) -> Result<Vec<String>> {
    list_dir(&root.join(".hop3-backup").join("services"))
}

/// An agent killed (SIGKILL) while psql loads a large dump into its
/// scratch database: at its next start it drops that database, a full copy
/// of the data, and says so; the live database is as it was.
#[test]
fn an_agent_killed_while_loading_a_dump_drops_its_scratch_database_at_start() -> Result<()> {
    let pg = PgDb::start("shop")?;
    // About 150 MB of dump: the load takes long enough to be caught.
    pg.script(
        "CREATE TABLE big AS SELECT i, md5(i::text) || repeat('x', 100) AS pad \
         FROM generate_series(1, 1000000) AS i",
    )?;
    let mut sys = System::builder().local_agent(false).start()?;
    let root = sys.agent_root("host-a")?;
    let app = App::build(&root, "shop", 122, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    sys.start_agent("host-a")?;
    let id = sys.create("shop")?.backup_id;
    pg.script(PG_CHANGES)?;
    let live = pg.fingerprint()?;
    let databases = pg.server.databases()?;

    let mut restore = sys.hop3_spawn(["backup:restore", &id])?;
    let scratch = wait_until(OPERATION, "a scratch database on the server", || {
        let now = pg.server.databases()?;
        if let Some(new) = now.into_iter().find(|d| !databases.contains(d)) {
            return Ok(Some(new));
        }
        ensure!(
            restore.is_running()?,
            "the restore ended before a scratch database appeared"
        );
        Ok(None)
    })?;
    // Still loading: the restore has not reached its switch.
    ensure!(restore.is_running()?, "the restore ended already");
    sys.agent("host-a").process.kill();
    sys.controller().allow_errors();
    restore.wait(OPERATION)?.failure(&[])?;

    sys.agent("host-a").process.restart()?;
    wait_until(SETTLE, "the scratch database to be dropped", || {
        Ok((pg.server.databases()? == databases).then_some(()))
    })
    .with_context(|| format!("databases: {:?}", pg.server.databases()))?;
    same(&live, &pg.fingerprint()?, "the live database")?;
    let log = fs::read_to_string(sys.agent("host-a").process.log_path())?;
    ensure!(
        log.lines()
            .any(|l| l.contains(&scratch) && l.contains("dropped")),
        "the agent's log does not say it dropped {scratch}:\n{log}"
    );
    wait_until(SETTLE, "no record left", || {
        Ok(records(&root)?.is_empty().then_some(()))
    })?;
    // The records held the database's URL: the directory is the agent's own.
    let mode = fs::metadata(root.join(".hop3-backup"))?
        .permissions()
        .mode()
        & 0o777;
    ensure!(mode == 0o700, "the state directory has mode {mode:o}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Redis DBs

/// The DB number a Redis URL names.
fn redis_db(url: &str) -> Result<u32> {
    Ok(url_database(url)?.parse()?)
}

/// Clones and scratch copies took "the highest empty DB", which can be
/// another app's configured DB that happens to be empty: the two apps then
/// share one. Two clones made at once get a DB each, neither configured by
/// any app on the host, and an in-place restore's scratch copy keeps off
/// the other app's DBs too.
#[test]
fn redis_clones_never_take_a_db_another_app_is_configured_with() -> Result<()> {
    let redis = Arc::new(start_redis(123)?);
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 123, &sys.scratch("fixtures")?)?;
    attach(&app, &[("redis", "cache", &redis.url(REDIS_DB))])?;
    // Another app of the host uses DBs 15 and 14, empty right now.
    let other = sys.root.join("apps").join("other");
    fs::create_dir_all(&other)?;
    let other_json = json!({"services": [
        {"type": "redis", "name": "sessions", "url": redis.url(15)},
        {"type": "redis", "name": "jobs", "url": redis.url(14)},
    ]});
    fs::write(other.join("app.json"), other_json.to_string())?;
    let data = redis.content(REDIS_DB)?;
    let keys = redis.dbsize(REDIS_DB)?;
    let id = sys.create("shop")?.backup_id;

    let a = sys.hop3_spawn(["--json", "backup:restore", &id, "--target-app", "shop-a"])?;
    let b = sys.hop3_spawn(["--json", "backup:restore", &id, "--target-app", "shop-b"])?;
    a.wait(OPERATION)?.success()?;
    b.wait(OPERATION)?.success()?;
    let db_a = redis_db(&service_url(&App::existing(&sys.root, "shop-a"), "cache")?)?;
    let db_b = redis_db(&service_url(&App::existing(&sys.root, "shop-b"), "cache")?)?;
    for (clone, db) in [("shop-a", db_a), ("shop-b", db_b)] {
        ensure!(
            ![0, REDIS_DB, 14, 15].contains(&db),
            "the clone {clone} was given DB {db}, which is in use"
        );
        same(&data, &redis.content(db)?, &format!("DB {db} of {clone}"))?;
    }
    ensure!(db_a != db_b, "both clones were given DB {db_a}");
    let mut expected = vec![(0, 1), (REDIS_DB, keys), (db_a, keys), (db_b, keys)];
    expected.sort();
    ensure!(
        redis.nonempty_dbs()? == expected,
        "{:?}",
        redis.nonempty_dbs()?
    );

    // An in-place restore, watched: the other app's DBs stay empty throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (redis, stop) = (redis.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                for db in [14, 15] {
                    let n = redis.dbsize(db)?;
                    ensure!(
                        n == 0,
                        "DB {db} of the other app held {n} keys during a restore"
                    );
                }
            }
            Ok(())
        })
    };
    redis.pipe(REDIS_DB, &redis_changes())?;
    let restored = sys.restore(&id, None);
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("the watcher does not panic")?;
    restored?;
    same(
        &data,
        &redis.content(REDIS_DB)?,
        "shop's DB after its restore",
    )?;
    ensure!(
        redis.nonempty_dbs()? == expected,
        "{:?}",
        redis.nonempty_dbs()?
    );
    wait_until(SETTLE, "no record left", || {
        Ok(records(&sys.root)?.is_empty().then_some(()))
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// A MySQL switch cut short

/// Waits until `log` holds `needle`.
fn wait_for_log(log: &Path, needle: &str) -> Result<()> {
    wait_until(
        OPERATION,
        &format!("{needle:?} in {}", log.display()),
        || {
            let text = fs::read_to_string(log).unwrap_or_default();
            Ok(text.contains(needle).then_some(()))
        },
    )
}

/// A MySQL restore emptied the live database and copied the scratch one
/// in: a failure during that copy left it half-filled. A switch that fails
/// halfway (the test-only failpoint `mysql-switch`, after the tables have
/// moved, before the triggers, views and routines are made again), or
/// whose agent is killed there, leaves the live database whole: its old
/// tables, rows, triggers, routines and views, nothing of the backup's.
#[test]
fn a_mariadb_switch_failed_or_killed_halfway_leaves_the_live_database_whole() -> Result<()> {
    let my = MyDb::start("shop")?;
    let databases = my.server.databases()?;

    // Failed halfway: the restore reports it and puts everything back.
    let mut sys = System::builder()
        .controller_env("HOP3_FAILPOINTS", "mysql-switch=error")
        .start()?;
    let app = App::build(&sys.root, "shop", 124, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    let id = sys.create("shop")?.backup_id;
    my.script(MY_CHANGES)?;
    let changed = my.fingerprint()?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["mysql:db", "failpoint mysql-switch"])?;
    same(
        &changed,
        &my.fingerprint()?,
        "the live database after a switch failed halfway",
    )?;
    // Its function still runs, its view reads its own tables.
    let count = my.query("SELECT order_count(5)")?;
    ensure!(
        count.trim().parse::<u64>()? > 0,
        "order_count(5) = {count:?}"
    );
    my.query("SELECT COUNT(*) FROM customer_totals")?;
    ensure!(
        my.server.databases()? == databases,
        "left on the server: {:?}",
        my.server.databases()?
    );
    ensure!(records(&sys.root)?.is_empty(), "{:?}", records(&sys.root)?);
    drop(sys);

    // Killed halfway: the next start puts everything back.
    let mut sys = System::builder()
        .controller_env("HOP3_FAILPOINTS", "mysql-switch=pause")
        .start()?;
    let app = App::build(&sys.root, "shop", 125, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    let id = sys.create("shop")?.backup_id;
    my.script("UPDATE customers SET name = 'after the second backup' WHERE id <= 5; CREATE TABLE only_live (x INT)")?;
    let live = my.fingerprint()?;
    let restore = sys.hop3_spawn(["backup:restore", &id])?;
    wait_for_log(sys.controller().log_path(), "failpoint reached")?;
    sys.controller().kill();
    sys.controller().allow_errors();
    restore.wait(OPERATION)?.failure(&[])?;
    sys.restart_controller()?;
    wait_until(SETTLE, "the scratch and holding databases to go", || {
        Ok((my.server.databases()? == databases).then_some(()))
    })
    .with_context(|| format!("databases: {:?}", my.server.databases()))?;
    same(
        &live,
        &my.fingerprint()?,
        "the live database after its agent was killed halfway through a switch",
    )?;
    my.query("SELECT order_count(5)")?;
    wait_until(SETTLE, "no record left", || {
        Ok(records(&sys.root)?.is_empty().then_some(()))
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Least privilege

/// The owner of database `db`.
fn owner(pg: &PgDb, db: &str) -> Result<String> {
    Ok(pg
        .server
        .query(
            "postgres",
            &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'"),
        )?
        .trim()
        .to_owned())
}

/// With the usual least-privilege role (no CREATEDB) and no administrative
/// connection, a COMPLETED backup could not be restored. It now restores
/// into the live database inside one transaction, once the app is stopped;
/// a failure there leaves the old data and says which way was tried; a
/// clone, which needs a database of its own, is refused up front.
#[test]
fn postgres_restores_for_a_role_without_createdb() -> Result<()> {
    let pg = PgDb::start("shop")?;
    pg.server
        .query("postgres", "ALTER ROLE app_user NOCREATEDB")?;
    let mut sys = System::start()?;
    let app = App::build(&sys.root, "shop", 126, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = pg.fingerprint()?;
    let databases = pg.server.databases()?;
    let id = sys.create("shop")?.backup_id;
    pg.script(PG_CHANGES)?;

    let session = IdleSession::open(&pg, "shop")?;
    sys.restore(&id, None)?;
    drop(session);
    same(
        &original,
        &pg.fingerprint()?,
        "the database after the restore",
    )?;
    ensure!(
        pg.server.databases()? == databases,
        "{:?}",
        pg.server.databases()?
    );
    let next = pg.query_in(
        "shop",
        "INSERT INTO customers (name, created_at) VALUES ('after', now()) RETURNING id",
    )?;
    ensure!(next.trim() == "1001", "the next customer ID is {next:?}");

    // A table of the app's that another role took over cannot be dropped
    // by the app's role: the restore fails, the transaction rolls back.
    pg.script(PG_CHANGES)?;
    pg.server
        .query("shop", "ALTER TABLE customers OWNER TO hop3admin")?;
    let changed = pg.fingerprint()?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["postgres:db", "in place", "one transaction"])?;
    same(
        &changed,
        &pg.fingerprint()?,
        "the database after a failed restore",
    )?;

    // A clone needs a database of its own.
    let out = sys
        .hop3(["backup:restore", &id, "--target-app", "shop-clone"])
        .failure(&["postgres:db", "CREATEDB", "HOP3_PG_ADMIN_URL"])?;
    ensure!(
        !sys.root.join("apps").join("shop-clone").exists(),
        "a refused clone left an app: {}",
        out.report()
    );
    ensure!(
        pg.server.databases()? == databases,
        "{:?}",
        pg.server.databases()?
    );
    wait_until(SETTLE, "no record left", || {
        Ok(records(&sys.root)?.is_empty().then_some(()))
    })?;
    Ok(())
}

/// With an administrative connection in the config file (`pg_admin_url`;
/// one per server, matched by host and port), a role without CREATEDB gets
/// its scratch database made and handed to it, and the renames done, by
/// that connection: in place and for a clone, the app's role owns what
/// comes back and goes on writing to it.
#[test]
fn postgres_restores_through_an_admin_connection() -> Result<()> {
    let pg = PgDb::start("shop")?;
    pg.server
        .query("postgres", "ALTER ROLE app_user NOCREATEDB")?;
    let admin = pg.server.url(
        servers::postgres::ADMIN,
        pg.server.admin_password(),
        "postgres",
    );
    let config = tempfile::tempdir()?;
    let file = config.path().join("controller.toml");
    // The first URL is another server's: it must not be used for this one.
    fs::write(
        &file,
        format!("pg_admin_url = \"postgresql://nobody:nothing@127.0.0.1:1/postgres {admin}\"\n"),
    )?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
    let file_arg = file.to_str().context("config path")?.to_owned();
    let sys = System::builder()
        .controller_args(["--config", file_arg.as_str()])
        .start()?;
    let app = App::build(&sys.root, "shop", 127, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = pg.fingerprint()?;
    let databases = pg.server.databases()?;
    let id = sys.create("shop")?.backup_id;
    pg.script(PG_CHANGES)?;

    sys.restore(&id, None)?;
    same(
        &original,
        &pg.fingerprint()?,
        "the database after the restore",
    )?;
    ensure!(
        owner(&pg, "shop")? == pg.user,
        "shop belongs to {}",
        owner(&pg, "shop")?
    );
    pg.query_in(
        "shop",
        "INSERT INTO notes VALUES (1000, 'after the restore')",
    )?;
    ensure!(
        pg.server.databases()? == databases,
        "{:?}",
        pg.server.databases()?
    );

    sys.restore(&id, Some("shop-clone"))?;
    let clone_db = url_database(&service_url(&App::existing(&sys.root, "shop-clone"), "db")?)?;
    same(
        &original,
        &pg.server.fingerprint(&clone_db)?,
        "the clone's database",
    )?;
    ensure!(
        owner(&pg, &clone_db)? == pg.user,
        "{clone_db} belongs to {}",
        owner(&pg, &clone_db)?
    );
    pg.query_in(&clone_db, "DELETE FROM orders")?;
    wait_until(SETTLE, "no record left", || {
        Ok(records(&sys.root)?.is_empty().then_some(()))
    })?;
    Ok(())
}
