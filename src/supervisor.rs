//! Named services with cancellation, readiness and a phased, deadline-bounded shutdown.
//!
//! Architecture Invariant: this is the only module that spawns long-lived tasks or
//! threads (`clippy.toml` bans `tokio::spawn` and `std::thread::spawn` elsewhere). Every
//! service belongs to a [`Phase`]; shutdown cancels the phases in order and waits for
//! each to drain before the next, so that the API stops taking work before the in-flight
//! cycle finishes, and storage flushes last.
//!
//! Restart policy: a service that returns an error or panics while not asked to stop
//! takes the process down with a failure exit, after a clean drain of the others.
//! systemd's `Restart=on-failure` then restarts the whole daemon, which re-opens devices
//! from a known state. Per-service restarts come with the device adapters that need them.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shutdown order. Services of an earlier phase are stopped and drained first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// What brings work in: REST, Modbus, OPC-UA, GPIO triggers (station-io), pipelines.
    Intake,
    /// Devices go to their safe state: cameras close, GPIO outputs go safe, wrench tools
    /// are disabled.
    Devices,
    /// The core finishes the events already queued.
    Core,
    Inference,
    /// Publishers get their in-flight message acknowledged, say "offline" and disconnect.
    Publish,
    /// Storage commits what is queued, checkpoints the WAL and closes.
    Storage,
}

impl Phase {
    const ORDER: [Phase; 6] =
        [Phase::Intake, Phase::Devices, Phase::Core, Phase::Inference, Phase::Publish, Phase::Storage];
}

/// Why a service stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

impl ServiceError {
    pub fn new(err: impl std::fmt::Display) -> ServiceError {
        ServiceError(err.to_string())
    }
}

/// What a service says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Starting,
    Ready,
    /// Up, but cannot do its job (a camera that will not open, a model that will not
    /// load). The daemon keeps running so records and health stay reachable; `/ready`
    /// answers 503 with the reason.
    Degraded(String),
}

/// Handed to each service: its cancellation token and its readiness state.
pub struct ServiceContext {
    pub name: String,
    /// Cancelled when the service's shutdown phase begins. Services stop taking new work
    /// when it fires and finish what they hold.
    pub token: CancellationToken,
    /// Set by the service as it starts, recovers or degrades.
    state: watch::Sender<ServiceState>,
}

impl ServiceContext {
    pub fn set_ready(&self) {
        self.state.send_replace(ServiceState::Ready);
    }

    pub fn set_degraded(&self, reason: impl Into<String>) {
        self.state.send_replace(ServiceState::Degraded(reason.into()));
    }

    /// A handle that reports this service's state from elsewhere (the inference service
    /// turns ready when a model is activated through the API after a failed start).
    pub fn reporter(&self) -> StateReporter {
        StateReporter(self.state.clone())
    }
}

/// Sets one service's readiness; see [`ServiceContext::reporter`].
#[derive(Clone)]
pub struct StateReporter(watch::Sender<ServiceState>);

impl StateReporter {
    pub fn set_ready(&self) {
        self.0.send_replace(ServiceState::Ready);
    }
}

struct Service {
    name: String,
    phase: Phase,
    token: CancellationToken,
    /// Cancelled by the service's task when it has ended, whatever the reason.
    exited: CancellationToken,
}

/// Every service's state. Cheap to clone; shared with `/ready` and sd_notify.
#[derive(Clone, Default)]
pub struct Readiness {
    // A leaf cache: locked briefly to list or register, never across an await.
    services: Arc<Mutex<Vec<ServiceReadiness>>>,
}

/// A service's name and its state.
type ServiceReadiness = (String, watch::Receiver<ServiceState>);

impl Readiness {
    pub fn report(&self) -> Vec<(String, ServiceState)> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.iter().map(|(name, rx)| (name.clone(), rx.borrow().clone())).collect()
    }

    pub fn all_ready(&self) -> bool {
        self.report().iter().all(|(_, state)| *state == ServiceState::Ready)
    }

    /// The degraded services and why, by name.
    pub fn degraded(&self) -> BTreeMap<String, String> {
        self.report()
            .into_iter()
            .filter_map(|(name, state)| match state {
                ServiceState::Degraded(reason) => Some((name, reason)),
                _ => None,
            })
            .collect()
    }

    /// Resolves at the next change of any service's state (a service that has ended no
    /// longer changes).
    pub async fn changed(&self) {
        let mut receivers: Vec<watch::Receiver<ServiceState>> = {
            let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
            services.iter().map(|(_, rx)| rx.clone()).collect()
        };
        let waits = receivers.iter_mut().map(|rx| {
            rx.borrow_and_update();
            Box::pin(async move {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            std::future::pending::<()>().await;
        }
        futures_util::future::select_all(waits).await;
    }

    /// Resolves when every service is ready.
    pub async fn wait_all_ready(&self) {
        self.wait_all(|state| *state == ServiceState::Ready).await;
    }

    /// Resolves when no service is still starting: start-up is over, whether every
    /// service made it or some are degraded. This is when systemd hears READY=1.
    pub async fn wait_all_settled(&self) {
        self.wait_all(|state| *state != ServiceState::Starting).await;
    }

    async fn wait_all(&self, done: impl Fn(&ServiceState) -> bool) {
        let receivers: Vec<_> = {
            let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
            services.iter().map(|(_, rx)| rx.clone()).collect()
        };
        for mut rx in receivers {
            // An error means the service ended first; the failure path shuts down.
            if rx.wait_for(&done).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

pub struct Supervisor {
    services: Vec<Service>,
    /// Tracks every service task (threads are tracked through a waiter task).
    tracker: TaskTracker,
    readiness: Readiness,
    /// Cancelled when a service fails; `app::run` then shuts down with a failure exit.
    failed: CancellationToken,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            services: Vec::new(),
            tracker: TaskTracker::new(),
            readiness: Readiness::default(),
            failed: CancellationToken::new(),
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Fires when any service failed.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    fn register(&mut self, name: String, phase: Phase) -> (ServiceContext, Exit) {
        let token = CancellationToken::new();
        let exited = CancellationToken::new();
        let (state_tx, state_rx) = watch::channel(ServiceState::Starting);
        self.readiness.services.lock().unwrap_or_else(|e| e.into_inner()).push((name.clone(), state_rx));
        self.services.push(Service { name: name.clone(), phase, token: token.clone(), exited: exited.clone() });
        let exit = Exit { name: name.clone(), token: token.clone(), exited, failed: self.failed.clone() };
        (ServiceContext { name, token, state: state_tx }, exit)
    }

    /// Runs an async service on the runtime.
    pub fn spawn<F, Fut>(&mut self, name: impl Into<String>, phase: Phase, service: F)
    where
        F: FnOnce(ServiceContext) -> Fut,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let (ctx, exit) = self.register(name.into(), phase);
        let fut = service(ctx);
        self.tracker.spawn(async move {
            let outcome = AssertUnwindSafe(fut).catch_unwind().await;
            exit.report(outcome.map_err(panic_message));
        });
    }

    /// Runs a blocking service on its own OS thread. `stop` is awaited when the service's
    /// phase begins; it must make the thread return (e.g. by queueing a stop message
    /// behind the work already queued).
    pub fn spawn_thread<F, S>(&mut self, name: impl Into<String>, phase: Phase, service: F, stop: S)
    where
        F: FnOnce(ServiceContext) -> Result<(), ServiceError> + Send + 'static,
        S: Future<Output = ()> + Send + 'static,
    {
        let (ctx, exit) = self.register(name.into(), phase);
        let (done_tx, mut done_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new().name(exit.name.clone()).spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| service(ctx)));
            let _ = done_tx.send(outcome.map_err(panic_message));
        });
        if let Err(err) = spawned {
            exit.report(Ok(Err(ServiceError::new(format!("cannot start thread: {err}")))));
            return;
        }
        self.tracker.spawn(async move {
            let outcome = tokio::select! {
                outcome = &mut done_rx => outcome,
                () = exit.token.cancelled() => {
                    stop.await;
                    done_rx.await
                }
            };
            exit.report(outcome.unwrap_or_else(|_| Err("thread vanished".to_owned())));
        });
    }

    /// Stops every service, phase by phase, within `deadline`. Returns false when some
    /// phase did not drain in time (its tasks are then abandoned to the runtime's drop).
    pub async fn shutdown(self, deadline: Duration) -> bool {
        let started = Instant::now();
        let end = started + deadline;
        self.tracker.close();
        let mut clean = true;
        for phase in Phase::ORDER {
            let names: Vec<&str> = self.services.iter().filter(|s| s.phase == phase).map(|s| s.name.as_str()).collect();
            if names.is_empty() {
                continue;
            }
            tracing::info!(?phase, services = ?names, "shutdown phase");
            for service in self.services.iter().filter(|s| s.phase == phase) {
                service.token.cancel();
            }
            // Storage always gets a moment to checkpoint, even after an overrun.
            let phase_end = if phase == Phase::Storage { end.max(Instant::now() + STORAGE_GRACE) } else { end };
            for service in self.services.iter().filter(|s| s.phase == phase) {
                if tokio::time::timeout_at(phase_end, service.exited.cancelled()).await.is_err() {
                    tracing::error!(?phase, service = service.name, "shutdown phase overran the deadline");
                    clean = false;
                }
            }
        }
        if clean {
            // Every service reported its exit; the tracked waiter tasks end right after.
            let _ = tokio::time::timeout_at(end.max(Instant::now() + STORAGE_GRACE), self.tracker.wait()).await;
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, clean, "shutdown complete");
        clean
    }
}

/// Storage's minimum time to flush, granted even when earlier phases used the deadline up.
const STORAGE_GRACE: Duration = Duration::from_secs(1);

/// How a service's task reports its end.
struct Exit {
    name: String,
    token: CancellationToken,
    exited: CancellationToken,
    failed: CancellationToken,
}

impl Exit {
    fn report(&self, outcome: Result<Result<(), ServiceError>, String>) {
        let name = self.name.as_str();
        match outcome {
            Ok(Ok(())) if self.token.is_cancelled() => tracing::info!(service = name, "service stopped"),
            Ok(Ok(())) => {
                tracing::error!(service = name, "service ended without being asked to");
                self.failed.cancel();
            }
            Ok(Err(err)) => {
                tracing::error!(service = name, cause = %err, "service failed");
                self.failed.cancel();
            }
            Err(panic) => {
                tracing::error!(service = name, panic = %panic, "service panicked");
                self.failed.cancel();
            }
        }
        self.exited.cancel();
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(log: &Arc<Mutex<Vec<String>>>, name: &str) -> impl Fn(&str) + Send + 'static {
        let (log, name) = (log.clone(), name.to_owned());
        move |what: &str| log.lock().unwrap().push(format!("{name} {what}"))
    }

    // Real time: a paused clock would auto-advance past the deadline while the runtime
    // waits on the OS thread.
    #[tokio::test]
    async fn phases_stop_in_order_and_threads_get_their_stop() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut supervisor = Supervisor::new();
        // Registered out of order on purpose.
        for (name, phase) in [("storage", Phase::Storage), ("api", Phase::Intake), ("core", Phase::Core)] {
            let record = recorder(&log, name);
            supervisor.spawn(name, phase, move |ctx| async move {
                ctx.set_ready();
                ctx.token.cancelled().await;
                record("stopped");
                Ok(())
            });
        }
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let record = recorder(&log, "camera");
        supervisor.spawn_thread(
            "camera",
            Phase::Devices,
            move |ctx: ServiceContext| {
                ctx.set_ready();
                stop_rx.recv().unwrap();
                record("stopped");
                Ok(())
            },
            async move { stop_tx.send(()).unwrap() },
        );
        let readiness = supervisor.readiness();
        readiness.wait_all_ready().await;
        assert!(readiness.all_ready());
        assert!(supervisor.shutdown(Duration::from_secs(5)).await);
        assert_eq!(*log.lock().unwrap(), ["api stopped", "camera stopped", "core stopped", "storage stopped"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_ignores_cancellation_overruns_the_deadline() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("stuck", Phase::Core, |_ctx| std::future::pending());
        assert!(!supervisor.shutdown(Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn failures_and_panics_fire_the_failed_token() {
        for kind in ["error", "panic", "early return"] {
            let mut supervisor = Supervisor::new();
            let failed = supervisor.failed();
            supervisor.spawn("flaky", Phase::Core, move |_ctx| async move {
                match kind {
                    "error" => Err(ServiceError::new("device gone")),
                    "panic" => panic!("logic bug"),
                    _ => Ok(()),
                }
            });
            failed.cancelled().await;
            assert!(supervisor.shutdown(Duration::from_secs(1)).await, "{kind}");
        }
    }

    #[tokio::test]
    async fn degraded_services_settle_but_are_not_ready() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("camera", Phase::Devices, |ctx| async move {
            ctx.set_degraded("no images");
            ctx.token.cancelled().await;
            Ok(())
        });
        let readiness = supervisor.readiness();
        readiness.wait_all_settled().await;
        assert!(!readiness.all_ready());
        assert_eq!(readiness.report(), [("camera".to_owned(), ServiceState::Degraded("no images".into()))]);
        assert_eq!(readiness.degraded(), [("camera".to_owned(), "no images".to_owned())].into());
        assert!(supervisor.shutdown(Duration::from_secs(1)).await);
    }
}
