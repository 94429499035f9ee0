//! Alert rules end to end: a run of failed parts raises the pass-rate alert at once, it is
//! listed and filtered over REST, acknowledged by a named user, and announced on the bus
//! (from which MQTT and the WebSocket send it).

use std::time::Duration;

use hyper::{Method, StatusCode};
use stationd::bus::Notification;

use crate::support::{Daemon, sample, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_parts_raise_the_pass_rate_alert_which_is_listed_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.alerts.rules.pass_rate_min_inspections = 3;
    let daemon = Daemon::start_with(config).await;
    let mut bus = daemon.app.bus.notifications.subscribe();

    for _ in 0..3 {
        let (status, _) = daemon.upload(&sample("01_scratch.jpg"), "image/jpeg", &[]).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let alert = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Notification::Alert(alert)) = bus.recv().await {
                return alert;
            }
        }
    })
    .await
    .expect("the alert follows the third fail");
    assert_eq!(alert.key, "pass_rate:default");

    let (status, list) = daemon.get_json("/api/v1/alerts?active=true&severity=warning").await;
    assert_eq!(status, StatusCode::OK);
    let alerts = list["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{list}");
    let listed = &alerts[0];
    assert_eq!(
        (listed["title"].as_str(), listed["rule"].as_str(), listed["source"].as_str(), listed["station_id"].as_str()),
        (Some("Pass rate below threshold"), Some("pass_rate"), Some("default"), Some("default"))
    );
    assert_eq!(listed["message"], "Pass rate 0% is below the 90% target (station default, last hour, 3 inspections)");
    assert_eq!((listed["active"].as_bool(), listed["acknowledged"].as_bool()), (Some(true), Some(false)));

    let path = format!("/api/v1/alerts/{}/acknowledge", listed["id"].as_str().unwrap());
    let (status, acked) = daemon.json(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((acked["acknowledged"].as_bool(), acked["acknowledged_by"].as_str()), (Some(true), Some("tester")));
    let (_, open) = daemon.get_json("/api/v1/alerts?acknowledged=false").await;
    assert!(open["alerts"].as_array().unwrap().iter().all(|a| a["rule"] != "pass_rate"), "{open}");

    let (status, body) = daemon.get_json("/api/v1/alerts?severity=loud").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = daemon.json(Method::POST, "/api/v1/alerts/no-such-id/acknowledge", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await);
}
