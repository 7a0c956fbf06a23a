//! Scenario 4: listing, inspecting and deleting backups.

use std::fs;

use anyhow::{Context, Result, ensure};
use hop3_proto::{BackupId, Manifest};
use hop3_tests::System;
use hop3_tests::cli::{self, BackupSummary, Deleted};
use hop3_tests::fixtures::App;
use hop3_tests::harness::next_second;
use hop3_tests::servers::Postgres;
use hop3_tests::snapshot::sha256_file;

fn ids(list: &[BackupSummary]) -> Vec<&str> {
    list.iter().map(|b| b.backup_id.as_str()).collect()
}

#[test]
fn list_info_and_delete() -> Result<()> {
    list_info_and_delete_on(System::start()?)
}

#[test]
fn list_info_and_delete_on_a_postgres_catalog() -> Result<()> {
    let pg = Postgres::start()?;
    let url = pg.create_catalog("hop3_catalog")?;
    let sys = System::builder().catalog(url).start()?;
    list_info_and_delete_on(sys)?;
    // The catalog really is in PostgreSQL: it has tables there.
    let tables = pg.rows(
        "hop3_catalog",
        "SELECT tablename FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )?;
    ensure!(!tables.is_empty(), "no table in the PostgreSQL catalog");
    Ok(())
}

/// The catalog scenario against `sys`, whatever its catalog.
fn list_info_and_delete_on(sys: System) -> Result<()> {
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "alpha", 4, &scratch)?;
    App::build(&sys.root, "beta", 5, &scratch)?;

    // The first as a deploy script would: human output, `Backup ID:` line.
    let out = sys.hop3(["backup:create", "alpha"]).success()?;
    let a1 = out.human_backup_id()?;
    a1.parse::<BackupId>()
        .with_context(|| format!("`Backup ID: {a1}` is not an ID\n{}", out.report()))?;
    let first = sys.list(&["alpha"])?;
    ensure!(ids(&first) == [a1.as_str()], "{first:?}");
    next_second(&first[0].created_at)?;
    let b1 = sys.create("beta")?;
    next_second(&b1.created_at)?;
    let a2 = sys.create("alpha")?;
    next_second(&a2.created_at)?;
    let a3 = sys.create("alpha")?;
    let (b1, a2, a3) = (b1.backup_id, a2.backup_id, a3.backup_id);

    let all = sys.list(&[])?;
    ensure!(
        ids(&all) == [&a3, &a2, &b1, &a1],
        "backup:list is not newest first: {all:?}"
    );
    ensure!(all.iter().all(|b| b.status == "COMPLETED"), "{all:?}");
    for raw in sys
        .hop3(["--json", "backup:list"])
        .success()?
        .json::<Vec<serde_json::Value>>()?
    {
        cli::require_keys(&raw, cli::BACKUP_KEYS)?;
    }
    let two = sys.list(&["--limit", "2"])?;
    ensure!(ids(&two) == [&a3, &a2], "--limit 2: {two:?}");
    let alpha = sys.list(&["alpha"])?;
    ensure!(ids(&alpha) == [&a3, &a2, &a1], "alpha: {alpha:?}");
    let alpha1 = sys.list(&["alpha", "--limit", "1"])?;
    ensure!(ids(&alpha1) == [&a3], "alpha --limit 1: {alpha1:?}");
    let beta = sys.list(&["beta"])?;
    ensure!(ids(&beta) == [&b1], "beta: {beta:?}");
    let human = sys.hop3(["backup:list"]).success()?;
    for id in [&a1, &a2, &a3, &b1] {
        ensure!(
            human.stdout.contains(id.as_str()),
            "{id} not in\n{}",
            human.report()
        );
    }

    // info: every checksum verified, as recorded in metadata.json.
    let out = sys.hop3(["--json", "backup:info", &a2]).success()?;
    let raw: serde_json::Value = out.json()?;
    cli::require_keys(
        &raw,
        &[
            "backup_id",
            "app",
            "host",
            "status",
            "created_at",
            "total_size",
            "error",
            "format_version",
            "hop3_version",
            "env_vars_count",
            "services_included",
            "files",
            "services",
            "app_state",
            "all_valid",
        ],
    )?;
    let info: cli::BackupInfo = out.json()?;
    ensure!(info.backup_id == a2 && info.app == "alpha" && info.status == "COMPLETED");
    ensure!(info.all_valid, "{info:?}");
    ensure!(info.format_version == "1.1" && !info.hop3_version.is_empty());
    ensure!(info.env_vars_count == 6, "{info:?}");
    ensure!(
        info.services_included && info.service_dumps.is_empty(),
        "{info:?}"
    );
    ensure!(info.app_state.hostname == "alpha.example.com", "{info:?}");
    ensure!(info.app_state.port == 8004, "{info:?}");
    let dir = sys.backup_dir("alpha", &a2);
    let manifest = Manifest::from_json(&fs::read(dir.join("metadata.json"))?)?;
    ensure!(
        info.files.len() == manifest.checksums.len(),
        "{:?}",
        info.files
    );
    for (path, checksum) in &manifest.checksums {
        let file = info.file(path)?;
        let on_disk = format!("sha256:{}", sha256_file(&dir.join(path))?);
        ensure!(file.valid, "{file:?}");
        ensure!(
            file.expected == checksum.to_string(),
            "{file:?} vs {checksum}"
        );
        ensure!(file.actual == on_disk, "{file:?} vs {on_disk}");
        ensure!(file.size == fs::metadata(dir.join(path))?.len(), "{file:?}");
    }
    let human = sys.hop3(["backup:info", &a2]).success()?;
    ensure!(
        human.stdout.contains("Integrity: ✓ All checksums valid") && human.stdout.contains(&a2),
        "human backup:info\n{}",
        human.report()
    );

    // delete: without --yes and without a terminal, nothing is deleted.
    let dir = sys.backup_dir("alpha", &a2);
    sys.hop3(["backup:delete", &a2]).failure(&[])?;
    ensure!(
        dir.is_dir(),
        "backup:delete without --yes deleted {}",
        dir.display()
    );
    ensure!(ids(&sys.list(&["alpha"])?) == [&a3, &a2, &a1]);

    let out = sys
        .hop3(["--json", "backup:delete", &a2, "--yes"])
        .success()?;
    let deleted: Deleted = out.json()?;
    ensure!(deleted.deleted == a2, "{deleted:?}");
    ensure!(!dir.exists(), "{} still exists", dir.display());
    let alpha = sys.list(&["alpha"])?;
    ensure!(ids(&alpha) == [&a3, &a1], "after delete: {alpha:?}");
    sys.hop3(["backup:info", &a2])
        .failure(&["Backup not found"])?;
    for id in [&a1, &a3] {
        ensure!(sys.backup_dir("alpha", id).is_dir(), "{id} went with {a2}");
    }
    ensure!(sys.backup_dir("beta", &b1).is_dir(), "{b1} went with {a2}");
    Ok(())
}
