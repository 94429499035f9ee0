//! Plant-facing interfaces ("northbound"). Architecture Invariant: they read snapshots and
//! notifications and call the inspection cycle; they hold no station rules, and only
//! `north/<x>` knows protocol `<x>`'s identifiers and JSON shapes.

pub mod api;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
