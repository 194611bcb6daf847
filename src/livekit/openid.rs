//! OpenID verification: which Matrix user an OpenID access token belongs to, asked of the
//! token's own homeserver (`GET /_matrix/federation/v1/openid/userinfo`).

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a token could not be verified. None of these carries the token.
#[derive(Debug, thiserror::Error)]
pub enum OpenIdError {
    /// The claimed server name is not a valid Matrix server name.
    #[error("not a Matrix server name: {0:?}")]
    BadServerName(String),
    /// The homeserver could not be reached or timed out.
    #[error("homeserver {server} unreachable: {error}")]
    Unreachable {
        /// The server name.
        server: String,
        /// What failed (the URL, which holds the token, left out).
        error: String,
    },
    /// The homeserver refused the token (expired, unknown or forged).
    #[error("homeserver {server} refused the token (HTTP {status})")]
    Refused {
        /// The server name.
        server: String,
        /// Its HTTP status.
        status: u16,
    },
    /// The homeserver's answer is not `{"sub": "@user:<server>"}` for this server.
    #[error("homeserver {server} answered with no user of its own: {what}")]
    Malformed {
        /// The server name.
        server: String,
        /// What was wrong.
        what: String,
    },
}

/// Verifies OpenID tokens against their homeservers.
pub struct OpenIdVerifier {
    http: reqwest::Client,
    overrides: BTreeMap<String, String>,
}

impl OpenIdVerifier {
    /// A verifier that reaches the servers in `overrides` at the given base URLs and every
    /// other server by Matrix server discovery (`.well-known/matrix/server`, else port
    /// 8448), each request bounded by `timeout`.
    pub fn new(
        overrides: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, overrides })
    }

    /// The user id the token of `server_name` belongs to.
    pub async fn user_id(
        &self,
        server_name: &str,
        access_token: &str,
    ) -> Result<String, OpenIdError> {
        if !valid_server_name(server_name) {
            return Err(OpenIdError::BadServerName(server_name.to_owned()));
        }
        let base = self.base_url(server_name).await;
        let url = format!(
            "{}/_matrix/federation/v1/openid/userinfo?access_token={}",
            base.trim_end_matches('/'),
            percent_encode(access_token)
        );
        let unreachable = |e: reqwest::Error| OpenIdError::Unreachable {
            server: server_name.to_owned(),
            error: e.without_url().to_string(),
        };
        let resp = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(OpenIdError::Refused {
                server: server_name.to_owned(),
                status: status.as_u16(),
            });
        }
        let body = resp.bytes().await.map_err(unreachable)?;
        let malformed = |what: String| OpenIdError::Malformed {
            server: server_name.to_owned(),
            what,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| malformed(format!("not JSON ({e})")))?;
        let sub = v
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(|| malformed("no `sub`".into()))?;
        // A homeserver vouches for its own users only.
        match sub.strip_prefix('@').and_then(|s| s.split_once(':')) {
            Some((local, server)) if !local.is_empty() && server == server_name => {
                Ok(sub.to_owned())
            }
            _ => Err(malformed(format!(
                "`sub` {sub:?} is not a user of {server_name}"
            ))),
        }
    }

    /// Where to reach `server_name`'s federation API.
    async fn base_url(&self, server_name: &str) -> String {
        if let Some(base) = self.overrides.get(server_name) {
            return base.clone();
        }
        if has_port_or_is_ip(server_name) {
            return format!("https://{server_name}");
        }
        let well_known = format!("https://{server_name}/.well-known/matrix/server");
        if let Ok(resp) = self.http.get(&well_known).send().await
            && resp.status().is_success()
            && let Ok(v) = resp.json::<serde_json::Value>().await
            && let Some(delegated) = v.get("m.server").and_then(|s| s.as_str())
            && valid_server_name(delegated)
        {
            return if has_port_or_is_ip(delegated) {
                format!("https://{delegated}")
            } else {
                format!("https://{delegated}:8448")
            };
        }
        format!("https://{server_name}:8448")
    }
}

/// A Matrix server name: a host name, IPv4 or bracketed IPv6 literal, optional `:port`.
fn valid_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

fn has_port_or_is_ip(s: &str) -> bool {
    s.starts_with('[') || s.contains(':') || s.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked() {
        assert!(valid_server_name("example.org"));
        assert!(valid_server_name("127.0.0.1:8448"));
        assert!(valid_server_name("[::1]:8448"));
        assert!(!valid_server_name(""));
        assert!(!valid_server_name("evil.example/path?x="));
        assert!(!valid_server_name("user@host"));
    }

    #[test]
    fn ports_and_literals_skip_discovery() {
        assert!(has_port_or_is_ip("example.org:8448"));
        assert!(has_port_or_is_ip("10.0.0.1"));
        assert!(has_port_or_is_ip("[::1]"));
        assert!(!has_port_or_is_ip("example.org"));
    }

    #[test]
    fn tokens_are_percent_encoded() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
