//! The hop3-backup contract shared by the controller, the agents and the CLI:
//! the gRPC services (package `hop3.backup.v1`) and the on-disk formats 1.0
//! and 1.1 (backup IDs, `metadata.json`, checksums, names).

pub mod app_list;
pub mod backup_id;
pub mod checksum;
pub mod format;
pub mod layout;
pub mod manifest;
pub mod names;

/// Generated gRPC code for package `hop3.backup.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hop3.backup.v1");
}

pub use backup_id::BackupId;
pub use checksum::{Checksum, Tally};
pub use format::Format;
pub use manifest::Manifest;

/// The encoded descriptors of package `hop3.backup.v1`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hop3_descriptor");

/// The version written into every manifest as `hop3_version`.
pub const HOP3_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Size of the data frames (the `data` of one stream message) between
/// controller and agents: a transport size, unrelated to how a format cuts
/// content. Memory on both sides is bounded by this times the depth of the
/// channels.
pub const FRAME_SIZE: usize = 256 * 1024;

/// Largest gRPC message either side accepts: one chunk plus framing.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
