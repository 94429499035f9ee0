//! REST end to end: upload → decision → list → statistics → CSV, the error paths, and
//! counters that survive a restart.

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Daemon, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_decide_list_statistics_csv() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;

    let (status, health) = daemon.get_json("/api/v1/health").await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("healthy")));
    let (status, ready) = daemon.get_json("/api/v1/ready").await;
    assert_eq!((status, ready["status"].as_str()), (StatusCode::OK, Some("ready")));

    // A scratched flange as JPEG fails; a good one as PNG passes.
    let scratched = sample("01_scratch.jpg");
    let (status, failed) = daemon.upload(&scratched, "image/jpeg", &[("part_id", "SN-0001")]).await;
    assert_eq!(status, StatusCode::CREATED, "{failed}");
    assert_eq!(failed["decision"], "fail");
    assert_eq!(failed["label"], "scratch");
    assert_eq!(failed["station_id"], "default");
    assert_eq!(failed["part_id"], "SN-0001");
    assert!(failed["confidence"].as_f64().unwrap() > 0.8);
    assert!(failed["total_time_ms"].as_f64().unwrap() >= failed["inference_time_ms"].as_f64().unwrap());
    assert_eq!(failed["detections"], Value::Array(vec![]));

    let good = image::load_from_memory(&sample("00_ok.jpg")).unwrap();
    let mut png = Vec::new();
    good.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let (status, passed) = daemon.upload(&png, "image/png", &[("station_id", "default")]).await;
    assert_eq!((status, passed["decision"].as_str()), (StatusCode::CREATED, Some("pass")), "{passed}");

    // The sim camera's first frame is 00_ok.jpg.
    let (status, _, body) =
        daemon.request(Method::POST, "/api/v1/inspect/camera?part_id=SN-0003", None, Vec::new()).await;
    let camera: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, camera["decision"].as_str(), camera["source"].as_str()),
        (StatusCode::CREATED, Some("pass"), Some("camera"))
    );

    // Read back: by id, the stored image byte for byte, filtered lists.
    let id = failed["id"].as_str().unwrap();
    let (status, record) = daemon.get_json(&format!("/api/v1/inspections/{id}")).await;
    assert_eq!((status, &record["decision"]), (StatusCode::OK, &failed["decision"]));
    let (status, image) = daemon.get(failed["image_url"].as_str().unwrap()).await;
    assert_eq!((status, image.as_ref()), (StatusCode::OK, scratched.as_slice()));
    let (_, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!(list["total"], 3);
    let seqs: Vec<i64> = list["inspections"].as_array().unwrap().iter().map(|i| i["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    let (_, fails) = daemon.get_json("/api/v1/inspections?decision=fail&limit=10").await;
    assert_eq!((fails["total"].as_u64(), fails["inspections"][0]["id"].as_str()), (Some(1), Some(id)));
    let (_, page) = daemon.get_json("/api/v1/inspections?limit=1&offset=1").await;
    assert_eq!(page["inspections"].as_array().unwrap().len(), 1);

    let (status, stats) = daemon.get_json("/api/v1/statistics?hours=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (stats["total_inspections"].as_u64(), stats["passed"].as_u64(), stats["failed"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    assert!((stats["pass_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-3);
    assert_eq!(stats["defect_breakdown"]["scratch"], 1);
    let (_, trends) = daemon.get_json("/api/v1/statistics/trends?hours=2&interval=hour").await;
    assert_eq!(trends["total"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 3);
    assert_eq!(trends["labels"].as_array().unwrap().len(), trends["passed"].as_array().unwrap().len());

    let (_, stations) = daemon.get_json("/api/v1/stations").await;
    let station = &stations["stations"][0];
    assert_eq!((station["pass_count"].as_u64(), station["fail_count"].as_u64()), (Some(2), Some(1)));

    let (status, headers, csv) = daemon.request(Method::GET, "/api/v1/inspections/export", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[hyper::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/csv"));
    let csv = String::from_utf8(csv.to_vec()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("seq,id,timestamp,station_id,part_id"));
    assert!(lines[1].contains(id) && lines[1].contains("SN-0001") && lines[1].contains(",fail,"));

    // Delete: the record and its image go.
    let (status, _, _) = daemon.request(Method::DELETE, &format!("/api/v1/inspections/{id}"), None, Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(daemon.get(&format!("/api/v1/inspections/{id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(daemon.get(failed["image_url"].as_str().unwrap()).await.0, StatusCode::NOT_FOUND);

    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_stores_nothing() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let jpeg = sample("00_ok.jpg");

    let mut oversized = jpeg.clone();
    oversized.resize(20 * 1024 * 1024 + 1, 0);
    let (status, body) = daemon.upload(&oversized, "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("20 MB"));

    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    let cases: [(&[u8], &str, StatusCode, &str); 4] = [
        (gif, "image/gif", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type"),
        (b"hello, world", "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type"),
        (&jpeg[..600], "image/jpeg", StatusCode::UNPROCESSABLE_ENTITY, "cannot be decoded"),
        (
            b"\x89PNG\r\n\x1a\n garbage after a PNG signature",
            "image/png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot be decoded",
        ),
    ];
    for (file, content_type, expected, detail) in cases {
        let (status, body) = daemon.upload(file, content_type, &[]).await;
        assert_eq!(status, expected, "{content_type}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
    }

    let (status, body) = daemon.upload(&jpeg, "image/jpeg", &[("station_id", "line-9")]).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown station \"line-9\""))
    );
    let (status, _, body) = daemon
        .request(Method::POST, "/api/v1/inspect", Some("multipart/form-data; boundary=x"), b"--x--\r\n".to_vec())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
    let (status, _, _) =
        daemon.request(Method::POST, "/api/v1/inspect", Some("application/json"), b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (path, expected) in [
        ("/api/v1/inspections?limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/inspections?limit=501", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/inspections?decision=maybe", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/inspections?colour=red", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/statistics?hours=169", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/statistics/trends?interval=week", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/inspections/00000000-0000-0000-0000-000000000000", StatusCode::NOT_FOUND),
        ("/api/v1/inspections/not-a-uuid", StatusCode::NOT_FOUND),
        ("/api/v2/anything", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = daemon.get_json(path).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }

    let (_, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!(list["total"], 0, "rejected uploads must not be stored");
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_pass_rate_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    for name in ["00_ok.jpg", "01_scratch.jpg", "03_ok.jpg", "04_ok.jpg"] {
        let (status, body) = daemon.upload(&sample(name), "image/jpeg", &[]).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, before) = daemon.get_json("/api/v1/stations").await;
    assert!(daemon.shutdown().await);

    let daemon = Daemon::start(state.path()).await;
    let (_, after) = daemon.get_json("/api/v1/stations").await;
    assert_eq!(before, after);
    assert_eq!(after["stations"][0]["pass_count"], 3);
    assert_eq!(after["stations"][0]["pass_rate_1h"], 75.0);
    assert!(daemon.shutdown().await);
}

/// A corrupt model and a camera that will not open must not take the station down: its
/// records and health stay reachable and /ready says exactly what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_model_and_missing_camera_degrade_instead_of_crashing() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(daemon.shutdown().await);

    let broken = tempfile::tempdir().unwrap();
    let model_dir = broken.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::copy("models/parts-classifier/model.toml", model_dir.join("model.toml")).unwrap();
    let onnx = std::fs::read("models/parts-classifier/model.onnx").unwrap();
    std::fs::write(model_dir.join("model.onnx"), &onnx[..onnx.len() / 2]).unwrap();
    let mut config = crate::support::blind_camera_config(broken.path());
    config.state_dir = state.path().to_owned();
    config.inference.model_dir = model_dir;

    let daemon = Daemon::start_settled(config).await;
    assert_eq!(daemon.get("/api/v1/health").await.0, StatusCode::OK);
    let (status, ready) = daemon.get_json("/api/v1/ready").await;
    assert_eq!((status, ready["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("degraded")), "{ready}");
    assert_eq!(ready["services"]["storage"]["state"], "ready");
    let model_detail = ready["services"]["inference-0"]["detail"].as_str().unwrap();
    assert!(model_detail.contains("model not loaded") && model_detail.contains("model.onnx"), "{model_detail}");
    assert!(ready["services"]["camera[cam0]"]["detail"].as_str().unwrap().contains("no images"), "{ready}");

    let (status, body) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _, _) = daemon.request(Method::POST, "/api/v1/inspect/camera", None, Vec::new()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!((status, list["total"].as_u64()), (StatusCode::OK, Some(1)), "records stay readable");
    assert!(daemon.shutdown().await);
}

/// Disk usage by kind, and a cleanup by request (the removal itself is tested in storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_usage_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(dir.path());
    config.image_retention = Some(std::time::Duration::from_secs(30 * 86_400));
    let daemon = Daemon::start_with(config).await;
    for _ in 0..2 {
        let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, usage) = daemon.get_json("/api/v1/storage").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((usage["images"]["count"].as_u64(), usage["records"]["inspections"].as_u64()), (Some(2), Some(2)));
    assert_eq!(usage["images"]["bytes"].as_u64(), Some(2 * sample("00_ok.jpg").len() as u64), "{usage}");
    assert!(usage["database_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(usage["image_retention_days"], 30);

    let cleanup = |body: &str| {
        daemon.request(Method::POST, "/api/v1/storage/cleanup", Some("application/json"), body.as_bytes().to_vec())
    };
    let (status, _, body) = cleanup(r#"{"older_than_days": 7}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        serde_json::json!({"images_removed": 0, "bytes_freed": 0})
    );
    let (status, _, _) = cleanup(r#"{"older_than_days": 0}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = cleanup(r#"{"days": 7}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(daemon.shutdown().await, "a clean stop");
}
