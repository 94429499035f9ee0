//! GPIO: the station's digital inputs (triggers, sensors) and outputs (stack light, reject
//! gate, busy). A [`GpioLines`] backend (the kernel's character device through gpiocdev,
//! or the simulated chip) is owned by one service task; the daemon holds a [`GpioHandle`]
//! to drive outputs, read levels and hear input edges.
//!
//! Safe state: every output goes to its configured safe level when the lines are opened
//! and whenever the service ends, by any path: an orderly stop, an error, or a panic
//! (a drop guard owns the lines). A panic elsewhere (the core task, say) makes the
//! supervisor drain the daemon, and this service's phase then applies the safe state too.
//! A `kill -9` or a power loss cannot run code: wire the loads so that a released line
//! is safe (see docs/gpio.md).

pub mod cdev;
pub mod sim;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{GpioConfig, GpioOutput};
use crate::core::outputs::OutputCommand;
use crate::supervisor::{Phase, ServiceContext, Supervisor};

/// An input's debounced change of logical level (after active-low).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputEdge {
    pub input: String,
    /// The new logical level.
    pub active: bool,
    /// When the backend saw it.
    pub at: Instant,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GpioError {
    #[error("line {line}: busy (held by another program)")]
    Busy { line: String },
    #[error("line {line}: not found")]
    NotFound { line: String },
    #[error("line {line}: {message}")]
    Io { line: String, message: String },
    #[error("no GPIO line named {0:?}")]
    Unknown(String),
    #[error("line {0:?} is an input")]
    NotAnOutput(String),
    #[error("line {0:?} is an output")]
    NotAnInput(String),
    #[error("the GPIO lines are not open: {0}")]
    Unavailable(String),
    #[error("the GPIO service has stopped")]
    Stopped,
}

/// What a GPIO backend does. Lines are requested when the backend is made (with outputs
/// at their safe level) and released when it is dropped. Names are the config's.
pub trait GpioLines: Send + 'static {
    /// The next configured edge of any input. Must be cancel-safe: the service drops the
    /// future whenever another request arrives.
    fn next_edge(&mut self) -> impl Future<Output = Result<InputEdge, GpioError>> + Send;

    /// Drives an output to a logical level.
    fn set(&mut self, output: &str, active: bool) -> Result<(), GpioError>;

    /// The logical level of an input or output.
    fn level(&mut self, line: &str) -> Result<bool, GpioError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

/// One line as `GET /api/v1/system/gpio` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineStatus {
    pub name: String,
    pub direction: Direction,
    /// `"/dev/gpiochip0:17"` or the line's name.
    pub line: String,
    pub active_low: bool,
    /// The logical level, or why it could not be read.
    pub active: Result<bool, String>,
    /// For a trigger input: the station it inspects.
    pub trigger: Option<String>,
    pub pulse: Option<Duration>,
}

enum Request {
    Apply(Vec<OutputCommand>, oneshot::Sender<Result<(), GpioError>>),
    Status(oneshot::Sender<Vec<LineStatus>>),
}

/// Cheap to clone.
#[derive(Clone)]
pub struct GpioHandle {
    requests: mpsc::Sender<Request>,
    edges: broadcast::Sender<InputEdge>,
    config: Arc<GpioConfig>,
}

impl GpioHandle {
    /// Carries out output commands in order. A command for an unknown line or an input
    /// fails before any of them is applied.
    pub async fn apply(&self, commands: Vec<OutputCommand>) -> Result<(), GpioError> {
        for command in &commands {
            let (OutputCommand::Set { output, .. } | OutputCommand::Pulse { output }) = command;
            if !self.config.outputs.contains_key(output) {
                return Err(if self.config.inputs.contains_key(output) {
                    GpioError::NotAnOutput(output.clone())
                } else {
                    GpioError::Unknown(output.clone())
                });
            }
        }
        self.ask(|reply| Request::Apply(commands, reply)).await?
    }

    /// Every configured line with its current level.
    pub async fn status(&self) -> Result<Vec<LineStatus>, GpioError> {
        self.ask(Request::Status).await
    }

    /// Sends a request to the service and waits for its answer.
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, GpioError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| GpioError::Stopped)?;
        answer.await.map_err(|_| GpioError::Stopped)
    }

    /// Input edges from now on. A receiver that falls more than a few hundred edges
    /// behind loses the oldest (`RecvError::Lagged`).
    pub fn edges(&self) -> broadcast::Receiver<InputEdge> {
        self.edges.subscribe()
    }

    pub fn config(&self) -> &GpioConfig {
        &self.config
    }
}

/// How long the service waits before asking for lines again after they would not open.
const REOPEN_BACKOFF: Duration = Duration::from_secs(5);
const EDGE_QUEUE: usize = 256;

/// Starts the service that owns the lines. `open` requests them (outputs at their safe
/// level); when it fails (a line busy or missing) the service is degraded and tries again
/// every `REOPEN_BACKOFF`, and the daemon stays up.
pub fn spawn<B, F>(supervisor: &mut Supervisor, config: GpioConfig, open: F) -> GpioHandle
where
    B: GpioLines,
    F: FnMut() -> Result<B, GpioError> + Send + 'static,
{
    let (requests, rx) = mpsc::channel(32);
    let (edges, _) = broadcast::channel(EDGE_QUEUE);
    let handle = GpioHandle { requests, edges: edges.clone(), config: Arc::new(config) };
    let config = handle.config.clone();
    supervisor.spawn("gpio", Phase::Devices, move |ctx| run(ctx, config, open, rx, edges));
    handle
}

async fn run<B, F>(
    ctx: ServiceContext,
    config: Arc<GpioConfig>,
    mut open: F,
    mut requests: mpsc::Receiver<Request>,
    edges: broadcast::Sender<InputEdge>,
) -> Result<(), crate::supervisor::ServiceError>
where
    B: GpioLines,
    F: FnMut() -> Result<B, GpioError> + Send + 'static,
{
    let mut lines: Option<SafeOnDrop<B>> = None;
    let mut unavailable = String::from("not opened yet");
    let mut next_open = tokio::time::Instant::now();
    // Pulse outputs that are active, with when they go back to safe.
    let mut pulses: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    // The handles go away with the intake services, before this phase: the lines stay
    // held (and pulses end) until the service itself is stopped.
    let mut handles_gone = false;
    loop {
        if lines.is_none() && tokio::time::Instant::now() >= next_open {
            match open() {
                Ok(opened) => {
                    tracing::info!(inputs = config.inputs.len(), outputs = config.outputs.len(), "GPIO lines open");
                    lines = Some(SafeOnDrop { lines: opened, config: config.clone() });
                    ctx.set_ready();
                }
                Err(err) => {
                    tracing::error!(cause = %err, "GPIO lines unavailable; retrying");
                    unavailable = err.to_string();
                    ctx.set_degraded(err.to_string());
                    next_open = tokio::time::Instant::now() + REOPEN_BACKOFF;
                }
            }
        }
        let next_pulse_end = pulses.values().min().copied();
        let step = tokio::select! {
            () = ctx.token.cancelled() => break,
            request = requests.recv(), if !handles_gone => match request {
                Some(request) => Step::Request(request),
                None => Step::HandlesGone,
            },
            edge = async { lines.as_mut().expect("guarded by the branch condition").lines.next_edge().await },
                if lines.is_some() => Step::Edge(edge),
            () = sleep_until_some(next_pulse_end) => Step::PulseEnd,
            () = tokio::time::sleep_until(next_open), if lines.is_none() => Step::Reopen,
        };
        match step {
            Step::Request(Request::Apply(commands, reply)) => {
                let result = match lines.as_mut() {
                    Some(lines) => apply(&mut lines.lines, &config, &commands, &mut pulses),
                    None => Err(GpioError::Unavailable(unavailable.clone())),
                };
                let _ = reply.send(result);
            }
            Step::Request(Request::Status(reply)) => {
                let _ = reply.send(status(lines.as_mut().map(|l| &mut l.lines), &config, &unavailable));
            }
            Step::Edge(Ok(edge)) => {
                tracing::debug!(input = edge.input, active = edge.active, "GPIO edge");
                let _ = edges.send(edge);
            }
            Step::Edge(Err(err)) => {
                // A chip that went away (a USB GPIO expander unplugged): release everything
                // and open again.
                tracing::error!(cause = %err, "GPIO read failed; reopening the lines");
                unavailable = err.to_string();
                ctx.set_degraded(err.to_string());
                lines = None;
                pulses.clear();
                next_open = tokio::time::Instant::now() + REOPEN_BACKOFF;
            }
            Step::PulseEnd => {
                let now = tokio::time::Instant::now();
                let ended: Vec<String> =
                    pulses.iter().filter(|(_, end)| **end <= now).map(|(o, _)| o.clone()).collect();
                for output in ended {
                    pulses.remove(&output);
                    if let Some(lines) = lines.as_mut() {
                        let safe = config.outputs[&output].safe_active;
                        if let Err(err) = lines.lines.set(&output, safe) {
                            tracing::error!(output, cause = %err, "cannot end a pulse");
                        }
                    }
                }
            }
            Step::Reopen => {}
            Step::HandlesGone => handles_gone = true,
        }
    }
    // Dropping the guard puts every output in its safe state and releases the lines.
    drop(lines);
    tracing::info!("GPIO outputs in their safe state");
    Ok(())
}

enum Step {
    Request(Request),
    Edge(Result<InputEdge, GpioError>),
    PulseEnd,
    Reopen,
    HandlesGone,
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn apply<B: GpioLines>(
    lines: &mut B,
    config: &GpioConfig,
    commands: &[OutputCommand],
    pulses: &mut BTreeMap<String, tokio::time::Instant>,
) -> Result<(), GpioError> {
    for command in commands {
        match command {
            OutputCommand::Set { output, active } => {
                lines.set(output, *active)?;
                // A level set by hand ends a pulse in progress on that output.
                pulses.remove(output);
            }
            OutputCommand::Pulse { output } => {
                let length = config.outputs.get(output).and_then(|o| o.pulse).unwrap_or(DEFAULT_PULSE);
                lines.set(output, !config.outputs[output].safe_active)?;
                // A pulse during a pulse extends it.
                pulses.insert(output.clone(), tokio::time::Instant::now() + length);
            }
        }
    }
    Ok(())
}

/// The pulse of an output set with `Pulse` that has no `pulse_ms` of its own.
const DEFAULT_PULSE: Duration = Duration::from_millis(200);

fn status<B: GpioLines>(mut lines: Option<&mut B>, config: &GpioConfig, unavailable: &str) -> Vec<LineStatus> {
    let mut level = |name: &str| match lines.as_mut() {
        Some(lines) => lines.level(name).map_err(|err| err.to_string()),
        None => Err(unavailable.to_owned()),
    };
    let inputs = config.inputs.iter().map(|(name, input)| LineStatus {
        name: name.clone(),
        direction: Direction::Input,
        line: input.line.to_string(),
        active_low: input.active_low,
        active: level(name),
        trigger: input.trigger.clone(),
        pulse: None,
    });
    let inputs: Vec<LineStatus> = inputs.collect();
    let outputs = config.outputs.iter().map(|(name, output)| LineStatus {
        name: name.clone(),
        direction: Direction::Output,
        line: output.line.to_string(),
        active_low: output.active_low,
        active: level(name),
        trigger: None,
        pulse: output.pulse,
    });
    let outputs: Vec<LineStatus> = outputs.collect();
    inputs.into_iter().chain(outputs).collect()
}

/// Owns the lines; whatever ends the service (return, error, panic), dropping this puts
/// every output in its safe state first.
struct SafeOnDrop<B: GpioLines> {
    lines: B,
    config: Arc<GpioConfig>,
}

impl<B: GpioLines> Drop for SafeOnDrop<B> {
    fn drop(&mut self) {
        for (name, GpioOutput { safe_active, .. }) in &self.config.outputs {
            if let Err(err) = self.lines.set(name, *safe_active) {
                tracing::error!(output = name, cause = %err, "cannot put output in its safe state");
            }
        }
    }
}

#[cfg(test)]
mod tests;
