//! Apps as hosts really hold them, and operators' ordinary habits: a data
//! directory on another volume, symlinks out of the tree (a venv), hard
//! links, sparse files, ACLs, an ENV with comments, apps owned by their own
//! user, extra files beside the app's parts, and a restore onto a name in
//! use. Every COMPLETED backup restores, and a restore changes only what
//! the backup holds.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use hop3_tests::System;
use hop3_tests::cli::{BackupSummary, RestoreResult};
use hop3_tests::fixtures::{App, MIB, run};
use hop3_tests::harness::LOCAL_HOST_ID;
use hop3_tests::snapshot::{self, Snapshot};
use hop3_tests::tmpfs::Tmpfs;

/// Whether the test runs as root: owners can only be given away by root.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The paths `tar` lists in a stored archive (any codec).
fn archive_listing(archive: &Path) -> Result<Vec<String>> {
    let mut cmd = Command::new("tar");
    cmd.arg("-tvf").arg(archive);
    Ok(run(cmd)?.lines().map(str::to_owned).collect())
}

/// The backup's `data` archive in the store.
fn data_archive(sys: &System, app: &str, id: &str) -> Result<PathBuf> {
    let dir = sys.backup_dir(app, id);
    ["data.tar.zst", "data.tar.gz"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .with_context(|| format!("no data archive in {}", dir.display()))
}

#[test]
fn a_restore_onto_another_existing_app_needs_replace_and_rolls_back() -> Result<()> {
    let flags = tempfile::tempdir()?;
    let log = flags.path().join("hooks.log");
    let fails = flags.path().join("start.fails");
    let start = format!(
        "printf 'start %s\\n' \"$HOP3_APP\" >> '{}'; [ ! -e '{}' ]",
        log.display(),
        fails.display()
    );
    let stop = format!("printf 'stop %s\\n' \"$HOP3_APP\" >> '{}'", log.display());
    let mut sys = System::builder()
        .controller_args(["--stop-cmd", stop.as_str(), "--start-cmd", start.as_str()])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    let shop = App::build(&sys.root, "shop", 21, &scratch)?;
    let blog = App::build(&sys.root, "blog", 22, &scratch)?;
    let id = sys.create("shop")?.backup_id;
    let shop_before = Snapshot::of(&shop.dir)?;
    let blog_before = Snapshot::of(&blog.dir)?;

    let out = sys
        .hop3(["backup:restore", &id, "--target-app", "blog"])
        .failure(&["'blog' already exists", "--replace"])?;
    ensure!(out.status.code() == Some(4), "exit {:?}", out.status.code());
    blog_before.assert_same(&Snapshot::of(&blog.dir)?, "blog after a refused restore")?;
    shop_before.assert_same(&Snapshot::of(&shop.dir)?, "shop after a refused restore")?;
    ensure!(!log.exists(), "a refused restore ran hooks");

    // With --replace, but blog's new version will not start: swapped back.
    fs::write(&fails, "")?;
    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id, "--target-app", "blog", "--replace"])
        .failure(&["start command failed"])?;
    blog_before.assert_same(&Snapshot::of(&blog.dir)?, "blog after a failed replace")?;
    fs::remove_file(&fails)?;

    let out = sys
        .hop3([
            "--json",
            "backup:restore",
            &id,
            "--target-app",
            "blog",
            "--replace",
        ])
        .success()?;
    let restored: RestoreResult = out.json()?;
    ensure!(restored.app == "blog", "{restored:?}");
    let blog_after = Snapshot::of(&blog.dir)?;
    ensure!(
        blog_after.refs == shop_before.refs,
        "blog's git is not shop's"
    );
    ensure!(blog_after.src == shop_before.src && blog_after.data == shop_before.data);
    ensure!(blog_after.env == shop_before.env);
    // Two apps never claim one hostname: blog keeps its own.
    ensure!(
        blog_after.hostname == blog_before.hostname,
        "{:?}",
        blog_after.hostname
    );
    shop_before.assert_same(&Snapshot::of(&shop.dir)?, "shop after replacing blog")?;
    Ok(())
}

#[test]
fn a_data_directory_on_another_volume_is_backed_up_and_restored_there() -> Result<()> {
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "vol", 23, &scratch)?;
    let volume = sys.scratch("volume")?.join("vol-data");
    fs::rename(app.data_dir(), &volume)?;
    symlink(&volume, app.data_dir())?;
    let data_before = snapshot::tree(&volume)?;
    let created = sys.create("vol")?;
    let id = created.backup_id;
    let listing = archive_listing(&data_archive(&sys, "vol", &id)?)?;
    ensure!(
        listing.iter().any(|l| l.ends_with("data/db/app.sqlite")),
        "the data archive does not hold the data:\n{}",
        listing.join("\n")
    );
    ensure!(
        listing
            .iter()
            .all(|l| !l.starts_with('l') || !l.contains(" data -> ")),
        "the data archive holds the bare link"
    );

    // In place: the data goes back into the volume, the link stays.
    fs::write(volume.join("db/app.sqlite"), b"damaged")?;
    fs::remove_file(volume.join("logs/app.log"))?;
    sys.restore(&id, None)?;
    ensure!(
        fs::read_link(app.data_dir())? == volume,
        "the link was replaced"
    );
    same_tree(
        &data_before,
        &snapshot::tree(&volume)?,
        "the volume after a restore",
    )?;

    // A clone gets a directory of its own; the volume is not shared.
    let clone = sys.restore(&id, Some("vol-copy"))?;
    let clone_data = sys.root.join("apps/vol-copy/data");
    ensure!(
        fs::symlink_metadata(&clone_data)?.is_dir(),
        "the clone shares the volume"
    );
    same_tree(
        &data_before,
        &snapshot::tree(&clone_data)?,
        "the clone's data",
    )?;
    ensure!(
        clone
            .notes
            .iter()
            .any(|n| n.contains("directory of its own")),
        "{:?}",
        clone.notes
    );

    // A host where the volume is not there gets a real directory.
    let aside = volume.with_file_name("vol-data.aside");
    fs::rename(&volume, &aside)?;
    let fresh_root = sys.start_agent("fresh")?.root.clone();
    let moved = sys.restore_to(&id, None, Some("fresh"))?;
    let fresh_data = fresh_root.join("apps/vol/data");
    ensure!(fs::symlink_metadata(&fresh_data)?.is_dir());
    same_tree(
        &data_before,
        &snapshot::tree(&fresh_data)?,
        "the data on a fresh host",
    )?;
    ensure!(
        moved
            .notes
            .iter()
            .any(|n| n.contains("restored as a directory in the app")),
        "{:?}",
        moved.notes
    );

    // With the volume gone, a backup would hold none of the data: it fails.
    sys.controller().allow_errors();
    sys.hop3(["backup:create", "vol", "--host", LOCAL_HOST_ID])
        .failure(&["data/ is a link to", "volume mounted"])?;
    // Both made within the same second, perhaps: found by status, not order.
    let rows = sys.list(&["vol"])?;
    ensure!(
        rows.len() == 2
            && rows
                .iter()
                .any(|r| r.status == "FAILED" && r.backup_id != id),
        "{rows:?}"
    );
    ensure!(sys.partials()?.is_empty(), "{:?}", sys.partials()?);
    Ok(())
}

#[test]
fn a_data_directory_that_is_a_mount_point_is_restored_into_it() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "mounted", 36, &scratch)?;
    let mount = sys.scratch("mounts")?.join("mounted-data");
    let Some(_volume) = Tmpfs::mount_at(&mount, 64)? else {
        return Ok(());
    };
    let mut cp = Command::new("cp");
    cp.arg("-a")
        .arg(format!("{}/.", app.data_dir().display()))
        .arg(&mount);
    run(cp)?;
    fs::remove_dir_all(app.data_dir())?;
    symlink(&mount, app.data_dir())?;
    let device = fs::metadata(&mount)?.dev();
    let data_before = snapshot::tree(&mount)?;
    let id = sys.create("mounted")?.backup_id;

    fs::write(mount.join("db/app.sqlite"), b"damaged")?;
    fs::write(mount.join("added-later.txt"), b"not in the backup")?;
    fs::remove_dir_all(mount.join("uploads"))?;
    sys.restore(&id, None)?;
    ensure!(
        fs::read_link(app.data_dir())? == mount,
        "the link was replaced"
    );
    ensure!(
        fs::metadata(&mount)?.dev() == device,
        "the data left its volume"
    );
    // The root of the volume keeps its own mode; everything in it is the backup's.
    let mut after = snapshot::tree(&mount)?;
    let mut before = data_before.clone();
    after.remove("");
    before.remove("");
    same_tree(&before, &after, "the mounted volume after a restore")?;
    Ok(())
}

#[test]
fn symlinks_out_of_the_tree_come_back_exactly() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "venvy", 24, &scratch)?;
    fs::create_dir_all(app.src_dir().join("venv/bin"))?;
    let links: Vec<(PathBuf, PathBuf)> = vec![
        (
            app.src_dir().join("venv/bin/python"),
            "/usr/bin/python3".into(),
        ),
        (app.data_dir().join("shared"), "/srv/hop3-e2e-shared".into()),
        (
            app.data_dir().join("abs-self"),
            app.data_dir().join("db/app.sqlite"),
        ),
        (app.data_dir().join("loop-a"), "loop-b".into()),
        (app.data_dir().join("loop-b"), "loop-a".into()),
        (app.src_dir().join("up"), "../../..".into()),
    ];
    for (at, target) in &links {
        symlink(target, at)?;
    }
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("venvy")?.backup_id;
    for (at, _) in &links {
        fs::remove_file(at)?;
    }
    sys.restore(&id, None)?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the app after its restore")?;
    ensure!(
        !Path::new("/srv/hop3-e2e-shared").exists(),
        "a restore wrote through a link"
    );
    // And into a new name as well.
    sys.restore(&id, Some("venvy-copy"))?;
    let copy = Snapshot::of(&sys.root.join("apps/venvy-copy"))?;
    ensure!(copy.src == original.src && copy.data == original.data);
    Ok(())
}

#[test]
fn an_in_place_restore_keeps_what_the_backup_does_not_hold() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "extras", 25, &scratch)?;
    let id = sys.create("extras")?.backup_id;
    // Made after the backup: a venv, logs, a file of the operator's.
    fs::create_dir_all(app.dir.join("venv/lib"))?;
    fs::write(
        app.dir.join("venv/lib/site.py"),
        b"# installed after the backup\n",
    )?;
    fs::create_dir(app.dir.join("log"))?;
    fs::write(app.dir.join("log/app.log"), b"started\n")?;
    fs::write(app.dir.join("Procfile.local"), b"web: run\n")?;
    app.mutate(&scratch)?;
    sys.restore(&id, None)?;
    for (path, content) in [
        ("venv/lib/site.py", &b"# installed after the backup\n"[..]),
        ("log/app.log", b"started\n"),
        ("Procfile.local", b"web: run\n"),
    ] {
        ensure!(
            fs::read(app.dir.join(path)).ok().as_deref() == Some(content),
            "{path} was not kept"
        );
    }
    Ok(())
}

#[test]
fn owners_and_modes_of_the_app_and_its_files_come_back() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP: only root can give an app to its own user");
        return Ok(());
    }
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "owned", 26, &scratch)?;
    // A user and group every host has by these names (nobody:nogroup), so
    // that a fresh host can give the app to them by name.
    let (uid, gid) = (65534, 65534);
    let mut chown = Command::new("chown");
    chown.arg("-hR").arg(format!("{uid}:{gid}")).arg(&app.dir);
    run(chown)?;
    fs::set_permissions(&app.dir, fs::Permissions::from_mode(0o750))?;
    fs::set_permissions(app.dir.join("ENV"), fs::Permissions::from_mode(0o640))?;
    fs::set_permissions(app.dir.join("app.json"), fs::Permissions::from_mode(0o644))?;
    let owners = |dir: &Path| -> Result<Vec<(String, u32, u32, u32)>> {
        [
            "",
            "ENV",
            "app.json",
            "data",
            "data/db/app.sqlite",
            "git",
            "src",
        ]
        .iter()
        .map(|p| {
            let m = fs::symlink_metadata(dir.join(p))?;
            Ok((p.to_string(), m.mode() & 0o7777, m.uid(), m.gid()))
        })
        .collect()
    };
    let before = owners(&app.dir)?;
    let id = sys.create("owned")?.backup_id;

    // Damage: root-owned, wide open.
    let mut chown = Command::new("chown");
    chown.arg("-hR").arg("0:0").arg(&app.dir);
    run(chown)?;
    fs::set_permissions(app.dir.join("ENV"), fs::Permissions::from_mode(0o600))?;
    fs::set_permissions(&app.dir, fs::Permissions::from_mode(0o777))?;
    sys.restore(&id, None)?;
    ensure!(
        owners(&app.dir)? == before,
        "in place: {:?}\nwas {before:?}",
        owners(&app.dir)?
    );

    // On a fresh host the app directory is made as it was.
    let fresh = sys.start_agent("fresh")?.root.clone();
    sys.restore_to(&id, None, Some("fresh"))?;
    let moved = owners(&fresh.join("apps/owned"))?;
    ensure!(moved == before, "fresh host: {moved:?}\nwas {before:?}");
    Ok(())
}

#[test]
fn env_comes_back_byte_for_byte_and_env_json_reads_it_as_a_shell_would() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "envy", 27, &scratch)?;
    let env = "# Production settings\n\
               export DATABASE_URL=postgresql://app:pw@127.0.0.1:5432/envy\n\
               \n\
               CERT=\"-----BEGIN-----\nabc\n-----END-----\"\n\
               DEBUG=false\n\
               LINE_WITHOUT_EQUALS\n\
               DUP=1\n\
               DUP=2\n\
               # trailing comment\n";
    fs::write(app.dir.join("ENV"), env)?;
    let id = sys.create("envy")?.backup_id;
    let env_json: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(sys.backup_dir("envy", &id).join("env.json"))?)?;
    let expected: BTreeMap<String, String> = [
        ("DATABASE_URL", "postgresql://app:pw@127.0.0.1:5432/envy"),
        ("CERT", "-----BEGIN-----\nabc\n-----END-----"),
        ("DEBUG", "false"),
        ("DUP", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    ensure!(env_json == expected, "env.json: {env_json:?}");
    ensure!(sys.info(&id)?.env_vars_count == 4);

    fs::write(app.dir.join("ENV"), "DEBUG=true\n")?;
    sys.restore(&id, None)?;
    ensure!(
        fs::read_to_string(app.dir.join("ENV"))? == env,
        "ENV was rewritten:\n{}",
        fs::read_to_string(app.dir.join("ENV"))?
    );
    Ok(())
}

#[test]
fn a_sparse_file_restores_sparse_onto_a_host_smaller_than_it() -> Result<()> {
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "disk", 28, &scratch)?;
    // A 2 GiB disk image holding 2 MiB.
    let image = app.data_dir().join("vm.img");
    let file = fs::File::create(&image)?;
    file.set_len(2048 * MIB)?;
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0x5au8; 2 * MIB as usize], 1024 * MIB)?;
    drop(file);
    let digest = snapshot::sha256_file(&image)?;
    let id = sys.create("disk")?.backup_id;
    let stored = fs::metadata(data_archive(&sys, "disk", &id)?)?.len();
    ensure!(stored < 64 * MIB, "the holes were stored: {stored} bytes");

    // A host with 256 MiB: the image fits only as a sparse file.
    let root = sys.agent_root("small")?;
    let Some(_disk) = Tmpfs::mount_at(&root.join("apps"), 256)? else {
        return Ok(());
    };
    sys.start_agent("small")?;
    sys.restore_to(&id, None, Some("small"))?;
    let restored = root.join("apps/disk/data/vm.img");
    let meta = fs::metadata(&restored)?;
    ensure!(meta.len() == 2048 * MIB, "size {}", meta.len());
    ensure!(
        meta.blocks() * 512 < 64 * MIB,
        "restored with {} bytes of real blocks",
        meta.blocks() * 512
    );
    ensure!(
        snapshot::sha256_file(&restored)? == digest,
        "the image's bytes differ"
    );
    Ok(())
}

#[test]
fn acls_and_extended_attributes_come_back() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "acl", 29, &scratch)?;
    let file = app.data_dir().join("secrets/key.pem");
    let dir = app.data_dir().join("uploads");
    let setfacl = |args: &[&str], path: &Path| -> Result<()> {
        let mut cmd = Command::new("setfacl");
        cmd.args(args).arg(path);
        run(cmd).map(drop)
    };
    // A named user with rights, a mask narrower than them, a default ACL.
    setfacl(&["-m", "u:4242:rwx,g::r--,m::r--"], &file)?;
    setfacl(&["-d", "-m", "g:4343:r-x"], &dir)?;
    let mut setfattr = Command::new("setfattr");
    setfattr
        .args(["-n", "user.origin", "-v", "camera-7"])
        .arg(&file);
    run(setfattr)?;
    let acls = |app_dir: &Path| -> Result<String> {
        let mut cmd = Command::new("getfacl");
        cmd.arg("-p")
            .arg(app_dir.join("data/secrets/key.pem"))
            .arg(app_dir.join("data/uploads"));
        let text = run(cmd)?;
        Ok(text.replace(&app_dir.display().to_string(), "APP"))
    };
    let xattr = |path: &Path| -> Result<String> {
        let mut cmd = Command::new("getfattr");
        cmd.args(["--only-values", "-n", "user.origin"]).arg(path);
        run(cmd)
    };
    let acl_before = acls(&app.dir)?;
    ensure!(acl_before.contains("user:4242:rwx"), "{acl_before}");
    let id = sys.create("acl")?.backup_id;

    setfacl(&["-b"], &file)?;
    setfacl(&["-k"], &dir)?;
    sys.restore(&id, None)?;
    let acl_after = acls(&app.dir)?;
    ensure!(
        acl_after == acl_before,
        "ACLs:\n{acl_after}\nwere:\n{acl_before}"
    );
    ensure!(
        xattr(&file)? == "camera-7",
        "user.origin: {:?}",
        xattr(&file)?
    );
    Ok(())
}

#[test]
fn hard_links_and_fifos_come_back_and_sockets_are_listed_as_skipped() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "links", 30, &scratch)?;
    let d = app.data_dir();
    fs::hard_link(d.join("db/app.sqlite"), d.join("db/app.sqlite.bak"))?;
    let mut mkfifo = Command::new("mkfifo");
    mkfifo.arg("-m").arg("0640").arg(d.join("queue"));
    run(mkfifo)?;
    fs::create_dir(d.join("run"))?;
    let _socket = std::os::unix::net::UnixListener::bind(d.join("run/app.sock"))?;

    let out = sys.hop3(["--json", "backup:create", "links"]).success()?;
    let created: BackupSummary = out.json()?;
    ensure!(created.status == "COMPLETED", "{created:?}");
    ensure!(
        created.skipped.len() == 1
            && created.skipped[0].path == "data/run/app.sock"
            && created.skipped[0].reason.contains("socket"),
        "{:?}",
        created.skipped
    );
    let info = sys.info(&created.backup_id)?;
    ensure!(info.skipped == created.skipped, "{:?}", info.skipped);
    let human = sys.hop3(["backup:info", &created.backup_id]).success()?;
    ensure!(
        human.stdout.contains("Not in the backup") && human.stdout.contains("data/run/app.sock"),
        "{}",
        human.stdout
    );

    fs::remove_file(d.join("db/app.sqlite.bak"))?;
    fs::remove_file(d.join("queue"))?;
    sys.restore(&created.backup_id, None)?;
    let a = fs::metadata(d.join("db/app.sqlite"))?;
    let b = fs::metadata(d.join("db/app.sqlite.bak"))?;
    ensure!(
        a.ino() == b.ino() && a.nlink() == 2,
        "the hard link came back as a copy"
    );
    let queue = fs::symlink_metadata(d.join("queue"))?;
    ensure!(std::os::unix::fs::FileTypeExt::is_fifo(&queue.file_type()));
    ensure!(queue.mode() & 0o777 == 0o640);
    Ok(())
}

/// Creates `depth` directories of `name` under `root` and a file at the
/// bottom, through directory handles (the path is longer than PATH_MAX).
fn deep_tree(root: &Path, name: &str, depth: usize, content: &[u8]) -> Result<()> {
    use rustix::fs::{Mode, OFlags, openat};
    let mut fd = openat(rustix::fs::CWD, root, OFlags::DIRECTORY, Mode::empty())?;
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755))?;
        fd = openat(
            &fd,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
    }
    let file = openat(
        &fd,
        "leaf.txt",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )?;
    rustix::io::write(&file, content)?;
    Ok(())
}

/// The content of the file `deep_tree` made, or None.
fn read_deep(root: &Path, name: &str, depth: usize) -> Result<Option<Vec<u8>>> {
    use rustix::fs::{Mode, OFlags, openat};
    let mut fd = openat(rustix::fs::CWD, root, OFlags::DIRECTORY, Mode::empty())?;
    for _ in 0..depth {
        fd = match openat(
            &fd,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => bail!("opening a deep directory: {e}"),
        };
    }
    let file = openat(&fd, "leaf.txt", OFlags::RDONLY, Mode::empty())?;
    let mut buf = vec![0u8; 4096];
    let n = rustix::io::read(&file, &mut buf)?;
    buf.truncate(n);
    Ok(Some(buf))
}

#[test]
fn paths_longer_than_path_max_are_backed_up_and_restored() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "deep", 31, &scratch)?;
    let name = "n".repeat(240);
    // 20 levels of 240 bytes: about 4,800 bytes below data/.
    deep_tree(&app.data_dir(), &name, 20, b"at the bottom")?;
    let id = sys.create("deep")?.backup_id;
    let mut rm = Command::new("rm");
    rm.arg("-rf").arg(app.data_dir().join(&name));
    run(rm)?;
    ensure!(read_deep(&app.data_dir(), &name, 20)?.is_none());
    sys.restore(&id, None)?;
    ensure!(
        read_deep(&app.data_dir(), &name, 20)?.as_deref() == Some(&b"at the bottom"[..]),
        "the deep file did not come back"
    );
    Ok(())
}

#[test]
fn a_broken_app_json_or_an_agent_bug_gets_a_clear_error() -> Result<()> {
    let mut sys = System::builder()
        .controller_env("HOP3_FAILPOINTS", "backup:buggy")
        .start()?;
    sys.controller().allow_errors();
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "dupes", 32, &scratch)?;
    app.set_services(&[
        ("postgres", "db", "postgresql://u:p@127.0.0.1:1/a"),
        ("redis", "db", "redis://127.0.0.1:1/0"),
    ])?;
    let out = sys
        .hop3(["backup:create", "dupes"])
        .failure(&["two services are named \"db\""])?;
    ensure!(out.status.code() == Some(4), "exit {:?}", out.status.code());

    // A bug in the agent is reported as one, not as a lost agent.
    App::build(&sys.root, "buggy", 34, &scratch)?;
    let out = sys
        .hop3(["backup:create", "buggy"])
        .failure(&["internal error"])?;
    ensure!(!out.stderr.contains("lost the agent"), "{}", out.stderr);
    let rows = sys.list(&["buggy"])?;
    ensure!(rows.len() == 1 && rows[0].status == "FAILED", "{rows:?}");
    // The agent still serves.
    app.set_services(&[])?;
    sys.create("dupes")?;
    Ok(())
}

#[test]
fn a_clone_gets_no_hostname_unless_given_one() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "site", 33, &scratch)?;
    let source_host = app.app_json()?["hostname"].clone();
    let id = sys.create("site")?.backup_id;

    let out = sys
        .hop3(["backup:restore", &id, "--target-app", "site-copy"])
        .success()?;
    ensure!(
        out.stdout.contains("hostname: none") && out.stdout.contains("--hostname"),
        "{}",
        out.stdout
    );
    let clone = App::existing(&sys.root, "site-copy");
    ensure!(
        clone.app_json()?["hostname"].is_null(),
        "{}",
        clone.app_json()?
    );
    ensure!(app.app_json()?["hostname"] == source_host);

    let given: RestoreResult = sys
        .hop3([
            "--json",
            "backup:restore",
            &id,
            "--target-app",
            "site-two",
            "--hostname",
            "two.example.com",
        ])
        .success()?
        .json()?;
    ensure!(given.hostname == "two.example.com", "{given:?}");
    let two = App::existing(&sys.root, "site-two");
    ensure!(two.app_json()?["hostname"] == "two.example.com");
    Ok(())
}

#[test]
fn an_agent_killed_halfway_through_a_swap_puts_the_app_back_when_it_starts() -> Result<()> {
    let mut sys = System::builder().local_agent(false).hooks().start()?;
    let scratch = sys.scratch("fixtures")?;
    let root = sys.agent_root("crashy")?;
    let app = App::build(&root, "shop", 35, &scratch)?;
    let failpoint = [("HOP3_FAILPOINTS", "restore-swapped:shop=abort")];
    sys.start_agent_env("crashy", &[], &failpoint)?;
    let id = sys.create("shop")?.backup_id;
    app.mutate(&scratch)?;
    fs::write(app.dir.join("venv-marker"), b"kept")?;
    let before = Snapshot::of(&app.dir)?;

    sys.controller().allow_errors();
    sys.hop3(["backup:restore", &id])
        .failure(&["lost the agent"])?;
    // It died with git/ swapped and the rest not: the app is a mix now.
    ensure!(
        Snapshot::of(&app.dir)? != before,
        "the failpoint did not stop the restore halfway"
    );
    // Without the failpoint; with the join token, as the harness gives it.
    let env = sys.agent_env();
    let agent = sys.agent("crashy");
    agent.process.allow_errors();
    agent.process.set_env(env);
    agent.process.restart()?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app once its agent is back")?;
    let leftovers: Vec<_> = fs::read_dir(root.join("apps"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(leftovers == ["shop"], "apps/ holds {leftovers:?}");
    ensure!(
        sys.hook_calls()?.last().map(String::as_str) == Some("start shop"),
        "the app was not started again: {:?}",
        sys.hook_calls()?
    );
    // And the backup restores whole.
    let restored = Snapshot::of(&app.dir)?;
    sys.restore(&id, None)?;
    ensure!(Snapshot::of(&app.dir)? != restored, "nothing was restored");
    Ok(())
}

/// Fails with the differences unless two trees are equal.
fn same_tree(expected: &snapshot::Tree, actual: &snapshot::Tree, what: &str) -> Result<()> {
    if expected != actual {
        let mut diff = Vec::new();
        for (k, v) in expected {
            match actual.get(k) {
                None => diff.push(format!("- {k}: {v}")),
                Some(a) if a != v => diff.push(format!("~ {k}: {v} => {a}")),
                _ => {}
            }
        }
        for (k, v) in actual {
            if !expected.contains_key(k) {
                diff.push(format!("+ {k}: {v}"));
            }
        }
        bail!("{what} differs:\n{}", diff.join("\n"));
    }
    Ok(())
}
