//! What a user would check after a restore, captured so that two states of
//! an app can be compared: git refs and commits, every entry of `src/` and
//! `data/` (kind, mode, content hash or link target), `ENV`, hostname and
//! port. Git's object files are not compared one by one: a restore may
//! legitimately repack them; what must hold is the same refs, the same
//! commits, and `git fsck --full` passing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::fixtures::git;

/// One entry of a tree. Links are never followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: permission bits, size, SHA-256 of its content.
    File {
        mode: u32,
        size: u64,
        sha256: String,
    },
    /// A directory and its permission bits.
    Dir { mode: u32 },
    /// A symbolic link and its target, as written.
    Symlink { target: String },
    /// A FIFO and its permission bits.
    Fifo { mode: u32 },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::File { mode, size, sha256 } => {
                write!(f, "file {mode:04o} {size} bytes sha256:{}", &sha256[..16])
            }
            Entry::Dir { mode } => write!(f, "dir {mode:04o}"),
            Entry::Symlink { target } => write!(f, "symlink -> {target}"),
            Entry::Fifo { mode } => write!(f, "fifo {mode:04o}"),
        }
    }
}

/// Every entry under a directory, by path relative to it (the directory
/// itself is `""`).
pub type Tree = BTreeMap<String, Entry>;

/// The state of one app as its user sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The names directly in the app's directory.
    pub top: BTreeSet<String>,
    /// What HEAD of the bare repository points to.
    pub head: String,
    /// `refname objectname`, for every ref.
    pub refs: Vec<String>,
    /// Every commit reachable from any ref, sorted.
    pub commits: Vec<String>,
    /// `src/`.
    pub src: Tree,
    /// `data/`.
    pub data: Tree,
    /// `ENV`, parsed.
    pub env: BTreeMap<String, String>,
    /// `hostname` of `app.json`.
    pub hostname: Option<String>,
    /// `port` of `app.json`.
    pub port: Option<u64>,
}

impl Snapshot {
    /// Captures the app at `app_dir` (`$ROOT/apps/<app>`).
    pub fn of(app_dir: &Path) -> Result<Snapshot> {
        let top = fs::read_dir(app_dir)
            .with_context(|| format!("reading {}", app_dir.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        let repo = app_dir.join("git");
        let (head, refs, commits) = git_state(&repo)?;
        let env_text = fs::read_to_string(app_dir.join("ENV"))
            .with_context(|| format!("reading {}/ENV", app_dir.display()))?;
        let app_json: serde_json::Value = serde_json::from_slice(
            &fs::read(app_dir.join("app.json"))
                .with_context(|| format!("reading {}/app.json", app_dir.display()))?,
        )?;
        Ok(Snapshot {
            top,
            head,
            refs,
            commits,
            src: tree(&app_dir.join("src"))?,
            data: tree(&app_dir.join("data"))?,
            env: parse_env(&env_text),
            hostname: app_json["hostname"].as_str().map(str::to_owned),
            port: app_json["port"].as_u64(),
        })
    }

    /// What a clone of this app (a restore into another name) looks like:
    /// the same, but for the hostname, which stays the source's own.
    pub fn as_clone(&self) -> Snapshot {
        Snapshot {
            hostname: None,
            ..self.clone()
        }
    }

    /// The differences from `self` (expected) to `actual`, one per line;
    /// empty when they are equal.
    pub fn diff(&self, actual: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: expected {a}, got {b}"));
            }
        };
        field(
            "entries of the app directory",
            format!("{:?}", self.top),
            format!("{:?}", actual.top),
        );
        field("git HEAD", self.head.clone(), actual.head.clone());
        field(
            "hostname",
            format!("{:?}", self.hostname),
            format!("{:?}", actual.hostname),
        );
        field(
            "port",
            format!("{:?}", self.port),
            format!("{:?}", actual.port),
        );
        out.extend(diff_lines("git ref", &self.refs, &actual.refs));
        out.extend(diff_lines("git commit", &self.commits, &actual.commits));
        out.extend(diff_maps("src/", &self.src, &actual.src));
        out.extend(diff_maps("data/", &self.data, &actual.data));
        out.extend(diff_maps("ENV ", &self.env, &actual.env));
        out
    }

    /// Fails with a readable diff unless `actual` equals `self`.
    pub fn assert_same(&self, actual: &Snapshot, what: &str) -> Result<()> {
        let diff = self.diff(actual);
        if !diff.is_empty() {
            let shown = diff.len().min(60);
            bail!(
                "{what}: {} difference(s) (- expected, + actual):\n{}{}",
                diff.len(),
                diff[..shown].join("\n"),
                if diff.len() > shown { "\n..." } else { "" }
            );
        }
        Ok(())
    }
}

/// HEAD, refs and sorted commits of the repository at `repo`.
pub fn git_state(repo: &Path) -> Result<(String, Vec<String>, Vec<String>)> {
    let head = git(repo, &["symbolic-ref", "HEAD"])?.trim().to_owned();
    let refs = git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])?
        .lines()
        .map(str::to_owned)
        .collect();
    let mut commits: Vec<String> = git(repo, &["rev-list", "--all"])?
        .lines()
        .map(str::to_owned)
        .collect();
    commits.sort();
    Ok((head, refs, commits))
}

/// Fails unless `git fsck --full` passes on the repository at `repo`.
pub fn fsck(repo: &Path) -> Result<()> {
    git(repo, &["fsck", "--full", "--no-progress"])
        .with_context(|| format!("git fsck --full on {}", repo.display()))?;
    Ok(())
}

/// Parses `ENV`: `KEY=VALUE` per line, split at the first `=`; blank lines
/// and `#` comments skipped.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every entry under `root` (itself included as `""`), links not followed.
pub fn tree(root: &Path) -> Result<Tree> {
    let mut out = Tree::new();
    walk(root, "", &mut out).with_context(|| format!("walking {}", root.display()))?;
    Ok(out)
}

fn walk(path: &Path, rel: &str, out: &mut Tree) -> Result<()> {
    let meta = fs::symlink_metadata(path).with_context(|| path.display().to_string())?;
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path)?.to_string_lossy().into_owned();
        out.insert(rel.to_owned(), Entry::Symlink { target });
    } else if kind.is_dir() {
        out.insert(rel.to_owned(), Entry::Dir { mode });
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            walk(&entry.path(), &child, out)?;
        }
    } else if kind.is_file() {
        out.insert(
            rel.to_owned(),
            Entry::File {
                mode,
                size: meta.len(),
                sha256: sha256_file(path)?,
            },
        );
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
        out.insert(rel.to_owned(), Entry::Fifo { mode });
    } else {
        bail!(
            "{} is neither file, directory, link nor FIFO",
            path.display()
        );
    }
    Ok(())
}

/// SHA-256 of a file's content, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn diff_lines(what: &str, expected: &[String], actual: &[String]) -> Vec<String> {
    let e: BTreeSet<&String> = expected.iter().collect();
    let a: BTreeSet<&String> = actual.iter().collect();
    let mut out: Vec<String> = e.difference(&a).map(|l| format!("- {what} {l}")).collect();
    out.extend(a.difference(&e).map(|l| format!("+ {what} {l}")));
    out
}

fn diff_maps<V: fmt::Display + PartialEq>(
    prefix: &str,
    expected: &BTreeMap<String, V>,
    actual: &BTreeMap<String, V>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, e) in expected {
        match actual.get(key) {
            None => out.push(format!("- {prefix}{key}: {e}")),
            Some(a) if a != e => out.push(format!("~ {prefix}{key}: {e}  =>  {a}")),
            Some(_) => {}
        }
    }
    for (key, a) in actual {
        if !expected.contains_key(key) {
            out.push(format!("+ {prefix}{key}: {a}"));
        }
    }
    out
}
