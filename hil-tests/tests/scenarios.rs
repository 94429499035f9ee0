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
