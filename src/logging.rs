//! Structured logging setup (tracing).

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// The WebRTC stack's crates, kept at `error` unless `log.level` names them: at `info`
/// they log about 19 WARN lines per participant of a normal call (SRTP writes before the
/// keys exist, ICE pings before a candidate pair, SCTP's first packet, DTLS's server
/// name), none of which needs an operator.
pub const QUIET_TARGETS: &[&str] = &[
    "webrtc",
    "rtc",
    "rtc_ice",
    "rtc_dtls",
    "rtc_sctp",
    "rtc_srtp",
    "rtc_datachannel",
    "rtc_interceptor",
    "rtc_mdns",
];

/// `level` with `<target>=error` added for each [`QUIET_TARGETS`] entry it does not name.
pub fn effective_filter(level: &str) -> String {
    let named: Vec<&str> = level
        .split(',')
        .filter_map(|d| d.split('=').next())
        .map(|t| t.trim().split('[').next().unwrap_or("").trim())
        .collect();
    let mut out = level.trim().to_owned();
    for t in QUIET_TARGETS {
        if !named.iter().any(|n| n == t) {
            out.push_str(&format!(",{t}=error"));
        }
    }
    out
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level (as given:
/// nothing is quieted).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(effective_filter(&cfg.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webrtc_stack_is_quieted_unless_named() {
        let f = effective_filter("info");
        assert!(f.starts_with("info,"), "{f}");
        assert!(
            f.contains(",rtc=error") && f.contains(",rtc_ice=error"),
            "{f}"
        );
        let named = effective_filter("info,rtc_ice=debug,webrtc=warn");
        assert!(
            named.contains("rtc_ice=debug") && !named.contains("rtc_ice=error"),
            "{named}"
        );
        assert!(!named.contains("webrtc=error"), "{named}");
        assert!(named.contains("rtc=error"), "{named}");
        assert!(EnvFilter::try_new(effective_filter("sluice=debug,info")).is_ok());
    }
}
