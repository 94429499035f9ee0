//! Assembly coaching end to end: a work instruction made over REST, one unit built through
//! the coaching WebSocket with the sim camera (a vision check repeated until it matches),
//! the wrench simulator (4 tightenings under release control, one NOK reworked) and the
//! simulated GPIO chip (an input the last step waits for), then the stored unit record,
//! its metrics and QA report. Plus an e-stop that aborts a unit safely.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stationd::south::wrench::WrenchSettings;
use stationd::south::wrench::sim::SimSettings;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Daemon, start_sim, test_config};

const PATIENCE: Duration = Duration::from_secs(30);

async fn send(daemon: &Daemon, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, bytes) = daemon
        .request_as(Some(&daemon.token), method, path, Some("application/json"), body.to_string().into_bytes())
        .await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn post(daemon: &Daemon, path: &str, body: Value) -> (StatusCode, Value) {
    send(daemon, Method::POST, path, body).await
}

async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next()).await.expect("a message in time");
        match frame.expect("the socket is open").expect("a frame") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads messages until one with `status`, returning it.
async fn until<S>(socket: &mut S, status: &str) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = next_json(socket).await;
        if message["status"] == status {
            return message;
        }
        assert_ne!(message["status"], "assembly_complete", "ended early: {message}");
    }
}

async fn tool_enabled(daemon: &Daemon, enabled: bool) {
    let mut status = daemon.app.wrenches.watch("w1").expect("wrench w1");
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.tool_enabled == Some(enabled)))
        .await
        .expect("the tool changes in time")
        .expect("link alive");
}

/// An assembly with `steps` (each a step request and its step data), published.
pub async fn make_assembly(daemon: &Daemon, steps: Vec<(Value, Vec<Value>)>) -> String {
    let (status, body) = post(daemon, "/api/v1/assemblies", json!({"name": "housing", "description": "test"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["msg"]["id"].as_str().unwrap().to_owned();
    for (step, data) in steps {
        let (status, body) = post(daemon, &format!("/api/v1/assemblies/{id}/steps"), step).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let step_id = body["id"].as_i64().unwrap();
        for entry in data {
            let (status, body) = post(daemon, &format!("/api/v1/steps/{step_id}/data"), entry).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let (status, body) = post(daemon, &format!("/api/v1/assemblies/{id}/publish"), json!({"approver": "QA"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

pub async fn make_operator(daemon: &Daemon) -> i64 {
    let operator =
        json!({"first_name": "Ada", "last_name": "Lovelace", "rfid": "04A1B2", "password": "analytical-engine-1"});
    let (status, body) = post(daemon, "/api/v1/operators", operator).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["msg"]["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_one_unit_with_vision_torque_rework_and_an_input_and_stores_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.wrenches.clear();
    let daemon = Daemon::start_with(config).await;
    let gpio = daemon.app.gpio_sim.clone().unwrap();
    let (sim, _stop) = start_sim(SimSettings { first_id: 1, ..SimSettings::default() }).await;
    let mut settings = WrenchSettings::new("w1", "127.0.0.1", sim.addr().port());
    settings.station_id = Some("default".into());
    daemon.app.wrenches.connect(settings).unwrap();
    let (status, _) = post(&daemon, "/api/v1/settings/release-control", json!({"release_control_enabled": true})).await;
    assert_eq!(status, StatusCode::OK);

    let operator = make_operator(&daemon).await;
    let (status, body) = post(&daemon, "/api/v1/operators/rfid", json!({"rfid": "04A1B2"})).await;
    assert_eq!((status, body["msg"]["id"].as_i64()), (StatusCode::OK, Some(operator)), "badge login");
    let login = json!({"first_name": "ada", "last_name": "LOVELACE", "password": "analytical-engine-1"});
    assert_eq!(post(&daemon, "/api/v1/operators/login", login).await.0, StatusCode::OK);
    let wrong = json!({"first_name": "Ada", "last_name": "Lovelace", "password": "difference-engine"});
    assert_eq!(post(&daemon, "/api/v1/operators/login", wrong).await.0, StatusCode::UNAUTHORIZED);

    let assembly = make_assembly(
        &daemon,
        vec![
            (
                json!({"name": "place the housing", "minimum_predict": 0.5, "benchmark": 60}),
                vec![json!({"data_type": "ML", "expected_class": "dent", "mode": "continuous"})],
            ),
            (
                json!({"name": "tighten 4 screws", "timeout": 120}),
                vec![json!({"data_type": "torque-only", "wrench_id": "w1", "program_nr": 5, "count": 4,
                            "nok_policy": "rework", "max_nok": 2})],
            ),
            (
                json!({"name": "close the clamp"}),
                vec![json!({"data_type": "input", "line": "part_present", "level": true})],
            ),
        ],
    )
    .await;
    let (status, body) =
        send(&daemon, Method::PUT, &format!("/api/v1/assemblies/{assembly}"), json!({"notes": "x"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a published revision is frozen: {body}");

    let url = format!("ws://{}/api/v1/coaching/ws?access_token={}", daemon.addr, daemon.token);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_json(&mut socket).await["msg"]["state"], "idle");
    for bad in [
        json!({}),
        json!({"start": {"assembly_id": assembly, "operator_id": operator, "serial": "x"}, "interrupt": {}}),
    ] {
        socket.send(Message::Text(bad.to_string().into())).await.unwrap();
        let answer = next_json(&mut socket).await;
        assert_eq!(answer, json!({"status": "error", "msg": "send exactly one of start and interrupt"}));
    }
    let start = json!({"start": {"assembly_id": assembly, "operator_id": operator, "serial_number": "SN-0001"}});
    socket.send(Message::Text(start.to_string().into())).await.unwrap();

    // Vision: the sim camera shows ok, scratch, then dent; the step waits for dent.
    let matched = loop {
        let prediction = until(&mut socket, "prediction").await;
        if prediction["msg"]["matched"] == true {
            break prediction;
        }
        assert_ne!(prediction["msg"]["label"], "dent", "a dent at this confidence matches: {prediction}");
    };
    assert_eq!(matched["msg"]["label"], "dent");
    let advance = until(&mut socket, "step_advance").await;
    assert_eq!(
        (advance["msg"]["step_index"].as_u64(), advance["msg"]["name"].as_str()),
        (Some(1), Some("tighten 4 screws"))
    );

    // Torque under release control: the tool is enabled for this step only.
    tool_enabled(&daemon, true).await;
    assert_eq!(sim.pset(), 5, "the step's program was selected");
    for ok in [true, false, true, true, true] {
        sim.tighten(ok).expect("the tool is enabled");
        let tightening = until(&mut socket, "tightening").await;
        assert_eq!((tightening["msg"]["ok"] == ok, tightening["msg"]["counted"] == ok), (true, true), "{tightening}");
    }
    let done = until(&mut socket, "step_complete").await;
    assert_eq!(done["msg"]["step_index"], 1);
    tool_enabled(&daemon, false).await;
    assert!(sim.tighten(true).is_none(), "the tool is disabled after its step");

    // The input: read at the step's start (inactive), then its edge.
    let advance = until(&mut socket, "step_advance").await;
    assert_eq!(advance["msg"]["step_index"], 2);
    assert_eq!(until(&mut socket, "input").await["msg"]["active"], false);
    gpio.drive("part_present", true).unwrap();
    assert_eq!(until(&mut socket, "input").await["msg"]["active"], true);
    let complete = until(&mut socket, "assembly_complete").await;
    let record_id = complete["msg"]["assembly_record_id"].as_str().unwrap().to_owned();
    assert_eq!(complete["msg"]["reason"], "completed", "{complete}");

    // The stored record joins everything.
    let (status, record) = daemon.get_json(&format!("/api/v1/assembly-records/{record_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let record = &record["msg"];
    assert_eq!((record["outcome"].as_str(), record["serial"].as_str()), (Some("completed"), Some("SN-0001")));
    assert_eq!(record["operator_name"], "Ada Lovelace");
    let steps = record["steps"].as_array().unwrap();
    assert_eq!(steps.iter().map(|s| s["status"].as_str().unwrap()).collect::<Vec<_>>(), ["complete"; 3]);
    assert!(steps[0]["predictions"].as_u64().unwrap() >= 2, "inspected until it matched: {}", steps[0]);
    assert_eq!((steps[1]["tightenings_ok"].as_u64(), steps[1]["tightenings_nok"].as_u64()), (Some(4), Some(1)));
    assert_eq!(record["tightening_seqs"].as_array().unwrap().len(), 5);
    for id in record["inspection_ids"].as_array().unwrap() {
        let (status, inspection) = daemon.get_json(&format!("/api/v1/inspections/{}", id.as_str().unwrap())).await;
        assert_eq!(
            (status, inspection["part_id"].as_str()),
            (StatusCode::OK, Some("SN-0001")),
            "tagged with the serial"
        );
    }
    let kinds: Vec<&str> = record["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"assembly_complete"));

    let (_, metrics) = daemon.get_json(&format!("/api/v1/assembly-records/{record_id}/metrics")).await;
    assert_eq!(
        (metrics["msg"]["steps_completed"].as_u64(), metrics["msg"]["tightenings_nok"].as_u64()),
        (Some(3), Some(1))
    );
    let (_, report) = daemon.get_json(&format!("/api/v1/assembly-records/{record_id}/qa-report")).await;
    assert_eq!(report["msg"]["verdict"], "PASS");
    assert_eq!(report["msg"]["tightenings"].as_array().unwrap().len(), 5);
    let (status, html) = daemon.get(&format!("/api/v1/assembly-records/{record_id}/qa-report.html")).await;
    let html = String::from_utf8(html.to_vec()).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("SN-0001") && html.contains("tighten 4 screws") && html.contains("PASS"), "{html}");
    let (_, recent) = daemon.get_json(&format!("/api/v1/assembly-records/recent?operator_id={operator}")).await;
    assert_eq!(recent["msg"][0]["id"], record_id.as_str());
    let (_, state) = daemon.get_json("/api/v1/coaching").await;
    assert_eq!(
        (state["msg"]["state"].as_str(), &state["msg"]["last_record"]["outcome"]),
        (Some("idle"), &json!("completed"))
    );
    let (status, _) = send(&daemon, Method::DELETE, &format!("/api/v1/assemblies/{assembly}"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "kept for traceability");
    drop(socket);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_estop_aborts_the_unit_resets_its_outputs_and_disables_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.wrenches.clear();
    config.coaching.estop_input = Some("part_present".into());
    let daemon = Daemon::start_with(config).await;
    let gpio = daemon.app.gpio_sim.clone().unwrap();
    let (sim, _stop) = start_sim(SimSettings { first_id: 1, ..SimSettings::default() }).await;
    daemon.app.wrenches.connect(WrenchSettings::new("w1", "127.0.0.1", sim.addr().port())).unwrap();
    post(&daemon, "/api/v1/settings/release-control", json!({"release_control_enabled": true})).await;
    let operator = make_operator(&daemon).await;
    let assembly = make_assembly(
        &daemon,
        vec![
            (json!({"name": "open the fixture"}), vec![json!({"data_type": "output", "line": "amber", "level": true})]),
            (json!({"name": "tighten"}), vec![json!({"data_type": "torque", "count": 2, "nok_policy": "fail"})]),
        ],
    )
    .await;

    // Refusals first: a draft, an unknown operator, a second unit.
    let (status, body) = post(&daemon, "/api/v1/assemblies", json!({"name": "draft"})).await;
    let draft = body["msg"]["id"].as_str().unwrap().to_owned();
    assert_eq!(status, StatusCode::CREATED);
    let start =
        |assembly: &str, operator: i64| json!({"assembly_id": assembly, "operator_id": operator, "serial": "SN-2"});
    assert_eq!(post(&daemon, "/api/v1/coaching/start", start(&draft, operator)).await.0, StatusCode::CONFLICT);
    assert_eq!(post(&daemon, "/api/v1/coaching/start", start(&assembly, 999)).await.0, StatusCode::NOT_FOUND);
    let (status, body) = post(&daemon, "/api/v1/coaching/start", start(&assembly, operator)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let record_id = body["msg"]["assembly_record_id"].as_str().unwrap().to_owned();
    assert_eq!(post(&daemon, "/api/v1/coaching/start", start(&assembly, operator)).await.0, StatusCode::CONFLICT);
    assert_eq!(post(&daemon, "/api/v1/coaching/resume", json!({})).await.0, StatusCode::CONFLICT, "not paused");

    gpio.wait_output("amber", true).await;
    tool_enabled(&daemon, true).await;
    let mut coaching = daemon.app.bus.notifications.subscribe();
    sim.tighten(true).unwrap();
    // The tightening is in the unit before the e-stop comes.
    loop {
        if let stationd::bus::Notification::Coaching(status) = coaching.recv().await.unwrap()
            && status.unit.as_ref().is_some_and(|u| u.torque_done.0 == 1)
        {
            break;
        }
    }
    gpio.drive("part_present", true).unwrap();
    gpio.wait_output("amber", false).await;
    tool_enabled(&daemon, false).await;
    // Wait for the record to be closed (the coaching state returns to idle).
    loop {
        if let stationd::bus::Notification::Coaching(status) = coaching.recv().await.unwrap()
            && status.unit.is_none()
        {
            break;
        }
    }
    let (_, record) = daemon.get_json(&format!("/api/v1/assembly-records/{record_id}")).await;
    assert_eq!(
        (record["msg"]["outcome"].as_str(), record["msg"]["reason"].as_str()),
        (Some("aborted"), Some("emergency stop"))
    );
    let steps = record["msg"]["steps"].as_array().unwrap();
    assert_eq!(steps[1]["status"], "interrupted");
    assert_eq!(steps[1]["tightenings_ok"], 1, "the tightening before the e-stop is in the record");
    // While the e-stop is active no unit starts.
    let (status, body) = post(&daemon, "/api/v1/coaching/start", start(&assembly, operator)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_instructions_refuse_bad_input_and_keep_the_step_order_rules() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (_, body) = post(&daemon, "/api/v1/assemblies", json!({"name": "clamp job"})).await;
    let id = body["msg"]["id"].as_str().unwrap().to_owned();
    let mut steps = Vec::new();
    for (name, data) in [
        ("close the clamp", json!({"data_type": "OUTPUT", "line": "amber", "level": true})),
        ("look", json!({"data_type": "ml"})),
        ("open the clamp", json!({"data_type": "output", "line": "amber", "level": false})),
    ] {
        let (status, body) = post(&daemon, &format!("/api/v1/assemblies/{id}/steps"), json!({"name": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let step = body["id"].as_i64().unwrap();
        assert_eq!(post(&daemon, &format!("/api/v1/steps/{step}/data"), data).await.0, StatusCode::CREATED);
        steps.push(step);
    }
    let refused = [
        (json!({"data_type": "ocr-capture"}), "ocr-capture is not supported yet"),
        (json!({"data_type": "ml", "count": 3}), "count does not apply to data_type ml"),
        (
            json!({"data_type": "ml", "expected_items": [{"name": "bolt", "quantity": 0}]}),
            "expected_items: item 0 (\"bolt\"): quantity must be between 1 and 10000",
        ),
        (
            json!({"data_type": "ml", "expected_class": "ok", "expected_items": [{"name": "bolt", "quantity": 2}]}),
            "give expected_class or expected_items, not both",
        ),
        (
            json!({"data_type": "qa", "expected_items": [{"name": "bolt", "quantity": 2}]}),
            "expected_items does not apply to data_type qa",
        ),
        (json!({"data_type": "torque-only", "count": 2}), "a torque-only step has no vision check"),
        (json!({"data_type": "torque", "count": 0}), "count must be between 1 and 99"),
        (json!({"data_type": "input", "line": "green"}), "line: no GPIO input \"green\""),
        (json!({"data_type": "weld"}), "data_type \"weld\" is not one of"),
    ];
    for (data, detail) in refused {
        let (status, body) = post(&daemon, &format!("/api/v1/steps/{}/data", steps[1]), data.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{data}: {body}");
        assert!(body["detail"].as_str().unwrap().starts_with(detail), "{data}: {body}");
    }

    // Opening the clamp depends on closing it.
    let step_path = |step: i64| format!("/api/v1/assemblies/{id}/steps/{step}");
    let (_, moves) = daemon.get_json(&format!("{}/allowed-moves", step_path(steps[2]))).await;
    assert_eq!(moves["msg"], json!([1, 2]));
    let (_, deletable) = daemon.get_json(&format!("{}/deletable", step_path(steps[0]))).await;
    assert_eq!(deletable["msg"], json!({"deletable": false, "dependents": [2]}));
    let (status, body) = post(&daemon, &format!("{}/move", step_path(steps[2])), json!({"step_index": 0})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = send(&daemon, Method::PUT, &step_path(steps[2]), json!({"step_index": 0})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a PUT moves under the same rules: {body}");
    assert_eq!(send(&daemon, Method::DELETE, &step_path(steps[0]), json!({})).await.0, StatusCode::CONFLICT);
    assert_eq!(
        post(&daemon, &format!("{}/move", step_path(steps[1])), json!({"step_index": 0})).await.0,
        StatusCode::OK
    );
    let (_, listed) = daemon.get_json(&format!("/api/v1/assemblies/{id}/steps")).await;
    let names: Vec<&str> = listed["msg"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["look", "close the clamp", "open the clamp"]);

    let (status, _) =
        send(&daemon, Method::PUT, &format!("/api/v1/assemblies/{id}/active"), json!({"active": true})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a draft cannot be the active revision");
    assert_eq!(daemon.get_json("/api/v1/assemblies/not-a-uuid").await.0, StatusCode::NOT_FOUND);

    // Operators: password rules, names unique whatever their case.
    let weak = json!({"first_name": "Grace", "last_name": "Hopper", "password": "hopper-1234567"});
    let (status, body) = post(&daemon, "/api/v1/operators", weak).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password must not contain the operator's name"))
    );
    assert_eq!(
        post(&daemon, "/api/v1/operators", json!({"first_name": "Grace", "last_name": "Hopper"})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(&daemon, "/api/v1/operators", json!({"first_name": "grace", "last_name": "HOPPER"})).await.0,
        StatusCode::CONFLICT
    );
    let (status, body) = post(&daemon, "/api/v1/operators/validate-password", json!({"password": "short"})).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password must have at least 10 characters"))
    );
    let (_, found) = daemon.get_json("/api/v1/operators/by-name?first_name=GRACE&last_name=hopper").await;
    assert_eq!(
        (found["msg"]["first_name"].as_str(), found["msg"]["has_password"].as_bool()),
        (Some("Grace"), Some(false))
    );
    assert!(daemon.shutdown().await);
}
