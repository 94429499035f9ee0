//! Active learning through REST: uncertain results queue themselves, any result can be
//! sent for review, labels are checked against the image, and the labelled set exports
//! as YOLO, COCO or class folders.

use std::io::Read;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Daemon, sample};

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut files = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.push((entry.name().unwrap().into_owned(), content));
    }
    files.sort();
    files
}

async fn annotate(daemon: &Daemon, id: &str, body: Value) -> (StatusCode, Value) {
    daemon.json(Method::POST, &format!("/api/v1/learning/{id}/annotations"), Some(body)).await
}

async fn export(daemon: &Daemon, query: &str) -> Vec<(String, Vec<u8>)> {
    let (status, headers, body) =
        daemon.request(Method::GET, &format!("/api/v1/learning/export?{query}"), None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["content-type"], "application/zip");
    unzip(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_label_and_export() {
    let state = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(state.path());
    // Nearly every part is uncertain under these thresholds.
    config.inference.thresholds.pass_threshold = Some(0.999_999);
    config.inference.thresholds.fail_threshold = Some(0.000_001);
    let daemon = Daemon::start_with(config).await;

    let mut ids = Vec::new();
    let mut uncertain = 0;
    for name in ["00_ok.jpg", "01_scratch.jpg", "02_dent.jpg"] {
        let (status, record) = daemon.upload(&sample(name), "image/jpeg", &[]).await;
        assert_eq!(status, StatusCode::CREATED);
        uncertain += usize::from(record["decision"] == "uncertain");
        ids.push(record["id"].as_str().unwrap().to_owned());
    }
    let (_, stats) = daemon.get_json("/api/v1/learning/stats").await;
    assert_eq!(stats, json!({"pending": uncertain, "labeled": 0, "exported": 0}));
    // Every result can be sent for review; a second request changes nothing.
    for id in &ids {
        let (status, _, _) = daemon.request(Method::POST, &format!("/api/v1/learning/{id}"), None, Vec::new()).await;
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status}");
    }
    let (status, _, _) = daemon.request(Method::POST, &format!("/api/v1/learning/{}", ids[0]), None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) =
        daemon.request(Method::POST, &format!("/api/v1/learning/{}", uuid::Uuid::new_v4()), None, Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, next) = daemon.get_json("/api/v1/learning/next?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let items = next["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{next}");
    assert_eq!((items[0]["image_width"].as_u64(), items[0]["image_height"].as_u64()), (Some(128), Some(128)));
    let (status, image) = daemon.get(items[0]["image_url"].as_str().unwrap()).await;
    assert_eq!((status, image.len()), (StatusCode::OK, sample("00_ok.jpg").len()));
    assert_eq!(daemon.get("/api/v1/learning/next?limit=0").await.0, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) =
        annotate(&daemon, &ids[1], json!({"annotations": [{"class_name": "scratch", "bbox": [10, 10, 200, 40]}]}))
            .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "outside the 128 px image: {body}");
    let (status, body) = annotate(&daemon, &ids[1], json!({"annotations": [{"class_name": "", "bbox": null}]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, stats) = annotate(
        &daemon,
        &ids[1],
        json!({"annotations": [{"class_name": "scratch", "bbox": [10, 10, 50, 40]}], "reviewed_by": "operator1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let (status, stats) = annotate(&daemon, &ids[0], json!({"annotations": [{"class_name": "ok"}]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats, json!({"pending": 1, "labeled": 2, "exported": 0}));

    let yolo = export(&daemon, "format=yolo").await;
    let names: Vec<&str> = yolo.iter().map(|(n, _)| n.as_str()).collect();
    let (a, b) = (ids[0].replace('-', ""), ids[1].replace('-', ""));
    let mut expected = vec![
        "classes.txt".to_owned(),
        "data.yaml".to_owned(),
        format!("images/{a}.jpg"),
        format!("images/{b}.jpg"),
        format!("labels/{a}.txt"),
        format!("labels/{b}.txt"),
    ];
    expected.sort();
    assert_eq!(names, expected);
    let file = |name: String| &yolo.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(yolo[0].1, b"scratch\n");
    assert_eq!(String::from_utf8_lossy(file(format!("labels/{b}.txt"))), "0 0.234375 0.195312 0.312500 0.234375\n");
    assert!(file(format!("labels/{a}.txt")).is_empty(), "a whole-image label has no boxes");
    let (_, stats) = daemon.get_json("/api/v1/learning/stats").await;
    assert_eq!(stats, json!({"pending": 1, "labeled": 0, "exported": 2}));
    // What was exported is not exported again unless asked for.
    let again = export(&daemon, "format=yolo").await;
    assert_eq!(again.iter().filter(|(n, _)| n.starts_with("images/")).count(), 0);

    let coco = export(&daemon, "format=coco&include_exported=true").await;
    let document: Value = serde_json::from_slice(&coco[0].1).unwrap();
    assert_eq!(coco[0].0, "annotations.json");
    assert_eq!(document["categories"], json!([{"id": 1, "name": "scratch", "supercategory": "part"}]));
    assert_eq!(document["annotations"][0]["bbox"], json!([10.0, 10.0, 40.0, 30.0]));
    assert_eq!(document["images"].as_array().unwrap().len(), 2);

    let folders = export(&daemon, "format=classification&include_exported=true").await;
    assert_eq!(folders.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), [format!("ok/{a}.jpg")]);
    let (status, _, _) = daemon.request(Method::GET, "/api/v1/learning/export?format=voc", None, Vec::new()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(daemon.shutdown().await);
}
