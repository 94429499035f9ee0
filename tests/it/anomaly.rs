//! PatchCore fits through REST: normal images uploaded (or a station's last passed ones)
//! fit a model in a job whose progress and result the jobs API shows; the model is
//! registered with its held-out image AUROC, serves after activation with an anomaly score
//! and a heatmap per inspection, and bad requests are refused.

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::jobs::finished;
use crate::support::Daemon;

fn heldout(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<Vec<u8>> {
    range.map(|i| std::fs::read(format!("models/parts-classifier/heldout/{prefix}_{i:03}.jpg")).unwrap()).collect()
}

/// A multipart body with text fields and files (each under its field name).
fn form(fields: &[(&str, &str)], files: &[(&str, &[Vec<u8>])]) -> (String, Vec<u8>) {
    let boundary = "stationd-fit-boundary-51c2";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    for (name, images) in files {
        for (index, image) in images.iter().enumerate() {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{index}.jpg\"\r\n\
                     Content-Type: image/jpeg\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(image);
            body.extend_from_slice(b"\r\n");
        }
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_fit(daemon: &Daemon, fields: &[(&str, &str)], files: &[(&str, &[Vec<u8>])]) -> (StatusCode, Value) {
    let (content_type, body) = form(fields, files);
    let (status, _, body) = daemon.request(Method::POST, "/api/v1/anomaly/fits", Some(&content_type), body).await;
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fit_on_normal_images_serves_scores_and_heatmaps() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let normal = heldout("ok", 1..=20);
    let heldout_normal = heldout("ok", 41..=50);
    let anomalous = [heldout("dent", 1..=5), heldout("scratch", 1..=5)].concat();

    for (fields, files, status, detail) in [
        (vec![], vec![("normal", &normal[..])], StatusCode::UNPROCESSABLE_ENTITY, "name is required"),
        (
            vec![("name", "f")],
            vec![("normal", &normal[..9])],
            StatusCode::UNPROCESSABLE_ENTITY,
            "a fit needs at least 10",
        ),
        (
            vec![("name", "f"), ("station_id", "default")],
            vec![("normal", &normal[..])],
            StatusCode::UNPROCESSABLE_ENTITY,
            "give images or station_id",
        ),
        (
            vec![("name", "f"), ("coreset_ratio", "2")],
            vec![("normal", &normal[..])],
            StatusCode::UNPROCESSABLE_ENTITY,
            "coreset_ratio",
        ),
        (
            vec![("name", "f")],
            vec![("normal", &[b"not an image".to_vec()][..])],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "normal file",
        ),
    ] {
        let (got, body) = post_fit(&daemon, &fields, &files).await;
        assert_eq!(got, status, "{fields:?}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{fields:?}: {body}");
    }
    // Nothing refused was left behind.
    let (_, jobs) = daemon.get_json("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], Value::Array(Vec::new()));

    let files =
        [("normal", &normal[..]), ("heldout_normal", &heldout_normal[..]), ("heldout_anomalous", &anomalous[..])];
    let (status, job) = post_fit(&daemon, &[("name", "flange-patchcore"), ("version", "1")], &files).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!((job["type"].as_str(), job["params"]["source"]["normal"].as_u64()), (Some("training"), Some(20)));
    let job = finished(&daemon, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!((job["processed"].as_u64(), job["total"].as_u64()), (Some(40), Some(40)), "{job}");
    let metrics = &job["metrics"];
    assert!(metrics["image_auroc"].as_f64().unwrap() >= 0.9, "{job}");
    assert_eq!((metrics["bank_images"].as_u64(), metrics["heldout_anomalous"].as_u64()), (Some(16), Some(10)));
    let model_id = metrics["model_id"].as_str().unwrap();
    let (_, model) = daemon.get_json(&format!("/api/v1/models/{model_id}")).await;
    assert_eq!((model["task"].as_str(), model["active"].as_bool()), (Some("anomaly"), Some(false)), "{model}");
    assert_eq!(model["metrics"]["image_auroc"], metrics["image_auroc"]);

    // The same version again is a conflict.
    let (status, _) = post_fit(&daemon, &[("name", "flange-patchcore"), ("version", "1")], &files).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The jobs list filters by the seed's job type and by status.
    for (query, count) in [("?type=training", 1), ("?type=batch", 0), ("?type=training&status=running", 0)] {
        let (_, list) = daemon.get_json(&format!("/api/v1/jobs{query}")).await;
        assert_eq!(list["jobs"].as_array().map(Vec::len), Some(count), "{query}: {list}");
    }
    for query in ["?type=fit", "?status=done"] {
        let (status, _) = daemon.get_json(&format!("/api/v1/jobs{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
    }

    // Activated, it scores parts and draws where the defect is.
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/models/{model_id}/activate"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, good) = daemon.upload(&heldout("ok", 55..=55)[0], "image/jpeg", &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{good}");
    let (_, dent) = daemon.upload(&heldout("dent", 30..=30)[0], "image/jpeg", &[]).await;
    assert_eq!(dent["decision"], "fail", "{dent}");
    let score = |record: &Value| record["scores"]["anomaly_score"].as_f64().unwrap();
    assert!(score(&dent) > score(&good), "{dent} {good}");
    // Red marks patches at the fail level: the dent has them, the good part none.
    let mut red = Vec::new();
    for record in [&dent, &good] {
        let heatmap = record["heatmap_url"].as_str().unwrap();
        let (status, headers, png) = daemon.request(Method::GET, heatmap, None, Vec::new()).await;
        assert_eq!((status, headers["content-type"].to_str().unwrap()), (StatusCode::OK, "image/png"));
        let png = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (128, 128));
        let reddish = |p: &&image::Rgb<u8>| i32::from(p[0]) > i32::from(p[1]).max(i32::from(p[2])) + 100;
        red.push(png.pixels().filter(reddish).count());
    }
    assert!(red[0] > 0 && red[1] == 0, "red pixels (dent, good part): {red:?}; good part {good}");
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fit_takes_a_stations_last_passed_images_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    // The classifier passes the good flanges and fails the dents.
    for image in heldout("ok", 1..=15) {
        let (_, record) = daemon.upload(&image, "image/jpeg", &[]).await;
        assert_eq!(record["decision"], "pass", "{record}");
    }
    for image in heldout("dent", 1..=4) {
        daemon.upload(&image, "image/jpeg", &[]).await;
    }
    let fields = [("name", "from-the-line"), ("station_id", "default"), ("last_passed", "12"), ("last_failed", "4")];
    let (status, job) = post_fit(&daemon, &fields, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert!(job["params"]["model_version"].as_str().unwrap().starts_with("fit-"), "{job}");
    let job = finished(&daemon, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");
    let metrics = &job["metrics"];
    // Twelve passed images: ten in the bank, two calibrate; four failed ones held out.
    assert_eq!((metrics["bank_images"].as_u64(), metrics["calibration_images"].as_u64()), (Some(10), Some(2)), "{job}");
    assert_eq!((metrics["heldout_normal"].as_u64(), metrics["heldout_anomalous"].as_u64()), (Some(2), Some(4)));

    let (_, too_few) = post_fit(&daemon, &[("name", "x"), ("station_id", "default"), ("last_passed", "9")], &[]).await;
    assert!(too_few["detail"].as_str().unwrap().contains("at least 10"), "{too_few}");

    // Cancelled at once: it ends cancelled and registers nothing.
    let (_, job) =
        post_fit(&daemon, &[("name", "cancelled"), ("station_id", "default"), ("last_passed", "15")], &[]).await;
    let id = job["id"].as_str().unwrap();
    let (status, _) = daemon.json(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);
    let job = finished(&daemon, id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let (_, models) = daemon.get_json("/api/v1/models").await;
    let names: Vec<&str> = models.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"cancelled") && names.contains(&"from-the-line"), "{names:?}");
    assert!(daemon.shutdown().await);
}
