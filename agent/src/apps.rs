//! The host layout an agent serves: `$HOP3_ROOT/apps/<app>/{git,src,data,ENV,app.json}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hop3_proto::names::validate_app_name;
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// The file that makes a directory under `apps/` an app.
pub const APP_FILE: &str = "app.json";
/// The app's environment, one `KEY=VALUE` per line.
pub const ENV_FILE: &str = "ENV";

/// A host's `HOP3_ROOT`.
#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
}

/// `app.json`: what Hop3 records about an app besides its files. Fields this
/// build does not know are kept as they are when the file is rewritten.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_state: Option<String>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An attached service as listed in `app.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    /// Connection URL; holds a password, so it is never logged.
    pub url: String,
}

impl HostRoot {
    /// The root at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$HOP3_ROOT/apps`.
    pub fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    /// `$HOP3_ROOT/.hop3-backup`: what the agent keeps on record between
    /// runs (restores in progress, scratch databases, allocations), root's
    /// own (0700). Never an app: apps live under `apps/`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".hop3-backup")
    }

    /// The directory of app `name`, after checking the name.
    pub fn app_dir(&self, name: &str) -> Result<PathBuf> {
        validate_app_name(name)?;
        Ok(self.apps_dir().join(name))
    }

    /// Names of the apps on this host, sorted: directories under `apps/` with an `app.json`.
    pub async fn list_apps(&self) -> Result<Vec<String>> {
        let dir = self.apps_dir();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AgentError::io("reading the apps directory", e)),
        };
        let mut apps = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| AgentError::io("reading the apps directory", e))?
        {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_app_name(&name).is_err() {
                continue;
            }
            if tokio::fs::try_exists(entry.path().join(APP_FILE))
                .await
                .unwrap_or(false)
            {
                apps.push(name);
            }
        }
        apps.sort();
        Ok(apps)
    }

    /// The directory of an existing app, or `AppNotFound`.
    pub async fn existing_app(&self, name: &str) -> Result<PathBuf> {
        let dir = self.app_dir(name)?;
        match tokio::fs::try_exists(dir.join(APP_FILE)).await {
            Ok(true) => Ok(dir),
            _ => Err(AgentError::AppNotFound(name.to_owned())),
        }
    }
}

/// Reads an app's `app.json`.
pub async fn read_app_config(app: &str, dir: &Path) -> Result<AppConfig> {
    let bytes = tokio::fs::read(dir.join(APP_FILE))
        .await
        .map_err(|e| AgentError::io(format!("reading {app}/app.json"), e))?;
    serde_json::from_slice(&bytes).map_err(|e| AgentError::AppConfig {
        app: app.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses an `ENV` file. Blank lines and `#` comments are skipped; a value
/// runs from the first `=` to the end of the line.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

/// Formats an environment as an `ENV` file.
pub fn format_env(env: &BTreeMap<String, String>) -> String {
    env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Reads an app's `ENV`; a missing file is an empty environment.
pub async fn read_env(dir: &Path) -> Result<BTreeMap<String, String>> {
    match tokio::fs::read_to_string(dir.join(ENV_FILE)).await {
        Ok(text) => Ok(parse_env(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(AgentError::io("reading ENV", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_round_trip() {
        let text = "# comment\nA=1\n\nURL=postgres://u:p@h/db?x=y\nEMPTY=\n";
        let env = parse_env(text);
        assert_eq!(env["URL"], "postgres://u:p@h/db?x=y");
        assert_eq!(env["EMPTY"], "");
        assert_eq!(env.len(), 3);
        assert_eq!(parse_env(&format_env(&env)), env);
    }

    #[test]
    fn app_json_keeps_unknown_fields() {
        let json = r#"{"hostname":"h","port":8000,"run_state":"RUNNING","services":[],"workers":{"web":2}}"#;
        let cfg: AppConfig = serde_json::from_str(json).unwrap();
        let back: serde_json::Value = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["workers"]["web"], 2);
    }

    #[tokio::test]
    async fn lists_only_apps() {
        let tmp = tempfile::tempdir().unwrap();
        let root = HostRoot::new(tmp.path());
        assert!(root.list_apps().await.unwrap().is_empty());
        for (name, with_json) in [
            ("b", true),
            ("a", true),
            (".a.restore-x", true),
            ("c", false),
        ] {
            let d = root.apps_dir().join(name);
            std::fs::create_dir_all(&d).unwrap();
            if with_json {
                std::fs::write(d.join(APP_FILE), "{}").unwrap();
            }
        }
        assert_eq!(root.list_apps().await.unwrap(), ["a", "b"]);
        assert!(matches!(
            root.existing_app("c").await,
            Err(AgentError::AppNotFound(_))
        ));
        assert!(root.existing_app("../x").await.is_err());
    }
}
