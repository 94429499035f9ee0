//! The `alerts` service: gathers an observation of the station (pass rates from the core's
//! snapshot, degraded services, free disk under the state directory, the MQTT outbox
//! backlog), runs the rules of `core::alerts`, stores each change, and announces it on the
//! notification bus, from which MQTT publishes it and the WebSocket pushes it.
//!
//! It checks every `check_interval`, the pass rate also after every inspection and the
//! devices at every change of a service's state, so those alerts come at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{broadcast, watch};

use crate::bus::{Notification, Snapshot};
use crate::core::alerts::{AlertBook, AlertChange, AlertKey, AlertRules, Observation, StationObservation};
use crate::storage::{Storage, StorageError};
use crate::supervisor::{Phase, Readiness, ServiceContext, ServiceError, Supervisor};

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub rules: AlertRules,
    pub check_interval: Duration,
    /// Cleared alerts older than this are removed.
    pub keep_cleared: Duration,
}

pub struct Sources {
    pub storage: Storage,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub readiness: Readiness,
    pub notifications: broadcast::Sender<Notification>,
    pub state_dir: PathBuf,
    /// Camera drift reports; `None` when drift monitoring is off.
    pub drift: Option<watch::Receiver<crate::drift::Reports>>,
}

/// `config` may change at run time (`PUT /api/v1/config`): the next evaluation uses it.
pub fn spawn(supervisor: &mut Supervisor, config: watch::Receiver<AlertsConfig>, sources: Sources) {
    supervisor.spawn("alerts", Phase::Publish, move |ctx| run(config, sources, ctx));
}

async fn run(
    mut config: watch::Receiver<AlertsConfig>,
    mut sources: Sources,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let active = match sources.storage.call(|db| db.active_alerts()).await {
        Ok(active) => active,
        Err(StorageError::Stopped) => return Ok(()),
        Err(err) => return Err(ServiceError::new(err)),
    };
    let mut book =
        AlertBook::restore(active.iter().filter_map(|a| AlertKey::parse(&a.key).map(|key| (key, a.severity))));
    let mut notifications = sources.notifications.subscribe();
    let mut ticker = tokio::time::interval(config.borrow_and_update().check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut observation = Observation::default();
    let mut last_prune = None;
    ctx.set_ready();
    loop {
        tokio::select! {
            () = ctx.token.cancelled() => return Ok(()),
            Ok(()) = config.changed() => {
                ticker = tokio::time::interval(config.borrow_and_update().check_interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                continue;
            }
            _ = ticker.tick() => {
                observation = observe(&sources).await;
                if last_prune.is_none_or(|at: tokio::time::Instant| at.elapsed() >= Duration::from_secs(3600)) {
                    last_prune = Some(tokio::time::Instant::now());
                    let keep = config.borrow().keep_cleared;
                    let cutoff = Utc::now() - chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
                    if let Err(err) = sources.storage.call(move |db| db.prune_alerts(cutoff)).await {
                        tracing::warn!(cause = %err, "pruning old alerts failed");
                    }
                }
            }
            Some(()) = drift_changed(&mut sources.drift) => {
                observation.drift = drift(&sources.drift);
            }
            () = sources.readiness.changed() => {
                observation.degraded = degraded(&sources.readiness);
            }
            notification = notifications.recv() => match notification {
                Ok(Notification::InspectionCompleted(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    observation.stations = pass_rates(&sources.snapshots.borrow());
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
        let rules = config.borrow().rules.clone();
        for change in book.evaluate(&rules, &observation, Utc::now()) {
            if let Err(err) = record(&sources, change).await {
                if matches!(err, StorageError::Stopped) {
                    return Ok(());
                }
                tracing::error!(cause = %err, "an alert could not be stored");
            }
        }
    }
}

fn pass_rates(snapshot: &Snapshot) -> std::collections::BTreeMap<String, StationObservation> {
    snapshot
        .stations
        .iter()
        .map(|(id, s)| {
            (id.clone(), StationObservation { pass_rate_1h: s.pass_rate_1h, inspections_1h: s.inspections_1h })
        })
        .collect()
}

async fn observe(sources: &Sources) -> Observation {
    let stations = pass_rates(&sources.snapshots.borrow());
    let degraded = degraded(&sources.readiness);
    let disk = free_space(&sources.state_dir);
    let outbox_backlog = match sources.storage.call(|db| db.outbox_pending_total()).await {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(cause = %err, "outbox backlog unknown");
            0
        }
    };
    Observation { stations, degraded, disk, outbox_backlog, drift: drift(&sources.drift) }
}

/// Resolves at the next drift report (never when drift monitoring is off or has stopped).
async fn drift_changed(reports: &mut Option<watch::Receiver<crate::drift::Reports>>) -> Option<()> {
    match reports {
        Some(reports) => reports.changed().await.ok(),
        None => std::future::pending().await,
    }
}

fn drift(
    reports: &Option<watch::Receiver<crate::drift::Reports>>,
) -> std::collections::BTreeMap<String, (crate::core::drift::DriftSeverity, String)> {
    let Some(reports) = reports else { return Default::default() };
    let reports = reports.borrow().clone();
    reports
        .iter()
        .map(|(camera, report)| {
            let moved: Vec<String> = report
                .checks
                .iter()
                .filter(|c| c.drifted)
                .map(|c| format!("{} {:.1}σ", c.feature, c.shift_sigma))
                .collect();
            (camera.clone(), (report.severity, moved.join(", ")))
        })
        .collect()
}

fn degraded(readiness: &Readiness) -> std::collections::BTreeMap<String, String> {
    let mut degraded = readiness.degraded();
    degraded.remove("alerts");
    degraded
}

/// Free (for unprivileged users) and total bytes of the file system holding `dir`.
pub fn free_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize)))
}

async fn record(sources: &Sources, change: AlertChange) -> Result<(), StorageError> {
    let now = Utc::now();
    let stored = match change {
        AlertChange::Raised { key, severity, title, message } => {
            tracing::warn!(alert = key.render(), severity = severity.as_str(), message, "alert raised");
            let station = key.station().map(str::to_owned);
            sources
                .storage
                .call(move |db| db.raise_alert(&key.render(), station.as_deref(), severity, &title, &message, now))
                .await
                .map(Some)?
        }
        AlertChange::Cleared { key, message } => {
            tracing::info!(alert = key.render(), message, "alert cleared");
            sources.storage.call(move |db| db.clear_alert(&key.render(), now)).await?
        }
    };
    if let Some(alert) = stored {
        // Nobody listening is not an error.
        let _ = sources.notifications.send(Notification::Alert(Arc::new(alert)));
    }
    Ok(())
}
