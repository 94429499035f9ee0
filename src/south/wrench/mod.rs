//! Smart torque wrenches over Open Protocol: one link per controller, results stored
//! before they are acknowledged, tool control and release control.
//!
//! Layers (house rule 4): `codec` (framing, pure), `messages` (MID layouts, pure),
//! `session` (the protocol state machine, pure, virtual time), `link` (the I/O loop and
//! reconnects), and this module's `Wrenches` handle, which the API and the station use.
//! `sim` is a behavioural controller simulator for tests, the demo and `stationd
//! wrench-sim`. MIDs never leave this module.
//!
//! Boundary: the rest of the daemon sees `WrenchStatus`, `WrenchError`, `Command` and
//! `Event::TighteningRecorded`; nothing of the wire.

pub mod codec;
mod link;
pub mod messages;
pub mod session;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use link::LinkRequest;
pub use messages::ErrorCode;
pub use session::{Command, SessionConfig};

use crate::bus::{Event, TighteningSummary};
use crate::storage::Storage;
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

/// The station PC's local time as Open Protocol carries it (`YYYY-MM-DD:HH:MM:SS`, the
/// controller's wall clock, no zone): for MID 0082 and the simulator's results.
pub fn local_time_now() -> String {
    chrono::Local::now().format("%Y-%m-%d:%H:%M:%S").to_string()
}

/// One wrench link's settings, from the config or from `POST /wrenches/connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct WrenchSettings {
    pub id: String,
    pub station_id: Option<String>,
    pub address: String,
    pub port: u16,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// From the config file (kept across disconnects) or added at runtime.
    pub configured: bool,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Wait at least this long after error 96 (the controller's own link timeout).
    pub busy_backoff: Duration,
    pub set_time_on_connect: bool,
    pub session: SessionConfig,
}

impl WrenchSettings {
    /// Settings with the protocol's recommended timings.
    pub fn new(id: impl Into<String>, address: impl Into<String>, port: u16) -> WrenchSettings {
        WrenchSettings {
            id: id.into(),
            station_id: None,
            address: address.into(),
            port,
            manufacturer: None,
            model: None,
            configured: false,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(5),
            busy_backoff: Duration::from_secs(15),
            set_time_on_connect: false,
            session: SessionConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up,
    Down { reason: String },
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "connected",
            LinkState::Down { .. } => "disconnected",
        }
    }
}

/// What is known about one wrench, replaced whole on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct WrenchStatus {
    pub settings: WrenchSettings,
    pub link: LinkState,
    pub link_level_acks: bool,
    pub controller_name: Option<String>,
    pub controller_serial: Option<String>,
    pub supplier_code: Option<String>,
    pub controller_software: Option<String>,
    /// As last accepted by the controller; `None` until we commanded it.
    pub tool_enabled: Option<bool>,
    /// Locked through the API: enables are refused until unlocked.
    pub locked: bool,
    /// OK tightenings still released under release control.
    pub released: Option<u32>,
    /// MID 0022: the controller locked the tool at batch done.
    pub batch_locked: Option<bool>,
    pub pset: Option<u32>,
    pub vin: Option<String>,
    pub alarm: Option<String>,
    pub last_error: Option<String>,
    /// The newest stored tightening (its batch counter is the tool's).
    pub last: Option<TighteningSummary>,
    pub results_stored: u64,
    pub reconnects: u64,
}

impl WrenchStatus {
    fn new(settings: WrenchSettings) -> WrenchStatus {
        WrenchStatus {
            settings,
            link: LinkState::Connecting,
            link_level_acks: false,
            controller_name: None,
            controller_serial: None,
            supplier_code: None,
            controller_software: None,
            tool_enabled: None,
            locked: false,
            released: None,
            batch_locked: None,
            pset: None,
            vin: None,
            alarm: None,
            last_error: None,
            last: None,
            results_stored: 0,
            reconnects: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WrenchError {
    #[error("the wrench link is down")]
    Disconnected,
    #[error("the controller refused: {code}")]
    Nak { code: ErrorCode },
    /// Refused by stationd's own policy (lock, release control).
    #[error("{0}")]
    Refused(String),
    #[error("no wrench {0:?}")]
    Unknown(String),
    #[error("a wrench at {0} is already connected")]
    Duplicate(String),
    #[error("the wrench service has stopped")]
    Stopped,
}

impl WrenchError {
    /// Worth trying again later without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WrenchError::Disconnected)
    }
}

/// One running link as the handle sees it.
struct LinkHandle {
    status: watch::Receiver<WrenchStatus>,
    requests: mpsc::Sender<LinkRequest>,
    /// Cancelling it makes the link disable the tool, send MID 0003 and end.
    token: CancellationToken,
}

/// Cheap to clone: the API, OPC-UA and (later) the assembly sequencer hold one.
#[derive(Clone)]
pub struct Wrenches {
    /// Link futures for the service task to run.
    runner: mpsc::Sender<BoxFuture<'static, ()>>,
    /// A tiny leaf map, never held across an await.
    links: Arc<Mutex<BTreeMap<String, LinkHandle>>>,
    release_control: Arc<watch::Sender<bool>>,
    /// Parent of every link's token; cancelled when the service stops.
    root: CancellationToken,
    /// The config file's wrenches, so that reconnecting one over REST after a disconnect
    /// brings back its id (the key its results are stored under) and settings.
    configured: Arc<Vec<WrenchSettings>>,
    storage: Storage,
    events: mpsc::Sender<Event>,
}

const RELEASE_CONTROL_KEY: &str = "release_control_enabled";

impl Wrenches {
    /// Starts a link. Fails if the id or the address is taken.
    pub fn connect(&self, settings: WrenchSettings) -> Result<(), WrenchError> {
        let mut links = self.links.lock().expect("wrench map lock");
        let endpoint = format!("{}:{}", settings.address, settings.port);
        if links.contains_key(&settings.id) {
            return Err(WrenchError::Duplicate(settings.id.clone()));
        }
        if links.values().any(|l| {
            let s = &l.status.borrow().settings;
            s.address == settings.address && s.port == settings.port
        }) {
            return Err(WrenchError::Duplicate(endpoint));
        }
        let (status_tx, status_rx) = watch::channel(WrenchStatus::new(settings.clone()));
        let (request_tx, request_rx) = mpsc::channel(32);
        let token = self.root.child_token();
        let ctx = link::LinkContext {
            storage: self.storage.clone(),
            events: self.events.clone(),
            status: Arc::new(status_tx),
            release_control: self.release_control.subscribe(),
        };
        let id = settings.id.clone();
        let future = link::run(settings, ctx, request_rx, token.clone());
        self.runner.try_send(Box::pin(future)).map_err(|_| WrenchError::Stopped)?;
        links.insert(id, LinkHandle { status: status_rx, requests: request_tx, token });
        Ok(())
    }

    /// Ends a link (tool disabled, MID 0003) and forgets it.
    pub fn disconnect(&self, id: &str) -> Result<(), WrenchError> {
        let handle = self.links.lock().expect("wrench map lock").remove(id);
        match handle {
            Some(handle) => {
                handle.token.cancel();
                Ok(())
            }
            None => Err(WrenchError::Unknown(id.to_owned())),
        }
    }

    pub fn statuses(&self) -> Vec<WrenchStatus> {
        self.links.lock().expect("wrench map lock").values().map(|l| l.status.borrow().clone()).collect()
    }

    pub fn status(&self, id: &str) -> Option<WrenchStatus> {
        self.links.lock().expect("wrench map lock").get(id).map(|l| l.status.borrow().clone())
    }

    /// A receiver that sees every change of one wrench's status (OPC-UA, tests).
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<WrenchStatus>> {
        self.links.lock().expect("wrench map lock").get(id).map(|l| l.status.clone())
    }

    /// The wrench with this id, or at this address (`host` or `host:port`).
    pub fn find(&self, key: &str) -> Option<String> {
        let links = self.links.lock().expect("wrench map lock");
        if links.contains_key(key) {
            return Some(key.to_owned());
        }
        links
            .iter()
            .find(|(_, l)| {
                let s = &l.status.borrow().settings;
                s.address == key || format!("{}:{}", s.address, s.port) == key
            })
            .map(|(id, _)| id.clone())
    }

    /// The configured wrench at this address, if any.
    pub fn configured_at(&self, address: &str, port: u16) -> Option<WrenchSettings> {
        self.configured.iter().find(|s| s.address == address && s.port == port).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.links.lock().expect("wrench map lock").keys().cloned().collect()
    }

    pub async fn command(&self, id: &str, command: Command) -> Result<(), WrenchError> {
        self.ask(id, |reply| LinkRequest::Command(command, reply)).await
    }

    /// Releases the tool for `count` OK tightenings (selecting `pset` first).
    pub async fn release(&self, id: &str, pset: Option<u32>, count: u32) -> Result<(), WrenchError> {
        self.ask(id, |reply| LinkRequest::Release { pset, count, reply }).await
    }

    pub async fn lock(&self, id: &str, locked: bool) -> Result<(), WrenchError> {
        self.ask(id, |reply| LinkRequest::Lock(locked, reply)).await
    }

    pub async fn clear(&self, id: &str) -> Result<(), WrenchError> {
        let sender = self.sender(id)?;
        sender.send(LinkRequest::Clear).await.map_err(|_| WrenchError::Stopped)
    }

    pub fn release_control(&self) -> bool {
        *self.release_control.borrow()
    }

    /// Switches release control and stores the choice, so it survives a restart.
    pub async fn set_release_control(&self, enabled: bool) -> Result<(), crate::storage::StorageError> {
        self.storage
            .call(move |db| db.put_setting(RELEASE_CONTROL_KEY, if enabled { "true" } else { "false" }))
            .await?;
        self.release_control.send_replace(enabled);
        Ok(())
    }

    fn sender(&self, id: &str) -> Result<mpsc::Sender<LinkRequest>, WrenchError> {
        let links = self.links.lock().expect("wrench map lock");
        links.get(id).map(|l| l.requests.clone()).ok_or_else(|| WrenchError::Unknown(id.to_owned()))
    }

    async fn ask(
        &self,
        id: &str,
        request: impl FnOnce(oneshot::Sender<Result<(), WrenchError>>) -> LinkRequest,
    ) -> Result<(), WrenchError> {
        let sender = self.sender(id)?;
        let (reply, answer) = oneshot::channel();
        sender.send(request(reply)).await.map_err(|_| WrenchError::Stopped)?;
        answer.await.map_err(|_| WrenchError::Disconnected)?
    }
}

/// Starts the wrench service: the configured links now, others via `Wrenches::connect`.
/// Readiness is Degraded while a configured wrench's link is down.
pub fn spawn(
    supervisor: &mut Supervisor,
    configured: Vec<WrenchSettings>,
    storage: Storage,
    events: mpsc::Sender<Event>,
) -> Wrenches {
    let (runner_tx, runner_rx) = mpsc::channel(64);
    let wrenches = Wrenches {
        runner: runner_tx,
        links: Arc::new(Mutex::new(BTreeMap::new())),
        release_control: Arc::new(watch::channel(false).0),
        root: CancellationToken::new(),
        configured: Arc::new(configured.clone()),
        storage,
        events,
    };
    // Registered now so that every front-end sees the configured wrenches from the start;
    // their links first run once the service has loaded the release-control setting.
    let mut failed = None;
    for settings in configured {
        if let Err(err) = wrenches.connect(settings) {
            failed = Some(err.to_string());
        }
    }
    let service = wrenches.clone();
    supervisor.spawn("wrenches", Phase::Devices, move |ctx| async move {
        if let Some(err) = failed {
            return Err(ServiceError::new(err));
        }
        serve(service, runner_rx, ctx).await
    });
    wrenches
}

async fn serve(
    wrenches: Wrenches,
    mut runner: mpsc::Receiver<BoxFuture<'static, ()>>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let stored = wrenches.storage.call(|db| db.setting(RELEASE_CONTROL_KEY)).await.map_err(ServiceError::new)?;
    wrenches.release_control.send_replace(stored.as_deref() == Some("true"));
    ctx.set_ready();
    let mut running = FuturesUnordered::new();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let mut degraded = false;
    loop {
        tokio::select! {
            Some(link) = runner.recv() => running.push(link),
            Some(()) = running.next(), if !running.is_empty() => {}
            _ = health.tick() => {
                let down: Vec<String> = wrenches
                    .statuses()
                    .into_iter()
                    .filter(|s| s.settings.configured && matches!(s.link, LinkState::Down { .. }))
                    .map(|s| format!("{}: {}", s.settings.id, match &s.link { LinkState::Down { reason } => reason.as_str(), _ => "" }))
                    .collect();
                if down.is_empty() && degraded {
                    degraded = false;
                    ctx.set_ready();
                } else if !down.is_empty() {
                    degraded = true;
                    ctx.set_degraded(format!("wrench link down ({})", down.join("; ")));
                }
            }
            () = ctx.token.cancelled() => break,
        }
    }
    // Every link disables its tool and says goodbye (MID 0003) within its grace time.
    wrenches.root.cancel();
    runner.close();
    while let Some(link) = runner.recv().await {
        running.push(link);
    }
    while running.next().await.is_some() {}
    tracing::info!("wrench links closed");
    Ok(())
}
