//! Logging: tracing to journald when systemd started us (JOURNAL_STREAM is set), to
//! stderr otherwise. `RUST_LOG` overrides the config's filter.
//!
//! Levels: `error` the station could not do its job; `warn` something recovered; `info`
//! lifecycle and configuration; `debug`/`trace` per-cycle and per-frame detail.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                registry.with(journald.with_syslog_identifier("stationd".to_owned())).init();
                return;
            }
            // journald absent (a container, a chroot): fall back to stderr, and say so.
            Err(err) => {
                registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
                tracing::warn!(cause = %err, "journald unavailable; logging to stderr");
                return;
            }
        }
    }
    registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
}
