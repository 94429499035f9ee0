//! Camera drift through the daemon: a reference learnt from inspection frames, a dimmed
//! lamp reported as high drift with the `drift:cam0` alert, the reference kept across a
//! restart, and a reset.

use hyper::{Method, StatusCode};
use stationd::bus::Notification;
use stationd::config::{CameraBackend, CameraConfig, Config};
use stationd::core::drift::DriftConfig;

use crate::support::Daemon;

/// The sim camera's only frame: a textured grey part at `level`, written in place (the
/// camera reads the file at each capture).
fn show(folder: &std::path::Path, level: u8) {
    let image = image::RgbImage::from_fn(96, 96, |x, y| {
        let v = if (x / 8 + y / 8) % 2 == 0 { level.saturating_add(20) } else { level.saturating_sub(20) };
        image::Rgb([v, v, v])
    });
    let tmp = folder.join("frame.tmp");
    image.save_with_format(&tmp, image::ImageFormat::Png).unwrap();
    std::fs::rename(&tmp, folder.join("frame.png")).unwrap();
}

fn config(state: &std::path::Path, frames: &std::path::Path) -> Config {
    let mut config = crate::support::test_config(state);
    config.cameras.insert("cam0".into(), CameraConfig { backend: CameraBackend::Sim { folder: frames.to_owned() } });
    config.drift = Some(DriftConfig { reference_frames: 5, window_frames: 3, medium_sigma: 3.0, high_sigma: 6.0 });
    config
}

async fn inspect(daemon: &Daemon, times: usize) {
    for _ in 0..times {
        let (status, _, body) = daemon.request(Method::POST, "/api/v1/inspect/camera", None, Vec::new()).await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dimmed_lamp_is_reported_and_alerted() {
    let (state, frames) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    show(frames.path(), 120);
    let daemon = Daemon::start_with(config(state.path(), frames.path())).await;

    let (status, report) = daemon.get_json("/api/v1/drift/cam0").await;
    assert_eq!((status, report["state"].as_str()), (StatusCode::OK, Some("learning")), "{report}");
    assert_eq!(daemon.get("/api/v1/drift/nope").await.0, StatusCode::NOT_FOUND);

    // Frames reach the monitor after the inspection is answered; wait on the report.
    let mut reports = daemon_drift(&daemon);
    inspect(&daemon, 5).await;
    reports.wait_for(|r| r["cam0"].reference_set_at.is_some()).await.unwrap();
    inspect(&daemon, 3).await;
    reports.wait_for(|r| r["cam0"].window_frames.0 == 3).await.unwrap();
    let (_, report) = daemon.get_json("/api/v1/drift/cam0").await;
    assert_eq!((report["state"].as_str(), report["severity"].as_str()), (Some("monitoring"), Some("low")), "{report}");
    assert_eq!(report["recommendation"], "No action needed.");

    let mut alerts = daemon.app.bus.notifications.subscribe();
    show(frames.path(), 60);
    inspect(&daemon, 3).await;
    let alert = loop {
        if let Notification::Alert(alert) = alerts.recv().await.unwrap() {
            break alert;
        }
    };
    assert_eq!((alert.key.as_str(), alert.severity.as_str()), ("drift:cam0", "error"), "{alert:?}");
    assert!(alert.message.contains("brightness"), "{}", alert.message);
    let (_, report) = daemon.get_json("/api/v1/drift").await;
    let cam0 = &report["cameras"][0];
    assert_eq!((cam0["drift_detected"].as_bool(), cam0["severity"].as_str()), (Some(true), Some("high")), "{report}");
    assert_eq!(cam0["checks"]["brightness"]["drifted"], true);
    assert_eq!(cam0["checks"]["sharpness"]["drifted"], false, "{report}");
    assert!(cam0["recommendation"].as_str().unwrap().contains("lighting"), "{report}");
    assert!(daemon.shutdown().await);

    // The reference survives a restart: the dim frames are still drift, not a new normal.
    let daemon = Daemon::start_with(config(state.path(), frames.path())).await;
    let (_, report) = daemon.get_json("/api/v1/drift/cam0").await;
    assert_eq!((report["state"].as_str(), report["reference_frames"].as_u64()), (Some("collecting"), Some(5)));
    let mut reports = daemon_drift(&daemon);
    inspect(&daemon, 3).await;
    reports.wait_for(|r| r["cam0"].window_frames.0 == 3).await.unwrap();
    let (_, report) = daemon.get_json("/api/v1/drift/cam0").await;
    assert_eq!(report["severity"], "high", "{report}");

    // After a deliberate change, a new reference.
    let (status, report) = daemon.json(Method::POST, "/api/v1/drift/cam0/reference", None).await;
    assert_eq!((status, report["state"].as_str()), (StatusCode::OK, Some("learning")), "{report}");
    let (status, _) = daemon.json(Method::POST, "/api/v1/drift/nope/reference", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await);
}

fn daemon_drift(daemon: &Daemon) -> tokio::sync::watch::Receiver<stationd::drift::Reports> {
    daemon.app.drift.as_ref().expect("drift monitoring is on").watch()
}
