//! Which station outputs a result drives: the stack light shows one state at a time, a
//! reject gate pulses, and the busy line frames the cycle. Pure: the GPIO service carries
//! out the commands in the order given.

use std::collections::BTreeSet;

use super::decision::Decision;

/// A station's outputs by purpose (from `[stations.<id>]`). Names are GPIO output names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputMap {
    pub pass: Vec<String>,
    pub fail: Vec<String>,
    pub uncertain: Vec<String>,
    /// Active while triggered cycles run; dropped after the last one's outputs are set,
    /// so a PLC that waits for busy to fall reads a settled result.
    pub busy: Option<String>,
    /// Active while every service of the daemon is ready (camera open, model loaded,
    /// lines held...): the line's "station ready" lamp or PLC input.
    pub ready: Option<String>,
    /// The outputs above that pulse rather than hold a level.
    pub pulsed: BTreeSet<String>,
}

impl OutputMap {
    pub fn is_empty(&self) -> bool {
        self.pass.is_empty()
            && self.fail.is_empty()
            && self.uncertain.is_empty()
            && self.busy.is_none()
            && self.ready.is_none()
    }

    fn for_decision(&self, decision: Decision) -> &[String] {
        match decision {
            Decision::Pass => &self.pass,
            Decision::Fail => &self.fail,
            Decision::Uncertain => &self.uncertain,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputCommand {
    Set {
        output: String,
        active: bool,
    },
    /// Active for the output's configured pulse, then back to its safe level.
    Pulse {
        output: String,
    },
}

/// A trigger was accepted: raise busy.
pub fn on_trigger(map: &OutputMap) -> Vec<OutputCommand> {
    map.busy.iter().map(|output| OutputCommand::Set { output: output.clone(), active: true }).collect()
}

/// The daemon became ready, or stopped being ready.
pub fn on_readiness(map: &OutputMap, ready: bool) -> Vec<OutputCommand> {
    map.ready.iter().map(|output| OutputCommand::Set { output: output.clone(), active: ready }).collect()
}

/// No triggered cycle is running any more: drop busy (after `on_result`'s outputs).
pub fn on_idle(map: &OutputMap) -> Vec<OutputCommand> {
    map.busy.iter().map(|output| OutputCommand::Set { output: output.clone(), active: false }).collect()
}

/// A result to show. `None` means a cycle failed before a decision (camera, model): the
/// part was not judged, so it gets the uncertain outputs and never the pass ones.
///
/// Order: lamps of other states off first (never two states lit at once), then this
/// state's lamps on, then its pulses.
pub fn on_result(map: &OutputMap, decision: Option<Decision>) -> Vec<OutputCommand> {
    let chosen = map.for_decision(decision.unwrap_or(Decision::Uncertain));
    let mut commands = Vec::new();
    let mut cleared = BTreeSet::new();
    for other in Decision::ALL {
        for output in map.for_decision(other) {
            if !map.pulsed.contains(output) && !chosen.contains(output) && cleared.insert(output) {
                commands.push(OutputCommand::Set { output: output.clone(), active: false });
            }
        }
    }
    for output in chosen.iter().filter(|o| !map.pulsed.contains(*o)) {
        commands.push(OutputCommand::Set { output: output.clone(), active: true });
    }
    for output in chosen.iter().filter(|o| map.pulsed.contains(*o)) {
        commands.push(OutputCommand::Pulse { output: output.clone() });
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(commands: &[OutputCommand]) -> String {
        commands
            .iter()
            .map(|c| match c {
                OutputCommand::Set { output, active } => format!("{output}={}", u8::from(*active)),
                OutputCommand::Pulse { output } => format!("pulse {output}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn stack_light() -> OutputMap {
        OutputMap {
            pass: vec!["green".into()],
            fail: vec!["red".into(), "reject".into()],
            uncertain: vec!["amber".into()],
            busy: Some("busy".into()),
            ready: Some("ready".into()),
            pulsed: ["reject".to_owned()].into(),
        }
    }

    #[test]
    fn each_result_lights_one_state() {
        let map = stack_light();
        let cases: Vec<String> = [Some(Decision::Pass), Some(Decision::Fail), Some(Decision::Uncertain), None]
            .into_iter()
            .map(|d| format!("{d:?}: {}", render(&on_result(&map, d))))
            .collect();
        expect_test::expect![[r#"
            Some(Pass): red=0, amber=0, green=1
            Some(Fail): green=0, amber=0, red=1, pulse reject
            Some(Uncertain): green=0, red=0, amber=1
            None: green=0, red=0, amber=1"#]]
        .assert_eq(&cases.join("\n"));
        assert_eq!(render(&on_trigger(&map)), "busy=1");
        assert_eq!(render(&on_idle(&map)), "busy=0");
        assert_eq!(render(&on_readiness(&map, false)), "ready=0");
    }

    #[test]
    fn a_lamp_shared_by_two_states_is_not_switched_off_and_on() {
        // An amber beacon that also flashes on fail: fail keeps it on without a blink.
        let map = OutputMap {
            fail: vec!["red".into(), "amber".into()],
            uncertain: vec!["amber".into()],
            ..OutputMap::default()
        };
        assert_eq!(render(&on_result(&map, Some(Decision::Fail))), "red=1, amber=1");
        assert_eq!(render(&on_result(&map, Some(Decision::Uncertain))), "red=0, amber=1");
        assert_eq!(render(&on_result(&OutputMap::default(), Some(Decision::Pass))), "");
    }
}
