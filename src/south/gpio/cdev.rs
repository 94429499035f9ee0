//! The real backend: the kernel's GPIO character device (`/dev/gpiochipN`, uAPI v2)
//! through gpiocdev. One line request per configured line, so each input keeps its own
//! edge, bias, active-low and debounce settings (debounce is done by the kernel). Lines are
//! released when this is dropped; outputs are requested at their safe level.
//!
//! Deliberately thin: no chip exists on the build machines, so everything with logic in
//! it (debounce semantics, pulses, safe state, triggers) sits above the trait and is
//! tested with the simulated chip; `hil-tests/` checks this file on a bench.

use std::collections::BTreeMap;
use std::time::Instant;

use gpiocdev::Request;
use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Builder;
use gpiocdev::tokio::AsyncRequest;

use super::{GpioError, GpioLines, InputEdge};
use crate::config::{EdgeSelect, GpioConfig, LineAddress, LineBias};

pub struct CdevGpio {
    inputs: Vec<(String, AsyncRequest)>,
    outputs: BTreeMap<String, Request>,
}

impl CdevGpio {
    /// Requests every configured line. Must run inside the tokio runtime (the inputs are
    /// registered with its reactor).
    pub fn open(config: &GpioConfig) -> Result<CdevGpio, GpioError> {
        let mut inputs = Vec::new();
        for (name, input) in &config.inputs {
            let mut builder = Request::builder();
            locate(&mut builder, &input.line)?;
            builder.with_consumer(config.consumer.as_str()).as_input();
            if input.active_low {
                builder.as_active_low();
            }
            builder.with_edge_detection(match input.edge {
                EdgeSelect::Rising => EdgeDetection::RisingEdge,
                EdgeSelect::Falling => EdgeDetection::FallingEdge,
                EdgeSelect::Both => EdgeDetection::BothEdges,
            });
            if !input.debounce.is_zero() {
                builder.with_debounce_period(input.debounce);
            }
            if let Some(bias) = input.bias {
                builder.with_bias(match bias {
                    LineBias::PullUp => Bias::PullUp,
                    LineBias::PullDown => Bias::PullDown,
                    LineBias::Disabled => Bias::Disabled,
                });
            }
            let request = builder.request().map_err(|err| request_error(&input.line, err))?;
            inputs.push((name.clone(), AsyncRequest::new(request)));
        }
        let mut outputs = BTreeMap::new();
        for (name, output) in &config.outputs {
            let mut builder = Request::builder();
            locate(&mut builder, &output.line)?;
            builder.with_consumer(config.consumer.as_str());
            if output.active_low {
                builder.as_active_low();
            }
            builder.as_output(value(output.safe_active));
            let request = builder.request().map_err(|err| request_error(&output.line, err))?;
            outputs.insert(name.clone(), request);
        }
        Ok(CdevGpio { inputs, outputs })
    }
}

impl GpioLines for CdevGpio {
    async fn next_edge(&mut self) -> Result<InputEdge, GpioError> {
        if self.inputs.is_empty() {
            return std::future::pending().await;
        }
        // Reading an edge event only consumes it once the fd is readable and the read is
        // done, so dropping these futures loses nothing.
        let reads =
            self.inputs.iter().map(|(name, request)| Box::pin(async move { (name, request.read_edge_event().await) }));
        let ((name, event), _, _) = futures_util::future::select_all(reads).await;
        let event = event.map_err(|err| GpioError::Io { line: name.clone(), message: err.to_string() })?;
        Ok(InputEdge { input: name.clone(), active: event.kind == EdgeKind::Rising, at: Instant::now() })
    }

    fn set(&mut self, output: &str, active: bool) -> Result<(), GpioError> {
        let request = self.outputs.get(output).ok_or_else(|| GpioError::Unknown(output.to_owned()))?;
        request
            .set_lone_value(value(active))
            .map_err(|err| GpioError::Io { line: output.to_owned(), message: err.to_string() })
    }

    fn level(&mut self, line: &str) -> Result<bool, GpioError> {
        let request = match self.outputs.get(line) {
            Some(request) => request,
            None => self
                .inputs
                .iter()
                .find(|(name, _)| name == line)
                .map(|(_, request)| request.as_ref())
                .ok_or_else(|| GpioError::Unknown(line.to_owned()))?,
        };
        let level =
            request.lone_value().map_err(|err| GpioError::Io { line: line.to_owned(), message: err.to_string() })?;
        Ok(level == Value::Active)
    }
}

fn value(active: bool) -> Value {
    if active { Value::Active } else { Value::Inactive }
}

fn locate(builder: &mut Builder, line: &LineAddress) -> Result<(), GpioError> {
    match line {
        LineAddress::Offset { chip, offset } => {
            builder.on_chip(chip.as_path()).with_line(*offset);
        }
        LineAddress::Name(name) => {
            let found =
                gpiocdev::find_named_line(name).ok_or_else(|| GpioError::NotFound { line: line.to_string() })?;
            builder.with_found_line(&found);
        }
    }
    Ok(())
}

fn request_error(line: &LineAddress, err: gpiocdev::Error) -> GpioError {
    let message = err.to_string();
    // The kernel answers EBUSY ("Device or resource busy") for a line another process holds.
    if message.contains("busy") {
        GpioError::Busy { line: line.to_string() }
    } else {
        GpioError::Io { line: line.to_string(), message }
    }
}
