//! A throwaway MariaDB server: `mariadb-install-db` into a new directory,
//! then `mariadbd` as a child process with grant tables on, reached by the
//! tests as root over its own socket and by apps as a user with a password
//! over TCP.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use rustix::process::Signal;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::{
    Daemon, clean_command, is_root, program, run_bytes, run_text, run_with_input,
    start_on_free_port,
};

/// A MariaDB server of its own; stopped and removed on drop.
#[derive(Debug)]
pub struct MariaDb {
    port: u16,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    base: PathBuf,
    // Field order matters: the server stops before its directory goes.
    daemon: Option<Daemon>,
    _dir: TempDir,
}

impl MariaDb {
    /// Creates a data directory in a new temporary directory and starts the
    /// server on a free port.
    pub fn start() -> Result<MariaDb> {
        let dir = tempfile::Builder::new().prefix("hop3-mdb-").tempdir()?;
        let base = dir.path().to_owned();
        let data = base.join("data");
        let mut install = clean_command("mariadb-install-db");
        // Its bootstrap server's temporary tables in a directory of its own:
        // in the shared /tmp, parallel installs were seen to fail
        // ("Could not remove temporary table").
        install
            .env("TMPDIR", &base)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                // root@localhost without a password, reachable over the socket.
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if is_root() {
            install.arg("--user=root");
        }
        run_bytes(&mut install).context("mariadb-install-db")?;
        let mut db = MariaDb {
            port: 0,
            sock: base.join("mysqld.sock"),
            log: base.join("mariadbd.log"),
            data,
            base,
            daemon: None,
            _dir: dir,
        };
        db.launch(None)?;
        Ok(db)
    }

    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let (port, daemon) = start_on_free_port(port, |port| {
            let mut cmd = clean_command(program("mariadbd", &["/usr/sbin/mariadbd"]));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", self.data.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", self.sock.display()))
                .arg(format!(
                    "--pid-file={}",
                    self.base.join("mariadbd.pid").display()
                ))
                .arg(format!("--tmpdir={}", self.base.display()))
                .args([
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-log-file-size=16M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--innodb-doublewrite=0",
                    "--performance-schema=OFF",
                    "--max-connections=50",
                ]);
            if is_root() {
                // mariadbd refuses to run as root unless told to.
                cmd.arg("--user=root");
            }
            let mut daemon = Daemon::spawn("mariadbd", cmd, &self.log, Signal::TERM)?;
            self.port = port;
            daemon.wait_ready(|| self.query("SELECT 1").is_ok())?;
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

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Stops the server; its data stays for [`restart`](Self::restart).
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

    /// `mariadb` connected as root over the server's socket, reading no
    /// option file, in batch mode without column names.
    pub fn client(&self) -> Command {
        let mut cmd = clean_command("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.sock.display()))
            .args([
                "--protocol=SOCKET",
                "-uroot",
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ]);
        cmd
    }

    /// `mariadb` connected as `user` over TCP, the password in its
    /// environment (`MYSQL_PWD`), never on its command line.
    pub fn client_as(&self, user: &str, password: &str) -> Command {
        let mut cmd = clean_command("mariadb");
        cmd.env("MYSQL_PWD", password)
            .arg("--no-defaults")
            .args(["-h", "127.0.0.1", "--protocol=TCP"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .args([
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ]);
        cmd
    }

    /// Runs `sql` as root; its tab-separated output.
    pub fn query(&self, sql: &str) -> Result<String> {
        let mut cmd = self.client();
        cmd.args(["-e", sql]);
        run_text(&mut cmd)
    }

    /// Runs `sql` as root in database `db`; its rows, one string each.
    pub fn rows(&self, db: &str, sql: &str) -> Result<Vec<String>> {
        let mut cmd = self.client();
        cmd.args(["-D", db, "-e", sql]);
        Ok(run_text(&mut cmd)?.lines().map(str::to_owned).collect())
    }

    /// Runs `sql` as `user` in database `db`; its output.
    pub fn query_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.client_as(user, password);
        cmd.args(["-D", db, "-e", sql]);
        run_text(&mut cmd)
    }

    /// Runs a script of several statements (with `DELIMITER` lines, as the
    /// `mariadb` client reads them) as `user` in `db`, fed on stdin.
    pub fn script_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<()> {
        let mut cmd = self.client_as(user, password);
        cmd.args(["-D", db]);
        run_with_input(&mut cmd, sql.as_bytes()).map(drop)
    }

    /// Creates a user with a password who may do anything (the agent
    /// creates and drops scratch and clone databases as this user), and a
    /// database. Returns the URL an app would hold.
    pub fn create_app_database(&self, user: &str, password: &str, db: &str) -> Result<String> {
        let pw = password.replace('\\', "\\\\").replace('\'', "\\'");
        self.query(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'; \
             CREATE DATABASE `{db}` CHARACTER SET utf8mb4"
        ))?;
        Ok(self.url(user, password, db))
    }

    /// `mysql://user:password@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}/{db}",
            super::url_encode(user),
            super::url_encode(password),
            self.port
        )
    }

    /// The names of every database, sorted.
    pub fn databases(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .query("SHOW DATABASES")?
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }

    /// What a user would compare to tell two states of database `db` apart:
    /// tables and views with their columns and next AUTO_INCREMENT values,
    /// triggers, routines and view definitions, and for every base table its
    /// row count and the SHA-256 of all its rows in primary-key order. One
    /// line per item.
    pub fn fingerprint(&self, db: &str) -> Result<Vec<String>> {
        let schema = db.replace('\'', "''");
        let mut lines = Vec::new();
        let queries = [
            format!(
                "SELECT CONCAT('table ', TABLE_NAME, ' ', TABLE_TYPE, ' ', IFNULL(ENGINE, ''), \
                 ' next ', IFNULL(AUTO_INCREMENT, '-'), ' ', IFNULL(TABLE_COLLATION, '')) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{schema}' ORDER BY TABLE_NAME"
            ),
            format!(
                "SELECT CONCAT('column ', TABLE_NAME, '.', COLUMN_NAME, ' ', COLUMN_TYPE, ' ', \
                 IFNULL(COLUMN_DEFAULT, 'NULL'), ' ', EXTRA, ' ', IFNULL(COLLATION_NAME, '')) \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{schema}' \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION"
            ),
            format!(
                "SELECT CONCAT('constraint ', TABLE_NAME, ' ', CONSTRAINT_NAME, ' ', \
                 CONSTRAINT_TYPE) FROM information_schema.TABLE_CONSTRAINTS \
                 WHERE TABLE_SCHEMA = '{schema}' ORDER BY TABLE_NAME, CONSTRAINT_NAME"
            ),
            format!(
                "SELECT CONCAT('trigger ', TRIGGER_NAME, ' ', ACTION_TIMING, ' ', \
                 EVENT_MANIPULATION, ' ', EVENT_OBJECT_TABLE, ' ', \
                 REPLACE(ACTION_STATEMENT, '\\n', ' ')) FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = '{schema}' ORDER BY TRIGGER_NAME"
            ),
            format!(
                "SELECT CONCAT('routine ', ROUTINE_TYPE, ' ', ROUTINE_NAME, ' ', \
                 IFNULL(DTD_IDENTIFIER, ''), ' ', REPLACE(ROUTINE_DEFINITION, '\\n', ' ')) \
                 FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{schema}' \
                 ORDER BY ROUTINE_TYPE, ROUTINE_NAME"
            ),
            format!(
                "SELECT CONCAT('view ', TABLE_NAME, ' ', VIEW_DEFINITION) \
                 FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{schema}' ORDER BY TABLE_NAME"
            ),
        ];
        for sql in &queries {
            lines.extend(self.rows("information_schema", sql)?);
        }
        let tables = self.rows(
            "information_schema",
            &format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = '{schema}' AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
            ),
        )?;
        for table in tables {
            lines.push(self.table_digest(db, &table)?);
        }
        Ok(lines)
    }

    /// `rows TABLE COUNT SHA256` over the table's rows as the client prints
    /// them (binary columns in hex), ordered by every column.
    fn table_digest(&self, db: &str, table: &str) -> Result<String> {
        let mut cmd = self.client();
        cmd.args(["--binary-as-hex", "-D", db, "-e"])
            .arg(format!("SELECT * FROM `{table}` ORDER BY 1"));
        let out = run_bytes(&mut cmd)?;
        let count = out.iter().filter(|b| **b == b'\n').count();
        Ok(format!(
            "rows {table} {count} {}",
            hex::encode(Sha256::digest(&out))
        ))
    }
}
