//! Starting, watching and stopping the real binaries.
//!
//! Every process gets free ports, a cleared environment (PATH, HOME, a
//! `RUST_LOG`), and a log file of its own holding its stdout and stderr. A
//! process counts as started once its `grpc.health.v1` service answers
//! SERVING (over TLS for one that serves TLS); nothing here sleeps for a
//! fixed time. Dropping a [`Process`] (or the [`System`] that owns it) sends
//! SIGTERM, then SIGKILL after a grace period, and fails the test if a log
//! holds an ` ERROR ` line the test did not allow, or a panic.

mod probes;
mod process;
mod system;

pub use probes::*;
pub use process::*;
pub use system::*;
