//! MQTT publishing (rumqttc) from the durable outbox: one client per station, so that each
//! station's retained status topic has its own last will.
//!
//! Delivery: every committed record has an outbox row written in the same transaction.
//! The publisher sends the oldest undelivered row of its station, QoS 1, one at a time
//! (in-flight window 1, so order is kept without correlating packet ids across
//! reconnects), and marks it delivered only when the broker's PUBACK for that packet id
//! arrives. A lost connection drops the client entirely; the next connection starts again
//! from the oldest undelivered row. That is at-least-once: a message whose PUBACK was lost
//! is sent again, and subscribers deduplicate by `id` / detect gaps by `message_seq`.
//!
//! rumqttc's `EventLoop::poll` is never cancelled: a poll dropped half-way through a
//! connect leaves the broker with a session that vanishes as the next one (same client
//! id) arrives, and brokers may then close the new one, costing a reconnect and a
//! duplicate. So the loop owns one poll future at a time ([`poll_owned`]) and lets the
//! other `select!` branches run beside it.
//!
//! Topics and payloads: docs/mqtt.md. This module is the only one that knows them.

mod payload;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::bus::Notification;
use crate::config::MqttConfig;
use crate::storage::{OutboxRecord, Storage};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

pub fn inspection_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/inspection")
}

pub fn tightening_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/tightening")
}

pub fn anomaly_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/anomaly")
}

/// Finished unit records (assembly coaching), in the REST record's JSON.
pub fn unit_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/assembly/records")
}

/// The coaching state (retained): assembly, step, state, serial, last record.
pub fn coaching_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/assembly/state")
}

pub fn status_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/status")
}

pub fn alerts_topic(station_id: &str) -> String {
    format!("stationd/{station_id}/alerts")
}

/// Retained on the status topic while connected; the last will replaces it with OFFLINE.
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt TLS: cannot read {path}: {source}")]
    TlsFile { path: std::path::PathBuf, source: rustls_pki_types::pem::Error },
    #[error("mqtt TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the TLS client configuration (ring provider) from the configured PEM files.
pub fn tls_config(config: &MqttConfig) -> Result<Option<Arc<rustls::ClientConfig>>, MqttError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(tls) = &config.tls else { return Ok(None) };
    let file_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| MqttError::TlsFile { path, source }
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca_file).map_err(file_error(&tls.ca_file))? {
        roots.add(cert.map_err(file_error(&tls.ca_file))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &tls.client_auth {
        Some((cert_file, key_file)) => {
            let certs = CertificateDer::pem_file_iter(cert_file)
                .map_err(file_error(cert_file))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(file_error(cert_file))?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(file_error(key_file))?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// What the API shows about one station's MQTT link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    pub connected: bool,
    pub delivered: u64,
    pub last_error: Option<String>,
}

/// Read side for the REST API.
#[derive(Clone)]
pub struct MqttHandle {
    pub broker: String,
    pub links: BTreeMap<String, watch::Receiver<LinkState>>,
}

/// Starts one publisher per station.
pub fn spawn(
    supervisor: &mut Supervisor,
    config: MqttConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    station_ids: &[String],
    storage: Storage,
    notifications: &broadcast::Sender<Notification>,
) -> MqttHandle {
    let config = Arc::new(config);
    let mut links = BTreeMap::new();
    for station_id in station_ids {
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        links.insert(station_id.clone(), link_rx);
        let publisher = Publisher {
            station_id: station_id.clone(),
            config: config.clone(),
            tls: tls.clone(),
            storage: storage.clone(),
            link: link_tx,
            last_backlog_warning: None,
            alerts: VecDeque::new(),
            coaching: None,
            coaching_pending: false,
        };
        let notifications = notifications.subscribe();
        supervisor.spawn(format!("mqtt[{station_id}]"), Phase::Publish, move |ctx| publisher.run(notifications, ctx));
    }
    MqttHandle { broker: format!("{}:{}", config.host, config.port), links }
}

struct Publisher {
    station_id: String,
    config: Arc<MqttConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
    storage: Storage,
    link: watch::Sender<LinkState>,
    last_backlog_warning: Option<Instant>,
    /// Alerts waiting for a connection (in memory: an alert is about now).
    alerts: VecDeque<Vec<u8>>,
    /// The newest coaching state (retained on its topic), and whether the broker lacks it.
    coaching: Option<Vec<u8>>,
    coaching_pending: bool,
}

/// Alerts kept while the broker is unreachable; older ones are dropped first.
const MAX_PENDING_ALERTS: usize = 100;

/// What a queued publish was, in the order rumqttc will report `Outgoing::Publish`.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Status,
    Alert,
    Coaching,
    Outbox(i64),
}

/// Per-connection state; dropped with the connection.
#[derive(Default)]
struct Connection {
    connected: bool,
    /// Publishes queued to rumqttc, not yet given a packet id.
    queued: VecDeque<Sent>,
    /// The outbox row on the wire: its seq, and its packet id once known.
    in_flight: Option<(i64, Option<u16>)>,
}

impl Connection {
    /// rumqttc reported the packet id of the oldest queued publish.
    fn published(&mut self, pkid: u16) {
        if let Some(Sent::Outbox(seq)) = self.queued.pop_front()
            && let Some((in_flight, pending_pkid)) = &mut self.in_flight
            && *in_flight == seq
        {
            *pending_pkid = Some(pkid);
        }
    }

    /// The outbox row a PUBACK acknowledges, if it is the one in flight.
    fn acked(&self, pkid: u16) -> Option<i64> {
        match self.in_flight {
            Some((seq, Some(in_flight_pkid))) if in_flight_pkid == pkid => Some(seq),
            _ => None,
        }
    }
}

enum Ended {
    Cancelled,
    Lost(String),
}

/// One `EventLoop::poll` that owns the event loop and hands it back with the event, so
/// that it can stay pending across `select!` iterations instead of being cancelled.
type Polling = BoxFuture<'static, (Result<Event, ConnectionError>, EventLoop)>;

fn poll_owned(mut eventloop: EventLoop) -> Polling {
    async move {
        let event = eventloop.poll().await;
        (event, eventloop)
    }
    .boxed()
}

const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How long an orderly stop waits for the in-flight PUBACK and the offline status.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Publisher {
    async fn run(
        mut self,
        mut notifications: broadcast::Receiver<Notification>,
        ctx: ServiceContext,
    ) -> Result<(), ServiceError> {
        ctx.set_ready();
        let mut delay = RECONNECT_MIN;
        loop {
            match self.connection(&mut notifications, &ctx).await {
                Ended::Cancelled => return Ok(()),
                Ended::Lost(reason) => {
                    let was_connected = self.link.borrow().connected;
                    self.link.send_modify(|l| {
                        l.connected = false;
                        l.last_error = Some(reason.clone());
                    });
                    if was_connected {
                        tracing::warn!(station = self.station_id, cause = reason, "MQTT connection lost; reconnecting");
                        delay = RECONNECT_MIN;
                    } else {
                        tracing::debug!(station = self.station_id, cause = reason, "MQTT connect failed");
                    }
                }
            }
            // Exponential backoff with jitter, so a fleet of stations does not reconnect in step.
            let jitter = Duration::from_millis((uuid::Uuid::new_v4().as_u128() % 500) as u64);
            tokio::select! {
                () = tokio::time::sleep(delay + jitter) => {}
                () = ctx.token.cancelled() => return Ok(()),
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }

    fn options(&self) -> MqttOptions {
        let client_id = format!("{}-{}", self.config.client_id, self.station_id);
        let mut options = MqttOptions::new(client_id, self.config.host.clone(), self.config.port);
        options.set_keep_alive(self.config.keep_alive);
        // A clean session: after a reconnect, the outbox (not rumqttc's memory) decides
        // what is sent again.
        options.set_clean_session(true);
        options.set_inflight(4);
        options.set_last_will(LastWill::new(status_topic(&self.station_id), OFFLINE, QoS::AtLeastOnce, true));
        if let Some((user, password)) = &self.config.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        options
    }

    async fn connection(
        &mut self,
        notifications: &mut broadcast::Receiver<Notification>,
        ctx: &ServiceContext,
    ) -> Ended {
        let (client, eventloop) = AsyncClient::new(self.options(), 16);
        let mut polling = poll_owned(eventloop);
        let mut conn = Connection::default();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        loop {
            tokio::select! {
                (event, eventloop) = &mut polling => {
                    polling = poll_owned(eventloop);
                    match event {
                        Ok(event) => {
                            if let Err(reason) = self.on_event(event, &client, &mut conn).await {
                                return Ended::Lost(reason);
                            }
                        }
                        Err(err) => return Ended::Lost(err.to_string()),
                    }
                }
                notification = notifications.recv() => {
                    let ours = match &notification {
                        Ok(Notification::InspectionCompleted(summary)) => summary.station_id == self.station_id,
                        Ok(Notification::TighteningCompleted(summary)) => {
                            summary.station_id.as_deref() == Some(self.station_id.as_str())
                        }
                        Ok(Notification::Alert(alert)) => {
                            // Station-wide alerts (devices, disk) go to every station's topic.
                            if alert.station_id.as_deref().is_none_or(|s| s == self.station_id) {
                                self.queue_alert(payload::alert_record(alert));
                                if let Err(reason) = self.send_alerts(&client, &mut conn) {
                                    return Ended::Lost(reason);
                                }
                            }
                            false
                        }
                        Ok(Notification::Coaching(status)) => {
                            if status.station_id == self.station_id {
                                self.coaching = Some(payload::coaching_state(status));
                                self.coaching_pending = true;
                                if let Err(reason) = self.send_coaching(&client, &mut conn) {
                                    return Ended::Lost(reason);
                                }
                            }
                            false
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    };
                    if ours && let Err(reason) = self.send_next(&client, &mut conn).await {
                        return Ended::Lost(reason);
                    }
                }
                _ = housekeeping.tick() => {
                    self.housekeeping().await;
                    let sent = self.send_alerts(&client, &mut conn);
                    if let Err(reason) = sent.and(self.send_next(&client, &mut conn).await) {
                        return Ended::Lost(reason);
                    }
                }
                () = ctx.token.cancelled() => {
                    self.stop(&client, polling, &mut conn).await;
                    return Ended::Cancelled;
                }
            }
        }
    }

    async fn on_event(&mut self, event: Event, client: &AsyncClient, conn: &mut Connection) -> Result<(), String> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                conn.connected = true;
                self.link.send_modify(|l| {
                    l.connected = true;
                    l.last_error = None;
                });
                tracing::info!(station = self.station_id, broker = %format!("{}:{}", self.config.host, self.config.port), "MQTT connected");
                client
                    .try_publish(status_topic(&self.station_id), QoS::AtLeastOnce, true, ONLINE)
                    .map_err(|e| e.to_string())?;
                conn.queued.push_back(Sent::Status);
                self.send_alerts(client, conn)?;
                // Again on every connection: one that dropped may have lost the last state.
                self.coaching_pending = self.coaching.is_some();
                self.send_coaching(client, conn)?;
                self.send_next(client, conn).await?;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => conn.published(pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = conn.acked(ack.pkid) {
                    self.delivered(conn, seq).await?;
                    self.send_next(client, conn).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The broker acknowledged outbox row `seq`: record it. The row leaves flight either
    /// way; if the update fails it is simply sent again later (at-least-once).
    async fn delivered(&mut self, conn: &mut Connection, seq: i64) -> Result<(), String> {
        conn.in_flight = None;
        self.storage
            .call(move |db| db.mark_delivered(seq, Utc::now()))
            .await
            .map_err(|e| format!("cannot mark outbox row {seq} delivered: {e}"))?;
        self.link.send_modify(|l| l.delivered += 1);
        Ok(())
    }

    /// Puts the oldest undelivered message on the wire, unless one is already in flight.
    async fn send_next(&mut self, client: &AsyncClient, conn: &mut Connection) -> Result<(), String> {
        while conn.connected && conn.in_flight.is_none() {
            let station_id = self.station_id.clone();
            let next = self.storage.call(move |db| db.next_outbox(&station_id)).await.map_err(|e| e.to_string())?;
            let Some(message) = next else { return Ok(()) };
            let Some(record) = &message.record else {
                // Deleted before it could be announced: nothing to say, move on.
                tracing::warn!(
                    station = self.station_id,
                    outbox_seq = message.seq,
                    "record deleted before MQTT delivery"
                );
                let seq = message.seq;
                self.storage.call(move |db| db.mark_delivered(seq, Utc::now())).await.map_err(|e| e.to_string())?;
                continue;
            };
            let (topic, body) = match record {
                OutboxRecord::Inspection(record) => {
                    (inspection_topic(&self.station_id), payload::inspection(record, message.station_seq))
                }
                OutboxRecord::Tightening(record) => {
                    (tightening_topic(&self.station_id), payload::tightening(record, message.station_seq))
                }
                OutboxRecord::UnitRecord(unit, events) => {
                    (unit_topic(&self.station_id), payload::unit_record(unit, events, message.station_seq))
                }
                OutboxRecord::PipelineEvent(event) => {
                    (anomaly_topic(&self.station_id), payload::anomaly(event, message.station_seq))
                }
            };
            client.try_publish(topic, QoS::AtLeastOnce, false, body).map_err(|e| e.to_string())?;
            conn.queued.push_back(Sent::Outbox(message.seq));
            conn.in_flight = Some((message.seq, None));
        }
        Ok(())
    }

    fn send_coaching(&mut self, client: &AsyncClient, conn: &mut Connection) -> Result<(), String> {
        if conn.connected
            && self.coaching_pending
            && let Some(state) = &self.coaching
        {
            self.coaching_pending = false;
            client
                .try_publish(coaching_topic(&self.station_id), QoS::AtLeastOnce, true, state.clone())
                .map_err(|e| e.to_string())?;
            conn.queued.push_back(Sent::Coaching);
        }
        Ok(())
    }

    fn queue_alert(&mut self, payload: Vec<u8>) {
        if self.alerts.len() == MAX_PENDING_ALERTS {
            self.alerts.pop_front();
        }
        self.alerts.push_back(payload);
    }

    fn send_alerts(&mut self, client: &AsyncClient, conn: &mut Connection) -> Result<(), String> {
        while conn.connected
            && let Some(alert) = self.alerts.pop_front()
        {
            client
                .try_publish(alerts_topic(&self.station_id), QoS::AtLeastOnce, false, alert)
                .map_err(|e| e.to_string())?;
            conn.queued.push_back(Sent::Alert);
        }
        Ok(())
    }

    /// Retention and the backlog warning.
    async fn housekeeping(&mut self) {
        let (station_id, config) = (self.station_id.clone(), self.config.clone());
        let outcome = self
            .storage
            .call(move |db| {
                let dropped =
                    db.prune_outbox(&station_id, Utc::now(), config.outbox_max_age, config.outbox_max_rows)?;
                Ok((dropped, db.outbox_backlog(&station_id)?.0))
            })
            .await;
        match outcome {
            Ok((dropped, backlog)) => {
                if dropped > 0 {
                    tracing::error!(
                        station = self.station_id,
                        dropped,
                        "MQTT outbox retention dropped undelivered messages"
                    );
                    let message = format!(
                        "{dropped} undelivered messages (inspections, tightenings) dropped by the outbox retention"
                    );
                    self.queue_alert(payload::alert(
                        payload::Severity::Critical,
                        "MQTT messages dropped",
                        &message,
                        "mqtt",
                    ));
                }
                let due = self.last_backlog_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
                if backlog > self.config.outbox_warn_rows && due {
                    self.last_backlog_warning = Some(Instant::now());
                    tracing::warn!(station = self.station_id, backlog, "MQTT outbox backlog growing");
                }
            }
            Err(err) => tracing::error!(station = self.station_id, cause = %err, "MQTT outbox housekeeping failed"),
        }
    }

    /// Orderly stop: wait briefly for the in-flight PUBACK, say "offline" (the last will
    /// only fires on an unclean disconnect) and disconnect. `polling` is the poll under way.
    async fn stop(&mut self, client: &AsyncClient, mut polling: Polling, conn: &mut Connection) {
        if !conn.connected {
            return;
        }
        let grace = Instant::now() + STOP_GRACE;
        // Set once "offline" and the disconnect are queued: until then the in-flight
        // PUBACK is awaited; after, the disconnect reaching the wire.
        let mut end: Option<Instant> = None;
        loop {
            if end.is_none() && (conn.in_flight.is_none() || Instant::now() >= grace) {
                let _ = client.try_publish(status_topic(&self.station_id), QoS::AtLeastOnce, true, OFFLINE);
                let _ = client.try_disconnect();
                end = Some(grace.max(Instant::now() + Duration::from_millis(200)));
            }
            let (event, eventloop) = match tokio::time::timeout_at(end.unwrap_or(grace), &mut polling).await {
                Ok(polled) => polled,
                Err(_) if end.is_none() => continue, // grace over: say offline anyway
                Err(_) => break,
            };
            polling = poll_owned(eventloop);
            match event {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(seq) = conn.acked(ack.pkid)
                        && let Err(reason) = self.delivered(conn, seq).await
                    {
                        tracing::error!(station = self.station_id, cause = reason, "outbox row stays undelivered");
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => conn.published(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) if end.is_some() => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.link.send_modify(|l| l.connected = false);
        tracing::info!(station = self.station_id, "MQTT disconnected");
    }
}
