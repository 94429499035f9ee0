//! The OPC-UA address space of stationd: a flat list of node definitions (the contract
//! with PLC and SCADA programs; docs/opcua.md lists the same NodeIds) and the writes that
//! keep them current.
//!
//! ```text
//! Objects/
//!   Stations/                       ns=<stationd>;s=Stations
//!     <station_id>/                 s=Stations/<station_id>
//!       LastDecision ... LastInspectionId
//!     Trigger(station_id, part_id) -> (inspection_id, decision)
//!   Wrenches/                       s=Wrenches
//!     <wrench_id>/                  s=Wrenches/<wrench_id>
//!       LinkState, ToolEnabled, LastTighteningId, LastStatus, LastTorque, LastAngle,
//!       BatchCounter, ProgramNr
//!   Assembly/                       s=Assembly   (the coaching state)
//!     State, AssemblyName, AssemblyId, Revision, StepIndex, StepName, StepCount,
//!     Serial, OperatorName, RecordId, LastRecordId, LastSerial, LastOutcome
//!   SystemStatus/                   s=SystemStatus
//!     Ready                         s=SystemStatus/Ready
//!     <service>                     s=SystemStatus/<service>   ("ready", "starting", "degraded: …")
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::server::SubscriptionCache;
use opcua::server::address_space::{MethodBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::node_manager::memory::SimpleNodeManager;
use opcua::types::{DataTypeId, DataValue, DateTime, NodeId, ObjectId, StatusCode, Variant};

use crate::bus::{Snapshot, StationSnapshot};
use crate::coaching::CoachingStatus;
use crate::cycle::{CycleError, CycleImage, InspectRequest, Inspector};
use crate::south::wrench::WrenchStatus;
use crate::supervisor::ServiceState;

/// Per-station variables: browse name, data type, initial value.
const STATION_VARIABLES: [(&str, DataTypeId); 10] = [
    ("LastDecision", DataTypeId::String),
    ("LastConfidence", DataTypeId::Double),
    ("ObjectsFound", DataTypeId::Int32),
    ("CycleTimeMs", DataTypeId::Double),
    ("PassCount", DataTypeId::UInt32),
    ("FailCount", DataTypeId::UInt32),
    ("UncertainCount", DataTypeId::UInt32),
    ("PassRate1h", DataTypeId::Double),
    ("LastInspectionTime", DataTypeId::DateTime),
    ("LastInspectionId", DataTypeId::String),
];

/// Per-wrench variables (configured wrenches; links added over REST are not listed).
const WRENCH_VARIABLES: [(&str, DataTypeId); 8] = [
    ("LinkState", DataTypeId::String),
    ("ToolEnabled", DataTypeId::Boolean),
    ("LastTighteningId", DataTypeId::String),
    ("LastStatus", DataTypeId::String),
    ("LastTorque", DataTypeId::Double),
    ("LastAngle", DataTypeId::Int32),
    ("BatchCounter", DataTypeId::UInt32),
    ("ProgramNr", DataTypeId::UInt32),
];

/// The coaching state (one unit at a time per station PC).
const ASSEMBLY_VARIABLES: [(&str, DataTypeId); 13] = [
    ("State", DataTypeId::String),
    ("AssemblyName", DataTypeId::String),
    ("AssemblyId", DataTypeId::String),
    ("Revision", DataTypeId::UInt32),
    ("StepIndex", DataTypeId::Int32),
    ("StepName", DataTypeId::String),
    ("StepCount", DataTypeId::UInt32),
    ("Serial", DataTypeId::String),
    ("OperatorName", DataTypeId::String),
    ("RecordId", DataTypeId::String),
    ("LastRecordId", DataTypeId::String),
    ("LastSerial", DataTypeId::String),
    ("LastOutcome", DataTypeId::String),
];

pub(super) fn wrench_node(wrench_id: &str) -> String {
    format!("Wrenches/{wrench_id}")
}

/// How long the Trigger method waits for an inspection.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn station_node(station_id: &str) -> String {
    format!("Stations/{station_id}")
}

/// The folders `GET /api/v1/opcua/status` lists.
pub(super) fn node_list(station_ids: &[String], wrench_ids: &[String]) -> Vec<String> {
    station_ids
        .iter()
        .map(|id| station_node(id))
        .chain(wrench_ids.iter().map(|id| wrench_node(id)))
        .chain(["Assembly".to_owned(), "SystemStatus".to_owned()])
        .collect()
}

pub(super) fn state_text(state: &ServiceState) -> String {
    match state {
        ServiceState::Starting => "starting".to_owned(),
        ServiceState::Ready => "ready".to_owned(),
        ServiceState::Degraded(reason) => format!("degraded: {reason}"),
    }
}

/// The NodeIds that change at run time.
pub(super) struct Nodes {
    ns: u16,
    stations: Vec<String>,
    /// Last values written per wrench, so that only changes are written.
    wrenches: BTreeMap<String, Vec<(&'static str, Variant)>>,
}

pub(super) fn build(
    manager: &SimpleNodeManager,
    ns: u16,
    station_ids: &[String],
    wrench_ids: &[String],
    services: &[(String, ServiceState)],
) -> Nodes {
    let address_space = manager.address_space();
    let mut address_space = address_space.write();
    let stations: Vec<String> = station_ids.iter().map(|id| station_node(id)).collect();
    insert_folders(&mut address_space, ns, "Stations", &stations, &STATION_VARIABLES);
    let wrenches: Vec<String> = wrench_ids.iter().map(|id| wrench_node(id)).collect();
    insert_folders(&mut address_space, ns, "Wrenches", &wrenches, &WRENCH_VARIABLES);
    let assembly_id = NodeId::new(ns, "Assembly");
    ObjectBuilder::new(&assembly_id, "Assembly", "Assembly")
        .organized_by(ObjectId::ObjectsFolder)
        .insert(&mut *address_space);
    for (variable, data_type) in ASSEMBLY_VARIABLES {
        let value = match variable {
            "State" => Variant::from("idle"),
            "StepIndex" => Variant::from(-1i32),
            _ => initial(data_type),
        };
        VariableBuilder::new(&NodeId::new(ns, format!("Assembly/{variable}")), variable, variable)
            .data_type(data_type)
            .value(value)
            .component_of(assembly_id.clone())
            .insert(&mut *address_space);
    }
    let status_id = NodeId::new(ns, "SystemStatus");
    ObjectBuilder::new(&status_id, "SystemStatus", "SystemStatus")
        .organized_by(ObjectId::ObjectsFolder)
        .insert(&mut *address_space);
    VariableBuilder::new(&NodeId::new(ns, "SystemStatus/Ready"), "Ready", "Ready")
        .data_type(DataTypeId::Boolean)
        .value(false)
        .component_of(status_id.clone())
        .insert(&mut *address_space);
    for (service, state) in services {
        let id = NodeId::new(ns, format!("SystemStatus/{service}"));
        VariableBuilder::new(&id, service.as_str(), service.as_str())
            .data_type(DataTypeId::String)
            .value(state_text(state))
            .component_of(status_id.clone())
            .insert(&mut *address_space);
    }
    Nodes {
        ns,
        stations: station_ids.to_vec(),
        wrenches: wrench_ids.iter().map(|id| (id.clone(), Vec::new())).collect(),
    }
}

/// A top-level object `root` with one child object per path (`<root>/<id>`), each holding
/// `variables` at their initial values.
fn insert_folders(
    address_space: &mut opcua::server::address_space::AddressSpace,
    ns: u16,
    root: &str,
    paths: &[String],
    variables: &[(&str, DataTypeId)],
) {
    let root_id = NodeId::new(ns, root);
    ObjectBuilder::new(&root_id, root, root).organized_by(ObjectId::ObjectsFolder).insert(address_space);
    for path in paths {
        let name = path.rsplit('/').next().unwrap_or(path);
        let folder = NodeId::new(ns, path.as_str());
        ObjectBuilder::new(&folder, name, name).organized_by(root_id.clone()).insert(address_space);
        for &(variable, data_type) in variables {
            VariableBuilder::new(&NodeId::new(ns, format!("{path}/{variable}")), variable, variable)
                .data_type(data_type)
                .value(initial(data_type))
                .component_of(folder.clone())
                .insert(address_space);
        }
    }
}

fn initial(data_type: DataTypeId) -> Variant {
    match data_type {
        DataTypeId::String => Variant::from(""),
        DataTypeId::Double => Variant::from(0.0f64),
        DataTypeId::Int32 => Variant::from(0i32),
        DataTypeId::UInt32 => Variant::from(0u32),
        DataTypeId::DateTime => Variant::from(DateTime::null()),
        DataTypeId::Boolean => Variant::from(false),
        _ => Variant::Empty,
    }
}

impl Nodes {
    pub(super) fn write_snapshot(
        &self,
        manager: &SimpleNodeManager,
        subscriptions: &SubscriptionCache,
        snapshot: &Snapshot,
    ) {
        let mut values: Vec<(NodeId, DataValue)> = Vec::new();
        for station_id in &self.stations {
            let Some(station) = snapshot.stations.get(station_id) else { continue };
            for (name, value) in station_values(station) {
                values.push((
                    NodeId::new(self.ns, format!("{}/{name}", station_node(station_id))),
                    DataValue::new_now(value),
                ));
            }
        }
        if let Err(status) =
            manager.set_values(subscriptions, values.iter().map(|(id, value)| (id, None, value.clone())))
        {
            tracing::warn!(%status, "OPC-UA value update refused");
        }
    }

    /// Writes a wrench's variables when they changed.
    pub(super) fn write_wrench(
        &mut self,
        manager: &SimpleNodeManager,
        subscriptions: &SubscriptionCache,
        status: &WrenchStatus,
    ) {
        let id = &status.settings.id;
        let Some(last) = self.wrenches.get_mut(id) else { return };
        let values = wrench_values(status);
        if *last == values {
            return;
        }
        let updates: Vec<(NodeId, DataValue)> = values
            .iter()
            .map(|(name, value)| {
                (NodeId::new(self.ns, format!("{}/{name}", wrench_node(id))), DataValue::new_now(value.clone()))
            })
            .collect();
        *last = values;
        if let Err(status) =
            manager.set_values(subscriptions, updates.iter().map(|(id, value)| (id, None, value.clone())))
        {
            tracing::warn!(%status, "OPC-UA wrench update refused");
        }
    }

    /// Writes the coaching state (every field, at each change of it).
    pub(super) fn write_coaching(
        &self,
        manager: &SimpleNodeManager,
        subscriptions: &SubscriptionCache,
        status: &CoachingStatus,
    ) {
        let values: Vec<(NodeId, DataValue)> = coaching_values(status)
            .into_iter()
            .map(|(name, value)| (NodeId::new(self.ns, format!("Assembly/{name}")), DataValue::new_now(value)))
            .collect();
        if let Err(status) =
            manager.set_values(subscriptions, values.iter().map(|(id, value)| (id, None, value.clone())))
        {
            tracing::warn!(%status, "OPC-UA coaching update refused");
        }
    }

    pub(super) fn write_status(
        &self,
        manager: &SimpleNodeManager,
        subscriptions: &SubscriptionCache,
        services: &BTreeMap<String, String>,
        ready: bool,
    ) {
        let mut values = vec![(NodeId::new(self.ns, "SystemStatus/Ready"), DataValue::new_now(ready))];
        for (service, text) in services {
            values.push((NodeId::new(self.ns, format!("SystemStatus/{service}")), DataValue::new_now(text.clone())));
        }
        if let Err(status) =
            manager.set_values(subscriptions, values.iter().map(|(id, value)| (id, None, value.clone())))
        {
            tracing::warn!(%status, "OPC-UA status update refused");
        }
    }
}

fn wrench_values(status: &WrenchStatus) -> Vec<(&'static str, Variant)> {
    let mut values = vec![
        ("LinkState", Variant::from(status.link.as_str())),
        ("ToolEnabled", Variant::from(status.tool_enabled.unwrap_or(false))),
        ("ProgramNr", Variant::from(status.pset.unwrap_or(0))),
        ("BatchCounter", Variant::from(status.last.as_ref().and_then(|t| t.batch_counter).unwrap_or(0))),
    ];
    if let Some(last) = &status.last {
        values.extend([
            ("LastTighteningId", Variant::from(last.tightening_id.to_string())),
            ("LastStatus", Variant::from(if last.ok { "ok" } else { "nok" })),
            ("LastTorque", Variant::from(last.torque as f64 / 100.0)),
            ("LastAngle", Variant::from(last.angle.clamp(i32::MIN as i64, i32::MAX as i64) as i32)),
        ]);
    }
    values
}

fn coaching_values(status: &CoachingStatus) -> Vec<(&'static str, Variant)> {
    let unit = status.unit.as_ref();
    let text = |value: Option<String>| Variant::from(value.unwrap_or_default());
    let last = status.last.as_ref();
    vec![
        ("State", Variant::from(unit.map_or("idle", |u| if u.paused { "paused" } else { "running" }))),
        ("AssemblyName", text(unit.map(|u| u.assembly_name.clone()))),
        ("AssemblyId", text(unit.map(|u| u.assembly_id.to_string()))),
        ("Revision", Variant::from(unit.map_or(0, |u| u.revision))),
        ("StepIndex", Variant::from(unit.map_or(-1, |u| u.step_index.min(i32::MAX as usize) as i32))),
        ("StepName", text(unit.map(|u| u.step_name.clone()))),
        ("StepCount", Variant::from(unit.map_or(0, |u| u.step_count.min(u32::MAX as usize) as u32))),
        ("Serial", text(unit.map(|u| u.serial.clone()))),
        ("OperatorName", text(unit.map(|u| u.operator_name.clone()))),
        ("RecordId", text(unit.map(|u| u.record_id.to_string()))),
        ("LastRecordId", text(last.map(|l| l.record_id.to_string()))),
        ("LastSerial", text(last.map(|l| l.serial.clone()))),
        ("LastOutcome", text(last.map(|l| l.outcome.as_str().to_owned()))),
    ]
}

fn station_values(station: &StationSnapshot) -> Vec<(&'static str, Variant)> {
    let saturate = |count: u64| Variant::from(count.min(u32::MAX as u64) as u32);
    let mut values = vec![
        ("PassCount", saturate(station.pass_count)),
        ("FailCount", saturate(station.fail_count)),
        ("UncertainCount", saturate(station.uncertain_count)),
        ("PassRate1h", Variant::from(station.pass_rate_1h.unwrap_or(0.0))),
    ];
    if let Some(last) = &station.last {
        let at = DateTime::from(last.inspected_at);
        values.extend([
            ("LastDecision", Variant::from(last.decision.as_str())),
            ("LastConfidence", Variant::from(last.confidence as f64)),
            ("ObjectsFound", Variant::from(last.objects_found.min(i32::MAX as u32) as i32)),
            ("CycleTimeMs", Variant::from(last.cycle_time_ms)),
            ("LastInspectionTime", Variant::from(at)),
            ("LastInspectionId", Variant::from(last.id.to_string())),
        ]);
    }
    values
}

/// `Trigger(station_id: String, part_id: String) -> (inspection_id: String, decision: String)`.
///
/// async-opcua calls method callbacks synchronously on the runtime's worker thread, while
/// an inspection is async; `block_in_place` hands the worker's other tasks to another
/// thread while this one waits (the daemon runs a multi-thread runtime).
pub(super) fn add_trigger(manager: &Arc<SimpleNodeManager>, ns: u16, inspector: Inspector) {
    let method_id = NodeId::new(ns, "Stations/Trigger");
    {
        let address_space = manager.address_space();
        let mut address_space = address_space.write();
        MethodBuilder::new(&method_id, "Trigger", "Trigger")
            .component_of(NodeId::new(ns, "Stations"))
            .executable(true)
            .input_args(
                &mut *address_space,
                &NodeId::new(ns, "Stations/Trigger/InputArguments"),
                &[("station_id", DataTypeId::String).into(), ("part_id", DataTypeId::String).into()],
            )
            .output_args(
                &mut *address_space,
                &NodeId::new(ns, "Stations/Trigger/OutputArguments"),
                &[("inspection_id", DataTypeId::String).into(), ("decision", DataTypeId::String).into()],
            )
            .insert(&mut *address_space);
    }
    let runtime = tokio::runtime::Handle::current();
    manager.inner().add_method_callback(method_id, move |args| {
        let text = |index: usize| match args.get(index) {
            Some(Variant::String(s)) => Ok(s.as_ref().to_owned()),
            Some(Variant::Empty) | None => Ok(String::new()),
            Some(_) => Err(StatusCode::BadTypeMismatch),
        };
        let station_id = text(0)?;
        let part_id = text(1)?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(StatusCode::BadNotSupported);
        }
        let request = InspectRequest {
            station_id,
            part_id: (!part_id.is_empty()).then_some(part_id),
            image: CycleImage::Camera,
            triggered_at: Instant::now(),
            expected: None,
        };
        let inspector = inspector.clone();
        let outcome = tokio::task::block_in_place(|| {
            runtime.block_on(async { tokio::time::timeout(TRIGGER_TIMEOUT, inspector.inspect(request)).await })
        });
        match outcome {
            Ok(Ok(record)) => Ok(vec![Variant::from(record.id.to_string()), Variant::from(record.decision.as_str())]),
            Ok(Err(CycleError::UnknownStation(_))) => Err(StatusCode::BadInvalidArgument),
            Ok(Err(err)) => {
                tracing::warn!(cause = %err, "OPC-UA Trigger failed");
                Err(StatusCode::BadResourceUnavailable)
            }
            Err(_) => Err(StatusCode::BadTimeout),
        }
    });
}
