//! The model registry through REST: uploads validated in tract, activation as a hot swap
//! under a 20 Hz trigger load with no failed trigger, rollback, delete, benchmark, and an
//! activation that survives a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Daemon, multipart, sample};

/// The bundled model's folder as a tar, with its version replaced by `version`.
fn bundled_as(version: &str, onnx_len: Option<usize>) -> Vec<u8> {
    let toml = std::fs::read_to_string("models/parts-classifier/model.toml").unwrap();
    let toml = toml.replace("version = \"1.0.0\"", &format!("version = {version:?}"));
    let mut onnx = std::fs::read("models/parts-classifier/model.onnx").unwrap();
    if let Some(len) = onnx_len {
        onnx.truncate(len);
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in [("parts-classifier/model.toml", toml.as_bytes()), ("parts-classifier/model.onnx", &onnx)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A model folder's two files as a tar.
pub(crate) fn folder_as_tar(dir: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for name in ["model.toml", "model.onnx"] {
        builder.append_path_with_name(format!("{dir}/{name}"), name).unwrap();
    }
    builder.into_inner().unwrap()
}

pub(crate) async fn upload_model(daemon: &Daemon, archive: &[u8]) -> (StatusCode, Value) {
    let (boundary, body) = multipart(archive, "application/x-tar", &[]);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, _, body) = daemon.request(Method::POST, "/api/v1/models", Some(&content_type), body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn active_version(daemon: &Daemon) -> String {
    let (status, models) = daemon.get_json("/api/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let active: Vec<&Value> = models.as_array().unwrap().iter().filter(|m| m["active"] == true).collect();
    assert_eq!(active.len(), 1, "{models}");
    active[0]["version"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_activate_rollback_delete_and_benchmark() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;

    let (status, models) = daemon.get_json("/api/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let bundled = &models[0];
    assert_eq!((bundled["source"].as_str(), bundled["status"].as_str()), (Some("config"), Some("active")), "{models}");
    assert_eq!(bundled["metrics"]["heldout_samples"], 180);
    let bundled_id = bundled["id"].as_str().unwrap().to_owned();

    // Refusals, each with its reason.
    let (status, body) = upload_model(&daemon, b"not an archive").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let (status, body) = upload_model(&daemon, &bundled_as("1.0.9", Some(5000))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("does not load in tract"), "{body}");
    let (status, body) = upload_model(&daemon, &bundled_as("1.0.0", None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, uploaded) = upload_model(&daemon, &bundled_as("1.1.0", None)).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    assert_eq!((uploaded["active"].as_bool(), uploaded["created_by"].as_str()), (Some(false), Some("tester")));
    let new_id = uploaded["id"].as_str().unwrap().to_owned();
    assert_eq!(active_version(&daemon).await, "1.0.0");

    let (status, bench) =
        daemon.json(Method::POST, &format!("/api/v1/models/{new_id}/benchmark"), Some(json!({"iterations": 5}))).await;
    assert_eq!(status, StatusCode::OK, "{bench}");
    assert_eq!((bench["iterations"].as_u64(), bench["runtime"].as_str()), (Some(5), Some("tract")));
    assert!(bench["p50_ms"].as_f64().unwrap() > 0.0 && bench["p99_ms"].as_f64() >= bench["p50_ms"].as_f64());
    let path = format!("/api/v1/models/{new_id}/benchmark");
    let (status, _) = daemon.json(Method::POST, &path, Some(json!({"iterations": 0}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Swaps under a 20 Hz trigger load: every trigger is answered 201.
    let stop = Arc::new(AtomicBool::new(false));
    let daemon = Arc::new(daemon);
    let load = {
        let (daemon, stop) = (daemon.clone(), stop.clone());
        #[allow(clippy::disallowed_methods, reason = "the test's trigger load")]
        tokio::spawn(async move {
            let image = sample("00_ok.jpg");
            let mut ticker = tokio::time::interval(Duration::from_millis(50));
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let (status, body) = daemon.upload(&image, "image/jpeg", &[]).await;
                answers.push((status, body["model"]["version"].as_str().unwrap_or_default().to_owned()));
            }
            answers
        })
    };
    for round in 0..3 {
        let (status, active) = daemon.json(Method::POST, &format!("/api/v1/models/{new_id}/activate"), None).await;
        assert_eq!((status, active["status"].as_str()), (StatusCode::OK, Some("active")), "{active}");
        // Once the activation is answered, every new inspection uses the new model.
        let (_, inspection) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
        assert_eq!(inspection["model"]["version"], "1.1.0", "round {round}");
        let (status, back) = daemon.json(Method::POST, "/api/v1/models/rollback", None).await;
        assert_eq!((status, back["id"].as_str()), (StatusCode::OK, Some(bundled_id.as_str())), "{back}");
        let (_, inspection) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
        assert_eq!(inspection["model"]["version"], "1.0.0", "round {round}");
    }
    stop.store(true, Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failed: Vec<_> = answers.iter().filter(|(status, _)| *status != StatusCode::CREATED).collect();
    assert!(failed.is_empty(), "{} of {} triggers failed: {failed:?}", failed.len(), answers.len());
    assert!(answers.len() >= 5, "only {} triggers ran", answers.len());
    let daemon = Arc::into_inner(daemon).expect("the load task is done");

    // Activating the model that serves changes nothing.
    let (status, same) = daemon.json(Method::POST, &format!("/api/v1/models/{bundled_id}/activate"), None).await;
    assert_eq!((status, same["active"].as_bool()), (StatusCode::OK, Some(true)));

    // Delete: not the config's model, not the active one.
    let (status, _) = daemon.json(Method::DELETE, &format!("/api/v1/models/{bundled_id}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    daemon.json(Method::POST, &format!("/api/v1/models/{new_id}/activate"), None).await;
    let (status, body) = daemon.json(Method::DELETE, &format!("/api/v1/models/{new_id}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    daemon.json(Method::POST, "/api/v1/models/rollback", None).await;
    let (status, _) = daemon.json(Method::DELETE, &format!("/api/v1/models/{new_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(daemon.get(&format!("/api/v1/models/{new_id}")).await.0, StatusCode::NOT_FOUND);
    assert!(!state.path().join("models").join(&new_id).exists());
    let (status, body) = daemon.json(Method::POST, "/api/v1/models/rollback", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (_, audit) = daemon.get_json("/api/v1/audit").await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["model_uploaded", "model_activated", "model_rolled_back", "model_deleted"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    assert!(daemon.shutdown().await);
}

/// An activation survives a restart; and a station whose configured model does not load
/// gets going again by activating a good one, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_survives_restart_and_repairs_a_broken_start() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (status, uploaded) = upload_model(&daemon, &bundled_as("2.0.0", None)).await;
    assert_eq!(status, StatusCode::CREATED, "{uploaded}");
    let id = uploaded["id"].as_str().unwrap().to_owned();
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/models/{id}/activate"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(daemon.shutdown().await);

    let daemon = Daemon::start(state.path()).await;
    assert_eq!(active_version(&daemon).await, "2.0.0");
    let (_, inspection) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(inspection["model"]["version"], "2.0.0");
    assert!(daemon.shutdown().await);

    // A config that names a model new to the registry makes it active; this one is broken.
    let broken = tempfile::tempdir().unwrap();
    let model_dir = broken.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    let toml = std::fs::read_to_string("models/parts-classifier/model.toml").unwrap();
    std::fs::write(model_dir.join("model.toml"), toml.replace("version = \"1.0.0\"", "version = \"3.0.0\"")).unwrap();
    std::fs::write(model_dir.join("model.onnx"), b"garbage").unwrap();
    let mut config = crate::support::test_config(state.path());
    config.inference.model_dir = model_dir;
    let daemon = Daemon::start_settled(config).await;
    let (status, ready) = daemon.get_json("/api/v1/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (status, body) = daemon.json(Method::POST, &format!("/api/v1/models/{id}/activate"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    daemon.app.wait_ready().await.expect("ready once a model serves");
    let (status, inspection) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!((status, inspection["model"]["version"].as_str()), (StatusCode::CREATED, Some("2.0.0")));
    assert!(daemon.shutdown().await);
}

/// The bundled detector goes through the registry and judges trays: debris is a defect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_detector_serves_after_activation() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (status, uploaded) = upload_model(&daemon, &folder_as_tar("models/kit-detector")).await;
    assert_eq!((status, uploaded["task"].as_str()), (StatusCode::CREATED, Some("detection")), "{uploaded}");
    let id = uploaded["id"].as_str().unwrap();
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/models/{id}/activate"), None).await;
    assert_eq!(status, StatusCode::OK);

    let mut files: Vec<_> =
        std::fs::read_dir("models/kit-detector/heldout").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (mut judged, mut failed_with_debris) = (0, 0);
    for file in files.iter().take(20) {
        let (status, record) = daemon.upload(&std::fs::read(file).unwrap(), "image/jpeg", &[]).await;
        assert_eq!(status, StatusCode::CREATED, "{record}");
        assert_eq!(record["model"]["name"], "kit-detector");
        let detections = record["detections"].as_array().unwrap();
        // Every object is listed; only debris may count as a defect, and a strong one fails the part.
        assert_eq!(record["objects_found"].as_u64(), Some(detections.len() as u64));
        assert!(detections.iter().all(|d| d["defect"] == false || d["class_name"] == "debris"), "{record}");
        let debris = detections.iter().filter(|d| d["class_name"] == "debris");
        let strongest = debris.filter_map(|d| d["confidence"].as_f64()).fold(0.0, f64::max);
        let expected = if strongest >= 0.6 {
            "fail"
        } else if strongest >= 0.35 {
            "uncertain"
        } else {
            "pass"
        };
        assert_eq!(record["decision"], expected, "{record}");
        let has_debris = !file.to_string_lossy().contains("debris0");
        failed_with_debris += usize::from(has_debris && record["decision"] == "fail");
        judged += usize::from(has_debris);
    }
    assert!(failed_with_debris * 10 >= judged * 8, "{failed_with_debris} of {judged} trays with debris failed");
    assert!(daemon.shutdown().await);
}
