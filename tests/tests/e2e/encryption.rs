//! Encryption at rest with age: a store off the host takes nothing in the
//! clear, no stored byte holds a secret, the standard `age` CLI opens what
//! hop3 wrote, any one recipient's identity restores, and a restore without
//! the identity (or with another) refuses with the app untouched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use hop3_tests::fixtures::{self, App, default_env};
use hop3_tests::servers::Moto;
use hop3_tests::{Snapshot, System};

use super::services::{PG_CHANGES, PgDb, attach, differs, same};

const BUCKET: &str = "hop3-sealed";
const URL: &str = "s3://hop3-sealed/prod";

fn on_s3(moto: &Moto) -> hop3_tests::harness::SystemBuilder {
    let mut b = System::builder().store_url(URL);
    for (k, v) in moto.env() {
        b = b.controller_env(k, v);
    }
    b
}

/// Every regular file below `dir`.
fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files_below(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs a shell pipeline; its standard output.
fn sh(script: &str) -> Result<String> {
    fixtures::run({
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    })
    .with_context(|| script.to_owned())
}

#[test]
fn a_store_off_the_host_takes_no_backup_in_the_clear_without_being_told() -> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let tmp = tempfile::Builder::new().prefix("hop3-e2e-").tempdir()?;
    let t = tmp.path();
    let log = t.join("controller.log");
    let mut child = Command::new(hop3_tests::harness::binary("hop3-controller"))
        .args(["--listen", "127.0.0.1:0", "--store", URL])
        .arg("--state-dir")
        .arg(t.join("state"))
        .arg("--keys-dir")
        .arg(t.join("keys"))
        .arg("--socket")
        .arg(t.join("ctl.sock"))
        .envs(moto.env())
        .stdin(std::process::Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()?;
    // A controller that starts anyway would serve for ever: it is killed
    // when the deadline passes, and the test fails.
    let status = hop3_tests::harness::wait_child(&mut child, std::time::Duration::from_secs(30));
    let err = fs::read_to_string(&log)?;
    ensure!(
        status.is_ok_and(|s| !s.success()),
        "the controller started with no keys: {err}"
    );
    ensure!(
        err.contains("is off this host, and backups there are encrypted with age")
            && err.contains("keys init")
            && err.contains("--allow-plaintext-store"),
        "{err}"
    );
    ensure!(moto.keys(BUCKET)?.is_empty(), "{:?}", moto.keys(BUCKET)?);
    Ok(())
}

#[test]
fn an_encrypted_backup_in_s3_holds_no_secret_opens_with_age_and_restores_identically() -> Result<()>
{
    const ROW: &str = "row-secret-7f3a9c51e2";
    const FILE: &str = "file-secret-0b9d44e1c7";
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let pg = PgDb::start("shop")?;
    pg.script(&format!(
        "CREATE TABLE vault (v text); INSERT INTO vault VALUES ('{ROW}');"
    ))?;
    let sys = on_s3(&moto).encrypted().start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 71, &scratch)?;
    // More than a part: the data archive goes up as a multipart upload.
    app.big_data(12)?;
    fs::write(app.data_dir().join("diary.txt"), format!("{FILE} and more"))?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = Snapshot::of(&app.dir)?;
    let rows = pg.fingerprint()?;

    let id = sys.create("shop")?.backup_id;
    let prefix = format!("prod/apps/shop/{id}/");
    let keys = moto.keys(BUCKET)?;
    let names: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix))
        .collect();
    for n in &names {
        ensure!(
            n.ends_with(".age") || ["metadata.json", "metadata.seal"].contains(n),
            "{n} is stored in the clear: {names:?}"
        );
    }
    for n in [
        "data.tar.zst.age",
        "source.tar.zst.age",
        "env.json.age",
        "ENV.age",
        "app.json.age",
    ] {
        ensure!(names.contains(&n), "no {n}: {names:?}");
    }
    ensure!(
        names
            .iter()
            .any(|n| n.starts_with("services/") && n.ends_with(".age")),
        "{names:?}"
    );

    // Every stored byte, searched for what the app holds.
    let down = scratch.join("bucket");
    moto.download_all(BUCKET, &prefix, &down)?;
    let mut secrets: Vec<String> = default_env(71)
        .into_values()
        .filter(|v| v.len() >= 12)
        .collect();
    secrets.extend([ROW.to_owned(), FILE.to_owned(), pg.url.clone()]);
    let stored = files_below(&down)?;
    ensure!(stored.len() == names.len(), "{stored:?}");
    for file in &stored {
        let bytes = fs::read(file)?;
        for s in &secrets {
            ensure!(
                !holds(&bytes, s.as_bytes()),
                "{s:?} is readable in {}",
                file.display()
            );
        }
    }

    // The standard age CLI opens every part with the controller's identity.
    let dir = down.join(&prefix);
    let identity = sys.keys_dir.join("identity.txt");
    let (id_path, d) = (identity.display(), dir.display());
    let listing = sh(&format!(
        "age -d -i {id_path} {d}/data.tar.zst.age | tar --zstd -tf -"
    ))?;
    ensure!(listing.lines().any(|l| l == "data/diary.txt"), "{listing}");
    let env = sh(&format!("age -d -i {id_path} {d}/env.json.age"))?;
    ensure!(env.contains(&default_env(71)["SECRET_KEY"]), "{env}");
    let dump = sh(&format!("age -d -i {id_path} {d}/services/*.age"))?;
    ensure!(dump.contains(ROW), "the dump does not hold the row");
    // The plaintext digests, in the manifest's encrypted section.
    let digests = sh(&format!(
        "python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"encrypted\"][\"payload\"])' {d}/metadata.json | age -d -i {id_path}"
    ))?;
    ensure!(digests.contains("data.tar.zst.age"), "{digests}");

    app.mutate(&scratch)?;
    pg.script(PG_CHANGES)?;
    differs(&rows, &pg.fingerprint()?, "PG_CHANGES")?;
    sys.restore(&id, None)?;
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app restored from encrypted S3",
    )?;
    same(
        &rows,
        &pg.fingerprint()?,
        "the database restored from encrypted S3",
    )?;
    Ok(())
}

/// A new identity made with the age CLI; its public key.
fn age_keygen(path: &Path) -> Result<String> {
    sh(&format!("age-keygen -o {} 2>/dev/null", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    let text = fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .map(str::to_owned)
        .context("age-keygen wrote no public key")
}

#[test]
fn restores_need_an_identity_of_the_backup_and_any_one_recipient_is_enough() -> Result<()> {
    let mut sys = System::builder().encrypted().start()?;
    let scratch = sys.scratch("fixtures")?;
    let escrow = scratch.join("escrow.txt");
    let escrow_key = age_keygen(&escrow)?;
    let keys = sys.keys_dir.display().to_string();
    sys.admin([
        "keys",
        "add-recipient",
        &escrow_key,
        "--note",
        "escrow",
        "--keys-dir",
        &keys,
    ])
    .success()?;
    let listed = sys.admin(["keys", "list", "--keys-dir", &keys]).success()?;
    ensure!(
        listed.stdout.lines().count() == 2 && listed.stdout.contains("identity not here"),
        "{}",
        listed.stdout
    );
    sys.restart_controller()?;
    let app = App::build(&sys.root, "shop", 73, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("shop")?.backup_id;
    let stored = sys.backup_dir("shop", &id);
    ensure!(stored.join("data.tar.zst.age").exists() && !stored.join("data.tar.zst").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(stored.join("metadata.json"))?)?;
    ensure!(
        manifest["encrypted"]["keys"].as_array().map(Vec::len) == Some(2),
        "{manifest}"
    );
    // `sha256sum -c` still checks the stored files by hand, without a key.
    let info = sys.info(&id)?;
    ensure!(info.all_valid, "{info:?}");

    app.mutate(&scratch)?;
    let changed = Snapshot::of(&app.dir)?;
    let identity = sys.keys_dir.join("identity.txt");
    let own = scratch.join("own-identity.txt");
    fs::rename(&identity, &own)?;
    for with in ["no identity", "another identity"] {
        if with == "another identity" {
            age_keygen(&identity)?;
        }
        sys.restart_controller()?;
        sys.hop3(["backup:restore", &id])
            .failure(&["is encrypted to key", "holds no identity"])
            .with_context(|| with.to_owned())?;
        let what = format!("the app after a restore with {with}");
        changed.assert_same(&Snapshot::of(&app.dir)?, &what)?;
    }

    // The escrow identity alone: the controller's own is gone.
    fs::copy(&escrow, &identity)?;
    sys.restart_controller()?;
    sys.restore(&id, None)?;
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app restored with the escrow key",
    )?;

    // A flipped byte in an encrypted archive: refused, the app left alone.
    fixtures::overwrite_in_place(&stored.join("data.tar.zst.age"), 400, b"\xff\x00")?;
    app.mutate(&scratch)?;
    let changed = Snapshot::of(&app.dir)?;
    sys.hop3(["backup:restore", &id])
        .failure(&["data.tar.zst.age"])?;
    changed.assert_same(&Snapshot::of(&app.dir)?, "the app after a damaged restore")?;
    Ok(())
}

/// Rewrites `name`'s checksum in the manifest of the backup at `dir` to
/// match the file as it is now: damage only decryption can find.
fn recompute_checksum(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join("metadata.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
    let sum = hop3_tests::snapshot::sha256_file(&dir.join(name))?;
    manifest["checksums"][name] = format!("sha256:{sum}").into();
    fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
    Ok(())
}

#[test]
fn damage_behind_a_valid_checksum_is_found_by_decryption_and_leaves_the_app_alone() -> Result<()> {
    let sys = System::builder().encrypted().start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 79, &scratch)?;
    app.big_data(3)?;
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("shop")?.backup_id;
    let stored = sys.backup_dir("shop", &id);
    let archive = stored.join("data.tar.zst.age");
    let intact = fs::read(&archive)?;
    app.mutate(&scratch)?;
    let changed = Snapshot::of(&app.dir)?;

    // A flipped byte in the middle of the ciphertext.
    let mut flipped = intact.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    // Cut at an age chunk boundary (64 KiB of plaintext and a 16-byte tag,
    // after the header's MAC line and a 16-byte nonce): only the missing
    // last-chunk flag tells.
    let mac = intact
        .windows(5)
        .position(|w| w == b"\n--- ")
        .context("no age header")?;
    let header_end = mac
        + 1
        + intact[mac + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(0)
        + 1;
    let payload = header_end + 16;
    let cut = payload + (intact.len() - payload) / 2 / 65552 * 65552;
    for (what, bytes) in [("flipped", flipped), ("truncated", intact[..cut].to_vec())] {
        fs::write(&archive, &bytes)?;
        recompute_checksum(&stored, "data.tar.zst.age")?;
        // The manifest changed: no longer this controller's seal.
        sys.hop3(["backup:restore", &id, "--trust-imported"])
            .failure(&["data.tar.zst.age cannot be decrypted"])
            .with_context(|| what.to_owned())?;
        changed.assert_same(
            &Snapshot::of(&app.dir)?,
            &format!("the app after a {what} archive"),
        )?;
    }
    fs::write(&archive, &intact)?;
    recompute_checksum(&stored, "data.tar.zst.age")?;
    sys.hop3(["backup:restore", &id, "--trust-imported"])
        .success()?;
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app restored from the mended archive",
    )?;
    Ok(())
}

#[test]
fn a_passphrase_protected_identity_restores_once_unlocked_at_start() -> Result<()> {
    let secrets = tempfile::Builder::new().prefix("hop3-pass-").tempdir()?;
    let pass = secrets.path().join("passphrase");
    fs::write(&pass, "correct horse battery staple\n")?;
    let sys = System::builder().keys_passphrase(&pass).start()?;
    let identity = fs::read_to_string(sys.keys_dir.join("identity.txt"))?;
    ensure!(
        identity.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
            && !identity.contains("AGE-SECRET-KEY"),
        "{identity}"
    );
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 83, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("shop")?.backup_id;
    app.mutate(&scratch)?;
    sys.restore(&id, None)?;
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app restored with an unlocked identity",
    )?;
    // Without its passphrase the identity stays shut, and says how to open it.
    let keys = sys.keys_dir.display().to_string();
    let listed = sys.admin(["keys", "list", "--keys-dir", &keys]).success()?;
    ensure!(
        listed.stderr.contains("is protected by a passphrase"),
        "{}",
        listed.stderr
    );
    Ok(())
}

#[test]
fn the_keys_passphrase_of_the_environment_reaches_no_child_process() -> Result<()> {
    let seen = tempfile::Builder::new().prefix("hop3-env-").tempdir()?;
    let env_file = seen.path().join("start.env");
    let sys = System::builder()
        .encrypted()
        .controller_env("HOP3_KEYS_PASSPHRASE", "correct horse battery staple")
        .controller_env("HOP3_TEST_MARKER", "inherited")
        .controller_args(["--start-cmd", &format!("env > '{}'", env_file.display())])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "shop", 91, &scratch)?;
    let id = sys.create("shop")?.backup_id;
    sys.restore(&id, None)?;
    // The app's start command, run by the controller's local agent: it gets
    // the controller's environment, but not the passphrase.
    let env = fs::read_to_string(&env_file).context("the start command did not run")?;
    ensure!(env.contains("HOP3_TEST_MARKER=inherited"), "{env}");
    ensure!(
        !env.contains("HOP3_KEYS_PASSPHRASE") && !env.contains("battery staple"),
        "{env}"
    );
    Ok(())
}

/// The key ids `metadata.json` of backup `id` says it is encrypted to.
fn encrypted_to(sys: &System, id: &str) -> Result<Vec<String>> {
    encrypted_to_in(&fs::read(sys.backup_dir("shop", id).join("metadata.json"))?)
}

/// Every artifact `metadata.json` of backup `id` lists, with the digest it records.
fn listed_files(sys: &System, id: &str) -> Result<Vec<(String, String)>> {
    let path = sys.backup_dir("shop", id).join("metadata.json");
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(path)?)?;
    Ok(manifest["checksums"]
        .as_object()
        .context("no checksums")?
        .iter()
        .map(|(p, c)| (p.clone(), c.as_str().unwrap_or_default().to_owned()))
        .collect())
}

#[test]
fn rotation_round_trip_old_and_new_backups_restore_then_retiring_the_old_key_leaves_only_the_new()
-> Result<()> {
    let mut sys = System::builder().encrypted().start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 89, &scratch)?;
    // As real apps hold it: data/ on another volume, a hard link in it, an
    // ENV with comments.
    let volume = sys.scratch("volume")?.join("shop-data");
    fs::rename(app.data_dir(), &volume)?;
    std::os::unix::fs::symlink(&volume, app.data_dir())?;
    fs::hard_link(
        volume.join("db/app.sqlite"),
        volume.join("db/app.sqlite.bak"),
    )?;
    let env = app.dir.join("ENV");
    let commented = format!("# the shop's settings\n{}", fs::read_to_string(&env)?);
    fs::write(&env, commented)?;
    let before = AppState::of(&app, &volume)?;
    let old = sys.create("shop")?.backup_id;
    let keys = sys.keys_dir.display().to_string();
    let rotated = sys
        .admin(["keys", "rotate", "--keys-dir", &keys])
        .success()?;
    ensure!(
        rotated.stdout.trim().starts_with("age1"),
        "{}",
        rotated.stdout
    );
    sys.restart_controller()?;
    app.mutate(&scratch)?;
    let after = AppState::of(&app, &volume)?;
    let new = sys.create("shop")?.backup_id;
    let (old_keys, new_keys) = (encrypted_to(&sys, &old)?, encrypted_to(&sys, &new)?);
    ensure!(
        old_keys.len() == 1 && new_keys.len() == 1 && old_keys != new_keys,
        "{old_keys:?} {new_keys:?}"
    );
    let listed = sys.admin(["keys", "list", "--keys-dir", &keys]).success()?;
    let line = |key: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.starts_with(key))
            .map(str::to_owned)
    };
    ensure!(
        line(&new_keys[0]).is_some_and(|l| l.contains("identity here, opens 1 backups"))
            && line(&old_keys[0])
                .is_some_and(|l| l.contains("not a recipient of new backups, opens 1 backups")),
        "{}",
        listed.stdout
    );
    // Both open with the one identity file, in hop3 and with the age CLI.
    let identity = sys.keys_dir.join("identity.txt");
    for id in [&old, &new] {
        let env = sys.backup_dir("shop", id).join("env.json.age");
        sh(&format!(
            "age -d -i {} {} > /dev/null",
            identity.display(),
            env.display()
        ))?;
    }
    restore_both(&sys, [(&old, &before), (&new, &after)], &app, &volume, "")?;

    // Still a recipient: refused, nothing asked of the controller.
    sys.admin(["keys", "retire", &new_keys[0], "--keys-dir", &keys])
        .failure(&["is a recipient of new backups", "keys rotate"])?;
    let retiring = sys
        .admin(["keys", "retire", &old_keys[0], "--keys-dir", &keys])
        .success()?;
    ensure!(
        retiring.stdout.contains("encrypts its 1 backups again"),
        "{}",
        retiring.stdout
    );
    // The controller works in the background; `keys list` shows when it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let listed = sys.admin(["keys", "list", "--keys-dir", &keys]).success()?;
        let old_line = listed.stdout.lines().find(|l| l.starts_with(&old_keys[0]));
        if old_line.is_some_and(|l| l.contains("opens no backup") && !l.contains("being retired")) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the key was not retired: {}",
            listed.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    ensure!(
        encrypted_to(&sys, &old)? == new_keys,
        "{:?}",
        encrypted_to(&sys, &old)?
    );
    // Only the listed objects are left, each checkable by hand as before.
    let dir = sys.backup_dir("shop", &old);
    let listed = listed_files(&sys, &old)?;
    let mut on_disk: Vec<String> = files_below(&dir)?
        .iter()
        .filter_map(|p| p.strip_prefix(&dir).ok()?.to_str().map(str::to_owned))
        .filter(|p| p.ends_with(".age"))
        .collect();
    on_disk.sort();
    ensure!(
        on_disk == listed.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()
            && on_disk.iter().all(|p| p.starts_with("sealed-2/")),
        "{on_disk:?} {listed:?}"
    );
    for (path, sum) in &listed {
        let got = sh(&format!("sha256sum {}", dir.join(path).display()))?;
        let sum = sum.trim_start_matches("sha256:");
        ensure!(got.starts_with(sum), "{path}: {got} vs {sum}");
    }
    // The old identity opens nothing any more; the new one opens it all.
    let text = fs::read_to_string(&identity)?;
    let secrets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .collect();
    ensure!(secrets.len() == 2, "{text}");
    let old_identity = sys.root.join("old-identity.txt");
    fs::write(&old_identity, format!("{}\n", secrets[1]))?;
    fs::write(&identity, format!("{}\n", secrets[0]))?;
    for f in [&old_identity, &identity] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o600))?;
    }
    for (path, _) in &listed {
        let file = dir.join(path).display().to_string();
        ensure!(
            sh(&format!(
                "age -d -i {} {file} > /dev/null",
                old_identity.display()
            ))
            .is_err(),
            "{path} still opens with the retired identity"
        );
        sh(&format!(
            "age -d -i {} {file} > /dev/null",
            identity.display()
        ))?;
    }
    // With only the new identity, both backups restore.
    sys.restart_controller()?;
    restore_both(
        &sys,
        [(&old, &before), (&new, &after)],
        &app,
        &volume,
        ", encrypted again",
    )
}

/// What a restore of the app with its data on `volume` must bring back.
struct AppState {
    app: Snapshot,
    volume: hop3_tests::snapshot::Tree,
    env: Vec<u8>,
}

impl AppState {
    fn of(app: &App, volume: &Path) -> Result<Self> {
        Ok(Self {
            app: Snapshot::of(&app.dir)?,
            volume: hop3_tests::snapshot::tree(volume)?,
            env: fs::read(app.dir.join("ENV"))?,
        })
    }
}

/// Restores each backup in place (onto the app, its name in use) and
/// checks the app, its linked volume (the link kept, the hard link one
/// file) and its ENV byte for byte.
fn restore_both(
    sys: &System,
    backups: [(&String, &AppState); 2],
    app: &App,
    volume: &Path,
    how: &str,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (id, want) in backups {
        sys.restore(id, None)?;
        let what = format!("backup {id}{how}");
        let got = AppState::of(app, volume)?;
        want.app.assert_same(&got.app, &what)?;
        ensure!(got.volume == want.volume, "{what}: the volume differs");
        ensure!(got.env == want.env, "{what}: ENV differs");
        ensure!(
            fs::read_link(app.data_dir())? == volume,
            "{what}: data/ is no longer the link"
        );
        let ino = |p: &str| fs::metadata(volume.join(p)).map(|m| m.ino());
        ensure!(
            ino("db/app.sqlite")? == ino("db/app.sqlite.bak")?,
            "{what}: the hard link came back as two files"
        );
    }
    Ok(())
}

/// Polls `done` every half second for up to 90 s.
fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done()? {
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: not within 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    Ok(())
}

#[test]
fn retiring_a_key_in_s3_encrypts_backup_and_copy_again_and_the_new_identity_alone_restores()
-> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let pg = PgDb::start("shop")?;
    let vault = tempfile::Builder::new().prefix("hop3-vault-").tempdir()?;
    let vault_url = vault.path().display().to_string();
    let mut sys = on_s3(&moto)
        .encrypted()
        .controller_args(["--copy-to", &vault_url])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 73, &scratch)?;
    // More than a part: the new data archive goes up as a multipart upload.
    app.big_data(12)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let original = Snapshot::of(&app.dir)?;
    let rows = pg.fingerprint()?;
    let id = sys.create("shop")?.backup_id;
    let copy = vault.path().join("apps/shop").join(&id);
    wait_for("the copy", || Ok(copy.join("metadata.json").exists()))?;
    let old_key = encrypted_to_in(&fs::read(copy.join("metadata.json"))?)?;

    let keys = sys.keys_dir.display().to_string();
    sys.admin(["keys", "rotate", "--keys-dir", &keys])
        .success()?;
    sys.restart_controller()?;
    sys.admin(["keys", "retire", &old_key[0], "--keys-dir", &keys])
        .success()?;
    let prefix = format!("prod/apps/shop/{id}/");
    let bucket_manifest = |moto: &Moto| -> Result<Vec<u8>> {
        let down = scratch.join(format!("down-{}", rand_suffix()));
        moto.download_all(BUCKET, &format!("{prefix}metadata.json"), &down)?;
        Ok(fs::read(down.join(&prefix).join("metadata.json"))?)
    };
    wait_for("the retire in the bucket", || {
        Ok(encrypted_to_in(&bucket_manifest(&moto)?)? != old_key)
    })?;
    let new_key = encrypted_to_in(&bucket_manifest(&moto)?)?;
    // Only the new objects are left in the bucket, and no mark.
    let keys_now = moto.keys(BUCKET)?;
    let names: Vec<&str> = keys_now
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix))
        .collect();
    ensure!(
        names
            .iter()
            .all(|n| n.starts_with("sealed-2/") || ["metadata.json", "metadata.seal"].contains(n))
            && names.contains(&"sealed-2/data.tar.zst.age")
            && names
                .iter()
                .any(|n| n.starts_with("sealed-2/services/") && n.ends_with(".age")),
        "{names:?}"
    );
    ensure!(
        keys_now.iter().all(|k| !k.ends_with(".partial")),
        "{keys_now:?}"
    );
    // The copy is brought up to the same backup.
    wait_for("the copy brought up to date", || {
        Ok(fs::read(copy.join("metadata.json"))? == bucket_manifest(&moto)?)
    })?;
    let mut in_copy: Vec<String> = files_below(&copy)?
        .iter()
        .filter_map(|p| p.strip_prefix(&copy).ok()?.to_str().map(str::to_owned))
        .collect();
    in_copy.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    ensure!(in_copy == want, "{in_copy:?} vs {want:?}");

    // The old identity gone: the new one alone restores files and rows.
    let identity = sys.keys_dir.join("identity.txt");
    let text = fs::read_to_string(&identity)?;
    let newest = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .context("no identity")?;
    fs::write(&identity, format!("{newest}\n"))?;
    sys.restart_controller()?;
    app.mutate(&scratch)?;
    pg.script(PG_CHANGES)?;
    sys.restore(&id, None)?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the app after the retire")?;
    same(&rows, &pg.fingerprint()?, "the database after the retire")?;
    ensure!(new_key != old_key, "{new_key:?}");
    Ok(())
}

/// The key ids a `metadata.json` says its backup is encrypted to.
fn encrypted_to_in(manifest: &[u8]) -> Result<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_slice(manifest)?;
    Ok(manifest["encrypted"]["keys"]
        .as_array()
        .context("no encrypted section")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect())
}

/// A short random name part, for scratch directories.
fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[test]
fn a_plain_backup_is_not_imported_into_a_bucket_that_takes_only_encrypted_ones() -> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket(BUCKET)?;
    let plain = System::start()?;
    let scratch = plain.scratch("fixtures")?;
    App::build(&plain.root, "shop", 97, &scratch)?;
    let id = plain.create("shop")?.backup_id;

    let sys = on_s3(&moto).encrypted().start()?;
    let placed = sys.store.join("import").join(&id);
    fs::create_dir_all(sys.store.join("import"))?;
    sh(&format!(
        "cp -a {} {}",
        plain.backup_dir("shop", &id).display(),
        placed.display()
    ))?;
    sys.hop3(["backup:import", placed.to_str().context("path")?])
        .failure(&[
            "the backup is not encrypted",
            "takes only encrypted backups",
        ])?;
    ensure!(
        moto.keys(BUCKET)?.iter().all(|k| !k.contains(&id)),
        "{:?}",
        moto.keys(BUCKET)?
    );
    ensure!(sys.list(&[])?.is_empty());
    Ok(())
}
