//! `backup:info ID`: the guide's "Backup Information" block. The controller
//! has verified every checksum again; a bad one makes the exit code non-zero
//! after the block is printed.

use std::fmt::Write as _;

use hop3_proto::BackupId;
use hop3_proto::v1::{BackupDetails, FileCheck};

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_rfc3339, format_size, or_na};
use crate::views::DetailsView;

/// Shows a backup's details; fails with `IntegrityFailed` when the backup
/// does not verify.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    id: &BackupId,
) -> Result<(), CliError> {
    let details = controller.get_backup(id, false).await?;
    let bad = bad_files(&details);
    let valid = details.all_valid && bad.is_empty();
    if out.is_json() {
        out.json(&DetailsView::from(details))?;
    } else {
        out.text(&render(&details))?;
    }
    if valid {
        Ok(())
    } else {
        Err(CliError::IntegrityFailed {
            backup_id: id.to_string(),
            files: bad,
        })
    }
}

/// The files that did not verify, `(missing)` marking those not found.
fn bad_files(details: &BackupDetails) -> Vec<String> {
    details
        .files
        .iter()
        .filter(|f| !f.valid)
        .map(|f| {
            if f.actual.is_empty() {
                format!("{} (missing)", f.path)
            } else {
                f.path.clone()
            }
        })
        .collect()
}

/// The checksum lines under one file: the recorded one when it verifies,
/// what was expected and what was found otherwise.
fn checksum_lines(text: &mut String, f: &FileCheck) {
    if f.valid {
        let _ = writeln!(text, "     {}", f.expected);
    } else {
        let actual = if f.actual.is_empty() {
            "missing"
        } else {
            &f.actual
        };
        let _ = writeln!(text, "     expected: {}", f.expected);
        let _ = writeln!(text, "     actual:   {actual}");
    }
}

/// The "Backup Information" block, laid out as Hop3 prints it.
pub fn render(d: &BackupDetails) -> String {
    let s = d.summary.clone().unwrap_or_default();
    let mut t = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(t, "Backup Information");
    let _ = writeln!(t, "{}", "=".repeat(50));
    let _ = writeln!(t);
    let _ = writeln!(t, "Backup ID: {}", s.backup_id);
    let _ = writeln!(t, "Application: {}", s.app);
    let _ = writeln!(t, "Created: {}", format_rfc3339(&s.created_at));
    let _ = writeln!(t, "Total Size: {}", format_size(s.total_size));
    let _ = writeln!(t, "Format Version: {}", d.format_version);
    let _ = writeln!(t, "Hop3 Version: {}", d.hop3_version);
    let _ = writeln!(t, "Status: {}", s.status);
    if !s.error.is_empty() {
        let _ = writeln!(t, "Error: {}", s.error);
    }
    // With copy stores only: the primary alone is the Location of old.
    if s.locations.len() > 1 {
        let _ = writeln!(t);
        let _ = writeln!(t, "Locations:");
        for l in &s.locations {
            let _ = writeln!(t, "  - {}", super::list::location_line(l));
        }
    }

    let _ = writeln!(t);
    let _ = writeln!(t, "Contents:");
    let _ = writeln!(t, "  - Environment: {} variables", d.env_vars_count);

    if !d.files.is_empty() {
        let _ = writeln!(t);
        let _ = writeln!(t, "File Checksums:");
        for f in &d.files {
            let mark = if f.valid { '✓' } else { '✗' };
            let _ = writeln!(t, "  {mark} {}", f.path);
            checksum_lines(&mut t, f);
        }
    }

    let _ = writeln!(t);
    if d.services_included {
        let _ = writeln!(t, "Services Included: ({})", d.services.len());
        for svc in &d.services {
            let _ = writeln!(
                t,
                "  - {}:{} ({})",
                svc.r#type,
                svc.name,
                format_size(svc.size)
            );
        }
    } else {
        let _ = writeln!(t, "Services: not included (--no-services)");
    }

    t.push_str(&super::create::skipped(&s.skipped));
    if s.status == "COMPLETED" && !d.trusted {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Not sealed by this controller (imported or copied in by hand): restore only with --trust-imported"
        );
    }

    let state = d.app_state.clone().unwrap_or_default();
    let port = if state.port == 0 {
        String::new()
    } else {
        state.port.to_string()
    };
    let _ = writeln!(t);
    let _ = writeln!(t, "Application State:");
    let _ = writeln!(t, "  hostname: {}", or_na(&state.hostname));
    let _ = writeln!(t, "  port: {}", or_na(&port));
    let _ = writeln!(t, "  run_state: {}", or_na(&state.run_state));

    let _ = writeln!(t);
    let bad = bad_files(d);
    if d.all_valid && bad.is_empty() {
        let _ = writeln!(t, "Integrity: ✓ All checksums valid");
    } else if bad.is_empty() {
        let _ = writeln!(t, "Integrity: ✗ Verification failed");
    } else {
        let _ = writeln!(t, "Integrity: ✗ Checksum mismatch: {}", bad.join(", "));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use hop3_proto::v1::{AppState, BackupSummary, ServiceInfo};

    fn file(path: &str, valid: bool, actual: &str) -> FileCheck {
        FileCheck {
            path: path.into(),
            expected: format!("sha256:{}", "a".repeat(64)),
            actual: actual.into(),
            size: 1,
            valid,
        }
    }

    fn details() -> BackupDetails {
        let ok = format!("sha256:{}", "a".repeat(64));
        BackupDetails {
            summary: Some(BackupSummary {
                backup_id: "20251108_143022_a8f3d9".into(),
                app: "my-app".into(),
                host: "h1".into(),
                status: "COMPLETED".into(),
                created_at: "2025-11-08T14:30:22.5+00:00".into(),
                total_size: 16_357_785,
                ..Default::default()
            }),
            format_version: "1.0".into(),
            hop3_version: "0.8.0".into(),
            env_vars_count: 12,
            files: vec![
                file("source.tar.gz", true, &ok),
                file("env.json", true, &ok),
            ],
            services: vec![ServiceInfo {
                r#type: "postgres".into(),
                name: "my-database".into(),
                file: "services/postgres_my-database.sql".into(),
                size: 8_598_323,
            }],
            app_state: Some(AppState {
                hostname: "myapp.example.com".into(),
                port: 8000,
                run_state: "RUNNING".into(),
            }),
            all_valid: true,
            services_included: true,
            trusted: true,
        }
    }

    #[test]
    fn renders_the_guide_block() {
        let a = "a".repeat(64);
        assert_eq!(
            render(&details()),
            format!(
                "\
Backup Information
==================================================

Backup ID: 20251108_143022_a8f3d9
Application: my-app
Created: 2025-11-08T14:30:22Z
Total Size: 15.6 MB
Format Version: 1.0
Hop3 Version: 0.8.0
Status: COMPLETED

Contents:
  - Environment: 12 variables

File Checksums:
  ✓ source.tar.gz
     sha256:{a}
  ✓ env.json
     sha256:{a}

Services Included: (1)
  - postgres:my-database (8.2 MB)

Application State:
  hostname: myapp.example.com
  port: 8000
  run_state: RUNNING

Integrity: ✓ All checksums valid
"
            )
        );
    }

    #[test]
    fn names_each_bad_file() {
        let mut d = details();
        d.all_valid = false;
        d.services_included = false;
        d.services.clear();
        d.files = vec![
            file("data.tar.gz", false, &format!("sha256:{}", "b".repeat(64))),
            file("env.json", false, ""),
            file("source.tar.gz", true, "x"),
        ];
        let text = render(&d);
        assert!(
            text.contains("  ✗ data.tar.gz\n     expected: sha256:aaaa"),
            "{text}"
        );
        assert!(
            text.contains(&format!("     actual:   sha256:{}\n", "b".repeat(64))),
            "{text}"
        );
        assert!(
            text.contains("  ✗ env.json\n     expected: sha256:"),
            "{text}"
        );
        assert!(text.contains("     actual:   missing\n"), "{text}");
        assert!(
            text.contains("Services: not included (--no-services)\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Integrity: ✗ Checksum mismatch: data.tar.gz, env.json (missing)\n"),
            "{text}"
        );
        assert_eq!(bad_files(&d), ["data.tar.gz", "env.json (missing)"]);
    }

    #[test]
    fn shows_the_error_of_a_failed_backup() {
        let mut d = details();
        let s = d.summary.as_mut().unwrap();
        s.status = "FAILED".into();
        s.error = "pg_dump exited with status 1".into();
        d.app_state = None;
        let text = render(&d);
        assert!(
            text.contains("Status: FAILED\nError: pg_dump exited with status 1\n"),
            "{text}"
        );
        assert!(text.contains("  hostname: N/A\n  port: N/A\n"), "{text}");
    }
}
