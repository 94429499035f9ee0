//! `GET`/`PUT /api/v1/config`: secrets hidden, a change merged into the file with its
//! comments kept and written atomically, a bad value refused naming its key with the file
//! untouched, live keys applied and the others reported as waiting for a restart.

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::support::{Daemon, add_user, test_config_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_round_trip_with_validation_live_apply_and_restart_required() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stationd.toml");
    let text = test_config_text(&dir.path().join("state"))
        + "\n[alerts]\n# percent of good parts\npass_rate_target_percent = 90\n";
    std::fs::write(&path, &text).unwrap();
    let config = stationd::config::Config::load(&path).unwrap();
    add_user(&config, "olga", "line 2 lamp", stationd::auth::Role::Operator);
    let daemon = Daemon::start_with(config).await;

    let (status, view) = daemon.get_json("/api/v1/config").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["path"], path.display().to_string());
    assert_eq!(view["config"]["alerts"]["pass_rate_target_percent"], 90);
    assert_eq!(view["restart_required"], json!([]));

    // A bad value is refused with its key, and the file stays as it was.
    let (status, body) = daemon.json(Method::PUT, "/api/v1/config", Some(json!({"api": {"max_upload_mb": 0}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("`api.max_upload_mb`"), "{body}");
    let (status, body) =
        daemon.json(Method::PUT, "/api/v1/config", Some(json!({"alerts": {"pass_rate_targt_percent": 80}}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("unknown field `pass_rate_targt_percent`"), "{body}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // An alert rule applies at once; the file keeps its comment.
    let change = json!({"alerts": {"pass_rate_target_percent": 85}});
    let (status, saved) = daemon.json(Method::PUT, "/api/v1/config", Some(change)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["changed"], json!(["alerts.pass_rate_target_percent"]));
    assert_eq!(saved["applied"], json!(["alerts.pass_rate_target_percent"]));
    assert_eq!(saved["restart_required"], json!([]));
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(on_disk.contains("# percent of good parts\npass_rate_target_percent = 85"), "{on_disk}");
    assert!(dir.path().join("stationd.toml.bak").exists());

    // The upload limit waits for a restart, and says so until then.
    let (status, saved) = daemon.json(Method::PUT, "/api/v1/config", Some(json!({"api": {"max_upload_mb": 30}}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (saved["applied"].clone(), saved["restart_required"].clone()),
        (json!([]), json!(["api.max_upload_mb"]))
    );
    let (_, view) = daemon.get_json("/api/v1/config").await;
    assert_eq!(view["restart_required"], json!(["api.max_upload_mb"]));
    assert_eq!(view["config"]["api"]["max_upload_mb"], 30);

    // Audit-logged; engineers and admins only.
    let (_, audit) = daemon.get_json("/api/v1/audit?limit=1").await;
    assert_eq!(audit["entries"][0]["action"], "config_changed");
    assert_eq!(audit["entries"][0]["detail"], "changed api.max_upload_mb; applied none");
    let (_, login) = daemon.login("olga", "line 2 lamp").await;
    let operator = login["access_token"].as_str().unwrap();
    let (status, _, _) = daemon.request_as(Some(operator), Method::GET, "/api/v1/config", None, Vec::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_defaults_are_read_only_and_secrets_are_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (status, view) = daemon.get_json("/api/v1/config").await;
    assert_eq!((status, view["path"].clone()), (StatusCode::OK, serde_json::Value::Null));
    let (status, body) = daemon.json(Method::PUT, "/api/v1/config", Some(json!({"log": {"filter": "debug"}}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(daemon.shutdown().await);

    let path = dir.path().join("with-secret.toml");
    let text = test_config_text(&dir.path().join("state2")).replace(
        "[mqtt]\nenabled = false\n",
        "[mqtt]\nenabled = false\nusername = \"station\"\npassword = \"s3cret-value\"\n",
    );
    assert!(text.contains("s3cret-value"));
    std::fs::write(&path, &text).unwrap();
    let daemon = Daemon::start_settled(stationd::config::Config::load(&path).unwrap()).await;
    let (_, view) = daemon.get_json("/api/v1/config").await;
    assert_eq!(view["config"]["mqtt"]["password"], "********");
    assert!(!view.to_string().contains("s3cret-value"));
    // Sending the marker back keeps the secret.
    let change = json!({"mqtt": {"password": "********", "username": "station-2"}});
    let (status, saved) = daemon.json(Method::PUT, "/api/v1/config", Some(change)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["changed"], json!(["mqtt.username"]));
    assert!(std::fs::read_to_string(&path).unwrap().contains("password = \"s3cret-value\""));
    assert!(daemon.shutdown().await);
}
