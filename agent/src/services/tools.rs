//! What the service code needs from the agent: where the database client
//! tools are, and where it keeps its own files.

use std::path::PathBuf;

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

    /// A private directory for dumps that wait on disk for their switch.
    pub fn spool_dir(&self) -> PathBuf {
        self.records.spool_dir()
    }
}
