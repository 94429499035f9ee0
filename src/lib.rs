//! stationd: the daemon of a factory edge station (inspection or assembly workstation).
//!
//! # Layout
//!
//! Read in this order:
//! - [`config`]: TOML → validated `Config`; the embedded defaults.
//! - [`core`]: the pure domain (decisions, counters, rolling pass rate); no I/O.
//! - [`bus`]: `Event`, `Effect`, `Notification`, `Snapshot` and their channels.
//! - [`cycle`]: one inspection: image → inference → decision → committed record.
//! - [`inference`]: tract models on dedicated threads.
//! - [`jobs`]: batch jobs (a folder's images inspected one by one).
//! - [`models`]: the model registry (upload, activate with a hot swap, rollback).
//! - [`patchcore`]: PatchCore anomaly models fitted on the station's images.
//! - [`storage`]: SQLite and the image store on one thread; the only SQL.
//! - [`south`]: device adapters (cameras).
//! - [`north`]: plant-facing interfaces (REST API).
//! - [`supervisor`]: named services, readiness, phased shutdown.
//! - [`coaching`]: assembly coaching (the step sequencer's service, unit records).
//! - [`drift`]: camera drift against a learnt reference (the drift service).
//! - [`alerts`]: the alert rules' service (observe, evaluate, store, announce).
//! - [`auth`]: users' roles, passwords and tokens.
//! - [`app`]: the composition root that wires all of the above.
//! - [`telemetry`]: logging to journald or stderr.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod bus;
pub mod coaching;
pub mod config;
pub mod core;
pub mod core_task;
pub mod cycle;
pub mod drift;
pub mod inference;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod north;
pub mod patchcore;
pub mod pipelines;
pub mod south;
pub mod station_io;
pub mod storage;
pub mod supervisor;
pub mod telemetry;
