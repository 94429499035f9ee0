//! `cargo bench --bench inspect`: end-to-end `POST /api/v1/inspect` latency of the real
//! daemon binary (a child process on its embedded defaults, state in a temp dir), the
//! daemon's overhead over pure model inference, and its idle RSS. Prints figures; the
//! targets they are judged against live in the closing notes, not in timed tests.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const WARMUP: usize = 20;
const ITERATIONS: usize = 300;

fn report(name: &str, samples: Vec<f64>) {
    let figures = stationd::models::summarise(samples);
    eprintln!(
        "{name:<42} n={:<4} mean={:>7.2} ms  p50={:>7.2} ms  p99={:>7.2} ms",
        figures.iterations, figures.mean_ms, figures.p50_ms, figures.p99_ms
    );
}

/// The embedded defaults with state under `state_dir` and every listener on port 0.
fn config_text(state_dir: &std::path::Path) -> String {
    stationd::config::EMBEDDED_DEFAULTS
        .replace("state_dir = \"./var\"", &format!("state_dir = {:?}", state_dir.display().to_string()))
        .replace("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:5020\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:4840\"", "bind = \"127.0.0.1:0\"")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo bench --bench inspect -- patchcore`: only the PatchCore fit.
    if std::env::args().any(|arg| arg == "patchcore") {
        patchcore_fit();
        return;
    }
    let sample = std::fs::read("examples/parts/01_scratch.jpg").expect("run from the crate root");

    // Pure inference: decode excluded, preprocessing included, as the daemon measures it.
    let model = stationd::inference::Model::load(std::path::Path::new("models/parts-classifier")).unwrap();
    let decoded = image::load_from_memory(&sample).unwrap().into_rgb8();
    for _ in 0..WARMUP {
        model.run(&decoded).unwrap();
    }
    let pure: Vec<f64> = (0..ITERATIONS)
        .map(|_| {
            let started = Instant::now();
            model.run(&decoded).unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    drop(model);
    let per_model = tract_per_model();

    // A simulated tightening controller in this process, which the daemon connects to.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let controller = runtime.block_on(async {
        let settings = stationd::south::wrench::sim::SimSettings::default();
        stationd::south::wrench::sim::SimController::bind(([127, 0, 0, 1], 0).into(), settings).await.unwrap()
    });
    let wrench = controller.handle();
    let stop_controller = tokio_util::sync::CancellationToken::new();
    #[allow(clippy::disallowed_methods, reason = "a bench's controller, not a daemon service")]
    runtime.spawn(controller.run(stop_controller.clone()));

    // The daemon, as a separate process.
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("stationd.toml");
    let text = config_text(&state.path().join("state")).replace("sim_interval_ms = 5000\n", "")
        + &format!(
            "\n[wrenches.bench]\nbackend = \"open-protocol\"\naddress = \"127.0.0.1\"\nport = {}\nstation = \"default\"\n",
            wrench.addr().port()
        );
    let text = text + "\n[auth]\nrequests_per_minute = 1000000\n";
    std::fs::write(&config, text).unwrap();
    // A user to log in as, added the way a technician would.
    let mut add = Command::new(env!("CARGO_BIN_EXE_stationd"))
        .args(["user", "add", "bench", "--role", "admin", "--password-stdin", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .spawn()
        .expect("stationd user add");
    add.stdin.take().unwrap().write_all(b"load-test-pass-1\n").unwrap();
    assert!(add.wait().unwrap().success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_stationd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stationd");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let mut modbus_addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let value =
            |line: &str| line.find("addr=").map(|at| line[at + 5..].split_whitespace().next().unwrap().to_owned());
        if line.contains("REST API listening") {
            addr = value(&line);
        }
        if line.contains("Modbus TCP listening") {
            modbus_addr = value(&line);
        }
        if line.contains("stationd ready") {
            break;
        }
        assert!(!line.contains("started degraded"), "the daemon under test started degraded: {line}");
    }
    let addr = addr.expect("the daemon logs its API address");
    let modbus_addr: std::net::SocketAddr =
        modbus_addr.expect("the daemon logs its Modbus address").parse().expect("a socket address");
    // Keep draining the child's log so it never blocks on a full pipe. A bench helper
    // thread, not a daemon service: the supervisor rule does not apply here.
    #[allow(clippy::disallowed_methods)]
    let drain = std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(std::time::Duration::from_millis(500));
    let idle_rss = rss_kib(child.id());

    let (e2e, overhead, plc, plc_overhead, tightening, swaps) = runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let login = Request::post(format!("http://{addr}/api/v1/auth/login"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"username": "bench", "password": "load-test-pass-1"}"#)))
            .unwrap();
        let body = client.request(login).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        let login: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let bearer = format!("Bearer {}", login["access_token"].as_str().expect("logged in"));
        let boundary = "bench-boundary";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&sample);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let (mut e2e, mut overhead) = (Vec::new(), Vec::new());
        for i in 0..WARMUP + ITERATIONS {
            let request = Request::post(format!("http://{addr}/api/v1/inspect"))
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .header("authorization", &bearer)
                .body(Full::new(body.clone()))
                .unwrap();
            let started = Instant::now();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 201);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if i >= WARMUP {
                e2e.push(elapsed);
                overhead.push(elapsed - json["inference_time_ms"].as_f64().unwrap());
            }
        }
        let (plc, plc_overhead) = modbus_handshakes(&client, &addr, &bearer, modbus_addr).await;
        let tightening = tightening_acks(&wrench).await;
        let swaps = hot_swaps(&client, &addr, &bearer, body).await;
        (e2e, overhead, plc, plc_overhead, tightening, swaps)
    });
    stop_controller.cancel();
    let busy_rss = rss_kib(child.id());
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let exit = child.wait().unwrap();
    drain.join().unwrap();

    eprintln!("\nstationd inspect bench ({} iterations, 128x128 JPEG, bundled parts-classifier)", ITERATIONS);
    report("pure inference (tract, preprocess + run)", pure);
    for (name, samples) in per_model {
        report(&format!("tract 1 thread, input-size image: {name}"), samples);
    }
    report("POST /api/v1/inspect end to end (HTTP)", e2e);
    report("daemon overhead (end to end - inference)", overhead);
    report("Modbus Trigger -> ResultsValid (PLC poll)", plc);
    report("  minus inference", plc_overhead);
    report("wrench MID 0061 pushed -> 0062 ack (commit)", tightening);
    let HotSwaps { triggers, failed, activations } = swaps;
    eprintln!(
        "hot swap under a 20 Hz trigger load: {} triggers, {} failed, {} swaps",
        triggers.len(),
        failed,
        activations.len()
    );
    report("  trigger (POST /inspect) during the swaps", triggers);
    report("  POST /models/{id}/activate|rollback", activations);
    eprintln!("{:<42} {} KiB idle, {} KiB after the run", "daemon RSS", idle_rss, busy_rss);
    eprintln!("daemon exit after SIGTERM: {exit}");
    assert!(exit.success(), "the daemon must stop cleanly on SIGTERM");

    let (gpio_total, gpio_overhead) = gpio_trigger_to_output();
    report("GPIO edge -> result outputs set (in-process)", gpio_total);
    report("  minus inference", gpio_overhead);
    report("coaching: MID 0061 -> unit event committed", coaching_tightening_to_unit_event());
    patchcore_fit();
}

/// A PatchCore fit on the bundled flanges as the fit job runs it (one thread): 40 good
/// images in, 20 good and 60 defective held out; then the fitted model's latency.
fn patchcore_fit() {
    use stationd::patchcore::{Backbone, FitRequest, fit};
    let images = |prefix: &str, range: std::ops::RangeInclusive<u32>| -> Vec<std::path::PathBuf> {
        range.map(|i| format!("models/parts-classifier/heldout/{prefix}_{i:03}.jpg").into()).collect()
    };
    let request = FitRequest {
        name: "bench".into(),
        version: "1".into(),
        normal: images("ok", 1..=40),
        heldout_normal: images("ok", 41..=60),
        heldout_anomalous: [images("dent", 1..=30), images("scratch", 1..=30)].concat(),
        coreset_ratio: 0.1,
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fitted");
    let started = Instant::now();
    let backbone = Backbone::load(std::path::Path::new("models/patchcore-backbone")).unwrap();
    let fitted = fit(&backbone, &request, &out, &mut |_, _, _| true).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "PatchCore fit: {seconds:.2} s for {} images ({} bank + {} calibration + {} held out); \
         {} of {} patches kept; AUROC {:.3}; held-out good passed {:.2}, defects failed {:.2}",
        request.normal.len() + request.heldout_normal.len() + request.heldout_anomalous.len(),
        fitted.bank_images,
        fitted.calibration_images,
        fitted.heldout_normal + fitted.heldout_anomalous,
        fitted.bank_patches,
        fitted.candidate_patches,
        fitted.image_auroc.unwrap_or(f64::NAN),
        fitted.normal_passed.unwrap_or(f64::NAN),
        fitted.anomalous_failed.unwrap_or(f64::NAN),
    );
    let model = stationd::inference::Model::load(&out).unwrap();
    model.time_runs(WARMUP).unwrap();
    report("tract 1 thread, fitted PatchCore model", model.time_runs(ITERATIONS).unwrap());
}

/// Assembly coaching, in process: from the controller writing a tightening to the unit
/// record holding it (the coaching state published after the event's commit). Both the
/// tightening and the unit event are SQLite commits with synchronous=FULL.
fn coaching_tightening_to_unit_event() -> Vec<f64> {
    use stationd::core::assembly::{Action, NokPolicy, TorqueCheck};
    use stationd::storage::{AssemblyFields, Db, NewOperator, StepFields};

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = tempfile::tempdir().unwrap();
    let text = config_text(state.path());
    let mut config = stationd::config::Config::from_toml_str(&text).unwrap();
    config.wrenches.clear();
    // The work instruction: 7 steps of 50 tightenings, stored before the daemon starts.
    let now = chrono::Utc::now();
    let (assembly, operator) = {
        let mut db = Db::open(state.path(), false).unwrap();
        let operator = NewOperator {
            first_name: "Bench".into(),
            last_name: "Operator".into(),
            role: "operator".into(),
            rfid: None,
            password_hash: None,
            active: true,
        };
        let operator = db.insert_operator(operator, now).unwrap().id;
        let assembly = db.insert_assembly(AssemblyFields { name: Some("bench".into()), ..Default::default() }, now);
        let assembly = assembly.unwrap().id;
        let torque = Action::Torque(TorqueCheck {
            wrench: "bench".into(),
            pset: None,
            count: 50,
            target: None,
            tolerance: None,
            nok: NokPolicy::Rework { max_nok: None },
            only: true,
        });
        for i in 0..7 {
            let fields = StepFields { name: Some(format!("step {i}")), ..Default::default() };
            let step = db.insert_step(assembly, fields, None, now).unwrap();
            db.put_step_action(assembly, step.id, None, "screws", &torque, now).unwrap();
        }
        db.publish_assembly(assembly, None, now).unwrap();
        (assembly, operator)
    };
    runtime.block_on(async {
        let controller = stationd::south::wrench::sim::SimController::bind(
            ([127, 0, 0, 1], 0).into(),
            stationd::south::wrench::sim::SimSettings::default(),
        )
        .await
        .unwrap();
        let wrench = controller.handle();
        let stop = tokio_util::sync::CancellationToken::new();
        #[allow(clippy::disallowed_methods, reason = "a bench's controller, not a daemon service")]
        tokio::spawn(controller.run(stop.clone()));
        let app = stationd::app::start(config).await.unwrap();
        app.wait_ready().await.unwrap();
        let mut settings = stationd::south::wrench::WrenchSettings::new("bench", "127.0.0.1", wrench.addr().port());
        settings.station_id = Some("default".into());
        app.wrenches.connect(settings).unwrap();
        wrench.until(|s| s.requests.iter().filter(|mid| **mid == 64).count() >= 2).await;
        let start = stationd::coaching::StartRequest {
            assembly_id: assembly,
            operator_id: operator,
            serial: "BENCH-1".into(),
            first_step: 0,
        };
        app.coaching.start(start).await.unwrap();
        let mut samples = Vec::new();
        for i in 0..WARMUP + ITERATIONS {
            let mut notifications = app.bus.notifications.subscribe();
            let started = Instant::now();
            wrench.tighten(true).expect("the tool is enabled");
            while !matches!(notifications.recv().await.unwrap(), stationd::bus::Notification::Coaching(_)) {}
            if i >= WARMUP {
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        stop.cancel();
        assert!(app.shutdown().await);
        samples
    })
}

/// A trigger input's edge (simulated chip, debounce 0) to the result's outputs being set
/// (the busy output drops after them), with the daemon in this process so that both ends
/// are read on one clock.
fn gpio_trigger_to_output() -> (Vec<f64>, Vec<f64>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = tempfile::tempdir().unwrap();
    let text = config_text(state.path())
        .replace("sim_interval_ms = 5000\n", "")
        .replace("line = 0\n", "line = 0\ndebounce_ms = 0\n");
    let config = stationd::config::Config::from_toml_str(&text).unwrap();
    runtime.block_on(async {
        let app = stationd::app::start(config).await.unwrap();
        app.wait_ready().await.unwrap();
        let gpio = app.gpio_sim.clone().unwrap();
        let (mut total, mut overhead) = (Vec::new(), Vec::new());
        for i in 0..WARMUP + ITERATIONS {
            let mut notifications = app.bus.notifications.subscribe();
            let pressed = gpio.drive("trigger", true).unwrap();
            let inference_ms = loop {
                if let stationd::bus::Notification::InspectionCompleted(summary) = notifications.recv().await.unwrap() {
                    break summary.inference_ms;
                }
            };
            let settled = gpio.wait_output("busy", false).await;
            gpio.drive("trigger", false).unwrap();
            if i >= WARMUP {
                let elapsed = settled.duration_since(pressed).as_secs_f64() * 1000.0;
                total.push(elapsed);
                overhead.push(elapsed - inference_ms);
            }
        }
        assert!(app.shutdown().await);
        (total, overhead)
    })
}

/// A controller's view of one tightening: from writing MID 0061 to reading the MID 0062
/// that the daemon sends only after the result's SQLite commit (synchronous=FULL).
async fn tightening_acks(wrench: &stationd::south::wrench::sim::SimHandle) -> Vec<f64> {
    // Subscribed, and the newest-result query after it answered: the link is ready.
    wrench.until(|s| s.requests.iter().filter(|mid| **mid == 64).count() >= 2).await;
    let mut samples = Vec::new();
    for i in 0..WARMUP + ITERATIONS {
        let acked = wrench.stats().results_acked;
        let started = Instant::now();
        wrench.tighten(true).expect("the tool is enabled");
        wrench.until(|s| s.results_acked > acked).await;
        if i >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples
}

/// A PLC's view: write Trigger, poll ResultsValid, read, acknowledge. The latency is from
/// the Trigger write to the first poll that sees ResultsValid (a scan without delay).
async fn modbus_handshakes(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    api: &str,
    bearer: &str,
    modbus: std::net::SocketAddr,
) -> (Vec<f64>, Vec<f64>) {
    use tokio_modbus::prelude::*;
    let mut plc = tcp::connect_slave(modbus, Slave(1)).await.unwrap();
    let (mut latency, mut overhead) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        plc.write_single_coil(0, true).await.unwrap().unwrap();
        while !plc.read_discrete_inputs(3, 1).await.unwrap().unwrap()[0] {}
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        let words = plc.read_input_registers(0, 9).await.unwrap().unwrap();
        let seq = ((words[4] as u64) << 16) | words[5] as u64;
        plc.write_single_coil(0, false).await.unwrap().unwrap();
        plc.write_single_coil(1, true).await.unwrap().unwrap();
        while plc.read_discrete_inputs(3, 1).await.unwrap().unwrap()[0] {}
        plc.write_single_coil(1, false).await.unwrap().unwrap();
        if i >= WARMUP {
            let request = hyper::Request::get(format!("http://{api}/api/v1/inspections?limit=1"))
                .header("authorization", bearer)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let body = http.request(request).await.unwrap().into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let record = &json["inspections"][0];
            assert_eq!(record["seq"].as_u64(), Some(seq));
            latency.push(elapsed);
            overhead.push(elapsed - record["inference_time_ms"].as_f64().unwrap());
        }
    }
    (latency, overhead)
}

struct HotSwaps {
    triggers: Vec<f64>,
    failed: usize,
    activations: Vec<f64>,
}

/// Uploads the bundled model again as version 1.1.0, then swaps between it and the
/// bundled one once a second for 20 s while triggers arrive at 20 Hz.
async fn hot_swaps(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: &str,
    bearer: &str,
    inspect_body: Bytes,
) -> HotSwaps {
    let toml = std::fs::read_to_string("models/parts-classifier/model.toml").unwrap();
    let toml = toml.replace("version = \"1.0.0\"", "version = \"1.1.0\"");
    let onnx = std::fs::read("models/parts-classifier/model.onnx").unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in [("model.toml", toml.as_bytes()), ("model.onnx", onnx.as_slice())] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes).unwrap();
    }
    let boundary = "bench-boundary";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.tar\"\r\n\r\n").as_bytes(),
    );
    form.extend_from_slice(&tar.into_inner().unwrap());
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let upload = Request::post(format!("http://{addr}/api/v1/models"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("authorization", bearer)
        .body(Full::new(Bytes::from(form)))
        .unwrap();
    let response = client.request(upload).await.unwrap();
    assert_eq!(response.status(), 201, "model upload");
    let uploaded = response.into_body().collect().await.unwrap().to_bytes();
    let uploaded: serde_json::Value = serde_json::from_slice(&uploaded).unwrap();
    let new_id = uploaded["id"].as_str().unwrap().to_owned();

    let done = std::cell::Cell::new(false);
    let load = async {
        let (mut triggers, mut failed) = (Vec::new(), 0);
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(50));
        while !done.get() {
            ticker.tick().await;
            let request = Request::post(format!("http://{addr}/api/v1/inspect"))
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .header("authorization", bearer)
                .body(Full::new(inspect_body.clone()))
                .unwrap();
            let started = Instant::now();
            let response = client.request(request).await.unwrap();
            let ok = response.status() == 201;
            response.into_body().collect().await.unwrap();
            triggers.push(started.elapsed().as_secs_f64() * 1000.0);
            failed += usize::from(!ok);
        }
        (triggers, failed)
    };
    let swaps = async {
        let mut activations = Vec::new();
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.tick().await;
        for round in 0..20 {
            ticker.tick().await;
            let path = if round % 2 == 0 {
                format!("/api/v1/models/{new_id}/activate")
            } else {
                "/api/v1/models/rollback".into()
            };
            let request = Request::post(format!("http://{addr}{path}"))
                .header("authorization", bearer)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let started = Instant::now();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.into_body().collect().await.unwrap();
            activations.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        done.set(true);
        activations
    };
    let ((triggers, failed), activations) = tokio::join!(load, swaps);
    HotSwaps { triggers, failed, activations }
}

/// Each bundled model with tract on one thread, on an image of its input size (so no
/// resize, as `tools/bench_onnxruntime.py` measures onnxruntime): 20 warm-up runs, then
/// `ITERATIONS` timed runs.
fn tract_per_model() -> Vec<(String, Vec<f64>)> {
    let mut folders: Vec<_> = std::fs::read_dir("models").unwrap().map(|e| e.unwrap().path()).collect();
    folders.sort();
    let mut figures = Vec::new();
    // Model folders only: the PatchCore backbone has no model.toml.
    for folder in folders.into_iter().filter(|f| f.join("model.toml").exists()) {
        let model = stationd::inference::Model::load(&folder).unwrap();
        model.time_runs(WARMUP).unwrap();
        let samples = model.time_runs(ITERATIONS).unwrap();
        figures.push((folder.file_name().unwrap().to_string_lossy().into_owned(), samples));
    }
    figures
}
