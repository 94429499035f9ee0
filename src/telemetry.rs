//! Logging: tracing to journald when systemd started us (JOURNAL_STREAM is set), to
//! stderr otherwise. `RUST_LOG` overrides the config's filter; the filter can be changed
//! at run time (`set_filter`).
//!
//! Levels: `error` the station could not do its job; `warn` something recovered; `info`
//! lifecycle and configuration; `debug`/`trace` per-cycle and per-frame detail.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The handle that swaps the filter of the subscriber `init` installed (the subscriber is
/// process-global, so its handle is too).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
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

/// Replaces the log filter at run time (`PUT /api/v1/config` with `log.filter`). Fails
/// for a bad directive, or when `init` did not run (library tests).
pub fn set_filter(filter: &str) -> Result<(), String> {
    let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let handle = FILTER.get().ok_or("logging was not set up by this process")?;
    handle.reload(parsed).map_err(|e| e.to_string())
}
