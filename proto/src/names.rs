//! Names that end up in paths: app names, service names, artifact paths.
//! Each is checked before any file is touched.

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidName {
    /// What was being named ("app name", "artifact path", ...).
    pub kind: &'static str,
    /// The refused value, cut to a printable length.
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

fn refuse(kind: &'static str, value: &str, reason: &'static str) -> InvalidName {
    InvalidName {
        kind,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// Checks one path component made of `[A-Za-z0-9._-]`, not starting with a dot.
fn check_component(kind: &'static str, value: &str, max: usize) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(refuse(kind, value, "must not be empty"));
    }
    if value.len() > max {
        return Err(refuse(kind, value, "is too long"));
    }
    if value.starts_with('.') {
        return Err(refuse(kind, value, "must not start with a dot"));
    }
    if !value
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(refuse(
            kind,
            value,
            "may only hold letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Checks an app name: it becomes a directory under `apps/` on hosts and in the store.
pub fn validate_app_name(name: &str) -> Result<(), InvalidName> {
    check_component("app name", name, 64)
}

/// Checks a service name (`my-database`): it becomes part of a file name.
pub fn validate_service_name(name: &str) -> Result<(), InvalidName> {
    check_component("service name", name, 64)
}

/// Checks a host id (an agent's name in the fleet): it is shown in tables and stored.
pub fn validate_host_id(name: &str) -> Result<(), InvalidName> {
    check_component("host id", name, 253)
}

/// Checks a hostname an app is served under (`shop.example.com`): dot-separated
/// labels of letters, digits and `-`, as DNS has them.
pub fn validate_hostname(name: &str) -> Result<(), InvalidName> {
    const KIND: &str = "hostname";
    if name.is_empty() || name.len() > 253 {
        return Err(refuse(KIND, name, "must be 1 to 253 characters"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err(refuse(
            KIND,
            name,
            "must be dot-separated labels of letters, digits and '-'",
        ));
    }
    Ok(())
}

/// Checks a path inside a backup directory, as used in `checksums` keys and
/// artifact streams: a plain file name, or `services/<file>` (`addons/<file>`
/// in backups written by Hop3's Python server).
pub fn validate_artifact_path(path: &str) -> Result<(), InvalidName> {
    const KIND: &str = "artifact path";
    let mut parts = path.split('/');
    let (first, second, rest) = (parts.next(), parts.next(), parts.next());
    match (first, second, rest) {
        (Some(file), None, None) => check_component(KIND, file, 128).map_err(|e| InvalidName {
            value: path.chars().take(80).collect(),
            ..e
        }),
        (Some("services" | "addons"), Some(file), None) => check_component(KIND, file, 128)
            .map_err(|e| InvalidName {
                value: path.chars().take(80).collect(),
                ..e
            }),
        _ => Err(refuse(
            KIND,
            path,
            "must be a file name or services/<file name>",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for ok in ["my-app", "blog", "prod-app-test", "a.b_c-1", "A"] {
            validate_app_name(ok).unwrap();
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a b", "é", "a\0b", "a\nb",
        ] {
            assert!(validate_app_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_app_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn artifact_paths() {
        for ok in [
            "source.tar.gz",
            "env.json",
            "services/postgres_my-db.sql",
            "addons/postgres_db.sql",
        ] {
            validate_artifact_path(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "services/../x",
            "services/",
            "a/b",
            "services/a/b",
            "services/.hidden",
            "../../x",
            "metadata.json/",
        ] {
            assert!(validate_artifact_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
