//! The dashboard WebSocket: stats on connect, each inspection with the REST record's
//! JSON followed by fresh stats, a ping with stats every 5 s, and a close at shutdown.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Daemon, sample};

async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await.expect("the socket is open").expect("a frame") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods, reason = "the test stops the daemon while the socket is open")]
async fn pushes_stats_inspections_and_pings_and_closes_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws?access_token={}", daemon.addr, daemon.token))
            .await
            .unwrap();

    let hello = next_json(&mut socket).await;
    assert_eq!(hello["type"], "stats");
    assert_eq!(hello["data"][0]["station_id"], "default", "{hello}");

    let (_, record) = daemon.upload(&sample("01_scratch.jpg"), "image/jpeg", &[]).await;
    let inspection = next_json(&mut socket).await;
    assert_eq!(inspection["type"], "inspection");
    let (_, rest) = daemon.get_json(&format!("/api/v1/inspections/{}", record["id"].as_str().unwrap())).await;
    assert_eq!(inspection["data"], rest, "the same JSON as the REST record");
    let stats = next_json(&mut socket).await;
    assert_eq!(
        (stats["type"].as_str(), &stats["data"][0]["fail_count"]),
        (Some("stats"), &serde_json::json!(1)),
        "{stats}"
    );

    // The next push with nothing happening is the 5 s ping.
    let ping = tokio::time::timeout(std::time::Duration::from_secs(10), next_json(&mut socket)).await.unwrap();
    assert_eq!(ping["type"], "ping", "{ping}");

    let stopped = tokio::spawn(daemon.shutdown());
    loop {
        match socket.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(stopped.await.unwrap(), "a clean stop with a socket open");
}
