//! Typed configuration, loaded from a TOML file and validated with messages that name the
//! option and the expected form.
//!
//! Every option has a default, so an empty file is a valid configuration for a local test
//! instance. `deploy/sluice.example.toml` lists every option with its default.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub mod livekit;
mod messages;
pub use livekit::LiveKitConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Media (SFU) settings: sockets, timeouts, limits.
    pub sfu: SfuConfig,
    /// Matrix signaling: the account Sluice runs as. Disabled when `homeserver_url` is empty.
    pub matrix: MatrixConfig,
    /// HTTP endpoints (metrics, health, admin) and operations (drain, idle eviction).
    pub http: HttpConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// The reference web client, served on the HTTP port.
    pub web: WebConfig,
    /// The LiveKit-compatible front door (off unless `api_key` is set).
    pub livekit: LiveKitConfig,
}

/// The reference web client, section `[web]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Directory of the built client (`web/dist` after `npm run build` in `web/`). Empty:
    /// the client is not served.
    pub dir: String,
    /// Homeserver URL the page offers for login, as a browser reaches it. Empty: the
    /// `matrix.homeserver_url`.
    pub homeserver_url: String,
    /// Room alias or id the page offers to join (e.g. `#demo:localhost`). Empty: none.
    pub default_room: String,
    /// Accounts offered as one-click logins (local demo stacks only: the passwords are
    /// served to anyone who can load the page).
    pub demo_users: Vec<DemoUser>,
}

/// A one-click login offered by the web client.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUser {
    /// User name (localpart) or full user id.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl WebConfig {
    /// Whether the web client is served.
    pub fn enabled(&self) -> bool {
        !self.dir.trim().is_empty()
    }
}

/// HTTP and operations settings, section `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`, `/admin/…`).
    pub listen: std::net::SocketAddr,
    /// Bearer token for `/admin/…`. Empty: every admin call is refused.
    pub admin_token: Secret,
    /// Seconds a drain waits for conferences to end before hanging up the rest.
    pub drain_deadline_secs: u64,
    /// Seconds a participant may publish and subscribe nothing before it is removed.
    pub idle_timeout_secs: u64,
    /// Forwarded packets per second this instance is sized for; with CPU, the basis of
    /// `sluice_load_ratio`.
    pub capacity_packets_per_sec: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin_token: Secret::default(),
            drain_deadline_secs: 600,
            idle_timeout_secs: 300,
            capacity_packets_per_sec: 200_000,
        }
    }
}

/// A secret string (password, token): never printed by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// Matrix signaling settings, section `[matrix]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixConfig {
    /// Base URL of the homeserver, e.g. `https://matrix.example.org`. Empty: no signaling
    /// (the media core runs alone).
    pub homeserver_url: String,
    /// Sluice's Matrix user, e.g. `@sfu:example.org`.
    pub user_id: String,
    /// The account's password.
    pub password: Secret,
    /// A file holding the password (first line), instead of `password`.
    pub password_file: Option<std::path::PathBuf>,
    /// Sluice's device id; keep it stable so the Olm identity in the store stays valid.
    pub device_id: String,
    /// Directory of the SQLite state and crypto store. Keep it on a persistent volume:
    /// without it a restarted instance cannot decrypt Olm signaling.
    pub store_path: std::path::PathBuf,
    /// Passphrase encrypting the store (optional).
    pub store_passphrase: Secret,
    /// Homeserver names whose users may invite Sluice and call through it. Empty: any.
    pub allowed_homeservers: Vec<String>,
    /// Join rooms Sluice is invited to (by an allowed homeserver's user).
    pub auto_join: bool,
    /// Leave a room when its last session ends and no valid membership there names this
    /// instance any more.
    pub leave_idle_rooms: bool,
    /// Seconds between data-channel pings to each client.
    pub keepalive_interval_secs: u64,
    /// Seconds without a pong before a client is hung up (`keep_alive_timeout`).
    pub keepalive_timeout_secs: u64,
    /// Signaling events per second accepted from one sender (sustained).
    pub signaling_rate_per_sec: u32,
    /// Signaling events one sender may send in a burst.
    pub signaling_burst: u32,
    /// Sessions one account may hold in one call (one per device; plaintext signaling
    /// trusts the device id the client claims).
    pub max_sessions_per_account: usize,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        Self {
            homeserver_url: String::new(),
            user_id: String::new(),
            password: Secret::default(),
            password_file: None,
            device_id: "SLUICE".to_owned(),
            store_path: "data/matrix-store".into(),
            store_passphrase: Secret::default(),
            allowed_homeservers: Vec::new(),
            auto_join: true,
            leave_idle_rooms: false,
            keepalive_interval_secs: 10,
            keepalive_timeout_secs: 30,
            signaling_rate_per_sec: 20,
            signaling_burst: 50,
            max_sessions_per_account: 4,
        }
    }
}

impl MatrixConfig {
    /// Whether signaling is configured.
    pub fn enabled(&self) -> bool {
        !self.homeserver_url.trim().is_empty()
    }

    /// The password, from `password` or `password_file`.
    pub fn resolve_password(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                option: "matrix.password_file",
                expected: "a readable file holding the password",
                got: format!("{}: {e}", path.display()),
            })?;
            return Ok(Secret(text.lines().next().unwrap_or("").to_owned()));
        }
        Ok(self.password.clone())
    }
}

/// Media core settings, section `[sfu]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// IP address the per-participant UDP sockets bind to. `0.0.0.0` binds every
    /// non-loopback interface (one socket per interface address).
    pub bind_address: IpAddr,
    /// Lowest UDP port for media sockets; `0` (with `udp_port_max = 0`) means ephemeral ports.
    pub udp_port_min: u16,
    /// Highest UDP port for media sockets (inclusive); `0` means ephemeral ports.
    pub udp_port_max: u16,
    /// Public IPs advertised as host candidates instead of the bound address (NAT 1:1,
    /// e.g. a cloud VM's elastic IP). Empty: advertise the bound addresses.
    pub nat_1to1_ips: Vec<IpAddr>,
    /// Seconds a participant has from its join until ICE connects; past that it is removed
    /// with reason `invite_timeout`.
    pub ice_connect_timeout_secs: u64,
    /// Seconds a connected participant may go without a sign of life (media, replies to ICE
    /// checks) before it is removed with `ice_failed`; a shorter network blip survives.
    pub ice_lost_timeout_secs: u64,
    /// Minimum milliseconds between two keyframe requests (PLI) sent to one publisher
    /// stream; requests in between are coalesced and counted as suppressed.
    pub keyframe_request_min_interval_ms: u64,
    /// Maximum participants in one conference; joins beyond it are refused (`conference_full`).
    pub max_participants_per_conference: usize,
    /// Maximum conferences on this instance; new conferences beyond it are refused
    /// (`server_full`).
    pub max_conferences: usize,
    /// Maximum tracks one participant may subscribe to at once.
    pub max_subscriptions_per_participant: usize,
    /// Deprecated and ignored: legs no longer have a queue of Sluice's own (the forwarder
    /// hands packets straight to the subscriber connection, whose driver queue bounds a
    /// slow leg). Still accepted so that existing files load; `serve` and `check-config`
    /// warn about it (see [`Config::deprecations`]).
    pub leg_queue_packets: Option<usize>,
    /// Audio louder than this (in −dBov, RFC 6464: 0 loudest, 127 silent) counts as speech.
    pub speaker_threshold_dbov: u8,
    /// Milliseconds a speaker stays announced after dropping below the threshold.
    pub speaker_hold_ms: u64,
    /// Speakers announced at most.
    pub max_active_speakers: usize,
    /// Send-side bandwidth estimate (GCC over transport-wide congestion control feedback)
    /// a subscriber starts from, kbit/s, before its feedback says more.
    pub bandwidth_initial_kbps: u64,
    /// Lowest the send-side estimate goes, kbit/s.
    pub bandwidth_min_kbps: u64,
    /// Highest the send-side estimate goes, kbit/s: the most Sluice sends one subscriber.
    pub bandwidth_max_kbps: u64,
    /// Data-channel messages one participant may send per second, sustained; beyond it
    /// (and [`SfuConfig::data_channel_burst`]) they are dropped, counted, and the client
    /// told once (`sluice.error` code `rate_limited`).
    pub data_channel_rate_per_sec: u32,
    /// Data-channel messages one participant may send in a burst.
    pub data_channel_burst: u32,
    /// Data-channel messages of one participant waiting to be handled, at most; more are
    /// dropped as over the rate.
    pub data_channel_queue: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            udp_port_min: 0,
            udp_port_max: 0,
            nat_1to1_ips: Vec::new(),
            ice_connect_timeout_secs: 30,
            ice_lost_timeout_secs: 15,
            keyframe_request_min_interval_ms: 1000,
            max_participants_per_conference: 100,
            max_conferences: 1000,
            max_subscriptions_per_participant: 200,
            leg_queue_packets: None,
            speaker_threshold_dbov: 50,
            speaker_hold_ms: 1000,
            max_active_speakers: 4,
            bandwidth_initial_kbps: 1000,
            bandwidth_min_kbps: 50,
            bandwidth_max_kbps: 20_000,
            data_channel_rate_per_sec: 20,
            data_channel_burst: 50,
            data_channel_queue: 32,
        }
    }
}

impl SfuConfig {
    /// The ICE connect deadline as a duration.
    pub fn ice_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.ice_connect_timeout_secs)
    }

    /// The ICE agent's (disconnected, then failed) timeouts for `ice_lost_timeout_secs`.
    pub fn ice_lost_timeouts(&self) -> (Duration, Duration) {
        let total = self.ice_lost_timeout_secs.max(2);
        let disconnected = (total / 2).clamp(1, 5);
        (
            Duration::from_secs(disconnected),
            Duration::from_secs(total - disconnected),
        )
    }

    /// The keyframe request throttle interval as a duration.
    pub fn keyframe_request_min_interval(&self) -> Duration {
        Duration::from_millis(self.keyframe_request_min_interval_ms)
    }

    /// The configured port range, or `None` for ephemeral ports.
    pub fn port_range(&self) -> Option<(u16, u16)> {
        if self.udp_port_min == 0 && self.udp_port_max == 0 {
            None
        } else {
            Some((self.udp_port_min, self.udp_port_max))
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging settings, section `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` env-filter directive such as `info` or `sluice=debug,webrtc=warn`.
    /// The `RUST_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// A configuration error, phrased for the operator: which option, what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or an option has the wrong type or name.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The parser's message, which names the key and the expected type.
        message: String,
    },
    /// An option has a value of the right type but outside what is allowed.
    #[error("config option `{option}`: expected {expected}, got {got}")]
    Invalid {
        /// Dotted option name, e.g. `sfu.udp_port_min`.
        option: &'static str,
        /// The expected form.
        expected: &'static str,
        /// The value found.
        got: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<string>".to_owned(),
            message: messages::plain_types(e.to_string().trim_end()),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Options that are set but no longer have an effect, each with what to do instead.
    pub fn deprecations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.sfu.leg_queue_packets.is_some() {
            out.push(
                "sfu.leg_queue_packets is deprecated and ignored: legs no longer queue packets \
                 in Sluice (a slow subscriber's connection drops them, counted as \
                 queue_full); remove the option"
                    .to_string(),
            );
        }
        out
    }

    /// Checks value ranges and relations between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.sfu;
        if (s.udp_port_min == 0) != (s.udp_port_max == 0) {
            return Err(ConfigError::Invalid {
                option: "sfu.udp_port_min/sfu.udp_port_max",
                expected: "both 0 (ephemeral ports) or both set to a port 1-65535",
                got: format!("{}..{}", s.udp_port_min, s.udp_port_max),
            });
        }
        if s.udp_port_min > s.udp_port_max {
            return Err(ConfigError::Invalid {
                option: "sfu.udp_port_min",
                expected: "a port not above sfu.udp_port_max",
                got: format!("{} > {}", s.udp_port_min, s.udp_port_max),
            });
        }
        if s.ice_connect_timeout_secs == 0 || s.ice_connect_timeout_secs > 600 {
            return Err(ConfigError::Invalid {
                option: "sfu.ice_connect_timeout_secs",
                expected: "seconds between 1 and 600",
                got: s.ice_connect_timeout_secs.to_string(),
            });
        }
        if !(2..=120).contains(&s.ice_lost_timeout_secs) {
            return Err(ConfigError::Invalid {
                option: "sfu.ice_lost_timeout_secs",
                expected: "seconds between 2 and 120",
                got: s.ice_lost_timeout_secs.to_string(),
            });
        }
        if s.keyframe_request_min_interval_ms > 60_000 {
            return Err(ConfigError::Invalid {
                option: "sfu.keyframe_request_min_interval_ms",
                expected: "milliseconds between 0 and 60000",
                got: s.keyframe_request_min_interval_ms.to_string(),
            });
        }
        for (option, value) in [
            (
                "sfu.max_participants_per_conference",
                s.max_participants_per_conference,
            ),
            ("sfu.max_conferences", s.max_conferences),
            (
                "sfu.max_subscriptions_per_participant",
                s.max_subscriptions_per_participant,
            ),
            (
                "sfu.data_channel_rate_per_sec",
                s.data_channel_rate_per_sec as usize,
            ),
            ("sfu.data_channel_burst", s.data_channel_burst as usize),
            ("sfu.data_channel_queue", s.data_channel_queue),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    option,
                    expected: "a number of at least 1",
                    got: value.to_string(),
                });
            }
        }
        if s.speaker_threshold_dbov > 127 {
            return Err(ConfigError::Invalid {
                option: "sfu.speaker_threshold_dbov",
                expected: "a level 0-127 (-dBov)",
                got: s.speaker_threshold_dbov.to_string(),
            });
        }
        if s.speaker_hold_ms > 60_000 || s.max_active_speakers == 0 || s.max_active_speakers > 32 {
            return Err(ConfigError::Invalid {
                option: "sfu.speaker_hold_ms/sfu.max_active_speakers",
                expected: "a hold of 0-60000 ms and 1-32 speakers",
                got: format!("{} ms, {}", s.speaker_hold_ms, s.max_active_speakers),
            });
        }
        if s.bandwidth_min_kbps == 0
            || s.bandwidth_min_kbps > s.bandwidth_initial_kbps
            || s.bandwidth_initial_kbps > s.bandwidth_max_kbps
            || s.bandwidth_max_kbps > 10_000_000
        {
            return Err(ConfigError::Invalid {
                option: "sfu.bandwidth_min_kbps/sfu.bandwidth_initial_kbps/sfu.bandwidth_max_kbps",
                expected: "kbit/s with 1 <= min <= initial <= max <= 10000000",
                got: format!(
                    "{} / {} / {}",
                    s.bandwidth_min_kbps, s.bandwidth_initial_kbps, s.bandwidth_max_kbps
                ),
            });
        }
        let h = &self.http;
        if h.drain_deadline_secs == 0 || h.drain_deadline_secs > 86_400 {
            return Err(ConfigError::Invalid {
                option: "http.drain_deadline_secs",
                expected: "seconds between 1 and 86400",
                got: h.drain_deadline_secs.to_string(),
            });
        }
        if h.idle_timeout_secs < 5 {
            return Err(ConfigError::Invalid {
                option: "http.idle_timeout_secs",
                expected: "seconds, at least 5",
                got: h.idle_timeout_secs.to_string(),
            });
        }
        if h.capacity_packets_per_sec == 0 {
            return Err(ConfigError::Invalid {
                option: "http.capacity_packets_per_sec",
                expected: "a packet rate of at least 1",
                got: "0".into(),
            });
        }
        if !h.admin_token.0.is_empty() && h.admin_token.0.len() < 16 {
            return Err(ConfigError::Invalid {
                option: "http.admin_token",
                expected: "a token of at least 16 characters (or empty to disable the admin API)",
                got: format!("{} characters", h.admin_token.0.len()),
            });
        }
        let w = &self.web;
        if w.enabled() {
            if !Path::new(w.dir.trim()).join("index.html").is_file() {
                return Err(ConfigError::Invalid {
                    option: "web.dir",
                    expected: "a directory with the built web client's index.html (run `npm ci && npm run build` in web/), or empty",
                    got: format!("{:?}", w.dir),
                });
            }
            if !self.matrix.enabled() {
                return Err(ConfigError::Invalid {
                    option: "web.dir",
                    expected: "empty unless [matrix] is configured (the web client calls through Matrix)",
                    got: format!("{:?}", w.dir),
                });
            }
        }
        let hs = w.homeserver_url.trim();
        if !(hs.is_empty() || hs.starts_with("http://") || hs.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                option: "web.homeserver_url",
                expected: "an http:// or https:// URL, or empty for matrix.homeserver_url",
                got: format!("{hs:?}"),
            });
        }
        let m = &self.matrix;
        if m.enabled() {
            let url = m.homeserver_url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    option: "matrix.homeserver_url",
                    expected: "an http:// or https:// URL",
                    got: format!("{url:?}"),
                });
            }
            let valid_user = m.user_id.starts_with('@')
                && m.user_id[1..]
                    .split_once(':')
                    .is_some_and(|(l, s)| !l.is_empty() && !s.is_empty());
            if !valid_user {
                return Err(ConfigError::Invalid {
                    option: "matrix.user_id",
                    expected: "a Matrix user id such as \"@sfu:example.org\"",
                    got: format!("{:?}", m.user_id),
                });
            }
            if m.password.0.is_empty() && m.password_file.is_none() {
                return Err(ConfigError::Invalid {
                    option: "matrix.password",
                    expected: "the account password (or matrix.password_file)",
                    got: "nothing".into(),
                });
            }
            if m.device_id.is_empty()
                || m.device_id.len() > 64
                || m.device_id.contains(char::is_whitespace)
            {
                return Err(ConfigError::Invalid {
                    option: "matrix.device_id",
                    expected: "1-64 characters without spaces",
                    got: format!("{:?}", m.device_id),
                });
            }
            if m.keepalive_interval_secs == 0
                || m.keepalive_timeout_secs <= m.keepalive_interval_secs
            {
                return Err(ConfigError::Invalid {
                    option: "matrix.keepalive_timeout_secs",
                    expected: "seconds above matrix.keepalive_interval_secs (which must be at least 1)",
                    got: format!(
                        "{} (interval {})",
                        m.keepalive_timeout_secs, m.keepalive_interval_secs
                    ),
                });
            }
            if m.signaling_rate_per_sec == 0 || m.signaling_burst == 0 {
                return Err(ConfigError::Invalid {
                    option: "matrix.signaling_rate_per_sec",
                    expected: "a rate and burst of at least 1",
                    got: format!("{}/{}", m.signaling_rate_per_sec, m.signaling_burst),
                });
            }
            if m.max_sessions_per_account == 0 {
                return Err(ConfigError::Invalid {
                    option: "matrix.max_sessions_per_account",
                    expected: "a whole number of at least 1",
                    got: "0".to_owned(),
                });
            }
        }
        if self.log.level.trim().is_empty()
            || tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err()
        {
            return Err(ConfigError::Invalid {
                option: "log.level",
                expected: "a tracing filter such as `info` or `sluice=debug,webrtc=warn`",
                got: format!("{:?}", self.log.level),
            });
        }
        self.livekit.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.sfu.ice_connect_timeout_secs, 30);
        assert_eq!(c.sfu.keyframe_request_min_interval_ms, 1000);
        assert_eq!(c.sfu.port_range(), None);
    }

    #[test]
    fn deprecated_leg_queue_option_loads_and_is_reported() {
        let c = Config::from_toml_str("[sfu]\nleg_queue_packets = 512\n").unwrap();
        let d = c.deprecations();
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("sfu.leg_queue_packets"), "{d:?}");
        assert!(Config::from_toml_str("").unwrap().deprecations().is_empty());
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../deploy/sluice.example.toml");
        let c = Config::from_toml_str(text).unwrap();
        let d = SfuConfig::default();
        assert_eq!(c.sfu.bind_address, d.bind_address);
        assert_eq!(c.sfu.ice_connect_timeout_secs, d.ice_connect_timeout_secs);
        assert_eq!(c.sfu.leg_queue_packets, d.leg_queue_packets);
        assert!(c.deprecations().is_empty(), "{:?}", c.deprecations());
        assert_eq!(c.sfu.bandwidth_initial_kbps, d.bandwidth_initial_kbps);
        assert_eq!(c.sfu.bandwidth_min_kbps, d.bandwidth_min_kbps);
        assert_eq!(c.sfu.bandwidth_max_kbps, d.bandwidth_max_kbps);
        assert_eq!(
            c.sfu.max_participants_per_conference,
            d.max_participants_per_conference
        );
    }

    #[test]
    fn half_open_port_range_names_both_options() {
        let e = Config::from_toml_str("[sfu]\nudp_port_min = 40000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sfu.udp_port_min/sfu.udp_port_max"), "{e}");
    }

    #[test]
    fn inverted_port_range_is_refused() {
        let e = Config::from_toml_str("[sfu]\nudp_port_min = 50000\nudp_port_max = 40000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sfu.udp_port_min`"), "{e}");
    }

    #[test]
    fn web_client_options_are_checked() {
        let matrix = "[matrix]\nhomeserver_url = \"http://127.0.0.1:8008\"\nuser_id = \"@sfu:localhost\"\npassword = \"pw\"\n";
        let dir = std::env::temp_dir().join(format!("sluice-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let web = format!("[web]\ndir = {:?}\n", dir.display().to_string());
        // No index.html there yet.
        let e = Config::from_toml_str(&format!("{matrix}{web}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`web.dir`") && e.contains("index.html"), "{e}");
        std::fs::write(dir.join("index.html"), "<!doctype html>").unwrap();
        let c = Config::from_toml_str(&format!("{matrix}{web}")).unwrap();
        assert!(c.web.enabled());
        // The client calls through Matrix: without [matrix] it is refused.
        let e = Config::from_toml_str(&web).unwrap_err().to_string();
        assert!(e.contains("`web.dir`") && e.contains("[matrix]"), "{e}");
        let e = Config::from_toml_str(&format!("{matrix}{web}homeserver_url = \"matrix.org\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`web.homeserver_url`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = Config::from_toml_str("[sfu]\nbind_address = \"not-an-ip\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind_address"), "{e}");
    }

    #[test]
    fn unknown_option_is_refused() {
        let e = Config::from_toml_str("[sfu]\nbind_adress = \"127.0.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind_adress"), "{e}");
    }

    #[test]
    fn bandwidth_bounds_must_be_ordered() {
        for bad in [
            "bandwidth_min_kbps = 0",
            "bandwidth_initial_kbps = 20\nbandwidth_min_kbps = 50",
            "bandwidth_initial_kbps = 30000",
        ] {
            let e = Config::from_toml_str(&format!("[sfu]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("sfu.bandwidth_min_kbps"), "{bad}: {e}");
        }
        let c = Config::from_toml_str("[sfu]\nbandwidth_initial_kbps = 300\n").unwrap();
        assert_eq!(c.sfu.bandwidth_initial_kbps, 300);
    }

    #[test]
    fn zero_timeout_is_refused() {
        let e = Config::from_toml_str("[sfu]\nice_connect_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sfu.ice_connect_timeout_secs"), "{e}");
        let e = Config::from_toml_str("[sfu]\nice_lost_timeout_secs = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sfu.ice_lost_timeout_secs`: expected seconds between 2"));
        let (d, f) = SfuConfig::default().ice_lost_timeouts();
        assert_eq!((d.as_secs(), f.as_secs()), (5, 10));
    }

    #[test]
    fn matrix_options_are_checked_when_enabled() {
        let base = "[matrix]\nhomeserver_url = \"http://127.0.0.1:8008\"\nuser_id = \"@sfu:localhost\"\npassword = \"pw\"\n";
        assert!(Config::from_toml_str(base).unwrap().matrix.enabled());
        let e = Config::from_toml_str(&base.replace("http://", "ftp://"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("matrix.homeserver_url"), "{e}");
        let e = Config::from_toml_str(&base.replace("@sfu:localhost", "sfu"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("matrix.user_id"), "{e}");
        let e = Config::from_toml_str(&base.replace("password = \"pw\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("matrix.password"), "{e}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = Config::from_toml_str(
            "[matrix]\nhomeserver_url = \"http://h\"\nuser_id = \"@a:b\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn bad_log_level_is_refused() {
        let e = Config::from_toml_str("[log]\nlevel = \"sluice=loud[\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
    }
}
