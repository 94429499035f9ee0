//! OPC-UA with a real client (async-opcua): browse, read every node, a data-change
//! subscription, the Trigger method; and the secure endpoint: trust list, UserName
//! token, wrong password and anonymous refused.

use std::sync::Arc;
use std::time::Duration;

use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, CallMethodRequest, MessageSecurityMode,
    MonitoredItemCreateRequest, NodeClassMask, NodeId, ReadValueId, ReferenceTypeId, StatusCode, TimestampsToReturn,
    UserTokenPolicy, Variant,
};
use stationd::north::opcua::NAMESPACE_URI;
use tokio::sync::mpsc;

use crate::support::{Daemon, test_config};

const PATIENCE: Duration = Duration::from_secs(30);
const VARIABLES: [&str; 10] = [
    "LastDecision",
    "LastConfidence",
    "ObjectsFound",
    "CycleTimeMs",
    "PassCount",
    "FailCount",
    "UncertainCount",
    "PassRate1h",
    "LastInspectionTime",
    "LastInspectionId",
];

fn endpoint(daemon: &Daemon) -> String {
    format!("opc.tcp://127.0.0.1:{}/stationd", daemon.app.opcua_addr.expect("OPC-UA enabled").port())
}

async fn connect(
    url: &str,
    pki: &std::path::Path,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    token_policy: UserTokenPolicy,
    identity: IdentityToken,
) -> Result<Arc<Session>, String> {
    let mut client = ClientBuilder::new()
        .application_name("stationd test client")
        .application_uri("urn:stationd:test-client")
        .product_uri("urn:stationd:test-client")
        .pki_dir(pki)
        .create_sample_keypair(true)
        .trust_server_certs(true)
        .session_retry_limit(0)
        .client()
        .map_err(|e| format!("{e:?}"))?;
    let (session, event_loop) = client
        .connect_to_matching_endpoint((url, policy.to_str(), mode, token_policy), identity)
        .await
        .map_err(|e| e.to_string())?;
    // A refused connection ends the event loop with the server's status code; a good one
    // leaves it running (the handle is detached and ends with the session).
    let mut event_loop = event_loop.spawn();
    let outcome = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            connected = session.wait_for_connection() => {
                if connected { Ok(()) } else { Err("session did not connect".to_owned()) }
            }
            status = &mut event_loop => Err(format!("{}", status.map_err(|e| e.to_string())?)),
        }
    })
    .await;
    outcome.map_err(|_| "no answer from the server".to_owned())??;
    Ok(session)
}

async fn read(session: &Session, ns: u16, path: &str) -> Variant {
    let values =
        session.read(&[ReadValueId::from(NodeId::new(ns, path))], TimestampsToReturn::Both, 0.0).await.unwrap();
    let value = &values[0];
    assert!(value.status.is_none_or(|s| s.is_good()), "{path}: {:?}", value.status);
    value.value.clone().unwrap_or(Variant::Empty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browse_read_subscribe_and_trigger() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let client_pki = tempfile::tempdir().unwrap();
    let session = connect(
        &endpoint(&daemon),
        client_pki.path(),
        SecurityPolicy::None,
        MessageSecurityMode::None,
        UserTokenPolicy::anonymous(),
        IdentityToken::Anonymous,
    )
    .await
    .expect("anonymous connect on the development endpoint");
    let ns = session.get_namespace_index(NAMESPACE_URI).await.expect("stationd namespace");

    // Browse: the station folder and the Trigger method under Stations.
    let browse = BrowseDescription {
        node_id: NodeId::new(ns, "Stations"),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: NodeClassMask::all().bits(),
        result_mask: BrowseResultMask::All as u32,
    };
    let result = session.browse(&[browse], 100, None).await.unwrap();
    let names: Vec<String> =
        result[0].references.iter().flatten().map(|r| r.browse_name.name.as_ref().to_owned()).collect();
    assert!(names.contains(&"default".to_owned()) && names.contains(&"Trigger".to_owned()), "{names:?}");

    // Every node reads, with its documented type.
    for name in VARIABLES {
        read(&session, ns, &format!("Stations/default/{name}")).await;
    }
    assert_eq!(read(&session, ns, "Stations/default/PassCount").await, Variant::UInt32(0));
    assert_eq!(read(&session, ns, "SystemStatus/Ready").await, Variant::Boolean(true));
    assert_eq!(read(&session, ns, "SystemStatus/storage").await, Variant::from("ready"));

    // A data-change subscription on the last inspection id.
    let (tx, mut changes) = mpsc::unbounded_channel();
    let subscription = session
        .create_subscription(
            Duration::from_millis(100),
            100,
            20,
            0,
            0,
            true,
            DataChangeCallback::new(move |value, item| {
                let _ = tx.send((item.item_to_monitor().node_id.clone(), value.value.clone()));
            }),
        )
        .await
        .unwrap();
    let watched = NodeId::new(ns, "Stations/default/LastInspectionId");
    let link_state = NodeId::new(ns, "Wrenches/wrench-sim/LinkState");
    let items: Vec<MonitoredItemCreateRequest> = vec![watched.clone().into(), link_state.clone().into()];
    session.create_monitored_items(subscription, TimestampsToReturn::Both, items).await.unwrap();

    // Trigger runs an inspection with the station's camera (sim: first frame is good).
    let call = CallMethodRequest {
        object_id: NodeId::new(ns, "Stations"),
        method_id: NodeId::new(ns, "Stations/Trigger"),
        input_arguments: Some(vec![Variant::from("default"), Variant::from("OPC-0001")]),
    };
    let result = session.call_one(call).await.unwrap();
    assert!(result.status_code.is_good(), "{}", result.status_code);
    let outputs = result.output_arguments.unwrap();
    let (Variant::String(id), Variant::String(decision)) = (&outputs[0], &outputs[1]) else { panic!("{outputs:?}") };
    let id = id.as_ref().to_owned();
    assert_eq!(decision.as_ref(), "pass");
    let (_, record) = daemon.get_json(&format!("/api/v1/inspections/{id}")).await;
    assert_eq!(record["part_id"], "OPC-0001");

    // The subscription reports the new id, and the simulated wrench's link coming up.
    tokio::time::timeout(PATIENCE, async {
        let (mut id_seen, mut link_seen) = (false, false);
        while !(id_seen && link_seen) {
            let (node, value) = changes.recv().await.unwrap();
            id_seen |= node == watched && value == Some(Variant::from(id.as_str()));
            link_seen |= node == link_state && value == Some(Variant::from("connected"));
        }
    })
    .await
    .expect("data changes delivered");
    assert_eq!(read(&session, ns, "Wrenches/wrench-sim/LastStatus").await, Variant::from(""));
    assert_eq!(read(&session, ns, "Wrenches/wrench-sim/LastTorque").await, Variant::Double(0.0));
    assert_eq!(read(&session, ns, "Stations/default/PassCount").await, Variant::UInt32(1));
    assert_eq!(read(&session, ns, "Stations/default/LastDecision").await, Variant::from("pass"));
    assert_eq!(read(&session, ns, "Stations/default/PassRate1h").await, Variant::Double(100.0));
    // The coaching state, with no unit being built.
    assert_eq!(read(&session, ns, "Assembly/State").await, Variant::from("idle"));
    assert_eq!(read(&session, ns, "Assembly/StepIndex").await, Variant::Int32(-1));
    assert_eq!(read(&session, ns, "Assembly/LastOutcome").await, Variant::from(""));

    // A bad station is a bad argument, not a crash.
    let call = CallMethodRequest {
        object_id: NodeId::new(ns, "Stations"),
        method_id: NodeId::new(ns, "Stations/Trigger"),
        input_arguments: Some(vec![Variant::from("line-9"), Variant::from("")]),
    };
    let result = session.call_one(call).await.unwrap();
    assert_eq!(result.status_code, StatusCode::BadInvalidArgument);

    let (_, status) = daemon.get_json("/api/v1/opcua/status").await;
    assert_eq!((status["enabled"].as_bool(), status["running"].as_bool()), (Some(true), Some(true)));
    assert_eq!(
        status["nodes"],
        serde_json::json!(["Stations/default", "Wrenches/wrench-sim", "Assembly", "SystemStatus"])
    );
    let _ = session.disconnect().await;
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_endpoint_with_trust_list_and_user_names() {
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(state.path());
    let secure = "state_dir = \"/x\"\n[api]\nbind = \"127.0.0.1:0\"\n[inference]\nmodel_dir = \"m\"\n[stations.default]\n\
                  [opcua]\nenabled = true\nbind = \"127.0.0.1:0\"\n[opcua.users.scada]\npassword = \"correct-horse\"\n";
    config.opcua = stationd::config::Config::from_toml_str(secure).unwrap().opcua;
    let daemon = Daemon::start_with(config).await;
    let url = endpoint(&daemon);
    let client_pki = tempfile::tempdir().unwrap();
    let user = |password: &str| IdentityToken::new_user_name("scada", password.to_owned());
    let policy = SecurityPolicy::Basic256Sha256;
    let mode = MessageSecurityMode::SignAndEncrypt;
    let token_policy = || UserTokenPolicy { token_type: opcua::types::UserTokenType::UserName, ..Default::default() };

    // An untrusted client certificate is refused and lands in rejected/.
    let refused = connect(&url, client_pki.path(), policy, mode, token_policy(), user("correct-horse")).await;
    assert_eq!(refused.err().as_deref(), Some("BadCertificateUntrusted"));
    let rejected = state.path().join("pki/rejected");
    let rejected_files: Vec<_> = std::fs::read_dir(&rejected).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(rejected_files.len(), 1, "{rejected_files:?}");

    // Trusting it (moving it to trusted/, as docs/opcua.md says) lets it in, no restart.
    let trusted = state.path().join("pki/trusted").join(rejected_files[0].file_name().unwrap());
    std::fs::rename(&rejected_files[0], &trusted).unwrap();
    let session = connect(&url, client_pki.path(), policy, mode, token_policy(), user("correct-horse"))
        .await
        .expect("trusted client with the right password connects");
    let ns = session.get_namespace_index(NAMESPACE_URI).await.unwrap();
    assert_eq!(read(&session, ns, "Stations/default/PassCount").await, Variant::UInt32(0));
    let _ = session.disconnect().await;

    let wrong = connect(&url, client_pki.path(), policy, mode, token_policy(), user("wrong-horse")).await;
    assert_eq!(wrong.err().as_deref(), Some("BadIdentityTokenRejected"), "a wrong password must be refused");
    let anonymous =
        connect(&url, client_pki.path(), policy, mode, UserTokenPolicy::anonymous(), IdentityToken::Anonymous).await;
    assert!(anonymous.is_err(), "anonymous is off by default");
    let insecure = connect(
        &url,
        client_pki.path(),
        SecurityPolicy::None,
        MessageSecurityMode::None,
        token_policy(),
        user("correct-horse"),
    )
    .await;
    assert!(insecure.is_err(), "no SecurityPolicy None endpoint by default");
    assert!(daemon.shutdown().await);
}
