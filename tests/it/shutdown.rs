//! Shutdown mid-cycle: a request that is in flight when shutdown begins (the same path
//! SIGTERM takes in `main`) completes, its record is committed with its image, new
//! connections are refused, and the database is intact when reopened from outside.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Daemon, multipart, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_cycle_loses_no_committed_record() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let addr = daemon.addr;
    let jpeg = sample("01_scratch.jpg");
    let (boundary, body) = multipart(&jpeg, "image/jpeg", &[("part_id", "IN-FLIGHT")]);

    // Send the headers and half the body, then wait until the server is serving it.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/inspect HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        daemon.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).await.unwrap();
    let mut in_flight = daemon.app.in_flight.clone();
    in_flight.wait_for(|n| *n >= 1).await.unwrap();

    // Shutdown starts now; the client finishes its upload while intake is draining.
    let client = async move {
        stream.write_all(&body[half..]).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let (clean, response) = tokio::join!(daemon.shutdown(), client);
    assert!(clean, "shutdown drained within its deadline");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let json = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let record: serde_json::Value = serde_json::from_str(json).unwrap();
    let id = record["id"].as_str().unwrap().to_owned();

    // Intake is closed.
    assert!(TcpStream::connect(addr).await.is_err(), "listener must be closed after shutdown");

    // Reopen from outside the daemon: the acknowledged record and its image are there.
    let conn = rusqlite::Connection::open(state.path().join("stationd.db")).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let (part, path, bytes): (String, String, i64) = conn
        .query_row("SELECT part_id, image_path, image_bytes FROM inspections WHERE id = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(part, "IN-FLIGHT");
    let image = std::fs::read(state.path().join("images").join(path)).unwrap();
    assert_eq!((image.len() as i64, image.as_slice()), (bytes, jpeg.as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_shutdown_is_clean() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, hyper::StatusCode::CREATED);
    assert!(daemon.shutdown().await);
    // A temp file left by a crash mid-write is swept at the next open.
    let day = std::fs::read_dir(state.path().join("images")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(day.join("crashed.tmp"), b"half an image").unwrap();
    let daemon = Daemon::start(state.path()).await;
    assert!(!day.join("crashed.tmp").exists());
    let (_, list) = daemon.get_json("/api/v1/inspections").await;
    assert_eq!(list["total"], 1);
    assert!(daemon.shutdown().await);
}
