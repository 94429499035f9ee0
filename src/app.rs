//! Composition root: the only place that names every concrete type. It picks a backend
//! per device from the config, wires the channels, and registers the services with the
//! supervisor in dependency order (storage before the core, the core before the API).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::watch;

use crate::bus::{self, Bus};
use crate::config::{CameraBackend, Config, GpioBackend, WrenchBackend};
use crate::core::Core;
use crate::cycle::Inspector;
use crate::metrics::Metrics;
use crate::north::api::{self, ApiState};
use crate::north::{modbus, mqtt, opcua};
use crate::south::camera::{self, CameraHandle, sim::SimCamera};
use crate::south::gpio::{self, cdev::CdevGpio, sim::GpioSimControl};
use crate::south::wrench::{self, SessionConfig, WrenchSettings};
use crate::supervisor::{Phase, Readiness, ServiceError, Supervisor};
use crate::{core_task, inference, pipelines, station_io, storage};

/// A started daemon. Tests drive it through its addresses; `run` drives it from signals.
pub struct RunningApp {
    pub api_addr: SocketAddr,
    /// `None` when the OPC-UA server is disabled.
    pub opcua_addr: Option<SocketAddr>,
    /// `None` when the Modbus server is disabled.
    pub modbus_addr: Option<SocketAddr>,
    pub readiness: Readiness,
    pub bus: Bus,
    pub wrenches: wrench::Wrenches,
    /// Assembly coaching (tests and benches start units through it directly).
    pub coaching: crate::coaching::Coaching,
    /// The simulated GPIO chip's wiring side, with `[gpio] backend = "sim"`.
    pub gpio_sim: Option<GpioSimControl>,
    /// Camera drift monitoring, when `[drift]` is on.
    pub drift: Option<crate::drift::Drift>,
    /// Number of REST requests being served.
    pub in_flight: watch::Receiver<usize>,
    /// The password of the `admin` user made at this start because there was no user;
    /// `main` prints it once.
    pub first_admin_password: Option<String>,
    supervisor: Supervisor,
    shutdown_deadline: Duration,
}

/// Starts every service. Returns once the listeners are bound; readiness follows when
/// storage is open, the model is loaded and the cameras are open (`wait_ready`).
pub async fn start(config: Config) -> anyhow::Result<RunningApp> {
    let mut supervisor = Supervisor::new();
    let (bus, core_ends) = bus::channels();
    let metrics = Metrics::new();

    // Read the MQTT TLS files before anything starts: a bad file is a start-up error.
    let mqtt_tls = match &config.mqtt {
        Some(mqtt) => mqtt::tls_config(mqtt)?,
        None => None,
    };
    let storage = storage::spawn(&mut supervisor, config.state_dir.clone(), config.mqtt.is_some());
    if let Some(keep) = config.image_retention {
        storage::spawn_retention(&mut supervisor, storage.clone(), keep);
    }
    // The registry picks the model to serve (the config's, or the one activated last).
    let initial = crate::models::resolve_start(&storage, &config.inference.model_dir).await;
    let inference = inference::spawn(&mut supervisor, initial, config.inference.threads);
    let models = crate::models::Registry::new(
        storage.clone(),
        inference.clone(),
        config.inference.thresholds.clone(),
        &config.state_dir,
    );

    let mut cameras: BTreeMap<String, CameraHandle> = BTreeMap::new();
    for (id, camera) in &config.cameras {
        let handle = match &camera.backend {
            CameraBackend::Sim { folder } => {
                let (id, folder) = (id.clone(), folder.clone());
                camera::spawn(&mut supervisor, id.clone(), move || SimCamera::open(&id, &folder))
            }
            #[cfg(feature = "camera-v4l2")]
            CameraBackend::V4l2 { device, width, height, fps, format } => {
                let settings = camera::v4l2::Settings {
                    device: device.clone(),
                    width: *width,
                    height: *height,
                    fps: *fps,
                    format: *format,
                };
                let id2 = id.clone();
                camera::spawn(&mut supervisor, id.clone(), move || {
                    camera::v4l2::V4l2Camera::open(&id2, settings.clone())
                })
            }
            #[cfg(not(feature = "camera-v4l2"))]
            CameraBackend::V4l2 { .. } => anyhow::bail!(
                "camera {id} uses backend \"v4l2\", but this build has no V4L2 support (build with --features camera-v4l2)"
            ),
        };
        cameras.insert(id.clone(), handle);
    }

    let mut gpio_sim = None;
    let gpio = config.gpio.as_ref().map(|gpio_config| match gpio_config.backend {
        GpioBackend::Sim => {
            let control = GpioSimControl::new(gpio_config);
            gpio_sim = Some(control.clone());
            gpio::spawn(&mut supervisor, gpio_config.clone(), move || control.open())
        }
        GpioBackend::Cdev => {
            let lines = gpio_config.clone();
            gpio::spawn(&mut supervisor, gpio_config.clone(), move || CdevGpio::open(&lines))
        }
    });

    let station_ids: Vec<String> = config.stations.keys().cloned().collect();
    let core = Core::new(station_ids.clone());
    let (heartbeat_tx, heartbeat_rx) = watch::channel(Utc::now());
    {
        let (storage, station_ids) = (storage.clone(), station_ids.clone());
        supervisor.spawn("core", Phase::Core, move |ctx| {
            core_task::run(core, station_ids, storage, core_ends, heartbeat_tx, ctx)
        });
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        supervisor.spawn("watchdog", Phase::Intake, move |ctx| watchdog(interval, heartbeat_rx, ctx.token.clone()));
    }

    let wrenches = {
        let mut configured = Vec::new();
        for (id, wrench_config) in &config.wrenches {
            let (address, port) = match &wrench_config.backend {
                WrenchBackend::OpenProtocol { address, port } => (address.clone(), *port),
                WrenchBackend::Sim { interval, nok_ratio } => {
                    let settings = wrench::sim::SimSettings {
                        result_interval: *interval,
                        nok_ratio: *nok_ratio,
                        ..wrench::sim::SimSettings::default()
                    };
                    let sim = wrench::sim::SimController::bind(([127, 0, 0, 1], 0).into(), settings)
                        .await
                        .context("cannot bind the wrench simulator")?;
                    let addr = sim.handle().addr();
                    // Stopped after the links, so that they can say goodbye to it.
                    supervisor.spawn(format!("wrench-sim:{id}"), Phase::Publish, move |ctx| async move {
                        ctx.set_ready();
                        sim.run(ctx.token.clone()).await;
                        Ok(())
                    });
                    (addr.ip().to_string(), addr.port())
                }
            };
            configured.push(wrench_settings(id, wrench_config, address, port));
        }
        wrench::spawn(&mut supervisor, configured, storage.clone(), bus.events.clone())
    };

    let drift = config.drift.map(|drift_config| {
        let cameras = config.cameras.keys().cloned().collect();
        crate::drift::spawn(&mut supervisor, drift_config, cameras, storage.clone())
    });
    let mqtt_handle = config
        .mqtt
        .clone()
        .map(|mqtt| mqtt::spawn(&mut supervisor, mqtt, mqtt_tls, &station_ids, storage.clone(), &bus.notifications));
    let inspector = Inspector::new(
        inference,
        storage.clone(),
        &bus,
        config.stations.clone(),
        cameras,
        config.inference.thresholds.clone(),
        metrics.clone(),
    )
    .with_drift(drift.clone())
    .with_recipes(config.recipes.clone());
    if let Some(gpio) = &gpio {
        let maps = config.stations.iter().map(|(id, station)| (id.clone(), station.outputs.clone())).collect();
        let readiness = supervisor.readiness();
        station_io::spawn(
            &mut supervisor,
            gpio.clone(),
            inspector.clone(),
            &bus.notifications,
            maps,
            metrics.clone(),
            readiness,
        );
    }
    let coaching = crate::coaching::spawn(
        &mut supervisor,
        config.coaching.clone(),
        crate::coaching::Devices {
            storage: storage.clone(),
            inspector: inspector.clone(),
            wrenches: wrenches.clone(),
            gpio: gpio.clone(),
            notifications: bus.notifications.clone(),
        },
    );
    std::fs::create_dir_all(&config.jobs_input_root)
        .with_context(|| format!("cannot create {}", config.jobs_input_root.display()))?;
    let fits = crate::jobs::Fits {
        backbone_dir: config.anomaly_backbone_dir.clone(),
        root: config.state_dir.join("fits"),
        registry: models.clone(),
    };
    let jobs = crate::jobs::spawn(&mut supervisor, inspector.clone(), config.jobs_input_root.clone(), fits);
    let pipelines = pipelines::spawn(&mut supervisor, inspector.clone(), config.mqtt.is_some());
    let modbus_addr = match &config.modbus {
        Some(modbus) => {
            let listener = modbus::bind(modbus.bind)
                .await
                .with_context(|| format!("cannot bind the Modbus server to {}", modbus.bind))?;
            let addr = listener.local_addr()?;
            let readiness = supervisor.readiness();
            modbus::spawn(
                &mut supervisor,
                listener,
                modbus.clone(),
                inspector.clone(),
                bus.snapshots.clone(),
                readiness,
            );
            Some(addr)
        }
        None => None,
    };
    let (opcua_addr, opcua_handle) = match &config.opcua {
        Some(opcua_config) => {
            let listener = opcua::bind(opcua_config.bind)
                .await
                .with_context(|| format!("cannot bind the OPC-UA server to {}", opcua_config.bind))?;
            let addr = listener.local_addr()?;
            let sources = opcua::Sources {
                station_ids: station_ids.clone(),
                inspector: inspector.clone(),
                snapshots: bus.snapshots.clone(),
                readiness: supervisor.readiness(),
                wrenches: wrenches.clone(),
                notifications: bus.notifications.subscribe(),
            };
            let handle = opcua::spawn(&mut supervisor, listener, opcua_config.clone(), &config.state_dir, sources);
            (Some(addr), Some(handle))
        }
        None => (None, None),
    };
    let alert_sources = crate::alerts::Sources {
        storage: storage.clone(),
        snapshots: bus.snapshots.clone(),
        readiness: supervisor.readiness(),
        notifications: bus.notifications.clone(),
        state_dir: config.state_dir.clone(),
        drift: drift.as_ref().map(crate::drift::Drift::watch),
    };
    let (alerts_config, alerts_config_rx) = watch::channel(config.alerts.clone());
    crate::alerts::spawn(&mut supervisor, alerts_config_rx, alert_sources);
    let listener =
        api::bind(config.api.bind).await.with_context(|| format!("cannot bind the REST API to {}", config.api.bind))?;
    let api_addr = listener.local_addr()?;
    let (in_flight_tx, in_flight_rx) = watch::channel(0usize);
    let (auth, first_admin_password) =
        api::auth::prepare(&storage, &config.auth).await.context("cannot prepare the REST API's users")?;
    let state = ApiState {
        auth,
        config_file: Arc::new(api::config::ConfigFile::new(&config, alerts_config)),
        inspector,
        readiness: supervisor.readiness(),
        snapshots: bus.snapshots.clone(),
        max_upload_bytes: config.api.max_upload_bytes,
        in_flight: Arc::new(in_flight_tx),
        mqtt: mqtt_handle,
        opcua: opcua_handle,
        wrenches: wrenches.clone(),
        gpio,
        gpio_sim: gpio_sim.clone(),
        cameras: Arc::new(config.cameras.clone()),
        streams: ApiState::stream_limit(),
        stop: tokio_util::sync::CancellationToken::new(),
        metrics,
        pipelines,
        coaching: coaching.clone(),
        models,
        jobs,
        drift: drift.clone(),
        notifications: bus.notifications.clone(),
        state_dir: config.state_dir.clone(),
        image_retention: config.image_retention,
    };
    supervisor.spawn("api", Phase::Intake, move |ctx| api::serve(listener, state, ctx));

    Ok(RunningApp {
        api_addr,
        opcua_addr,
        modbus_addr,
        readiness: supervisor.readiness(),
        bus,
        wrenches,
        coaching,
        gpio_sim,
        drift,
        in_flight: in_flight_rx,
        supervisor,
        shutdown_deadline: config.shutdown_deadline,
        first_admin_password,
    })
}

/// A configured wrench's link settings.
fn wrench_settings(id: &str, config: &crate::config::WrenchConfig, address: String, port: u16) -> WrenchSettings {
    WrenchSettings {
        station_id: config.station.clone(),
        manufacturer: config.manufacturer.clone(),
        model: config.model.clone(),
        configured: true,
        reconnect_max: config.reconnect_max,
        busy_backoff: config.busy_backoff,
        set_time_on_connect: config.set_time_on_connect,
        session: SessionConfig {
            result_revision: config.result_revision,
            link_level: config.link_level_acks,
            keep_alive: config.keep_alive,
            link_timeout: config.link_timeout,
            reply_timeout: config.reply_timeout,
            backfill_limit: config.backfill_limit,
            ..SessionConfig::default()
        },
        ..WrenchSettings::new(id, address, port)
    }
}

impl RunningApp {
    /// Resolves when every service is ready, or fails when one failed first.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let failed = self.supervisor.failed();
        tokio::select! {
            () = self.readiness.wait_all_ready() => Ok(()),
            () = failed.cancelled() => anyhow::bail!("a service failed during start-up (see the log)"),
        }
    }

    /// Phased shutdown within the configured deadline. Returns false if a phase overran
    /// or a service failed (before or during the shutdown).
    pub async fn shutdown(self) -> bool {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let failed = self.supervisor.failed();
        let clean = self.supervisor.shutdown(self.shutdown_deadline).await;
        clean && !failed.is_cancelled()
    }
}

/// Runs the daemon until `shutdown` resolves (SIGTERM/SIGINT in `main`) or a service fails.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = start(config).await?;
    if let Some(password) = &app.first_admin_password {
        // Once, on the console (and so in the journal under systemd): there is no default
        // password to leave unchanged.
        tracing::warn!("first start: created user `admin`; its password is printed on stderr once");
        #[allow(clippy::print_stderr, reason = "the one place the first password is shown")]
        {
            eprintln!(
                "\n  stationd: first start, no user yet. Log in as `admin` with password\n\n      {password}\n\n  \
                 and change it (PUT /api/v1/users/me/password). Lost it? `stationd user reset-password admin`.\n"
            );
        }
    }
    let failed = app.supervisor.failed();
    tokio::pin!(shutdown);
    let settled = tokio::select! {
        () = app.readiness.wait_all_settled() => true,
        () = failed.cancelled() => false,
        () = &mut shutdown => false,
    };
    if settled {
        // Start-up is over: tell systemd, even if some device is degraded; /ready and the
        // log say which, and the daemon keeps serving what it can.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        if app.readiness.all_ready() {
            tracing::info!(api = %app.api_addr, "stationd ready");
        } else {
            let degraded = app.readiness.degraded();
            tracing::error!(api = %app.api_addr, ?degraded, "stationd started degraded");
        }
        tokio::select! {
            () = &mut shutdown => tracing::info!("shutdown requested"),
            () = failed.cancelled() => {}
        }
    }
    let clean = app.shutdown().await;
    if failed.is_cancelled() {
        anyhow::bail!("a service failed; stopped (see the log above)");
    }
    if !clean {
        anyhow::bail!("shutdown overran its deadline");
    }
    Ok(())
}

/// Pings systemd's watchdog at half its interval while the core's heartbeat is fresh; a
/// wedged core stops the pings and systemd restarts the daemon.
async fn watchdog(
    interval: Duration,
    heartbeat: watch::Receiver<chrono::DateTime<Utc>>,
    token: tokio_util::sync::CancellationToken,
) -> Result<(), ServiceError> {
    let mut ticker = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = token.cancelled() => return Ok(()),
        }
        let age = Utc::now() - *heartbeat.borrow();
        if age.to_std().unwrap_or_default() < interval / 2 {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                heartbeat_age_ms = age.num_milliseconds(),
                "core heartbeat stale; withholding watchdog ping"
            );
        }
    }
}
