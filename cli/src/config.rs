//! The optional TOML config file and where the controller URL comes from:
//! `--controller`, then `HOP3_CONTROLLER` (both through clap), then the
//! config file's `controller`, then the default.

use std::path::Path;

use serde::Deserialize;

use crate::args::DEFAULT_CONTROLLER;
use crate::error::CliError;

/// The contents of the config file given with `--config` / `HOP3_CONFIG`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
// Unknown keys are refused so that a misspelt `controler` is reported
// instead of silently falling back to the default controller.
#[serde(deny_unknown_fields)]
pub struct Config {
    /// URL of the controller.
    pub controller: Option<String>,
}

impl Config {
    /// Reads and parses the config file.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let err = |reason: String| CliError::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.message().to_owned()))
    }
}

/// The controller URL to use. `from_args` is `--controller` or
/// `HOP3_CONTROLLER`, which win over the config file.
pub fn controller_url(
    from_args: Option<&str>,
    config_file: Option<&Path>,
) -> Result<String, CliError> {
    if let Some(url) = from_args.filter(|u| !u.is_empty()) {
        return Ok(url.to_owned());
    }
    let from_file = match config_file {
        Some(path) => Config::load(path)?.controller,
        None => None,
    };
    Ok(from_file
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_CONTROLLER.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn precedence_is_args_then_file_then_default() {
        let f = file("controller = \"http://from-file:1\"\n");
        assert_eq!(
            controller_url(Some("http://flag:1"), Some(f.path())).unwrap(),
            "http://flag:1"
        );
        assert_eq!(
            controller_url(None, Some(f.path())).unwrap(),
            "http://from-file:1"
        );
        assert_eq!(controller_url(None, None).unwrap(), DEFAULT_CONTROLLER);
        let empty = file("");
        assert_eq!(
            controller_url(None, Some(empty.path())).unwrap(),
            DEFAULT_CONTROLLER
        );
    }

    #[test]
    fn a_bad_or_missing_file_is_an_error() {
        let typo = file("controler = \"x\"\n");
        let err = controller_url(None, Some(typo.path())).unwrap_err();
        assert!(matches!(err, CliError::Config { .. }), "{err:?}");
        let missing = Path::new("/nonexistent/hop3.toml");
        assert!(controller_url(None, Some(missing)).is_err());
    }
}
