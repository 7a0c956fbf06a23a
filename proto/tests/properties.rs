//! Property tests: whatever bytes or strings arrive, parsing never panics,
//! and nothing accepted can name a path outside a backup directory.

use std::path::{Component, Path};

use hop3_proto::names::{validate_app_name, validate_artifact_path, validate_host_id};
use hop3_proto::{BackupId, Checksum, Manifest};
use proptest::prelude::*;

fn stays_inside(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
}

proptest! {
    #[test]
    fn manifest_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::from_json(&bytes);
    }

    #[test]
    fn accepted_manifests_only_name_paths_inside(
        key in "[a-z./_\\-]{1,20}",
        app in "[a-zA-Z0-9._/\\-]{1,12}",
    ) {
        let json = format!(
            r#"{{"backup_id":"20251108_143022_a8f3d9","app_name":{app:?},"created_at":"2025-11-08T14:30:22Z",
               "format_version":"1.0","hop3_version":"x","size_bytes":1,
               "checksums":{{{key:?}:"sha256:{}"}},"app_metadata":{{}}}}"#,
            "0".repeat(64)
        );
        if let Ok(m) = Manifest::from_json(json.as_bytes()) {
            prop_assert!(stays_inside(&m.app_name));
            for k in m.checksums.keys() {
                prop_assert!(stays_inside(k), "accepted {k:?}");
            }
        }
    }

    #[test]
    fn backup_ids_round_trip_or_fail_cleanly(s in "\\PC{0,30}") {
        if let Ok(id) = s.parse::<BackupId>() {
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert!(stays_inside(id.as_str()));
            let _ = id.timestamp();
        }
    }

    #[test]
    fn generated_ids_always_parse(secs in 0i64..4_000_000_000, suffix in any::<[u8; 3]>()) {
        let when = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        let id = BackupId::at(when, suffix);
        prop_assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
    }

    #[test]
    fn accepted_names_are_single_safe_components(s in "\\PC{0,70}") {
        for ok in [validate_app_name(&s).is_ok(), validate_host_id(&s).is_ok()] {
            if ok {
                prop_assert!(stays_inside(&s) && !s.contains('/') && !s.starts_with('.'));
            }
        }
        if validate_artifact_path(&s).is_ok() {
            prop_assert!(stays_inside(&s));
        }
    }

    #[test]
    fn checksums_parse_only_their_own_form(s in "\\PC{0,80}") {
        if let Ok(c) = s.parse::<Checksum>() {
            prop_assert_eq!(c.to_string(), s.to_ascii_lowercase());
        }
    }
}
