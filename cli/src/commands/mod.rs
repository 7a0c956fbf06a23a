//! One module per command. Each makes its calls through the [`ControllerClient`],
//! prints its result through [`Output`], and renders its human text with a
//! pure function that the tests check line by line.
//!
//! [`ControllerClient`]: crate::client::ControllerClient
//! [`Output`]: crate::output::Output

pub mod agents;
pub mod check_age;
pub mod create;
pub mod delete;
pub mod import;
pub mod info;
pub mod list;
pub mod pin;
pub mod prune;
pub mod restore;
pub mod schedule;
