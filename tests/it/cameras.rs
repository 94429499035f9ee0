//! The camera API: the list with state and counters, a fresh JPEG frame, an MJPEG stream
//! that ends when the daemon stops, and the errors around them.

use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::json;

use crate::support::{Daemon, blind_camera_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_frame_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;

    let (status, frame) = daemon.get("/api/v1/cameras/cam0/frame").await;
    assert_eq!(status, StatusCode::OK);
    let image = image::load_from_memory_with_format(&frame, image::ImageFormat::Jpeg).expect("a JPEG");
    assert!(image.width() > 0);

    let (status, list) = daemon.get_json("/api/v1/cameras").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        json!({"status": "ok", "msg": [{
            "id": "cam0", "backend": "sim", "source": "examples/parts", "width": null, "height": null,
            "fps": null, "format": null, "state": "ready", "error": null, "stations": ["default"],
            "captures": 1, "capture_failures": 0
        }]})
    );
    let (status, one) = daemon.get_json("/api/v1/cameras/cam0").await;
    assert_eq!((status, &one["msg"]["id"]), (StatusCode::OK, &json!("cam0")));

    for (path, status) in [
        ("/api/v1/cameras/cam9", StatusCode::NOT_FOUND),
        ("/api/v1/cameras/cam9/frame", StatusCode::NOT_FOUND),
        ("/api/v1/cameras/cam0/stream?fps=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/cameras/cam0/stream?fps=100", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/cameras/cam0/stream?rate=5", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (got, body) = daemon.get_json(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_camera_is_listed_as_failed_and_its_frame_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_settled(blind_camera_config(dir.path())).await;
    let (_, list) = daemon.get_json("/api/v1/cameras").await;
    assert_eq!(list["msg"][0]["state"], "failed", "{list}");
    assert!(list["msg"][0]["error"].as_str().unwrap().contains("no images"), "{list}");
    let (status, body) = daemon.get_json("/api/v1/cameras/cam0/frame").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = daemon.get_json("/api/v1/cameras/cam0/stream").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(daemon.shutdown().await, "a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods, reason = "the test shuts the daemon down while it reads the stream")]
async fn an_mjpeg_stream_delivers_frames_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let response = daemon.get_streaming("/api/v1/cameras/cam0/stream?fps=15").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "multipart/x-mixed-replace; boundary=stationd-frame");
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut parts = 0;
    while parts < 3 {
        let frame = body.frame().await.expect("the stream goes on").unwrap();
        received.extend_from_slice(frame.data_ref().unwrap());
        parts = received.windows(16).filter(|w| w == b"--stationd-frame").count();
    }
    let first = &received[received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert!(first.starts_with(&[0xFF, 0xD8]), "each part is a JPEG");

    // Shutdown ends the stream instead of waiting for the client to leave.
    let stopped = tokio::spawn(daemon.shutdown());
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    assert!(stopped.await.unwrap(), "a clean shutdown with a stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_settings_change_at_run_time_where_the_camera_allows() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let put = |body: serde_json::Value| daemon.json(hyper::Method::PUT, "/api/v1/cameras/cam0/config", Some(body));
    let (status, config) = daemon.get_json("/api/v1/cameras/cam0/config").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["msg"], json!({"width": null, "height": null, "fps": null, "exposure": null}));

    let (status, config) = put(json!({"resolution": "64x48"})).await;
    assert_eq!((status, &config["msg"]["width"]), (StatusCode::OK, &json!(64)), "{config}");
    let (_, frame) = daemon.get("/api/v1/cameras/cam0/frame").await;
    let image = image::load_from_memory(&frame).unwrap();
    assert_eq!((image.width(), image.height()), (64, 48));

    for (body, detail) in [
        (json!({"fps": 10}), "camera cam0: fps cannot be changed on this camera"),
        (json!({"exposure": 300}), "camera cam0: exposure cannot be changed on this camera"),
        (json!({"width": 64}), "camera cam0: width and height go together, each 16..=8192"),
        (json!({"resolution": "big"}), "resolution \"big\" is not WIDTHxHEIGHT"),
        (json!({}), "nothing to change: give resolution, width and height, fps or exposure"),
    ] {
        let (status, answer) = put(body.clone()).await;
        assert_eq!((status, answer["detail"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(detail)), "{body}");
    }
    let (status, _) = put(json!({"gain": 2})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(daemon.shutdown().await, "a clean stop");
}
