//! Service connection URLs (`postgresql://user:pw@host:port/db`): parsed
//! once, with the password kept apart so it is only ever handed to a tool
//! through its environment or a private option file.

use url::Url;

use crate::error::{AgentError, Result};

/// The parts of a service URL.
#[derive(Clone)]
pub struct ConnInfo {
    url: Url,
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub password: Option<String>,
    /// The path without its slash: a database name, or a Redis DB number.
    pub database: String,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl ConnInfo {
    /// Parses a service URL. The error never repeats the URL (it holds a password).
    pub fn parse(service: &str, raw: &str) -> Result<Self> {
        let bad = |why: &str| AgentError::Service {
            service: service.to_owned(),
            step: "connect",
            detail: format!("its URL is not valid: {why}"),
        };
        let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("bad percent-encoding"));
        let user = decode(url.username())?;
        let password = url.password().map(decode).transpose()?;
        let database = decode(url.path().trim_start_matches('/'))?;
        Ok(Self {
            port: url.port(),
            url,
            host,
            user,
            password,
            database,
        })
    }

    /// The URL as given (it holds the password: hand it only to a client library).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The URL with another database (path), for a clone's own database.
    pub fn with_database(&self, database: &str) -> String {
        let mut url = self.url.clone();
        url.set_path(&format!("/{database}"));
        url.to_string()
    }

    /// The password as written in the URL and as decoded: both must stay out of messages.
    pub fn secrets(&self) -> Vec<String> {
        self.url
            .password()
            .map(str::to_owned)
            .into_iter()
            .chain(self.password.clone())
            .collect()
    }

    /// The URL with its password hidden, for messages.
    pub fn redacted(&self) -> String {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        url.to_string()
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let c = ConnInfo::parse(
            "pg",
            "postgresql://app:s%40cr3t@127.0.0.1:5433/shop?sslmode=disable",
        )
        .unwrap();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, Some(5433));
        assert_eq!(c.user, "app");
        assert_eq!(c.password.as_deref(), Some("s@cr3t"));
        assert_eq!(c.database, "shop");
        assert!(!c.redacted().contains("s%40cr3t"));
        assert_eq!(c.secrets(), ["s%40cr3t", "s@cr3t"]);
        assert!(!format!("{c:?}").contains("cr3t"));
        assert_eq!(
            c.with_database("shop_clone"),
            "postgresql://app:s%40cr3t@127.0.0.1:5433/shop_clone?sslmode=disable"
        );
    }

    #[test]
    fn errors_do_not_echo_the_url() {
        let err = ConnInfo::parse("pg", "postgresql://u:hunter2@/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
