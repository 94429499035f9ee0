//! Configuration: one TOML file → `RawConfig` (mirrors the file, serde, unknown keys
//! rejected) → `Config` (validated, resolved types).
//!
//! This module owns the file format and its validation. It does not open devices, load
//! models or touch the state directory: `Config::from_toml_str` is pure so that tests and
//! `stationd check-config` share it. Filesystem checks that a technician wants before a
//! start (model files present, sim image folder not empty) live in [`Config::check_files`].
//!
//! Every error names the key path (`cameras.cam0.folder`), because a typo in a station
//! config must fail loudly at start, not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::expected::ExpectedItem;

/// The configuration the daemon runs on when `stationd run` gets no `--config`: a laptop
/// setup with the simulated camera, the bundled model and state under `./var`.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../etc/stationd.dev.toml");

/// Validated configuration, immutable for the life of the process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from; `None` for the embedded defaults (or text).
    pub source: Option<PathBuf>,
    /// Root of everything the daemon writes: the SQLite database and the image store.
    pub state_dir: PathBuf,
    pub shutdown_deadline: Duration,
    pub log_filter: String,
    pub api: ApiConfig,
    pub auth: AuthConfig,
    pub alerts: crate::alerts::AlertsConfig,
    /// Assembly coaching: which station coaches and its e-stop input.
    pub coaching: CoachingConfig,
    /// Camera drift monitoring; `None` when `[drift] enabled = false`.
    pub drift: Option<crate::core::drift::DriftConfig>,
    /// The folder batch jobs read images under (`[jobs] input_root`, default
    /// `<state_dir>/batch`); a job's `input_dir` must lie inside it.
    pub jobs_input_root: PathBuf,
    /// The PatchCore backbone folder (`[anomaly] backbone_dir`); `None` refuses fits.
    pub anomaly_backbone_dir: Option<PathBuf>,
    pub inference: InferenceConfig,
    /// Keyed by camera id.
    pub cameras: BTreeMap<String, CameraConfig>,
    /// Keyed by station id.
    pub stations: BTreeMap<String, StationConfig>,
    /// Expected-item lists by recipe name (`[recipes.<name>]`).
    pub recipes: BTreeMap<String, Vec<ExpectedItem>>,
    /// `None` when the Modbus server is disabled.
    pub modbus: Option<ModbusConfig>,
    /// `None` when MQTT publishing is disabled.
    pub mqtt: Option<MqttConfig>,
    /// `None` when the OPC-UA server is disabled.
    pub opcua: Option<OpcuaConfig>,
    /// Keyed by wrench id.
    pub wrenches: BTreeMap<String, WrenchConfig>,
    /// `None` when the station has no GPIO lines.
    pub gpio: Option<GpioConfig>,
    /// Inspection images older than this are removed (records stay); `None` keeps them.
    pub image_retention: Option<Duration>,
}

/// The station's digital I/O: inputs (triggers, sensors) and outputs (stack light, reject
/// gate, busy), each named in the config and addressed by chip and offset or line name.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioConfig {
    pub backend: GpioBackend,
    /// Shown as the lines' consumer by `gpioinfo`.
    pub consumer: String,
    pub inputs: BTreeMap<String, GpioInput>,
    pub outputs: BTreeMap<String, GpioOutput>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpioBackend {
    /// The kernel's GPIO character device (`/dev/gpiochipN`) through gpiocdev.
    Cdev,
    /// An in-process simulated chip; inputs are driven through the sim control (REST
    /// `POST /api/v1/system/gpio/{name}/inject`, tests, benches).
    Sim,
}

/// Where a line is: an offset on a chip, or a line name found on any chip.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineAddress {
    Offset { chip: PathBuf, offset: u32 },
    Name(String),
}

impl fmt::Display for LineAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineAddress::Offset { chip, offset } => write!(f, "{}:{offset}", chip.display()),
            LineAddress::Name(name) => write!(f, "{name:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeSelect {
    Rising,
    Falling,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBias {
    PullUp,
    PullDown,
    Disabled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpioInput {
    pub line: LineAddress,
    /// Which logical change is an event (after `active_low`).
    pub edge: EdgeSelect,
    pub active_low: bool,
    /// A level must hold this long before it counts (the kernel's debounce).
    pub debounce: Duration,
    /// `None` leaves the line's bias as it is.
    pub bias: Option<LineBias>,
    /// The station an event on this line inspects, if it is a trigger.
    pub trigger: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpioOutput {
    pub line: LineAddress,
    pub active_low: bool,
    /// The logical level at start and on every shutdown path.
    pub safe_active: bool,
    /// Set for a pulse output (a reject gate): asserted for this long, then back to safe.
    pub pulse: Option<Duration>,
}

/// One tightening controller (Open Protocol), or an in-process simulator of one.
#[derive(Debug, Clone, PartialEq)]
pub struct WrenchConfig {
    pub backend: WrenchBackend,
    /// The station its results belong to (MQTT topic, unit records).
    pub station: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub result_revision: u16,
    pub link_level_acks: bool,
    pub keep_alive: Duration,
    pub link_timeout: Duration,
    pub reply_timeout: Duration,
    pub reconnect_max: Duration,
    pub busy_backoff: Duration,
    pub set_time_on_connect: bool,
    pub backfill_limit: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WrenchBackend {
    OpenProtocol {
        address: String,
        port: u16,
    },
    /// An in-process controller simulator on 127.0.0.1, producing a result every
    /// `interval` while the tool is enabled.
    Sim {
        interval: Option<Duration>,
        nok_ratio: f64,
    },
}

#[derive(Debug, Clone)]
pub struct OpcuaConfig {
    pub bind: SocketAddr,
    /// Host name or address put in endpoint URLs (what clients dial).
    pub host: String,
    /// Endpoint path, e.g. "/stationd".
    pub path: String,
    /// Anonymous user tokens are offered (read-only use; the Trigger method included).
    pub allow_anonymous: bool,
    /// An endpoint with SecurityPolicy None is offered (cleartext).
    pub allow_insecure: bool,
    /// Trust every client certificate instead of the trusted/ folder (development only).
    pub trust_all_client_certs: bool,
    /// User name → password for UserName tokens.
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Each station connects as `<client_id>-<station_id>` (its own last will).
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub tls: Option<MqttTls>,
    pub keep_alive: Duration,
    pub outbox_max_age: chrono::TimeDelta,
    pub outbox_max_rows: u64,
    pub outbox_warn_rows: u64,
}

#[derive(Debug, Clone)]
pub struct MqttTls {
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for brokers that authenticate clients by certificate.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct ModbusConfig {
    pub bind: SocketAddr,
    /// Client IPs allowed to connect; empty means any.
    pub allow: Vec<std::net::IpAddr>,
    /// Results held per unit (in flight plus waiting for the PLC's ResultsAck).
    pub results_depth: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Unit id → station id.
    pub units: BTreeMap<u8, String>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    pub max_upload_bytes: usize,
}

/// REST users' tokens and the per-client request limits.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Per client address, every route but login and the probes.
    pub requests_per_minute: u32,
    /// Per client address, `POST /api/v1/auth/login`.
    pub logins_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// `models/<name>/` holding `model.onnx` and `model.toml`.
    pub model_dir: PathBuf,
    pub threads: usize,
    pub thresholds: ThresholdOverrides,
}

/// Decision thresholds from the config; each one that is set replaces the model's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThresholdOverrides {
    pub pass_threshold: Option<f32>,
    pub fail_threshold: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub backend: CameraBackend,
}

#[derive(Debug, Clone)]
pub enum CameraBackend {
    /// Replays the images of a folder in name order, cycling.
    Sim { folder: PathBuf },
    /// A V4L2 device through nokhwa (cargo feature `camera-v4l2`).
    V4l2 { device: CameraDevice, width: u32, height: u32, fps: u32, format: PixelFormat },
}

#[derive(Debug, Clone, PartialEq)]
pub enum CameraDevice {
    Index(u32),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

#[derive(Debug, Clone)]
pub struct StationConfig {
    /// Camera used by `POST /inspect/camera` and PLC triggers for this station, if any.
    pub camera: Option<String>,
    /// Modbus unit id of this station (defaults to 1 when it is the only station).
    pub modbus_unit: Option<u8>,
    /// The GPIO outputs its results drive.
    pub outputs: crate::core::outputs::OutputMap,
    /// The recipe every inspection of the station checks (a key of `Config::recipes`),
    /// unless the trigger names its own.
    pub recipe: Option<String>,
    /// Image scale for detection areas (`area_mm2`), millimetres per pixel.
    pub mm_per_pixel: Option<f64>,
}

/// A configuration problem, with the key path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", syntax_message(.key, .line, .message))]
    Syntax { key: Option<String>, line: Option<usize>, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn syntax_message(key: &Option<String>, line: &Option<usize>, message: &str) -> String {
    let mut out = String::new();
    if let Some(key) = key {
        out.push_str(&format!("`{key}`: "));
    }
    out.push_str(message.trim_end());
    if let Some(line) = line {
        out.push_str(&format!(" (line {line})"));
    }
    out
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid { key: key.into(), message: message.to_string() }
    }
}

impl Config {
    /// Parses and validates a configuration file's text. Relative paths stay relative to
    /// the working directory, which under systemd is `/`; the reference config therefore
    /// uses absolute paths.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw = RawConfig::parse(text)?;
        raw.validate()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::from_toml_str(&text)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    pub fn embedded_defaults() -> Config {
        Config::from_toml_str(EMBEDDED_DEFAULTS).expect("the embedded default config is valid")
    }

    /// Checks that the files the config points at exist, for `check-config` and for start-up.
    /// This does not load the model into tract (start-up does, and reports a corrupt file).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for file in ["model.onnx", "model.toml"] {
            let path = self.inference.model_dir.join(file);
            if !path.is_file() {
                return Err(ConfigError::invalid("inference.model_dir", format!("{} does not exist", path.display())));
            }
        }
        if let Some(dir) = &self.anomaly_backbone_dir {
            for file in ["model.onnx", "backbone.toml"] {
                if !dir.join(file).is_file() {
                    let missing = format!("{} does not exist", dir.join(file).display());
                    return Err(ConfigError::invalid("anomaly.backbone_dir", missing));
                }
            }
        }
        if let Some(tls) = self.mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
            let files = [
                ("mqtt.ca_file", Some(&tls.ca_file)),
                ("mqtt.client_cert_file", tls.client_auth.as_ref().map(|c| &c.0)),
                ("mqtt.client_key_file", tls.client_auth.as_ref().map(|c| &c.1)),
            ];
            for (key, path) in files {
                if let Some(path) = path
                    && !path.is_file()
                {
                    return Err(ConfigError::invalid(key, format!("{} does not exist", path.display())));
                }
            }
        }
        for (id, camera) in &self.cameras {
            if let CameraBackend::Sim { folder } = &camera.backend
                && !folder.is_dir()
            {
                return Err(ConfigError::invalid(
                    format!("cameras.{id}.folder"),
                    format!("{} is not a directory", folder.display()),
                ));
            }
        }
        Ok(())
    }
}

/// The file as written. Field names are the TOML keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    state_dir: PathBuf,
    #[serde(default = "default_shutdown_deadline_ms")]
    shutdown_deadline_ms: u64,
    #[serde(default)]
    log: RawLog,
    api: RawApi,
    inference: RawInference,
    #[serde(default)]
    cameras: BTreeMap<String, RawCamera>,
    #[serde(default)]
    stations: BTreeMap<String, RawStation>,
    modbus: Option<RawModbus>,
    mqtt: Option<RawMqtt>,
    opcua: Option<RawOpcua>,
    #[serde(default)]
    wrenches: BTreeMap<String, RawWrench>,
    gpio: Option<RawGpio>,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    coaching: RawCoaching,
    #[serde(default)]
    drift: RawDrift,
    #[serde(default)]
    jobs: RawJobs,
    #[serde(default)]
    recipes: BTreeMap<String, RawRecipe>,
    #[serde(default)]
    anomaly: RawAnomaly,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    backbone_dir: Option<PathBuf>,
}

/// `[recipes.<name>]`: the items a kit or tray must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    items: Vec<RawItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    name: String,
    quantity: u32,
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    input_root: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrift {
    enabled: Option<bool>,
    reference_frames: Option<usize>,
    window_frames: Option<usize>,
    medium_sigma: Option<f64>,
    high_sigma: Option<f64>,
}

impl RawDrift {
    fn validate(self) -> Result<Option<crate::core::drift::DriftConfig>, ConfigError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let reference_frames = self.reference_frames.unwrap_or(50);
        if !(5..=10_000).contains(&reference_frames) {
            return Err(ConfigError::invalid("drift.reference_frames", "must be between 5 and 10000"));
        }
        let window_frames = self.window_frames.unwrap_or(20);
        if !(3..=10_000).contains(&window_frames) {
            return Err(ConfigError::invalid("drift.window_frames", "must be between 3 and 10000"));
        }
        let medium_sigma = self.medium_sigma.unwrap_or(3.0);
        if !(medium_sigma.is_finite() && medium_sigma > 0.0) {
            return Err(ConfigError::invalid("drift.medium_sigma", "must be a number above 0"));
        }
        let high_sigma = self.high_sigma.unwrap_or(6.0);
        if !(high_sigma.is_finite() && high_sigma > medium_sigma) {
            return Err(ConfigError::invalid("drift.high_sigma", "must be above drift.medium_sigma"));
        }
        Ok(Some(crate::core::drift::DriftConfig { reference_frames, window_frames, medium_sigma, high_sigma }))
    }
}

/// Assembly coaching at this station PC.
#[derive(Debug, Clone, PartialEq)]
pub struct CoachingConfig {
    /// The station whose camera the vision steps use; `None` when there is no station.
    pub station: Option<String>,
    /// A GPIO input whose active level aborts the unit being built.
    pub estop_input: Option<String>,
    /// Least time between two inspections a continuous vision step asks for.
    pub inspect_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoaching {
    station: Option<String>,
    estop_input: Option<String>,
    inspect_interval_ms: Option<u64>,
}

impl RawCoaching {
    fn validate(
        self,
        stations: &BTreeMap<String, StationConfig>,
        gpio: Option<&GpioConfig>,
    ) -> Result<CoachingConfig, ConfigError> {
        let station = match self.station {
            Some(id) if !stations.contains_key(&id) => {
                return Err(ConfigError::invalid("coaching.station", format!("no station {id:?} under [stations]")));
            }
            Some(id) => Some(id),
            None => stations.keys().next().cloned(),
        };
        if let Some(input) = &self.estop_input
            && !gpio.is_some_and(|g| g.inputs.contains_key(input))
        {
            return Err(ConfigError::invalid(
                "coaching.estop_input",
                format!("no GPIO input {input:?} under [gpio.inputs]"),
            ));
        }
        let interval = self.inspect_interval_ms.unwrap_or(200);
        if !(20..=60_000).contains(&interval) {
            return Err(ConfigError::invalid("coaching.inspect_interval_ms", "must be between 20 and 60000"));
        }
        Ok(CoachingConfig { station, estop_input: self.estop_input, inspect_interval: Duration::from_millis(interval) })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default = "default_pass_rate_target_percent")]
    pass_rate_target_percent: f64,
    #[serde(default = "default_pass_rate_min_inspections")]
    pass_rate_min_inspections: u32,
    #[serde(default = "default_disk_free_min_percent")]
    disk_free_min_percent: f64,
    #[serde(default = "default_outbox_backlog_max")]
    outbox_backlog_max: u64,
    #[serde(default = "default_check_interval_s")]
    check_interval_s: u64,
    #[serde(default = "default_keep_cleared_days")]
    keep_cleared_days: u32,
}

impl Default for RawAlerts {
    fn default() -> RawAlerts {
        RawAlerts {
            pass_rate_target_percent: default_pass_rate_target_percent(),
            pass_rate_min_inspections: default_pass_rate_min_inspections(),
            disk_free_min_percent: default_disk_free_min_percent(),
            outbox_backlog_max: default_outbox_backlog_max(),
            check_interval_s: default_check_interval_s(),
            keep_cleared_days: default_keep_cleared_days(),
        }
    }
}

fn default_pass_rate_target_percent() -> f64 {
    90.0
}
fn default_pass_rate_min_inspections() -> u32 {
    20
}
fn default_disk_free_min_percent() -> f64 {
    10.0
}
fn default_outbox_backlog_max() -> u64 {
    1000
}
fn default_check_interval_s() -> u64 {
    10
}
fn default_keep_cleared_days() -> u32 {
    90
}

impl RawAlerts {
    fn validate(self) -> Result<crate::alerts::AlertsConfig, ConfigError> {
        if !(0.0..=100.0).contains(&self.pass_rate_target_percent) {
            return Err(ConfigError::invalid("alerts.pass_rate_target_percent", "must be between 0 and 100"));
        }
        if self.pass_rate_min_inspections == 0 {
            return Err(ConfigError::invalid("alerts.pass_rate_min_inspections", "must be at least 1"));
        }
        if !(0.0..=90.0).contains(&self.disk_free_min_percent) {
            return Err(ConfigError::invalid("alerts.disk_free_min_percent", "must be between 0 and 90"));
        }
        if !(1..=3600).contains(&self.check_interval_s) {
            return Err(ConfigError::invalid("alerts.check_interval_s", "must be between 1 and 3600"));
        }
        if !(1..=3650).contains(&self.keep_cleared_days) {
            return Err(ConfigError::invalid("alerts.keep_cleared_days", "must be between 1 and 3650"));
        }
        Ok(crate::alerts::AlertsConfig {
            rules: crate::core::alerts::AlertRules {
                pass_rate_target: self.pass_rate_target_percent,
                pass_rate_min_inspections: self.pass_rate_min_inspections as usize,
                disk_free_min_percent: self.disk_free_min_percent,
                outbox_backlog_max: self.outbox_backlog_max,
            },
            check_interval: Duration::from_secs(self.check_interval_s),
            keep_cleared: Duration::from_secs(u64::from(self.keep_cleared_days) * 86_400),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default = "default_access_token_seconds")]
    access_token_seconds: u32,
    #[serde(default = "default_refresh_token_hours")]
    refresh_token_hours: u32,
    #[serde(default = "default_requests_per_minute")]
    requests_per_minute: u32,
    #[serde(default = "default_logins_per_minute")]
    logins_per_minute: u32,
}

impl Default for RawAuth {
    fn default() -> RawAuth {
        RawAuth {
            access_token_seconds: default_access_token_seconds(),
            refresh_token_hours: default_refresh_token_hours(),
            requests_per_minute: default_requests_per_minute(),
            logins_per_minute: default_logins_per_minute(),
        }
    }
}

fn default_access_token_seconds() -> u32 {
    900
}
fn default_refresh_token_hours() -> u32 {
    168
}
fn default_requests_per_minute() -> u32 {
    200
}
fn default_logins_per_minute() -> u32 {
    10
}

impl RawAuth {
    fn validate(self) -> Result<AuthConfig, ConfigError> {
        if !(1..=86_400).contains(&self.access_token_seconds) {
            return Err(ConfigError::invalid("auth.access_token_seconds", "must be between 1 and 86400"));
        }
        if !(1..=8760).contains(&self.refresh_token_hours) {
            return Err(ConfigError::invalid("auth.refresh_token_hours", "must be between 1 and 8760"));
        }
        if !(1..=1_000_000).contains(&self.requests_per_minute) {
            return Err(ConfigError::invalid("auth.requests_per_minute", "must be between 1 and 1000000"));
        }
        if !(1..=1000).contains(&self.logins_per_minute) {
            return Err(ConfigError::invalid("auth.logins_per_minute", "must be between 1 and 1000"));
        }
        Ok(AuthConfig {
            access_token_ttl: Duration::from_secs(u64::from(self.access_token_seconds)),
            refresh_token_ttl: Duration::from_secs(u64::from(self.refresh_token_hours) * 3600),
            requests_per_minute: self.requests_per_minute,
            logins_per_minute: self.logins_per_minute,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    image_retention_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpio {
    backend: String,
    #[serde(default = "default_gpio_chip")]
    chip: PathBuf,
    #[serde(default = "default_gpio_consumer")]
    consumer: String,
    #[serde(default)]
    inputs: BTreeMap<String, RawGpioInput>,
    #[serde(default)]
    outputs: BTreeMap<String, RawGpioOutput>,
}

fn default_gpio_chip() -> PathBuf {
    PathBuf::from("/dev/gpiochip0")
}

fn default_gpio_consumer() -> String {
    "stationd".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioInput {
    line: toml::Value,
    chip: Option<PathBuf>,
    #[serde(default = "default_edge")]
    edge: String,
    #[serde(default)]
    active_low: bool,
    #[serde(default = "default_debounce_ms")]
    debounce_ms: u64,
    bias: Option<String>,
    trigger: Option<String>,
}

fn default_edge() -> String {
    "rising".to_owned()
}

fn default_debounce_ms() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioOutput {
    line: toml::Value,
    chip: Option<PathBuf>,
    #[serde(default)]
    active_low: bool,
    #[serde(default = "default_safe")]
    safe: String,
    pulse_ms: Option<u64>,
}

fn default_safe() -> String {
    "inactive".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrench {
    backend: String,
    address: Option<String>,
    #[serde(default = "default_wrench_port")]
    port: u16,
    station: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    #[serde(default = "default_result_revision")]
    result_revision: u16,
    #[serde(default = "default_true")]
    link_level_acks: bool,
    #[serde(default = "default_wrench_keep_alive_s")]
    keep_alive_s: u64,
    #[serde(default = "default_link_timeout_s")]
    link_timeout_s: u64,
    #[serde(default = "default_reply_timeout_s")]
    reply_timeout_s: u64,
    #[serde(default = "default_reconnect_max_s")]
    reconnect_max_s: u64,
    #[serde(default = "default_busy_backoff_s")]
    busy_backoff_s: u64,
    #[serde(default)]
    set_time_on_connect: bool,
    #[serde(default = "default_backfill_limit")]
    backfill_limit: u64,
    sim_interval_ms: Option<u64>,
    #[serde(default)]
    sim_nok_ratio: f64,
}

fn default_wrench_port() -> u16 {
    4545
}
fn default_result_revision() -> u16 {
    7
}
fn default_true() -> bool {
    true
}
fn default_wrench_keep_alive_s() -> u64 {
    10
}
fn default_link_timeout_s() -> u64 {
    15
}
fn default_reply_timeout_s() -> u64 {
    10
}
fn default_reconnect_max_s() -> u64 {
    5
}
fn default_busy_backoff_s() -> u64 {
    15
}
fn default_backfill_limit() -> u64 {
    1000
}

impl RawWrench {
    fn validate(self, id: &str, stations: &BTreeMap<String, StationConfig>) -> Result<WrenchConfig, ConfigError> {
        let key = |name: &str| format!("wrenches.{id}.{name}");
        let backend = match self.backend.as_str() {
            "open-protocol" => {
                let address = self.address.filter(|a| !a.trim().is_empty()).ok_or_else(|| {
                    ConfigError::invalid(key("address"), "is required with backend = \"open-protocol\"")
                })?;
                if self.port == 0 {
                    return Err(ConfigError::invalid(key("port"), "must not be 0"));
                }
                if self.sim_interval_ms.is_some() {
                    return Err(ConfigError::invalid(key("sim_interval_ms"), "is only for backend = \"sim\""));
                }
                WrenchBackend::OpenProtocol { address, port: self.port }
            }
            "sim" => {
                if self.address.is_some() {
                    return Err(ConfigError::invalid(key("address"), "is not used with backend = \"sim\""));
                }
                if !(0.0..=1.0).contains(&self.sim_nok_ratio) {
                    return Err(ConfigError::invalid(key("sim_nok_ratio"), "must be between 0 and 1"));
                }
                WrenchBackend::Sim {
                    interval: self.sim_interval_ms.filter(|ms| *ms > 0).map(Duration::from_millis),
                    nok_ratio: self.sim_nok_ratio,
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    key("backend"),
                    format!("{other:?} is not one of \"open-protocol\", \"sim\""),
                ));
            }
        };
        if let Some(station) = &self.station
            && !stations.contains_key(station)
        {
            return Err(ConfigError::invalid(key("station"), format!("no station {station:?} under [stations]")));
        }
        if !((1..=7).contains(&self.result_revision) || self.result_revision == 999) {
            return Err(ConfigError::invalid(key("result_revision"), "must be 1 to 7, or 999"));
        }
        // The controller drops a client after 15 s without traffic.
        if !(1..=14).contains(&self.keep_alive_s) {
            return Err(ConfigError::invalid(key("keep_alive_s"), "must be 1 to 14 (controllers time out at 15 s)"));
        }
        if self.link_timeout_s <= self.keep_alive_s {
            return Err(ConfigError::invalid(key("link_timeout_s"), "must be longer than keep_alive_s"));
        }
        if !(1..=60).contains(&self.reply_timeout_s) {
            return Err(ConfigError::invalid(key("reply_timeout_s"), "must be 1 to 60"));
        }
        if !(1..=300).contains(&self.reconnect_max_s) {
            return Err(ConfigError::invalid(key("reconnect_max_s"), "must be 1 to 300"));
        }
        if self.busy_backoff_s < 15 {
            return Err(ConfigError::invalid(
                key("busy_backoff_s"),
                "must be at least 15 (a controller holds a dropped session that long)",
            ));
        }
        Ok(WrenchConfig {
            backend,
            station: self.station,
            manufacturer: self.manufacturer,
            model: self.model,
            result_revision: self.result_revision,
            link_level_acks: self.link_level_acks,
            keep_alive: Duration::from_secs(self.keep_alive_s),
            link_timeout: Duration::from_secs(self.link_timeout_s),
            reply_timeout: Duration::from_secs(self.reply_timeout_s),
            reconnect_max: Duration::from_secs(self.reconnect_max_s),
            busy_backoff: Duration::from_secs(self.busy_backoff_s),
            set_time_on_connect: self.set_time_on_connect,
            backfill_limit: self.backfill_limit,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpcua {
    enabled: bool,
    bind: String,
    host: Option<String>,
    #[serde(default = "default_opcua_path")]
    path: String,
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    trust_all_client_certs: bool,
    #[serde(default)]
    users: BTreeMap<String, RawOpcuaUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpcuaUser {
    password: String,
}

fn default_opcua_path() -> String {
    "/stationd".to_owned()
}

impl RawOpcua {
    fn validate(self) -> Result<OpcuaConfig, ConfigError> {
        let bind: SocketAddr = self
            .bind
            .parse()
            .map_err(|_| ConfigError::invalid("opcua.bind", format!("{:?} is not an address:port", self.bind)))?;
        if !self.path.starts_with('/') {
            return Err(ConfigError::invalid("opcua.path", "must start with /"));
        }
        let mut users = BTreeMap::new();
        for (name, user) in self.users {
            check_id(&format!("opcua.users.{name}"), &name)?;
            if user.password.len() < 8 {
                return Err(ConfigError::invalid(
                    format!("opcua.users.{name}.password"),
                    "needs at least 8 characters",
                ));
            }
            users.insert(name, user.password);
        }
        if users.is_empty() && !self.allow_anonymous {
            return Err(ConfigError::invalid(
                "opcua.users",
                "no user can log in: add a user or set opcua.allow_anonymous = true",
            ));
        }
        let host = self.host.unwrap_or_else(|| bind.ip().to_string());
        Ok(OpcuaConfig {
            bind,
            host,
            path: self.path,
            allow_anonymous: self.allow_anonymous,
            allow_insecure: self.allow_insecure,
            trust_all_client_certs: self.trust_all_client_certs,
            users,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    enabled: bool,
    host: String,
    #[serde(default = "default_mqtt_port")]
    port: u16,
    #[serde(default = "default_client_id")]
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive_s")]
    keep_alive_s: u64,
    #[serde(default = "default_outbox_max_age_h")]
    outbox_max_age_h: u64,
    #[serde(default = "default_outbox_max_rows")]
    outbox_max_rows: u64,
    #[serde(default = "default_outbox_warn_rows")]
    outbox_warn_rows: u64,
}

fn default_mqtt_port() -> u16 {
    1883
}

fn default_client_id() -> String {
    "stationd".to_owned()
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_outbox_max_age_h() -> u64 {
    168
}

fn default_outbox_max_rows() -> u64 {
    100_000
}

fn default_outbox_warn_rows() -> u64 {
    1_000
}

impl RawMqtt {
    fn validate(self) -> Result<MqttConfig, ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::invalid("mqtt.host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(ConfigError::invalid("mqtt.port", "must not be 0"));
        }
        check_id("mqtt.client_id", &self.client_id)?;
        let credentials = match (self.username, self.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::invalid("mqtt.password", "is required with mqtt.username")),
            (None, Some(_)) => return Err(ConfigError::invalid("mqtt.username", "is required with mqtt.password")),
        };
        let tls = if self.tls {
            let ca_file =
                self.ca_file.ok_or_else(|| ConfigError::invalid("mqtt.ca_file", "is required when mqtt.tls = true"))?;
            let client_auth = match (self.client_cert_file, self.client_key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::invalid(
                        "mqtt.client_key_file",
                        "client_cert_file and client_key_file go together",
                    ));
                }
            };
            Some(MqttTls { ca_file, client_auth })
        } else {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
                ("client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(format!("mqtt.{key}"), "needs mqtt.tls = true"));
                }
            }
            None
        };
        if !(5..=3600).contains(&self.keep_alive_s) {
            return Err(ConfigError::invalid("mqtt.keep_alive_s", "must be between 5 and 3600"));
        }
        if self.outbox_max_age_h == 0 || self.outbox_max_rows == 0 {
            return Err(ConfigError::invalid("mqtt.outbox_max_rows", "outbox limits must be > 0"));
        }
        Ok(MqttConfig {
            host: self.host,
            port: self.port,
            client_id: self.client_id,
            credentials,
            tls,
            keep_alive: Duration::from_secs(self.keep_alive_s),
            outbox_max_age: chrono::TimeDelta::hours(self.outbox_max_age_h as i64),
            outbox_max_rows: self.outbox_max_rows,
            outbox_warn_rows: self.outbox_warn_rows,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    enabled: bool,
    bind: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default = "default_results_depth")]
    results_depth: usize,
    #[serde(default = "default_idle_timeout_s")]
    idle_timeout_s: u64,
}

fn default_idle_timeout_s() -> u64 {
    60
}

fn default_results_depth() -> usize {
    8
}

fn default_shutdown_deadline_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_filter")]
    filter: String,
}

impl Default for RawLog {
    fn default() -> RawLog {
        RawLog { filter: default_log_filter() }
    }
}

fn default_log_filter() -> String {
    "info".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    bind: String,
    #[serde(default = "default_max_upload_mb")]
    max_upload_mb: u32,
}

fn default_max_upload_mb() -> u32 {
    20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInference {
    model_dir: PathBuf,
    #[serde(default = "default_threads")]
    threads: usize,
    pass_threshold: Option<f32>,
    fail_threshold: Option<f32>,
}

fn default_threads() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCamera {
    backend: String,
    folder: Option<PathBuf>,
    device: Option<toml::Value>,
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<u32>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    camera: Option<String>,
    modbus_unit: Option<u8>,
    #[serde(default)]
    pass_outputs: Vec<String>,
    #[serde(default)]
    fail_outputs: Vec<String>,
    #[serde(default)]
    uncertain_outputs: Vec<String>,
    busy_output: Option<String>,
    ready_output: Option<String>,
    recipe: Option<String>,
    mm_per_pixel: Option<f64>,
}

impl RawConfig {
    pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|err| syntax_error(text, None, &err))?;
        serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let key = (key != ".").then_some(key);
            syntax_error(text, key, err.inner())
        })
    }

    fn validate(self) -> Result<Config, ConfigError> {
        if self.shutdown_deadline_ms < 1_000 || self.shutdown_deadline_ms > 120_000 {
            return Err(ConfigError::invalid(
                "shutdown_deadline_ms",
                "must be between 1000 and 120000 (and below the unit's TimeoutStopSec)",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|err| ConfigError::invalid("log.filter", err))?;

        let bind: SocketAddr = self
            .api
            .bind
            .parse()
            .map_err(|_| ConfigError::invalid("api.bind", format!("{:?} is not an address:port", self.api.bind)))?;
        if !(1..=512).contains(&self.api.max_upload_mb) {
            return Err(ConfigError::invalid("api.max_upload_mb", "must be between 1 and 512"));
        }

        let inference = &self.inference;
        if !(1..=64).contains(&inference.threads) {
            return Err(ConfigError::invalid("inference.threads", "must be between 1 and 64"));
        }
        for (key, value) in [("pass_threshold", inference.pass_threshold), ("fail_threshold", inference.fail_threshold)]
        {
            if let Some(value) = value
                && !(0.0..=1.0).contains(&value)
            {
                return Err(ConfigError::invalid(format!("inference.{key}"), "must be within 0..=1"));
            }
        }
        if let (Some(pass), Some(fail)) = (inference.pass_threshold, inference.fail_threshold)
            && fail >= pass
        {
            return Err(ConfigError::invalid(
                "inference.fail_threshold",
                format!("must be below inference.pass_threshold ({pass})"),
            ));
        }

        let mut cameras = BTreeMap::new();
        for (id, raw) in self.cameras {
            check_id(&format!("cameras.{id}"), &id)?;
            let backend = raw.validate(&id)?;
            cameras.insert(id, CameraConfig { backend });
        }

        let mut recipes = BTreeMap::new();
        for (name, raw) in self.recipes {
            check_id(&format!("recipes.{name}"), &name)?;
            let items: Vec<ExpectedItem> = raw
                .items
                .into_iter()
                .map(|i| ExpectedItem { name: i.name, quantity: i.quantity, aliases: i.aliases })
                .collect();
            crate::core::expected::validate(&items)
                .map_err(|err| ConfigError::invalid(format!("recipes.{name}.items"), err))?;
            recipes.insert(name, items);
        }

        if self.stations.is_empty() {
            return Err(ConfigError::invalid("stations", "at least one station must be configured"));
        }
        let gpio = self.gpio.map(RawGpio::validate).transpose()?;
        let mut stations = BTreeMap::new();
        for (id, raw) in self.stations {
            check_id(&format!("stations.{id}"), &id)?;
            if let Some(camera) = &raw.camera
                && !cameras.contains_key(camera)
            {
                return Err(ConfigError::invalid(
                    format!("stations.{id}.camera"),
                    format!("no camera {camera:?} under [cameras]"),
                ));
            }
            if let Some(recipe) = &raw.recipe
                && !recipes.contains_key(recipe)
            {
                return Err(ConfigError::invalid(
                    format!("stations.{id}.recipe"),
                    format!("no recipe {recipe:?} under [recipes]"),
                ));
            }
            if let Some(scale) = raw.mm_per_pixel
                && !(scale.is_finite() && scale > 0.0 && scale <= 1000.0)
            {
                return Err(ConfigError::invalid(
                    format!("stations.{id}.mm_per_pixel"),
                    "must be above 0 and at most 1000",
                ));
            }
            let outputs = raw.output_map(&id, gpio.as_ref())?;
            let station = StationConfig {
                camera: raw.camera,
                modbus_unit: raw.modbus_unit,
                outputs,
                recipe: raw.recipe,
                mm_per_pixel: raw.mm_per_pixel,
            };
            stations.insert(id, station);
        }
        if let Some(gpio) = &gpio {
            for (name, input) in &gpio.inputs {
                let Some(station) = &input.trigger else { continue };
                let key = format!("gpio.inputs.{name}.trigger");
                match stations.get(station) {
                    None => return Err(ConfigError::invalid(key, format!("no station {station:?} under [stations]"))),
                    Some(config) if config.camera.is_none() => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("station {station:?} has no camera to inspect with"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let modbus = match self.modbus {
            Some(raw) if raw.enabled => Some(raw.validate(&stations)?),
            _ => None,
        };
        let mqtt = match self.mqtt {
            Some(raw) if raw.enabled => Some(raw.validate()?),
            _ => None,
        };
        let opcua = match self.opcua {
            Some(raw) if raw.enabled => Some(raw.validate()?),
            _ => None,
        };
        let mut wrenches = BTreeMap::new();
        for (id, raw) in self.wrenches {
            check_id(&format!("wrenches.{id}"), &id)?;
            wrenches.insert(id.clone(), raw.validate(&id, &stations)?);
        }

        Ok(Config {
            source: None,
            state_dir: self.state_dir.clone(),
            shutdown_deadline: Duration::from_millis(self.shutdown_deadline_ms),
            log_filter: self.log.filter,
            api: ApiConfig { bind, max_upload_bytes: self.api.max_upload_mb as usize * 1024 * 1024 },
            auth: self.auth.validate()?,
            alerts: self.alerts.validate()?,
            coaching: self.coaching.validate(&stations, gpio.as_ref())?,
            drift: self.drift.validate()?,
            jobs_input_root: self.jobs.input_root.unwrap_or_else(|| self.state_dir.join("batch")),
            anomaly_backbone_dir: self.anomaly.backbone_dir,
            inference: InferenceConfig {
                model_dir: self.inference.model_dir,
                threads: self.inference.threads,
                thresholds: ThresholdOverrides {
                    pass_threshold: self.inference.pass_threshold,
                    fail_threshold: self.inference.fail_threshold,
                },
            },
            cameras,
            stations,
            recipes,
            modbus,
            mqtt,
            opcua,
            wrenches,
            gpio,
            image_retention: match self.storage.image_retention_days {
                None => None,
                Some(days @ 1..=3650) => Some(Duration::from_secs(u64::from(days) * 86_400)),
                Some(_) => {
                    return Err(ConfigError::invalid("storage.image_retention_days", "must be between 1 and 3650"));
                }
            },
        })
    }
}

impl RawGpio {
    fn validate(self) -> Result<GpioConfig, ConfigError> {
        let backend = match self.backend.as_str() {
            "cdev" => GpioBackend::Cdev,
            "sim" => GpioBackend::Sim,
            other => {
                return Err(ConfigError::invalid("gpio.backend", format!("{other:?} is not one of \"cdev\", \"sim\"")));
            }
        };
        if self.consumer.is_empty() || self.consumer.len() > 31 {
            return Err(ConfigError::invalid("gpio.consumer", "must have 1 to 31 characters"));
        }
        // Each line once, whether it is named by offset or by name.
        let mut seen: BTreeMap<LineAddress, String> = BTreeMap::new();
        let mut claim = |key: String, line: &LineAddress| match seen.insert(line.clone(), key.clone()) {
            Some(other) => Err(ConfigError::invalid(key, format!("line {line} is already used by {other}"))),
            None => Ok(()),
        };
        let mut inputs = BTreeMap::new();
        for (name, raw) in self.inputs {
            let key = |field: &str| format!("gpio.inputs.{name}.{field}");
            check_id(&format!("gpio.inputs.{name}"), &name)?;
            let line = line_address(&key("line"), raw.line, raw.chip.unwrap_or_else(|| self.chip.clone()))?;
            claim(format!("gpio.inputs.{name}"), &line)?;
            let edge = match raw.edge.as_str() {
                "rising" => EdgeSelect::Rising,
                "falling" => EdgeSelect::Falling,
                "both" => EdgeSelect::Both,
                other => {
                    return Err(ConfigError::invalid(
                        key("edge"),
                        format!("{other:?} is not one of \"rising\", \"falling\", \"both\""),
                    ));
                }
            };
            if raw.debounce_ms > 1_000 {
                return Err(ConfigError::invalid(key("debounce_ms"), "must be between 0 and 1000"));
            }
            let bias = match raw.bias.as_deref() {
                None => None,
                Some("pull_up") => Some(LineBias::PullUp),
                Some("pull_down") => Some(LineBias::PullDown),
                Some("disabled") => Some(LineBias::Disabled),
                Some(other) => {
                    return Err(ConfigError::invalid(
                        key("bias"),
                        format!("{other:?} is not one of \"pull_up\", \"pull_down\", \"disabled\""),
                    ));
                }
            };
            let input = GpioInput {
                line,
                edge,
                active_low: raw.active_low,
                debounce: Duration::from_millis(raw.debounce_ms),
                bias,
                trigger: raw.trigger,
            };
            inputs.insert(name, input);
        }
        let mut outputs = BTreeMap::new();
        for (name, raw) in self.outputs {
            let key = |field: &str| format!("gpio.outputs.{name}.{field}");
            check_id(&format!("gpio.outputs.{name}"), &name)?;
            if inputs.contains_key(&name) {
                return Err(ConfigError::invalid(format!("gpio.outputs.{name}"), "an input has the same name"));
            }
            let line = line_address(&key("line"), raw.line, raw.chip.unwrap_or_else(|| self.chip.clone()))?;
            claim(format!("gpio.outputs.{name}"), &line)?;
            let safe_active = match raw.safe.as_str() {
                "inactive" => false,
                "active" => true,
                other => {
                    return Err(ConfigError::invalid(
                        key("safe"),
                        format!("{other:?} is not one of \"inactive\", \"active\""),
                    ));
                }
            };
            let pulse = match raw.pulse_ms {
                None => None,
                Some(ms @ 1..=60_000) => Some(Duration::from_millis(ms)),
                Some(_) => return Err(ConfigError::invalid(key("pulse_ms"), "must be between 1 and 60000")),
            };
            outputs.insert(name, GpioOutput { line, active_low: raw.active_low, safe_active, pulse });
        }
        Ok(GpioConfig { backend, consumer: self.consumer, inputs, outputs })
    }
}

/// `line = 17` (an offset on `chip`) or `line = "P9_12"` (a line name on any chip).
fn line_address(key: &str, line: toml::Value, chip: PathBuf) -> Result<LineAddress, ConfigError> {
    match line {
        toml::Value::Integer(offset) => u32::try_from(offset)
            .map(|offset| LineAddress::Offset { chip, offset })
            .map_err(|_| ConfigError::invalid(key, "an offset must be >= 0")),
        toml::Value::String(name) if !name.is_empty() => Ok(LineAddress::Name(name)),
        _ => Err(ConfigError::invalid(key, "must be an offset (17) or a line name (\"P9_12\")")),
    }
}

impl RawStation {
    fn output_map(&self, id: &str, gpio: Option<&GpioConfig>) -> Result<crate::core::outputs::OutputMap, ConfigError> {
        let mut map = crate::core::outputs::OutputMap::default();
        let lists = [
            ("pass_outputs", &self.pass_outputs, &mut map.pass),
            ("fail_outputs", &self.fail_outputs, &mut map.fail),
            ("uncertain_outputs", &self.uncertain_outputs, &mut map.uncertain),
        ];
        for (field, names, into) in lists {
            for name in names {
                let output = gpio.and_then(|g| g.outputs.get(name)).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("stations.{id}.{field}"),
                        format!("no output {name:?} under [gpio.outputs]"),
                    )
                })?;
                into.push(name.clone());
                if output.pulse.is_some() {
                    map.pulsed.insert(name.clone());
                }
            }
        }
        for (field, name, into) in
            [("busy_output", &self.busy_output, &mut map.busy), ("ready_output", &self.ready_output, &mut map.ready)]
        {
            let Some(name) = name else { continue };
            match gpio.and_then(|g| g.outputs.get(name)) {
                None => {
                    return Err(ConfigError::invalid(
                        format!("stations.{id}.{field}"),
                        format!("no output {name:?} under [gpio.outputs]"),
                    ));
                }
                Some(output) if output.pulse.is_some() => {
                    return Err(ConfigError::invalid(
                        format!("stations.{id}.{field}"),
                        format!("{name:?} is a pulse output; {field} needs a level output"),
                    ));
                }
                Some(_) => *into = Some(name.clone()),
            }
        }
        Ok(map)
    }
}

impl RawModbus {
    fn validate(self, stations: &BTreeMap<String, StationConfig>) -> Result<ModbusConfig, ConfigError> {
        let bind: SocketAddr = self
            .bind
            .parse()
            .map_err(|_| ConfigError::invalid("modbus.bind", format!("{:?} is not an address:port", self.bind)))?;
        let allow = self
            .allow
            .iter()
            .map(|ip| {
                ip.parse().map_err(|_| ConfigError::invalid("modbus.allow", format!("{ip:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=64).contains(&self.results_depth) {
            return Err(ConfigError::invalid("modbus.results_depth", "must be between 1 and 64"));
        }
        if !(1..=3600).contains(&self.idle_timeout_s) {
            return Err(ConfigError::invalid("modbus.idle_timeout_s", "must be between 1 and 3600"));
        }
        let mut units = BTreeMap::new();
        for (id, station) in stations {
            let unit = match (station.modbus_unit, stations.len()) {
                (Some(unit), _) => unit,
                (None, 1) => 1,
                (None, _) => {
                    return Err(ConfigError::invalid(
                        format!("stations.{id}.modbus_unit"),
                        "is required when several stations share the Modbus server",
                    ));
                }
            };
            if !(1..=247).contains(&unit) {
                return Err(ConfigError::invalid(format!("stations.{id}.modbus_unit"), "must be between 1 and 247"));
            }
            if let Some(other) = units.insert(unit, id.clone()) {
                return Err(ConfigError::invalid(
                    format!("stations.{id}.modbus_unit"),
                    format!("unit {unit} is already used by station {other:?}"),
                ));
            }
        }
        Ok(ModbusConfig {
            bind,
            allow,
            results_depth: self.results_depth,
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            units,
        })
    }
}

impl RawCamera {
    fn validate(self, id: &str) -> Result<CameraBackend, ConfigError> {
        let key = |field: &str| format!("cameras.{id}.{field}");
        match self.backend.as_str() {
            "sim" => {
                for (field, set) in [
                    ("device", self.device.is_some()),
                    ("width", self.width.is_some()),
                    ("height", self.height.is_some()),
                    ("fps", self.fps.is_some()),
                    ("format", self.format.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::invalid(key(field), "is not used by backend \"sim\""));
                    }
                }
                let folder = self
                    .folder
                    .ok_or_else(|| ConfigError::invalid(key("folder"), "is required for backend \"sim\""))?;
                Ok(CameraBackend::Sim { folder })
            }
            "v4l2" => {
                if self.folder.is_some() {
                    return Err(ConfigError::invalid(key("folder"), "is not used by backend \"v4l2\""));
                }
                let device = match self.device {
                    None => CameraDevice::Index(0),
                    Some(toml::Value::Integer(index)) => CameraDevice::Index(
                        u32::try_from(index).map_err(|_| ConfigError::invalid(key("device"), "index must be >= 0"))?,
                    ),
                    Some(toml::Value::String(name)) => CameraDevice::Name(name),
                    Some(_) => {
                        return Err(ConfigError::invalid(
                            key("device"),
                            "must be an index (0) or a device name (\"HD USB Camera\")",
                        ));
                    }
                };
                let format = match self.format.as_deref().unwrap_or("mjpeg") {
                    "mjpeg" => PixelFormat::Mjpeg,
                    "yuyv" => PixelFormat::Yuyv,
                    other => {
                        return Err(ConfigError::invalid(
                            key("format"),
                            format!("{other:?} is not one of \"mjpeg\", \"yuyv\""),
                        ));
                    }
                };
                let (width, height, fps) =
                    (self.width.unwrap_or(1280), self.height.unwrap_or(720), self.fps.unwrap_or(30));
                if width == 0 || height == 0 || fps == 0 {
                    return Err(ConfigError::invalid(key("width"), "width, height and fps must be > 0"));
                }
                Ok(CameraBackend::V4l2 { device, width, height, fps, format })
            }
            other => Err(ConfigError::invalid(key("backend"), format!("{other:?} is not one of \"sim\", \"v4l2\""))),
        }
    }
}

/// Ids end up in URLs, file names, and later OPC-UA NodeIds and MQTT topics.
fn check_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(ConfigError::invalid(key, "ids use 1 to 64 characters from [A-Za-z0-9_-]")) }
}

fn syntax_error(text: &str, key: Option<String>, err: &toml::de::Error) -> ConfigError {
    let line = err.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Syntax { key, line, message: err.message().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../etc/stationd.toml");

    fn error_of(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    fn with_line(base: &str, find: &str, replace: &str) -> String {
        assert!(base.contains(find), "{find:?} is not in the config");
        base.replacen(find, replace, 1)
    }

    #[test]
    fn reference_config_parses_and_validates() {
        let config = Config::from_toml_str(REFERENCE).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/stationd"));
        assert!(config.stations.contains_key("default"));
    }

    #[test]
    fn embedded_defaults_run_on_a_laptop() {
        let config = Config::embedded_defaults();
        assert_eq!(config.state_dir, PathBuf::from("./var"));
        assert!(matches!(config.cameras["cam0"].backend, CameraBackend::Sim { .. }));
        assert!(config.api.bind.ip().is_loopback());
        // The working tree is the crate root under `cargo test`, as under `cargo run`.
        config.check_files().unwrap();
    }

    /// Every key RawConfig knows is documented in the reference file, in its table
    /// (rust-analyzer's generated-docs test, by hand): a key added to the code must be
    /// added there too. Commented-out keys count as documented.
    #[test]
    fn reference_config_documents_every_key() {
        let tables = [
            "log",
            "api",
            "inference",
            "cameras.",
            "stations.",
            "modbus",
            "mqtt",
            "opcua",
            "storage",
            "gpio",
            "gpio.inputs.",
            "gpio.outputs.",
            "opcua.users.",
            "wrenches.",
            "auth",
            "alerts",
            "coaching",
            "drift",
            "jobs",
            "recipes.",
            "anomaly",
        ];
        let keys = [
            ("", "state_dir"),
            ("", "shutdown_deadline_ms"),
            ("log", "filter"),
            ("api", "bind"),
            ("api", "max_upload_mb"),
            ("auth", "access_token_seconds"),
            ("auth", "refresh_token_hours"),
            ("auth", "requests_per_minute"),
            ("auth", "logins_per_minute"),
            ("alerts", "pass_rate_target_percent"),
            ("alerts", "pass_rate_min_inspections"),
            ("alerts", "disk_free_min_percent"),
            ("alerts", "outbox_backlog_max"),
            ("alerts", "check_interval_s"),
            ("alerts", "keep_cleared_days"),
            ("coaching", "station"),
            ("coaching", "estop_input"),
            ("coaching", "inspect_interval_ms"),
            ("drift", "enabled"),
            ("drift", "reference_frames"),
            ("drift", "window_frames"),
            ("drift", "medium_sigma"),
            ("drift", "high_sigma"),
            ("jobs", "input_root"),
            ("inference", "model_dir"),
            ("inference", "threads"),
            ("inference", "pass_threshold"),
            ("inference", "fail_threshold"),
            ("cameras.", "backend"),
            ("cameras.", "folder"),
            ("cameras.", "device"),
            ("cameras.", "width"),
            ("cameras.", "height"),
            ("cameras.", "fps"),
            ("cameras.", "format"),
            ("stations.", "camera"),
            ("stations.", "modbus_unit"),
            ("stations.", "pass_outputs"),
            ("stations.", "fail_outputs"),
            ("stations.", "uncertain_outputs"),
            ("stations.", "busy_output"),
            ("stations.", "ready_output"),
            ("storage", "image_retention_days"),
            ("gpio", "backend"),
            ("gpio", "chip"),
            ("gpio", "consumer"),
            ("gpio.inputs.", "line"),
            ("gpio.inputs.", "chip"),
            ("gpio.inputs.", "edge"),
            ("gpio.inputs.", "active_low"),
            ("gpio.inputs.", "debounce_ms"),
            ("gpio.inputs.", "bias"),
            ("gpio.inputs.", "trigger"),
            ("gpio.outputs.", "line"),
            ("gpio.outputs.", "chip"),
            ("gpio.outputs.", "active_low"),
            ("gpio.outputs.", "safe"),
            ("gpio.outputs.", "pulse_ms"),
            ("modbus", "enabled"),
            ("modbus", "bind"),
            ("modbus", "allow"),
            ("modbus", "results_depth"),
            ("modbus", "idle_timeout_s"),
            ("mqtt", "enabled"),
            ("mqtt", "host"),
            ("mqtt", "port"),
            ("mqtt", "client_id"),
            ("mqtt", "username"),
            ("mqtt", "password"),
            ("mqtt", "tls"),
            ("mqtt", "ca_file"),
            ("mqtt", "client_cert_file"),
            ("mqtt", "client_key_file"),
            ("mqtt", "keep_alive_s"),
            ("mqtt", "outbox_max_age_h"),
            ("mqtt", "outbox_max_rows"),
            ("mqtt", "outbox_warn_rows"),
            ("opcua", "enabled"),
            ("opcua", "bind"),
            ("opcua", "host"),
            ("opcua", "path"),
            ("opcua", "allow_anonymous"),
            ("opcua", "allow_insecure"),
            ("opcua", "trust_all_client_certs"),
            ("opcua.users.", "password"),
            ("wrenches.", "backend"),
            ("wrenches.", "address"),
            ("wrenches.", "port"),
            ("wrenches.", "station"),
            ("wrenches.", "manufacturer"),
            ("wrenches.", "model"),
            ("wrenches.", "result_revision"),
            ("wrenches.", "link_level_acks"),
            ("wrenches.", "keep_alive_s"),
            ("wrenches.", "link_timeout_s"),
            ("wrenches.", "reply_timeout_s"),
            ("wrenches.", "reconnect_max_s"),
            ("wrenches.", "busy_backoff_s"),
            ("wrenches.", "set_time_on_connect"),
            ("wrenches.", "backfill_limit"),
            ("wrenches.", "sim_interval_ms"),
            ("wrenches.", "sim_nok_ratio"),
            ("stations.", "recipe"),
            ("stations.", "mm_per_pixel"),
            ("recipes.", "items"),
            ("recipes.", "name"),
            ("recipes.", "quantity"),
            ("recipes.", "aliases"),
            ("anomaly", "backbone_dir"),
        ];
        let mut documented = std::collections::HashSet::new();
        let mut table = String::new();
        for line in REFERENCE.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = header.to_owned();
                continue;
            }
            for (key_table, key) in keys {
                let in_table = if key_table.ends_with('.') { table.starts_with(key_table) } else { table == key_table };
                if in_table && line.starts_with(&format!("{key} ")) {
                    documented.insert((key_table, key));
                }
            }
        }
        for pair in keys {
            assert!(documented.contains(&pair), "{pair:?} is missing from etc/stationd.toml");
        }
        for table in tables {
            assert!(REFERENCE.contains(&format!("[{table}")), "[{table}] is missing from etc/stationd.toml");
        }
        // And the lists above are complete: count the serde fields of the raw structs.
        let source = include_str!("config.rs");
        let raw_fields = source
            .split("struct Raw")
            .skip(1)
            .map(|s| s.split('}').next().unwrap())
            .flat_map(|body| body.lines())
            .filter(|line| line.trim_end().ends_with(',') && line.contains(':'))
            .count();
        assert_eq!(raw_fields, keys.len() + tables.len(), "update the key lists of this test");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let text = with_line(REFERENCE, "max_upload_mb = 20", "max_upload_mb = 20\nmax_uplaod_mb = 3");
        expect_test::expect![
            "`api.max_uplaod_mb`: unknown field `max_uplaod_mb`, expected `bind` or `max_upload_mb` (line 24)"
        ]
        .assert_eq(&error_of(&text));
        let text = with_line(REFERENCE, "[stations.default]", "[stations.default]\ncamra = \"cam0\"");
        assert!(error_of(&text).starts_with("`stations.default.camra`: unknown field"), "{}", error_of(&text));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("bind = \"127.0.0.1:8080\"", "bind = \"localhost\"", "`api.bind`: \"localhost\" is not an address:port"),
            ("threads = 1", "threads = 0", "`inference.threads`: must be between 1 and 64"),
            (
                "backend = \"sim\"",
                "backend = \"usb\"",
                "`cameras.cam0.backend`: \"usb\" is not one of \"sim\", \"v4l2\"",
            ),
            ("camera = \"cam0\"", "camera = \"cam9\"", "`stations.default.camera`: no camera \"cam9\" under [cameras]"),
            (
                "shutdown_deadline_ms = 10000",
                "shutdown_deadline_ms = \"10s\"",
                "`shutdown_deadline_ms`: invalid type: string \"10s\", expected u64 (line 12)",
            ),
            (
                "# pass_threshold = 0.80",
                "pass_threshold = 0.3\nfail_threshold = 0.5",
                "`inference.fail_threshold`: must be below inference.pass_threshold (0.3)",
            ),
        ];
        for (find, replace, expected) in cases {
            assert_eq!(error_of(&with_line(REFERENCE, find, replace)), expected);
        }
    }

    #[test]
    fn gpio_lines_and_station_outputs_are_checked() {
        let cases = [
            (
                "line = 23",
                "line = 22",
                "`gpio.outputs.green`: line /dev/gpiochip0:22 is already used by gpio.outputs.amber",
            ),
            ("line = 23", "line = -1", "`gpio.outputs.amber.line`: an offset must be >= 0"),
            (
                "line = 23",
                "line = true",
                "`gpio.outputs.amber.line`: must be an offset (17) or a line name (\"P9_12\")",
            ),
            (
                "edge = \"rising\"",
                "edge = \"up\"",
                "`gpio.inputs.trigger.edge`: \"up\" is not one of \"rising\", \"falling\", \"both\"",
            ),
            ("pulse_ms = 250", "pulse_ms = 0", "`gpio.outputs.reject.pulse_ms`: must be between 1 and 60000"),
            (
                "trigger = \"default\"",
                "trigger = \"line-2\"",
                "`gpio.inputs.trigger.trigger`: no station \"line-2\" under [stations]",
            ),
            (
                "busy_output = \"busy\"",
                "busy_output = \"reject\"",
                "`stations.default.busy_output`: \"reject\" is a pulse output; busy_output needs a level output",
            ),
            (
                "pass_outputs = [\"green\"]",
                "pass_outputs = [\"gren\"]",
                "`stations.default.pass_outputs`: no output \"gren\" under [gpio.outputs]",
            ),
            ("backend = \"cdev\"", "backend = \"sysfs\"", "`gpio.backend`: \"sysfs\" is not one of \"cdev\", \"sim\""),
        ];
        for (find, replace, expected) in cases {
            assert_eq!(error_of(&with_line(REFERENCE, find, replace)), expected);
        }
        let config = Config::from_toml_str(REFERENCE).unwrap();
        let gpio = config.gpio.unwrap();
        assert_eq!(gpio.inputs["trigger"].trigger.as_deref(), Some("default"));
        assert_eq!(gpio.outputs["reject"].pulse, Some(Duration::from_millis(250)));
        assert_eq!(config.stations["default"].outputs.pulsed, ["reject".to_owned()].into());
    }

    #[test]
    fn sim_camera_rejects_v4l2_keys() {
        let text = with_line(REFERENCE, "backend = \"sim\"", "backend = \"sim\"\nwidth = 640");
        assert_eq!(error_of(&text), "`cameras.cam0.width`: is not used by backend \"sim\"");
    }

    #[test]
    fn v4l2_camera_resolves_defaults() {
        let text = REFERENCE.replace(
            "backend = \"sim\"\nfolder = \"/usr/share/stationd/examples/parts\"",
            "backend = \"v4l2\"\ndevice = \"HD USB Camera\"\nformat = \"yuyv\"",
        );
        let config = Config::from_toml_str(&text).unwrap();
        let CameraBackend::V4l2 { device, width, height, fps, format } = &config.cameras["cam0"].backend else {
            panic!("expected v4l2")
        };
        assert_eq!(device, &CameraDevice::Name("HD USB Camera".into()));
        assert_eq!((*width, *height, *fps, *format), (1280, 720, 30, PixelFormat::Yuyv));
    }

    #[test]
    fn toml_syntax_errors_give_a_line() {
        let err = error_of("state_dir = \"/x\"\n[api\nbind = 1");
        assert!(err.contains("(line 2)"), "{err}");
    }
}
