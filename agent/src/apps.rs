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
    let cfg: AppConfig = serde_json::from_slice(&bytes).map_err(|e| AgentError::AppConfig {
        app: app.to_owned(),
        reason: e.to_string(),
    })?;
    cfg.validate().map_err(|reason| AgentError::AppConfig {
        app: app.to_owned(),
        reason,
    })?;
    Ok(cfg)
}

impl AppConfig {
    /// Checks what a backup and a restore rely on: each service named once,
    /// with a name that can be part of a file name.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for service in &self.services {
            hop3_proto::names::validate_service_name(&service.name).map_err(|e| e.to_string())?;
            if !seen.insert(service.name.as_str()) {
                return Err(format!(
                    "two services are named {:?}; give each service its own name",
                    service.name
                ));
            }
        }
        Ok(())
    }
}

/// Parses an `ENV` file as Hop3 and shells read it, for `env.json` (the
/// file itself is kept and restored byte for byte): blank lines and `#`
/// comments skipped; an optional `export ` before the name; the value runs
/// from the first `=` to the end of the line, or, when it opens with a
/// quote, to the matching quote, lines later if need be (in double quotes,
/// `\"`, `\\`, `\n` and `\$` are escapes). Lines without `=` set nothing,
/// and a name set twice keeps its last value, as in a shell.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = after;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            continue;
        }
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
        let quoted = quote.and_then(|q| {
            // The quoted text may run past this line: read it from the line's
            // own place in the file.
            let start = value.as_ptr() as usize - text.as_ptr() as usize + 1;
            unquote(&text[start..], q).map(|(v, used)| (v, start + used))
        });
        match quoted {
            Some((value, end)) => {
                env.insert(key.to_owned(), value);
                // Whatever follows the closing quote on its line is not a variable.
                let tail = &text[end..];
                rest = tail.split_once('\n').map_or("", |(_, next)| next);
            }
            None => {
                env.insert(key.to_owned(), value.trim_end_matches('\r').to_owned());
            }
        }
    }
    env
}

/// The text of a quoted value starting just after its opening `quote`, and
/// the bytes used up to and with the closing quote; None if it never closes.
fn unquote(text: &str, quote: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Some((out, i + c.len_utf8())),
            '\\' if quote == '"' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, e @ ('"' | '\\' | '$' | '`'))) => out.push(e),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// Formats an environment as an `ENV` file (for backups that hold only
/// `env.json`).
pub fn format_env(env: &BTreeMap<String, String>) -> String {
    env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Reads an app's `ENV` as it is on disk; None when the app has none.
pub async fn read_env_file(dir: &Path) -> Result<Option<Vec<u8>>> {
    match tokio::fs::read(dir.join(ENV_FILE)).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("reading ENV", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_as_hop3_and_shells_read_it() {
        let text = "# comment\n\nexport A=1\nB = spaced \nC=\"multi\nline \\\"q\\\"\" # tail\nD='single $x'\nnot a variable\nA=2\r\nE=\"never closed\n";
        let env = parse_env(text);
        assert_eq!(env["A"], "2");
        assert_eq!(env["B"], " spaced ");
        assert_eq!(env["C"], "multi\nline \"q\"");
        assert_eq!(env["D"], "single $x");
        assert_eq!(env["E"], "\"never closed");
        assert_eq!(env.len(), 5, "{env:?}");
    }

    #[test]
    fn duplicate_service_names_are_refused() {
        let json = r#"{"services":[{"type":"postgres","name":"db","url":"postgresql://h/a"},{"type":"redis","name":"db","url":"redis://h/1"}]}"#;
        let cfg: AppConfig = serde_json::from_str(json).unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("two services are named")
        );
    }

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
