//! Wrench links end to end against the controller simulator over real TCP: results
//! stored exactly once through 100 link drops, split writes, link-level acks, keep-alive,
//! errors 96 and 97, tool control and release control over REST, goodbye on shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stationd::bus::Notification;
use stationd::south::wrench::sim::{SimHandle, SimSettings};
use stationd::south::wrench::{LinkState, WrenchSettings};
use tokio::sync::broadcast;

use crate::support::{Daemon, start_sim, test_config};

const PATIENCE: Duration = Duration::from_secs(60);

fn sim_settings() -> SimSettings {
    SimSettings { first_id: 1, ..SimSettings::default() }
}

/// Link settings with short backoffs, so that a test can drop the link 100 times.
fn fast(id: &str, sim: &SimHandle) -> WrenchSettings {
    let mut settings = WrenchSettings::new(id, "127.0.0.1", sim.addr().port());
    settings.station_id = Some("default".into());
    settings.reconnect_min = Duration::from_millis(5);
    settings.reconnect_max = Duration::from_millis(50);
    settings.busy_backoff = Duration::from_millis(300);
    settings
}

async fn link_up(daemon: &Daemon, id: &str, after_reconnects: u64) {
    let mut status = daemon.app.wrenches.watch(id).expect("wrench exists");
    tokio::time::timeout(PATIENCE, status.wait_for(|s| s.link == LinkState::Up && s.reconnects >= after_reconnects))
        .await
        .expect("link comes up")
        .expect("link alive");
}

/// Waits until these tightening IDs of `wrench` were committed, and returns every ID
/// committed meanwhile.
async fn committed(
    notifications: &mut broadcast::Receiver<Notification>,
    wrench: &str,
    expected: &BTreeSet<u64>,
    seen: &mut BTreeSet<u64>,
) {
    tokio::time::timeout(PATIENCE, async {
        while !expected.is_subset(seen) {
            match notifications.recv().await {
                Ok(Notification::TighteningCompleted(t)) if t.wrench_id == wrench => {
                    assert!(seen.insert(t.tightening_id), "tightening {} committed twice", t.tightening_id);
                }
                Ok(_) => {}
                Err(err) => panic!("notifications: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing {:?}", expected.difference(seen).collect::<Vec<_>>()));
}

async fn stored_ids(daemon: &Daemon, wrench: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let (status, body) =
            daemon.get_json(&format!("/api/v1/tightenings?wrench_id={wrench}&limit=500&offset={offset}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        ids.extend(items.iter().map(|t| t["tightening_id"].as_u64().unwrap()));
        offset += items.len();
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_100_link_drops_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (sim, _stop) = start_sim(sim_settings()).await;
    let mut notifications = daemon.app.bus.notifications.subscribe();
    daemon.app.wrenches.connect(fast("w1", &sim)).unwrap();
    link_up(&daemon, "w1", 0).await;

    let mut seen = BTreeSet::new();
    for round in 0..100u64 {
        // Half the rounds write in small pieces; some cut a result off mid-telegram.
        sim.set_split_writes(round % 2 == 1);
        if round % 3 == 0 {
            sim.drop_mid_next_result();
        }
        sim.tighten(round % 5 != 0).unwrap();
        sim.tighten(true).unwrap();
        if round % 4 == 0 {
            // Wait for one to be pushed so that the drop hits a stream in progress.
            let pushed = sim.stats().results_pushed;
            sim.until(|s| s.results_pushed > pushed || s.connections > round + 1).await;
        }
        sim.drop_link();
        link_up(&daemon, "w1", round + 1).await;
    }
    sim.set_split_writes(false);
    let produced: BTreeSet<u64> = sim.produced().into_iter().collect();
    assert_eq!(produced.len(), 200);
    committed(&mut notifications, "w1", &produced, &mut seen).await;
    assert_eq!(seen, produced, "nothing else committed");
    let stored = stored_ids(&daemon, "w1").await;
    assert_eq!(stored, produced.iter().copied().collect::<Vec<_>>(), "every result stored exactly once");
    let stats = sim.stats();
    assert!(stats.old_results_served > 0, "gaps were closed with MID 0064: {stats:?}");
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_level_acks_split_writes_and_revision_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    // A controller that knows MID 0001 up to rev 6 and MID 0061 up to rev 2, and offers
    // link-level acknowledgement; the link asks for 6 and 7 and steps down on error 97.
    let (sim, _stop) =
        start_sim(SimSettings { max_comm_revision: 6, max_result_revision: 2, link_level: true, ..sim_settings() })
            .await;
    sim.set_split_writes(true);
    let mut notifications = daemon.app.bus.notifications.subscribe();
    daemon.app.wrenches.connect(fast("w2", &sim)).unwrap();
    link_up(&daemon, "w2", 0).await;
    assert!(daemon.app.wrenches.status("w2").unwrap().link_level_acks);
    let ids: BTreeSet<u64> = (0..20).map(|i| sim.tighten(i % 3 != 0).unwrap()).collect();
    committed(&mut notifications, "w2", &ids, &mut BTreeSet::new()).await;
    let stats = sim.until(|s| s.results_acked == 20).await;
    assert_eq!(stats.connections, 1, "no reconnects: {stats:?}");
    let (_, body) = daemon.get_json("/api/v1/tightenings?wrench_id=w2&status=nok&limit=50").await;
    assert_eq!(body["total"], 7, "{body}");
    let nok = &body["items"][0];
    assert_eq!(
        (nok["status"].as_str(), nok["torque"].as_f64(), nok["torque_status"].as_str()),
        (Some("nok"), Some(21.0), Some("low"))
    );
    assert_eq!(stats.requests.iter().filter(|mid| **mid == 60).count(), 6, "0060 asked at 7..2: {:?}", stats.requests);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_an_idle_link() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    // The controller drops a client after 1.5 s of silence; the link sends MID 9999
    // after 0.5 s of its own silence, so the link must stay up.
    let (sim, _stop) = start_sim(SimSettings { idle_timeout: Duration::from_millis(1500), ..sim_settings() }).await;
    let mut settings = fast("w3", &sim);
    settings.session.keep_alive = Duration::from_millis(500);
    daemon.app.wrenches.connect(settings).unwrap();
    let stats = tokio::time::timeout(PATIENCE, sim.until(|s| s.keep_alives >= 5)).await.expect("keep-alives");
    assert_eq!(stats.connections, 1, "the controller never dropped the idle link");
    assert_eq!(daemon.app.wrenches.status("w3").unwrap().reconnects, 0);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_96_waits_out_the_ghost_session() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (sim, _stop) = start_sim(SimSettings { ghost_session: Duration::from_millis(200), ..sim_settings() }).await;
    let mut settings = fast("w4", &sim);
    settings.busy_backoff = Duration::from_millis(400);
    daemon.app.wrenches.connect(settings).unwrap();
    link_up(&daemon, "w4", 0).await;
    let dropped = std::time::Instant::now();
    sim.drop_link();
    // The first reconnect lands in the ghost session and gets error 96; the next one,
    // at least busy_backoff later, succeeds.
    link_up(&daemon, "w4", 2).await;
    assert!(dropped.elapsed() >= Duration::from_millis(400), "waited {:?}", dropped.elapsed());
    let stats = sim.stats();
    assert_eq!((stats.refused_busy, stats.connections), (1, 2), "{stats:?}");
    assert!(daemon.shutdown().await);
}

async fn post(daemon: &Daemon, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, bytes) =
        daemon.request(Method::POST, path, Some("application/json"), body.to_string().into_bytes()).await;
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{path}: not JSON: {bytes:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_tool_control_and_release_control() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.wrenches.clear();
    let daemon = Daemon::start_with(config).await;
    let (sim, _stop) = start_sim(sim_settings()).await;
    let port = sim.addr().port();

    // Nothing connected yet.
    let (status, body) = daemon.get_json("/api/v1/wrenches/state").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = post(
        &daemon,
        "/api/v1/wrenches/connect",
        json!({"address": "127.0.0.1", "port": port, "connection_type": "serial"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = post(
        &daemon,
        "/api/v1/wrenches/connect",
        json!({"address": "127.0.0.1", "port": port, "timeout_ms": 2000, "manufacturer": "Sim", "model": "S1",
               "connection_type": "open-protocol", "connection_parameters": {"station_id": "default", "bogus": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "unknown connection parameters are named: {body}");
    assert!(body["detail"].as_str().unwrap().contains("bogus"), "{body}");
    let (status, body) = post(
        &daemon,
        "/api/v1/wrenches/connect",
        json!({"address": "127.0.0.1", "port": port, "timeout_ms": 2000, "manufacturer": "Sim", "model": "S1",
               "connection_type": "open-protocol", "connection_parameters": {"station_id": "default"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["msg"]["link_state"].as_str()), (Some("ok"), Some("connected")));
    let (status, _) = post(&daemon, "/api/v1/wrenches/connect", json!({"address": "127.0.0.1", "port": port})).await;
    assert_eq!(status, StatusCode::CONFLICT, "one link per controller");

    // Tool control: select Pset 7 and enable; the controller's refusal is a 409 naming it.
    let (status, body) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "enable", "program_nr": 7})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["msg"]["tool_enabled"].as_bool(), body["msg"]["program_nr"].as_u64()), (Some(true), Some(7)));
    assert_eq!((sim.stats().tool_enabled, sim.stats().pset), (true, 7));
    let (status, body) =
        post(&daemon, "/api/v1/wrenches/program", json!({"program_nr": 251, "program": {"select": true}})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["detail"], "the controller refused: error 02 (Pset ID not present)");
    let (status, body) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "spin"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = post(&daemon, "/api/v1/wrenches/sequence", json!({"program_nr": 7, "sequence_number": 3})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.stats().batch_size, 3);
    let (status, _) = post(&daemon, "/api/v1/wrenches/vin", json!({"vin": "SN-0042"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.stats().vin, "SN-0042");
    let (status, body) = post(&daemon, "/api/v1/wrenches/time", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(sim.stats().requests.contains(&82));

    // Release control: manual enables are refused; a release enables the tool for N OK
    // tightenings (a NOK does not count) and disables it after the last.
    let (status, _) = post(&daemon, "/api/v1/settings/release-control", json!({"release_control_enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    sim.until(|s| !s.tool_enabled).await;
    let (status, body) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "enable"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = post(&daemon, "/api/v1/wrenches/release", json!({"count": 2, "program_nr": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["msg"]["released_tightenings"], 2);
    let mut notifications = daemon.app.bus.notifications.subscribe();
    let ids: BTreeSet<u64> =
        [sim.tighten(true), sim.tighten(false), sim.tighten(true)].into_iter().map(Option::unwrap).collect();
    let id = daemon.app.wrenches.find("127.0.0.1").unwrap();
    committed(&mut notifications, &id, &ids, &mut BTreeSet::new()).await;
    sim.until(|s| !s.tool_enabled).await;
    assert_eq!(sim.tighten(true), None, "the tool is disabled after the released batch");
    let (_, body) = daemon.get_json("/api/v1/settings/torque").await;
    assert_eq!(body["msg"]["release_control_enabled"], true, "{body}");
    let (status, _, body) = daemon
        .request(Method::PUT, "/api/v1/settings/torque", Some("application/json"), br#"{"keep_alive_s": 3}"#.to_vec())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");

    // Lock wins over everything until unlocked.
    let (status, _) =
        post(&daemon, "/api/v1/settings/release-control", json!({"release_control_enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "lock"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "enable"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "unlock"})).await;
    assert_eq!((status, body["msg"]["tool_enabled"].as_bool()), (StatusCode::OK, Some(true)), "{body}");

    // Results are listed with filters; one by id.
    let (_, list) = daemon.get_json(&format!("/api/v1/tightenings?wrench_id={id}&status=ok")).await;
    assert_eq!(list["total"], 2, "{list}");
    let seq = list["items"][0]["id"].as_i64().unwrap();
    let (status, one) = daemon.get_json(&format!("/api/v1/tightenings/{seq}")).await;
    assert_eq!((status, one["program_nr"].as_u64()), (StatusCode::OK, Some(5)));
    let (status, _) = daemon.get_json("/api/v1/tightenings?status=maybe").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Discover lists ours and finds the simulator's port.
    let (_, found) = daemon.get_json(&format!("/api/v1/wrenches/discover?range=127.0.0.1-127.0.0.2&port={port}")).await;
    assert_eq!(found["msg"]["found"][0]["wrench_id"].as_str(), Some(id.as_str()), "{found}");
    let (status, _) = daemon.get_json("/api/v1/wrenches/discover?range=10.0.0.0-10.0.9.0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "bounded probe");

    // Disconnect says goodbye: the tool is disabled and MID 0003 sent.
    let (status, body) =
        post(&daemon, "/api/v1/wrenches/disconnect", json!({"address": format!("127.0.0.1:{port}")})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = sim.until(|s| s.comm_stops == 1).await;
    assert!(!stats.tool_enabled);
    let (status, _) = daemon.get_json("/api/v1/wrenches/state").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_the_configured_id_and_shutdown_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _stop) = start_sim(sim_settings()).await;
    let mut config = test_config(dir.path());
    let text = format!(
        "state_dir = \"/x\"\n[api]\nbind = \"127.0.0.1:0\"\n[inference]\nmodel_dir = \"m\"\n[stations.default]\n\
         [wrenches.bench]\nbackend = \"open-protocol\"\naddress = \"127.0.0.1\"\nport = {}\nstation = \"default\"\n",
        sim.addr().port()
    );
    config.wrenches = stationd::config::Config::from_toml_str(&text).unwrap().wrenches;
    let daemon = Daemon::start_with(config).await;
    link_up(&daemon, "bench", 0).await;
    // Disconnected over REST and connected again: the configured id and settings return.
    let (status, _) = post(&daemon, "/api/v1/wrenches/disconnect", json!({"address": "bench"})).await;
    assert_eq!(status, StatusCode::OK);
    sim.until(|s| s.comm_stops == 1).await;
    let port = sim.addr().port();
    let (status, body) = post(&daemon, "/api/v1/wrenches/connect", json!({"address": "127.0.0.1", "port": port})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["msg"]["id"].as_str(), body["msg"]["configured"].as_bool()), (Some("bench"), Some(true)));
    let (status, _) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "enable"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sim.stats().tool_enabled);
    assert!(daemon.shutdown().await);
    let stats = sim.stats();
    assert_eq!(stats.comm_stops, 2, "{stats:?}");
    assert!(!stats.tool_enabled, "safe state: tool disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_stops_answering_is_dropped_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path()).await;
    let (sim, _stop) = start_sim(sim_settings()).await;
    let mut settings = fast("w5", &sim);
    settings.session.reply_timeout = Duration::from_millis(200);
    // The link stays down for a while, so the reason it went down is still the one shown
    // when the test looks (a quick retry may meet the simulator still holding the old
    // connection, and show that refusal instead).
    settings.reconnect_min = Duration::from_secs(2);
    settings.reconnect_max = Duration::from_secs(2);
    daemon.app.wrenches.connect(settings).unwrap();
    link_up(&daemon, "w5", 0).await;
    // Replies now come later than the link waits: the request fails, the link is dropped.
    sim.set_reply_delay(Duration::from_millis(600));
    let (status, body) = post(&daemon, "/api/v1/wrenches/toggle", json!({"action": "disable", "address": "w5"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let mut watch = daemon.app.wrenches.watch("w5").unwrap();
    let down = tokio::time::timeout(PATIENCE, watch.wait_for(|s| matches!(s.link, LinkState::Down { .. })))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(matches!(&down.link, LinkState::Down { reason } if reason.contains("no answer to MID")), "{:?}", down.link);
    sim.set_reply_delay(Duration::ZERO);
    link_up(&daemon, "w5", 1).await;
    assert!(daemon.shutdown().await);
}
