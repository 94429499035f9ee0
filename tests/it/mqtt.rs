//! MQTT end to end: an in-process broker (rumqttd) reached through a TCP proxy the test
//! can take down. Broker unreachable, 50 inspections, daemon restarted, broker reachable:
//! all 50 arrive in order, none lost.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::support::{Daemon, sample, test_config};

const PATIENCE: Duration = Duration::from_secs(30);

/// Starts rumqttd on a free loopback port. rumqttd cannot report a port it bound itself,
/// so the port comes from binding port 0 first and releasing it.
fn start_broker() -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 1024 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some([("v4".to_owned(), server)].into()),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    // The broker runs its own threads and has no stop; it ends with the test process.
    #[allow(clippy::disallowed_methods, reason = "a test broker, not a daemon service")]
    std::thread::spawn(move || broker.start().expect("broker runs"));
    port
}

/// A TCP proxy in front of the broker that the test switches off and on.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

async fn start_proxy(broker_port: u16) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (up, up_rx) = watch::channel(false);
    #[allow(clippy::disallowed_methods, reason = "test plumbing, not a daemon service")]
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            if !*up_rx.borrow() {
                drop(client); // broker "down": refuse by closing at once
                continue;
            }
            let mut up_rx = up_rx.clone();
            #[allow(clippy::disallowed_methods, reason = "test plumbing, not a daemon service")]
            tokio::spawn(async move {
                let Ok(mut broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                    _ = up_rx.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    Proxy { addr, up }
}

/// A subscriber connected straight to the broker; returns (topic, payload) pairs.
async fn subscribe(broker_port: u16, topics: &[&str]) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", broker_port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 32);
    for topic in topics {
        client.subscribe(*topic, QoS::AtLeastOnce).await.unwrap();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut pending_subacks = topics.len();
    // Poll until subscribed, then keep polling in the background.
    while pending_subacks > 0 {
        match tokio::time::timeout(PATIENCE, eventloop.poll()).await.expect("subscriber connects") {
            Ok(Event::Incoming(Packet::SubAck(_))) => pending_subacks -= 1,
            Ok(_) => {}
            Err(_) => {} // broker still starting: rumqttc reconnects on the next poll
        }
    }
    #[allow(clippy::disallowed_methods, reason = "test plumbing, not a daemon service")]
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event
                && tx.send((publish.topic.clone(), publish.payload.to_vec())).is_err()
            {
                return;
            }
        }
    });
    rx
}

fn mqtt_config(state_dir: &std::path::Path, port: u16) -> stationd::config::Config {
    let mut config = test_config(state_dir);
    let text = format!(
        "state_dir = \"/x\"\n[api]\nbind = \"127.0.0.1:0\"\n[inference]\nmodel_dir = \"m\"\n[stations.default]\n\
         [mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"it\"\nkeep_alive_s = 5\n"
    );
    config.mqtt = stationd::config::Config::from_toml_str(&text).unwrap().mqtt;
    config
}

async fn mqtt_status(daemon: &Daemon) -> serde_json::Value {
    daemon.get_json("/api/v1/mqtt/status").await.1["stations"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_broker_outage_and_daemon_restart() {
    let broker_port = start_broker();
    let proxy = start_proxy(broker_port).await;
    let mut received = subscribe(broker_port, &["stationd/default/inspection", "stationd/default/status"]).await;

    // Broker unreachable: 50 inspections are committed and wait in the outbox.
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(mqtt_config(state.path(), proxy.addr.port())).await;
    let names = ["00_ok.jpg", "01_scratch.jpg", "02_dent.jpg", "03_ok.jpg", "05_dent.jpg"];
    let mut ids = Vec::new();
    for i in 0..50 {
        let (status, body) = daemon.upload(&sample(names[i % names.len()]), "image/jpeg", &[]).await;
        assert_eq!(status, hyper::StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let status = mqtt_status(&daemon).await;
    assert_eq!((status["backlog"].as_u64(), status["connected"].as_bool()), (Some(50), Some(false)), "{status}");
    assert!(daemon.shutdown().await);

    // Restart, broker reachable again: everything arrives, in order, once.
    proxy.up.send_replace(true);
    let daemon = Daemon::start_with(mqtt_config(state.path(), proxy.addr.port())).await;
    let mut inspections = Vec::new();
    let mut statuses = Vec::new();
    while inspections.len() < 50 {
        let (topic, payload) =
            tokio::time::timeout(PATIENCE, received.recv()).await.expect("messages arrive").expect("subscriber alive");
        if topic.ends_with("/status") {
            statuses.push(String::from_utf8(payload).unwrap());
            continue;
        }
        let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        inspections.push(message);
    }
    let seqs: Vec<u64> = inspections.iter().map(|m| m["message_seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>(), "in order, no gap, no duplicate");
    let got: Vec<&str> = inspections.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(inspections.iter().all(|m| m["station_id"] == "default" && m["decision"].is_string()));
    assert!(statuses.contains(&"online".to_owned()), "{statuses:?}");

    // The outbox empties as PUBACKs come back.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let status = mqtt_status(&daemon).await;
            if status["backlog"] == 0 && status["connected"] == true {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("outbox drains");

    // A live inspection goes straight out, and an orderly stop says "offline".
    let (_, live) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    let (_, payload) = loop {
        let message = tokio::time::timeout(PATIENCE, received.recv()).await.unwrap().unwrap();
        if message.0.ends_with("/inspection") {
            break message;
        }
    };
    let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!((message["id"].as_str(), message["message_seq"].as_u64()), (live["id"].as_str(), Some(51)));
    assert!(daemon.shutdown().await);
    let offline = loop {
        let (topic, payload) = tokio::time::timeout(PATIENCE, received.recv()).await.unwrap().unwrap();
        if topic.ends_with("/status") {
            break String::from_utf8(payload).unwrap();
        }
    };
    assert_eq!(offline, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_disabled_reports_so_and_writes_no_outbox() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let (_, status) = daemon.get_json("/api/v1/mqtt/status").await;
    assert_eq!(status["enabled"], false);
    let (status, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status, hyper::StatusCode::CREATED);
    assert!(daemon.shutdown().await);
    let conn = rusqlite::Connection::open(state.path().join("stationd.db")).unwrap();
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
}

/// A device that cannot be opened is announced on the alerts topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_device_raises_an_alert() {
    let broker_port = start_broker();
    let mut received = subscribe(broker_port, &["stationd/default/alerts"]).await;
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut config = mqtt_config(state.path(), broker_port);
    config.cameras.insert(
        "cam0".into(),
        stationd::config::CameraConfig {
            backend: stationd::config::CameraBackend::Sim { folder: empty.path().to_owned() },
        },
    );
    let daemon = Daemon::start_settled(config).await;
    let (topic, payload) = tokio::time::timeout(PATIENCE, received.recv()).await.expect("an alert").unwrap();
    let alert: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(topic, "stationd/default/alerts");
    assert_eq!((alert["severity"].as_str(), alert["title"].as_str()), (Some("error"), Some("Device down")), "{alert}");
    assert_eq!(alert["source"], "camera[cam0]");
    assert!(alert["message"].as_str().unwrap().contains("no images"), "{alert}");
    assert!(alert["id"].is_string() && alert["timestamp"].is_string() && alert["acknowledged"] == false);
    assert!(daemon.shutdown().await);
}

/// A committed tightening is published on the station's tightening topic, numbered in
/// the same per-station sequence as inspections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightenings_are_published_on_their_topic() {
    use stationd::south::wrench::sim::{SimController, SimSettings};
    use stationd::south::wrench::{LinkState, WrenchSettings};

    let broker_port = start_broker();
    let mut received = subscribe(broker_port, &["stationd/default/tightening", "stationd/default/inspection"]).await;
    let sim = SimController::bind(([127, 0, 0, 1], 0).into(), SimSettings { first_id: 1, ..SimSettings::default() })
        .await
        .unwrap();
    let controller = sim.handle();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    #[allow(clippy::disallowed_methods, reason = "a test controller, not a daemon service")]
    tokio::spawn(async move { sim.run(token).await });

    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(mqtt_config(state.path(), broker_port)).await;
    let mut settings = WrenchSettings::new("bench", "127.0.0.1", controller.addr().port());
    settings.station_id = Some("default".into());
    daemon.app.wrenches.connect(settings).unwrap();
    let mut status = daemon.app.wrenches.watch("bench").unwrap();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.link == LinkState::Up)).await.unwrap().unwrap();

    let (status_code, _) = daemon.upload(&sample("00_ok.jpg"), "image/jpeg", &[]).await;
    assert_eq!(status_code, hyper::StatusCode::CREATED);
    let id = controller.tighten(false).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (topic, payload) =
            tokio::time::timeout(PATIENCE, received.recv()).await.expect("messages arrive").expect("subscriber alive");
        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        seen.push((topic, body));
    }
    seen.sort_by_key(|(_, body)| body["message_seq"].as_i64());
    assert_eq!(seen[0].0, "stationd/default/inspection");
    let (topic, body) = &seen[1];
    assert_eq!(topic, "stationd/default/tightening");
    assert_eq!(body["message_seq"], 2);
    assert_eq!((body["tightening_id"].as_u64(), body["status"].as_str()), (Some(id), Some("nok")));
    assert_eq!((body["torque"].as_f64(), body["torque_unit"].as_str()), (Some(21.0), Some("Nm")));
    assert!(daemon.shutdown().await);
    stop.cancel();
}

/// A pipeline's MQTT sink: a raised anomaly goes out through the station's outbox on its
/// anomaly topic, with the same JSON as `GET /api/v1/pipelines/{id}/events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_anomalies_are_published_on_their_topic() {
    let broker_port = start_broker();
    let mut received = subscribe(broker_port, &["stationd/default/anomaly"]).await;
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(mqtt_config(state.path(), broker_port)).await;
    let body = serde_json::json!({
        "name": "watch", "source_id": "cam0", "config": {"fps": 30},
        "sinks": [{"type": "mqtt", "name": "mes"}]
    });
    let (status, pipeline) = daemon.json(hyper::Method::POST, "/api/v1/pipelines", Some(body)).await;
    assert_eq!(status, hyper::StatusCode::CREATED);
    let start = serde_json::json!({"pipeline_id": pipeline["id"]});
    let (status, _) = daemon.json(hyper::Method::POST, "/api/v1/active-pipelines", Some(start)).await;
    assert_eq!(status, hyper::StatusCode::CREATED);
    let (topic, payload) =
        tokio::time::timeout(PATIENCE, received.recv()).await.expect("an anomaly arrives").expect("subscriber alive");
    assert_eq!(topic, "stationd/default/anomaly");
    let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!((message["message_seq"].as_i64(), &message["pipeline_id"]), (Some(1), &pipeline["id"]));
    assert_eq!(message["label"], "scratch");
    assert!(daemon.shutdown().await);
}

/// Assembly coaching on MQTT: the finished unit record through the outbox (the REST
/// record's JSON with `message_seq`) and the coaching state, retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_records_and_the_coaching_state_are_published() {
    use crate::coaching::{make_assembly, make_operator, post};
    use serde_json::json;

    let broker_port = start_broker();
    let topics = ["stationd/default/assembly/records", "stationd/default/assembly/state"];
    let mut received = subscribe(broker_port, &topics).await;
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(mqtt_config(state.path(), broker_port)).await;
    let operator = make_operator(&daemon).await;
    let steps =
        vec![(json!({"name": "check the label"}), vec![json!({"data_type": "qa", "prompt": "label straight?"})])];
    let assembly = make_assembly(&daemon, steps).await;
    let start = json!({"assembly_id": assembly, "operator_id": operator, "serial": "SN-7"});
    let (status, body) = post(&daemon, "/api/v1/coaching/start", start).await;
    assert_eq!(status, hyper::StatusCode::CREATED, "{body}");
    let (status, body) = post(&daemon, "/api/v1/coaching/qa", json!({"passed": true})).await;
    assert_eq!(status, hyper::StatusCode::OK, "{body}");

    let (mut record, mut idle) = (None, None);
    while record.is_none() || idle.is_none() {
        let (topic, payload) =
            tokio::time::timeout(PATIENCE, received.recv()).await.expect("messages arrive").expect("subscriber alive");
        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if topic == topics[0] {
            record = Some(body);
        } else if body["state"] == "idle" && body["last_record"]["outcome"] == "completed" {
            idle = Some(body);
        }
    }
    let record = record.unwrap();
    assert_eq!((record["serial"].as_str(), record["outcome"].as_str()), (Some("SN-7"), Some("completed")));
    assert_eq!(record["message_seq"], 1);
    assert_eq!(record["steps"][0]["qa_passed"], true);
    assert_eq!(idle.unwrap()["last_record"]["assembly_record_id"], record["id"]);
    assert!(daemon.shutdown().await);
}
