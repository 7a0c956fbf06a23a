//! Real apps on a host's disk, built the way Hop3 lays them out
//! (`$ROOT/apps/<app>/{git,src,data,ENV,app.json}`), with the real `git`
//! and deterministic content: the same seed gives the same bytes, the same
//! commits and the same object IDs.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// 1 MiB.
pub const MIB: u64 = 1024 * 1024;

/// Size of the blocks [`App::big_data`] writes.
const BLOCK: usize = 8 * MIB as usize;

/// Size of each file [`App::big_data`] makes: several files rather than one,
/// as real data directories have.
const BIG_FILE: u64 = 32 * MIB;

/// Runs `git` with a clean configuration (no system or user config, fixed
/// identity), in `dir`, and returns its stdout. `date` is the author and
/// committer time in seconds since the epoch.
pub fn git_at(dir: &Path, date: i64, args: &[&str]) -> Result<String> {
    let mut cmd = git_command(dir);
    let stamp = format!("@{date} +0000");
    cmd.env("GIT_AUTHOR_DATE", &stamp)
        .env("GIT_COMMITTER_DATE", &stamp)
        .args(args);
    run(cmd)
}

/// Runs `git` in `dir` (a work tree, or a bare repository) like [`git_at`],
/// for commands that record no time.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = git_command(dir);
    cmd.args(args);
    run(cmd)
}

fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Hop3 Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@hop3.example")
        .arg("-c")
        .arg("init.defaultBranch=main")
        .arg("-c")
        .arg("core.quotepath=false")
        // A deployed tree as a umask of 022 leaves it, not git archive's 002.
        .arg("-c")
        .arg("tar.umask=022")
        .arg("-C")
        .arg(dir);
    cmd
}

/// Runs `cmd`, failing with its stderr unless it exits 0; returns stdout.
pub fn run(mut cmd: Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}\n{}{}",
            crate::cli::describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A work repository that commits with a clock of its own: each commit one
/// hour after the previous one, so that history is reproducible.
struct WorkRepo {
    dir: PathBuf,
    clock: i64,
}

impl WorkRepo {
    fn init(dir: &Path, clock: i64) -> Result<Self> {
        fs::create_dir_all(dir)?;
        git(dir, &["init", "-q"])?;
        Ok(Self {
            dir: dir.to_owned(),
            clock,
        })
    }

    fn clone_of(bare: &Path, dir: &Path, clock: i64) -> Result<Self> {
        let parent = dir.parent().context("a clone needs a parent directory")?;
        let (bare_s, dir_s) = (bare.to_string_lossy(), dir.to_string_lossy());
        git(parent, &["clone", "-q", &bare_s, &dir_s])?;
        Ok(Self {
            dir: dir.to_owned(),
            clock,
        })
    }

    fn tick(&mut self) -> i64 {
        self.clock += 3600;
        self.clock
    }

    fn git(&mut self, args: &[&str]) -> Result<String> {
        let date = self.tick();
        git_at(&self.dir, date, args)
    }

    /// Writes `files` (path, content) and commits them all.
    fn commit(&mut self, files: &[(&str, &[u8])], message: &str) -> Result<()> {
        for (path, content) in files {
            let path = self.dir.join(path);
            fs::create_dir_all(path.parent().expect("files live in the repo"))?;
            fs::write(&path, content)?;
        }
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        Ok(())
    }
}

/// Text lines from `rng`, so that each commit changes something real.
fn text(rng: &mut SmallRng, lines: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup", "restore", "app", "deploy", "git", "data", "hop3", "server", "tar", "gzip",
        "agent", "store",
    ];
    let mut out = String::new();
    for _ in 0..lines {
        let n = rng.random_range(3..10);
        let line: Vec<&str> = (0..n)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        out.push_str(&line.join(" "));
        out.push('\n');
    }
    out.into_bytes()
}

/// `len` bytes from `rng`: incompressible.
fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    buf
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Creates `path`'s parents (0755) and writes `content` with `mode`.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let parent = path.parent().expect("files have a parent");
    mkdirs(parent)?;
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

/// `mkdir -p` with every directory 0755 whatever the umask.
fn mkdirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdirs(parent)?;
    }
    fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    set_mode(dir, 0o755)
}

/// An app on a host, as an agent serves it.
#[derive(Clone, Debug)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// `$ROOT/apps/<name>`.
    pub dir: PathBuf,
    seed: u64,
}

impl App {
    /// Builds the app `name` under `root/apps/` from `seed`: a git history
    /// of 31 commits over 3 branches with a merge and tags, its deployed
    /// tree, a data directory of every kind of entry (about 4.5 MiB), an
    /// `ENV` and an `app.json`. `scratch` holds the work repository.
    pub fn build(root: &Path, name: &str, seed: u64, scratch: &Path) -> Result<App> {
        let dir = root.join("apps").join(name);
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        mkdirs(&dir)?;
        let app = App {
            name: name.to_owned(),
            dir,
            seed,
        };
        let work = scratch.join(format!("{name}-work"));
        app.build_git(&work)?;
        app.build_data()?;
        app.write_env(&default_env(seed))?;
        app.write_app_json(&format!("{name}.example.com"), 8000 + (seed % 1000) as u32)?;
        Ok(app)
    }

    /// An app already on disk at `root/apps/<name>` (a clone made by a
    /// restore, say), to change it with the methods below.
    pub fn existing(root: &Path, name: &str) -> App {
        App {
            name: name.to_owned(),
            dir: root.join("apps").join(name),
            seed: 0,
        }
    }

    /// `git/`, the bare repository.
    pub fn git_dir(&self) -> PathBuf {
        self.dir.join("git")
    }

    /// `src/`, the deployed tree.
    pub fn src_dir(&self) -> PathBuf {
        self.dir.join("src")
    }

    /// `data/`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn build_git(&self, work: &Path) -> Result<()> {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        // 2024-01-01T00:00:00Z plus the seed in days: apps differ, runs do not.
        let mut repo = WorkRepo::init(work, 1_704_067_200 + self.seed as i64 * 86_400)?;

        // main: 12 commits, among them names with a space and with unicode,
        // and an executable script.
        repo.commit(
            &[
                ("README.md", format!("# {}\n", self.name).as_bytes()),
                ("bin/run.sh", b"#!/bin/sh\nexec python3 app.py\n"),
            ],
            "Initial commit",
        )?;
        set_mode(&work.join("bin/run.sh"), 0o755)?;
        repo.git(&["add", "-A"])?;
        repo.git(&["commit", "-q", "-m", "Make run.sh executable"])?;
        for i in 3..=12 {
            let body = text(&mut rng, 20);
            let files: Vec<(String, Vec<u8>)> = match i {
                4 => vec![("docs/getting started.md".into(), body)],
                5 => vec![("docs/café-naïve-日本.md".into(), body)],
                _ => vec![(format!("app/module_{i}.py"), body)],
            };
            let refs: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_slice()))
                .collect();
            repo.commit(&refs, &format!("main: step {i}"))?;
            if i == 6 {
                // A lightweight tag, and the branch point of the feature.
                repo.git(&["tag", "v0.9"])?;
                repo.git(&["branch", "feature/login"])?;
            }
            if i == 10 {
                repo.git(&["branch", "release-1.x"])?;
            }
        }

        // feature/login: 8 commits, merged back with a merge commit.
        repo.git(&["checkout", "-q", "feature/login"])?;
        for i in 1..=8 {
            let body = text(&mut rng, 10);
            repo.commit(
                &[(&format!("app/login_{i}.py"), &body)],
                &format!("login: step {i}"),
            )?;
        }
        repo.git(&["checkout", "-q", "main"])?;
        repo.git(&[
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge feature/login",
            "feature/login",
        ])?;
        repo.git(&["tag", "-a", "v1.0", "-m", "Version 1.0"])?;

        // release-1.x: 6 commits, never merged, with an annotated tag.
        repo.git(&["checkout", "-q", "release-1.x"])?;
        for i in 1..=6 {
            let body = text(&mut rng, 10);
            repo.commit(
                &[(&format!("app/fix_{i}.py"), &body)],
                &format!("release: fix {i}"),
            )?;
        }
        repo.git(&["tag", "-a", "v0.9.1", "-m", "Maintenance release"])?;

        // main: 4 more commits after the merge.
        repo.git(&["checkout", "-q", "main"])?;
        for i in 13..=16 {
            let body = text(&mut rng, 20);
            repo.commit(
                &[(&format!("app/module_{i}.py"), &body)],
                &format!("main: step {i}"),
            )?;
        }

        let bare = self.git_dir();
        mkdirs(&bare)?;
        git(&bare, &["init", "-q", "--bare"])?;
        let bare_s = bare.to_string_lossy();
        git(work, &["push", "-q", "--mirror", &bare_s])?;

        // src/: the deployed tree, main without .git.
        let tar = work.with_extension("tar");
        let tar_s = tar.to_string_lossy();
        git(work, &["archive", "--format=tar", "-o", &tar_s, "main"])?;
        mkdirs(&self.src_dir())?;
        let mut untar = Command::new("tar");
        untar.arg("-xf").arg(&tar).arg("-C").arg(self.src_dir());
        run(untar)?;
        fs::remove_file(&tar)?;
        Ok(())
    }

    fn build_data(&self) -> Result<()> {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ 0xda7a);
        let d = self.data_dir();
        mkdirs(&d)?;
        let files: &[(&str, usize, u32)] = &[
            ("uploads/2024/01/photo-001.jpg", 200 * 1024, 0o644),
            ("uploads/2024/01/photo-002.jpg", 48 * 1024, 0o644),
            ("uploads/2024/02/photo-003.bin", MIB as usize, 0o644),
            ("db/app.sqlite", 3 * MIB as usize, 0o644),
            ("secrets/key.pem", 4 * 1024, 0o600),
            ("with space/file name.bin", 10 * 1024, 0o644),
            ("日本語.bin", 64 * 1024, 0o644),
        ];
        for (path, len, mode) in files {
            write_file(&d.join(path), &random_bytes(&mut rng, *len), *mode)?;
        }
        write_file(&d.join("logs/app.log"), &text(&mut rng, 2000), 0o644)?;
        write_file(
            &d.join("données/résumé.txt"),
            "Résumé : données de l'app\n".as_bytes(),
            0o644,
        )?;
        write_file(&d.join("bin/tool.sh"), b"#!/bin/sh\necho tool\n", 0o755)?;
        write_file(&d.join("zero.bin"), b"", 0o644)?;
        set_mode(&d.join("secrets"), 0o700)?;
        // Empty directories, one of them nested in another empty one.
        mkdirs(&d.join("cache"))?;
        mkdirs(&d.join("empty/nested/deeper"))?;
        // A relative link to a directory, one to a file, one to nothing.
        symlink("uploads/2024/01", d.join("current"))?;
        symlink("../db/app.sqlite", d.join("bin/db-link"))?;
        symlink("does/not/exist", d.join("dangling"))?;
        Ok(())
    }

    /// Adds about `mib` MiB of incompressible data under `data/big/`, in
    /// files of 32 MiB, written in 8 MiB blocks from a seeded PRNG.
    pub fn big_data(&self, mib: u64) -> Result<()> {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ 0xb16);
        let dir = self.data_dir().join("big");
        mkdirs(&dir)?;
        let mut block = vec![0u8; BLOCK];
        let mut left = mib * MIB;
        let mut n = 0;
        while left > 0 {
            let path = dir.join(format!("blob-{n:03}.bin"));
            let mut file = File::create(&path)?;
            let mut in_file = left.min(BIG_FILE);
            left -= in_file;
            while in_file > 0 {
                let len = in_file.min(BLOCK as u64) as usize;
                rng.fill_bytes(&mut block[..len]);
                file.write_all(&block[..len])?;
                in_file -= len as u64;
            }
            set_mode(&path, 0o644)?;
            n += 1;
        }
        Ok(())
    }

    /// Writes `ENV`, one `KEY=VALUE` per line.
    pub fn write_env(&self, env: &BTreeMap<String, String>) -> Result<()> {
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        write_file(&self.dir.join("ENV"), text.as_bytes(), 0o600)
    }

    /// Writes `app.json` with no services.
    pub fn write_app_json(&self, hostname: &str, port: u32) -> Result<()> {
        let json = serde_json::json!({
            "hostname": hostname,
            "port": port,
            "run_state": "RUNNING",
            "services": [],
        });
        let text = serde_json::to_string_pretty(&json)? + "\n";
        write_file(&self.dir.join("app.json"), text.as_bytes(), 0o644)
    }

    /// Sets the `services` of `app.json`: `(type, name, url)` each.
    pub fn set_services(&self, services: &[(&str, &str, &str)]) -> Result<()> {
        let mut json = self.app_json()?;
        json["services"] = services
            .iter()
            .map(|(kind, name, url)| serde_json::json!({"type": kind, "name": name, "url": url}))
            .collect();
        let text = serde_json::to_string_pretty(&json)? + "\n";
        write_file(&self.dir.join("app.json"), text.as_bytes(), 0o644)
    }

    /// The parsed `app.json`.
    pub fn app_json(&self) -> Result<serde_json::Value> {
        let text = fs::read_to_string(self.dir.join("app.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Commits `files` on `branch` of the bare repository (creating the
    /// branch from main if it does not exist) and pushes, through a clone in
    /// `scratch`.
    pub fn commit_to(
        &self,
        scratch: &Path,
        branch: &str,
        files: &[(&str, &[u8])],
        message: &str,
    ) -> Result<()> {
        let dir = tempfile::tempdir_in(scratch)?;
        // A clock far from build()'s, so these commits are new objects.
        let mut repo = WorkRepo::clone_of(
            &self.git_dir(),
            &dir.path().join("clone"),
            1_800_000_000 + self.seed as i64 * 86_400,
        )?;
        let remote = format!("refs/remotes/origin/{branch}");
        let exists = repo
            .git(&["rev-parse", "--verify", "--quiet", &remote])
            .is_ok();
        if exists {
            repo.git(&["checkout", "-q", branch])?;
        } else {
            repo.git(&["checkout", "-q", "-b", branch, "origin/main"])?;
        }
        repo.commit(files, message)?;
        repo.git(&["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")])?;
        Ok(())
    }

    /// Changes every part of the app a restore must bring back: data files
    /// modified, deleted and added, a mode and a link changed, an empty
    /// directory removed, src/ edited, a commit on main, a new branch and a
    /// deleted tag in git, ENV edited, hostname and port changed.
    pub fn mutate(&self, scratch: &Path) -> Result<()> {
        let d = self.data_dir();
        overwrite_in_place(&d.join("db/app.sqlite"), 1000, b"corrupted by a bad deploy")?;
        fs::remove_file(d.join("uploads/2024/02/photo-003.bin"))?;
        write_file(&d.join("uploads/2024/03/new.bin"), b"new upload", 0o644)?;
        set_mode(&d.join("bin/tool.sh"), 0o644)?;
        fs::remove_dir(d.join("empty/nested/deeper"))?;
        fs::remove_file(d.join("current"))?;
        symlink("uploads/2024/02", d.join("current"))?;
        fs::remove_file(d.join("zero.bin"))?;

        let s = self.src_dir();
        fs::write(s.join("README.md"), b"# deployed by mistake\n")?;
        write_file(&s.join("app/new_module.py"), b"print('new')\n", 0o644)?;

        self.commit_to(
            scratch,
            "main",
            &[("app/broken.py", b"raise SystemExit(1)\n")],
            "A bad deploy",
        )?;
        self.commit_to(scratch, "hotfix", &[("HOTFIX", b"1\n")], "Hotfix branch")?;
        git(&self.git_dir(), &["tag", "-d", "v0.9"])?;

        let mut env = default_env(self.seed);
        env.insert("SECRET_KEY".into(), "rotated".into());
        env.insert("NEW_FLAG".into(), "on".into());
        env.remove("DEBUG");
        self.write_env(&env)?;
        self.write_app_json("changed.example.com", 9999)?;
        Ok(())
    }
}

/// Overwrites bytes of an existing file without replacing it (same inode),
/// as an application writing to its database would.
pub fn overwrite_in_place(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    Ok(())
}

/// The `ENV` an app built from `seed` starts with: a URL with a password,
/// a value holding `=`, one with spaces, a secret.
pub fn default_env(seed: u64) -> BTreeMap<String, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xe4f);
    let secret = hex::encode(random_bytes(&mut rng, 16));
    [
        (
            "DATABASE_URL",
            "postgresql://app:s3cr%40t-pw@127.0.0.1:5432/app_db?sslmode=disable".to_owned(),
        ),
        ("SECRET_KEY", secret),
        ("DEBUG", "false".to_owned()),
        ("OPTIONS", "a=1,b=2==".to_owned()),
        ("GREETING", "hello world".to_owned()),
        ("PORT", "8000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
