//! A throwaway PostgreSQL server: `initdb` with password (SCRAM)
//! authentication for every connection, then `postgres` itself as a child
//! process, run as the `postgres` system user (PostgreSQL refuses root).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use rustix::process::Signal;
use tempfile::TempDir;

use super::{
    Daemon, clean_command, password, run_bytes, run_text, run_with_input, server_ids,
    start_on_free_port,
};

/// The superuser `initdb` creates.
pub const ADMIN: &str = "hop3admin";

/// Where the PostgreSQL 15 server binaries are (Debian's
/// `postgresql-15`); `HOP3_TEST_PG_BIN` overrides it.
pub fn pg_bin() -> PathBuf {
    std::env::var_os("HOP3_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A PostgreSQL server of its own; stopped and removed on drop.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    admin_password: String,
    uid: u32,
    gid: u32,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    // Field order matters: the server stops before its directory goes.
    daemon: Option<Daemon>,
    _dir: TempDir,
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it on a
    /// free port.
    pub fn start() -> Result<Postgres> {
        // PostgreSQL refuses to run as root.
        let (uid, gid) = server_ids("postgres")?;
        let dir = tempfile::Builder::new().prefix("hop3-pg-").tempdir()?;
        let base = dir.path().to_owned();
        // The server runs as postgres: it must reach and own its directory.
        chown(&base, Some(uid), Some(gid))?;
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700))?;
        let sock = base.join("sock");
        fs::create_dir(&sock)?;
        chown(&sock, Some(uid), Some(gid))?;

        let admin_password = password();
        let pwfile = base.join("pwfile");
        fs::write(&pwfile, format!("{admin_password}\n"))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        chown(&pwfile, Some(uid), Some(gid))?;
        let data = base.join("data");
        let mut initdb = clean_command(pg_bin().join("initdb"));
        initdb
            .uid(uid)
            .gid(gid)
            .current_dir(&base)
            .arg("-D")
            .arg(&data)
            .args(["-A", "scram-sha-256", "-U", ADMIN, "--pwfile"])
            .arg(&pwfile)
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        run_bytes(&mut initdb).context("initdb")?;
        fs::remove_file(&pwfile)?;

        let mut pg = Postgres {
            port: 0,
            admin_password,
            uid,
            gid,
            data,
            sock,
            log: base.join("postgres.log"),
            daemon: None,
            _dir: dir,
        };
        pg.launch(None)?;
        Ok(pg)
    }

    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let (port, daemon) = start_on_free_port(port, |port| {
            let mut cmd = clean_command(pg_bin().join("postgres"));
            cmd.uid(self.uid)
                .gid(self.gid)
                .current_dir(&self.data)
                .arg("-D")
                .arg(&self.data)
                .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
                .arg("-k")
                .arg(&self.sock)
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "shared_buffers=16MB", "-c", "max_connections=40"]);
            // SIGINT is PostgreSQL's "fast" shutdown.
            let mut daemon = Daemon::spawn("postgres", cmd, &self.log, Signal::INT)?;
            self.port = port;
            daemon.wait_ready(|| self.query("postgres", "SELECT 1").is_ok())?;
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

    /// The superuser's password.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Stops the server (fast shutdown); its data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) -> Result<()> {
        match self.daemon.take() {
            Some(mut daemon) => daemon.stop(),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port, with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch(Some(self.port))
    }

    /// `psql` connected over TCP to `db` as `user`, the password in its
    /// environment, reading no startup file and stopping at the first error.
    pub fn psql_as(&self, user: &str, password: &str, db: &str) -> Command {
        let mut cmd = clean_command(pg_bin().join("psql"));
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGPASSWORD", password)
            .env("PGDATABASE", db)
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        cmd
    }

    /// Runs `sql` on `db` as the superuser; its unaligned, tuples-only output
    /// (`|` between columns, one row a line).
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_as(ADMIN, &self.admin_password, db);
        cmd.args(["-A", "-t", "-c", sql]);
        run_text(&mut cmd)
    }

    /// [`query`](Self::query) as another user.
    pub fn query_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_as(user, password, db);
        cmd.args(["-A", "-t", "-c", sql]);
        run_text(&mut cmd)
    }

    /// Runs a script of several statements as `user` in `db`, fed on stdin,
    /// in one transaction.
    pub fn script_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<()> {
        let mut cmd = self.psql_as(user, password, db);
        cmd.arg("--single-transaction");
        run_with_input(&mut cmd, sql.as_bytes()).map(drop)
    }

    /// The rows of [`query`](Self::query), one string each.
    pub fn rows(&self, db: &str, sql: &str) -> Result<Vec<String>> {
        Ok(self.query(db, sql)?.lines().map(str::to_owned).collect())
    }

    /// Creates a login role with a password and the CREATEDB right (the
    /// agent makes its scratch and clone databases as this user), and a
    /// database it owns. Returns the URL an app would hold.
    pub fn create_app_database(&self, user: &str, password: &str, db: &str) -> Result<String> {
        self.query(
            "postgres",
            &format!(
                "CREATE ROLE \"{user}\" LOGIN CREATEDB PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        )?;
        self.query(
            "postgres",
            &format!("CREATE DATABASE \"{db}\" OWNER \"{user}\""),
        )?;
        Ok(self.url(user, password, db))
    }

    /// Creates the empty database `db`, owned by the superuser, for a
    /// controller's catalog; returns `postgres://ADMIN:PW@127.0.0.1:PORT/db`
    /// (the password percent-encoded), as `hop3-controller --catalog` takes it.
    pub fn create_catalog(&self, db: &str) -> Result<String> {
        self.query("postgres", &format!("CREATE DATABASE \"{db}\""))?;
        Ok(format!(
            "postgres://{ADMIN}:{}@127.0.0.1:{}/{db}",
            super::url_encode(&self.admin_password),
            self.port
        ))
    }

    /// `postgresql://user:password@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{db}",
            super::url_encode(user),
            super::url_encode(password),
            self.port
        )
    }

    /// The names of every database, sorted.
    pub fn databases(&self) -> Result<Vec<String>> {
        self.rows(
            "postgres",
            "SELECT datname FROM pg_database ORDER BY datname",
        )
    }

    /// What a user would compare to tell two states of database `db` apart:
    /// its tables and columns, constraints, indexes, sequences with their
    /// positions, and for every table its row count and the MD5 of its rows
    /// in order. One line per item.
    pub fn fingerprint(&self, db: &str) -> Result<Vec<String>> {
        let mut lines = self.rows(
            db,
            "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type \
             || coalesce(' default ' || column_default, '') \
             FROM information_schema.columns WHERE table_schema = 'public' \
             ORDER BY table_name, ordinal_position",
        )?;
        lines.extend(self.rows(
            db,
            "SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' \
             || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        )?);
        lines.extend(self.rows(
            db,
            "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        )?);
        lines.extend(self.rows(
            db,
            "SELECT 'sequence ' || sequencename || ' ' || coalesce(last_value::text, 'unused') \
             FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
        )?);
        let tables = self.rows(
            db,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )?;
        for table in tables {
            let digest = self.query(
                db,
                &format!(
                    "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) \
                     FROM public.\"{table}\" t"
                ),
            )?;
            lines.push(format!("rows {table} {}", digest.trim()));
        }
        ensure!(!lines.is_empty(), "database {db} is empty");
        Ok(lines)
    }
}
