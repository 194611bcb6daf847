//! The LiveKit front door's settings, section `[livekit]`.

use super::{ConfigError, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Settings of the LiveKit-compatible front door (the MatrixRTC authorization service and,
/// later, LiveKit's signaling). Off while `api_key` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveKitConfig {
    /// The LiveKit API key: the `iss` of the access tokens Sluice mints and accepts.
    /// Empty: the front door is off.
    pub api_key: String,
    /// The secret signing the tokens (HS256), at least 32 characters.
    pub api_secret: Secret,
    /// A file holding the secret (first line), instead of `api_secret`.
    pub api_secret_file: Option<std::path::PathBuf>,
    /// The signaling URL handed to clients with their token (`url` of the response), as a
    /// client reaches it, e.g. `wss://sfu.example.org/livekit/sfu`.
    pub public_url: String,
    /// Where the authorization service's routes live on the HTTP port (`/sfu/get`,
    /// `/get_token`, `/healthz` under it). A homeserver's MatrixRTC transport names
    /// `<public origin><auth_path>` as `livekit_service_url`. Empty: the root.
    pub auth_path: String,
    /// Server names whose users get full access (may publish); `["*"]`: every server.
    /// Users of other servers get subscribe-only tokens.
    pub full_access_homeservers: Vec<String>,
    /// Base URLs to reach homeservers at for OpenID verification, by server name,
    /// instead of Matrix server discovery (local and test homeservers), e.g.
    /// `{ "localhost" = "http://127.0.0.1:8008" }`.
    pub homeserver_urls: BTreeMap<String, String>,
    /// How long a minted token is valid, in seconds.
    pub token_ttl_secs: u64,
    /// How long an OpenID verification may take, in seconds.
    pub openid_timeout_secs: u64,
}

impl Default for LiveKitConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            api_secret: Secret::default(),
            api_secret_file: None,
            public_url: String::new(),
            auth_path: "/livekit/jwt".to_owned(),
            full_access_homeservers: Vec::new(),
            homeserver_urls: BTreeMap::new(),
            token_ttl_secs: 3600,
            openid_timeout_secs: 5,
        }
    }
}

fn invalid(option: &'static str, expected: &'static str, got: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        option,
        expected,
        got: got.to_string(),
    }
}

impl LiveKitConfig {
    /// Whether the front door is on.
    pub fn enabled(&self) -> bool {
        !self.api_key.trim().is_empty()
    }

    /// The secret, from `api_secret` or `api_secret_file`.
    pub fn resolve_secret(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.api_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "livekit.api_secret_file",
                    "a readable file holding the secret",
                    format!("{}: {e}", path.display()),
                )
            })?;
            return Ok(Secret(text.lines().next().unwrap_or("").trim().to_owned()));
        }
        Ok(self.api_secret.clone())
    }

    /// Checks the section (nothing when the front door is off).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.api_secret_file.is_none() && self.api_secret.0.len() < 32 {
            return Err(invalid(
                "livekit.api_secret",
                "a secret of at least 32 characters (or livekit.api_secret_file)",
                format!("{} characters", self.api_secret.0.len()),
            ));
        }
        let url = self.public_url.trim();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() < 8 {
            return Err(invalid(
                "livekit.public_url",
                "the signaling URL clients reach, ws://host[:port][/path] or wss://…",
                format!("{url:?}"),
            ));
        }
        let path = &self.auth_path;
        if !path.is_empty() && (!path.starts_with('/') || path.ends_with('/')) {
            return Err(invalid(
                "livekit.auth_path",
                "empty (the root) or a path starting and not ending with `/`, e.g. /livekit/jwt",
                format!("{path:?}"),
            ));
        }
        if self.full_access_homeservers.is_empty() {
            return Err(invalid(
                "livekit.full_access_homeservers",
                "the server names whose users may publish, e.g. [\"example.org\"], or [\"*\"]",
                "an empty list",
            ));
        }
        for (name, base) in &self.homeserver_urls {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(invalid(
                    "livekit.homeserver_urls",
                    "server name = base URL (http:// or https://)",
                    format!("{name} = {base:?}"),
                ));
            }
        }
        if self.token_ttl_secs == 0 || self.token_ttl_secs > 86_400 {
            return Err(invalid(
                "livekit.token_ttl_secs",
                "1 to 86400 seconds",
                self.token_ttl_secs,
            ));
        }
        if self.openid_timeout_secs == 0 || self.openid_timeout_secs > 60 {
            return Err(invalid(
                "livekit.openid_timeout_secs",
                "1 to 60 seconds",
                self.openid_timeout_secs,
            ));
        }
        Ok(())
    }

    /// Whether users of `server_name` may publish.
    pub fn full_access(&self, server_name: &str) -> bool {
        self.full_access_homeservers
            .iter()
            .any(|s| s == "*" || s == server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> LiveKitConfig {
        LiveKitConfig {
            api_key: "key".into(),
            api_secret: Secret("s".repeat(32)),
            public_url: "ws://127.0.0.1:8080/livekit/sfu".into(),
            full_access_homeservers: vec!["localhost".into()],
            ..LiveKitConfig::default()
        }
    }

    fn option_of(c: &LiveKitConfig) -> &'static str {
        match c.validate() {
            Err(ConfigError::Invalid { option, .. }) => option,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn off_by_default_and_on_with_a_key() {
        assert!(!LiveKitConfig::default().enabled());
        assert!(LiveKitConfig::default().validate().is_ok());
        assert!(on().validate().is_ok());
    }

    #[test]
    fn each_bad_value_names_its_option() {
        let mut c = on();
        c.api_secret = Secret("short".into());
        assert_eq!(option_of(&c), "livekit.api_secret");
        let mut c = on();
        c.public_url = "http://x".into();
        assert_eq!(option_of(&c), "livekit.public_url");
        let mut c = on();
        c.auth_path = "livekit/".into();
        assert_eq!(option_of(&c), "livekit.auth_path");
        let mut c = on();
        c.full_access_homeservers.clear();
        assert_eq!(option_of(&c), "livekit.full_access_homeservers");
        let mut c = on();
        c.homeserver_urls
            .insert("x".into(), "127.0.0.1:8008".into());
        assert_eq!(option_of(&c), "livekit.homeserver_urls");
        let mut c = on();
        c.token_ttl_secs = 0;
        assert_eq!(option_of(&c), "livekit.token_ttl_secs");
    }

    #[test]
    fn full_access_follows_the_list_and_the_wildcard() {
        let c = on();
        assert!(c.full_access("localhost"));
        assert!(!c.full_access("other.example"));
        let c = LiveKitConfig {
            full_access_homeservers: vec!["*".into()],
            ..on()
        };
        assert!(c.full_access("other.example"));
    }
}
