//! GPIO end to end with the simulated chip: a trigger edge inspects the station's part and
//! the decision drives the stack light and the reject gate; uploads leave the outputs
//! alone; a failed cycle shows uncertain; shutdown leaves every output safe; a missing
//! chip degrades the daemon instead of stopping it. Plus the REST surface.

use hyper::{Method, StatusCode};
use serde_json::json;
use stationd::bus::Notification;
use stationd::config::GpioBackend;
use stationd::south::gpio::sim::GpioSimControl;
use stationd::storage::Source;

use crate::support::{Daemon, blind_camera_config, sample, test_config};

fn sim(daemon: &Daemon) -> GpioSimControl {
    daemon.app.gpio_sim.clone().expect("the test config has a simulated chip")
}

/// The output log without the ready output, which follows readiness on its own clock.
fn lamps(gpio: &GpioSimControl) -> Vec<String> {
    gpio.output_log().into_iter().filter(|entry| !entry.starts_with("ready=")).collect()
}

/// Presses the trigger and returns the decision of the inspection it caused.
async fn press_trigger(daemon: &Daemon, gpio: &GpioSimControl) -> String {
    let mut notifications = daemon.app.bus.notifications.subscribe();
    gpio.drive("trigger", true).unwrap();
    let decision = loop {
        // Camera only: an upload answered just before may be announced after this subscribes
        // (the notification follows the snapshot the upload's answer waited for).
        if let Notification::InspectionCompleted(summary) = notifications.recv().await.unwrap()
            && summary.source == Source::Camera
        {
            assert_eq!(summary.station_id, "default");
            break summary.decision.as_str().to_owned();
        }
    };
    gpio.drive("trigger", false).unwrap();
    // The result's outputs are set before busy drops.
    gpio.wait_output("busy", false).await;
    decision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_edge_inspects_and_the_decision_drives_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Presses follow each other faster than a debounce period here.
    config.gpio.as_mut().unwrap().inputs.get_mut("trigger").unwrap().debounce = std::time::Duration::ZERO;
    let daemon = Daemon::start_with(config).await;
    let gpio = sim(&daemon);
    // Every service is ready: the station's ready output says so.
    gpio.wait_output("ready", true).await;

    // An upload is judged but drives none of the line's outputs (the log below starts
    // with the trigger's busy: station-io handles results in order).
    let (status, _) = daemon.upload(&sample("01_scratch.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CREATED);

    // The sim camera's frames are 00_ok.jpg, then 01_scratch.jpg.
    assert_eq!(press_trigger(&daemon, &gpio).await, "pass");
    assert_eq!(lamps(&gpio), ["busy=1", "green=1", "busy=0"]);
    assert_eq!(press_trigger(&daemon, &gpio).await, "fail");
    gpio.wait_output("reject", false).await;
    assert_eq!(
        lamps(&gpio)[3..],
        ["busy=1", "green=0", "red=1", "reject=1", "busy=0", "reject=0"],
        "lamps of other states go off before this state's go on; the reject gate pulses"
    );
    let (_, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!(list["total"], 3, "the upload and the two triggered parts: {list}");

    // Every stage of the two triggered cycles is timed; the upload has no capture.
    let (status, metrics) = daemon.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    for line in [
        "inspection_stage_seconds_count{station=\"default\",stage=\"capture\"} 2",
        "inspection_stage_seconds_count{station=\"default\",stage=\"inference\"} 3",
        "inspection_stage_seconds_count{station=\"default\",stage=\"commit\"} 3",
        "inspection_stage_seconds_count{station=\"default\",stage=\"published\"} 3",
        "inspection_stage_seconds_count{station=\"default\",stage=\"output\"} 2",
        "gpio_triggers_total{station=\"default\",outcome=\"accepted\"} 2",
        "device_up{kind=\"camera\",name=\"cam0\"} 1",
        "device_up{kind=\"gpio\",name=\"gpio\"} 1",
        "device_up{kind=\"wrench\",name=\"wrench-sim\"} 1",
        "model_ready 1",
        "api_requests_total{method=\"GET\",endpoint=\"/api/v1/inspections\",status=\"200\"} 1",
        "api_requests_total{method=\"POST\",endpoint=\"/api/v1/inspect\",status=\"201\"} 1",
        "inspections_total{station=\"default\",decision=\"fail\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // Shutdown: every output back to its safe level.
    assert!(daemon.shutdown().await);
    for output in ["green", "amber", "red", "busy", "reject", "ready"] {
        assert_eq!(gpio.output(output), Some(false), "{output}");
    }
}

/// Three parts triggered at once: each is inspected, and busy stays on until the last
/// one's outputs are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_triggers_each_inspect_and_busy_spans_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.gpio.as_mut().unwrap().inputs.get_mut("trigger").unwrap().debounce = std::time::Duration::ZERO;
    let daemon = Daemon::start_with(config).await;
    let gpio = sim(&daemon);
    let mut notifications = daemon.app.bus.notifications.subscribe();
    for _ in 0..3 {
        gpio.drive("trigger", true).unwrap();
        gpio.drive("trigger", false).unwrap();
    }
    let mut results = 0;
    while results < 3 {
        if let Notification::InspectionCompleted(_) = notifications.recv().await.unwrap() {
            results += 1;
        }
    }
    gpio.wait_output("busy", false).await;
    let log = lamps(&gpio);
    assert_eq!(log.first().map(String::as_str), Some("busy=1"), "{log:?}");
    assert_eq!(log.iter().filter(|l| l.starts_with("busy")).count(), 2, "one busy span: {log:?}");
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_whose_cycle_fails_shows_uncertain_never_pass() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_settled(blind_camera_config(dir.path())).await;
    let gpio = sim(&daemon);
    gpio.drive("trigger", true).unwrap();
    gpio.wait_output("amber", true).await;
    gpio.wait_output("busy", false).await;
    assert_eq!(lamps(&gpio), ["busy=1", "amber=1", "busy=0"]);
    assert_eq!(gpio.output("ready"), Some(false), "a station without its camera is not ready");
    let (_, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!(list["total"], 0, "no record without a frame: {list}");
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_lists_lines_sets_outputs_and_injects_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let gpio = sim(&daemon);

    let (status, lines) = daemon.get_json("/api/v1/system/gpio").await;
    assert_eq!((status, lines["status"].as_str()), (StatusCode::OK, Some("ok")));
    let trigger = lines["msg"].as_array().unwrap().iter().find(|l| l["name"] == "trigger").unwrap();
    assert_eq!(
        trigger,
        &json!({"name": "trigger", "direction": "input", "line": "/dev/gpiochip0:0", "active_low": false,
                "active": false, "error": null, "trigger": "default", "pulse_ms": null})
    );

    let (status, body) =
        daemon.json(Method::POST, "/api/v1/system/gpio/amber/set", Some(json!({"active": true}))).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"status": "ok", "msg": ""})));
    assert_eq!(gpio.output("amber"), Some(true));
    let (status, _) = daemon.json(Method::POST, "/api/v1/system/gpio/reject/set", Some(json!({"pulse": true}))).await;
    assert_eq!(status, StatusCode::OK);
    gpio.wait_output("reject", false).await;

    let cases = [
        ("/api/v1/system/gpio/horn/set", json!({"active": true}), StatusCode::NOT_FOUND, "no GPIO line named \"horn\""),
        (
            "/api/v1/system/gpio/trigger/set",
            json!({"active": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line \"trigger\" is an input",
        ),
        (
            "/api/v1/system/gpio/amber/set",
            json!({"active": true, "pulse": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "give exactly one of \"active\" (true or false) or \"pulse\": true",
        ),
        (
            "/api/v1/system/gpio/amber/inject",
            json!({"level": "active"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line \"amber\" is an output",
        ),
        (
            "/api/v1/system/gpio/trigger/inject",
            json!({"level": "high"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "level \"high\" is not one of \"active\", \"inactive\", \"pulse\"",
        ),
    ];
    for (path, body, status, detail) in cases {
        let (got, answer) = daemon.json(Method::POST, path, Some(body)).await;
        assert_eq!((got, answer["detail"].as_str()), (status, Some(detail)), "{path}");
    }

    // A pulse on the trigger through REST runs a whole cycle.
    let mut notifications = daemon.app.bus.notifications.subscribe();
    let (status, _) =
        daemon.json(Method::POST, "/api/v1/system/gpio/trigger/inject", Some(json!({"level": "pulse"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(notifications.recv().await.unwrap(), Notification::InspectionCompleted(_)));
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_gpio_chip_degrades_the_daemon_and_inject_needs_the_sim() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let gpio = config.gpio.as_mut().unwrap();
    gpio.backend = GpioBackend::Cdev;
    // A chip path that exists on no machine, so this holds on a bench PC too.
    let missing = |offset| stationd::config::LineAddress::Offset { chip: dir.path().join("gpiochip9"), offset };
    for (offset, input) in gpio.inputs.values_mut().enumerate() {
        input.line = missing(offset as u32);
    }
    for (offset, output) in gpio.outputs.values_mut().enumerate() {
        output.line = missing(100 + offset as u32);
    }
    let daemon = Daemon::start_settled(config).await;
    let (status, ready) = daemon.get_json("/api/v1/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(ready["services"]["gpio"]["detail"].as_str().is_some(), "{ready}");
    // Records and the rest of the API stay up.
    let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, lines) = daemon.get_json("/api/v1/system/gpio").await;
    assert_eq!(status, StatusCode::OK);
    assert!(lines["msg"][0]["error"].as_str().is_some(), "{lines}");
    let (status, body) =
        daemon.json(Method::POST, "/api/v1/system/gpio/trigger/inject", Some(json!({"level": "active"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(daemon.shutdown().await, "a clean stop");
}
