//! Modbus TCP server (tokio-modbus) for PLCs: the register map of `register_map.rs`, one
//! unit id per station, and the trigger handshake of `handshake.rs`.
//!
//! Layers: tokio-modbus does the framing and hands each request to [`ModbusService`],
//! which forwards it to one actor task that owns every unit's handshake and the latest
//! snapshot; the actor answers from that state. A trigger becomes a job for the unit's
//! trigger runner, which runs the inspection and reports the committed result back, so
//! ResultsValid is only ever raised for a record that is already in SQLite.
//!
//! Robustness: malformed frames end that connection only (the codec rejects them);
//! unknown unit ids get GatewayTargetDevice, bad addresses IllegalDataAddress, writes
//! outside the handshake coils IllegalDataAddress, unsupported functions IllegalFunction.
//! Clients outside the allow-list are disconnected at accept.

pub mod guard;
pub mod handshake;
pub mod register_map;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::bus::Snapshot;
use crate::config::ModbusConfig;
use crate::cycle::{CycleError, CycleImage, InspectRequest, Inspector};
use crate::inference::InferenceError;
use crate::supervisor::{Phase, Readiness, ServiceContext, ServiceError, Supervisor};
use handshake::{Action, Handshake, PlcResult, TriggerError};
use register_map as map;

enum Msg {
    Request { unit: u8, request: Request<'static>, reply: oneshot::Sender<Result<Response, ExceptionCode>> },
    Done { unit: u8, outcome: Result<PlcResult, TriggerError> },
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Registers the server service and one trigger runner per station.
pub fn spawn(
    supervisor: &mut Supervisor,
    listener: TcpListener,
    config: ModbusConfig,
    inspector: Inspector,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    readiness: Readiness,
) {
    let (actor_tx, actor_rx) = mpsc::channel(256);
    let mut units = BTreeMap::new();
    for (&unit, station_id) in &config.units {
        let (jobs_tx, jobs_rx) = mpsc::channel(config.results_depth);
        units.insert(
            unit,
            Unit { station_id: station_id.clone(), handshake: Handshake::new(config.results_depth), jobs: jobs_tx },
        );
        let (inspector, actor, station_id) = (inspector.clone(), actor_tx.clone(), station_id.clone());
        supervisor.spawn(format!("modbus-trigger[{station_id}]"), Phase::Intake, move |ctx| {
            run_triggers(unit, station_id, jobs_rx, inspector, actor, ctx)
        });
    }
    let actor = Actor { units, snapshots, readiness, started: Instant::now() };
    let access = Arc::new(Access { allow: config.allow, idle_timeout: config.idle_timeout });
    supervisor.spawn("modbus", Phase::Intake, move |ctx| serve(listener, access, actor, actor_tx, actor_rx, ctx));
}

/// Who may connect, and how long a connection may stay silent.
struct Access {
    allow: Vec<IpAddr>,
    idle_timeout: std::time::Duration,
}

async fn serve(
    listener: TcpListener,
    access: Arc<Access>,
    mut actor: Actor,
    actor_tx: mpsc::Sender<Msg>,
    mut actor_rx: mpsc::Receiver<Msg>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    let addr = listener.local_addr().map_err(ServiceError::new)?;
    tracing::info!(%addr, units = ?actor.units.keys().collect::<Vec<_>>(), "Modbus TCP listening");
    let service = ModbusService { actor: actor_tx };
    let on_connected = move |stream: tokio::net::TcpStream, peer: SocketAddr| {
        let (service, access) = (service.clone(), access.clone());
        async move {
            if !access.allow.is_empty() && !access.allow.contains(&peer.ip()) {
                tracing::warn!(%peer, "Modbus client not in the allow-list; disconnected");
                return Ok(None);
            }
            tracing::debug!(%peer, "Modbus client connected");
            Ok(Some((service, guard::GuardedStream::new(stream, access.idle_timeout))))
        }
    };
    let on_error = |err: std::io::Error| tracing::debug!(cause = %err, "Modbus connection ended with an error");
    let server = Server::new(listener);
    let token = ctx.token.clone();
    ctx.set_ready();
    let serving = server.serve_until(&on_connected, on_error, token.clone().cancelled_owned());
    tokio::pin!(serving);
    loop {
        tokio::select! {
            result = &mut serving => {
                result.map_err(ServiceError::new)?;
                return Ok(());
            }
            Some(msg) = actor_rx.recv() => actor.handle(msg),
        }
    }
}

#[derive(Clone)]
struct ModbusService {
    actor: mpsc::Sender<Msg>,
}

impl tokio_modbus::server::Service for ModbusService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let actor = self.actor.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let msg = Msg::Request { unit: req.slave, request: req.request, reply };
            actor.send(msg).await.map_err(|_| ExceptionCode::ServerDeviceFailure)?;
            answer.await.map_err(|_| ExceptionCode::ServerDeviceFailure)?
        })
    }
}

struct Unit {
    station_id: String,
    handshake: Handshake,
    /// Trigger ids for this unit's runner; bounded by the results depth.
    jobs: mpsc::Sender<u16>,
}

struct Actor {
    units: BTreeMap<u8, Unit>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    readiness: Readiness,
    started: Instant,
}

impl Actor {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Request { unit, request, reply } => {
                let _ = reply.send(self.request(unit, request));
            }
            Msg::Done { unit, outcome } => {
                if let Some(unit) = self.units.get_mut(&unit) {
                    unit.handshake.inspection_done(outcome);
                }
            }
        }
    }

    /// Unit ids 0 and 255 ("this device" to many TCP clients) address the only station
    /// when there is exactly one.
    fn unit_id(&self, unit: u8) -> Result<u8, ExceptionCode> {
        if self.units.contains_key(&unit) {
            return Ok(unit);
        }
        match (unit, self.units.len()) {
            (0 | 255, 1) => Ok(*self.units.keys().next().expect("one unit")),
            _ => Err(ExceptionCode::GatewayTargetDevice),
        }
    }

    fn request(&mut self, unit: u8, request: Request<'static>) -> Result<Response, ExceptionCode> {
        let unit_id = self.unit_id(unit)?;
        let ready = self.readiness.all_ready();
        let snapshot = self.snapshots.borrow().clone();
        // Seconds since start, wrapping: a PLC watches it move to know the daemon lives.
        let heartbeat = (self.started.elapsed().as_secs() % 65_536) as u16;
        let unit = self.units.get_mut(&unit_id).expect("resolved above");
        match request {
            Request::ReadCoils(address, quantity) => {
                let range = map::checked_range(address, quantity, map::COIL_COUNT)?;
                Ok(Response::ReadCoils(unit.handshake.coils()[range].to_vec()))
            }
            Request::ReadDiscreteInputs(address, quantity) => {
                let range = map::checked_range(address, quantity, map::DI_COUNT)?;
                Ok(Response::ReadDiscreteInputs(map::discrete_inputs(&unit.handshake, ready)[range].to_vec()))
            }
            Request::ReadInputRegisters(address, quantity) | Request::ReadHoldingRegisters(address, quantity) => {
                let range = map::checked_range(address, quantity, map::IR_COUNT)?;
                let words = map::input_registers(&unit.handshake, snapshot.stations.get(&unit.station_id), heartbeat)
                    [range]
                    .to_vec();
                Ok(if matches!(request, Request::ReadInputRegisters(..)) {
                    Response::ReadInputRegisters(words)
                } else {
                    Response::ReadHoldingRegisters(words)
                })
            }
            Request::WriteSingleCoil(address, value) => {
                map::checked_range(address, 1, map::COIL_COUNT)?;
                write_coil(unit, address, value);
                Ok(Response::WriteSingleCoil(address, value))
            }
            Request::WriteMultipleCoils(address, values) => {
                let range = map::checked_range(address, values.len() as u16, map::COIL_COUNT)?;
                for (offset, value) in range.zip(values.iter()) {
                    write_coil(unit, offset as u16, *value);
                }
                Ok(Response::WriteMultipleCoils(address, values.len() as u16))
            }
            Request::WriteSingleRegister(address, _)
            | Request::WriteMultipleRegisters(address, _)
            | Request::MaskWriteRegister(address, _, _)
            | Request::ReadWriteMultipleRegisters(_, _, address, _) => {
                tracing::debug!(unit = unit_id, address, "Modbus register write refused: registers are read-only");
                Err(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

fn write_coil(unit: &mut Unit, address: u16, value: bool) {
    match address {
        map::COIL_TRIGGER => {
            if let Some(Action::Inspect { trigger_id }) = unit.handshake.write_trigger(value)
                && unit.jobs.try_send(trigger_id).is_err()
            {
                // The queue holds `depth` jobs and the handshake admits at most `depth`
                // triggers in flight, so this only happens while the runner is stopping.
                unit.handshake.inspection_done(Err(TriggerError::InspectionFailed));
            }
        }
        map::COIL_RESULTS_ACK => unit.handshake.write_results_ack(value),
        map::COIL_ERROR_CLEAR => unit.handshake.write_error_clear(value),
        _ => unreachable!("address checked against the coil table"),
    }
}

/// Runs the inspections a unit's PLC triggered, one at a time, in trigger order.
async fn run_triggers(
    unit: u8,
    station_id: String,
    mut jobs: mpsc::Receiver<u16>,
    inspector: Inspector,
    actor: mpsc::Sender<Msg>,
    ctx: ServiceContext,
) -> Result<(), ServiceError> {
    ctx.set_ready();
    loop {
        let trigger_id = tokio::select! {
            job = jobs.recv() => match job {
                Some(trigger_id) => trigger_id,
                None => return Ok(()),
            },
            () = ctx.token.cancelled() => return Ok(()),
        };
        let request = InspectRequest {
            station_id: station_id.clone(),
            part_id: None,
            image: CycleImage::Camera,
            triggered_at: Instant::now(),
            expected: None,
        };
        let outcome = match inspector.inspect(request).await {
            Ok(record) => Ok(PlcResult {
                decision_code: map::decision_code(record.decision),
                confidence_milli: map::confidence_milli(record.confidence),
                objects_found: record.detections().count().min(u16::MAX as usize) as u16,
                cycle_time_ms: map::cycle_ms(record.total_ms),
                seq: record.seq as u32,
                trigger_id,
            }),
            Err(err) => {
                tracing::warn!(station = station_id, trigger_id, cause = %err, "PLC-triggered inspection failed");
                Err(match err {
                    CycleError::Camera(_) => TriggerError::CaptureFailed,
                    CycleError::NoCamera(_) => TriggerError::NoCamera,
                    CycleError::Inference(InferenceError::NotReady | InferenceError::Stopped) => {
                        TriggerError::ModelNotReady
                    }
                    CycleError::Storage(_) => TriggerError::StorageFailed,
                    _ => TriggerError::InspectionFailed,
                })
            }
        };
        if actor.send(Msg::Done { unit, outcome }).await.is_err() {
            return Ok(());
        }
    }
}
