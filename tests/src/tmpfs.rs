//! Small file systems a test can fill up: a tmpfs of a few dozen MiB
//! mounted on a directory of the test's own, unmounted on drop even when
//! the test fails.
//!
//! Needs root (or CAP_SYS_ADMIN); [`Tmpfs::mount`] and
//! [`Tmpfs::mount_at`] return `None`, having said why, when the machine
//! does not allow mounting, so the test can skip.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::fixtures::MIB;

/// Numbers the mounts of this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
    /// The directory made for it by [`Tmpfs::mount`], removed after the
    /// unmount.
    owned: Option<TempDir>,
    fillers: u32,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB (mode 0700) on a new temporary directory.
    pub fn mount(mib: u64) -> Result<Option<Tmpfs>> {
        let owned = tempfile::Builder::new()
            .prefix("hop3-e2e-tmpfs-")
            .tempdir()?;
        let dir = owned.path().to_owned();
        Ok(Self::mount_on(&dir, mib, "0700")?.map(|mut t| {
            t.owned = Some(owned);
            t
        }))
    }

    /// Mounts a tmpfs of `mib` MiB (mode 0755, as a host's apps directory)
    /// on `dir`, which is created if needed and should be empty.
    pub fn mount_at(dir: &Path, mib: u64) -> Result<Option<Tmpfs>> {
        fs::create_dir_all(dir)?;
        Self::mount_on(dir, mib, "0755")
    }

    fn mount_on(dir: &Path, mib: u64, mode: &str) -> Result<Option<Tmpfs>> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return Ok(None);
        }
        // The source names the test process in /proc/mounts, should a mount
        // ever outlive it.
        let source = format!(
            "hop3-e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode={mode}"))
            .arg(&source)
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs {
                dir: dir.to_owned(),
                owned: None,
                fillers: 0,
            })),
            Ok(out) => {
                eprintln!(
                    "SKIP: cannot mount a tmpfs here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                eprintln!("SKIP: cannot run mount: {e}");
                Ok(None)
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free for an unprivileged writer (`f_bavail * f_frsize`, as the
    /// product computes it).
    pub fn free(&self) -> Result<u64> {
        free_space(&self.dir)
    }

    /// Fills the file system until at most `leave` bytes are free, with a
    /// new file `.filler-N` at its top, and returns the file's path. Whatever
    /// else writes at the same time (the product) may leave less.
    pub fn fill(&mut self, leave: u64) -> Result<PathBuf> {
        self.fillers += 1;
        let path = self.dir.join(format!(".filler-{}", self.fillers));
        File::create(&path)?;
        let mut size = 0u64;
        let mut refused = false;
        // A few rounds: the product may take or free space in between.
        for _ in 0..40 {
            let free = self.free()?;
            if free <= leave {
                return Ok(path);
            }
            let mut grow = free - leave;
            if refused {
                // Someone took space meanwhile: ask for less.
                grow = (grow / 2).max(4096);
            }
            let ok = Command::new("fallocate")
                .arg("-l")
                .arg((size + grow).to_string())
                .arg(&path)
                .output()
                .context("running fallocate")?
                .status
                .success();
            if ok {
                size += grow;
            }
            refused = !ok;
        }
        let free = self.free()?;
        if free > leave + MIB {
            bail!(
                "could not fill {} down to {leave} bytes free ({free} free)",
                self.dir.display()
            );
        }
        Ok(path)
    }
}

/// Bytes free under `dir` for an unprivileged writer.
pub fn free_space(dir: &Path) -> Result<u64> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(dir)
        .output()
        .context("running stat -f")?;
    if !out.status.success() {
        bail!(
            "stat -f {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(blocks)), Some(Ok(size))) => Ok(blocks * size),
        _ => bail!("stat -f {} printed {text:?}", dir.display()),
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                // A process that is still inside (a server the test has not
                // stopped yet) keeps the mount busy: detach it now, the
                // kernel frees it when the last user goes.
                cmd.arg("-l");
            }
            cmd.arg(&self.dir)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs on {}", self.dir.display());
        }
        // `owned`, dropped after this, removes the now empty directory.
    }
}
