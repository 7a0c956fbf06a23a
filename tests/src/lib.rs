//! End-to-end test support for hop3-backup: the real `hop3-controller`,
//! `hop3-agent` and `hop3` binaries run as processes against real apps
//! (real git repositories, real files) in temporary directories.
//!
//! - [`harness`]: starting, waiting on and stopping processes ([`System`]).
//! - [`fixtures`]: building apps on a host's disk ([`App`]).
//! - [`snapshot`]: capturing an app's state to compare ([`Snapshot`]).
//! - [`cli`]: running `hop3` and reading its `--json`.
//! - [`netns`], [`tmpfs`]: faults to inject: a network link to cut, a small
//!   file system to fill.
//!
//! The scenarios live in `tests/e2e/`, all in one test binary.

pub mod cli;
pub mod fixtures;
pub mod harness;
pub mod netns;
pub mod servers;
pub mod snapshot;
pub mod tmpfs;

pub use cli::Output;
pub use fixtures::App;
pub use harness::System;
pub use snapshot::Snapshot;
