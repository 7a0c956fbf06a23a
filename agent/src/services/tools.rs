//! What the service code needs from the agent: where the database client
//! tools are, and where it keeps its own files.

use std::path::PathBuf;

use super::conn::ConnInfo;
use super::records::Records;
use crate::apps::HostRoot;

/// Directories of the dump and load tools (`None` means "search PATH"),
/// the records of what the agent made on database servers, and the host's
/// apps.
#[derive(Clone, Debug)]
pub struct Tools {
    /// Holds pg_dump and psql (e.g. /usr/lib/postgresql/16/bin).
    pub pg_bin: Option<PathBuf>,
    /// Holds mysqldump and mysql (or the mariadb-* equivalents).
    pub mysql_bin: Option<PathBuf>,
    /// Administrative PostgreSQL connections, one per server (`--pg-admin-url`).
    pub pg_admin: Vec<ConnInfo>,
    /// Scratch and replaced databases on record, in the agent's state directory.
    pub records: Records,
    /// The host's apps, whose services must never be handed to another.
    pub host: HostRoot,
}

impl Tools {
    /// The path of a PostgreSQL tool.
    pub fn pg(&self, tool: &str) -> PathBuf {
        self.pg_bin
            .as_ref()
            .map_or_else(|| PathBuf::from(tool), |d| d.join(tool))
    }

    /// The path of a MySQL tool.
    pub fn mysql(&self, tool: &str) -> PathBuf {
        self.mysql_bin
            .as_ref()
            .map_or_else(|| PathBuf::from(tool), |d| d.join(tool))
    }

    /// The administrative connection configured for `conn`'s PostgreSQL
    /// server (same host as written, same port), if any.
    pub fn pg_admin_for(&self, conn: &ConnInfo) -> Option<&ConnInfo> {
        const DEFAULT_PORT: u16 = 5432;
        self.pg_admin.iter().find(|a| {
            a.host.eq_ignore_ascii_case(&conn.host)
                && a.port.unwrap_or(DEFAULT_PORT) == conn.port.unwrap_or(DEFAULT_PORT)
        })
    }

    /// A private directory for dumps that wait on disk for their switch.
    pub fn spool_dir(&self) -> PathBuf {
        self.records.spool_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_connections_match_by_host_and_port() {
        let parse = |u: &str| ConnInfo::parse("t", u).unwrap();
        let tools = Tools {
            pg_bin: None,
            mysql_bin: None,
            pg_admin: vec![
                parse("postgresql://a:x@db.example:5433/postgres"),
                parse("postgresql://b:y@127.0.0.1/postgres"),
            ],
            records: Records::new(PathBuf::from("/nonexistent")),
            host: HostRoot::new("/nonexistent"),
        };
        let admin = |u: &str| tools.pg_admin_for(&parse(u)).map(|a| a.user.clone());
        assert_eq!(
            admin("postgresql://app:p@DB.example:5433/shop").as_deref(),
            Some("a")
        );
        assert_eq!(admin("postgresql://app:p@db.example/shop"), None);
        assert_eq!(
            admin("postgresql://app:p@127.0.0.1:5432/shop").as_deref(),
            Some("b")
        );
        assert_eq!(admin("postgresql://app:p@localhost/shop"), None);
    }
}
