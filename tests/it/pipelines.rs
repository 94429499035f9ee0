//! Continuous pipelines end to end: the sim camera watched at 30 fps, anomalies raised
//! into a folder and a webhook (a server in this test), live metrics, the rules around
//! running pipelines, validation, and a running pipeline resuming after a restart.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{Daemon, test_config};

/// An HTTP server on 127.0.0.1:0 that hands every request body to the test, and answers
/// the first `fail_first` requests with 500.
#[allow(clippy::disallowed_methods, reason = "the test's webhook receiver, not a daemon service")]
async fn webhook_receiver(fail_first: usize) -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/anomaly", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let served = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (tx, served) = (tx.clone(), served.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (tx, served) = (tx.clone(), served.clone());
                    async move {
                        assert_eq!(request.headers()["x-line"], "2");
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap());
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        if served.fetch_add(1, Ordering::SeqCst) < fail_first {
                            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_raises_anomalies_into_its_sinks_and_reports_live_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("anomalies");
    let daemon = Daemon::start(&dir.path().join("state")).await;
    let (url, mut hooks) = webhook_receiver(0).await;

    let (status, pipeline) = daemon.json(Method::POST,
        "/api/v1/pipelines",
        Some(json!({
            "name": "flange watch",
            "source_id": "cam0",
            "config": {"fps": 30, "confirm_frames": 1, "confirm_window": 1},
            "sinks": [
                {"type": "filesystem", "name": "disk", "config": {"output_dir": out, "save_images": true}},
                {"type": "webhook", "name": "andon", "config": {"url": url, "method": "POST", "headers": {"X-Line": "2"}}}
            ]
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{pipeline}");
    assert_eq!((pipeline["station_id"].as_str(), pipeline["active"].as_bool()), (Some("default"), Some(false)));
    let id = pipeline["id"].as_str().unwrap().to_owned();

    let (status, run) = daemon.json(Method::POST, "/api/v1/active-pipelines", Some(json!({"pipeline_id": id}))).await;
    assert_eq!((status, run["status"].as_str()), (StatusCode::CREATED, Some("starting")), "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();

    // The sim camera's second frame is a scratch: an anomaly, delivered by webhook after
    // its files were written (the sinks run in order).
    let event = hooks.recv().await.unwrap();
    assert_eq!((event["pipeline_id"].as_str(), event["label"].as_str()), (Some(id.as_str()), Some("scratch")));
    assert!(event["anomaly_score"].as_f64().unwrap() >= event["threshold"].as_f64().unwrap(), "{event}");
    let event_id = event["id"].as_str().unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{event_id}.json"))).unwrap()).unwrap();
    assert_eq!(written, event);
    let jpeg = std::fs::read(out.join(format!("{event_id}.jpg"))).unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]));

    let (_, runs) = daemon.json(Method::GET, "/api/v1/active-pipelines", None).await;
    let metrics = &runs[0]["metrics"];
    assert_eq!(runs[0]["pipeline_id"], id.as_str());
    assert!(metrics["frames_processed"].as_u64().unwrap() >= 2, "{runs}");
    assert!(metrics["anomalies_detected"].as_u64().unwrap() >= 1, "{runs}");
    assert!(metrics["avg_inference_time_ms"].as_f64().unwrap() > 0.0, "{runs}");

    // A running pipeline cannot be changed or deleted, nor started twice.
    let path = format!("/api/v1/pipelines/{id}");
    let (status, _) = daemon.json(Method::PATCH, &path, Some(json!({"name": "x"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = daemon.json(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = daemon.json(Method::POST, "/api/v1/active-pipelines", Some(json!({"pipeline_id": id}))).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, _) = daemon.json(Method::DELETE, &format!("/api/v1/active-pipelines/{run_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, runs) = daemon.json(Method::GET, "/api/v1/active-pipelines", None).await;
    assert_eq!(runs, json!([]));
    let (_, events) = daemon.json(Method::GET, &format!("/api/v1/pipelines/{id}/events"), None).await;
    assert!(events.as_array().unwrap().iter().any(|e| e["id"] == event_id), "{events}");

    let (status, patched) = daemon.json(Method::PATCH, &path, Some(json!({"config": {"fps": 2}}))).await;
    assert_eq!((status, patched["config"]["fps"].as_f64()), (StatusCode::OK, Some(2.0)), "{patched}");
    let (status, _) = daemon.json(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = daemon.json(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let base = json!({"name": "p", "source_id": "cam0"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (json!({"name": "p"}), "\"name\" and \"source_id\" are required"),
        (with(json!({"source_id": "cam9"})), "source_id: no camera \"cam9\""),
        (with(json!({"config": {"fps": 0}})), "config.fps: above 0 and at most 30"),
        (
            with(json!({"config": {"confirm_frames": 4, "confirm_window": 3}})),
            "config: 1 <= confirm_frames <= confirm_window <= 100 (got 4 of 3)",
        ),
        (
            with(json!({"sinks": [{"type": "webhook", "name": "w", "config": {"url": "https://mes/hook"}}]})),
            "sink \"w\": only http:// webhooks are supported (no TLS client yet)",
        ),
        (
            with(json!({"sinks": [{"type": "mqtt", "name": "m"}]})),
            "sink \"m\": MQTT is not enabled on this station ([mqtt])",
        ),
        (
            with(json!({"sinks": [{"type": "kafka", "name": "k"}]})),
            "sink type \"kafka\" is not one of \"mqtt\", \"webhook\", \"filesystem\"",
        ),
        (
            with(json!({"sinks": [{"type": "filesystem", "name": "f", "config": {"output_dir": "rel"}}]})),
            "sink \"f\": output_dir must be an absolute path",
        ),
    ];
    for (body, detail) in cases {
        let (status, answer) = daemon.json(Method::POST, "/api/v1/pipelines", Some(body.clone())).await;
        assert_eq!((status, answer["detail"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(detail)), "{body}");
    }
    let (status, answer) = daemon
        .json(
            Method::POST,
            "/api/v1/active-pipelines",
            Some(json!({"pipeline_id": "00000000-0000-0000-0000-000000000001"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (status, _) = daemon.json(Method::DELETE, "/api/v1/active-pipelines/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(test_config(dir.path())).await;
    let (_, pipeline) = daemon
        .json(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"name": "resume", "source_id": "cam0", "config": {"fps": 1}})),
        )
        .await;
    let id = pipeline["id"].as_str().unwrap().to_owned();
    let (status, _) = daemon.json(Method::POST, "/api/v1/active-pipelines", Some(json!({"pipeline_id": id}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(daemon.shutdown().await);

    let daemon = Daemon::start_with(test_config(dir.path())).await;
    let (_, runs) = daemon.json(Method::GET, "/api/v1/active-pipelines", None).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["pipeline_id"], id.as_str());
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_delivery_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (url, mut hooks) = webhook_receiver(1).await;
    let (_, pipeline) = daemon
        .json(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({
                "name": "retry", "source_id": "cam0", "config": {"fps": 30},
                "sinks": [{"type": "webhook", "name": "andon", "config": {"url": url, "headers": {"X-Line": "2"}}}]
            })),
        )
        .await;
    let (status, _) =
        daemon.json(Method::POST, "/api/v1/active-pipelines", Some(json!({"pipeline_id": pipeline["id"]}))).await;
    assert_eq!(status, StatusCode::CREATED);
    // The first delivery is answered 500; the same event comes again after the backoff.
    let first = hooks.recv().await.unwrap();
    let again = loop {
        let next = hooks.recv().await.unwrap();
        if next["id"] == first["id"] {
            break next;
        }
    };
    assert_eq!(again, first);
    assert!(daemon.shutdown().await, "a clean stop");
}
