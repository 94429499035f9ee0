//! Expected items through the station: recipes in the config, a list with the trigger,
//! the check in the order-accuracy seed's shape, an incomplete kit failing the part,
//! `area_mm2` from the station's scale, and a vision step that expects items.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::models::{folder_as_tar, upload_model};
use crate::support::{Daemon, test_config_text};

/// The kit-detector serving station `default`, whose recipe is `tray`, at 0.5 mm per pixel.
fn kit_station(state_dir: &std::path::Path) -> stationd::config::Config {
    let text = test_config_text(state_dir)
        .replace("model_dir = \"models/parts-classifier\"", "model_dir = \"models/kit-detector\"")
        .replace("ready_output = \"ready\"", "ready_output = \"ready\"\nrecipe = \"tray\"\nmm_per_pixel = 0.5")
        + "\n[recipes.tray]\nitems = [{ name = \"bolt\", quantity = 2, aliases = [\"M8 bolt\"] }, { name = \"nut\", quantity = 1 }]\n";
    stationd::config::Config::from_toml_str(&text).expect("valid config")
}

/// The held-out trays' true counts, from their file names (`NNN_boltA_nutB_washerC_debrisD.jpg`).
fn heldout() -> Vec<(std::path::PathBuf, Vec<(String, u32)>)> {
    let mut files: Vec<_> =
        std::fs::read_dir("models/kit-detector/heldout").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let counts = stem
                .split('_')
                .skip(1)
                .map(|part| {
                    let split = part.find(|c: char| c.is_ascii_digit()).unwrap();
                    (part[..split].to_owned(), part[split..].parse().unwrap())
                })
                .collect();
            (path, counts)
        })
        .collect()
}

fn items(counts: &[(String, u32)]) -> String {
    let list: Vec<Value> = counts
        .iter()
        .filter(|(name, n)| *n > 0 && name != "debris")
        .map(|(name, n)| json!({"name": name, "quantity": n}))
        .collect();
    Value::Array(list).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kits_are_checked_against_their_expected_items() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(kit_station(state.path())).await;
    let (status, recipes) = daemon.get_json("/api/v1/recipes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        recipes,
        json!({"recipes": [{"name": "tray", "stations": ["default"], "items": [
            {"name": "bolt", "quantity": 2, "aliases": ["M8 bolt"]},
            {"name": "nut", "quantity": 1, "aliases": []},
        ]}]})
    );

    // Trays without debris, each with its true contents as the expected items: the model's
    // counts are right on most (92.5% on the whole held-out set), and a complete tray passes.
    let trays: Vec<_> = heldout()
        .into_iter()
        .filter(|(_, counts)| counts.iter().any(|(name, n)| name == "debris" && *n == 0))
        .filter(|(_, counts)| counts.iter().any(|(name, n)| name != "debris" && *n > 0))
        .take(20)
        .collect();
    let (mut complete, mut complete_tray) = (0, None);
    for (path, counts) in &trays {
        let image = std::fs::read(path).unwrap();
        let (status, record) = daemon.upload(&image, "image/jpeg", &[("expected_items", &items(counts))]).await;
        assert_eq!(status, StatusCode::CREATED, "{record}");
        let check = &record["expected_items"];
        assert_eq!(check["recipe"], Value::Null);
        let summary = &check["summary"];
        if summary["order_complete"] == true {
            complete += 1;
            assert_eq!(summary["accuracy_score"], 1.0, "{record}");
            assert_ne!(record["decision"], "fail", "{record}");
            if counts.iter().any(|(name, n)| name == "bolt" && *n > 0) {
                complete_tray.get_or_insert((image, counts.clone(), record.clone()));
            }
        } else {
            assert_eq!(record["decision"], "fail", "{record}");
            let label = record["label"].as_str().unwrap();
            assert!(label.starts_with("missing:") || label.starts_with("quantity:"), "{record}");
        }
    }
    assert!(complete >= 16, "{complete} of {} trays complete", trays.len());

    // One more bolt than the tray holds: a quantity mismatch fails the part, and the stored
    // record answers the same check.
    let (image, mut counts, first) = complete_tray.unwrap();
    let bolts = counts.iter_mut().find(|(name, _)| name == "bolt").unwrap();
    bolts.1 += 1;
    let wanted = bolts.1;
    let (status, record) = daemon.upload(&image, "image/jpeg", &[("expected_items", &items(&counts))]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!((record["decision"].as_str(), record["label"].as_str()), (Some("fail"), Some("quantity:bolt")));
    let mismatch = &record["expected_items"]["validation"]["quantity_mismatch"][0];
    assert_eq!(
        (mismatch["name"].as_str(), mismatch["expected_quantity"].as_u64()),
        (Some("bolt"), Some(wanted.into()))
    );
    assert_eq!(record["expected_items"]["summary"]["order_complete"], false);
    let (_, stored) = daemon.get_json(&format!("/api/v1/inspections/{}", record["id"].as_str().unwrap())).await;
    assert_eq!(stored["expected_items"], record["expected_items"]);

    // Areas from the station's scale: 0.5 mm per pixel.
    for detection in first["detections"].as_array().unwrap() {
        let b: Vec<f64> = detection["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let area = (b[2] - b[0]) * (b[3] - b[1]) * 0.25;
        assert!((detection["area_mm2"].as_f64().unwrap() - area).abs() < 0.01, "{detection}");
    }

    // Without a list, the station's recipe applies.
    let (status, record) = daemon.upload(&image, "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(record["expected_items"]["recipe"], "tray");
    assert_eq!(record["expected_items"]["summary"]["total_expected_quantity"], 3);

    for (fields, detail) in [
        (vec![("recipe", "kit-z")], "no recipe \"kit-z\""),
        (vec![("expected_items", "[]")], "expected_items: must list 1 to 100 items"),
        (vec![("recipe", "tray"), ("expected_items", r#"[{"name": "nut", "quantity": 1}]"#)], "give recipe or"),
        (vec![("expected_items", r#"[{"name": "nut"}]"#)], "expected_items: missing field `quantity`"),
        (vec![("expected_items", r#"[{"name": "nut", "quantity": 1, "qty": 2}]"#)], "expected_items: unknown field"),
    ] {
        let (status, body) = daemon.upload(&image, "image/jpeg", &fields).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{fields:?}: {body}");
        assert!(body["detail"].as_str().unwrap().starts_with(detail), "{fields:?}: {body}");
    }

    // A classifier cannot count items: with the station's recipe, a trigger is refused.
    let (status, classifier) = upload_model(&daemon, &folder_as_tar("models/parts-classifier")).await;
    assert_eq!(status, StatusCode::CREATED, "{classifier}");
    let path = format!("/api/v1/models/{}/activate", classifier["id"].as_str().unwrap());
    assert_eq!(daemon.json(Method::POST, &path, None).await.0, StatusCode::OK);
    let (status, body) = daemon.upload(&image, "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("need a detection model"), "{body}");
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vision_step_keeps_its_expected_items() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (_, body) = daemon.json(Method::POST, "/api/v1/assemblies", Some(json!({"name": "kit job"}))).await;
    let id = body["msg"]["id"].as_str().unwrap().to_owned();
    let (status, body) =
        daemon.json(Method::POST, &format!("/api/v1/assemblies/{id}/steps"), Some(json!({"name": "pick"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let step = body["id"].as_i64().unwrap();
    let items = json!([{"name": "bolt", "quantity": 4, "aliases": ["M8 bolt"]}, {"name": "nut", "quantity": 4}]);
    let data = json!({"data_type": "ml", "expected_items": items});
    let (status, body) = daemon.json(Method::POST, &format!("/api/v1/steps/{step}/data"), Some(data)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, listed) = daemon.get_json(&format!("/api/v1/steps/{step}/data")).await;
    let stored = &listed["msg"][0];
    assert_eq!(stored["data_type"], "ml");
    assert_eq!(
        stored["expected_items"],
        json!([
            {"name": "bolt", "quantity": 4, "aliases": ["M8 bolt"]},
            {"name": "nut", "quantity": 4, "aliases": []},
        ])
    );
    assert!(daemon.shutdown().await);
}
