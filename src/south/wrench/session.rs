//! The Open Protocol session as a sans-I/O state machine: telegrams and the time go in
//! (`start`, `on_frame`, `on_tick`, `command`, `on_persisted`, `stop`), `Output`s come
//! out (`poll_output`). It owns the handshake with revision fallback, the subscriptions,
//! one outstanding request at a time, keep-alive, dead-link detection, both
//! acknowledgement modes, result gap detection and backfill with MID 0064. It never
//! reads a clock or a socket; `link.rs` does that and owns reconnecting (`Backoff`).
//!
//! A session lives for one TCP connection. The link makes a new one per connection and
//! passes in the newest tightening ID already stored, so backfill starts from the truth.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::codec::Telegram;
use super::messages::{self as m, ControllerInfo, ErrorCode, Message, ParseError, Tightening};

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// MID 0001 revision asked for first; stepped down on error 97.
    pub comm_revision: u16,
    /// MID 0060/0061 revision asked for first; stepped down on error 97.
    pub result_revision: u16,
    /// Use link-level acknowledgement (MID 9997) when the controller offers it.
    pub link_level: bool,
    /// Send MID 9999 after this long without sending anything.
    pub keep_alive: Duration,
    /// Declare the link dead after this long without receiving anything.
    pub link_timeout: Duration,
    /// A request, or a sequenced telegram's link ack, not answered within this: dead.
    pub reply_timeout: Duration,
    /// At most this many missing tightening IDs are fetched after one gap.
    pub backfill_limit: u64,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            comm_revision: 6,
            result_revision: 7,
            link_level: true,
            keep_alive: Duration::from_secs(10),
            link_timeout: Duration::from_secs(15),
            reply_timeout: Duration::from_secs(10),
            backfill_limit: 1000,
        }
    }
}

pub type RequestId = u64;

/// The id of the tool-disable the session sends itself on `stop`.
pub const SAFE_STATE_REQUEST: RequestId = 0;

/// Control requests an operator or the station can make of the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    EnableTool,
    DisableTool,
    SelectPset(u32),
    SetBatchSize {
        pset: u32,
        size: u32,
    },
    ResetBatch(u32),
    Vin(String),
    AbortJob,
    /// `YYYY-MM-DD:HH:MM:SS`, the controller's local time.
    SetTime(String),
}

impl Command {
    fn message(&self) -> Message {
        match self {
            Command::EnableTool => Message::EnableTool,
            Command::DisableTool => Message::DisableTool,
            Command::SelectPset(pset) => Message::SelectPset { pset: *pset },
            Command::SetBatchSize { pset, size } => Message::SetBatchSize { pset: *pset, size: *size },
            Command::ResetBatch(pset) => Message::ResetBatch { pset: *pset },
            Command::Vin(vin) => Message::VinDownload { vin: vin.clone() },
            Command::AbortJob => Message::AbortJob,
            Command::SetTime(time) => Message::SetTime { time: time.clone() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The controller answered MID 0004.
    Rejected(ErrorCode),
    /// The session is not (yet, or any more) ready for commands.
    NotReady,
    /// The link went down before the controller answered.
    Disconnected,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Rejected(code) => write!(f, "the controller refused: {code}"),
            CommandError::NotReady => f.write_str("the wrench link is not ready"),
            CommandError::Disconnected => f.write_str("the wrench link went down before the controller answered"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We asked (MID 0003 answered, or stop requested).
    Stopped,
    /// MID 0004 error 96: the controller still holds an older session.
    AlreadyConnected,
    /// MID 0001 refused with another code.
    Refused(ErrorCode),
    /// No answer to MID `mid` within the reply timeout.
    Timeout { mid: u16 },
    /// Nothing received for the link timeout.
    Silent,
    /// The peer broke the protocol (framing, a link-level NACK).
    Protocol(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Stopped => f.write_str("stopped"),
            CloseReason::AlreadyConnected => f.write_str("controller says a client is already connected (error 96)"),
            CloseReason::Refused(code) => write!(f, "communication start refused: {code}"),
            CloseReason::Timeout { mid } => write!(f, "no answer to MID {mid:04}"),
            CloseReason::Silent => f.write_str("nothing received within the link timeout"),
            CloseReason::Protocol(reason) => write!(f, "protocol error: {reason}"),
        }
    }
}

/// Where a stored result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultSource {
    /// Pushed (MID 0061).
    Live,
    /// Fetched after a gap (MID 0065).
    Backfill,
}

/// What to send once a result is committed: MID 0062, MID 9997, or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken(Option<Telegram>);

#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    PsetSelected(u32),
    BatchLocked(bool),
    Vin(String),
    Alarm {
        code: String,
        active: bool,
    },
    /// A subscription the controller does not offer; the session goes on without it.
    SubscriptionRefused {
        mid: u16,
        code: ErrorCode,
    },
    /// A telegram we could not use; logged with its bytes.
    Unusable {
        mid: u16,
        reason: String,
        raw: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit(Telegram),
    /// Commit this result, then call `on_persisted(ack)`.
    Persist {
        tightening: Box<Tightening>,
        source: ResultSource,
        ack: AckToken,
    },
    /// Handshake and subscriptions done.
    Ready(ControllerInfo),
    /// First link with nothing stored: the controller's newest tightening ID (0 when it
    /// has none). Results up to it are history from before stationd watched; store it so
    /// that later gaps are measured from here.
    Baseline(u64),
    Event(SessionEvent),
    Completed(RequestId, Result<(), CommandError>),
    /// The link must be dropped; the session is over.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Subscribing,
    Ready,
    Stopping,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subscription {
    Results,
    PsetSelected,
    BatchLock,
    Alarms,
    Vin,
}

impl Subscription {
    const ALL: [Subscription; 5] = [
        Subscription::Results,
        Subscription::PsetSelected,
        Subscription::BatchLock,
        Subscription::Alarms,
        Subscription::Vin,
    ];

    fn message(self, result_revision: u16) -> Message {
        match self {
            Subscription::Results => Message::ResultSubscribe { revision: result_revision, no_ack: false },
            Subscription::PsetSelected => Message::PsetSubscribe,
            Subscription::BatchLock => Message::LockSubscribe,
            Subscription::Alarms => Message::AlarmSubscribe,
            Subscription::Vin => Message::VinSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Request {
    Start,
    Subscribe(Subscription),
    Command(RequestId, Command),
    KeepAlive,
    /// MID 0064 with ID 0: the newest result, to learn how far behind we are.
    Latest,
    Backfill(u64),
    Stop,
}

struct InFlight {
    request: Request,
    mid: u16,
    sent_at: Instant,
}

/// Link-level (MID 9997) bookkeeping, when negotiated.
#[derive(Default)]
struct LinkLevel {
    next_seq: u8,
    /// The sequenced telegram we sent and whose 9997 we wait for.
    awaiting: Option<(u16, Instant)>,
    /// Sequenced telegrams waiting for the one above to be acknowledged.
    backlog: VecDeque<Telegram>,
    last_received_seq: Option<u8>,
}

/// What is stored already; see `Session::new`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultHistory {
    pub newest: Option<u64>,
    pub missing: Vec<u64>,
}

pub struct Session {
    config: SessionConfig,
    phase: Phase,
    comm_revision: u16,
    result_revision: u16,
    controller: Option<ControllerInfo>,
    link: Option<LinkLevel>,
    in_flight: Option<InFlight>,
    requests: VecDeque<Request>,
    subscriptions: VecDeque<Subscription>,
    last_sent: Instant,
    last_received: Instant,
    /// Newest tightening ID stored or seen on this link.
    newest_id: Option<u64>,
    /// Stored results below `newest_id` that are missing; fetched once Ready.
    missing: Vec<u64>,
    backfill_requested: BTreeSet<u64>,
    outputs: VecDeque<Output>,
}

impl Session {
    /// `history` is what the database holds for this controller: the newest tightening
    /// ID (`None` before the first link ever came up) and the IDs missing below it.
    pub fn new(config: SessionConfig, history: ResultHistory, now: Instant) -> Session {
        Session {
            comm_revision: config.comm_revision.clamp(1, 7),
            result_revision: config.result_revision,
            config,
            phase: Phase::Starting,
            controller: None,
            link: None,
            in_flight: None,
            requests: VecDeque::new(),
            subscriptions: VecDeque::new(),
            last_sent: now,
            last_received: now,
            newest_id: history.newest,
            missing: history.missing,
            backfill_requested: BTreeSet::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once link-level acknowledgement is in use.
    pub fn link_level(&self) -> bool {
        self.link.is_some()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The TCP connection is up: send MID 0001.
    pub fn start(&mut self, now: Instant) {
        self.last_received = now;
        self.requests.push_back(Request::Start);
        self.pump(now);
    }

    /// Orderly end: the tool is disabled (its safe state) when the session is ready, then
    /// MID 0003 goes out once the request in flight is answered. Queued commands fail.
    pub fn stop(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closed | Phase::Stopping) {
            return;
        }
        let was_ready = self.phase == Phase::Ready;
        self.phase = Phase::Stopping;
        self.fail_queued_commands();
        self.requests.clear();
        if was_ready {
            self.requests.push_back(Request::Command(SAFE_STATE_REQUEST, Command::DisableTool));
        }
        self.requests.push_back(Request::Stop);
        self.pump(now);
    }

    pub fn command(&mut self, id: RequestId, command: Command, now: Instant) {
        if self.phase != Phase::Ready {
            self.outputs.push_back(Output::Completed(id, Err(CommandError::NotReady)));
            return;
        }
        self.requests.push_back(Request::Command(id, command));
        self.pump(now);
    }

    /// The result behind `ack` is committed: acknowledge it to the controller.
    pub fn on_persisted(&mut self, ack: AckToken, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(telegram) = ack.0 {
            self.transmit_now(telegram, now);
        }
    }

    /// When `on_tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut deadline = self.last_received + self.config.link_timeout;
        if let Some(in_flight) = &self.in_flight {
            deadline = deadline.min(in_flight.sent_at + self.config.reply_timeout);
        } else if self.phase == Phase::Ready && self.requests.is_empty() {
            deadline = deadline.min(self.last_sent + self.config.keep_alive);
        }
        if let Some((_, sent_at)) = self.link.as_ref().and_then(|l| l.awaiting) {
            deadline = deadline.min(sent_at + self.config.reply_timeout);
        }
        Some(deadline)
    }

    pub fn on_tick(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Some(in_flight) = &self.in_flight
            && now >= in_flight.sent_at + self.config.reply_timeout
        {
            let mid = in_flight.mid;
            return self.close(CloseReason::Timeout { mid });
        }
        if let Some((mid, sent_at)) = self.link.as_ref().and_then(|l| l.awaiting)
            && now >= sent_at + self.config.reply_timeout
        {
            return self.close(CloseReason::Timeout { mid });
        }
        if now >= self.last_received + self.config.link_timeout {
            return self.close(CloseReason::Silent);
        }
        if self.phase == Phase::Ready
            && self.in_flight.is_none()
            && self.requests.is_empty()
            && now >= self.last_sent + self.config.keep_alive
        {
            self.requests.push_back(Request::KeepAlive);
            self.pump(now);
        }
    }

    /// A framing error or a dropped connection ends the session here.
    pub fn on_link_lost(&mut self, reason: CloseReason) {
        if self.phase != Phase::Closed {
            self.close(reason);
        }
    }

    pub fn on_frame(&mut self, telegram: Telegram, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_received = now;
        let mid = telegram.header.mid;
        let mut link_ack = None;
        if let Some(link) = &mut self.link
            && let Some(seq) = telegram.header.seq
            && mid != m::MID_LINK_ACK
            && mid != m::MID_LINK_NACK
        {
            let ack = link_ack_telegram(mid, seq);
            if link.last_received_seq == Some(seq) {
                // A retransmission: acknowledge again, do not process again.
                return self.transmit_now(ack, now);
            }
            link.last_received_seq = Some(seq);
            if mid == m::MID_RESULT || mid == m::MID_OLD_RESULT {
                // Acknowledged only after the commit.
                link_ack = Some(ack);
            } else {
                self.transmit_now(ack, now);
            }
        }
        let message = match Message::from_telegram(&telegram) {
            Ok(message) => message,
            Err(err) => return self.unusable(&telegram, &err, link_ack, now),
        };
        match message {
            Message::LinkAck { mid: acked } => self.on_link_ack(acked, now),
            Message::LinkNack { mid: nacked, code } => {
                self.close(CloseReason::Protocol(format!("link-level NACK of MID {nacked:04}, code {code:04}")))
            }
            Message::CommStartAck(info) => self.on_started(info, now),
            Message::Accepted { mid: accepted } => self.on_answer(accepted, None, now),
            Message::Error { mid: failed, code } => self.on_answer(failed, Some(code), now),
            Message::KeepAlive => {
                if matches!(self.in_flight, Some(InFlight { request: Request::KeepAlive, .. })) {
                    self.in_flight = None;
                    self.pump(now);
                }
            }
            Message::Result(tightening) => self.on_result(tightening, ResultSource::Live, link_ack, now),
            Message::OldResult(tightening) => self.on_old_result(tightening, link_ack, now),
            Message::PsetSelected { pset, .. } => {
                self.on_pushed(SessionEvent::PsetSelected(pset), Message::PsetAck, now)
            }
            Message::LockStatus { locked } => self.on_pushed(SessionEvent::BatchLocked(locked), Message::LockAck, now),
            Message::Vin { vin } => self.on_pushed(SessionEvent::Vin(vin), Message::VinAck, now),
            Message::Alarm(alarm) => {
                self.on_pushed(SessionEvent::Alarm { code: alarm.code, active: true }, Message::AlarmAck, now)
            }
            Message::AlarmStatus { active, alarm } => {
                self.on_pushed(SessionEvent::Alarm { code: alarm.code, active }, Message::AlarmStatusAck, now)
            }
            other => self.outputs.push_back(Output::Event(SessionEvent::Unusable {
                mid,
                reason: format!("unexpected {:?} from the controller", other.mid()),
                raw: raw_text(&telegram),
            })),
        }
    }

    fn on_started(&mut self, info: ControllerInfo, now: Instant) {
        if !matches!(self.in_flight, Some(InFlight { request: Request::Start, .. })) {
            return;
        }
        self.in_flight = None;
        if self.config.link_level && info.revision >= 6 && info.sequence_numbers {
            self.link = Some(LinkLevel { next_seq: 1, ..LinkLevel::default() });
        }
        self.controller = Some(info);
        self.phase = Phase::Subscribing;
        if self.newest_id.is_none() {
            // First link ever: take the baseline before results are subscribed, so that
            // every result after it is either pushed or found missing and fetched.
            self.requests.push_back(Request::Latest);
        }
        self.subscriptions = Subscription::ALL.into_iter().collect();
        self.requests.extend(Subscription::ALL.map(Request::Subscribe));
        self.pump(now);
    }

    /// MID 0005 (`code == None`) or MID 0004 answering the request in flight.
    fn on_answer(&mut self, answered_mid: u16, code: Option<ErrorCode>, now: Instant) {
        let Some(in_flight) = self.in_flight.take() else {
            self.unexpected_answer(answered_mid, code);
            return;
        };
        if in_flight.mid != answered_mid {
            self.in_flight = Some(in_flight);
            self.unexpected_answer(answered_mid, code);
            return;
        }
        match (in_flight.request, code) {
            (Request::Start, Some(code)) => {
                if code == ErrorCode::REVISION_UNSUPPORTED && self.comm_revision > 1 {
                    self.comm_revision -= 1;
                    self.requests.push_front(Request::Start);
                } else if code == ErrorCode::ALREADY_CONNECTED {
                    return self.close(CloseReason::AlreadyConnected);
                } else {
                    return self.close(CloseReason::Refused(code));
                }
            }
            (Request::Start, None) => {}
            (Request::Subscribe(sub), code) => self.on_subscribe_answer(sub, code),
            (Request::Command(id, _), code) => {
                let result = match code {
                    None => Ok(()),
                    Some(code) => Err(CommandError::Rejected(code)),
                };
                self.outputs.push_back(Output::Completed(id, result));
            }
            (Request::Latest, Some(code)) if code == ErrorCode::TIGHTENING_NOT_FOUND => {
                // The controller has no results at all.
                if self.newest_id.is_none() {
                    self.newest_id = Some(0);
                    self.outputs.push_back(Output::Baseline(0));
                }
            }
            (Request::Backfill(_), Some(code)) if code == ErrorCode::TIGHTENING_NOT_FOUND => {}
            (Request::Latest | Request::Backfill(_), Some(code)) => {
                // The controller cannot give us old results: stop asking.
                self.requests.retain(|r| !matches!(r, Request::Backfill(_)));
                self.outputs.push_back(Output::Event(SessionEvent::SubscriptionRefused {
                    mid: m::MID_OLD_RESULT_REQUEST,
                    code,
                }));
            }
            (Request::Latest | Request::Backfill(_) | Request::KeepAlive, None) => {}
            (Request::Stop, _) => return self.close(CloseReason::Stopped),
            (Request::KeepAlive, Some(_)) => {}
        }
        self.pump(now);
    }

    fn on_subscribe_answer(&mut self, sub: Subscription, code: Option<ErrorCode>) {
        match code {
            Some(code)
                if code.is_revision_unsupported() && sub == Subscription::Results && self.result_revision > 1 =>
            {
                self.result_revision = if self.result_revision > 7 { 7 } else { self.result_revision - 1 };
                self.requests.push_front(Request::Subscribe(sub));
                return;
            }
            Some(code) if !code.is_already_subscribed() => {
                let mid = sub.message(self.result_revision).mid();
                self.outputs.push_back(Output::Event(SessionEvent::SubscriptionRefused { mid, code }));
            }
            _ => {}
        }
        self.subscriptions.retain(|s| *s != sub);
        if self.subscriptions.is_empty() && self.phase == Phase::Subscribing {
            self.phase = Phase::Ready;
            let info = self.controller.clone().unwrap_or_default();
            self.outputs.push_back(Output::Ready(info));
            // Holes left by an earlier link first, then how far the controller got.
            let missing = std::mem::take(&mut self.missing);
            let limit = self.config.backfill_limit as usize;
            for id in missing.iter().rev().take(limit).rev() {
                if self.backfill_requested.insert(*id) {
                    self.requests.push_back(Request::Backfill(*id));
                }
            }
            self.requests.push_back(Request::Latest);
        }
    }

    fn unexpected_answer(&mut self, mid: u16, code: Option<ErrorCode>) {
        let reason = match code {
            Some(code) => format!("MID 0004 for MID {mid:04} that we did not send: {code}"),
            None => format!("MID 0005 for MID {mid:04} that we did not send"),
        };
        self.outputs.push_back(Output::Event(SessionEvent::Unusable { mid, reason, raw: String::new() }));
    }

    fn on_result(&mut self, tightening: Tightening, source: ResultSource, link_ack: Option<Telegram>, now: Instant) {
        let id = tightening.tightening_id;
        let gap = self.newest_id.filter(|newest| id > newest + 1).map(|newest| newest + 1..id);
        // A controller that had no results at the baseline (newest 0) may number its first
        // from where its counter stands rather than from 1: a gap from 0 wider than the
        // backfill limit is that counter, not results we missed.
        let gap = gap.filter(|gap| gap.start > 1 || gap.end - gap.start <= self.config.backfill_limit);
        self.newest_id = Some(self.newest_id.map_or(id, |n| n.max(id)));
        let ack = match (&self.link, source) {
            (Some(_), _) => link_ack,
            (None, ResultSource::Live) => Some(Message::ResultAck.to_telegram()),
            (None, ResultSource::Backfill) => None,
        };
        self.outputs.push_back(Output::Persist { tightening: Box::new(tightening), source, ack: AckToken(ack) });
        if let Some(gap) = gap {
            self.request_backfill(gap, now);
        }
        self.pump(now);
    }

    fn on_old_result(&mut self, tightening: Tightening, link_ack: Option<Telegram>, now: Instant) {
        let latest = matches!(self.in_flight.as_ref().map(|f| &f.request), Some(Request::Latest));
        if matches!(self.in_flight.as_ref().map(|f| &f.request), Some(Request::Latest | Request::Backfill(_))) {
            self.in_flight = None;
        }
        if latest && self.newest_id.is_none() {
            // First link: the controller's history is not ours to fetch.
            self.newest_id = Some(tightening.tightening_id);
            self.outputs.push_back(Output::Baseline(tightening.tightening_id));
            if let Some(ack) = link_ack {
                self.transmit_now(ack, now);
            }
            self.pump(now);
            return;
        }
        self.on_result(tightening, ResultSource::Backfill, link_ack, now);
    }

    fn request_backfill(&mut self, ids: std::ops::Range<u64>, now: Instant) {
        let limit = self.config.backfill_limit;
        let start = ids.start.max(ids.end.saturating_sub(limit));
        if start > ids.start {
            self.outputs.push_back(Output::Event(SessionEvent::Unusable {
                mid: m::MID_OLD_RESULT_REQUEST,
                reason: format!(
                    "{} missing tightening IDs ({}..{}); fetching only the newest {limit}",
                    ids.end - ids.start,
                    ids.start,
                    ids.end
                ),
                raw: String::new(),
            }));
        }
        for id in start..ids.end {
            if self.backfill_requested.insert(id) {
                self.requests.push_back(Request::Backfill(id));
            }
        }
        self.pump(now);
    }

    fn on_pushed(&mut self, event: SessionEvent, ack: Message, now: Instant) {
        self.outputs.push_back(Output::Event(event));
        if self.link.is_none() {
            self.transmit_now(ack.to_telegram(), now);
        }
    }

    fn on_link_ack(&mut self, acked: u16, now: Instant) {
        let Some(link) = &mut self.link else { return };
        if link.awaiting.is_some_and(|(mid, _)| mid == acked) {
            link.awaiting = None;
            if let Some(next) = link.backlog.pop_front() {
                self.send_sequenced(next, now);
            }
        }
    }

    fn unusable(&mut self, telegram: &Telegram, err: &ParseError, link_ack: Option<Telegram>, now: Instant) {
        self.outputs.push_back(Output::Event(SessionEvent::Unusable {
            mid: telegram.header.mid,
            reason: err.to_string(),
            raw: raw_text(telegram),
        }));
        // A result we cannot read is still acknowledged: otherwise the controller re-sends
        // it and drops the link, again and again. Its bytes are in the log.
        if telegram.header.mid == m::MID_RESULT {
            let ack = if self.link.is_some() { link_ack } else { Some(Message::ResultAck.to_telegram()) };
            if let Some(ack) = ack {
                self.transmit_now(ack, now);
            }
        } else if let Some(InFlight { request: Request::Latest | Request::Backfill(_), .. }) = &self.in_flight
            && telegram.header.mid == m::MID_OLD_RESULT
        {
            if let Some(ack) = link_ack {
                self.transmit_now(ack, now);
            }
            self.in_flight = None;
            self.pump(now);
        }
    }

    /// Sends the next request when none is in flight.
    fn pump(&mut self, now: Instant) {
        if self.in_flight.is_some() || self.phase == Phase::Closed {
            return;
        }
        let Some(request) = self.requests.pop_front() else { return };
        let message = match &request {
            Request::Start => Message::CommStart { revision: self.comm_revision },
            Request::Subscribe(sub) => sub.message(self.result_revision),
            Request::Command(_, command) => command.message(),
            Request::KeepAlive => Message::KeepAlive,
            Request::Latest => Message::OldResultRequest { tightening_id: 0 },
            Request::Backfill(id) => Message::OldResultRequest { tightening_id: *id },
            Request::Stop => Message::CommStop,
        };
        let telegram = message.to_telegram();
        self.in_flight = Some(InFlight { mid: telegram.header.mid, request, sent_at: now });
        if self.link.is_some() {
            self.send_sequenced(telegram, now);
        } else {
            self.transmit_now(telegram, now);
        }
    }

    fn send_sequenced(&mut self, mut telegram: Telegram, now: Instant) {
        let Some(link) = &mut self.link else { return self.transmit_now(telegram, now) };
        if link.awaiting.is_some() {
            link.backlog.push_back(telegram);
            return;
        }
        telegram.header.seq = Some(link.next_seq);
        link.next_seq = if link.next_seq >= 99 { 1 } else { link.next_seq + 1 };
        link.awaiting = Some((telegram.header.mid, now));
        self.transmit_now(telegram, now);
    }

    fn transmit_now(&mut self, telegram: Telegram, now: Instant) {
        self.last_sent = now;
        self.outputs.push_back(Output::Transmit(telegram));
    }

    fn fail_queued_commands(&mut self) {
        for request in &self.requests {
            if let Request::Command(id, _) = request {
                self.outputs.push_back(Output::Completed(*id, Err(CommandError::Disconnected)));
            }
        }
        self.requests.retain(|r| !matches!(r, Request::Command(..)));
    }

    fn close(&mut self, reason: CloseReason) {
        if let Some(InFlight { request: Request::Command(id, _), .. }) = self.in_flight.take() {
            self.outputs.push_back(Output::Completed(id, Err(CommandError::Disconnected)));
        }
        self.fail_queued_commands();
        self.requests.clear();
        self.phase = Phase::Closed;
        self.outputs.push_back(Output::Closed(reason));
    }
}

fn link_ack_telegram(mid: u16, received_seq: u8) -> Telegram {
    let mut ack = Message::LinkAck { mid }.to_telegram();
    ack.header.seq = Some(if received_seq >= 99 { 1 } else { received_seq + 1 });
    ack
}

fn raw_text(telegram: &Telegram) -> String {
    let mut bytes = Vec::new();
    let _ = super::codec::encode(telegram, &mut bytes);
    bytes.pop();
    bytes.iter().map(|b| if (0x20..0x7f).contains(b) { *b as char } else { '.' }).collect()
}

/// Reconnect delays: exponential from `min` to `max` with jitter, and at least `busy`
/// after error 96 (the controller holds a half-open session until its own timeout).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub busy: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, busy: Duration) -> Backoff {
        Backoff { min, max, busy, attempt: 0 }
    }

    /// A session reached Ready: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// `jitter` in 0..1 spreads the delay over its upper half.
    pub fn next_delay(&mut self, reason: &CloseReason, jitter: f64) -> Duration {
        let exp = self.min.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let delay = exp.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        if *reason == CloseReason::AlreadyConnected { delay.max(self.busy) } else { delay }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;
    use crate::south::wrench::messages::{Alarm, LimitStatus};

    /// Drives a session on virtual time and renders what it does, one line per output.
    struct Script {
        session: Session,
        t0: Instant,
        now: Instant,
        log: String,
        /// The controller's sequence counter, for link-level scripts.
        controller_seq: u8,
        /// Nothing stored: the session takes a baseline first.
        fresh: bool,
    }

    impl Script {
        fn new(config: SessionConfig, newest: Option<u64>) -> Script {
            let t0 = Instant::now();
            let mut script = Script {
                session: Session::new(config, history(newest), t0),
                t0,
                now: t0,
                log: String::new(),
                controller_seq: 0,
                fresh: newest.is_none(),
            };
            script.session.start(t0);
            script.drain();
            script
        }

        fn at(&mut self, secs: f64) -> &mut Script {
            self.now = self.t0 + Duration::from_secs_f64(secs);
            writeln!(self.log, "-- t={secs}").unwrap();
            self
        }

        fn recv(&mut self, message: Message) -> &mut Script {
            self.recv_telegram(message.to_telegram())
        }

        fn recv_sequenced(&mut self, message: Message) -> &mut Script {
            self.controller_seq = self.controller_seq % 99 + 1;
            let mut telegram = message.to_telegram();
            telegram.header.seq = Some(self.controller_seq);
            self.recv_telegram(telegram)
        }

        fn recv_telegram(&mut self, telegram: Telegram) -> &mut Script {
            let seq = telegram.header.seq.map(|s| format!(" seq {s:02}")).unwrap_or_default();
            writeln!(self.log, "<- {:04} rev {}{seq}", telegram.header.mid, telegram.header.revision).unwrap();
            self.session.on_frame(telegram, self.now);
            self.drain();
            self
        }

        fn tick(&mut self) -> &mut Script {
            self.session.on_tick(self.now);
            self.drain();
            self
        }

        fn persisted_all(&mut self, acks: Vec<AckToken>) -> &mut Script {
            for ack in acks {
                self.session.on_persisted(ack, self.now);
            }
            self.drain();
            self
        }

        /// Renders outputs; returns the ack tokens of results to persist.
        fn drain(&mut self) -> Vec<AckToken> {
            let mut acks = Vec::new();
            while let Some(output) = self.session.poll_output() {
                let line = match output {
                    Output::Transmit(t) => {
                        let seq = t.header.seq.map(|s| format!(" seq {s:02}")).unwrap_or_default();
                        let data = String::from_utf8_lossy(&t.data).trim_end().to_owned();
                        let data = if data.is_empty() { String::new() } else { format!(" [{data}]") };
                        format!("-> {:04} rev {}{seq}{data}", t.header.mid, t.header.revision)
                    }
                    Output::Persist { tightening, source, ack } => {
                        let line = format!("persist {} {source:?}", tightening.tightening_id);
                        acks.push(ack);
                        line
                    }
                    Output::Ready(info) => format!("ready ({})", info.controller_name),
                    Output::Baseline(id) => format!("baseline {id}"),
                    Output::Event(event) => format!("event {event:?}"),
                    Output::Completed(id, result) => format!("completed #{id}: {result:?}"),
                    Output::Closed(reason) => format!("closed: {reason}"),
                };
                writeln!(self.log, "   {line}").unwrap();
            }
            acks
        }

        fn check(&self, expect: Expect) {
            // A first line without indentation keeps expect-test from trimming the
            // output lines' indentation when a log has nothing else.
            expect.assert_eq(&format!("log:\n{}", self.log));
        }
    }

    fn history(newest: Option<u64>) -> ResultHistory {
        ResultHistory { newest, missing: Vec::new() }
    }

    fn info(revision: u16, sequence_numbers: bool) -> Message {
        Message::CommStartAck(ControllerInfo {
            revision,
            controller_name: "sim".into(),
            sequence_numbers,
            ..ControllerInfo::default()
        })
    }

    fn result(id: u64) -> Message {
        Message::Result(Tightening {
            revision: 7,
            tightening_id: id,
            ok: true,
            torque_status: Some(LimitStatus::Ok),
            torque: 1250,
            timestamp: "2026-11-23:10:00:00".into(),
            ..Tightening::default()
        })
    }

    /// Answers the baseline request (fresh sessions), accepts every subscription and
    /// answers the newest-result request: the controller has no results yet.
    fn subscribe_all(s: &mut Script) {
        if s.fresh {
            s.recv(Message::Error { mid: 64, code: ErrorCode(15) });
        }
        subscribe_only(s);
        s.recv(Message::Error { mid: 64, code: ErrorCode(15) });
    }

    fn subscribe_only(s: &mut Script) {
        for mid in [60, 14, 21, 70, 51] {
            s.recv(Message::Accepted { mid });
        }
    }

    #[test]
    fn handshake_with_revision_fallback_then_subscriptions() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(Message::Error { mid: 1, code: ErrorCode(97) });
        s.recv(Message::Error { mid: 1, code: ErrorCode(97) });
        s.recv(info(4, false));
        s.recv(Message::Error { mid: 64, code: ErrorCode(15) });
        s.recv(Message::Error { mid: 60, code: ErrorCode(97) });
        s.recv(Message::Accepted { mid: 60 });
        s.recv(Message::Accepted { mid: 14 });
        s.recv(Message::PsetSelected { pset: 5, changed_at: String::new() });
        s.recv(Message::Error { mid: 21, code: ErrorCode(99) });
        s.recv(Message::Error { mid: 70, code: ErrorCode(11) });
        s.recv(Message::Accepted { mid: 51 });
        assert_eq!(s.session.phase(), Phase::Ready);
        s.check(expect![[r#"
            log:
               -> 0001 rev 6
            <- 0004 rev 1
               -> 0001 rev 5
            <- 0004 rev 1
               -> 0001 rev 4
            <- 0002 rev 4
               -> 0064 rev 1 [0000000000]
            <- 0004 rev 1
               baseline 0
               -> 0060 rev 7
            <- 0004 rev 1
               -> 0060 rev 6
            <- 0005 rev 1
               -> 0014 rev 1
            <- 0005 rev 1
               -> 0021 rev 1
            <- 0015 rev 1
               event PsetSelected(5)
               -> 0016 rev 1
            <- 0004 rev 1
               event SubscriptionRefused { mid: 21, code: ErrorCode(99) }
               -> 0070 rev 1
            <- 0004 rev 1
               -> 0051 rev 1
            <- 0005 rev 1
               ready (sim)
               -> 0064 rev 1 [0000000000]
        "#]]);
    }

    #[test]
    fn error_96_closes_and_the_backoff_waits_at_least_15_s() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(Message::Error { mid: 1, code: ErrorCode(96) });
        s.check(expect![[r#"
            log:
               -> 0001 rev 6
            <- 0004 rev 1
               closed: controller says a client is already connected (error 96)
        "#]]);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5), Duration::from_secs(15));
        let mut delays: Vec<u128> = (0..6).map(|_| backoff.next_delay(&CloseReason::Silent, 1.0).as_millis()).collect();
        delays.push(backoff.next_delay(&CloseReason::AlreadyConnected, 0.0).as_millis());
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000, 15000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(&CloseReason::Silent, 0.0), Duration::from_millis(250));
    }

    #[test]
    fn results_are_acknowledged_only_after_the_commit() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(2, false));
        subscribe_all(&mut s);
        s.log.clear();
        s.recv(result(1));
        let acks = s.drain();
        assert!(acks.is_empty(), "rendered already");
        s.check(expect![[r#"
            log:
            <- 0061 rev 7
               persist 1 Live
        "#]]);
        // Nothing went out before on_persisted; now the 0062 does.
        let mut s2 = Script::new(SessionConfig::default(), None);
        s2.recv(info(2, false));
        subscribe_all(&mut s2);
        s2.log.clear();
        s2.session.on_frame(result(1).to_telegram(), s2.now);
        let mut acks = Vec::new();
        while let Some(output) = s2.session.poll_output() {
            match output {
                Output::Persist { ack, .. } => acks.push(ack),
                other => panic!("nothing but the persist request before the commit: {other:?}"),
            }
        }
        s2.persisted_all(acks);
        s2.check(expect![[r#"
            log:
               -> 0062 rev 1
        "#]]);
    }

    #[test]
    fn keep_alive_after_10_s_of_silence_and_dead_link_after_15() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(1, false));
        subscribe_all(&mut s);
        s.log.clear();
        assert_eq!(s.session.next_deadline(), Some(s.t0 + Duration::from_secs(10)));
        s.at(9.9).tick();
        s.at(10.0).tick();
        s.at(10.1).recv(Message::KeepAlive);
        s.at(20.0).tick();
        s.at(25.0).tick();
        s.at(25.1).tick();
        s.check(expect![[r#"
            log:
            -- t=9.9
            -- t=10
               -> 9999 rev 1
            -- t=10.1
            <- 9999 rev 1
            -- t=20
               -> 9999 rev 1
            -- t=25
            -- t=25.1
               closed: nothing received within the link timeout
        "#]]);
        // A controller that stops talking while we have nothing to ask: dead at 15 s.
        let mut quiet =
            Script::new(SessionConfig { keep_alive: Duration::from_secs(60), ..SessionConfig::default() }, None);
        quiet.recv(info(1, false));
        subscribe_all(&mut quiet);
        quiet.log.clear();
        quiet.at(14.9).tick().at(15.0).tick();
        quiet.check(expect![[r#"
            log:
            -- t=14.9
            -- t=15
               closed: nothing received within the link timeout
        "#]]);
    }

    #[test]
    fn commands_one_at_a_time_and_failed_on_disconnect() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.session.command(1, Command::EnableTool, s.now);
        s.drain();
        s.recv(info(1, false));
        subscribe_all(&mut s);
        s.log.clear();
        s.session.command(2, Command::SelectPset(5), s.now);
        s.session.command(3, Command::EnableTool, s.now);
        s.session.command(4, Command::SetBatchSize { pset: 5, size: 4 }, s.now);
        s.drain();
        s.recv(Message::Error { mid: 18, code: ErrorCode(2) });
        s.recv(Message::Accepted { mid: 43 });
        s.session.on_link_lost(CloseReason::Protocol("connection reset".into()));
        s.drain();
        s.session.command(5, Command::AbortJob, s.now);
        s.drain();
        s.check(expect![[r#"
            log:
               -> 0018 rev 1 [005]
            <- 0004 rev 1
               completed #2: Err(Rejected(ErrorCode(2)))
               -> 0043 rev 1
            <- 0005 rev 1
               completed #3: Ok(())
               -> 0019 rev 1 [00504]
               completed #4: Err(Disconnected)
               closed: protocol error: connection reset
               completed #5: Err(NotReady)
        "#]]);
    }

    #[test]
    fn a_gap_is_backfilled_with_mid_0064_and_old_results_are_stored() {
        let mut s = Script::new(SessionConfig::default(), Some(10));
        s.recv(info(1, false));
        subscribe_only(&mut s);
        s.log.clear();
        // After a reconnect: ask for the newest, then fetch what is missing.
        let old = |id| {
            let Message::Result(mut t) = result(id) else { unreachable!() };
            t.revision = 1;
            Message::OldResult(t)
        };
        s.recv(old(13));
        s.recv(old(11));
        s.recv(Message::Error { mid: 64, code: ErrorCode(15) });
        // A live result that skips one.
        s.recv(result(15));
        s.recv(old(14));
        s.check(expect![[r#"
            log:
            <- 0065 rev 1
               persist 13 Backfill
               -> 0064 rev 1 [0000000011]
            <- 0065 rev 1
               persist 11 Backfill
               -> 0064 rev 1 [0000000012]
            <- 0004 rev 1
            <- 0061 rev 7
               persist 15 Live
               -> 0064 rev 1 [0000000014]
            <- 0065 rev 1
               persist 14 Backfill
        "#]]);
    }

    #[test]
    fn first_link_takes_a_baseline_later_links_fill_holes_first() {
        let old = |id| {
            let Message::Result(mut t) = result(id) else { unreachable!() };
            t.revision = 1;
            Message::OldResult(t)
        };
        let mut first = Script::new(SessionConfig::default(), None);
        first.recv(info(1, false));
        first.recv(old(500));
        subscribe_only(&mut first);
        first.recv(old(501));
        first.recv(result(503));
        let mut empty = Script::new(SessionConfig::default(), None);
        empty.recv(info(1, false));
        empty.log.clear();
        empty.recv(Message::Error { mid: 64, code: ErrorCode(15) });
        first.log.push_str(&empty.log);

        let t0 = Instant::now();
        let mut later = Script {
            session: Session::new(
                SessionConfig::default(),
                ResultHistory { newest: Some(20), missing: vec![17, 18] },
                t0,
            ),
            t0,
            now: t0,
            log: String::new(),
            controller_seq: 0,
            fresh: false,
        };
        later.session.start(t0);
        later.recv(info(1, false));
        subscribe_only(&mut later);
        later.log.clear();
        later.recv(old(17));
        later.recv(Message::Error { mid: 64, code: ErrorCode(15) });
        later.recv(old(21));
        first.log.push_str(&later.log);
        first.check(expect![[r#"
            log:
               -> 0001 rev 6
            <- 0002 rev 1
               -> 0064 rev 1 [0000000000]
            <- 0065 rev 1
               baseline 500
               -> 0060 rev 7
            <- 0005 rev 1
               -> 0014 rev 1
            <- 0005 rev 1
               -> 0021 rev 1
            <- 0005 rev 1
               -> 0070 rev 1
            <- 0005 rev 1
               -> 0051 rev 1
            <- 0005 rev 1
               ready (sim)
               -> 0064 rev 1 [0000000000]
            <- 0065 rev 1
               persist 501 Backfill
            <- 0061 rev 7
               persist 503 Live
               -> 0064 rev 1 [0000000502]
            <- 0004 rev 1
               baseline 0
               -> 0060 rev 7
            <- 0065 rev 1
               persist 17 Backfill
               -> 0064 rev 1 [0000000018]
            <- 0004 rev 1
               -> 0064 rev 1 [0000000000]
            <- 0065 rev 1
               persist 21 Backfill
        "#]]);
    }

    #[test]
    fn an_empty_controller_numbering_from_its_counter_is_not_a_gap() {
        // Baseline 0 (no results), then a first result from a running counter: no
        // backfill. Numbered from 1, the results before it are fetched (one request at a
        // time: the first of three is on the wire).
        for (first_result, backfill_requests) in [(4_000_000, 0), (4, 1)] {
            let mut script = Script::new(SessionConfig::default(), None);
            script.recv(info(1, false));
            script.recv(Message::Error { mid: 64, code: ErrorCode(15) });
            subscribe_only(&mut script);
            // The newest-result query after subscribing: still none.
            script.recv(Message::Error { mid: 64, code: ErrorCode(15) });
            script.log.clear();
            script.recv(result(first_result));
            let requests = script.log.matches("-> 0064").count();
            assert_eq!(requests, backfill_requests, "first result {first_result}:\n{}", script.log);
        }
    }

    #[test]
    fn link_level_acknowledgement() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(6, true));
        assert!(s.session.link_level());
        // Our requests go out sequenced; the next waits for the 9997 of the last.
        s.recv(Message::LinkAck { mid: 64 });
        s.recv_sequenced(Message::Error { mid: 64, code: ErrorCode(15) });
        s.recv(Message::LinkAck { mid: 60 });
        s.recv_sequenced(Message::Accepted { mid: 60 });
        s.recv(Message::LinkAck { mid: 14 });
        s.recv_sequenced(Message::PsetSelected { pset: 3, changed_at: String::new() });
        s.recv_sequenced(Message::Accepted { mid: 14 });
        for mid in [21, 70, 51] {
            s.recv(Message::LinkAck { mid });
            s.recv_sequenced(Message::Accepted { mid });
        }
        s.recv(Message::LinkAck { mid: 64 });
        s.recv_sequenced(Message::Error { mid: 64, code: ErrorCode(15) });
        s.recv_sequenced(result(1));
        // A retransmission of the same sequence number is acknowledged, not processed.
        let mut again = Message::Accepted { mid: 51 }.to_telegram();
        again.header.seq = Some(s.controller_seq - 1);
        let acks_before = s.log.matches("persist").count();
        s.recv_telegram(again);
        assert_eq!(s.log.matches("persist").count(), acks_before);
        s.check(expect![[r#"
            log:
               -> 0001 rev 6
            <- 0002 rev 6
               -> 0064 rev 1 seq 01 [0000000000]
            <- 9997 rev 1
            <- 0004 rev 1 seq 01
               -> 9997 rev 1 seq 02 [0004]
               baseline 0
               -> 0060 rev 7 seq 02
            <- 9997 rev 1
            <- 0005 rev 1 seq 02
               -> 9997 rev 1 seq 03 [0005]
               -> 0014 rev 1 seq 03
            <- 9997 rev 1
            <- 0015 rev 1 seq 03
               -> 9997 rev 1 seq 04 [0015]
               event PsetSelected(3)
            <- 0005 rev 1 seq 04
               -> 9997 rev 1 seq 05 [0005]
               -> 0021 rev 1 seq 04
            <- 9997 rev 1
            <- 0005 rev 1 seq 05
               -> 9997 rev 1 seq 06 [0005]
               -> 0070 rev 1 seq 05
            <- 9997 rev 1
            <- 0005 rev 1 seq 06
               -> 9997 rev 1 seq 07 [0005]
               -> 0051 rev 1 seq 06
            <- 9997 rev 1
            <- 0005 rev 1 seq 07
               -> 9997 rev 1 seq 08 [0005]
               ready (sim)
               -> 0064 rev 1 seq 07 [0000000000]
            <- 9997 rev 1
            <- 0004 rev 1 seq 08
               -> 9997 rev 1 seq 09 [0004]
            <- 0061 rev 7 seq 09
               persist 1 Live
            <- 0005 rev 1 seq 08
               -> 9997 rev 1 seq 09 [0005]
               event Unusable { mid: 51, reason: "MID 0005 for MID 0051 that we did not send", raw: "" }
        "#]]);
    }

    #[test]
    fn link_level_result_ack_waits_for_the_commit() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(6, true));
        s.recv(Message::LinkAck { mid: 64 });
        s.recv_sequenced(Message::Error { mid: 64, code: ErrorCode(15) });
        for mid in [60, 14, 21, 70, 51] {
            s.recv(Message::LinkAck { mid });
            s.recv_sequenced(Message::Accepted { mid });
        }
        s.recv(Message::LinkAck { mid: 64 });
        s.recv_sequenced(Message::Error { mid: 64, code: ErrorCode(15) });
        s.log.clear();
        let mut telegram = result(1).to_telegram();
        telegram.header.seq = Some(42);
        s.session.on_frame(telegram, s.now);
        let mut acks = Vec::new();
        while let Some(output) = s.session.poll_output() {
            if let Output::Persist { ack, .. } = output {
                acks.push(ack);
            }
        }
        s.persisted_all(acks);
        s.check(expect![[r#"
            log:
               -> 9997 rev 1 seq 43 [0061]
        "#]]);
    }

    #[test]
    fn stop_disables_the_tool_then_sends_0003() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(1, false));
        subscribe_all(&mut s);
        s.recv(Message::Alarm(Alarm { revision: 1, code: "E404".into(), ..Alarm::default() }));
        s.log.clear();
        s.session.stop(s.now);
        s.drain();
        s.recv(Message::Accepted { mid: 42 });
        s.recv(Message::Accepted { mid: 3 });
        s.check(expect![[r#"
            log:
               -> 0042 rev 1
            <- 0005 rev 1
               completed #0: Ok(())
               -> 0003 rev 1
            <- 0005 rev 1
               closed: stopped
        "#]]);
    }

    #[test]
    fn unusable_results_are_logged_and_acknowledged() {
        let mut s = Script::new(SessionConfig::default(), None);
        s.recv(info(1, false));
        subscribe_all(&mut s);
        s.log.clear();
        let mut broken = result(5).to_telegram();
        broken.data[0..2].copy_from_slice(b"99");
        broken.data.truncate(30);
        s.recv_telegram(broken);
        s.check(expect![[r#"
            log:
            <- 0061 rev 7
               event Unusable { mid: 61, reason: "MID 0061: expected parameter 01 at byte 21, found \"99\"", raw: "005000610070        99    02  03                  " }
               -> 0062 rev 1
        "#]]);
    }
}
