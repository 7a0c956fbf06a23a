//! Failure injection for the end-to-end tests, in debug builds only.
//!
//! Some failures cannot be arranged from outside at the moment that
//! matters (an agent dying between two swaps of a restore, or between two
//! statements of a database switch). Tests name such a moment with
//! `HOP3_FAILPOINTS`, a comma-separated list of `NAME` or `NAME=ACTION`:
//!
//! - `NAME` alone: the agent panics there (a bug, as a test needs one);
//! - `abort`: the whole process aborts there, like a crash;
//! - `error`: the step fails with an error naming the failpoint ([`reach`]);
//! - `pause`: the step logs that it reached the failpoint, then waits
//!   forever, so that a test can kill the process right there ([`reach`]).
//!
//! Release builds compile every failpoint to nothing and never read the
//! variable: this is a test hook, not a setting.

/// What a failpoint does when it is reached.
// Release builds read no failpoints: the actions and their parser stay
// compiled for the unit tests, unused.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Panic,
    Abort,
    Error,
    Pause,
}

/// The action `HOP3_FAILPOINTS` gives failpoint `name`, if any.
#[cfg(debug_assertions)]
fn action(name: &str) -> Option<Action> {
    parse(&std::env::var("HOP3_FAILPOINTS").ok()?, name)
}

#[cfg(not(debug_assertions))]
fn action(_name: &str) -> Option<Action> {
    None
}

#[cfg_attr(not(debug_assertions), allow(dead_code))]
fn parse(spec: &str, name: &str) -> Option<Action> {
    spec.split(',').find_map(|entry| {
        let (n, action) = entry.split_once('=').unwrap_or((entry, "panic"));
        if n.trim() != name {
            return None;
        }
        match action.trim() {
            "panic" => Some(Action::Panic),
            "abort" => Some(Action::Abort),
            "error" => Some(Action::Error),
            "pause" => Some(Action::Pause),
            _ => None,
        }
    })
}

/// Panics or aborts at failpoint `name` when a test asked for it; steps
/// that can fail or wait use [`reach`].
pub fn hit(name: &str) {
    match action(name) {
        Some(Action::Panic) => panic!("failpoint {name}"),
        Some(Action::Abort) => {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
        _ => {}
    }
}

/// Reaches failpoint `name`: `Err` with a message when a test asked it to
/// fail; never returns when a test asked it to pause.
pub async fn reach(name: &str) -> Result<(), String> {
    hit(name);
    match action(name) {
        Some(Action::Error) => Err(format!("failpoint {name} was told to fail")),
        Some(Action::Pause) => {
            tracing::warn!(failpoint = name, "failpoint reached; pausing until killed");
            std::future::pending().await
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        let spec = "a=error, mysql-switch = pause,b=bogus,backup:x,c=abort";
        assert_eq!(parse(spec, "a"), Some(Action::Error));
        assert_eq!(parse(spec, "mysql-switch"), Some(Action::Pause));
        assert_eq!(parse(spec, "b"), None);
        assert_eq!(parse(spec, "backup:x"), Some(Action::Panic));
        assert_eq!(parse(spec, "c"), Some(Action::Abort));
        assert_eq!(parse(spec, "d"), None);
        assert_eq!(parse("", "a"), None);
    }
}
