//! Assembly coaching: the work instruction a unit is built to (`Plan`: steps, each with a
//! list of actions) and the `Session` that guides one unit through it.
//!
//! `Session::handle(input, now)` is the whole sequencer: device facts (a prediction, a
//! tightening, an input level), operator commands (QA answers, pause, resume, set step,
//! interrupt, complete) and the clock go in; `Effect`s come out: messages for the unit
//! record and the operator's screen, and device requests (inspect, release or disable a
//! wrench, set or read a line). No I/O, and `now` is an argument.
//!
//! A step is done when every action in it is done; actions run side by side. A step with
//! no actions is an instruction the operator confirms (like QA). The session ends
//! `Completed` after the last step, `Failed` when a check fails for good (a QA rejection, a
//! NOK beyond the step's policy, a QA dwell that never passed), `Aborted` on an interrupt,
//! a step timeout, an e-stop or a device fault, and `Incomplete` when the operator
//! completes it early. However it ends, the wrenches the session released are disabled and
//! the outputs it set go inactive.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::decision::Decision;
use super::expected::{self, ExpectedItem};

/// One revision of an assembly's work instruction, as coached.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub assembly_id: Uuid,
    pub name: String,
    pub revision: u32,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    pub id: i64,
    pub name: String,
    /// A prediction counts only at or above this confidence (0..=1).
    pub minimum_predict: f32,
    /// Expected duration, for the record's "over benchmark" flag.
    pub benchmark: Option<TimeDelta>,
    /// Active time after which the unit is aborted.
    pub timeout: Option<TimeDelta>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// ML, or QA_DWELL when `dwell` is set.
    Vision(VisionCheck),
    /// TORQUE, or TORQUE_ONLY when `only`.
    Torque(TorqueCheck),
    /// Wait until a GPIO input is at this logical level.
    Input { line: String, active: bool },
    /// Drive a GPIO output at the step's start.
    Output { line: String, active: bool },
    /// The operator confirms.
    Qa { prompt: String },
}

/// A stored inspection of the station's camera, as a vision step sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub inspection_id: Uuid,
    pub decision: Decision,
    pub label: Option<String>,
    pub confidence: f32,
    /// Class and confidence of each detection.
    pub detected: Vec<(String, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionCheck {
    /// The label the model must give; `None`: the station's decision must be pass.
    pub expected_class: Option<String>,
    /// Inspect again after every prediction that does not match, until one does;
    /// otherwise wait for the station's triggers (foot switch, PLC, REST).
    pub continuous: bool,
    /// QA_DWELL: keep inspecting for at most this long, then the step fails.
    pub dwell: Option<TimeDelta>,
    /// The items the image must hold (empty: none). With items, a prediction matches when
    /// the station's decision is pass and every item is found in its quantity.
    pub expected_items: Vec<ExpectedItem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TorqueCheck {
    pub wrench: String,
    /// The tightening program; a result from another one does not count.
    pub pset: Option<u32>,
    /// OK tightenings the step needs.
    pub count: u32,
    /// With `tolerance`, an OK tightening must also lie within `target ± tolerance`
    /// (in the controller's torque unit).
    pub target: Option<f64>,
    pub tolerance: Option<f64>,
    pub nok: NokPolicy,
    /// TORQUE_ONLY: no vision with it.
    pub only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NokPolicy {
    /// A NOK does not count; the operator loosens and tightens again. More than
    /// `max_nok` NOKs in the step fail the unit.
    Rework { max_nok: Option<u32> },
    /// The first NOK fails the unit.
    Fail,
}

/// Who builds which unit, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct StartContext {
    pub serial: String,
    pub operator: String,
    /// Release control: the tool is enabled with the step's Pset only during a torque step.
    pub release_control: bool,
    pub first_step: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A stored inspection of the station's camera.
    Prediction(Prediction),
    /// A requested inspection could not be made (camera, model).
    InspectionFailed {
        reason: String,
    },
    /// A stored tightening.
    Tightening {
        wrench: String,
        seq: i64,
        ok: bool,
        torque: f64,
        pset: Option<u32>,
    },
    /// An input's logical level (read at the step's start, then on every edge).
    Level {
        line: String,
        active: bool,
    },
    Qa {
        passed: bool,
        by: String,
    },
    Pause,
    Resume,
    SetStep {
        index: usize,
    },
    Interrupt {
        reason: String,
    },
    /// The operator ends the unit here.
    Complete,
    EStop,
    /// A device request failed in a way that makes going on unsafe.
    Fault {
        reason: String,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// For the unit record and the operator; stamped with `now` by the caller.
    Message(Message),
    /// Capture and judge a frame of the station's camera.
    Inspect,
    Release {
        wrench: String,
        pset: Option<u32>,
        count: u32,
    },
    Disable {
        wrench: String,
    },
    SetOutput {
        line: String,
        active: bool,
    },
    ReadInput {
        line: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Aborted,
    Incomplete,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
            Outcome::Incomplete => "incomplete",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Completed, Outcome::Failed, Outcome::Aborted, Outcome::Incomplete]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Started {
        serial: String,
        operator: String,
        steps: usize,
    },
    StepAdvance {
        step: usize,
        name: String,
    },
    Prediction {
        step: usize,
        inspection_id: Uuid,
        label: Option<String>,
        confidence: f32,
        matched: bool,
    },
    /// `expected`: the step has a torque action for its wrench (a stray tightening is
    /// recorded too, but it is neither OK nor NOK for the unit).
    Tightening {
        step: usize,
        seq: i64,
        ok: bool,
        counted: bool,
        expected: bool,
        note: Option<String>,
    },
    Io {
        step: usize,
        line: String,
        active: bool,
        output: bool,
    },
    Qa {
        step: usize,
        passed: bool,
        by: String,
    },
    Notice {
        step: usize,
        text: String,
    },
    Paused {
        step: usize,
    },
    Resumed {
        step: usize,
    },
    StepComplete {
        step: usize,
        active: TimeDelta,
        over_benchmark: bool,
    },
    StepInterrupt {
        step: usize,
        active: TimeDelta,
        reason: String,
    },
    AssemblyComplete {
        outcome: Outcome,
        reason: Option<String>,
        active: TimeDelta,
    },
}

/// An operator command that does not fit the session's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Finished(Outcome),
}

#[derive(Debug, Clone, PartialEq)]
enum Progress {
    Vision { passed: bool, dwell_until: Option<DateTime<Utc>> },
    Torque { ok: u32, nok: u32 },
    Input { met: bool },
    Done,
    Qa { passed: bool },
}

impl Progress {
    fn done(&self) -> bool {
        match self {
            Progress::Vision { passed, .. } => *passed,
            Progress::Torque { .. } => false, // judged against the action's count
            Progress::Input { met } => *met,
            Progress::Done => true,
            Progress::Qa { passed } => *passed,
        }
    }
}

/// One unit being built.
#[derive(Debug)]
pub struct Session {
    plan: Plan,
    context: StartContext,
    state: State,
    step: usize,
    progress: Vec<Progress>,
    /// When the current step's active time began counting (moved on by pauses).
    step_clock: DateTime<Utc>,
    /// When the unit's active time began counting (moved on by pauses).
    unit_clock: DateTime<Utc>,
    paused_at: Option<DateTime<Utc>>,
    /// Outputs this session drove active: inactive again when it ends.
    outputs_set: BTreeSet<String>,
}

impl Session {
    /// Starts coaching `plan`. The plan must have a step `context.first_step`.
    pub fn start(plan: Plan, context: StartContext, now: DateTime<Utc>) -> Result<(Session, Vec<Effect>), Refused> {
        if plan.steps.is_empty() {
            return Err(Refused(format!("assembly {:?} has no steps", plan.name)));
        }
        if context.first_step >= plan.steps.len() {
            return Err(Refused(format!(
                "step index {} is out of range: the assembly has {} steps",
                context.first_step,
                plan.steps.len()
            )));
        }
        let first = context.first_step;
        let mut session = Session {
            plan,
            context,
            state: State::Running,
            step: first,
            progress: Vec::new(),
            step_clock: now,
            unit_clock: now,
            paused_at: None,
            outputs_set: BTreeSet::new(),
        };
        let mut effects = vec![Effect::Message(Message::Started {
            serial: session.context.serial.clone(),
            operator: session.context.operator.clone(),
            steps: session.plan.steps.len(),
        })];
        session.enter(first, now, &mut effects);
        Ok((session, effects))
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn step_index(&self) -> usize {
        self.step
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn context(&self) -> &StartContext {
        &self.context
    }

    /// OK tightenings counted so far in the current step, over the step's torque actions.
    pub fn torque_progress(&self) -> (u32, u32) {
        let step = &self.plan.steps[self.step];
        let mut done = (0, 0);
        for (action, progress) in step.actions.iter().zip(&self.progress) {
            if let (Action::Torque(check), Progress::Torque { ok, .. }) = (action, progress) {
                done.0 += ok;
                done.1 += check.count;
            }
        }
        done
    }

    pub fn handle(&mut self, input: Input, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        let mut effects = Vec::new();
        if let State::Finished(outcome) = self.state {
            return match input {
                Input::Prediction(_)
                | Input::InspectionFailed { .. }
                | Input::Tightening { .. }
                | Input::Level { .. }
                | Input::EStop
                | Input::Fault { .. }
                | Input::Tick => Ok(effects),
                _ => Err(Refused(format!("the unit is already {}", outcome.as_str()))),
            };
        }
        let paused = self.state == State::Paused;
        match input {
            Input::Prediction(_) | Input::InspectionFailed { .. } if paused => {}
            Input::Tightening { seq, ok, .. } if paused => {
                let note = Some("while coaching was paused".to_owned());
                let step = self.step;
                effects.push(Effect::Message(Message::Tightening {
                    step,
                    seq,
                    ok,
                    counted: false,
                    expected: false,
                    note,
                }));
            }
            Input::Prediction(prediction) => {
                self.on_prediction(prediction, now, &mut effects);
            }
            Input::InspectionFailed { reason } => {
                effects.push(self.notice(format!("inspection failed: {reason}")));
                if self.wants_frames() {
                    effects.push(Effect::Inspect);
                }
            }
            Input::Tightening { wrench, seq, ok, torque, pset } => {
                self.on_tightening(&wrench, seq, ok, torque, pset, now, &mut effects);
            }
            Input::Level { line, active } => self.on_level(&line, active, now, &mut effects),
            Input::Qa { .. } if paused => return Err(Refused("coaching is paused".into())),
            Input::Qa { passed, by } => self.on_qa(passed, by, now, &mut effects)?,
            Input::Pause if paused => return Err(Refused("coaching is already paused".into())),
            Input::Pause => {
                self.state = State::Paused;
                self.paused_at = Some(now);
                self.disable_wrenches(&mut effects);
                effects.push(Effect::Message(Message::Paused { step: self.step }));
            }
            Input::Resume if !paused => return Err(Refused("coaching is not paused".into())),
            Input::Resume => {
                let pause = now - self.paused_at.take().unwrap_or(now);
                self.step_clock += pause;
                self.unit_clock += pause;
                for progress in &mut self.progress {
                    if let Progress::Vision { dwell_until: Some(until), .. } = progress {
                        *until += pause;
                    }
                }
                self.state = State::Running;
                effects.push(Effect::Message(Message::Resumed { step: self.step }));
                self.request_devices(&mut effects);
                // An input may have reached its level during the pause.
                self.advance_if_done(now, &mut effects);
            }
            Input::SetStep { index } => {
                if index >= self.plan.steps.len() {
                    return Err(Refused(format!(
                        "step index {index} is out of range: the assembly has {} steps",
                        self.plan.steps.len()
                    )));
                }
                self.resume_clock(now);
                self.leave(format!("moved to step {index}"), now, &mut effects);
                self.enter(index, now, &mut effects);
            }
            Input::Interrupt { reason } => self.finish(Outcome::Aborted, Some(reason), now, &mut effects),
            Input::Complete => {
                let reason =
                    format!("completed by the operator at step {} of {}", self.step + 1, self.plan.steps.len());
                self.finish(Outcome::Incomplete, Some(reason), now, &mut effects);
            }
            Input::EStop => self.finish(Outcome::Aborted, Some("emergency stop".into()), now, &mut effects),
            Input::Fault { reason } => self.finish(Outcome::Aborted, Some(reason), now, &mut effects),
            Input::Tick if paused => {}
            Input::Tick => self.on_tick(now, &mut effects),
        }
        Ok(effects)
    }

    fn current(&self) -> &StepPlan {
        &self.plan.steps[self.step]
    }

    fn notice(&self, text: String) -> Effect {
        Effect::Message(Message::Notice { step: self.step, text })
    }

    fn active_in_step(&self, now: DateTime<Utc>) -> TimeDelta {
        self.paused_at.unwrap_or(now) - self.step_clock
    }

    /// A paused session that is moved or ended counts its pause as over.
    fn resume_clock(&mut self, now: DateTime<Utc>) {
        if let Some(at) = self.paused_at.take() {
            self.step_clock += now - at;
            self.unit_clock += now - at;
            self.state = State::Running;
        }
    }

    fn enter(&mut self, index: usize, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.step = index;
        self.step_clock = now;
        let step = &self.plan.steps[index];
        effects.push(Effect::Message(Message::StepAdvance { step: index, name: step.name.clone() }));
        self.progress = step
            .actions
            .iter()
            .map(|action| match action {
                Action::Vision(check) => Progress::Vision { passed: false, dwell_until: check.dwell.map(|d| now + d) },
                Action::Torque(_) => Progress::Torque { ok: 0, nok: 0 },
                Action::Input { .. } => Progress::Input { met: false },
                Action::Output { .. } => Progress::Done,
                Action::Qa { .. } => Progress::Qa { passed: false },
            })
            .collect();
        for action in &step.actions {
            if let Action::Output { line, active } = action {
                effects.push(Effect::SetOutput { line: line.clone(), active: *active });
                effects.push(Effect::Message(Message::Io {
                    step: index,
                    line: line.clone(),
                    active: *active,
                    output: true,
                }));
                if *active {
                    self.outputs_set.insert(line.clone());
                } else {
                    self.outputs_set.remove(line);
                }
            }
        }
        self.request_devices(effects);
        self.advance_if_done(now, effects);
    }

    /// What the current step needs from the devices: frames, released tools, input levels.
    fn request_devices(&self, effects: &mut Vec<Effect>) {
        let step = self.current();
        if self.wants_frames() {
            effects.push(Effect::Inspect);
        }
        for (action, progress) in step.actions.iter().zip(&self.progress) {
            match (action, progress) {
                (Action::Torque(check), Progress::Torque { ok, .. })
                    if self.context.release_control && *ok < check.count =>
                {
                    effects.push(Effect::Release {
                        wrench: check.wrench.clone(),
                        pset: check.pset,
                        count: check.count - ok,
                    });
                }
                (Action::Input { line, .. }, Progress::Input { met: false }) => {
                    effects.push(Effect::ReadInput { line: line.clone() });
                }
                _ => {}
            }
        }
    }

    /// A vision check of the current step inspects by itself and has not passed yet.
    fn wants_frames(&self) -> bool {
        let step = self.current();
        step.actions.iter().zip(&self.progress).any(|(action, progress)| match (action, progress) {
            (Action::Vision(check), Progress::Vision { passed: false, .. }) => {
                check.continuous || check.dwell.is_some()
            }
            _ => false,
        })
    }

    fn disable_wrenches(&self, effects: &mut Vec<Effect>) {
        if !self.context.release_control {
            return;
        }
        let step = self.current();
        let wrenches: BTreeSet<&String> = step
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Torque(check) => Some(&check.wrench),
                _ => None,
            })
            .collect();
        effects.extend(wrenches.into_iter().map(|w| Effect::Disable { wrench: w.clone() }));
    }

    /// Leaves the current step unfinished.
    fn leave(&mut self, reason: String, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.disable_wrenches(effects);
        effects.push(Effect::Message(Message::StepInterrupt {
            step: self.step,
            active: self.active_in_step(now),
            reason,
        }));
    }

    fn advance_if_done(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.state != State::Running {
            return;
        }
        let step = self.current();
        let all_done = step.actions.iter().zip(&self.progress).all(|(action, progress)| match (action, progress) {
            (Action::Torque(check), Progress::Torque { ok, .. }) => *ok >= check.count,
            _ => progress.done(),
        });
        // A step without actions is an instruction: it waits for the operator's QA answer.
        if all_done && !step.actions.is_empty() {
            self.complete_step(now, effects);
        }
    }

    /// Records the current step as complete and moves to the next one, or ends the unit.
    fn complete_step(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let active = self.active_in_step(now);
        let over_benchmark = self.current().benchmark.is_some_and(|b| active > b);
        self.disable_wrenches(effects);
        effects.push(Effect::Message(Message::StepComplete { step: self.step, active, over_benchmark }));
        if self.step + 1 < self.plan.steps.len() {
            self.enter(self.step + 1, now, effects);
        } else {
            self.finish(Outcome::Completed, None, now, effects);
        }
    }

    fn finish(&mut self, outcome: Outcome, reason: Option<String>, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.resume_clock(now);
        if outcome != Outcome::Completed {
            let why = reason.clone().unwrap_or_else(|| outcome.as_str().to_owned());
            self.leave(why, now, effects);
        }
        for line in std::mem::take(&mut self.outputs_set) {
            effects.push(Effect::SetOutput { line: line.clone(), active: false });
            effects.push(Effect::Message(Message::Io { step: self.step, line, active: false, output: true }));
        }
        effects.push(Effect::Message(Message::AssemblyComplete { outcome, reason, active: now - self.unit_clock }));
        self.state = State::Finished(outcome);
    }

    fn on_prediction(&mut self, prediction: Prediction, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let Prediction { inspection_id, decision, label, confidence, detected } = prediction;
        let step = &self.plan.steps[self.step];
        let mut waiting = false;
        let mut matched = false;
        for (action, progress) in step.actions.iter().zip(&mut self.progress) {
            let (Action::Vision(check), Progress::Vision { passed, .. }) = (action, progress) else { continue };
            if *passed {
                continue;
            }
            waiting = true;
            let class_ok = match &check.expected_class {
                Some(expected) => label.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(expected)),
                None => decision == Decision::Pass,
            };
            let items_ok = check.expected_items.is_empty()
                || expected::check(&check.expected_items, detected.iter().map(|(name, c)| (name.as_str(), *c)))
                    .summary
                    .order_complete;
            let class_ok = class_ok && items_ok;
            if !matched && class_ok && confidence >= step.minimum_predict {
                *passed = true;
                matched = true;
            }
        }
        if !waiting {
            return;
        }
        effects.push(Effect::Message(Message::Prediction {
            step: self.step,
            inspection_id,
            label,
            confidence,
            matched,
        }));
        if self.wants_frames() {
            effects.push(Effect::Inspect);
        }
        self.advance_if_done(now, effects);
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one tightening")]
    fn on_tightening(
        &mut self,
        wrench: &str,
        seq: i64,
        ok: bool,
        torque: f64,
        pset: Option<u32>,
        now: DateTime<Utc>,
        effects: &mut Vec<Effect>,
    ) {
        let step_index = self.step;
        let release_control = self.context.release_control;
        let step = &self.plan.steps[step_index];
        let slot =
            step.actions.iter().zip(&mut self.progress).find_map(|(action, progress)| match (action, progress) {
                (Action::Torque(check), Progress::Torque { ok, nok })
                    if check.wrench == wrench && *ok < check.count =>
                {
                    Some((check, ok, nok))
                }
                _ => None,
            });
        let Some((check, ok_count, nok_count)) = slot else {
            effects.push(Effect::Message(Message::Tightening {
                step: step_index,
                seq,
                ok,
                counted: false,
                expected: false,
                note: Some("not expected in this step".into()),
            }));
            return;
        };
        let note = if !ok {
            Some("NOK from the controller".to_owned())
        } else if check.pset.is_some() && pset != check.pset {
            Some(format!("program {} instead of {}", fmt_pset(pset), fmt_pset(check.pset)))
        } else if let (Some(target), Some(tolerance)) = (check.target, check.tolerance) {
            ((torque - target).abs() > tolerance)
                .then(|| format!("torque {torque:.2} outside {target:.2} ± {tolerance:.2}"))
        } else {
            None
        };
        let counted = note.is_none();
        let message = Message::Tightening { step: step_index, seq, ok, counted, expected: true, note: note.clone() };
        effects.push(Effect::Message(message));
        if counted {
            *ok_count += 1;
            self.advance_if_done(now, effects);
            return;
        }
        *nok_count += 1;
        let failed = match check.nok {
            NokPolicy::Fail => Some(format!("NOK tightening {seq} in step {step_index}: {}", note.unwrap_or_default())),
            NokPolicy::Rework { max_nok: Some(max) } if *nok_count > max => {
                Some(format!("{nok_count} NOK tightenings in step {step_index}, more than the {max} allowed"))
            }
            NokPolicy::Rework { .. } => None,
        };
        if let Some(reason) = failed {
            self.finish(Outcome::Failed, Some(reason), now, effects);
        } else if ok && release_control {
            // The controller counted it against the release; ours did not, so release again.
            let (wrench, pset, count) = (check.wrench.clone(), check.pset, check.count - *ok_count);
            effects.push(Effect::Release { wrench, pset, count });
        }
    }

    fn on_level(&mut self, line: &str, active: bool, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let step = &self.plan.steps[self.step];
        let mut relevant = false;
        for (action, progress) in step.actions.iter().zip(&mut self.progress) {
            if let (Action::Input { line: wanted, active: level }, Progress::Input { met }) = (action, progress)
                && wanted == line
            {
                relevant = true;
                *met = active == *level;
            }
        }
        if relevant {
            effects.push(Effect::Message(Message::Io {
                step: self.step,
                line: line.to_owned(),
                active,
                output: false,
            }));
            if self.state == State::Running {
                self.advance_if_done(now, effects);
            }
        }
    }

    fn on_qa(
        &mut self,
        passed: bool,
        by: String,
        now: DateTime<Utc>,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Refused> {
        let step_index = self.step;
        let bare = self.current().actions.is_empty();
        let waiting = self.progress.iter().position(|p| matches!(p, Progress::Qa { passed: false }));
        if waiting.is_none() && !bare {
            return Err(Refused(format!("step {step_index} is not waiting for a QA answer")));
        }
        effects.push(Effect::Message(Message::Qa { step: step_index, passed, by: by.clone() }));
        if !passed {
            self.finish(Outcome::Failed, Some(format!("QA rejected by {by} at step {step_index}")), now, effects);
            return Ok(());
        }
        match waiting {
            Some(at) => self.progress[at] = Progress::Qa { passed: true },
            None => {
                // An instruction step: the confirmation completes it.
                self.complete_step(now, effects);
                return Ok(());
            }
        }
        self.advance_if_done(now, effects);
        Ok(())
    }

    fn on_tick(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let step = self.current();
        if let Some(timeout) = step.timeout
            && self.active_in_step(now) >= timeout
        {
            let reason = format!("step {} timed out after {} s", self.step, timeout.num_seconds());
            self.finish(Outcome::Aborted, Some(reason), now, effects);
            return;
        }
        let dwell_over = self.progress.iter().any(|p| match p {
            Progress::Vision { passed: false, dwell_until: Some(until) } => now >= *until,
            _ => false,
        });
        if dwell_over {
            let reason = format!("QA dwell at step {} ended without a matching prediction", self.step);
            self.finish(Outcome::Failed, Some(reason), now, effects);
        }
    }
}

/// Step order rules, the seed's "allowed moves" and "deletable" checks. A step that turns
/// an output off depends on the nearest earlier step that turned it on (a clamp is released
/// after it was closed), and a step waiting for an input that an earlier step's output
/// drives depends on that step. Returns (dependent, prerequisite) pairs of step indexes.
pub fn dependencies(steps: &[Vec<Action>]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (index, actions) in steps.iter().enumerate() {
        for action in actions {
            let (line, wants_on) = match action {
                Action::Output { line, active: false } => (line, true),
                Action::Input { line, .. } => (line, true),
                _ => continue,
            };
            let earlier = steps[..index].iter().rposition(|prior| {
                prior
                    .iter()
                    .any(|a| matches!(a, Action::Output { line: l, active } if l == line && *active == wants_on))
            });
            if let Some(prerequisite) = earlier
                && !pairs.contains(&(index, prerequisite))
            {
                pairs.push((index, prerequisite));
            }
        }
    }
    pairs
}

/// The indexes step `from` may move to without breaking a dependency (its own index too).
pub fn allowed_moves(steps: &[Vec<Action>], from: usize) -> Vec<usize> {
    if from >= steps.len() {
        return Vec::new();
    }
    let pairs = dependencies(steps);
    (0..steps.len())
        .filter(|&to| {
            // Where each old index lands after moving `from` to `to`.
            let new_index = |i: usize| {
                if i == from {
                    to
                } else {
                    let after_removal = if i > from { i - 1 } else { i };
                    if after_removal >= to { after_removal + 1 } else { after_removal }
                }
            };
            pairs.iter().all(|&(dependent, prerequisite)| new_index(prerequisite) < new_index(dependent))
        })
        .collect()
}

/// The steps that depend on step `index`: it may be deleted only when there are none.
pub fn dependents(steps: &[Vec<Action>], index: usize) -> Vec<usize> {
    dependencies(steps).into_iter().filter(|&(_, prerequisite)| prerequisite == index).map(|(d, _)| d).collect()
}

fn fmt_pset(pset: Option<u32>) -> String {
    pset.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

#[cfg(test)]
mod tests;
