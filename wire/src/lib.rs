//! hop3-wire: the runtime plumbing the controller and the agents share: the
//! chunked artifact streams and their bounded event senders, progress, TLS
//! and peer identities, age sealing, the join token, config files, logging, and the
//! wiring of a gRPC server (health, reflection, readiness, shutdown).

pub mod artifacts;
pub mod chunking;
pub mod chunks;
pub mod config_file;
pub mod encryption;
pub mod events;
pub mod join_token;
pub mod logging;
pub mod memory;
pub mod pack;
pub mod progress;
pub mod serving;
pub mod tls;
