//! Fault injection for the end-to-end tests, in debug builds only: with
//! `HOP3_FAILPOINTS=NAME[=abort][,...]` in its environment, the agent panics
//! where [`hit`] names a listed point, or aborts the whole process like a
//! crash with `=abort`, so tests can check how a bug or a crash halfway is
//! handled without one to hand. Release builds compile it away.

/// Panics (or aborts, with `NAME=abort`) if `name` is listed in
/// `HOP3_FAILPOINTS`; nothing in release builds.
pub fn hit(name: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(points) = std::env::var("HOP3_FAILPOINTS") else {
        return;
    };
    for point in points.split(',') {
        match point.split_once('=') {
            Some((p, "abort")) if p == name => {
                eprintln!("failpoint {name}: aborting");
                std::process::abort();
            }
            None if point == name => panic!("failpoint {name}"),
            _ => {}
        }
    }
}
