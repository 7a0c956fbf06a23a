//! Failure injection for tests, in debug builds only.
//!
//! Some failures cannot be arranged from outside at the moment that
//! matters (an agent dying between two statements of a database switch).
//! Tests name such a moment with `HOP3_FAILPOINTS`, a comma-separated list
//! of `NAME=ACTION`:
//!
//! - `error`: the step fails with an error naming the failpoint;
//! - `pause`: the step logs that it reached the failpoint, then waits
//!   forever, so that a test can kill the process right there.
//!
//! Release builds compile every failpoint to nothing and never read the
//! variable: this is a test hook, not a setting.

/// What a failpoint does when it is reached.
#[derive(Debug, PartialEq, Eq)]
enum Action {
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

fn parse(spec: &str, name: &str) -> Option<Action> {
    spec.split(',').find_map(|entry| {
        let (n, action) = entry.trim().split_once('=')?;
        if n.trim() != name {
            return None;
        }
        match action.trim() {
            "error" => Some(Action::Error),
            "pause" => Some(Action::Pause),
            _ => None,
        }
    })
}

/// Reaches failpoint `name`: `Err` with a message when a test asked it to
/// fail; never returns when a test asked it to pause.
pub async fn reach(name: &str) -> Result<(), String> {
    match action(name) {
        None => Ok(()),
        Some(Action::Error) => Err(format!("failpoint {name} was told to fail")),
        Some(Action::Pause) => {
            tracing::warn!(failpoint = name, "failpoint reached; pausing until killed");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        let spec = "a=error, mysql-switch = pause,b=bogus";
        assert_eq!(parse(spec, "a"), Some(Action::Error));
        assert_eq!(parse(spec, "mysql-switch"), Some(Action::Pause));
        assert_eq!(parse(spec, "b"), None);
        assert_eq!(parse(spec, "c"), None);
        assert_eq!(parse("", "a"), None);
    }
}
