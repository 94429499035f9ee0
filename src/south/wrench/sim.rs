//! A behavioural tightening-controller simulator: the controller side of Open Protocol,
//! good enough to run the whole daemon on a laptop (`backend = "sim"`), to test the link
//! against, and to stand in for a controller on a bench (`stationd wrench-sim`).
//!
//! One client at a time, like most controllers: a second one gets MID 0004 error 96, and
//! so does a reconnect within the "ghost session" time after a link was dropped without
//! MID 0003. It answers MID 0001 at min(requested, its maximum) revision, or error 97;
//! echoes keep-alives and closes after its idle timeout; speaks both acknowledgement
//! modes; pushes results (re-sent up to 3 times, then the link is dropped) and the
//! immediate 0015/0022/0052/0076 after a subscribe; keeps a result history for MID 0064;
//! and injects faults through `SimHandle` (split writes, a link dropped mid-result, a
//! dropped link, delayed replies).
//!
//! Results produced while no client is subscribed are not pushed later: as with real
//! controllers, the client fetches them with MID 0064.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Telegram};
use super::messages::{self as m, Alarm, BatchStatus, ControllerInfo, ErrorCode, LimitStatus, Message, Tightening};

#[derive(Debug, Clone)]
pub struct SimSettings {
    pub controller_name: String,
    pub max_comm_revision: u16,
    /// Highest MID 0061 revision in 1..=7; revision 999 is offered too.
    pub max_result_revision: u16,
    /// Offer link-level acknowledgement (MID 0002 rev 6 PID 12).
    pub link_level: bool,
    /// Close the link after this long without receiving anything.
    pub idle_timeout: Duration,
    /// After a link drops without MID 0003, refuse new clients with error 96 this long.
    pub ghost_session: Duration,
    /// Re-send an unacknowledged result after this long; drop the link after 3 re-sends.
    pub ack_timeout: Duration,
    /// Produce a result on this schedule (while the tool is enabled).
    pub result_interval: Option<Duration>,
    /// Share of scheduled results that are NOK, 0..=1.
    pub nok_ratio: f64,
    /// The first tightening ID. Real controllers number results for their whole life;
    /// the default (tenths of a second since 2020) keeps a restarted simulator from
    /// reusing IDs a daemon already stored.
    pub first_id: u64,
}

impl Default for SimSettings {
    fn default() -> SimSettings {
        SimSettings {
            controller_name: "stationd-sim".into(),
            max_comm_revision: 7,
            max_result_revision: 7,
            link_level: false,
            idle_timeout: Duration::from_secs(15),
            ghost_session: Duration::ZERO,
            ack_timeout: Duration::from_secs(3),
            result_interval: None,
            nok_ratio: 0.0,
            first_id: (chrono::Utc::now().timestamp_millis() - 1_577_836_800_000).max(0) as u64 / 100 + 1,
        }
    }
}

/// Counters and tool state a test or an operator can read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    pub tool_enabled: bool,
    pub pset: u32,
    pub batch_size: u32,
    pub vin: String,
    pub connections: u64,
    pub refused_busy: u64,
    pub keep_alives: u64,
    pub results_produced: u64,
    pub results_pushed: u64,
    pub results_acked: u64,
    pub old_results_served: u64,
    pub comm_stops: u64,
    /// Every MID a client sent, in order (commands and requests; not acks).
    pub requests: Vec<u16>,
}

struct SimState {
    history: Vec<Tightening>,
    next_id: u64,
    tool_enabled: bool,
    pset: u32,
    batch_size: u32,
    batch_counter: u32,
    vin: String,
    /// Results waiting to be pushed to the subscribed client.
    push_queue: VecDeque<u64>,
    subscribed: bool,
    drop_link: bool,
    drop_mid_result: bool,
    split_writes: bool,
    reply_delay: Duration,
    stats: SimStats,
}

/// Drives and inspects a running simulator.
#[derive(Clone)]
pub struct SimHandle {
    state: Arc<Mutex<SimState>>,
    /// Wakes the connection task (a result to push, a link to drop).
    wake: Arc<Notify>,
    /// Wakes everyone waiting in `until` after any change.
    changed: Arc<Notify>,
    nok_ratio: f64,
    addr: SocketAddr,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A tightening happens now. `None` when the tool is disabled (nothing happens).
    pub fn tighten(&self, ok: bool) -> Option<u64> {
        let mut state = self.state.lock().expect("sim lock");
        if !state.tool_enabled {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.batch_counter = if state.batch_counter >= state.batch_size { 1 } else { state.batch_counter + 1 };
        let tightening = state.result(id, ok);
        state.history.push(tightening);
        if state.history.len() > 10_000 {
            state.history.remove(0);
        }
        state.stats.results_produced += 1;
        if state.subscribed {
            state.push_queue.push_back(id);
        }
        drop(state);
        self.wake.notify_one();
        self.touched();
        Some(id)
    }

    /// A tightening whose outcome follows the configured NOK ratio.
    pub fn tighten_random(&self) -> Option<u64> {
        self.tighten(fastrand::f64() >= self.nok_ratio)
    }

    /// Every tightening ID produced so far.
    pub fn produced(&self) -> Vec<u64> {
        self.state.lock().expect("sim lock").history.iter().map(|t| t.tightening_id).collect()
    }

    /// Drops the current link at once, without MID 0003 (a cable pull).
    pub fn drop_link(&self) {
        self.state.lock().expect("sim lock").drop_link = true;
        self.wake.notify_one();
    }

    /// The next result push is cut off after half its bytes and the link dropped.
    pub fn drop_mid_next_result(&self) {
        self.state.lock().expect("sim lock").drop_mid_result = true;
    }

    /// Write telegrams in small pieces at random boundaries.
    pub fn set_split_writes(&self, split: bool) {
        self.state.lock().expect("sim lock").split_writes = split;
    }

    /// Delay every reply to a request by this much.
    pub fn set_reply_delay(&self, delay: Duration) {
        self.state.lock().expect("sim lock").reply_delay = delay;
    }

    pub fn set_tool_enabled(&self, enabled: bool) {
        self.state.lock().expect("sim lock").tool_enabled = enabled;
    }

    pub fn tool_enabled(&self) -> bool {
        self.state.lock().expect("sim lock").tool_enabled
    }

    pub fn pset(&self) -> u32 {
        self.state.lock().expect("sim lock").pset
    }

    pub fn stats(&self) -> SimStats {
        let state = self.state.lock().expect("sim lock");
        SimStats {
            tool_enabled: state.tool_enabled,
            pset: state.pset,
            batch_size: state.batch_size,
            vin: state.vin.clone(),
            ..state.stats.clone()
        }
    }

    /// Resolves once `condition` holds for the simulator's stats.
    pub async fn until(&self, condition: impl Fn(&SimStats) -> bool) -> SimStats {
        loop {
            // Registered before the check, so a change in between is not missed.
            let changed = self.changed.notified();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    fn touched(&self) {
        self.changed.notify_waiters();
    }
}

impl SimState {
    /// Result `id` as the controller reports it, with the current Pset, batch and VIN.
    fn result(&self, id: u64, ok: bool) -> Tightening {
        let torque = if ok { 2500 + (id % 7) as i64 * 10 } else { 2100 };
        Tightening {
            revision: 7,
            tightening_id: id,
            cell_id: Some(1),
            channel_id: Some(1),
            controller_name: Some("stationd-sim".into()),
            vin: Some(self.vin.clone()).filter(|v| !v.is_empty()),
            job_id: Some(0),
            pset: Some(self.pset),
            batch_size: Some(self.batch_size),
            batch_counter: Some(self.batch_counter),
            ok,
            batch_status: Some(if self.batch_counter >= self.batch_size {
                BatchStatus::Ok
            } else {
                BatchStatus::NotCompleted
            }),
            torque_status: Some(if ok { LimitStatus::Ok } else { LimitStatus::Low }),
            angle_status: Some(LimitStatus::Ok),
            torque,
            torque_min: Some(2300),
            torque_max: Some(2700),
            torque_target: Some(2500),
            angle: 180 + (id % 11) as i64,
            angle_min: Some(120),
            angle_max: Some(240),
            angle_target: Some(180),
            timestamp: super::local_time_now(),
            pset_changed_at: Some("2026-01-01:00:00:00".into()),
            strategy: Some(1),
            error_status: Some(0),
            tool_serial: Some("SIM-TOOL-1".into()),
            pset_name: Some(format!("Pset {}", self.pset)),
            torque_unit: Some(1),
            result_type: Some(1),
        }
    }
}

/// A bound simulator; `run` serves it.
pub struct SimController {
    listener: TcpListener,
    settings: SimSettings,
    handle: SimHandle,
}

impl SimController {
    pub async fn bind(addr: SocketAddr, settings: SimSettings) -> std::io::Result<SimController> {
        let listener = TcpListener::bind(addr).await?;
        let state = SimState {
            history: Vec::new(),
            next_id: settings.first_id.clamp(1, 4_000_000_000),
            tool_enabled: true,
            pset: 1,
            batch_size: 4,
            batch_counter: 0,
            vin: String::new(),
            push_queue: VecDeque::new(),
            subscribed: false,
            drop_link: false,
            drop_mid_result: false,
            split_writes: false,
            reply_delay: Duration::ZERO,
            stats: SimStats::default(),
        };
        let handle = SimHandle {
            state: Arc::new(Mutex::new(state)),
            wake: Arc::new(Notify::new()),
            changed: Arc::new(Notify::new()),
            nok_ratio: settings.nok_ratio,
            addr: listener.local_addr()?,
        };
        Ok(SimController { listener, settings, handle })
    }

    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Serves clients until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let SimController { listener, settings, handle } = self;
        let mut active = None;
        let mut refusing = FuturesUnordered::new();
        let mut ghost_until: Option<Instant> = None;
        let mut schedule = settings.result_interval.map(|every| {
            let mut interval = tokio::time::interval_at(Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let ghost = ghost_until.is_some_and(|until| Instant::now() < until);
                    if active.is_some() || ghost {
                        handle.state.lock().expect("sim lock").stats.refused_busy += 1;
                        handle.touched();
                        refusing.push(refuse_busy(stream));
                    } else {
                        handle.state.lock().expect("sim lock").stats.connections += 1;
                        handle.touched();
                        active = Some(Box::pin(serve(stream, settings.clone(), handle.clone())));
                    }
                }
                orderly = async { active.as_mut().expect("guarded").await }, if active.is_some() => {
                    active = None;
                    {
                        let mut state = handle.state.lock().expect("sim lock");
                        state.subscribed = false;
                        state.push_queue.clear();
                    }
                    if !orderly && !settings.ghost_session.is_zero() {
                        ghost_until = Some(Instant::now() + settings.ghost_session);
                    }
                    handle.touched();
                }
                Some(()) = refusing.next(), if !refusing.is_empty() => {}
                _ = async { schedule.as_mut().expect("guarded").tick().await }, if schedule.is_some() => {
                    handle.tighten_random();
                }
                () = token.cancelled() => return,
            }
        }
    }
}

/// A second client: answer its MID 0001 with error 96 and close.
async fn refuse_busy(mut stream: TcpStream) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            if let Ok(Some(telegram)) = codec::decode(&mut buffer) {
                return Some(telegram);
            }
        }
    })
    .await;
    if let Ok(Some(_)) = read {
        let mut bytes = Vec::new();
        let refusal = Message::Error { mid: m::MID_COMM_START, code: ErrorCode::ALREADY_CONNECTED };
        let _ = codec::encode(&refusal.to_telegram(), &mut bytes);
        let _ = stream.write_all(&bytes).await;
    }
}

/// One client's session. Returns true when it ended with MID 0003.
async fn serve(stream: TcpStream, settings: SimSettings, handle: SimHandle) -> bool {
    let mut conn = Connection {
        stream,
        settings,
        handle,
        started: false,
        link_level: false,
        out_seq: 0,
        last_in_seq: None,
        result_revision: None,
        subscriptions: Vec::new(),
        in_flight_push: None,
        last_received: Instant::now(),
    };
    conn.run().await.unwrap_or(false)
}

struct Connection {
    stream: TcpStream,
    settings: SimSettings,
    handle: SimHandle,
    started: bool,
    link_level: bool,
    out_seq: u8,
    last_in_seq: Option<u8>,
    /// MID 0061 revision the client subscribed with.
    result_revision: Option<u16>,
    subscriptions: Vec<u16>,
    /// Result pushed and not yet acknowledged: (id, sent at, sends so far).
    in_flight_push: Option<(u64, Instant, u32)>,
    last_received: Instant,
}

/// `Err` ends the connection abruptly.
type Step = Result<(), ()>;

impl Connection {
    async fn run(&mut self) -> Result<bool, ()> {
        let mut buffer = Vec::new();
        let mut chunk = vec![0u8; 4096];
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                read = self.stream.read(&mut chunk) => {
                    let n = read.map_err(|_| ())?;
                    if n == 0 {
                        return Ok(false);
                    }
                    self.last_received = Instant::now();
                    buffer.extend_from_slice(&chunk[..n]);
                    loop {
                        match codec::decode(&mut buffer) {
                            Ok(Some(telegram)) => {
                                let stop = self.on_telegram(telegram).await;
                                self.handle.touched();
                                if stop? {
                                    return Ok(true);
                                }
                            }
                            Ok(None) => break,
                            Err(_) => return Err(()),
                        }
                    }
                }
                () = self.handle.wake.notified() => {}
                _ = tick.tick() => {
                    if self.last_received.elapsed() >= self.settings.idle_timeout {
                        return Ok(false);
                    }
                    if let Some((id, sent_at, sends)) = self.in_flight_push
                        && sent_at.elapsed() >= self.settings.ack_timeout
                    {
                        if sends > 3 {
                            return Ok(false);
                        }
                        self.push_result(id, sends + 1).await?;
                    }
                }
            }
            if std::mem::take(&mut self.handle.state.lock().expect("sim lock").drop_link) {
                return Err(());
            }
            self.push_next().await?;
        }
    }

    /// Handles one telegram; `Ok(true)` when the client said goodbye.
    async fn on_telegram(&mut self, telegram: Telegram) -> Result<bool, ()> {
        let mid = telegram.header.mid;
        if self.link_level
            && let Some(seq) = telegram.header.seq
            && mid != m::MID_LINK_ACK
            && mid != m::MID_LINK_NACK
        {
            let mut ack = Message::LinkAck { mid }.to_telegram();
            ack.header.seq = Some(seq % 99 + 1);
            self.write(&ack).await?;
            if self.last_in_seq == Some(seq) {
                return Ok(false);
            }
            self.last_in_seq = Some(seq);
        }
        if !self.started && mid != m::MID_COMM_START {
            // Controllers ignore (or refuse) everything before MID 0001.
            self.reply(Message::Error { mid, code: ErrorCode::REVISION_UNSUPPORTED }).await?;
            return Ok(false);
        }
        if !matches!(
            mid,
            m::MID_LINK_ACK
                | m::MID_KEEP_ALIVE
                | m::MID_RESULT_ACK
                | m::MID_PSET_ACK
                | m::MID_LOCK_ACK
                | m::MID_VIN_ACK
                | m::MID_ALARM_ACK
                | m::MID_ALARM_STATUS_ACK
        ) {
            self.handle.state.lock().expect("sim lock").stats.requests.push(mid);
        }
        let Ok(message) = Message::from_telegram(&telegram) else {
            self.reply(Message::Error { mid, code: ErrorCode(99) }).await?;
            return Ok(false);
        };
        let revision = telegram.header.revision;
        match message {
            Message::CommStart { .. } => {
                if revision > self.settings.max_comm_revision {
                    return self
                        .reply(Message::Error { mid, code: ErrorCode::REVISION_UNSUPPORTED })
                        .await
                        .map(|()| false);
                }
                self.started = true;
                self.link_level = self.settings.link_level && revision >= 6;
                let info = ControllerInfo {
                    revision,
                    cell_id: 1,
                    channel_id: 1,
                    controller_name: self.settings.controller_name.clone(),
                    supplier_code: Some("SIM".into()),
                    protocol_version: Some("2.16.0".into()),
                    controller_software: Some(env!("CARGO_PKG_VERSION").into()),
                    tool_software: Some(env!("CARGO_PKG_VERSION").into()),
                    serial_number: Some("SIM0000001".into()),
                    sequence_numbers: self.link_level,
                };
                self.reply(Message::CommStartAck(info)).await?;
            }
            Message::CommStop => {
                self.handle.state.lock().expect("sim lock").stats.comm_stops += 1;
                self.reply(Message::Accepted { mid }).await?;
                return Ok(true);
            }
            Message::KeepAlive => {
                self.handle.state.lock().expect("sim lock").stats.keep_alives += 1;
                self.reply(Message::KeepAlive).await?;
            }
            Message::ResultSubscribe { revision: wanted, .. } => {
                let supported = wanted == 999 || wanted <= self.settings.max_result_revision.min(7);
                if !supported {
                    return self
                        .reply(Message::Error { mid, code: ErrorCode::REVISION_UNSUPPORTED })
                        .await
                        .map(|()| false);
                }
                self.result_revision = Some(wanted);
                self.handle.state.lock().expect("sim lock").subscribed = true;
                self.reply(Message::Accepted { mid }).await?;
            }
            Message::PsetSubscribe => {
                self.subscribe(mid).await?;
                let pset = self.handle.pset();
                self.reply(Message::PsetSelected { pset, changed_at: super::local_time_now() }).await?;
            }
            Message::LockSubscribe => {
                self.subscribe(mid).await?;
                self.reply(Message::LockStatus { locked: false }).await?;
            }
            Message::VinSubscribe => {
                self.subscribe(mid).await?;
                let vin = self.handle.state.lock().expect("sim lock").vin.clone();
                self.reply(Message::Vin { vin }).await?;
            }
            Message::AlarmSubscribe => {
                self.subscribe(mid).await?;
                let alarm = Alarm {
                    revision: 1,
                    code: String::new(),
                    controller_ready: true,
                    tool_ready: true,
                    time: super::local_time_now(),
                };
                self.reply(Message::AlarmStatus { active: false, alarm }).await?;
            }
            Message::ResultAck => self.on_result_acked(),
            Message::LinkAck { mid: acked } => {
                if acked == m::MID_RESULT {
                    self.on_result_acked();
                }
            }
            Message::PsetAck | Message::LockAck | Message::VinAck | Message::AlarmAck | Message::AlarmStatusAck => {}
            Message::SelectPset { pset } => {
                if !(1..=250).contains(&pset) {
                    return self.reply(Message::Error { mid, code: ErrorCode(2) }).await.map(|()| false);
                }
                {
                    let mut state = self.handle.state.lock().expect("sim lock");
                    state.pset = pset;
                    state.batch_counter = 0;
                }
                self.reply(Message::Accepted { mid }).await?;
                if self.subscriptions.contains(&m::MID_PSET_SUBSCRIBE) {
                    self.reply(Message::PsetSelected { pset, changed_at: super::local_time_now() }).await?;
                }
            }
            Message::SetBatchSize { size, .. } => {
                self.handle.state.lock().expect("sim lock").batch_size = size.max(1);
                self.reply(Message::Accepted { mid }).await?;
            }
            Message::ResetBatch { .. } => {
                self.handle.state.lock().expect("sim lock").batch_counter = 0;
                self.reply(Message::Accepted { mid }).await?;
            }
            Message::DisableTool | Message::EnableTool => {
                self.handle.set_tool_enabled(matches!(message, Message::EnableTool));
                self.reply(Message::Accepted { mid }).await?;
            }
            Message::VinDownload { vin } => {
                self.handle.state.lock().expect("sim lock").vin = vin.clone();
                self.reply(Message::Accepted { mid }).await?;
                if self.subscriptions.contains(&m::MID_VIN_SUBSCRIBE) {
                    self.reply(Message::Vin { vin }).await?;
                }
            }
            Message::OldResultRequest { tightening_id } => {
                let found = {
                    let mut state = self.handle.state.lock().expect("sim lock");
                    let found = if tightening_id == 0 {
                        state.history.last().cloned()
                    } else {
                        state.history.iter().find(|t| t.tightening_id == tightening_id).cloned()
                    };
                    if found.is_some() {
                        state.stats.old_results_served += 1;
                    }
                    found
                };
                match found {
                    Some(mut t) => {
                        t.revision = 1;
                        self.reply(Message::OldResult(t)).await?;
                    }
                    None => self.reply(Message::Error { mid, code: ErrorCode::TIGHTENING_NOT_FOUND }).await?,
                }
            }
            Message::SetTime { .. } | Message::AbortJob => self.reply(Message::Accepted { mid }).await?,
            _ => self.reply(Message::Error { mid, code: ErrorCode(99) }).await?,
        }
        Ok(false)
    }

    async fn subscribe(&mut self, mid: u16) -> Step {
        if !self.subscriptions.contains(&mid) {
            self.subscriptions.push(mid);
        }
        self.reply(Message::Accepted { mid }).await
    }

    fn on_result_acked(&mut self) {
        if self.in_flight_push.take().is_some() {
            self.handle.state.lock().expect("sim lock").stats.results_acked += 1;
        }
    }

    /// Pushes the next queued result when none waits for its acknowledgement.
    async fn push_next(&mut self) -> Step {
        if self.in_flight_push.is_some() || self.result_revision.is_none() {
            return Ok(());
        }
        let next = self.handle.state.lock().expect("sim lock").push_queue.pop_front();
        match next {
            Some(id) => self.push_result(id, 1).await,
            None => Ok(()),
        }
    }

    async fn push_result(&mut self, id: u64, sends: u32) -> Step {
        let Some(mut tightening) =
            self.handle.state.lock().expect("sim lock").history.iter().find(|t| t.tightening_id == id).cloned()
        else {
            return Ok(());
        };
        tightening.revision = self.result_revision.unwrap_or(1);
        let mut telegram = Message::Result(tightening).to_telegram();
        self.sequence(&mut telegram);
        let mut bytes = Vec::new();
        codec::encode(&telegram, &mut bytes).map_err(|_| ())?;
        let cut = std::mem::take(&mut self.handle.state.lock().expect("sim lock").drop_mid_result);
        if cut {
            let _ = self.stream.write_all(&bytes[..bytes.len() / 2]).await;
            return Err(());
        }
        self.write_bytes(&bytes).await?;
        self.handle.state.lock().expect("sim lock").stats.results_pushed += 1;
        self.handle.touched();
        self.in_flight_push = Some((id, Instant::now(), sends));
        Ok(())
    }

    /// A reply to a request: delayed when so configured.
    async fn reply(&mut self, message: Message) -> Step {
        let delay = self.handle.state.lock().expect("sim lock").reply_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut telegram = message.to_telegram();
        self.sequence(&mut telegram);
        self.write(&telegram).await
    }

    fn sequence(&mut self, telegram: &mut Telegram) {
        if self.link_level && telegram.header.mid != m::MID_LINK_ACK {
            self.out_seq = self.out_seq % 99 + 1;
            telegram.header.seq = Some(self.out_seq);
        }
    }

    async fn write(&mut self, telegram: &Telegram) -> Step {
        let mut bytes = Vec::new();
        codec::encode(telegram, &mut bytes).map_err(|_| ())?;
        self.write_bytes(&bytes).await
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> Step {
        let split = self.handle.state.lock().expect("sim lock").split_writes;
        if split {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = fastrand::usize(1..=rest.len().min(7));
                self.stream.write_all(&rest[..n]).await.map_err(|_| ())?;
                self.stream.flush().await.map_err(|_| ())?;
                rest = &rest[n..];
                tokio::task::yield_now().await;
            }
            Ok(())
        } else {
            self.stream.write_all(bytes).await.map_err(|_| ())
        }
    }
}
