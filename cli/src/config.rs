//! The optional TOML config file, and where each connection setting comes
//! from:
//!
//! - the controller URL: `--controller`, then `HOP3_CONTROLLER` (both
//!   through clap), then the file's `controller`, then the default;
//! - the CA certificate for `https://`: `--ca-cert`, then `HOP3_CA_CERT`
//!   (both through clap), then the file's `ca_cert`;
//! - the bearer token: `HOP3_TOKEN`, then the file's `token`. There is no
//!   flag, so that it never shows in a process listing, and a file it is
//!   read from must not be readable by group or others.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::args::{DEFAULT_CONTROLLER, DEFAULT_SOCKET};

/// The controller's socket when there is one on this host that this user
/// may use, else its default TCP address (where a token is needed).
fn default_controller() -> String {
    use std::os::unix::fs::FileTypeExt;
    let usable = std::fs::metadata(DEFAULT_SOCKET).is_ok_and(|m| m.file_type().is_socket())
        && rustix::fs::access(DEFAULT_SOCKET, rustix::fs::Access::WRITE_OK).is_ok();
    if usable {
        format!("unix:{DEFAULT_SOCKET}")
    } else {
        DEFAULT_CONTROLLER.to_owned()
    }
}
use crate::error::CliError;

/// The config file used when none is named: `$XDG_CONFIG_HOME/hop3/cli.toml`
/// (`~/.config/hop3/cli.toml`), else `/etc/hop3/cli.toml`, the first that exists.
pub fn default_file() -> Option<PathBuf> {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("hop3/cli.toml"));
    user.into_iter()
        .chain([PathBuf::from("/etc/hop3/cli.toml")])
        .find(|p| p.is_file())
}

/// The environment variable the token is read from.
pub const TOKEN_ENV: &str = "HOP3_TOKEN";

/// The contents of the CLI's config file (see [`default_file`]).
/// Its `Debug` does not show the token.
#[derive(Default, Deserialize, PartialEq, Eq)]
// Unknown keys are refused so that a misspelt `controler` is reported
// instead of silently falling back to the default controller.
#[serde(deny_unknown_fields)]
pub struct Config {
    /// URL of the controller.
    pub controller: Option<String>,
    /// PEM file of the CA that signed the controller's certificate; a
    /// relative path is taken from the config file's directory.
    pub ca_cert: Option<PathBuf>,
    /// Bearer token for a controller in secure mode.
    token: Option<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("controller", &self.controller)
            .field("ca_cert", &self.ca_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A config file as read: its contents and its permission bits.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    config: Config,
    /// `st_mode & 0o777` (0 where there are no Unix permissions).
    mode: u32,
}

impl ConfigFile {
    /// Reads and parses the config file; its permissions are read from the
    /// same open file, so they are those of the text that was parsed.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let err = |reason: String| CliError::Config {
            path: path.to_owned(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mode = permission_bits(&file).map_err(|e| err(e.to_string()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| err(e.to_string()))?;
        // The TOML error's message is the parser's own, not the file's
        // text, so a token in a malformed file is not echoed.
        let config = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
        Ok(Self {
            path: path.to_owned(),
            config,
            mode,
        })
    }

    /// The file's `ca_cert`, relative paths taken from the file's directory.
    fn ca_cert(&self) -> Option<PathBuf> {
        let path = self.config.ca_cert.as_deref()?;
        if path.as_os_str().is_empty() {
            return None;
        }
        let dir = self.path.parent().unwrap_or(Path::new(""));
        Some(dir.join(path))
    }

    /// The file's `token`, refused if others than the owner may read the file.
    fn token(&self) -> Result<Option<Token>, CliError> {
        let origin = format!("the config file {}", self.path.display());
        let Some(token) = Token::new(self.config.token.as_deref().unwrap_or_default(), origin)
        else {
            return Ok(None);
        };
        if self.mode & 0o077 != 0 {
            return Err(CliError::TokenFileNotPrivate {
                path: self.path.clone(),
                mode: self.mode,
            });
        }
        Ok(Some(token))
    }
}

#[cfg(unix)]
fn permission_bits(file: &std::fs::File) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(file.metadata()?.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn permission_bits(_file: &std::fs::File) -> std::io::Result<u32> {
    Ok(0)
}

/// A bearer token. It has no `Display`, and its `Debug` does not show it,
/// so it cannot end up in a message, a `--json` document or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: String,
    /// Where it came from, for error messages: `HOP3_TOKEN` or the file.
    origin: String,
}

impl Token {
    /// `value` without surrounding white space (a pasted newline), or `None`
    /// when that is empty.
    pub fn new(value: &str, origin: impl Into<String>) -> Option<Self> {
        let secret = value.trim();
        (!secret.is_empty()).then(|| Self {
            secret: secret.to_owned(),
            origin: origin.into(),
        })
    }

    /// The token itself: only for the `authorization` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Where it came from: `HOP3_TOKEN` or `the config file PATH`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("origin", &self.origin)
            .finish()
    }
}

/// Where the settings may come from, besides the defaults.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sources<'a> {
    /// `--controller` or `HOP3_CONTROLLER`.
    pub controller: Option<&'a str>,
    /// `--ca-cert` or `HOP3_CA_CERT`.
    pub ca_cert: Option<&'a Path>,
    /// The value of `HOP3_TOKEN`.
    pub token_env: Option<&'a str>,
    /// `--config`, `HOP3_CLI_CONFIG`, or the default file.
    pub config_file: Option<&'a Path>,
}

/// How to reach and authenticate to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The controller URL, as given (see `client::normalize_url`).
    pub url: String,
    /// The CA to trust for an `https://` controller.
    pub ca_cert: Option<PathBuf>,
    /// The bearer token to send.
    pub token: Option<Token>,
}

impl Settings {
    /// Resolves every setting from `sources`, the config file read at most once.
    pub fn resolve(sources: Sources<'_>) -> Result<Self, CliError> {
        let file = sources.config_file.map(ConfigFile::load).transpose()?;
        let url = sources
            .controller
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .or_else(|| file.as_ref().and_then(|f| f.config.controller.clone()))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(default_controller);
        let ca_cert = sources
            .ca_cert
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .or_else(|| file.as_ref().and_then(ConfigFile::ca_cert));
        // The file's token is only looked at (and its permissions checked)
        // when the environment has none.
        let token = match sources.token_env.and_then(|t| Token::new(t, TOKEN_ENV)) {
            Some(token) => Some(token),
            None => file.as_ref().map(ConfigFile::token).transpose()?.flatten(),
        };
        Ok(Self {
            url,
            ca_cert,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SECRET: &str = "hop3_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The controller URL alone.
    fn controller_url(
        from_args: Option<&str>,
        config_file: Option<&Path>,
    ) -> Result<String, CliError> {
        Settings::resolve(Sources {
            controller: from_args,
            config_file,
            ..Sources::default()
        })
        .map(|s| s.url)
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[cfg(unix)]
    fn chmod(f: &tempfile::NamedTempFile, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A config file holding `text`, readable by its owner only.
    fn private_file(text: &str) -> tempfile::NamedTempFile {
        let f = file(text);
        #[cfg(unix)]
        chmod(&f, 0o600);
        f
    }

    fn resolve(sources: Sources<'_>) -> Settings {
        Settings::resolve(sources).expect("settings resolve")
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

    #[test]
    fn ca_cert_precedence_is_args_then_file() {
        let f = file("ca_cert = \"/etc/hop3/ca.pem\"\n");
        let flag = Path::new("/from/flag/ca.pem");
        let s = resolve(Sources {
            ca_cert: Some(flag),
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!(s.ca_cert.as_deref(), Some(flag));
        let s = resolve(Sources {
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/etc/hop3/ca.pem")));
        assert_eq!(resolve(Sources::default()).ca_cert, None);
        // An empty HOP3_CA_CERT does not hide the file's.
        let s = resolve(Sources {
            ca_cert: Some(Path::new("")),
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!(s.ca_cert.as_deref(), Some(Path::new("/etc/hop3/ca.pem")));
    }

    #[test]
    fn a_relative_ca_cert_is_taken_from_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("hop3.toml");
        std::fs::write(&config, "ca_cert = \"certs/ca.pem\"\n").unwrap();
        let s = resolve(Sources {
            config_file: Some(&config),
            ..Sources::default()
        });
        assert_eq!(s.ca_cert, Some(dir.path().join("certs/ca.pem")));
    }

    #[test]
    fn token_precedence_is_env_then_file() {
        let f = private_file(&format!("token = \"{SECRET}\"\n"));
        let s = resolve(Sources {
            token_env: Some("hop3_from_env"),
            config_file: Some(f.path()),
            ..Sources::default()
        });
        let token = s.token.unwrap();
        assert_eq!(token.secret(), "hop3_from_env");
        assert_eq!(token.origin(), TOKEN_ENV);

        let s = resolve(Sources {
            config_file: Some(f.path()),
            ..Sources::default()
        });
        let token = s.token.unwrap();
        assert_eq!(token.secret(), SECRET);
        assert!(token.origin().contains("config file"), "{token:?}");

        // An empty or blank HOP3_TOKEN counts as unset.
        let s = resolve(Sources {
            token_env: Some(" \n"),
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!(s.token.unwrap().secret(), SECRET);
        assert_eq!(resolve(Sources::default()).token, None);
        // A pasted newline is not part of the token.
        let s = resolve(Sources {
            token_env: Some("hop3_abc\n"),
            ..Sources::default()
        });
        assert_eq!(s.token.unwrap().secret(), "hop3_abc");
    }

    #[cfg(unix)]
    #[test]
    fn a_token_in_a_file_others_can_read_is_refused() {
        let f = file(&format!("token = \"{SECRET}\"\n"));
        let sources = Sources {
            config_file: Some(f.path()),
            ..Sources::default()
        };
        for mode in [0o644, 0o640, 0o604, 0o660] {
            chmod(&f, mode);
            let err = Settings::resolve(sources).unwrap_err();
            assert!(
                matches!(err, CliError::TokenFileNotPrivate { .. }),
                "{mode:o}: {err:?}"
            );
            assert_eq!(err.exit_code(), 2);
            let message = err.to_string();
            let chmod_line = format!("chmod 600 {}", f.path().display());
            assert!(message.contains(&chmod_line), "{message}");
            assert!(!message.contains(SECRET), "{message}");
        }
        for mode in [0o600, 0o400] {
            chmod(&f, mode);
            let s = Settings::resolve(sources).unwrap();
            assert_eq!(s.token.unwrap().secret(), SECRET, "{mode:o}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_open_file_without_a_token_or_with_the_token_in_env_is_fine() {
        let f = file("controller = \"http://c:1\"\n");
        chmod(&f, 0o644);
        let s = resolve(Sources {
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!((s.url.as_str(), s.token), ("http://c:1", None));

        // HOP3_TOKEN wins, so the file's token is not used, nor refused.
        let f = file(&format!("token = \"{SECRET}\"\n"));
        chmod(&f, 0o644);
        let s = resolve(Sources {
            token_env: Some("hop3_from_env"),
            config_file: Some(f.path()),
            ..Sources::default()
        });
        assert_eq!(s.token.unwrap().secret(), "hop3_from_env");
    }

    #[test]
    fn the_token_never_shows_in_debug_output_or_errors() {
        let f = private_file(&format!("token = \"{SECRET}\"\n"));
        let s = resolve(Sources {
            config_file: Some(f.path()),
            ..Sources::default()
        });
        let loaded = ConfigFile::load(f.path()).unwrap();
        for text in [format!("{s:?}"), format!("{s:#?}"), format!("{loaded:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
        // The raw file contents are kept private to this module; the
        // Token's Debug is what any caller gets.
        assert_eq!(loaded.token().unwrap().unwrap().secret(), SECRET);

        // A malformed file holding a token: the parse error does not quote it.
        let bad = private_file(&format!("token = \"{SECRET}\"\ncontroller = 1\n"));
        let err = Settings::resolve(Sources {
            config_file: Some(bad.path()),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        let bad = private_file(&format!("token = \"{SECRET}\n"));
        let err = Settings::resolve(Sources {
            config_file: Some(bad.path()),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
    }
}
