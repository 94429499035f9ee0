//! The thin I/O loop around `Session`: dials the controller, reads and frames bytes,
//! writes telegrams, sleeps until the session's next deadline, commits results before
//! acknowledging them, and reconnects with backoff. `connection` is generic over the
//! stream (`AsyncRead + AsyncWrite`); tests drive it over TCP against `sim.rs`.
//!
//! Release control and tool locking live here too, because they react to results and to
//! the link coming up: with release control on, the tool is disabled whenever the link
//! comes up and after a released batch is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::messages::{BatchStatus, LimitStatus, Tightening};
use super::session::{
    Backoff, CloseReason, Command, CommandError, Output, ResultHistory, ResultSource, Session, SessionEvent,
};
use super::{LinkState, WrenchError, WrenchSettings, WrenchStatus};
use crate::bus::{Event, TighteningSummary};
use crate::storage::{NewTightening, Storage};

/// What the API and the station ask of one wrench link.
#[derive(Debug)]
pub enum LinkRequest {
    Command(Command, oneshot::Sender<Result<(), WrenchError>>),
    /// Release the tool for `count` OK tightenings with `pset` (release control).
    Release {
        pset: Option<u32>,
        count: u32,
        reply: oneshot::Sender<Result<(), WrenchError>>,
    },
    /// Lock (disable and refuse enables) or unlock the tool.
    Lock(bool, oneshot::Sender<Result<(), WrenchError>>),
    /// Forget the local error and alarm state.
    Clear,
}

/// Everything a link needs from the rest of the daemon.
#[derive(Clone)]
pub struct LinkContext {
    pub storage: Storage,
    pub events: mpsc::Sender<Event>,
    pub status: Arc<watch::Sender<WrenchStatus>>,
    pub release_control: watch::Receiver<bool>,
}

/// Runs until `token` is cancelled: connect, serve, back off, again.
pub async fn run(
    settings: WrenchSettings,
    ctx: LinkContext,
    mut requests: mpsc::Receiver<LinkRequest>,
    token: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max, settings.busy_backoff);
    let mut grant = Grant::default();
    loop {
        ctx.status.send_modify(|s| s.link = LinkState::Connecting);
        let address = format!("{}:{}", settings.address, settings.port);
        let connected = tokio::select! {
            () = token.cancelled() => return,
            result = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(&address)) => result,
        };
        let reason = match connected {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (reason, reached_ready) =
                    connection(stream, &settings, &ctx, &mut requests, &mut grant, &token).await;
                if reached_ready {
                    backoff.reset();
                }
                reason
            }
            Ok(Err(err)) => CloseReason::Protocol(format!("cannot connect to {address}: {err}")),
            Err(_) => CloseReason::Protocol(format!("connecting to {address} timed out")),
        };
        if token.is_cancelled() {
            ctx.status.send_modify(|s| s.link = LinkState::Down { reason: "stopped".into() });
            return;
        }
        let delay = backoff.next_delay(&reason, fastrand::f64());
        tracing::warn!(wrench = settings.id, %reason, retry_in_ms = delay.as_millis() as u64, "wrench link down");
        ctx.status.send_modify(|s| {
            s.link = LinkState::Down { reason: reason.to_string() };
            s.reconnects += 1;
        });
        let retry_at = Instant::now() + delay;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep_until(retry_at) => break,
                request = requests.recv() => match request {
                    Some(request) => refuse(request, &mut grant, &ctx.status),
                    None => return,
                },
            }
        }
    }
}

/// Answers a request while the link is down.
fn refuse(request: LinkRequest, grant: &mut Grant, status: &watch::Sender<WrenchStatus>) {
    match request {
        LinkRequest::Command(_, reply) | LinkRequest::Release { reply, .. } => {
            let _ = reply.send(Err(WrenchError::Disconnected));
        }
        LinkRequest::Lock(locked, reply) => {
            // A lock is remembered and applied when the link comes up.
            grant.locked = locked;
            grant.publish(status);
            let _ = reply.send(Ok(()));
        }
        LinkRequest::Clear => clear(status),
    }
}

/// Release-control and lock state of one tool, kept across reconnects.
#[derive(Default)]
struct Grant {
    /// OK tightenings still released; `None` when nothing is released.
    remaining: Option<u32>,
    locked: bool,
}

impl Grant {
    /// Shows the grant in the wrench's status; called after every change.
    fn publish(&self, status: &watch::Sender<WrenchStatus>) {
        status.send_modify(|s| {
            s.locked = self.locked;
            s.released = self.remaining;
        });
    }
}

const LOCKED: &str = "the tool is locked; unlock it first";

/// `LinkRequest::Clear`, connected or not.
fn clear(status: &watch::Sender<WrenchStatus>) {
    status.send_modify(|s| {
        s.alarm = None;
        s.last_error = None;
    });
}

/// Commands sent to the session and not answered yet, by request id.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
}

impl Pending {
    /// Hands `command` to the session. `reply` is `None` for commands the link sends
    /// itself; `what` names those in the log when they fail.
    fn submit(
        &mut self,
        session: &mut Session,
        command: Command,
        what: &'static str,
        reply: Option<oneshot::Sender<Result<(), WrenchError>>>,
    ) {
        self.next_id += 1;
        self.waiters.insert(self.next_id, Waiter::new(&command, what, reply));
        session.command(self.next_id, command, now());
    }
}

/// Where a command's answer goes.
struct Waiter {
    /// `None` for commands the link sends itself (release control, set time); their
    /// failures are logged.
    reply: Option<oneshot::Sender<Result<(), WrenchError>>>,
    what: &'static str,
    /// The tool's enabled state once the controller accepts the command.
    enables: Option<bool>,
}

impl Waiter {
    fn new(command: &Command, what: &'static str, reply: Option<oneshot::Sender<Result<(), WrenchError>>>) -> Waiter {
        let enables = match command {
            Command::EnableTool => Some(true),
            Command::DisableTool => Some(false),
            _ => None,
        };
        Waiter { reply, what, enables }
    }
}

/// Serves one connection until the session closes. Returns why, and whether the session
/// got as far as Ready (which resets the backoff).
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    settings: &WrenchSettings,
    ctx: &LinkContext,
    requests: &mut mpsc::Receiver<LinkRequest>,
    grant: &mut Grant,
    token: &CancellationToken,
) -> (CloseReason, bool) {
    let wrench_id = settings.id.clone();
    let history = {
        let (id, window) = (wrench_id.clone(), settings.session.backfill_limit);
        match ctx.storage.call(move |db| db.tightening_history(&id, window)).await {
            Ok((newest, missing)) => ResultHistory { newest, missing },
            Err(err) => return (CloseReason::Protocol(format!("storage: {err}")), false),
        }
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut session = Session::new(settings.session.clone(), history, now());
    let mut pending = Pending::default();
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    let mut reached_ready = false;
    let mut stop_deadline: Option<Instant> = None;
    let mut release_control = ctx.release_control.clone();
    let mut release_watch_open = true;
    session.start(now());
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(telegram) => {
                    let mut bytes = Vec::with_capacity(telegram.data.len() + 21);
                    if let Err(err) = codec::encode(&telegram, &mut bytes) {
                        tracing::error!(wrench = wrench_id, cause = %err, "cannot encode a telegram");
                        continue;
                    }
                    tracing::trace!(wrench = wrench_id, telegram = %String::from_utf8_lossy(&bytes), "sent");
                    if let Err(err) = writer.write_all(&bytes).await {
                        session.on_link_lost(CloseReason::Protocol(format!("write failed: {err}")));
                    }
                }
                Output::Persist { tightening, source, ack } => {
                    let ok = tightening.ok;
                    match persist(settings, ctx, *tightening, source).await {
                        Ok(()) => {
                            session.on_persisted(ack, now());
                            if ok && source == ResultSource::Live {
                                on_ok_tightening(&mut session, grant, &mut pending);
                                grant.publish(&ctx.status);
                            }
                        }
                        Err(err) => {
                            // Not acknowledged: the controller keeps it and we fetch it again
                            // after reconnecting.
                            tracing::error!(wrench = wrench_id, cause = %err, "cannot store a tightening result");
                            session.on_link_lost(CloseReason::Protocol(format!("storage: {err}")));
                        }
                    }
                }
                Output::Ready(info) => {
                    reached_ready = true;
                    tracing::info!(
                        wrench = wrench_id,
                        controller = info.controller_name,
                        supplier = info.supplier_code.as_deref().unwrap_or(""),
                        link_level_acks = session.link_level(),
                        "wrench link up"
                    );
                    ctx.status.send_modify(|s| {
                        s.link = LinkState::Up;
                        s.link_level_acks = session.link_level();
                        s.controller_name = Some(info.controller_name.clone());
                        s.controller_serial = info.serial_number.clone();
                        s.supplier_code = info.supplier_code.clone();
                        s.controller_software = info.controller_software.clone();
                    });
                    if settings.set_time_on_connect {
                        pending.submit(&mut session, Command::SetTime(super::local_time_now()), "set time", None);
                    }
                    if grant.locked || (*release_control.borrow() && grant.remaining.is_none()) {
                        pending.submit(&mut session, Command::DisableTool, "disable tool", None);
                    }
                }
                Output::Baseline(newest) => {
                    tracing::info!(wrench = wrench_id, newest, "first link: results up to this one predate stationd");
                    let id = wrench_id.clone();
                    if let Err(err) = ctx.storage.call(move |db| db.set_tightening_baseline(&id, newest)).await {
                        session.on_link_lost(CloseReason::Protocol(format!("storage: {err}")));
                    }
                }
                Output::Event(event) => on_event(&wrench_id, &ctx.status, event),
                Output::Completed(id, result) => {
                    let Some(waiter) = pending.waiters.remove(&id) else { continue };
                    let result = result.map_err(WrenchError::from);
                    if let (Ok(()), Some(enabled)) = (&result, waiter.enables) {
                        ctx.status.send_modify(|s| s.tool_enabled = Some(enabled));
                    }
                    match waiter.reply {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            if let Err(err) = result {
                                tracing::warn!(wrench = wrench_id, command = waiter.what, cause = %err, "wrench command failed");
                            }
                        }
                    }
                }
                Output::Closed(reason) => {
                    for (_, waiter) in pending.waiters.drain() {
                        if let Some(reply) = waiter.reply {
                            let _ = reply.send(Err(WrenchError::Disconnected));
                        }
                    }
                    return (reason, reached_ready);
                }
            }
        }
        let deadline = session
            .next_deadline()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let deadline = stop_deadline.map_or(deadline, |stop| stop.min(deadline));
        tokio::select! {
            read = reader.read(&mut chunk) => match read {
                Ok(0) => session.on_link_lost(CloseReason::Protocol("the controller closed the connection".into())),
                Ok(n) => {
                    buffer.extend_from_slice(&chunk[..n]);
                    loop {
                        match codec::decode(&mut buffer) {
                            Ok(Some(telegram)) => {
                                tracing::trace!(wrench = wrench_id, mid = telegram.header.mid, "received");
                                session.on_frame(telegram, now());
                            }
                            Ok(None) => break,
                            Err(err) => {
                                // A stream with a bad length cannot be resynchronised.
                                session.on_link_lost(CloseReason::Protocol(format!("framing: {err}")));
                                break;
                            }
                        }
                    }
                }
                Err(err) => session.on_link_lost(CloseReason::Protocol(format!("read failed: {err}"))),
            },
            request = requests.recv(), if stop_deadline.is_none() => match request {
                Some(request) => {
                    let release_control = *release_control.borrow();
                    handle_request(request, &mut session, grant, &mut pending, release_control, &ctx.status);
                }
                None => {
                    session.stop(now());
                    stop_deadline = Some(Instant::now() + STOP_GRACE);
                }
            },
            changed = release_control.changed(), if release_watch_open => {
                if changed.is_err() {
                    // The setting's owner is gone (shutdown): nothing more will change.
                    release_watch_open = false;
                } else if *release_control.borrow_and_update() && grant.remaining.is_none() && reached_ready {
                    pending.submit(&mut session, Command::DisableTool, "disable tool", None);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if stop_deadline.is_some_and(|stop| Instant::now() >= stop) {
                    session.on_link_lost(CloseReason::Stopped);
                } else {
                    session.on_tick(now());
                }
            }
            () = token.cancelled(), if stop_deadline.is_none() => {
                session.stop(now());
                stop_deadline = Some(Instant::now() + STOP_GRACE);
            }
        }
    }
}

/// How long an orderly stop waits for the controller to answer MID 0003.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn handle_request(
    request: LinkRequest,
    session: &mut Session,
    grant: &mut Grant,
    pending: &mut Pending,
    release_control: bool,
    status: &watch::Sender<WrenchStatus>,
) {
    match request {
        LinkRequest::Command(Command::EnableTool, reply) if grant.locked => {
            let _ = reply.send(Err(WrenchError::Refused(LOCKED.into())));
        }
        LinkRequest::Command(Command::EnableTool, reply) if release_control && grant.remaining.is_none() => {
            let _ = reply.send(Err(WrenchError::Refused(
                "release control is on: the tool is enabled only while a step expects tightenings".into(),
            )));
        }
        LinkRequest::Command(Command::DisableTool, reply) => {
            // An explicit disable also ends a release: what was left of it is withdrawn.
            grant.remaining = None;
            grant.publish(status);
            pending.submit(session, Command::DisableTool, "request", Some(reply));
        }
        LinkRequest::Command(command, reply) => pending.submit(session, command, "request", Some(reply)),
        LinkRequest::Release { reply, .. } if grant.locked => {
            let _ = reply.send(Err(WrenchError::Refused(LOCKED.into())));
        }
        LinkRequest::Release { pset, count, reply } => {
            grant.remaining = Some(count.max(1));
            grant.publish(status);
            if let Some(pset) = pset {
                pending.submit(session, Command::SelectPset(pset), "select Pset", None);
            }
            pending.submit(session, Command::EnableTool, "request", Some(reply));
        }
        LinkRequest::Lock(true, reply) => {
            grant.locked = true;
            grant.remaining = None;
            grant.publish(status);
            pending.submit(session, Command::DisableTool, "request", Some(reply));
        }
        LinkRequest::Lock(false, reply) => {
            grant.locked = false;
            grant.publish(status);
            if release_control {
                let _ = reply.send(Ok(()));
            } else {
                pending.submit(session, Command::EnableTool, "request", Some(reply));
            }
        }
        LinkRequest::Clear => clear(status),
    }
}

/// An OK tightening counts against a release; the last one disables the tool again.
fn on_ok_tightening(session: &mut Session, grant: &mut Grant, pending: &mut Pending) {
    if let Some(remaining) = grant.remaining {
        if remaining <= 1 {
            grant.remaining = None;
            pending.submit(session, Command::DisableTool, "disable tool after the released batch", None);
        } else {
            grant.remaining = Some(remaining - 1);
        }
    }
}

fn on_event(wrench_id: &str, status: &watch::Sender<WrenchStatus>, event: SessionEvent) {
    match event {
        SessionEvent::PsetSelected(pset) => status.send_modify(|s| s.pset = Some(pset)),
        SessionEvent::BatchLocked(locked) => status.send_modify(|s| s.batch_locked = Some(locked)),
        SessionEvent::Vin(vin) => status.send_modify(|s| s.vin = Some(vin).filter(|v| !v.is_empty())),
        SessionEvent::Alarm { code, active } => {
            let active = active && !code.is_empty();
            if active {
                tracing::warn!(wrench = wrench_id, code, "controller alarm");
            }
            status.send_modify(|s| s.alarm = active.then_some(code));
        }
        SessionEvent::SubscriptionRefused { mid, code } => {
            tracing::info!(wrench = wrench_id, mid, %code, "controller does not offer this subscription");
        }
        SessionEvent::Unusable { mid, reason, raw } => {
            tracing::warn!(wrench = wrench_id, mid, reason, raw, "unusable telegram from the controller");
            status.send_modify(|s| s.last_error = Some(reason));
        }
    }
}

async fn persist(
    settings: &WrenchSettings,
    ctx: &LinkContext,
    t: Tightening,
    source: ResultSource,
) -> Result<(), crate::storage::StorageError> {
    let new = new_tightening(settings, &t, source);
    let stored = ctx.storage.call(move |db| db.insert_tightening(new)).await?;
    let Some(record) = stored else {
        tracing::debug!(wrench = settings.id, tightening_id = t.tightening_id, "duplicate result, already stored");
        return Ok(());
    };
    let r = &record.tightening;
    let summary = TighteningSummary {
        seq: record.seq,
        wrench_id: r.wrench_id.clone(),
        station_id: r.station_id.clone(),
        tightening_id: r.tightening_id,
        ok: r.ok,
        torque: r.torque,
        torque_unit: r.torque_unit.clone(),
        angle: r.angle,
        pset: r.pset,
        batch_counter: r.batch_counter,
        backfilled: r.backfilled,
        received_at: r.received_at,
    };
    ctx.status.send_modify(|s| {
        s.results_stored += 1;
        if !summary.backfilled || s.last.as_ref().is_none_or(|l| l.tightening_id < summary.tightening_id) {
            s.last = Some(summary.clone());
        }
    });
    // The core may be gone during shutdown; the record is stored either way.
    let _ = ctx.events.send(Event::TighteningRecorded(summary)).await;
    Ok(())
}

fn new_tightening(settings: &WrenchSettings, t: &Tightening, source: ResultSource) -> NewTightening {
    let limit = |s: Option<LimitStatus>| {
        s.map(|s| match s {
            LimitStatus::Low => "low".to_owned(),
            LimitStatus::Ok => "ok".to_owned(),
            LimitStatus::High => "high".to_owned(),
        })
    };
    NewTightening {
        wrench_id: settings.id.clone(),
        station_id: settings.station_id.clone(),
        tightening_id: t.tightening_id,
        backfilled: source == ResultSource::Backfill,
        ok: t.ok,
        torque_status: limit(t.torque_status),
        angle_status: limit(t.angle_status),
        batch_status: t.batch_status.map(|s| {
            match s {
                BatchStatus::NotCompleted => "not_completed",
                BatchStatus::Ok => "ok",
                BatchStatus::NotUsed => "not_used",
                BatchStatus::Running => "running",
            }
            .to_owned()
        }),
        pset: t.pset,
        job_id: t.job_id,
        batch_size: t.batch_size,
        batch_counter: t.batch_counter,
        torque: t.torque,
        torque_min: t.torque_min,
        torque_max: t.torque_max,
        torque_target: t.torque_target,
        torque_unit: match t.torque_unit {
            Some(2) => "lbf.ft",
            Some(3) => "lbf.in",
            Some(4) => "kpm",
            Some(5) => "kgf.cm",
            Some(6) => "ozf.in",
            Some(7) => "%",
            Some(8) => "Ncm",
            _ => "Nm",
        }
        .to_owned(),
        angle: t.angle,
        angle_min: t.angle_min,
        angle_max: t.angle_max,
        angle_target: t.angle_target,
        vin: t.vin.clone(),
        tool_serial: t.tool_serial.clone(),
        controller_name: t.controller_name.clone(),
        controller_time: t.timestamp.clone(),
        mid_revision: t.revision,
        received_at: Utc::now(),
    }
}

impl From<CommandError> for WrenchError {
    fn from(err: CommandError) -> WrenchError {
        match err {
            CommandError::Rejected(code) => WrenchError::Nak { code },
            CommandError::NotReady | CommandError::Disconnected => WrenchError::Disconnected,
        }
    }
}
