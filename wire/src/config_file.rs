//! An optional TOML config file for the daemons: `--config FILE`, else the
//! daemon's own variable (`HOP3_CONTROLLER_CONFIG`, `HOP3_AGENT_CONFIG`),
//! else its file in `/etc/hop3/` when there is one (`controller.toml`,
//! `agent.toml`). Its keys are the long flag names (`listen`, `store`,
//! `local_agent` or `local-agent`, ...); a key the daemon does not have
//! refuses the whole file, so that one daemon's file given to the other is
//! never half-read. A flag on the command line or its environment variable
//! wins over the file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config file {path}: unknown setting {key:?}")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: {key} must be a string, number or boolean")]
    BadValue { path: PathBuf, key: String },
    #[error(
        "HOP3_CONFIG is no longer read (it named a different kind of file for each program): set {0} instead"
    )]
    OldVariable(&'static str),
}

/// Where a daemon finds its config file.
#[derive(Clone, Copy, Debug)]
pub struct ConfigSource {
    /// Its own environment variable.
    pub env: &'static str,
    /// Its file when neither the flag nor the variable names one, used when it exists.
    pub default: &'static str,
}

/// The controller's config file.
pub const CONTROLLER_CONFIG: ConfigSource = ConfigSource {
    env: "HOP3_CONTROLLER_CONFIG",
    default: "/etc/hop3/controller.toml",
};

/// The agent's config file.
pub const AGENT_CONFIG: ConfigSource = ConfigSource {
    env: "HOP3_AGENT_CONFIG",
    default: "/etc/hop3/agent.toml",
};

/// Parses the process's arguments as `T`, with settings from the config file
/// filled in where neither a flag nor its environment variable is given.
pub fn parse_with_config<T: CommandFactory + FromArgMatches>(
    source: ConfigSource,
) -> Result<T, ConfigFileError> {
    if std::env::var_os("HOP3_CONFIG").is_some() {
        return Err(ConfigFileError::OldVariable(source.env));
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    let path = config_path(&args)
        .or_else(|| std::env::var_os(source.env).map(PathBuf::from))
        .or_else(|| {
            let default = PathBuf::from(source.default);
            default.is_file().then_some(default)
        });
    let args = match path {
        Some(path) => with_config(T::command(), args, &path)?,
        None => args,
    };
    Ok(T::from_arg_matches(&T::command().get_matches_from(args)).unwrap_or_else(|e| e.exit()))
}

/// The file of `--config FILE` on the command line, if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// `args` with the settings of the file `path` appended as flags.
pub fn with_config(
    cmd: clap::Command,
    mut args: Vec<OsString>,
    path: &std::path::Path,
) -> Result<Vec<OsString>, ConfigFileError> {
    let path = path.to_owned();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.clone(),
            reason: e.message().to_owned(),
        })?;
    let given: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            return Err(ConfigFileError::UnknownKey {
                path: path.clone(),
                key: key.clone(),
            });
        };
        let flag = format!("--{long}");
        let on_command_line = given
            .iter()
            .any(|g| *g == flag || g.starts_with(&format!("{flag}=")));
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if on_command_line || in_env {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => args.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => args.push(format!("{flag}={s}").into()),
            toml::Value::Integer(n) => args.push(format!("{flag}={n}").into()),
            // A repeatable flag: `alert-webhook = ["https://a", "https://b"]`.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
                for item in items.iter().filter_map(toml::Value::as_str) {
                    args.push(format!("{flag}={item}").into());
                }
            }
            _ => {
                return Err(ConfigFileError::BadValue {
                    path: path.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "a")]
        listen: String,
        #[arg(long)]
        local_agent: bool,
        #[arg(long, default_value_t = 2)]
        max_jobs: u32,
        #[arg(long)]
        hook: Vec<String>,
    }

    fn parse(file: &str, extra: &[&str]) -> Result<Demo, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["demo".into(), "--config".into(), path.clone().into()];
        args.extend(extra.iter().map(OsString::from));
        let args = with_config(Demo::command(), args, &path)?;
        Ok(Demo::from_arg_matches(&Demo::command().get_matches_from(args)).unwrap())
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let d = parse("listen = \"b\"\nlocal_agent = true\nmax-jobs = 4\n", &[]).unwrap();
        assert_eq!(d.listen, "b");
        assert!(d.local_agent);
        assert_eq!(d.max_jobs, 4);
        let d = parse("listen = \"b\"\n", &["--listen", "c"]).unwrap();
        assert_eq!(d.listen, "c");
        let d = parse("hook = [\"x\", \"y\"]\n", &[]).unwrap();
        assert_eq!(d.hook, ["x", "y"]);
    }

    #[test]
    fn typos_and_bad_files_are_errors() {
        assert!(matches!(
            parse("lisen = \"b\"\n", &[]),
            Err(ConfigFileError::UnknownKey { .. })
        ));
        assert!(matches!(
            parse("listen = [1]\n", &[]),
            Err(ConfigFileError::BadValue { .. })
        ));
        assert!(matches!(
            parse("listen = \n", &[]),
            Err(ConfigFileError::Parse { .. })
        ));
    }
}
