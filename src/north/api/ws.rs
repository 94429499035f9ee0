//! `GET /api/v1/ws`: the dashboard's push channel, in the inspection seed's message shapes
//! (`{"type", "data"}`): `stats` on connect and after every result, `ping` with the
//! current stats every 5 s, `inspection` with the same JSON as
//! `GET /api/v1/inspections/{id}`, `tightening` with that of `/tightenings/{id}`, and
//! `alert` with that of `/alerts` when an alert is raised, escalated or cleared.
//!
//! Each connection is its own task reading the core's notifications; a client too slow to
//! keep up skips what it missed (it reads the lists to catch up) and is told so with a
//! `lagged` message. Connections close when the API stops.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiState;
use super::dto::{AlertDto, InspectionDto, StationDto, TighteningDto};
#[allow(unused_imports, reason = "named by the OpenAPI attributes")]
use super::error::{ErrorBody, Guarded};
use crate::bus::Notification;

/// How often a `ping` with the current stats goes out.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Serialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum Push {
    Ping(Vec<StationDto>),
    Stats(Vec<StationDto>),
    Inspection(Box<InspectionDto>),
    Tightening(Box<TighteningDto>),
    Alert(Box<AlertDto>),
    Lagged { missed: u64 },
}

/// The dashboard WebSocket: stats, inspections, tightenings, alerts and a ping every 5 s.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "events",
    responses((status = 101, description = "WebSocket: {type, data} messages stats, ping, inspection, tightening, alert, lagged"), Guarded),
    security(("bearer" = []))
)]
pub async fn upgrade(State(state): State<ApiState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(state, socket))
}

fn stations(state: &ApiState) -> Vec<StationDto> {
    let snapshot = state.snapshots.borrow().clone();
    snapshot.stations.iter().map(|(id, s)| StationDto::new(id, s)).collect()
}

async fn send(socket: &mut WebSocket, push: &Push) -> Result<(), axum::Error> {
    let text = serde_json::to_string(push).expect("plain data serialises");
    socket.send(Message::Text(text.into())).await
}

async fn serve(state: ApiState, mut socket: WebSocket) {
    let mut notifications = state.notifications.subscribe();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    if send(&mut socket, &Push::Stats(stations(&state))).await.is_err() {
        return;
    }
    loop {
        let push = tokio::select! {
            () = state.stop.cancelled() => break,
            _ = ping.tick() => Push::Ping(stations(&state)),
            incoming = socket.recv() => match incoming {
                // Clients say nothing we act on; a close or an error ends the connection.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            notification = notifications.recv() => match notification {
                Ok(Notification::InspectionCompleted(summary)) => {
                    let id = summary.id;
                    match state.inspector.storage.call(move |db| db.get(id)).await {
                        Ok(Some(record)) => Push::Inspection(Box::new(InspectionDto::from(&record))),
                        // Deleted already, or storage stopping: nothing to show.
                        _ => continue,
                    }
                }
                Ok(Notification::TighteningCompleted(summary)) => {
                    let seq = summary.seq;
                    match state.inspector.storage.call(move |db| db.tightening_by_seq(seq)).await {
                        Ok(Some(record)) => Push::Tightening(Box::new(TighteningDto::from(&record))),
                        _ => continue,
                    }
                }
                Ok(Notification::Alert(alert)) => Push::Alert(Box::new(AlertDto::from(&*alert))),
                // The coaching WebSocket carries these.
                Ok(Notification::Coaching(_)) => continue,
                Err(RecvError::Lagged(missed)) => Push::Lagged { missed },
                Err(RecvError::Closed) => break,
            },
        };
        let refresh = matches!(push, Push::Inspection(_));
        if send(&mut socket, &push).await.is_err() {
            return;
        }
        if refresh && send(&mut socket, &Push::Stats(stations(&state))).await.is_err() {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
