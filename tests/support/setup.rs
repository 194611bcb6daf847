//! What every test sets up first: the SFU's test configuration and, when asked, the log.

use sluice::config::SfuConfig;

/// Sluice's log on the test's output, when asked for (`RUST_LOG=sluice=debug`).
pub fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn test_config() -> SfuConfig {
    SfuConfig {
        // Keep test failures quick when ICE never connects.
        ice_connect_timeout_secs: 20,
        ..SfuConfig::default()
    }
}
