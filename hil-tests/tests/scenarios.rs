//! Scenarios that hold on every rig: asserted only through the public REST interface.
//! Later issues add Modbus, OPC-UA, MQTT and GPIO-loopback scenarios here.

use stationd_hil::Rig;

#[test]
fn health_and_readiness() {
    let rig = Rig::from_env();
    let health = rig.get("/api/v1/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "healthy");
    let ready = rig.get("/api/v1/ready");
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")));
}

#[test]
fn reference_part_under_the_camera_is_judged_and_recorded() {
    let rig = Rig::from_env();
    let answer = rig.request(
        "POST",
        &format!("/api/v1/inspect/camera?station_id={}&part_id=HIL-REF", rig.station_id),
        None,
        &[],
    );
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
    let record = answer.json();
    assert_eq!(record["decision"], rig.reference_part_decision.as_str());
    let stored = rig.get(&format!("/api/v1/inspections/{}", record["id"].as_str().unwrap()));
    assert_eq!((stored.status, &stored.json()["part_id"]), (200, &serde_json::json!("HIL-REF")));
    let image = rig.get(record["image_url"].as_str().unwrap());
    assert_eq!(image.status, 200);
    assert!(image.body.starts_with(&[0xff, 0xd8]), "camera frames are stored as JPEG");
}

#[test]
fn uploaded_defect_fails_and_bad_upload_is_refused() {
    let rig = Rig::from_env();
    let answer = rig.upload(&Rig::example("01_scratch.jpg"), "image/jpeg");
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["decision"], "fail");
    let refused = rig.upload(b"GIF89a", "image/gif");
    assert_eq!(refused.status, 415);
    let stats = rig.get(&format!("/api/v1/statistics?hours=1&station_id={}", rig.station_id));
    assert!(stats.json()["failed"].as_u64().unwrap() >= 1);
}

/// The bench's wrench: its link is up, the tool follows enable/disable and Pset selection
/// through the controller (a real one on a bench, the simulator in sim mode).
#[test]
fn wrench_link_and_tool_control() {
    let rig = Rig::from_env();
    let Some(wrench) = rig.wrench.clone() else {
        eprintln!("this rig has no wrench; skipped");
        return;
    };
    // A black box can only be watched from outside: poll its status, bounded by the
    // 20 s the reliability targets allow a wrench link to come up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let state = rig.get(&format!("/api/v1/wrenches/state?address={wrench}"));
        assert_eq!(state.status, 200, "{}", String::from_utf8_lossy(&state.body));
        if state.json()["msg"]["link_state"] == "connected" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "wrench link not up: {}", state.json());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let toggle = |body: String| {
        let answer = rig.request("POST", "/api/v1/wrenches/toggle", Some("application/json"), body.as_bytes());
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        answer.json()["msg"].clone()
    };
    let state = toggle(format!(r#"{{"action": "disable", "address": "{wrench}"}}"#));
    assert_eq!(state["tool_enabled"], false);
    let state = toggle(format!(r#"{{"action": "enable", "program_nr": {}, "address": "{wrench}"}}"#, rig.wrench_pset));
    assert_eq!(
        (state["tool_enabled"].as_bool(), state["program_nr"].as_u64()),
        (Some(true), Some(rig.wrench_pset as u64))
    );
    let refused = rig.request(
        "POST",
        "/api/v1/wrenches/toggle",
        Some("application/json"),
        format!(r#"{{"action": "enable", "program_nr": 1000, "address": "{wrench}"}}"#).as_bytes(),
    );
    assert_eq!(refused.status, 422, "program numbers stop at 999");
}

/// GPIO loopback: a trigger edge on the wired input inspects the part under the camera,
/// and the lamp for its decision lights (and no other lamp).
#[test]
fn gpio_trigger_inspects_and_lights_the_decision_lamp() {
    let rig = Rig::from_env();
    if rig.gpio.is_none() {
        eprintln!("this rig has no GPIO loopback wiring; skipped");
        return;
    }
    let before = rig.get(&format!("/api/v1/inspections?station_id={}&limit=1", rig.station_id)).json();
    let before_total = before["total"].as_u64().unwrap();
    rig.press_trigger();
    // Watched from outside: poll, bounded by 5 s (a cycle takes milliseconds).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let record = loop {
        let list = rig.get(&format!("/api/v1/inspections?station_id={}&limit=1", rig.station_id)).json();
        if list["total"].as_u64().unwrap() > before_total {
            break list["inspections"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the trigger made no inspection");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(record["source"], "camera", "{record}");
    let decision = record["decision"].as_str().unwrap().to_owned();
    let lit = loop {
        let lit: Vec<String> =
            ["pass", "fail", "uncertain"].iter().filter(|d| rig.lamp(d)).map(|d| d.to_string()).collect();
        if lit == [decision.clone()] || std::time::Instant::now() >= deadline {
            break lit;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(lit, [decision], "exactly the decision's lamp is lit");
}

/// Assembly coaching through REST only: an operator, a one-step work instruction with a QA
/// confirmation, one unit built and its record stored. Names are unique per run, because a
/// bench keeps its database.
#[test]
fn a_unit_is_coached_through_a_qa_step_and_recorded() {
    let rig = Rig::from_env();
    let post = |path: &str, body: serde_json::Value| {
        let answer = rig.request("POST", path, Some("application/json"), body.to_string().as_bytes());
        let json = answer.json();
        (answer.status, json)
    };
    let run = format!("{}-{}", std::process::id(), std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis());
    let (status, operator) = post("/api/v1/operators", serde_json::json!({"first_name": "HIL", "last_name": run}));
    assert_eq!(status, 201, "{operator}");
    let (status, assembly) = post("/api/v1/assemblies", serde_json::json!({"name": format!("HIL {run}")}));
    assert_eq!(status, 201, "{assembly}");
    let assembly_id = assembly["msg"]["id"].as_str().unwrap();
    let (status, step) =
        post(&format!("/api/v1/assemblies/{assembly_id}/steps"), serde_json::json!({"name": "confirm"}));
    assert_eq!(status, 201, "{step}");
    let step_data = serde_json::json!({"data_type": "qa", "prompt": "HIL check"});
    assert_eq!(post(&format!("/api/v1/steps/{}/data", step["id"]), step_data).0, 201);
    assert_eq!(post(&format!("/api/v1/assemblies/{assembly_id}/publish"), serde_json::json!({})).0, 200);

    let serial = format!("HIL-{run}");
    let start = serde_json::json!({"assembly_id": assembly_id, "operator_id": operator["msg"]["id"], "serial": serial});
    let (status, started) = post("/api/v1/coaching/start", start);
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["msg"]["step_name"], "confirm");
    let (status, answered) = post("/api/v1/coaching/qa", serde_json::json!({"passed": true}));
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["msg"]["state"], "idle");
    let record_id = answered["msg"]["last_record"]["assembly_record_id"].as_str().unwrap();
    let record = rig.get(&format!("/api/v1/assembly-records/{record_id}")).json();
    assert_eq!(
        (record["msg"]["outcome"].as_str(), record["msg"]["serial"].as_str()),
        (Some("completed"), Some(serial.as_str()))
    );
}

/// The model that serves is in the registry and runs on this PC's CPU (tract's latency on
/// the rig's own hardware is printed); every camera has a drift report.
#[test]
fn the_active_model_benchmarks_on_this_pc_and_cameras_report_drift() {
    let rig = Rig::from_env();
    let models = rig.get("/api/v1/models");
    assert_eq!(models.status, 200);
    let models = models.json();
    let active: Vec<&serde_json::Value> = models.as_array().unwrap().iter().filter(|m| m["active"] == true).collect();
    assert_eq!(active.len(), 1, "exactly one model serves: {models}");
    let id = active[0]["id"].as_str().unwrap();
    let bench = rig.request(
        "POST",
        &format!("/api/v1/models/{id}/benchmark"),
        Some("application/json"),
        br#"{"iterations": 20}"#,
    );
    assert_eq!(bench.status, 200, "{}", String::from_utf8_lossy(&bench.body));
    let bench = bench.json();
    assert!(bench["p50_ms"].as_f64().unwrap() > 0.0);
    eprintln!("{} {} with tract on this PC: {bench}", active[0]["name"], active[0]["version"]);

    let drift = rig.get("/api/v1/drift");
    assert!(drift.status == 200 || drift.status == 503, "drift answers or says it is off");
    if drift.status == 200 {
        for camera in drift.json()["cameras"].as_array().unwrap() {
            assert!(["low", "medium", "high"].contains(&camera["severity"].as_str().unwrap()), "{camera}");
        }
    }
}
