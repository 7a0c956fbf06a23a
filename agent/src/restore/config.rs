//! What a restore writes into the app's `ENV` and `app.json`: a clone's
//! databases are copies, so the URLs that named the source's (in app.json
//! and in the variables that carried them) are pointed at the copies, and a
//! clone never takes the source's hostname. Pure functions, tested here.

use std::collections::BTreeMap;

use crate::apps::{self, AppConfig, ServiceConfig};

/// The `(source URL, copy URL)` pairs of the services whose URL changes.
pub(super) fn url_rewrites(targets: &[(ServiceConfig, ServiceConfig)]) -> Vec<(String, String)> {
    targets
        .iter()
        .filter(|(source, target)| source.url != target.url)
        .map(|(source, target)| (source.url.clone(), target.url.clone()))
        .collect()
}

/// `bytes` with every `(from, to)` replaced.
fn replace_all(bytes: &[u8], rewrites: &[(String, String)]) -> Vec<u8> {
    // URLs are text: a file that is not (a binary value) is left as it is.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bytes.to_vec();
    };
    let mut text = text.to_owned();
    for (from, to) in rewrites {
        text = text.replace(from.as_str(), to);
    }
    text.into_bytes()
}

/// The ENV file a restore writes: the backup's file byte for byte (comments,
/// order, quoting) but for the rewritten URLs; for an older backup that
/// kept only the parsed variables (`has_layout` false), those, one per line;
/// None when the app had no ENV.
pub(super) fn restored_env(
    raw: Option<&[u8]>,
    parsed: Option<&BTreeMap<String, String>>,
    has_layout: bool,
    rewrites: &[(String, String)],
) -> Option<Vec<u8>> {
    match (raw, parsed) {
        (Some(raw), _) => Some(replace_all(raw, rewrites)),
        (None, Some(env)) if !has_layout => {
            let mut env = env.clone();
            for value in env.values_mut() {
                *value =
                    String::from_utf8_lossy(&replace_all(value.as_bytes(), rewrites)).into_owned();
            }
            Some(apps::format_env(&env).into_bytes())
        }
        (None, _) => None,
    }
}

/// Points `cfg`'s services at where each restored one now lives, adding
/// those it does not list.
pub(super) fn point_services(cfg: &mut AppConfig, targets: &[(ServiceConfig, ServiceConfig)]) {
    for (_, target) in targets {
        match cfg
            .services
            .iter_mut()
            .find(|s| s.kind == target.kind && s.name == target.name)
        {
            Some(s) => s.url = target.url.clone(),
            None => cfg.services.push(target.clone()),
        }
    }
}

/// The hostname the restored app gets: the one asked for; else the
/// backup's, for the backup's own app; else, for another app, the one it
/// had, or none (two apps must never claim one hostname).
pub(super) fn choose_hostname(
    asked: &str,
    own: bool,
    recorded: Option<&str>,
    live: Option<&str>,
) -> Option<String> {
    if !asked.is_empty() {
        return Some(asked.to_owned());
    }
    if own { recorded } else { live }.map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, url: &str) -> ServiceConfig {
        ServiceConfig {
            kind: "postgres".into(),
            name: name.into(),
            url: url.into(),
        }
    }

    const SOURCE: &str = "postgresql://app:s3cret@db:5432/shop";
    const COPY: &str = "postgresql://app:s3cret@db:5432/shop_staging_1a2b";

    #[test]
    fn a_clone_env_keeps_its_bytes_but_for_the_urls() {
        let targets = [
            (service("db", SOURCE), service("db", COPY)),
            // Restored in place: nothing to rewrite.
            (
                service("cache", "redis://r:6379/1"),
                service("cache", "redis://r:6379/1"),
            ),
        ];
        let rewrites = url_rewrites(&targets);
        assert_eq!(rewrites, [(SOURCE.to_owned(), COPY.to_owned())]);
        let raw = format!(
            "# production settings\nDATABASE_URL={SOURCE}\n\nexport READ_URL=\"{SOURCE}\"\nSECRET=x=y\n"
        );
        let env = restored_env(Some(raw.as_bytes()), None, true, &rewrites).unwrap();
        assert_eq!(
            String::from_utf8(env).unwrap(),
            format!(
                "# production settings\nDATABASE_URL={COPY}\n\nexport READ_URL=\"{COPY}\"\nSECRET=x=y\n"
            )
        );
        // Without rewrites (the app's own restore) the file is as it was.
        assert_eq!(
            restored_env(Some(raw.as_bytes()), None, true, &[]).unwrap(),
            raw.as_bytes()
        );
    }

    #[test]
    fn a_binary_env_is_left_as_it_is_and_no_env_makes_none() {
        let rewrites = [(SOURCE.to_owned(), COPY.to_owned())];
        let binary = b"KEY=\xff\xfe\n".to_vec();
        assert_eq!(
            restored_env(Some(&binary), None, true, &rewrites).unwrap(),
            binary
        );
        assert_eq!(restored_env(None, None, true, &rewrites), None);
        // A newer backup without a raw ENV had none: the parsed view is empty
        // then and must not make one.
        let parsed = BTreeMap::new();
        assert_eq!(restored_env(None, Some(&parsed), true, &rewrites), None);
    }

    #[test]
    fn an_older_backup_env_is_rebuilt_from_its_variables() {
        let rewrites = [(SOURCE.to_owned(), COPY.to_owned())];
        let parsed = BTreeMap::from([
            ("DATABASE_URL".to_owned(), SOURCE.to_owned()),
            ("PORT".to_owned(), "8000".to_owned()),
        ]);
        let env = restored_env(None, Some(&parsed), false, &rewrites).unwrap();
        assert_eq!(
            String::from_utf8(env).unwrap(),
            format!("DATABASE_URL={COPY}\nPORT=8000\n")
        );
    }

    #[test]
    fn app_json_services_point_at_the_copies() {
        let mut cfg = AppConfig {
            services: vec![service("db", SOURCE), service("other", "postgresql://o")],
            ..Default::default()
        };
        point_services(
            &mut cfg,
            &[
                (service("db", SOURCE), service("db", COPY)),
                (service("new", SOURCE), service("new", COPY)),
            ],
        );
        assert_eq!(
            cfg.services,
            [
                service("db", COPY),
                service("other", "postgresql://o"),
                service("new", COPY)
            ]
        );
    }

    #[test]
    fn a_clone_never_takes_the_source_hostname() {
        let recorded = Some("shop.example.com");
        assert_eq!(
            choose_hostname("", true, recorded, None).as_deref(),
            recorded
        );
        assert_eq!(choose_hostname("", false, recorded, None), None);
        assert_eq!(
            choose_hostname("", false, recorded, Some("staging.example.com")).as_deref(),
            Some("staging.example.com")
        );
        assert_eq!(
            choose_hostname("new.example.com", false, recorded, None).as_deref(),
            Some("new.example.com")
        );
    }
}
