//! Runs [`Core`] as the single owner of station state: reads events in order, stamps them
//! with the clock, applies the effects (notifications) and publishes a fresh snapshot.
//! The clock lives here, not in `core`, so that the core stays pure.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::bus::{CoreEnds, Effect, Event};
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
                    apply(&mut core, event, &notifications);
                }
                break;
            }
        };
        apply(&mut core, event, &notifications);
        snapshots.send_replace(Arc::new(core.snapshot(Utc::now())));
        heartbeat.send_replace(Utc::now());
    }
    snapshots.send_replace(Arc::new(core.snapshot(Utc::now())));
    Ok(())
}

fn apply(core: &mut Core, event: Event, notifications: &tokio::sync::broadcast::Sender<crate::bus::Notification>) {
    for effect in core.handle(event, Utc::now()) {
        match effect {
            // No subscriber is not an error: nobody is listening right now.
            Effect::Publish(notification) => {
                let _ = notifications.send(notification);
            }
        }
    }
}
