//! OPC-UA server (async-opcua) for PLCs and SCADA: one folder per station with its live
//! values, one per configured wrench (link state and last tightening), a SystemStatus
//! object, and a `Trigger(station_id, part_id)` method.
//!
//! Values come from the core's snapshots: every snapshot change is written with the node
//! manager's `set_values`, which notifies data-change subscriptions at their next publishing
//! interval. NodeIds are stable strings in one namespace, listed in docs/opcua.md; this is
//! the only module that knows them.
//!
//! Security: secure endpoints only (Basic256Sha256, Aes128_Sha256_RsaOaep,
//! Aes256_Sha256_RsaPss; Sign and SignAndEncrypt) with UserName tokens, unless the config
//! allows anonymous logins or the None policy. The server certificate is created on first
//! start under `<state_dir>/pki`.

mod address_space;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, ServerUserToken};
use opcua::types::MessageSecurityMode;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::bus::{Notification, Snapshot};
use crate::config::OpcuaConfig;
use crate::cycle::Inspector;
use crate::south::wrench::Wrenches;
use crate::supervisor::{Phase, Readiness, ServiceContext, ServiceError, Supervisor};

/// The namespace of every stationd node.
pub const NAMESPACE_URI: &str = "urn:stationd:station";
pub const APPLICATION_URI: &str = "urn:stationd";

/// What the REST API reports (`GET /api/v1/opcua/status`).
#[derive(Clone)]
pub struct OpcuaHandle {
    pub endpoint: String,
    pub nodes: Vec<String>,
    pub running: watch::Receiver<bool>,
}

pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

const SECURE_POLICIES: [(&str, SecurityPolicy); 3] = [
    ("basic256sha256", SecurityPolicy::Basic256Sha256),
    ("aes128sha256rsaoaep", SecurityPolicy::Aes128Sha256RsaOaep),
    ("aes256sha256rsapss", SecurityPolicy::Aes256Sha256RsaPss),
];

#[allow(clippy::too_many_arguments)]
/// What the OPC-UA server shows and serves.
pub struct Sources {
    pub station_ids: Vec<String>,
    pub inspector: Inspector,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub readiness: Readiness,
    pub wrenches: Wrenches,
    /// Tightenings are written the moment they are committed.
    pub notifications: broadcast::Receiver<Notification>,
}

pub fn spawn(
    supervisor: &mut Supervisor,
    listener: TcpListener,
    config: OpcuaConfig,
    state_dir: &Path,
    sources: Sources,
) -> OpcuaHandle {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(config.bind.port());
    let endpoint = format!("opc.tcp://{}:{}{}", config.host, port, config.path);
    let nodes = address_space::node_list(&sources.station_ids, &sources.wrenches.ids());
    let (running_tx, running_rx) = watch::channel(false);
    let pki_dir = state_dir.join("pki");
    supervisor
        .spawn("opcua", Phase::Intake, move |ctx| serve(listener, config, port, pki_dir, sources, running_tx, ctx));
    OpcuaHandle { endpoint, nodes, running: running_rx }
}

fn builder(config: &OpcuaConfig, port: u16, pki_dir: &Path, ctx: &ServiceContext) -> ServerBuilder {
    let mut builder = ServerBuilder::new()
        .application_name("stationd")
        .application_uri(APPLICATION_URI)
        .product_uri(APPLICATION_URI)
        .create_sample_keypair(true)
        .certificate_path("own/cert.der")
        .private_key_path("private/private.pem")
        .pki_dir(pki_dir)
        .trust_client_certs(config.trust_all_client_certs)
        .host(config.host.clone())
        .port(port)
        .discovery_urls(vec![config.path.clone()])
        .token(ctx.token.child_token())
        .with_node_manager(simple_node_manager(
            opcua::server::diagnostics::NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_owned(),
                ..Default::default()
            },
            "stationd",
        ));
    let mut user_tokens: Vec<String> = Vec::new();
    for (name, password) in &config.users {
        let id = format!("user-{name}");
        builder = builder.add_user_token(
            id.clone(),
            ServerUserToken { user: name.clone(), pass: Some(password.clone()), ..Default::default() },
        );
        user_tokens.push(id);
    }
    if config.allow_anonymous {
        user_tokens.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
    }
    for (name, policy) in SECURE_POLICIES {
        for (mode_name, mode) in
            [("sign", MessageSecurityMode::Sign), ("sign_encrypt", MessageSecurityMode::SignAndEncrypt)]
        {
            builder = builder.add_endpoint(
                format!("{name}_{mode_name}"),
                ServerEndpoint::new(config.path.clone(), policy, mode, &user_tokens),
            );
        }
    }
    if config.allow_insecure {
        builder = builder.add_endpoint("none", ServerEndpoint::new_none(config.path.clone(), &user_tokens));
    }
    builder
}

async fn serve(
    listener: TcpListener,
    config: OpcuaConfig,
    port: u16,
    pki_dir: std::path::PathBuf,
    sources: Sources,
    running: watch::Sender<bool>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let Sources { station_ids, inspector, mut snapshots, readiness, wrenches, mut notifications } = sources;
    let (server, handle) = builder(&config, port, &pki_dir, &ctx).build().map_err(ServiceError::new)?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or_else(|| ServiceError::new("the stationd node manager is missing"))?;
    let ns = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or_else(|| ServiceError::new("the stationd namespace is not registered"))?;
    let wrench_ids = wrenches.ids();
    let mut nodes = address_space::build(&manager, ns, &station_ids, &wrench_ids, &readiness.report());
    address_space::add_trigger(&manager, ns, inspector);
    let subscriptions = handle.subscriptions().clone();

    tracing::info!(endpoint = %format!("opc.tcp://{}:{}{}", config.host, port, config.path), "OPC-UA listening");
    let serving = server.run_with(listener);
    tokio::pin!(serving);
    running.send_replace(true);
    ctx.set_ready();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_status: BTreeMap<String, String> = BTreeMap::new();
    let outcome = loop {
        tokio::select! {
            result = &mut serving => break result,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    continue;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                nodes.write_snapshot(&manager, &subscriptions, &snapshot);
            }
            notification = notifications.recv() => match notification {
                Ok(Notification::TighteningCompleted(t)) => {
                    if let Some(status) = wrenches.status(&t.wrench_id) {
                        nodes.write_wrench(&manager, &subscriptions, &status);
                    }
                }
                Ok(Notification::Coaching(status)) => nodes.write_coaching(&manager, &subscriptions, &status),
                _ => {}
            },
            _ = status_tick.tick() => {
                for status in wrenches.statuses() {
                    nodes.write_wrench(&manager, &subscriptions, &status);
                }
                let report = readiness.report();
                let status: BTreeMap<String, String> =
                    report.iter().map(|(name, state)| (name.clone(), address_space::state_text(state))).collect();
                if status != last_status {
                    nodes.write_status(&manager, &subscriptions, &status, readiness.all_ready());
                    last_status = status;
                }
            }
        }
    };
    running.send_replace(false);
    outcome.map_err(ServiceError::new)
}
