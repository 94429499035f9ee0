//! The GPIO service and the simulated chip: debounce, active-low, pulses, safe state on
//! every way out, busy lines and failing writes. Time is tokio's paused clock.

use std::time::Duration;

use super::sim::GpioSimControl;
use super::*;
use crate::config::{EdgeSelect, GpioBackend, GpioInput, GpioOutput, LineAddress};
use crate::supervisor::{ServiceState, Supervisor};

fn line(offset: u32) -> LineAddress {
    LineAddress::Offset { chip: "/dev/gpiochip0".into(), offset }
}

fn config() -> GpioConfig {
    let input = |offset, edge, active_low, debounce_ms| GpioInput {
        line: line(offset),
        edge,
        active_low,
        debounce: Duration::from_millis(debounce_ms),
        bias: None,
        trigger: None,
    };
    let output = |offset, active_low, safe_active, pulse_ms: Option<u64>| GpioOutput {
        line: line(offset),
        active_low,
        safe_active,
        pulse: pulse_ms.map(Duration::from_millis),
    };
    GpioConfig {
        backend: GpioBackend::Sim,
        consumer: "stationd".into(),
        inputs: [
            ("trigger".to_owned(), input(1, EdgeSelect::Rising, false, 10)),
            ("estop_ok".to_owned(), input(2, EdgeSelect::Both, true, 0)),
        ]
        .into(),
        outputs: [
            ("green".to_owned(), output(10, false, false, None)),
            ("red".to_owned(), output(11, true, false, None)),
            ("reject".to_owned(), output(12, false, false, Some(300))),
            // A clamp that must hold the part when the station is not running.
            ("clamp".to_owned(), output(13, false, true, None)),
        ]
        .into(),
    }
}

fn start(control: &GpioSimControl) -> (Supervisor, GpioHandle) {
    let mut supervisor = Supervisor::new();
    let sim = control.clone();
    let handle = spawn(&mut supervisor, config(), move || sim.open());
    (supervisor, handle)
}

fn set(output: &str, active: bool) -> OutputCommand {
    OutputCommand::Set { output: output.into(), active }
}

#[tokio::test(start_paused = true)]
async fn debounce_drops_bounces_and_reports_a_held_level() {
    let control = GpioSimControl::new(&config());
    let mut lines = control.open().unwrap();
    // A 3 ms bounce on a 10 ms debounce: no edge.
    control.drive("trigger", true).unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    control.drive("trigger", false).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(50), lines.next_edge()).await;
    assert!(quiet.is_err(), "a bounce is not an edge: {quiet:?}");
    // Held: one rising edge, 10 ms after the wire changed.
    let pressed = tokio::time::Instant::now();
    control.drive("trigger", true).unwrap();
    let edge = lines.next_edge().await.unwrap();
    assert_eq!((edge.input.as_str(), edge.active), ("trigger", true));
    assert_eq!(pressed.elapsed(), Duration::from_millis(10));
    // The release is a falling edge, which this rising-edge input does not report.
    control.drive("trigger", false).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(50), lines.next_edge()).await;
    assert!(quiet.is_err());
    assert!(!lines.level("trigger").unwrap());
}

#[tokio::test(start_paused = true)]
async fn active_low_inputs_and_outputs_are_logical_above_the_trait() {
    let control = GpioSimControl::new(&config());
    let mut lines = control.open().unwrap();
    // estop_ok is active-low: at rest its wire is high and it reads inactive.
    assert!(!lines.level("estop_ok").unwrap());
    control.drive_physical("estop_ok", false).unwrap();
    let edge = lines.next_edge().await.unwrap();
    assert_eq!((edge.input.as_str(), edge.active), ("estop_ok", true));
    // red is active-low: logical on is a low wire.
    assert_eq!(control.output_physical("red"), Some(true));
    lines.set("red", true).unwrap();
    assert_eq!((control.output("red"), control.output_physical("red")), (Some(true), Some(false)));
    assert_eq!(control.drive("green", true), Err(GpioError::NotAnInput("green".into())));
}

#[tokio::test(start_paused = true)]
async fn commands_pulses_and_safe_state_on_an_orderly_stop() {
    let control = GpioSimControl::new(&config());
    let (supervisor, gpio) = start(&control);
    gpio.apply(vec![set("green", false), set("red", true), OutputCommand::Pulse { output: "reject".into() }])
        .await
        .unwrap();
    assert_eq!(control.output_log(), ["red=1", "reject=1"]);
    let pulse_start = tokio::time::Instant::now();
    control.wait_output("reject", false).await;
    assert_eq!(pulse_start.elapsed(), Duration::from_millis(300));
    gpio.apply(vec![set("clamp", false)]).await.unwrap();

    assert_eq!(gpio.apply(vec![set("trigger", true)]).await, Err(GpioError::NotAnOutput("trigger".into())));
    assert_eq!(gpio.apply(vec![set("horn", true)]).await, Err(GpioError::Unknown("horn".into())));

    let status = gpio.status().await.unwrap();
    let levels: Vec<String> = status.iter().map(|l| format!("{} {:?} {:?}", l.name, l.direction, l.active)).collect();
    expect_test::expect![[r#"
        estop_ok Input Ok(false)
        trigger Input Ok(false)
        clamp Output Ok(false)
        green Output Ok(false)
        red Output Ok(true)
        reject Output Ok(false)"#]]
    .assert_eq(&levels.join("\n"));

    assert!(supervisor.shutdown(Duration::from_secs(5)).await);
    assert_eq!(control.output_log(), ["red=1", "reject=1", "reject=0", "clamp=0", "clamp=1", "red=0"]);
}

#[tokio::test(start_paused = true)]
async fn a_panic_elsewhere_drains_the_daemon_and_leaves_outputs_safe() {
    let control = GpioSimControl::new(&config());
    let (mut supervisor, gpio) = start(&control);
    gpio.apply(vec![set("red", true), set("clamp", false)]).await.unwrap();
    let (panic_now, panic_rx) = tokio::sync::oneshot::channel::<()>();
    supervisor.spawn("core", crate::supervisor::Phase::Core, |_ctx| async move {
        let _ = panic_rx.await;
        panic!("a bug in the core");
    });
    let failed = supervisor.failed();
    panic_now.send(()).unwrap();
    failed.cancelled().await;
    supervisor.shutdown(Duration::from_secs(5)).await;
    assert_eq!((control.output("red"), control.output("clamp")), (Some(false), Some(true)));
}

#[tokio::test(start_paused = true)]
async fn the_service_applies_safe_state_even_when_it_panics_itself() {
    let control = GpioSimControl::new(&config());
    let mut supervisor = Supervisor::new();
    let sim = control.clone();
    let mut opened = false;
    // A backend whose edge read panics after the first open: the guard still runs.
    let gpio = spawn(&mut supervisor, config(), move || {
        let lines = sim.open()?;
        let first = !opened;
        opened = true;
        Ok(Exploding { lines, armed: first })
    });
    gpio.apply(vec![set("red", true)]).await.unwrap();
    control.drive("estop_ok", true).unwrap();
    supervisor.failed().cancelled().await;
    assert_eq!(control.output("red"), Some(false));
    supervisor.shutdown(Duration::from_secs(5)).await;
}

struct Exploding {
    lines: sim::SimGpio,
    armed: bool,
}

impl GpioLines for Exploding {
    async fn next_edge(&mut self) -> Result<InputEdge, GpioError> {
        let edge = self.lines.next_edge().await;
        assert!(!self.armed, "a bug in the backend");
        edge
    }
    fn set(&mut self, output: &str, active: bool) -> Result<(), GpioError> {
        self.lines.set(output, active)
    }
    fn level(&mut self, line: &str) -> Result<bool, GpioError> {
        self.lines.level(line)
    }
}

#[tokio::test(start_paused = true)]
async fn a_busy_line_degrades_the_service_until_it_is_free() {
    let control = GpioSimControl::new(&config());
    control.set_busy("red", true);
    let (supervisor, gpio) = start(&control);
    let readiness = supervisor.readiness();
    let status = gpio.status().await.unwrap();
    assert_eq!(status[0].active, Err("line red: busy (held by another program)".to_owned()));
    assert!(matches!(gpio.apply(vec![set("red", true)]).await, Err(GpioError::Unavailable(_))));
    assert!(matches!(&readiness.report()[0].1, ServiceState::Degraded(why) if why.contains("busy")));

    control.set_busy("red", false);
    // Paused time: the service's reopen at +5 s runs before this task wakes at +5.001 s.
    tokio::time::sleep(REOPEN_BACKOFF + Duration::from_millis(1)).await;
    gpio.apply(vec![set("red", true)]).await.unwrap();
    assert_eq!(readiness.report()[0].1, ServiceState::Ready);
    assert_eq!(control.output("red"), Some(true));

    control.fail_writes(true);
    let err = gpio.apply(vec![set("green", true)]).await.unwrap_err();
    assert_eq!(err.to_string(), "line green: simulated write failure");
    control.fail_writes(false);
    supervisor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn edges_reach_every_subscriber() {
    let control = GpioSimControl::new(&config());
    let (supervisor, gpio) = start(&control);
    let mut edges = gpio.edges();
    // Wait until the lines are open, then press.
    gpio.status().await.unwrap();
    control.drive("trigger", true).unwrap();
    let edge = edges.recv().await.unwrap();
    assert_eq!((edge.input.as_str(), edge.active), ("trigger", true));
    supervisor.shutdown(Duration::from_secs(5)).await;
}
