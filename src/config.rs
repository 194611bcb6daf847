//! Typed configuration, loaded from a TOML file and validated with messages that name the
//! option and the expected form.
//!
//! Every option has a default, so an empty file is a valid configuration for a local test
//! instance. `deploy/sluice.example.toml` lists every option with its default.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Media (SFU) settings: sockets, timeouts, limits.
    pub sfu: SfuConfig,
    /// Logging settings.
    pub log: LogConfig,
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
    /// Packets queued per subscriber leg between the forwarder and the leg's writer; a leg
    /// that falls further behind loses packets (counted as `queue_full`).
    pub leg_queue_packets: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            udp_port_min: 0,
            udp_port_max: 0,
            nat_1to1_ips: Vec::new(),
            ice_connect_timeout_secs: 30,
            keyframe_request_min_interval_ms: 1000,
            max_participants_per_conference: 100,
            max_conferences: 1000,
            max_subscriptions_per_participant: 200,
            leg_queue_packets: 512,
        }
    }
}

impl SfuConfig {
    /// The ICE connect deadline as a duration.
    pub fn ice_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.ice_connect_timeout_secs)
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
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
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
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    option,
                    expected: "a number of at least 1",
                    got: value.to_string(),
                });
            }
        }
        if !(16..=65_536).contains(&s.leg_queue_packets) {
            return Err(ConfigError::Invalid {
                option: "sfu.leg_queue_packets",
                expected: "a packet count between 16 and 65536",
                got: s.leg_queue_packets.to_string(),
            });
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
        Ok(())
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
    fn example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../deploy/sluice.example.toml");
        let c = Config::from_toml_str(text).unwrap();
        let d = SfuConfig::default();
        assert_eq!(c.sfu.bind_address, d.bind_address);
        assert_eq!(c.sfu.ice_connect_timeout_secs, d.ice_connect_timeout_secs);
        assert_eq!(c.sfu.leg_queue_packets, d.leg_queue_packets);
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
    fn zero_timeout_is_refused() {
        let e = Config::from_toml_str("[sfu]\nice_connect_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sfu.ice_connect_timeout_secs"), "{e}");
    }

    #[test]
    fn bad_log_level_is_refused() {
        let e = Config::from_toml_str("[log]\nlevel = \"sluice=loud[\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
    }
}
