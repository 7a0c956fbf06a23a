//! Backups in S3 (a throwaway moto server): the store is a bucket, objects
//! keep the local layout, restores are identical, a new controller on the
//! bucket alone finds every backup, and an upload cut short (the
//! controller killed, the service gone) never shows up as a backup.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hop3_tests::fixtures::App;
use hop3_tests::harness::wait_until;
use hop3_tests::servers::Moto;
use hop3_tests::{Snapshot, System};

use super::services::{PG_CHANGES, PgDb, attach, differs, same};

const BUCKET: &str = "hop3-e2e";
const URL: &str = "s3://hop3-e2e/fleet/prod";

/// A controller on the bucket, backups in the clear (the tests of
/// encryption, the default off the host, are in `encryption`).
fn on_s3(moto: &Moto) -> hop3_tests::harness::SystemBuilder {
    let mut b = System::builder()
        .store_url(URL)
        .controller_args(["--allow-plaintext-store"]);
    for (k, v) in moto.env() {
        b = b.controller_env(k, v);
    }
    b
}

#[test]
fn a_backup_in_s3_restores_identically_and_a_new_controller_finds_it() -> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let pg = PgDb::start("shop")?;
    let sys = on_s3(&moto).start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 61, &scratch)?;
    // More than a part: the data archive goes up as a multipart upload.
    app.big_data(20)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = Snapshot::of(&app.dir)?;
    let rows = pg.fingerprint()?;

    let created = sys.create("shop")?;
    let id = created.backup_id.clone();
    ensure!(
        created.location == format!("{URL}/apps/shop/{id}"),
        "{created:?}"
    );
    // The local layout, under the prefix, for any S3 client.
    let keys = moto.keys(BUCKET)?;
    let prefix = format!("fleet/prod/apps/shop/{id}/");
    for file in ["metadata.json", "metadata.seal", "env.json"] {
        ensure!(
            keys.contains(&format!("{prefix}{file}")),
            "no {file}: {keys:?}"
        );
    }
    ensure!(
        keys.iter().all(|k| !k.ends_with(".partial")),
        "a mark is left: {keys:?}"
    );
    ensure!(moto.open_uploads(BUCKET)?.is_empty());
    // The parts went up with their SHA-256 for the server to check (moto
    // records it for multipart uploads; for a single PUT only when an AWS
    // SDK's own header asks).
    let sum = moto.sha256_checksum(BUCKET, &format!("{prefix}data.tar.zst"))?;
    ensure!(sum.is_some(), "the data archive went up without a checksum");
    let info = sys.info(&id)?;
    ensure!(info.all_valid, "{info:?}");

    app.mutate(&scratch)?;
    pg.script(PG_CHANGES)?;
    differs(&rows, &pg.fingerprint()?, "PG_CHANGES")?;
    sys.restore(&id, None)?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the app restored from S3")?;
    same(&rows, &pg.fingerprint()?, "the database restored from S3")?;

    // The whole server is gone: a new controller, an empty catalog and a
    // state directory of its own, pointed at the bucket alone.
    let fresh = on_s3(&moto).start()?;
    let listed = fresh.list(&[])?;
    ensure!(
        listed.len() == 1 && listed[0].backup_id == id && listed[0].status == "COMPLETED",
        "{listed:?}"
    );
    ensure!(fresh.info(&id)?.all_valid);
    // Its seal key is new, so the backup is not its own until trusted.
    fresh
        .hop3(["backup:restore", &id, "--target-app", "shop-copy"])
        .failure(&["--trust-imported"])?;
    fresh.restore_with(&id, Some("shop-copy"), None, &["--trust-imported"])?;
    let copy = App::existing(&fresh.root, "shop-copy");
    original.as_clone().assert_same(
        &Snapshot::of(&copy.dir)?,
        "the app restored on a new controller",
    )?;
    Ok(())
}

#[test]
fn an_upload_cut_short_never_shows_up_and_is_cleaned_away() -> Result<()> {
    let mut moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let mut sys = on_s3(&moto)
        .controller_args(["--store-retry-timeout", "2s"])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 63, &scratch)?;
    app.big_data(96)?;

    // The controller killed mid-upload.
    let mut create = sys.hop3_command(["backup:create", "shop"]).spawn()?;
    wait_until(Duration::from_secs(60), "a multipart upload", || {
        Ok((!moto.open_uploads(BUCKET)?.is_empty()).then_some(()))
    })?;
    sys.controller().allow_errors();
    sys.controller().kill();
    let _ = create.wait();
    let keys = moto.keys(BUCKET)?;
    ensure!(
        keys.iter().any(|k| k.ends_with(".partial")),
        "no mark: {keys:?}"
    );
    sys.restart_controller()?;
    let listed = sys.list(&[])?;
    ensure!(listed.iter().all(|b| b.status != "COMPLETED"), "{listed:?}");
    let keys = moto.keys(BUCKET)?;
    ensure!(
        keys.iter().all(|k| !k.contains("/apps/")),
        "objects of the interrupted backup are left: {keys:?}"
    );
    ensure!(
        moto.open_uploads(BUCKET)?.is_empty(),
        "{:?}",
        moto.open_uploads(BUCKET)?
    );

    // The service gone mid-upload: a clear failure, nothing COMPLETED.
    sys.controller().allow_errors();
    let create = sys
        .hop3_command(["--json", "backup:create", "shop"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until(Duration::from_secs(60), "a multipart upload", || {
        Ok((!moto.open_uploads(BUCKET)?.is_empty()).then_some(()))
    })?;
    moto.stop()?;
    let out = create.wait_with_output()?;
    ensure!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("127.0.0.1") || text.to_lowercase().contains("store"),
        "the error does not say the store failed: {text}"
    );
    let listed = sys.list(&[])?;
    let newest = listed.first().context("no backup row")?;
    ensure!(newest.status == "FAILED", "{listed:?}");
    ensure!(listed.iter().all(|b| b.status != "COMPLETED"), "{listed:?}");
    Ok(())
}

#[test]
fn store_check_says_what_works_before_the_first_backup() -> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let check = |url: &str| -> Result<(bool, String)> {
        let out = std::process::Command::new(hop3_tests::harness::binary("hop3-controller"))
            .args(["--store-retry-timeout", "1s", "store", "check", url])
            .envs(moto.env())
            .env_remove("RUST_BACKTRACE")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    };
    let (ok, text) = check(URL)?;
    ensure!(ok, "{text}");
    for step in [
        "write",
        "read back",
        "multipart upload (2 parts)",
        "conflicts",
        "list",
        "delete",
    ] {
        ensure!(
            text.lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(step)),
            "no ok for {step}: {text}"
        );
    }
    ensure!(
        moto.keys(BUCKET)?.is_empty(),
        "canaries left: {:?}",
        moto.keys(BUCKET)?
    );
    let (ok, text) = check("s3://no-such-bucket/x")?;
    ensure!(!ok, "{text}");
    ensure!(
        text.contains("FAIL") && text.contains("NoSuchBucket"),
        "{text}"
    );
    ensure!(
        !text.contains(hop3_tests::servers::moto::SECRET_KEY),
        "{text}"
    );
    Ok(())
}

#[test]
fn copies_in_a_second_bucket_and_a_directory_restore_when_the_primary_bucket_is_gone() -> Result<()>
{
    const OFFSITE: &str = "hop3-offsite";
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    moto.create_bucket(OFFSITE)?;
    let vault = tempfile::Builder::new().prefix("hop3-vault-").tempdir()?;
    let vault_url = vault.path().display().to_string();
    let mut sys = on_s3(&moto)
        .controller_args([
            "--copy-to",
            "s3://hop3-offsite/copies",
            "--copy-to",
            &vault_url,
        ])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 67, &scratch)?;
    app.big_data(12)?;
    let original = Snapshot::of(&app.dir)?;

    let created = sys.create("shop")?;
    let id = created.backup_id.clone();
    let offsite = format!("s3://{OFFSITE}/copies/apps/shop/{id}");
    let in_vault = format!("{vault_url}/apps/shop/{id}");
    let urls: Vec<&str> = created.locations.iter().map(|l| l.url.as_str()).collect();
    ensure!(
        urls == [
            created.location.as_str(),
            offsite.as_str(),
            in_vault.as_str()
        ] && created.locations[0].primary
            && created.locations[0].state == "ok",
        "{:?}",
        created.locations
    );
    wait_until(Duration::from_secs(60), "both copies", || {
        let listed = sys.list(&[])?;
        let states: Vec<String> = listed[0]
            .locations
            .iter()
            .map(|l| l.state.clone())
            .collect();
        Ok((states == ["ok", "ok", "ok"]).then_some(()))
    })?;
    // The same objects under the copy's prefix, readable by any S3 client.
    let strip = |keys: Vec<String>, prefix: &str| -> Vec<String> {
        keys.into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
            .collect()
    };
    let primary_keys = strip(moto.keys(BUCKET)?, &format!("fleet/prod/apps/shop/{id}/"));
    ensure!(primary_keys.contains(&"metadata.json".to_owned()));
    ensure!(
        strip(moto.keys(OFFSITE)?, &format!("copies/apps/shop/{id}/")) == primary_keys,
        "{:?}",
        moto.keys(OFFSITE)?
    );
    ensure!(
        std::path::Path::new(&in_vault)
            .join("metadata.json")
            .is_file()
    );
    let info = sys.hop3(["backup:info", &id]).success()?.stdout;
    ensure!(
        info.contains(&format!("  - {offsite}: ok")),
        "backup:info does not say where the backup is:\n{info}"
    );

    // The primary bucket is lost, and the controller restarts: it serves
    // from its catalog at once, keeps the backup a copy holds, and the
    // restore reads the first copy, saying so.
    moto.delete_bucket(BUCKET)?;
    sys.restart_controller()?;
    let listed = sys.list(&[])?;
    ensure!(
        listed.len() == 1 && listed[0].status == "COMPLETED",
        "{listed:?}"
    );
    app.mutate(&scratch)?;
    sys.controller().allow_errors();
    let restored = sys.restore(&id, None)?;
    ensure!(restored.source == offsite, "{restored:?}");
    ensure!(
        restored
            .notes
            .iter()
            .any(|n| n.starts_with(&format!("read from the copy at {offsite}"))),
        "{restored:?}"
    );
    original.assert_same(&Snapshot::of(&app.dir)?, "the app restored from the copy")?;

    // Deleted, it goes from every copy too.
    moto.create_bucket(BUCKET)?;
    sys.hop3(["backup:delete", &id, "--yes"]).success()?;
    ensure!(moto.keys(OFFSITE)?.is_empty(), "{:?}", moto.keys(OFFSITE)?);
    ensure!(!std::path::Path::new(&in_vault).exists());
    Ok(())
}
