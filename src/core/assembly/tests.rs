//! Sequencer scenarios: a script of inputs at given seconds in, every effect out, rendered
//! one per line and compared with `expect!` snapshots (`UPDATE_EXPECT=1` to refresh).

use std::fmt::Write;

use expect_test::{Expect, expect};

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
}

fn step(name: &str, actions: Vec<Action>) -> StepPlan {
    StepPlan { id: 0, name: name.into(), minimum_predict: 0.6, benchmark: None, timeout: None, actions }
}

fn vision(expected: Option<&str>, continuous: bool) -> Action {
    Action::Vision(VisionCheck {
        expected_class: expected.map(Into::into),
        continuous,
        dwell: None,
        expected_items: Vec::new(),
    })
}

fn torque(count: u32, nok: NokPolicy) -> Action {
    Action::Torque(TorqueCheck {
        wrench: "w1".into(),
        pset: Some(3),
        count,
        target: Some(12.0),
        tolerance: Some(0.5),
        nok,
        only: true,
    })
}

fn plan(steps: Vec<StepPlan>) -> Plan {
    Plan { assembly_id: Uuid::from_u128(1), name: "housing".into(), revision: 1, steps }
}

fn context(release_control: bool) -> StartContext {
    StartContext { serial: "SN-1".into(), operator: "Ada Lovelace".into(), release_control, first_step: 0 }
}

fn prediction(n: u128, label: &str, confidence: f32) -> Input {
    let decision = if label == "ok" { Decision::Pass } else { Decision::Fail };
    Input::Prediction(Prediction {
        inspection_id: Uuid::from_u128(n),
        decision,
        label: Some(label.into()),
        confidence,
        detected: Vec::new(),
    })
}

fn tightening(seq: i64, ok: bool, torque: f64) -> Input {
    Input::Tightening { wrench: "w1".into(), seq, ok, torque, pset: Some(3) }
}

fn render(effect: &Effect) -> String {
    match effect {
        Effect::Message(message) => format!("{message:?}"),
        other => format!("-> {other:?}"),
    }
}

/// Starts `plan` at second 0, feeds `script`, and renders everything that came out.
fn check(plan: Plan, release_control: bool, script: Vec<(i64, Input)>, expect: Expect) {
    let mut out = String::new();
    let (mut session, effects) = Session::start(plan, context(release_control), t(0)).unwrap();
    for effect in &effects {
        writeln!(out, "  {}", render(effect)).unwrap();
    }
    for (at, input) in script {
        writeln!(out, "@{at} {input:?}").unwrap();
        match session.handle(input, t(at)) {
            Ok(effects) => effects.iter().for_each(|e| writeln!(out, "  {}", render(e)).unwrap()),
            Err(refused) => writeln!(out, "  refused: {refused}").unwrap(),
        }
    }
    writeln!(out, "state: {:?}", session.state()).unwrap();
    expect.assert_eq(&out);
}

#[test]
fn vision_torque_with_rework_and_input_build_one_unit() {
    let plan = plan(vec![
        step("place housing", vec![vision(Some("ok"), true)]),
        step("tighten 4 screws", vec![torque(4, NokPolicy::Rework { max_nok: Some(2) })]),
        step("close clamp", vec![Action::Input { line: "clamp".into(), active: true }]),
    ]);
    let script = vec![
        (2, prediction(1, "defect", 0.9)),
        (3, prediction(2, "ok", 0.5)),
        (4, prediction(3, "ok", 0.95)),
        (10, tightening(100, true, 12.1)),
        (12, tightening(101, false, 4.0)),
        (14, tightening(102, true, 11.9)),
        (16, tightening(103, true, 12.7)),
        (18, tightening(104, true, 12.0)),
        (19, tightening(105, true, 12.0)),
        (25, Input::Level { line: "clamp".into(), active: false }),
        (27, Input::Level { line: "clamp".into(), active: true }),
    ];
    check(
        plan,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 3 }
              StepAdvance { step: 0, name: "place housing" }
              -> Inspect
            @2 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000001, decision: Fail, label: Some("defect"), confidence: 0.9, detected: [] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000001, label: Some("defect"), confidence: 0.9, matched: false }
              -> Inspect
            @3 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000002, decision: Pass, label: Some("ok"), confidence: 0.5, detected: [] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000002, label: Some("ok"), confidence: 0.5, matched: false }
              -> Inspect
            @4 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000003, decision: Pass, label: Some("ok"), confidence: 0.95, detected: [] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000003, label: Some("ok"), confidence: 0.95, matched: true }
              StepComplete { step: 0, active: TimeDelta { secs: 4, nanos: 0 }, over_benchmark: false }
              StepAdvance { step: 1, name: "tighten 4 screws" }
              -> Release { wrench: "w1", pset: Some(3), count: 4 }
            @10 Tightening { wrench: "w1", seq: 100, ok: true, torque: 12.1, pset: Some(3) }
              Tightening { step: 1, seq: 100, ok: true, counted: true, expected: true, note: None }
            @12 Tightening { wrench: "w1", seq: 101, ok: false, torque: 4.0, pset: Some(3) }
              Tightening { step: 1, seq: 101, ok: false, counted: false, expected: true, note: Some("NOK from the controller") }
            @14 Tightening { wrench: "w1", seq: 102, ok: true, torque: 11.9, pset: Some(3) }
              Tightening { step: 1, seq: 102, ok: true, counted: true, expected: true, note: None }
            @16 Tightening { wrench: "w1", seq: 103, ok: true, torque: 12.7, pset: Some(3) }
              Tightening { step: 1, seq: 103, ok: true, counted: false, expected: true, note: Some("torque 12.70 outside 12.00 ± 0.50") }
              -> Release { wrench: "w1", pset: Some(3), count: 2 }
            @18 Tightening { wrench: "w1", seq: 104, ok: true, torque: 12.0, pset: Some(3) }
              Tightening { step: 1, seq: 104, ok: true, counted: true, expected: true, note: None }
            @19 Tightening { wrench: "w1", seq: 105, ok: true, torque: 12.0, pset: Some(3) }
              Tightening { step: 1, seq: 105, ok: true, counted: true, expected: true, note: None }
              -> Disable { wrench: "w1" }
              StepComplete { step: 1, active: TimeDelta { secs: 15, nanos: 0 }, over_benchmark: false }
              StepAdvance { step: 2, name: "close clamp" }
              -> ReadInput { line: "clamp" }
            @25 Level { line: "clamp", active: false }
              Io { step: 2, line: "clamp", active: false, output: false }
            @27 Level { line: "clamp", active: true }
              Io { step: 2, line: "clamp", active: true, output: false }
              StepComplete { step: 2, active: TimeDelta { secs: 8, nanos: 0 }, over_benchmark: false }
              AssemblyComplete { outcome: Completed, reason: None, active: TimeDelta { secs: 27, nanos: 0 } }
            state: Finished(Completed)
        "#]],
    );
}

#[test]
fn a_nok_beyond_the_policy_fails_the_unit_and_disables_the_tool() {
    let plan = plan(vec![step("tighten", vec![torque(2, NokPolicy::Rework { max_nok: Some(1) })])]);
    let script = vec![
        (1, tightening(1, false, 3.0)),
        (2, Input::Tightening { wrench: "w1".into(), seq: 2, ok: true, torque: 12.0, pset: Some(4) }),
    ];
    check(
        plan,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 1 }
              StepAdvance { step: 0, name: "tighten" }
              -> Release { wrench: "w1", pset: Some(3), count: 2 }
            @1 Tightening { wrench: "w1", seq: 1, ok: false, torque: 3.0, pset: Some(3) }
              Tightening { step: 0, seq: 1, ok: false, counted: false, expected: true, note: Some("NOK from the controller") }
            @2 Tightening { wrench: "w1", seq: 2, ok: true, torque: 12.0, pset: Some(4) }
              Tightening { step: 0, seq: 2, ok: true, counted: false, expected: true, note: Some("program 4 instead of 3") }
              -> Disable { wrench: "w1" }
              StepInterrupt { step: 0, active: TimeDelta { secs: 2, nanos: 0 }, reason: "2 NOK tightenings in step 0, more than the 1 allowed" }
              AssemblyComplete { outcome: Failed, reason: Some("2 NOK tightenings in step 0, more than the 1 allowed"), active: TimeDelta { secs: 2, nanos: 0 } }
            state: Finished(Failed)
        "#]],
    );
}

#[test]
fn a_nok_under_the_fail_policy_ends_at_once_and_release_control_off_leaves_the_tool_alone() {
    let plan = plan(vec![step("tighten", vec![torque(2, NokPolicy::Fail)]), step("never", vec![])]);
    let script = vec![
        (1, Input::Tightening { wrench: "w2".into(), seq: 1, ok: true, torque: 12.0, pset: Some(3) }),
        (2, tightening(2, false, 3.0)),
        (3, Input::Resume),
    ];
    check(
        plan,
        false,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 2 }
              StepAdvance { step: 0, name: "tighten" }
            @1 Tightening { wrench: "w2", seq: 1, ok: true, torque: 12.0, pset: Some(3) }
              Tightening { step: 0, seq: 1, ok: true, counted: false, expected: false, note: Some("not expected in this step") }
            @2 Tightening { wrench: "w1", seq: 2, ok: false, torque: 3.0, pset: Some(3) }
              Tightening { step: 0, seq: 2, ok: false, counted: false, expected: true, note: Some("NOK from the controller") }
              StepInterrupt { step: 0, active: TimeDelta { secs: 2, nanos: 0 }, reason: "NOK tightening 2 in step 0: NOK from the controller" }
              AssemblyComplete { outcome: Failed, reason: Some("NOK tightening 2 in step 0: NOK from the controller"), active: TimeDelta { secs: 2, nanos: 0 } }
            @3 Resume
              refused: the unit is already failed
            state: Finished(Failed)
        "#]],
    );
}

#[test]
fn pauses_do_not_count_towards_the_timeout_or_the_step_time() {
    let mut timed = step("tighten", vec![torque(1, NokPolicy::Rework { max_nok: None })]);
    timed.timeout = Some(TimeDelta::seconds(60));
    timed.benchmark = Some(TimeDelta::seconds(30));
    let plan = plan(vec![timed.clone(), timed]);
    let script = vec![
        (10, Input::Pause),
        (11, Input::Pause),
        (12, tightening(1, true, 12.0)),
        (100, Input::Tick),
        (110, Input::Resume),
        (140, tightening(2, true, 12.0)),
        (199, Input::Tick),
        (200, Input::Tick),
    ];
    check(
        plan,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 2 }
              StepAdvance { step: 0, name: "tighten" }
              -> Release { wrench: "w1", pset: Some(3), count: 1 }
            @10 Pause
              -> Disable { wrench: "w1" }
              Paused { step: 0 }
            @11 Pause
              refused: coaching is already paused
            @12 Tightening { wrench: "w1", seq: 1, ok: true, torque: 12.0, pset: Some(3) }
              Tightening { step: 0, seq: 1, ok: true, counted: false, expected: false, note: Some("while coaching was paused") }
            @100 Tick
            @110 Resume
              Resumed { step: 0 }
              -> Release { wrench: "w1", pset: Some(3), count: 1 }
            @140 Tightening { wrench: "w1", seq: 2, ok: true, torque: 12.0, pset: Some(3) }
              Tightening { step: 0, seq: 2, ok: true, counted: true, expected: true, note: None }
              -> Disable { wrench: "w1" }
              StepComplete { step: 0, active: TimeDelta { secs: 40, nanos: 0 }, over_benchmark: true }
              StepAdvance { step: 1, name: "tighten" }
              -> Release { wrench: "w1", pset: Some(3), count: 1 }
            @199 Tick
            @200 Tick
              -> Disable { wrench: "w1" }
              StepInterrupt { step: 1, active: TimeDelta { secs: 60, nanos: 0 }, reason: "step 1 timed out after 60 s" }
              AssemblyComplete { outcome: Aborted, reason: Some("step 1 timed out after 60 s"), active: TimeDelta { secs: 100, nanos: 0 } }
            state: Finished(Aborted)
        "#]],
    );
}

#[test]
fn an_estop_aborts_safely_and_resets_the_outputs_the_session_set() {
    let plan = plan(vec![
        step("unlock fixture", vec![Action::Output { line: "fixture".into(), active: true }]),
        step("tighten", vec![torque(1, NokPolicy::Fail), Action::Qa { prompt: "gasket seated?".into() }]),
    ]);
    let script = vec![(5, Input::EStop), (6, Input::Resume), (7, tightening(1, true, 12.0))];
    check(
        plan,
        true,
        script,
        expect![[r#"
          Started { serial: "SN-1", operator: "Ada Lovelace", steps: 2 }
          StepAdvance { step: 0, name: "unlock fixture" }
          -> SetOutput { line: "fixture", active: true }
          Io { step: 0, line: "fixture", active: true, output: true }
          StepComplete { step: 0, active: TimeDelta { secs: 0, nanos: 0 }, over_benchmark: false }
          StepAdvance { step: 1, name: "tighten" }
          -> Release { wrench: "w1", pset: Some(3), count: 1 }
        @5 EStop
          -> Disable { wrench: "w1" }
          StepInterrupt { step: 1, active: TimeDelta { secs: 5, nanos: 0 }, reason: "emergency stop" }
          -> SetOutput { line: "fixture", active: false }
          Io { step: 1, line: "fixture", active: false, output: true }
          AssemblyComplete { outcome: Aborted, reason: Some("emergency stop"), active: TimeDelta { secs: 5, nanos: 0 } }
        @6 Resume
          refused: the unit is already aborted
        @7 Tightening { wrench: "w1", seq: 1, ok: true, torque: 12.0, pset: Some(3) }
        state: Finished(Aborted)
    "#]],
    );
}

#[test]
fn qa_dwell_fails_when_no_prediction_matches_in_time_and_qa_rejection_fails() {
    let dwell = Action::Vision(VisionCheck {
        expected_class: None,
        continuous: false,
        dwell: Some(TimeDelta::seconds(5)),
        expected_items: Vec::new(),
    });
    let plan1 = plan(vec![step("inspect", vec![dwell])]);
    let script = vec![(1, prediction(1, "defect", 0.99)), (4, Input::Tick), (5, Input::Tick)];
    check(
        plan1,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 1 }
              StepAdvance { step: 0, name: "inspect" }
              -> Inspect
            @1 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000001, decision: Fail, label: Some("defect"), confidence: 0.99, detected: [] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000001, label: Some("defect"), confidence: 0.99, matched: false }
              -> Inspect
            @4 Tick
            @5 Tick
              StepInterrupt { step: 0, active: TimeDelta { secs: 5, nanos: 0 }, reason: "QA dwell at step 0 ended without a matching prediction" }
              AssemblyComplete { outcome: Failed, reason: Some("QA dwell at step 0 ended without a matching prediction"), active: TimeDelta { secs: 5, nanos: 0 } }
            state: Finished(Failed)
        "#]],
    );

    let plan2 = plan(vec![step("confirm", vec![Action::Qa { prompt: "label straight?".into() }])]);
    let script = vec![(1, prediction(1, "ok", 0.99)), (2, Input::Qa { passed: false, by: "Ada".into() })];
    check(
        plan2,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 1 }
              StepAdvance { step: 0, name: "confirm" }
            @1 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000001, decision: Pass, label: Some("ok"), confidence: 0.99, detected: [] })
            @2 Qa { passed: false, by: "Ada" }
              Qa { step: 0, passed: false, by: "Ada" }
              StepInterrupt { step: 0, active: TimeDelta { secs: 2, nanos: 0 }, reason: "QA rejected by Ada at step 0" }
              AssemblyComplete { outcome: Failed, reason: Some("QA rejected by Ada at step 0"), active: TimeDelta { secs: 2, nanos: 0 } }
            state: Finished(Failed)
        "#]],
    );
}

#[test]
fn operator_commands_set_step_confirm_instruction_and_complete_early() {
    let plan = plan(vec![
        step("read the card", vec![]),
        step("look", vec![vision(Some("ok"), false)]),
        step("last", vec![Action::Qa { prompt: "done?".into() }]),
    ]);
    let script = vec![
        (1, Input::SetStep { index: 3 }),
        (2, Input::Qa { passed: true, by: "Ada".into() }),
        (3, Input::Qa { passed: true, by: "Ada".into() }),
        (4, Input::SetStep { index: 2 }),
        (5, prediction(9, "ok", 0.99)),
        (6, Input::Resume),
        (7, Input::Complete),
        (8, Input::Complete),
        (9, Input::Tick),
    ];
    check(
        plan,
        true,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 3 }
              StepAdvance { step: 0, name: "read the card" }
            @1 SetStep { index: 3 }
              refused: step index 3 is out of range: the assembly has 3 steps
            @2 Qa { passed: true, by: "Ada" }
              Qa { step: 0, passed: true, by: "Ada" }
              StepComplete { step: 0, active: TimeDelta { secs: 2, nanos: 0 }, over_benchmark: false }
              StepAdvance { step: 1, name: "look" }
            @3 Qa { passed: true, by: "Ada" }
              refused: step 1 is not waiting for a QA answer
            @4 SetStep { index: 2 }
              StepInterrupt { step: 1, active: TimeDelta { secs: 2, nanos: 0 }, reason: "moved to step 2" }
              StepAdvance { step: 2, name: "last" }
            @5 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000009, decision: Pass, label: Some("ok"), confidence: 0.99, detected: [] })
            @6 Resume
              refused: coaching is not paused
            @7 Complete
              StepInterrupt { step: 2, active: TimeDelta { secs: 3, nanos: 0 }, reason: "completed by the operator at step 3 of 3" }
              AssemblyComplete { outcome: Incomplete, reason: Some("completed by the operator at step 3 of 3"), active: TimeDelta { secs: 7, nanos: 0 } }
            @8 Complete
              refused: the unit is already incomplete
            @9 Tick
            state: Finished(Incomplete)
        "#]],
    );
}

#[test]
fn start_refuses_an_empty_plan_and_a_missing_first_step() {
    let err = Session::start(plan(vec![]), context(true), t(0)).unwrap_err();
    assert_eq!(err.0, "assembly \"housing\" has no steps");
    let mut ctx = context(true);
    ctx.first_step = 1;
    let err = Session::start(plan(vec![step("one", vec![])]), ctx, t(0)).unwrap_err();
    assert_eq!(err.0, "step index 1 is out of range: the assembly has 1 steps");
}

#[test]
fn dependencies_limit_moves_and_deletes() {
    let on = |line: &str| Action::Output { line: line.into(), active: true };
    let off = |line: &str| Action::Output { line: line.into(), active: false };
    let steps = vec![
        vec![on("clamp")],
        vec![vision(None, true)],
        vec![on("lamp"), Action::Input { line: "lamp".into(), active: true }],
        vec![off("clamp")],
    ];
    assert_eq!(dependencies(&steps), [(3, 0)]);
    assert_eq!(allowed_moves(&steps, 0), [0, 1, 2]);
    assert_eq!(allowed_moves(&steps, 3), [1, 2, 3]);
    assert_eq!(allowed_moves(&steps, 1), [0, 1, 2, 3]);
    assert_eq!(allowed_moves(&steps, 9), Vec::<usize>::new());
    assert_eq!(dependents(&steps, 0), [3]);
    assert!(dependents(&steps, 3).is_empty());
}

#[test]
fn an_input_met_during_a_pause_completes_the_step_on_resume() {
    let plan = plan(vec![step("clamp", vec![Action::Input { line: "clamp".into(), active: true }])]);
    let script = vec![(1, Input::Pause), (2, Input::Level { line: "clamp".into(), active: true }), (5, Input::Resume)];
    check(
        plan,
        true,
        script,
        expect![[r#"
          Started { serial: "SN-1", operator: "Ada Lovelace", steps: 1 }
          StepAdvance { step: 0, name: "clamp" }
          -> ReadInput { line: "clamp" }
        @1 Pause
          Paused { step: 0 }
        @2 Level { line: "clamp", active: true }
          Io { step: 0, line: "clamp", active: true, output: false }
        @5 Resume
          Resumed { step: 0 }
          StepComplete { step: 0, active: TimeDelta { secs: 1, nanos: 0 }, over_benchmark: false }
          AssemblyComplete { outcome: Completed, reason: None, active: TimeDelta { secs: 1, nanos: 0 } }
        state: Finished(Completed)
    "#]],
    );
}

#[test]
fn an_expected_items_step_waits_for_a_complete_kit() {
    let items = vec![
        ExpectedItem { name: "bolt".into(), quantity: 2, aliases: vec!["M8 bolt".into()] },
        ExpectedItem { name: "nut".into(), quantity: 1, aliases: Vec::new() },
    ];
    let kit =
        Action::Vision(VisionCheck { expected_class: None, continuous: true, dwell: None, expected_items: items });
    let seen = |n: u128, decision: Decision, detected: &[(&str, f32)]| {
        Input::Prediction(Prediction {
            inspection_id: Uuid::from_u128(n),
            decision,
            label: None,
            confidence: 0.9,
            detected: detected.iter().map(|(name, c)| ((*name).to_owned(), *c)).collect(),
        })
    };
    let script = vec![
        // One bolt short.
        (1, seen(1, Decision::Pass, &[("bolt", 0.9), ("nut", 0.8)])),
        // Complete, but the station failed it (debris).
        (2, seen(2, Decision::Fail, &[("bolt", 0.9), ("M8_bolt", 0.9), ("nut", 0.8), ("debris", 0.9)])),
        // Complete and passed; a bolt found under its alias.
        (3, seen(3, Decision::Pass, &[("bolt", 0.9), ("m8 bolt", 0.9), ("nut", 0.8)])),
    ];
    check(
        plan(vec![step("pick the kit", vec![kit])]),
        false,
        script,
        expect![[r#"
              Started { serial: "SN-1", operator: "Ada Lovelace", steps: 1 }
              StepAdvance { step: 0, name: "pick the kit" }
              -> Inspect
            @1 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000001, decision: Pass, label: None, confidence: 0.9, detected: [("bolt", 0.9), ("nut", 0.8)] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000001, label: None, confidence: 0.9, matched: false }
              -> Inspect
            @2 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000002, decision: Fail, label: None, confidence: 0.9, detected: [("bolt", 0.9), ("M8_bolt", 0.9), ("nut", 0.8), ("debris", 0.9)] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000002, label: None, confidence: 0.9, matched: false }
              -> Inspect
            @3 Prediction(Prediction { inspection_id: 00000000-0000-0000-0000-000000000003, decision: Pass, label: None, confidence: 0.9, detected: [("bolt", 0.9), ("m8 bolt", 0.9), ("nut", 0.8)] })
              Prediction { step: 0, inspection_id: 00000000-0000-0000-0000-000000000003, label: None, confidence: 0.9, matched: true }
              StepComplete { step: 0, active: TimeDelta { secs: 3, nanos: 0 }, over_benchmark: false }
              AssemblyComplete { outcome: Completed, reason: None, active: TimeDelta { secs: 3, nanos: 0 } }
            state: Finished(Completed)
        "#]],
    );
}
