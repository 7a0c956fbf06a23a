//! Writing results on stdout, and the formatting shared by the commands:
//! sizes as Hop3 prints them, times, plain tables (comfy-table, without
//! borders).

use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table};
use hop3_proto::BackupId;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::error::CliError;

/// Where a command's result goes: human text or one JSON document, on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// JSON output when `json` is set, human text otherwise.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether the result is printed as JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints human text as is (it carries its own line ends). Flushed at
    /// once so a heading shows before a long operation starts.
    pub fn text(&self, text: &str) -> Result<(), CliError> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(CliError::Output)
    }

    /// Prints `value` as the single JSON document of this run.
    pub fn json<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        let mut out = io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
            .map_err(CliError::Output)
    }
}

/// A size as Hop3's Python server prints it: divided by 1024 up to TB, one
/// decimal (`15.6 MB`, `512.0 B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    // f64 loses precision only beyond 2^53 bytes, far below where one
    // decimal of TB could show it.
    let mut size = bytes as f64;
    for unit in UNITS {
        if size < 1024.0 {
            return format!("{size:.1} {unit}");
        }
        size /= 1024.0;
    }
    format!("{size:.1} TB")
}

/// A catalog time (RFC 3339) in UTC.
pub fn parse_utc(rfc3339: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

/// `t` as `YYYY-MM-DD HH:MM:SS`, or `raw` if it cannot be formatted.
fn format_table_time(t: OffsetDateTime, raw: &str) -> String {
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .unwrap_or_else(|_| raw.to_owned())
}

/// `created_at` as `YYYY-MM-DD HH:MM:SS` (UTC) for tables and prompts. Falls
/// back on the time in the backup ID, then on the raw text, so that a
/// malformed timestamp never hides a backup.
pub fn format_created(created_at: &str, backup_id: &str) -> String {
    let when = parse_utc(created_at)
        .or_else(|| backup_id.parse::<BackupId>().ok().map(|id| id.timestamp()));
    match when {
        Some(t) => format_table_time(t, created_at),
        None => created_at.to_owned(),
    }
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC) for tables; the raw text
/// when it does not parse, `-` when there is none.
pub fn format_time(rfc3339: &str) -> String {
    if rfc3339.is_empty() {
        return "-".to_owned();
    }
    match parse_utc(rfc3339) {
        Some(t) => format_table_time(t, rfc3339),
        None => rfc3339.to_owned(),
    }
}

/// `created_at` as RFC 3339 in UTC with a `Z` and whole seconds
/// (`2025-11-08T14:30:22Z`), also for backups written by Hop3's Python
/// server, which say `+00:00` and carry microseconds.
pub fn format_rfc3339(created_at: &str) -> String {
    match parse_utc(created_at) {
        Some(t) => t
            .format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .unwrap_or_else(|_| created_at.to_owned()),
        None => created_at.to_owned(),
    }
}

/// A plain table: columns left-aligned and two spaces apart, no borders, no
/// trailing spaces, so `awk` and `cut` keep working on it.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().map(|r| r.iter().map(String::as_str)));
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

/// A value that may be missing, as Hop3 shows it.
pub fn or_na(value: &str) -> &str {
    if value.is_empty() { "N/A" } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_hop3_formats_them() {
        assert_eq!(format_size(0), "0.0 B");
        assert_eq!(format_size(512), "512.0 B");
        assert_eq!(format_size(1023), "1023.0 B");
        assert_eq!(format_size(1024), "1.0 KB");
        assert_eq!(format_size(1536), "1.5 KB");
        assert_eq!(format_size(16_357_785), "15.6 MB");
        assert_eq!(format_size(8_598_323), "8.2 MB");
        assert_eq!(format_size(3 * 1024 * 1024 * 1024), "3.0 GB");
        assert_eq!(format_size(5 * 1024u64.pow(4)), "5.0 TB");
        assert_eq!(format_size(2048 * 1024u64.pow(4)), "2048.0 TB");
        assert_eq!(format_size(u64::MAX), "16777216.0 TB");
    }

    #[test]
    fn created_times() {
        let id = "20251108_143022_a8f3d9";
        assert_eq!(
            format_created("2025-11-08T14:30:22Z", id),
            "2025-11-08 14:30:22"
        );
        assert_eq!(
            format_created("2025-11-08T15:30:22.123456+01:00", id),
            "2025-11-08 14:30:22"
        );
        assert_eq!(format_created("garbage", id), "2025-11-08 14:30:22");
        assert_eq!(format_created("garbage", "x"), "garbage");
        assert_eq!(
            format_time("2025-11-08T15:30:22.5+01:00"),
            "2025-11-08 14:30:22"
        );
        assert_eq!(format_time("2025-11-08T14:30:22Z"), "2025-11-08 14:30:22");
        assert_eq!(format_time("garbage"), "garbage");
        assert_eq!(format_time(""), "-");
        assert_eq!(
            format_rfc3339("2025-11-08T14:30:22.123456+00:00"),
            "2025-11-08T14:30:22Z"
        );
        assert_eq!(
            format_rfc3339("2025-11-08T14:30:22Z"),
            "2025-11-08T14:30:22Z"
        );
    }

    #[test]
    fn tables_are_aligned_without_trailing_spaces() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "-".to_owned()],
            vec!["bbb".to_owned(), "x".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            render_table(&["H1", "H2", "H3"], &rows),
            "H1   H2          H3\n\
             a    long value  -\n\
             bbb  x           y\n"
        );
    }
}
