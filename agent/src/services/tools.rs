//! Where the database client tools are.

use std::path::PathBuf;

/// Directories of the dump and load tools; `None` means "search PATH".
#[derive(Clone, Debug, Default)]
pub struct Tools {
    /// Holds pg_dump and psql (e.g. /usr/lib/postgresql/16/bin).
    pub pg_bin: Option<PathBuf>,
    /// Holds mysqldump and mysql (or the mariadb-* equivalents).
    pub mysql_bin: Option<PathBuf>,
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
}
