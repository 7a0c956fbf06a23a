//! Fault injection for the end-to-end tests, in debug builds only: with
//! `HOP3_FAILPOINTS=NAME[,NAME...]` in its environment, the agent panics
//! where [`hit`] names a listed point, so tests can check how a bug is
//! reported without a bug to hand. Release builds compile it away.

/// Panics if `name` is listed in `HOP3_FAILPOINTS` (debug builds only).
pub fn hit(name: &str) {
    if cfg!(debug_assertions)
        && std::env::var("HOP3_FAILPOINTS").is_ok_and(|v| v.split(',').any(|p| p == name))
    {
        panic!("failpoint {name}");
    }
}
