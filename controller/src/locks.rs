//! Per-app locks: one create, restore or delete at a time on an app.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of apps with an operation running.
#[derive(Clone, Default)]
pub struct AppLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs on an app; released on drop, whatever happens.
pub struct AppLock {
    held: Arc<Mutex<HashSet<String>>>,
    app: String,
}

impl AppLocks {
    /// Takes the lock on `app`, or None if another operation holds it.
    pub fn try_lock(&self, app: &str) -> Option<AppLock> {
        let mut held = self.held.lock().expect("locks poisoned");
        held.insert(app.to_owned()).then(|| AppLock {
            held: self.held.clone(),
            app: app.to_owned(),
        })
    }
}

impl Drop for AppLock {
    fn drop(&mut self) {
        self.held.lock().expect("locks poisoned").remove(&self.app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_app() {
        let locks = AppLocks::default();
        let a = locks.try_lock("a").unwrap();
        assert!(locks.try_lock("a").is_none());
        let _b = locks.try_lock("b").unwrap();
        drop(a);
        assert!(locks.try_lock("a").is_some());
    }
}
