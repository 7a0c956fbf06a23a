//! The digest of an agent's app list, which its heartbeats carry instead
//! of the list itself: both sides compute it the same way, so the
//! controller can tell a list it holds from one that changed.

use sha2::{Digest, Sha256};

/// Hex SHA-256 (first 16 bytes) of `apps` sorted, one name per line. The
/// order the list comes in does not matter.
pub fn digest(apps: &[String]) -> String {
    let mut sorted: Vec<&str> = apps.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for name in sorted {
        h.update(name.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_order_and_tells_lists_apart() {
        let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(digest(&list(&["a", "b"])), digest(&list(&["b", "a"])));
        assert_ne!(digest(&list(&["a", "b"])), digest(&list(&["ab"])));
        assert_ne!(digest(&list(&[])), digest(&list(&[""])));
        assert_eq!(digest(&list(&[])).len(), 32);
    }
}
