//! End-to-end scenarios: the real binaries, real git, real files. One test
//! binary; each scenario starts its own system in its own temporary
//! directory, so they run in parallel.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

#[path = "e2e/agent_crash.rs"]
mod agent_crash;
#[path = "e2e/alerts.rs"]
mod alerts;
#[path = "e2e/attacks.rs"]
mod attacks;
#[path = "e2e/catalog.rs"]
mod catalog;
#[path = "e2e/concurrency.rs"]
mod concurrency;
#[path = "e2e/encryption.rs"]
mod encryption;
#[path = "e2e/failures.rs"]
mod failures;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/newcomer.rs"]
mod newcomer;
#[path = "e2e/object_store.rs"]
mod object_store;
#[path = "e2e/real_apps.rs"]
mod real_apps;
#[path = "e2e/recovery.rs"]
mod recovery;
#[path = "e2e/retention.rs"]
mod retention;
#[path = "e2e/roundtrip.rs"]
mod roundtrip;
#[path = "e2e/schedules.rs"]
mod schedules;
#[path = "e2e/security.rs"]
mod security;
#[path = "e2e/services.rs"]
mod services;
#[path = "e2e/store_format.rs"]
mod store_format;
