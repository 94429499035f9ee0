//! A simulated GPIO chip with the kernel's behaviour where stationd depends on it:
//! debounce (a level counts once it has held for the input's debounce period; a bounce
//! back within it is no edge), active-low (the control drives and reads *physical*
//! levels, the backend reports logical ones), outputs requested at their safe level,
//! "line busy" when another holder has a line, and failing writes.
//!
//! [`GpioSimControl`] is the other side of the wires: tests, benches and the sim-only
//! REST endpoint use it to drive inputs and watch outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{GpioError, GpioLines, InputEdge};
use crate::config::{EdgeSelect, GpioConfig};

/// The wiring side of the simulated chip. Cheap to clone.
#[derive(Clone)]
pub struct GpioSimControl {
    shared: Arc<Mutex<Chip>>,
    config: Arc<GpioConfig>,
    /// Bumped on every output change; see [`GpioSimControl::wait_output`].
    changes: watch::Receiver<u64>,
}

const LOG_CAPACITY: usize = 4096;

struct Chip {
    /// Physical level of every line (true = high).
    physical: BTreeMap<String, bool>,
    /// Lines another program holds: opening fails with `Busy`.
    busy: BTreeSet<String>,
    fail_writes: bool,
    /// Where input changes go while a backend has the lines open.
    wires: Option<mpsc::UnboundedSender<Change>>,
    /// The latest output changes in order (at most `LOG_CAPACITY`, so a demo station
    /// running for weeks does not grow): (output, logical level, when).
    log: VecDeque<(String, bool, Instant)>,
    changed: watch::Sender<u64>,
}

struct Change {
    input: String,
    high: bool,
    at: Instant,
}

impl GpioSimControl {
    /// A chip with the config's lines: inputs at their inactive level, outputs at their
    /// safe level.
    pub fn new(config: &GpioConfig) -> GpioSimControl {
        let mut physical = BTreeMap::new();
        for (name, input) in &config.inputs {
            physical.insert(name.clone(), input.active_low);
        }
        for (name, output) in &config.outputs {
            physical.insert(name.clone(), output.safe_active != output.active_low);
        }
        let (changed, changes) = watch::channel(0);
        let chip =
            Chip { physical, busy: BTreeSet::new(), fail_writes: false, wires: None, log: VecDeque::new(), changed };
        GpioSimControl { shared: Arc::new(Mutex::new(chip)), config: Arc::new(config.clone()), changes }
    }

    fn chip(&self) -> MutexGuard<'_, Chip> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests the lines, as the daemon's backend factory.
    pub fn open(&self) -> Result<SimGpio, GpioError> {
        let mut chip = self.chip();
        if let Some(line) = chip.busy.iter().next() {
            return Err(GpioError::Busy { line: line.clone() });
        }
        if chip.wires.as_ref().is_some_and(|w| !w.is_closed()) {
            let line = self.config.inputs.keys().chain(self.config.outputs.keys()).next().cloned().unwrap_or_default();
            return Err(GpioError::Busy { line });
        }
        let (wires, changes) = mpsc::unbounded_channel();
        chip.wires = Some(wires);
        // Outputs are requested at their safe level.
        for (name, output) in &self.config.outputs {
            let high = output.safe_active != output.active_low;
            set_physical(&mut chip, name, output.safe_active, high);
        }
        let stable =
            self.config.inputs.iter().map(|(name, input)| (name.clone(), chip.physical[name] != input.active_low));
        let stable = stable.collect();
        Ok(SimGpio {
            shared: self.shared.clone(),
            config: self.config.clone(),
            changes,
            stable,
            pending: BTreeMap::new(),
        })
    }

    /// Drives an input's wire to a *logical* level (what a pressed button or a blocked
    /// light barrier means), inverting for an active-low input. Returns when it happened.
    pub fn drive(&self, input: &str, active: bool) -> Result<Instant, GpioError> {
        let config = self.config.inputs.get(input).ok_or_else(|| self.unknown_input(input))?;
        self.drive_physical(input, active != config.active_low)
    }

    /// Drives an input's wire to a physical level.
    pub fn drive_physical(&self, input: &str, high: bool) -> Result<Instant, GpioError> {
        if !self.config.inputs.contains_key(input) {
            return Err(self.unknown_input(input));
        }
        let at = Instant::now();
        let mut chip = self.chip();
        chip.physical.insert(input.to_owned(), high);
        if let Some(wires) = &chip.wires {
            let _ = wires.send(Change { input: input.to_owned(), high, at });
        }
        Ok(at)
    }

    fn unknown_input(&self, name: &str) -> GpioError {
        if self.config.outputs.contains_key(name) {
            GpioError::NotAnInput(name.to_owned())
        } else {
            GpioError::Unknown(name.to_owned())
        }
    }

    /// An output's logical level.
    pub fn output(&self, output: &str) -> Option<bool> {
        let active_low = self.config.outputs.get(output)?.active_low;
        self.chip().physical.get(output).map(|high| *high != active_low)
    }

    /// An output's physical level.
    pub fn output_physical(&self, output: &str) -> Option<bool> {
        self.config.outputs.get(output)?;
        self.chip().physical.get(output).copied()
    }

    /// The latest output changes, as `name=1` / `name=0` (logical), oldest first.
    pub fn output_log(&self) -> Vec<String> {
        self.chip().log.iter().map(|(name, active, _)| format!("{name}={}", u8::from(*active))).collect()
    }

    /// Waits until `output` is at `active` (logical) and returns when it got there.
    pub async fn wait_output(&self, output: &str, active: bool) -> Instant {
        let mut changes = self.changes.clone();
        let active_low = self.config.outputs.get(output).map(|o| o.active_low);
        loop {
            {
                let chip = self.chip();
                let last = chip.log.iter().rev().find(|(name, _, _)| name == output);
                match last {
                    Some((_, level, at)) if *level == active => return *at,
                    None if active_low.is_some_and(|low| chip.physical[output] != low) == active => {
                        return Instant::now();
                    }
                    _ => {}
                }
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Marks a line as held by another program (opening then fails), or frees it.
    pub fn set_busy(&self, line: &str, busy: bool) {
        let mut chip = self.chip();
        if busy {
            chip.busy.insert(line.to_owned())
        } else {
            chip.busy.remove(line)
        };
    }

    /// Makes every output write fail (a driver error), or work again.
    pub fn fail_writes(&self, fail: bool) {
        self.chip().fail_writes = fail;
    }
}

fn set_physical(chip: &mut Chip, output: &str, active: bool, high: bool) {
    let before = chip.physical.insert(output.to_owned(), high);
    if before != Some(high) {
        if chip.log.len() == LOG_CAPACITY {
            chip.log.pop_front();
        }
        chip.log.push_back((output.to_owned(), active, Instant::now()));
        chip.changed.send_modify(|n| *n += 1);
    }
}

/// The backend: holds the simulated lines until dropped.
pub struct SimGpio {
    shared: Arc<Mutex<Chip>>,
    config: Arc<GpioConfig>,
    changes: mpsc::UnboundedReceiver<Change>,
    /// Debounced logical level of each input.
    stable: BTreeMap<String, bool>,
    /// Input levels that differ from `stable`, waiting out their debounce period:
    /// (logical level, when it counts, when the wire changed).
    pending: BTreeMap<String, (bool, tokio::time::Instant, Instant)>,
}

impl SimGpio {
    /// A settled change becomes the stable level; returns the edge if it is one the input
    /// reports.
    fn settle(&mut self, input: &str, active: bool, at: Instant) -> Option<InputEdge> {
        self.stable.insert(input.to_owned(), active);
        let wanted = match self.config.inputs[input].edge {
            EdgeSelect::Rising => active,
            EdgeSelect::Falling => !active,
            EdgeSelect::Both => true,
        };
        wanted.then(|| InputEdge { input: input.to_owned(), active, at })
    }
}

impl GpioLines for SimGpio {
    async fn next_edge(&mut self) -> Result<InputEdge, GpioError> {
        loop {
            let due = self
                .pending
                .iter()
                .min_by_key(|(_, (_, due, _))| *due)
                .map(|(name, (active, due, at))| (name.clone(), *active, *due, *at));
            let deadline = due.as_ref().map(|(_, _, due, _)| *due);
            tokio::select! {
                change = self.changes.recv() => {
                    let Some(change) = change else { return std::future::pending().await };
                    let input = &self.config.inputs[&change.input];
                    let active = change.high != input.active_low;
                    if self.stable[&change.input] == active {
                        // Back to the stable level within the debounce period: no edge.
                        self.pending.remove(&change.input);
                    } else if input.debounce.is_zero() {
                        if let Some(edge) = self.settle(&change.input, active, change.at) {
                            return Ok(edge);
                        }
                    } else {
                        let due = tokio::time::Instant::now() + input.debounce;
                        self.pending.insert(change.input, (active, due, change.at));
                    }
                }
                () = super::sleep_until_some(deadline) => {
                    let (input, active, _, at) = due.expect("a deadline comes from a pending change");
                    self.pending.remove(&input);
                    if let Some(edge) = self.settle(&input, active, at) {
                        return Ok(edge);
                    }
                }
            }
        }
    }

    fn set(&mut self, output: &str, active: bool) -> Result<(), GpioError> {
        let config = self.config.outputs.get(output).ok_or_else(|| GpioError::Unknown(output.to_owned()))?;
        let mut chip = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if chip.fail_writes {
            return Err(GpioError::Io { line: output.to_owned(), message: "simulated write failure".into() });
        }
        set_physical(&mut chip, output, active, active != config.active_low);
        Ok(())
    }

    fn level(&mut self, line: &str) -> Result<bool, GpioError> {
        if let Some(active) = self.stable.get(line) {
            return Ok(*active);
        }
        let config = self.config.outputs.get(line).ok_or_else(|| GpioError::Unknown(line.to_owned()))?;
        let chip = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        Ok(chip.physical[line] != config.active_low)
    }
}

impl Drop for SimGpio {
    fn drop(&mut self) {
        // Release the lines: the wires go nowhere until the next open.
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).wires = None;
    }
}
