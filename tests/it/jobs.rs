//! Batch jobs through REST: a folder's images matched by a glob are inspected with their
//! progress, files that are not images are counted as errors, folders outside the input
//! root are refused, and a job is cancelled before or while it runs.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Daemon, sample};

pub(crate) async fn finished(daemon: &Daemon, id: &str) -> Value {
    let path = format!("/api/v1/jobs/{id}");
    let wait = async {
        loop {
            let (_, job) = daemon.get_json(&path).await;
            if ["completed", "cancelled", "failed"].contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait).await.expect("the job finishes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_is_inspected_with_progress_and_jobs_cancel() {
    let (state, batch) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shift = batch.path().join("shift_a");
    std::fs::create_dir_all(shift.join("sub")).unwrap();
    for name in ["00_ok.jpg", "01_scratch.jpg", "02_dent.jpg"] {
        std::fs::write(shift.join(name), sample(name)).unwrap();
    }
    std::fs::write(shift.join("bad.jpg"), b"not an image").unwrap();
    std::fs::write(shift.join("notes.txt"), b"shift notes").unwrap();
    std::fs::write(shift.join("sub/03_ok.jpg"), sample("03_ok.jpg")).unwrap();
    let mut config = crate::support::test_config(state.path());
    config.jobs_input_root = batch.path().to_owned();
    let daemon = Daemon::start_with(config).await;

    let create = |body: Value| daemon.json(Method::POST, "/api/v1/jobs", Some(body));
    for (input_dir, pattern, station) in [
        ("..", "*.jpg", "default"),
        ("nope", "*.jpg", "default"),
        ("shift_a", "../*.jpg", "default"),
        ("shift_a", "*.jpg", "x"),
    ] {
        let body = json!({"name": "bad", "input_dir": input_dir, "file_pattern": pattern, "station_id": station});
        let (status, body) = create(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input_dir} {pattern}: {body}");
    }

    let (status, job) = create(json!({"name": "Shift A", "input_dir": "shift_a", "file_pattern": "*.jpg"})).await;
    assert_eq!((status, job["status"].as_str()), (StatusCode::CREATED, Some("pending")), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (status, started) = daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/start"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/start"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let job = finished(&daemon, &id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!((job["total"].as_u64(), job["processed"].as_u64(), job["errors"].as_u64()), (Some(4), Some(4), Some(1)));
    let judged = ["passed", "failed", "uncertain"].iter().map(|k| job[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((judged, job["progress"].as_f64()), (3, Some(100.0)), "{job}");
    assert!(job["last_error"].as_str().unwrap().contains("bad.jpg"), "{job}");
    let (_, list) = daemon.get_json("/api/v1/inspections?limit=10").await;
    assert_eq!(list["total"], 3);
    let parts: Vec<&str> =
        list["inspections"].as_array().unwrap().iter().filter_map(|i| i["part_id"].as_str()).collect();
    assert!(parts.contains(&"shift_a/01_scratch.jpg"), "{parts:?}");
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a finished job does not cancel");

    // Cancelled before it starts.
    let (_, job) = create(json!({"name": "Later", "input_dir": "shift_a", "file_pattern": "**/*.jpg"})).await;
    let later = job["id"].as_str().unwrap().to_owned();
    let (status, job) = daemon.json(Method::POST, &format!("/api/v1/jobs/{later}/cancel"), None).await;
    assert_eq!((status, job["status"].as_str()), (StatusCode::OK, Some("cancelled")));

    // Cancelled while it runs: it stops after its current file.
    let many = batch.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..300 {
        std::fs::write(many.join(format!("{i:03}.jpg")), sample("00_ok.jpg")).unwrap();
    }
    let (_, job) = create(json!({"name": "Many", "input_dir": "many", "file_pattern": "*.jpg"})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/start"), None).await;
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);
    let job = finished(&daemon, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["processed"].as_u64().unwrap() < 300, "{job}");

    let (_, list) = daemon.get_json("/api/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(daemon.get(&format!("/api/v1/jobs/{}", uuid::Uuid::new_v4())).await.0, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await);
}
