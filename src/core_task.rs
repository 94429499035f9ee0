//! Runs [`Core`] as the single owner of station state: reads events in order, stamps them
//! with the clock, applies the effects (notifications) and publishes a fresh snapshot.
//! The clock lives here, not in `core`, so that the core stays pure.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::bus::{CoreEnds, Effect, Event, Snapshot};
use crate::core::Core;
use crate::storage::Storage;
use crate::supervisor::{ServiceContext, ServiceError};

/// How often the core hears `Tick`: windows expire and the heartbeat advances.
const TICK: Duration = Duration::from_secs(1);

/// Restores counters from storage, then serves events until cancelled; on cancellation
/// it handles the events already queued before returning.
pub async fn run(
    mut core: Core,
    station_ids: Vec<String>,
    storage: Storage,
    ends: CoreEnds,
    heartbeat: watch::Sender<chrono::DateTime<Utc>>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let CoreEnds { mut events, snapshots, notifications } = ends;
    for station_id in station_ids {
        let id = station_id.clone();
        let history = storage.call(move |db| db.station_history(&id, Utc::now())).await.map_err(ServiceError::new)?;
        core.restore(&station_id, history, Utc::now());
    }
    snapshots.send_replace(Arc::new(core.snapshot(Utc::now())));
    ctx.set_ready();

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = tick.tick() => Event::Tick,
            () = ctx.token.cancelled() => {
                events.close();
                while let Some(event) = events.recv().await {
                    apply(&mut core, event, &snapshots, &notifications);
                }
                break;
            }
        };
        apply(&mut core, event, &snapshots, &notifications);
        heartbeat.send_replace(Utc::now());
    }
    Ok(())
}

/// Handles one event, publishes the fresh snapshot and then the notifications, so a
/// subscriber reacting to a notification already reads the stats that include it.
fn apply(
    core: &mut Core,
    event: Event,
    snapshots: &watch::Sender<Arc<Snapshot>>,
    notifications: &tokio::sync::broadcast::Sender<crate::bus::Notification>,
) {
    let now = Utc::now();
    let effects = core.handle(event, now);
    snapshots.send_replace(Arc::new(core.snapshot(now)));
    for effect in effects {
        match effect {
            // No subscriber is not an error: nobody is listening right now.
            Effect::Publish(notification) => {
                let _ = notifications.send(notification);
            }
        }
    }
}
