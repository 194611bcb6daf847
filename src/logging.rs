//! Structured logging setup (tracing).

use crate::config::{LogConfig, LogFormat};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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

/// ERROR lines of dependencies that report something normal, dropped: `(target prefix,
/// text in the message)`. Operators alert on ERROR.
pub const BENIGN_ERRORS: &[(&str, &str)] = &[
    // webrtc-rs's SCTP, when the peer ends its data-channel association with an ABORT
    // chunk ("User-Initiated Abort"), as browsers do on every close of a call. Sluice logs
    // the session's end itself, with its reason.
    ("rtc_sctp", "abort chunk"),
    // matrix-sdk logs every failed request at ERROR, including a 404 for something that
    // is not there (a state event not yet sent, no key backup); the caller handles the
    // answer, and logs it when it matters.
    ("matrix_sdk::http_client", "status_code: 404"),
];

/// The layer that drops [`BENIGN_ERRORS`]. It looks only at ERROR events, and reads their
/// fields only when the target matches.
pub struct BenignErrors;

#[derive(Default)]
struct TargetAndMessage {
    target: String,
    message: String,
}

impl Visit for TargetAndMessage {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            // Records bridged from the `log` crate carry their target as a field.
            "log.target" => self.target = value.to_owned(),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl BenignErrors {
    /// Whether `event` is one of [`BENIGN_ERRORS`].
    pub fn is_benign(event: &Event<'_>) -> bool {
        if *event.metadata().level() != Level::ERROR {
            return false;
        }
        let target = event.metadata().target();
        let bridged = target == "log";
        if !bridged && !BENIGN_ERRORS.iter().any(|(t, _)| target.starts_with(t)) {
            return false;
        }
        let mut v = TargetAndMessage::default();
        event.record(&mut v);
        let target = if bridged { v.target.as_str() } else { target };
        BENIGN_ERRORS
            .iter()
            .any(|(t, m)| target.starts_with(t) && v.message.contains(m))
    }
}

impl<S: Subscriber> Layer<S> for BenignErrors {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        !Self::is_benign(event)
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level (as given:
/// nothing is quieted, but [`BENIGN_ERRORS`] are still dropped).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(effective_filter(&cfg.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(BenignErrors)
            .try_init(),
        LogFormat::Text => builder.finish().with(BenignErrors).try_init(),
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

    /// Counts the events that reach the layers after [`BenignErrors`].
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn benign_dependency_errors_are_dropped_and_others_kept() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let n = std::sync::Arc::new(AtomicUsize::new(0));
        let _ = tracing_log::LogTracer::init();
        let seen = |f: &dyn Fn()| {
            let sub = tracing_subscriber::registry()
                .with(BenignErrors)
                .with(Count(n.clone()));
            let before = n.load(Relaxed);
            tracing::subscriber::with_default(sub, f);
            n.load(Relaxed) - before
        };
        let sctp = "rtc_sctp::association";
        let abort =
            "handle_inbound got err: abort chunk, with following errors: User-Initiated Abort";
        assert_eq!(
            seen(&|| tracing::error!(target: "rtc_sctp::association", "{abort}")),
            0
        );
        // As webrtc-rs logs it: through the `log` crate.
        assert_eq!(seen(&|| log::error!(target: sctp, "{abort}")), 0);
        assert_eq!(
            seen(&|| log::error!(target: sctp, "[client] retransmission failure: T3-rtx (DATA)")),
            1
        );
        assert_eq!(seen(&|| log::warn!(target: sctp, "{abort}")), 1);
        assert_eq!(seen(&|| log::error!(target: "other", "{abort}")), 1);
        let not_found = "Error while sending request: Api(Server(ClientApi(Error { status_code: 404, body: Standard { kind: NotFound, message: \"Event not found.\" } })))";
        assert_eq!(
            seen(&|| tracing::error!(target: "matrix_sdk::http_client", "{not_found}")),
            0
        );
        let bad_gateway = not_found.replace("404", "502");
        assert_eq!(
            seen(&|| tracing::error!(target: "matrix_sdk::http_client", "{bad_gateway}")),
            1
        );
        assert_eq!(
            seen(&|| tracing::error!(target: "sluice::sfu", "{not_found}")),
            1
        );
    }
}
