//! `backup:list [APP] [--limit N] [--status STATUS]`.

use hop3_proto::v1::{BackupLocation, BackupSummary};

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_created, format_size, render_table};
use crate::views::BackupView;

/// Lists backups, newest first as the controller returns them.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    app: Option<&str>,
    limit: u32,
    status: Option<&str>,
) -> Result<(), CliError> {
    let backups = controller.list_backups(app, limit, status).await?;
    if out.is_json() {
        let views: Vec<BackupView> = backups.into_iter().map(BackupView::listed).collect();
        out.json(&views)
    } else {
        out.text(&render(&backups))
    }
}

/// The table of the guide, or `No backups found.`
pub fn render(backups: &[BackupSummary]) -> String {
    if backups.is_empty() {
        return "No backups found.\n".to_owned();
    }
    // The guide's table, and a COPIES column when there are copy stores.
    let copies = backups.iter().any(|b| b.locations.len() > 1);
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            let mut row = vec![
                b.backup_id.clone(),
                b.app.clone(),
                format_size(b.total_size),
                format_created(&b.created_at, &b.backup_id),
                b.status.clone(),
                service_names(&b.services),
            ];
            if copies {
                row.push(copies_cell(&b.locations));
            }
            row
        })
        .collect();
    let mut headers = vec!["BACKUP ID", "APP", "SIZE", "CREATED", "STATUS", "SERVICES"];
    if copies {
        headers.push("COPIES");
    }
    render_table(&headers, &rows)
}

/// `ok/all` of a backup's copies, and how many failed.
fn copies_cell(locations: &[BackupLocation]) -> String {
    let copies: Vec<_> = locations.iter().filter(|l| !l.primary).collect();
    let ok = copies.iter().filter(|l| l.state == "ok").count();
    let failed = copies.iter().filter(|l| l.state == "failed").count();
    match failed {
        0 => format!("{ok}/{}", copies.len()),
        n => format!("{ok}/{} ({n} failed)", copies.len()),
    }
}

/// One place a backup is, as `backup:info` lists it.
pub fn location_line(l: &BackupLocation) -> String {
    let mut line = format!("{}: {}", l.url, l.state);
    if !l.reason.is_empty() {
        line.push_str(&format!(": {}", l.reason));
    }
    if l.primary {
        line.push_str(" (primary)");
    } else if l.state == "failed" {
        line.push_str(&format!(" ({} attempts, retried)", l.attempts));
    }
    line
}

/// The names of `type:name` services, as Hop3 lists them, or `-`.
fn service_names(services: &[String]) -> String {
    if services.is_empty() {
        return "-".to_owned();
    }
    services
        .iter()
        .map(|s| s.split_once(':').map_or(s.as_str(), |(_, name)| name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, created: &str, size: u64, services: &[&str]) -> BackupSummary {
        BackupSummary {
            backup_id: id.into(),
            app: "my-app".into(),
            status: "COMPLETED".into(),
            created_at: created.into(),
            total_size: size,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_the_guide_table() {
        let backups = [
            summary(
                "20251108_143022_a8f3d9",
                "2025-11-08T14:30:22Z",
                16_357_785,
                &["postgres:my-database"],
            ),
            summary(
                "20251107_093015_b7e4c8",
                "2025-11-07T09:30:15+00:00",
                16_148_070,
                &[],
            ),
        ];
        assert_eq!(
            render(&backups),
            "\
BACKUP ID               APP     SIZE     CREATED              STATUS     SERVICES
20251108_143022_a8f3d9  my-app  15.6 MB  2025-11-08 14:30:22  COMPLETED  my-database
20251107_093015_b7e4c8  my-app  15.4 MB  2025-11-07 09:30:15  COMPLETED  -
"
        );
    }

    #[test]
    fn an_empty_list_says_so() {
        assert_eq!(render(&[]), "No backups found.\n");
    }

    #[test]
    fn services_show_their_names() {
        assert_eq!(
            service_names(&["postgres:db".into(), "redis:cache".into(), "odd".into()]),
            "db, cache, odd"
        );
    }
}
