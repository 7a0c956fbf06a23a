//! `hop3-agent demo-app NAME`: a small app laid out as Hop3 lays apps out
//! (a bare git repository, its deployed tree, some data, an ENV and an
//! app.json), so that a newcomer has something to back up, restore and
//! clone in their first minutes.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::apps::HostRoot;
use crate::error::{AgentError, Result};

/// The files of the demo app's repository.
const FILES: [(&str, &str); 4] = [
    (
        "app.py",
        "import os\n\nprint('hello from', os.environ.get('APP_NAME', 'a demo app'))\n",
    ),
    ("requirements.txt", "flask==3.0.0\n"),
    ("Procfile", "web: python app.py\n"),
    (
        "README.md",
        "# A demo app\n\nMade by `hop3-agent demo-app` to try hop3-backup on.\n",
    ),
];

fn io(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::io(what.to_owned(), e)
}

async fn git(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        // Fixed identity and dates: the demo repository is the same everywhere.
        .env("GIT_AUTHOR_NAME", "Hop3 Demo")
        .env("GIT_AUTHOR_EMAIL", "demo@hop3.invalid")
        .env("GIT_COMMITTER_NAME", "Hop3 Demo")
        .env("GIT_COMMITTER_EMAIL", "demo@hop3.invalid")
        .env("GIT_AUTHOR_DATE", "2025-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2025-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .await
        .map_err(io("running git (is it installed?)"))?;
    if !out.status.success() {
        return Err(AgentError::DemoApp(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Writes the repository's files into a new directory `dir`.
async fn write_files(dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("making the demo app's files"))?;
    for (file, text) in FILES {
        tokio::fs::write(dir.join(file), text)
            .await
            .map_err(io("writing the demo app's files"))?;
    }
    Ok(())
}

/// Makes the demo app `name` under `root`; `postgres`, when given, is the
/// URL of a database it is attached to. Returns its directory.
pub async fn make(root: &HostRoot, name: &str, postgres: Option<&str>) -> Result<PathBuf> {
    let dir = root.app_dir(name)?;
    if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return Err(AgentError::DemoApp(format!(
            "{} already exists",
            dir.display()
        )));
    }
    tokio::fs::create_dir_all(root.apps_dir())
        .await
        .map_err(io("creating the apps directory"))?;
    let work = root.apps_dir().join(format!(".{name}.demo-work"));
    let made = async {
        write_files(&work).await?;
        git(&["init", "-q", "-b", "main"], &work).await?;
        git(&["add", "."], &work).await?;
        git(&["commit", "-q", "-m", "A demo app"], &work).await?;
        git(&["tag", "v1"], &work).await?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("making the app directory"))?;
        let bare = dir.join("git");
        git(
            &[
                "clone",
                "-q",
                "--bare",
                &work.to_string_lossy(),
                &bare.to_string_lossy(),
            ],
            &dir,
        )
        .await?;
        // The deployed tree: the repository's files, without its history.
        write_files(&dir.join("src")).await?;
        let uploads = dir.join("data/uploads");
        tokio::fs::create_dir_all(&uploads)
            .await
            .map_err(io("making data/"))?;
        tokio::fs::write(uploads.join("hello.txt"), "an upload\n")
            .await
            .map_err(io("writing data/"))?;
        tokio::fs::write(dir.join("data/counter.json"), "{\"visits\": 42}\n")
            .await
            .map_err(io("writing data/"))?;
        let secret = hex::encode(rand::random::<[u8; 16]>());
        tokio::fs::write(
            dir.join("ENV"),
            format!(
                "# The demo app's environment\nAPP_NAME={name}\nSECRET_KEY={secret}\nDEBUG=false\n"
            ),
        )
        .await
        .map_err(io("writing ENV"))?;
        let services = match postgres {
            Some(url) => serde_json::json!([{"type": "postgres", "name": "db", "url": url}]),
            None => serde_json::json!([]),
        };
        let app_json = serde_json::json!({
            "hostname": format!("{name}.localhost"),
            "port": 8000,
            "run_state": "RUNNING",
            "services": services,
        });
        tokio::fs::write(
            dir.join("app.json"),
            serde_json::to_vec_pretty(&app_json).expect("JSON"),
        )
        .await
        .map_err(io("writing app.json"))?;
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    if let Err(e) = made {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return Err(e);
    }
    Ok(dir)
}
