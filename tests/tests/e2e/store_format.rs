//! Scenario 3: the store holds what the user guide promises, checkable by
//! hand with `tar`, `sha256sum` and `cat`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use hop3_proto::Manifest;
use hop3_tests::System;
use hop3_tests::fixtures::{App, run};
use hop3_tests::harness::list_dir;
use hop3_tests::snapshot::{self, Snapshot};

/// The artifacts of a backup of an app without services.
const ARTIFACTS: &[&str] = &["data.tar.zst", "env.json", "source.tar.zst"];

/// `tar --zstd -tf`, names printed as they are (not escaped).
fn tar_list(archive: &Path) -> Result<Vec<String>> {
    let mut cmd = Command::new("tar");
    cmd.arg("--quoting-style=literal")
        .arg("--zstd")
        .arg("-tf")
        .arg(archive);
    Ok(run(cmd)?
        .lines()
        .map(|l| l.strip_prefix("./").unwrap_or(l).to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// True when the archive entry `entry` is the directory `top` or under it
/// (directory entries may be stored with or without a trailing slash).
fn within(entry: &str, top: &str) -> bool {
    entry
        .strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `sha256sum FILE`, the hex digest.
fn sha256sum(file: &Path) -> Result<String> {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(file);
    let out = run(cmd)?;
    Ok(out
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

#[test]
fn the_store_holds_plain_archives_a_user_can_check_by_hand() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "wiki", 3, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("wiki")?.backup_id;
    let dir = sys.backup_dir("wiki", &id);

    // What the guide lists must be there. Anything more must be a file the
    // manifest checksums (checked below), or an empty services/.
    let files = files_under(&dir)?;
    for needed in ARTIFACTS.iter().chain(&["metadata.json"]) {
        ensure!(
            files.contains(*needed),
            "backup directory lacks {needed}: {files:?}"
        );
    }

    // metadata.json: the contract crate reads it, and it says what is there.
    let manifest = Manifest::from_json(&fs::read(dir.join("metadata.json"))?)
        .context("metadata.json does not parse")?;
    ensure!(manifest.backup_id == id && manifest.app_name == "wiki");
    ensure!(
        manifest.format_version == "1.1",
        "{}",
        manifest.format_version
    );
    ensure!(manifest.app_metadata.hostname == original.hostname);
    ensure!(manifest.app_metadata.port.map(u64::from) == original.port);
    ensure!(
        manifest.env_vars_count as usize == original.env.len(),
        "env_vars_count {} for {} variables",
        manifest.env_vars_count,
        original.env.len()
    );
    ensure!(manifest.services.is_empty() && manifest.services_included);
    let listed: BTreeSet<String> = manifest.checksums.keys().cloned().collect();
    let mut unlisted = files.clone();
    unlisted.remove("metadata.json");
    // The controller's seal over metadata.json (see the README's security section).
    ensure!(
        unlisted.remove("metadata.seal"),
        "a created backup carries no seal: {files:?}"
    );
    ensure!(
        listed == unlisted,
        "metadata.json checksums {listed:?}, the directory holds {unlisted:?}"
    );
    let mut total = 0;
    for (path, checksum) in &manifest.checksums {
        let file = dir.join(path);
        let by_hand = format!("sha256:{}", sha256sum(&file)?);
        ensure!(
            checksum.to_string() == by_hand,
            "{path}: metadata.json says {checksum}, sha256sum says {by_hand}"
        );
        total += fs::metadata(&file)?.len();
    }
    ensure!(
        manifest.size_bytes == total,
        "size_bytes {} but the files hold {total}",
        manifest.size_bytes
    );

    // tar --zstd -tf: git/ and src/ in source.tar.zst, data/ in data.tar.zst.
    let source = tar_list(&dir.join("source.tar.zst"))?;
    if let Some(stray) = source
        .iter()
        .find(|e| !["git", "src"].iter().any(|top| within(e, top)))
    {
        bail!("source.tar.zst holds {stray:?}, outside git/ and src/");
    }
    for needed in ["git/HEAD", "src/README.md", "src/docs/getting started.md"] {
        ensure!(
            source.iter().any(|e| e == needed),
            "source.tar.zst lacks {needed}"
        );
    }
    let data = tar_list(&dir.join("data.tar.zst"))?;
    if let Some(stray) = data.iter().find(|e| !within(e, "data")) {
        bail!("data.tar.zst holds {stray:?}, outside data/");
    }
    for needed in [
        "data/db/app.sqlite",
        "data/données/résumé.txt",
        "data/日本語.bin",
        "data/with space/file name.bin",
        "data/dangling",
        "data/zero.bin",
    ] {
        ensure!(
            data.iter().any(|e| e == needed),
            "data.tar.zst lacks {needed}"
        );
    }
    ensure!(
        data.iter()
            .any(|e| e.trim_end_matches('/') == "data/empty/nested/deeper"),
        "data.tar.zst lacks the empty directory data/empty/nested/deeper"
    );

    // Extracted by hand, the archives give back the app.
    let by_hand = sys.scratch("by-hand")?;
    for archive in ["source.tar.zst", "data.tar.zst"] {
        let mut cmd = Command::new("tar");
        cmd.arg("--zstd")
            .arg("-xpf")
            .arg(dir.join(archive))
            .arg("-C")
            .arg(&by_hand);
        run(cmd)?;
    }
    let (head, refs, commits) = snapshot::git_state(&by_hand.join("git"))?;
    ensure!(head == original.head && refs == original.refs && commits == original.commits);
    snapshot::fsck(&by_hand.join("git"))?;
    let mut extracted = original.clone();
    extracted.src = snapshot::tree(&by_hand.join("src"))?;
    extracted.data = snapshot::tree(&by_hand.join("data"))?;
    original.assert_same(&extracted, "the archives extracted with tar")?;

    let env: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(dir.join("env.json"))?).context("env.json")?;
    ensure!(
        env == original.env,
        "env.json {env:?} is not ENV {:?}",
        original.env
    );

    // Files 0600, directories 0700, from the app's directory in the store down.
    check_modes(&sys.store.join("apps").join("wiki"))?;
    let partials = sys.partials()?;
    ensure!(partials.is_empty(), "left behind: {partials:?}");
    Ok(())
}

/// Every file under `dir`, by path relative to it (`services/x.sql`).
fn files_under(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for name in list_dir(dir)? {
        let path = dir.join(&name);
        if fs::symlink_metadata(&path)?.is_dir() {
            for inner in files_under(&path)? {
                out.insert(format!("{name}/{inner}"));
            }
        } else {
            out.insert(name);
        }
    }
    Ok(out)
}

fn check_modes(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        ensure!(
            mode == 0o700,
            "{} is a directory with mode {mode:04o}",
            path.display()
        );
        for name in list_dir(path)? {
            check_modes(&path.join(name))?;
        }
    } else {
        ensure!(
            meta.is_file() && mode == 0o600,
            "{} has mode {mode:04o} ({:?})",
            path.display(),
            meta.file_type()
        );
    }
    Ok(())
}
