//! The `coaching` service: guides one unit at a time through a published assembly with
//! `core::assembly::Session`, and keeps its unit record.
//!
//! It feeds the session the station's facts (stored camera inspections, stored
//! tightenings, GPIO edges, the e-stop input, a one-second tick) and the operator's
//! commands (from REST and the coaching WebSocket, through `Coaching`), and carries out
//! what the session asks: inspections of the station's camera (one at a time, at most one
//! per `inspect_interval`), wrench releases and disables, output changes and input reads.
//!
//! Every message of the session is committed to the unit record before it is shown to
//! anyone (WebSocket, status, MQTT, OPC-UA). A finished record gets its MQTT outbox row in
//! the transaction that finishes it. A record left open by a crash is closed as aborted at
//! the next start. When the daemon stops, the unit being built is interrupted first, so its
//! wrenches are disabled and its outputs reset while the devices are still up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use uuid::Uuid;

use crate::bus::Notification;
use crate::config::CoachingConfig;
use crate::core::assembly::{
    Action, Effect, Input, Message, Outcome, Plan, Prediction, Session, StartContext, State, StepPlan,
};
use crate::core::outputs::OutputCommand;
use crate::cycle::{CycleError, CycleImage, InspectRequest, Inspector};
use crate::south::gpio::{GpioHandle, InputEdge};
use crate::south::wrench::{Command, Wrenches};
use crate::storage::{Assembly, InspectionRecord, Operator, Source, Step, Storage, StorageError, UnitEvent};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum CoachingError {
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (a unit is already being built...).
    #[error("{0}")]
    Refused(String),
    /// The assembly or the request cannot be coached as given.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("coaching has stopped")]
    Stopped,
}

/// The unit being built, as the plant interfaces show it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitStatus {
    pub record_id: Uuid,
    pub assembly_id: Uuid,
    pub assembly_name: String,
    pub revision: u32,
    pub serial: String,
    pub operator_id: i64,
    pub operator_name: String,
    pub paused: bool,
    pub step_index: usize,
    pub step_name: String,
    pub step_count: usize,
    /// OK tightenings counted in this step, and how many it needs.
    pub torque_done: (u32, u32),
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastUnit {
    pub record_id: Uuid,
    pub serial: String,
    pub outcome: Outcome,
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CoachingStatus {
    pub station_id: String,
    pub unit: Option<UnitStatus>,
    pub last: Option<LastUnit>,
}

/// A session message as committed to the unit record.
#[derive(Debug, Clone, PartialEq)]
pub struct CoachingMessage {
    pub record_id: Uuid,
    pub at: DateTime<Utc>,
    pub message: Message,
}

pub struct StartRequest {
    pub assembly_id: Uuid,
    pub operator_id: i64,
    pub serial: String,
    pub first_step: usize,
}

enum Request {
    Start(StartRequest, oneshot::Sender<Result<Arc<CoachingStatus>, CoachingError>>),
    Command {
        record_id: Option<Uuid>,
        input: Input,
        reply: oneshot::Sender<Result<Arc<CoachingStatus>, CoachingError>>,
    },
}

/// Cheap to clone: the REST API, the WebSocket, MQTT and OPC-UA hold one.
#[derive(Clone)]
pub struct Coaching {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<Arc<CoachingStatus>>,
    messages: broadcast::Sender<CoachingMessage>,
}

impl Coaching {
    pub async fn start(&self, request: StartRequest) -> Result<Arc<CoachingStatus>, CoachingError> {
        self.ask(|reply| Request::Start(request, reply)).await
    }

    /// An operator command for the unit being built (`record_id`, when given, must be it).
    pub async fn command(&self, record_id: Option<Uuid>, input: Input) -> Result<Arc<CoachingStatus>, CoachingError> {
        self.ask(|reply| Request::Command { record_id, input, reply }).await
    }

    pub fn status(&self) -> Arc<CoachingStatus> {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<CoachingStatus>> {
        self.status.clone()
    }

    /// Session messages from now on, after they are committed.
    pub fn messages(&self) -> broadcast::Receiver<CoachingMessage> {
        self.messages.subscribe()
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<Arc<CoachingStatus>, CoachingError>>) -> Request,
    ) -> Result<Arc<CoachingStatus>, CoachingError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| CoachingError::Stopped)?;
        answer.await.map_err(|_| CoachingError::Stopped)?
    }
}

/// What the service drives.
pub struct Devices {
    pub storage: Storage,
    pub inspector: Inspector,
    pub wrenches: Wrenches,
    pub gpio: Option<GpioHandle>,
    pub notifications: broadcast::Sender<Notification>,
}

pub fn spawn(supervisor: &mut Supervisor, config: CoachingConfig, devices: Devices) -> Coaching {
    let station = config.station.clone().unwrap_or_default();
    let (requests, rx) = mpsc::channel(16);
    let initial = Arc::new(CoachingStatus { station_id: station.clone(), unit: None, last: None });
    let (status, status_rx) = watch::channel(initial);
    let (messages, _) = broadcast::channel(256);
    let handle = Coaching { requests, status: status_rx, messages: messages.clone() };
    let notifications = devices.notifications.subscribe();
    let edges = devices.gpio.as_ref().map(GpioHandle::edges);
    let service = Service {
        config,
        station,
        devices,
        status,
        messages,
        unit: None,
        last: None,
        inspect_wanted: false,
        last_inspect: None,
    };
    supervisor.spawn("coaching", Phase::Intake, move |ctx| service.run(ctx, rx, notifications, edges));
    handle
}

struct Unit {
    session: Session,
    record_seq: i64,
    record_id: Uuid,
    assembly: Assembly,
    operator: Operator,
    started_at: DateTime<Utc>,
}

type Inspection = Pin<Box<dyn Future<Output = Result<InspectionRecord, CycleError>> + Send>>;

struct Service {
    config: CoachingConfig,
    station: String,
    devices: Devices,
    status: watch::Sender<Arc<CoachingStatus>>,
    messages: broadcast::Sender<CoachingMessage>,
    unit: Option<Unit>,
    last: Option<LastUnit>,
    /// The session asked for a frame.
    inspect_wanted: bool,
    last_inspect: Option<Instant>,
}

async fn next_edge(edges: &mut Option<broadcast::Receiver<InputEdge>>) -> Result<InputEdge, RecvError> {
    match edges {
        Some(edges) => edges.recv().await,
        None => std::future::pending().await,
    }
}

async fn finish_inspection(inspection: &mut Option<Inspection>) -> Result<InspectionRecord, CycleError> {
    match inspection {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

impl Service {
    async fn run(
        mut self,
        ctx: ServiceContext,
        mut requests: mpsc::Receiver<Request>,
        mut notifications: broadcast::Receiver<Notification>,
        mut edges: Option<broadcast::Receiver<InputEdge>>,
    ) -> Result<(), ServiceError> {
        let now = Utc::now();
        match self.devices.storage.call(move |db| db.close_open_unit_records(now)).await {
            Ok(closed) => {
                for id in closed {
                    tracing::warn!(record = %id, "unit record left open by the last run closed as aborted");
                }
            }
            Err(StorageError::Stopped) => return Ok(()),
            Err(err) => return Err(ServiceError::new(err)),
        }
        ctx.set_ready();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inspection: Option<Inspection> = None;
        loop {
            let may_inspect = self.inspect_wanted && inspection.is_none() && self.unit.is_some();
            let inspect_at = self.last_inspect.map_or_else(tokio::time::Instant::now, |at| {
                tokio::time::Instant::from_std(at + self.config.inspect_interval)
            });
            tokio::select! {
                () = ctx.token.cancelled() => break,
                Some(request) = requests.recv() => self.request(request).await?,
                notification = notifications.recv() => match notification {
                    Ok(notification) => {
                        if let Some(input) = self.input_of(&notification) {
                            self.feed(input).await?;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "coaching fell behind the notifications; results may be missing from the unit");
                    }
                    Err(RecvError::Closed) => break,
                },
                edge = next_edge(&mut edges) => match edge {
                    Ok(edge) => {
                        let input = if self.config.estop_input.as_deref() == Some(edge.input.as_str()) {
                            if !edge.active {
                                continue;
                            }
                            tracing::warn!(input = edge.input, "e-stop");
                            Input::EStop
                        } else {
                            Input::Level { line: edge.input, active: edge.active }
                        };
                        self.feed(input).await?;
                    }
                    Err(RecvError::Lagged(n)) => tracing::error!(missed = n, "coaching missed GPIO edges"),
                    Err(RecvError::Closed) => edges = None,
                },
                _ = tick.tick() => self.feed(Input::Tick).await?,
                result = finish_inspection(&mut inspection) => {
                    inspection = None;
                    // A stored result comes back through the notifications; only failures here.
                    if let Err(err) = result {
                        tracing::warn!(cause = %err, "coaching inspection failed");
                        self.feed(Input::InspectionFailed { reason: err.to_string() }).await?;
                    }
                }
                () = tokio::time::sleep_until(inspect_at), if may_inspect => {
                    self.inspect_wanted = false;
                    self.last_inspect = Some(Instant::now());
                    let inspector = self.devices.inspector.clone();
                    let request = InspectRequest {
                        station_id: self.station.clone(),
                        part_id: self.unit.as_ref().map(|u| u.session.context().serial.clone()),
                        image: CycleImage::Camera,
                        triggered_at: Instant::now(),
                        expected: None,
                    };
                    inspection = Some(Box::pin(async move { inspector.inspect(request).await }));
                }
            }
        }
        if self.unit.is_some() {
            self.feed(Input::Interrupt { reason: "the daemon is stopping".into() }).await?;
        }
        // An inspection still running finishes in the cycle; its record stays outside the unit.
        drop(inspection);
        Ok(())
    }

    /// The session input a notification carries, if it concerns the unit being built.
    fn input_of(&self, notification: &Notification) -> Option<Input> {
        self.unit.as_ref()?;
        match notification {
            Notification::InspectionCompleted(s) if s.station_id == self.station && s.source == Source::Camera => {
                Some(Input::Prediction(Prediction {
                    inspection_id: s.id,
                    decision: s.decision,
                    label: s.label.clone(),
                    confidence: s.confidence,
                    detected: s.detected.clone(),
                }))
            }
            Notification::TighteningCompleted(t) => Some(Input::Tightening {
                wrench: t.wrench_id.clone(),
                seq: t.seq,
                ok: t.ok,
                torque: t.torque as f64 / 100.0,
                pset: t.pset,
            }),
            _ => None,
        }
    }

    async fn request(&mut self, request: Request) -> Result<(), ServiceError> {
        match request {
            Request::Start(start, reply) => {
                let answer = self.start(start).await;
                if let Err(CoachingError::Storage(err)) = &answer {
                    tracing::error!(cause = %err, "coaching could not start a unit");
                }
                let _ = reply.send(answer);
            }
            Request::Command { record_id, input, reply } => {
                let answer = match &self.unit {
                    None => Err(CoachingError::Refused("no unit is being built".into())),
                    Some(unit) if record_id.is_some_and(|id| id != unit.record_id) => {
                        Err(CoachingError::Refused(format!(
                            "assembly record {} is not the unit being built ({})",
                            record_id.unwrap_or_default(),
                            unit.record_id
                        )))
                    }
                    Some(_) => match self.feed_checked(input).await? {
                        Ok(()) => Ok(self.status.borrow().clone()),
                        Err(refused) => Err(CoachingError::Refused(refused)),
                    },
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    async fn start(&mut self, start: StartRequest) -> Result<Arc<CoachingStatus>, CoachingError> {
        if let Some(unit) = &self.unit {
            return Err(CoachingError::Refused(format!(
                "unit {:?} is being built (assembly record {}): complete or interrupt it first",
                unit.session.context().serial,
                unit.record_id
            )));
        }
        let serial = start.serial.trim().to_owned();
        if serial.is_empty() || serial.len() > 128 || serial.chars().any(char::is_control) {
            return Err(CoachingError::Invalid("serial must have 1 to 128 printable characters".into()));
        }
        if self.station.is_empty() {
            return Err(CoachingError::Refused("this station PC has no station to coach at".into()));
        }
        if let (Some(estop), Some(gpio)) = (&self.config.estop_input, &self.devices.gpio)
            && line_level(gpio, estop).await == Some(true)
        {
            return Err(CoachingError::Refused(format!("the e-stop input {estop:?} is active")));
        }
        let (assembly_id, operator_id) = (start.assembly_id, start.operator_id);
        let (assembly, steps, operator) = self
            .devices
            .storage
            .call(move |db| {
                Ok::<_, StorageError>((db.assembly(assembly_id)?, db.steps(assembly_id)?, db.operator(operator_id)?))
            })
            .await?;
        let assembly = assembly.ok_or_else(|| CoachingError::NotFound(format!("assembly {assembly_id} not found")))?;
        let operator = operator.ok_or_else(|| CoachingError::NotFound(format!("operator {operator_id} not found")))?;
        if !assembly.published {
            return Err(CoachingError::Refused(format!(
                "assembly {assembly_id} (revision {}) is a draft: publish it before coaching",
                assembly.revision
            )));
        }
        if !operator.active {
            return Err(CoachingError::Refused(format!("operator {operator_id} is inactive")));
        }
        let plan = self.plan(&assembly, steps)?;
        let context = StartContext {
            serial: serial.clone(),
            operator: operator.full_name(),
            release_control: self.devices.wrenches.release_control(),
            first_step: start.first_step,
        };
        let now = Utc::now();
        let (session, effects) = Session::start(plan, context, now).map_err(|r| CoachingError::Invalid(r.0))?;
        let record_id = Uuid::new_v4();
        let station = self.station.clone();
        let serial_for_db = serial.clone();
        let record_seq = self
            .devices
            .storage
            .call(move |db| db.start_unit_record(record_id, assembly_id, operator_id, &serial_for_db, &station, now))
            .await?;
        tracing::info!(record = %record_id, serial, assembly = assembly.name, operator = operator.full_name(), "unit started");
        self.unit = Some(Unit { session, record_seq, record_id, assembly, operator, started_at: now });
        self.inspect_wanted = false;
        self.apply(effects, now).await?;
        Ok(self.status.borrow().clone())
    }

    /// Turns stored steps into the session's plan, checking what they refer to.
    fn plan(&self, assembly: &Assembly, steps: Vec<Step>) -> Result<Plan, CoachingError> {
        let wrench_ids = self.devices.wrenches.ids();
        let gpio = self.devices.gpio.as_ref().map(GpioHandle::config);
        let camera = self.devices.inspector.camera_of(&self.station);
        let mut planned = Vec::with_capacity(steps.len());
        for step in steps {
            let at = |what: String| CoachingError::Invalid(format!("step {} ({:?}): {what}", step.index, step.name));
            if let Some(wanted) = &step.camera_id
                && camera != Some(wanted.as_str())
            {
                return Err(at(format!("camera {wanted:?} is not the camera of station {:?}", self.station)));
            }
            let mut actions = Vec::with_capacity(step.actions.len());
            for entry in step.actions {
                let mut action = entry.action;
                match &mut action {
                    Action::Vision(_) if camera.is_none() => {
                        return Err(at(format!("station {:?} has no camera for a vision check", self.station)));
                    }
                    Action::Torque(check) => {
                        if check.wrench.is_empty() {
                            check.wrench = match wrench_ids.as_slice() {
                                [only] => only.clone(),
                                _ => return Err(at("name the wrench: this station has none or several".into())),
                            };
                        }
                        if !wrench_ids.contains(&check.wrench) {
                            return Err(at(format!("no wrench {:?}", check.wrench)));
                        }
                    }
                    Action::Input { line, .. } if !gpio.is_some_and(|g| g.inputs.contains_key(line)) => {
                        return Err(at(format!("no GPIO input {line:?}")));
                    }
                    Action::Output { line, .. } if !gpio.is_some_and(|g| g.outputs.contains_key(line)) => {
                        return Err(at(format!("no GPIO output {line:?}")));
                    }
                    _ => {}
                }
                actions.push(action);
            }
            let delta = |s: Option<f64>| s.map(|s| chrono::TimeDelta::milliseconds((s * 1000.0) as i64));
            planned.push(StepPlan {
                id: step.id,
                name: step.name,
                minimum_predict: step.minimum_predict,
                benchmark: delta(step.benchmark),
                timeout: delta(step.timeout),
                actions,
            });
        }
        Ok(Plan { assembly_id: assembly.id, name: assembly.name.clone(), revision: assembly.revision, steps: planned })
    }

    /// A device input: refusals do not happen for these, and do not matter.
    async fn feed(&mut self, input: Input) -> Result<(), ServiceError> {
        let _ = self.feed_checked(input).await?;
        Ok(())
    }

    async fn feed_checked(&mut self, input: Input) -> Result<Result<(), String>, ServiceError> {
        let Some(unit) = &mut self.unit else { return Ok(Ok(())) };
        let now = Utc::now();
        match unit.session.handle(input, now) {
            Ok(effects) => {
                self.apply(effects, now).await.map_err(ServiceError::new)?;
                Ok(Ok(()))
            }
            Err(refused) => Ok(Err(refused.0)),
        }
    }

    /// Records the session's messages, then carries out its device requests; what those
    /// report back goes into the session in turn.
    async fn apply(&mut self, effects: Vec<Effect>, now: DateTime<Utc>) -> Result<(), StorageError> {
        let mut queue = effects;
        while !queue.is_empty() {
            let mut messages = Vec::new();
            let mut requests = Vec::new();
            for effect in queue.drain(..) {
                match effect {
                    Effect::Message(message) => messages.push(message),
                    other => requests.push(other),
                }
            }
            self.record(messages, now).await?;
            let mut feedback = Vec::new();
            for request in requests {
                if let Some(input) = self.carry_out(request, &mut queue).await {
                    feedback.push(input);
                }
            }
            for input in feedback {
                if let Some(unit) = &mut self.unit {
                    queue.extend(unit.session.handle(input, now).unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    /// Carries out one device request. A failure that makes going on unsafe comes back as
    /// an input; one the operator can work around becomes a notice in the record.
    async fn carry_out(&mut self, request: Effect, notices: &mut Vec<Effect>) -> Option<Input> {
        let step = self.unit.as_ref().map_or(0, |u| u.session.step_index());
        let mut notice = |text: String| {
            tracing::warn!(text, "coaching");
            notices.push(Effect::Message(Message::Notice { step, text }));
        };
        match request {
            Effect::Inspect => self.inspect_wanted = true,
            Effect::Release { wrench, pset, count } => {
                if let Err(err) = self.devices.wrenches.release(&wrench, pset, count).await {
                    notice(format!("wrench {wrench} was not released: {err}"));
                }
            }
            Effect::Disable { wrench } => {
                if let Err(err) = self.devices.wrenches.command(&wrench, Command::DisableTool).await {
                    notice(format!("wrench {wrench} was not disabled: {err}"));
                }
            }
            Effect::SetOutput { line, active } => {
                let result = match &self.devices.gpio {
                    Some(gpio) => gpio.apply(vec![OutputCommand::Set { output: line.clone(), active }]).await,
                    None => Err(crate::south::gpio::GpioError::Unknown(line.clone())),
                };
                if let Err(err) = result {
                    return Some(Input::Fault { reason: format!("output {line} could not be set: {err}") });
                }
            }
            Effect::ReadInput { line } => {
                let level = match &self.devices.gpio {
                    Some(gpio) => line_level(gpio, &line).await,
                    None => None,
                };
                match level {
                    Some(active) => return Some(Input::Level { line, active }),
                    None => notice(format!("input {line} could not be read; waiting for its next edge")),
                }
            }
            Effect::Message(_) => unreachable!("messages are recorded, not carried out"),
        }
        None
    }

    /// Commits messages to the unit record, then shows them.
    async fn record(&mut self, messages: Vec<Message>, now: DateTime<Utc>) -> Result<(), StorageError> {
        let Some(unit) = &self.unit else { return Ok(()) };
        if messages.is_empty() {
            return Ok(());
        }
        let events: Vec<UnitEvent> = messages.iter().map(|m| UnitEvent::from_message(m, now)).collect();
        let finished = messages.iter().find_map(|m| match m {
            Message::AssemblyComplete { outcome, reason, .. } => Some((*outcome, reason.clone())),
            _ => None,
        });
        let seq = unit.record_seq;
        let record_id = unit.record_id;
        match finished.clone() {
            Some((outcome, reason)) => {
                self.devices
                    .storage
                    .call(move |db| db.finish_unit_record(seq, &events, outcome, reason.as_deref(), now))
                    .await?
            }
            None => self.devices.storage.call(move |db| db.append_unit_events(seq, &events)).await?,
        }
        for message in messages {
            let _ = self.messages.send(CoachingMessage { record_id, at: now, message });
        }
        if let Some((outcome, reason)) = finished {
            let unit = self.unit.take().expect("checked above");
            tracing::info!(record = %record_id, serial = unit.session.context().serial, outcome = outcome.as_str(), reason, "unit finished");
            self.inspect_wanted = false;
            self.last =
                Some(LastUnit { record_id, serial: unit.session.context().serial.clone(), outcome, ended_at: now });
        }
        self.publish_status();
        Ok(())
    }

    fn publish_status(&self) {
        let unit = self.unit.as_ref().map(|u| {
            let plan = u.session.plan();
            let index = u.session.step_index();
            UnitStatus {
                record_id: u.record_id,
                assembly_id: u.assembly.id,
                assembly_name: u.assembly.name.clone(),
                revision: u.assembly.revision,
                serial: u.session.context().serial.clone(),
                operator_id: u.operator.id,
                operator_name: u.operator.full_name(),
                paused: u.session.state() == State::Paused,
                step_index: index,
                step_name: plan.steps[index].name.clone(),
                step_count: plan.steps.len(),
                torque_done: u.session.torque_progress(),
                started_at: u.started_at,
            }
        });
        let status = Arc::new(CoachingStatus { station_id: self.station.clone(), unit, last: self.last.clone() });
        if **self.status.borrow() != *status {
            self.status.send_replace(status.clone());
            let _ = self.devices.notifications.send(Notification::Coaching(status));
        }
    }
}

/// The logical level of a GPIO line, `None` when it cannot be read.
async fn line_level(gpio: &GpioHandle, line: &str) -> Option<bool> {
    let lines = gpio.status().await.ok()?;
    lines.into_iter().find(|l| l.name == line)?.active.ok()
}
