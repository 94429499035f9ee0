//! Modbus TCP with a real client (tokio-modbus): the PLC trigger handshake, buffering of
//! fast triggers, exceptions for illegal requests, and garbage on the wire.

use std::time::Duration;

use stationd::north::modbus::register_map as map;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

use crate::support::Daemon;

/// Bound for every wait on the station; a PLC scan polls the same way, without sleeps.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(daemon: &Daemon, unit: u8) -> Context {
    tcp::connect_slave(daemon.app.modbus_addr.expect("Modbus enabled"), Slave(unit)).await.unwrap()
}

async fn input(plc: &mut Context, address: u16) -> bool {
    plc.read_discrete_inputs(address, 1).await.unwrap().unwrap()[0]
}

/// Polls a discrete input until it has `value`.
async fn wait_input(plc: &mut Context, address: u16, value: bool) {
    tokio::time::timeout(PATIENCE, async {
        while input(plc, address).await != value {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("discrete input {address} never became {value}"));
}

async fn coil(plc: &mut Context, address: u16, value: bool) {
    plc.write_single_coil(address, value).await.unwrap().unwrap();
}

fn u32_at(words: &[u16], hi: u16) -> u32 {
    ((words[hi as usize] as u32) << 16) | words[hi as usize + 1] as u32
}

/// One full handshake as a PLC program runs it; returns the result registers.
async fn trigger_and_read(plc: &mut Context) -> Vec<u16> {
    coil(plc, map::COIL_TRIGGER, true).await;
    wait_input(plc, map::DI_TRIGGER_ACK, true).await;
    coil(plc, map::COIL_TRIGGER, false).await;
    wait_input(plc, map::DI_RESULTS_VALID, true).await;
    let words = plc.read_input_registers(0, map::IR_COUNT).await.unwrap().unwrap();
    coil(plc, map::COIL_RESULTS_ACK, true).await;
    wait_input(plc, map::DI_RESULTS_VALID, false).await;
    coil(plc, map::COIL_RESULTS_ACK, false).await;
    words
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_trigger_handshakes_back_to_back() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let mut plc = connect(&daemon, 1).await;
    assert!(input(&mut plc, map::DI_READY).await);

    let mut seqs = Vec::new();
    let mut passes = 0;
    for round in 0..100u16 {
        let words = trigger_and_read(&mut plc).await;
        let decision = words[map::IR_RESULT_DECISION as usize];
        assert!((1..=3).contains(&decision), "round {round}: decision {decision}");
        assert_eq!(words[map::IR_RESULT_TRIGGER_ID as usize], round + 1);
        assert!(words[map::IR_RESULT_CONFIDENCE as usize] <= 1000);
        passes += (decision == 1) as u32;
        seqs.push(u32_at(&words, map::IR_RESULT_SEQ_HI));
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "result sequence numbers increase: {seqs:?}");
    // Seven of the sim camera's twelve frames are good parts.
    assert!(passes > 40 && passes < 80, "{passes} passes");

    // Every result the PLC saw is a committed record, and the live block agrees.
    let (_, list) = daemon.get_json("/api/v1/inspections?limit=500").await;
    assert_eq!(list["total"], 100);
    let words = plc.read_input_registers(0, map::IR_COUNT).await.unwrap().unwrap();
    assert_eq!(u32_at(&words, map::IR_PASS_COUNT_HI), passes);
    assert_eq!(u32_at(&words, map::IR_LAST_SEQ_HI), *seqs.last().unwrap());
    assert_eq!(words[map::IR_RESULT_DECISION as usize], 0, "no result presented after the last ack");
    let (_, last) = daemon.get_json("/api/v1/inspections?limit=1").await;
    assert_eq!(last["inspections"][0]["seq"].as_u64().unwrap() as u32, *seqs.last().unwrap());
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_triggers_are_buffered_and_a_full_buffer_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let mut plc = connect(&daemon, 1).await;

    // Eight triggers (the configured depth) without reading any result.
    for _ in 0..8 {
        coil(&mut plc, map::COIL_TRIGGER, true).await;
        wait_input(&mut plc, map::DI_TRIGGER_ACK, true).await;
        coil(&mut plc, map::COIL_TRIGGER, false).await;
    }
    wait_input(&mut plc, map::DI_BUSY, false).await;
    let words = plc.read_input_registers(0, map::IR_COUNT).await.unwrap().unwrap();
    assert_eq!(words[map::IR_RESULTS_BUFFERED as usize], 8);
    assert!(input(&mut plc, map::DI_BUFFER_FULL).await);
    assert!(!input(&mut plc, map::DI_READY).await, "not ready while the buffer is full");

    // A ninth is refused with error code 1, and never acknowledged.
    coil(&mut plc, map::COIL_TRIGGER, true).await;
    wait_input(&mut plc, map::DI_ERROR, true).await;
    assert!(!input(&mut plc, map::DI_TRIGGER_ACK).await);
    coil(&mut plc, map::COIL_TRIGGER, false).await;
    let words = plc.read_input_registers(0, map::IR_COUNT).await.unwrap().unwrap();
    assert_eq!(words[map::IR_ERROR_CODE as usize], 1);
    coil(&mut plc, map::COIL_ERROR_CLEAR, true).await;
    coil(&mut plc, map::COIL_ERROR_CLEAR, false).await;
    assert!(!input(&mut plc, map::DI_ERROR).await);

    // The eight come out in trigger order, one ResultsValid edge each.
    for trigger_id in 1..=8u16 {
        wait_input(&mut plc, map::DI_RESULTS_VALID, true).await;
        let words = plc.read_input_registers(0, map::IR_COUNT).await.unwrap().unwrap();
        assert_eq!(words[map::IR_RESULT_TRIGGER_ID as usize], trigger_id);
        coil(&mut plc, map::COIL_RESULTS_ACK, true).await;
        wait_input(&mut plc, map::DI_RESULTS_VALID, false).await;
        coil(&mut plc, map::COIL_RESULTS_ACK, false).await;
    }
    assert!(input(&mut plc, map::DI_READY).await);
    assert!(daemon.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_requests_get_exceptions_and_garbage_does_not_hurt() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(state.path()).await;
    let addr = daemon.app.modbus_addr.unwrap();
    let mut plc = connect(&daemon, 1).await;

    let exception = |result: tokio_modbus::Result<()>| result.unwrap().unwrap_err();
    assert_eq!(exception(plc.write_single_register(0, 1).await), ExceptionCode::IllegalDataAddress);
    assert_eq!(exception(plc.write_multiple_registers(10, &[1, 2]).await), ExceptionCode::IllegalDataAddress);
    assert_eq!(exception(plc.write_single_coil(3, true).await), ExceptionCode::IllegalDataAddress);
    assert_eq!(exception(plc.write_multiple_coils(1, &[true, true, true]).await), ExceptionCode::IllegalDataAddress);
    assert_eq!(
        plc.read_input_registers(map::IR_COUNT - 1, 2).await.unwrap().unwrap_err(),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(plc.read_coils(0, 4).await.unwrap().unwrap_err(), ExceptionCode::IllegalDataAddress);
    // Holding registers mirror the input registers, read-only.
    assert_eq!(plc.read_holding_registers(0, map::IR_COUNT).await.unwrap().unwrap().len(), map::IR_COUNT as usize);

    let mut stranger = connect(&daemon, 9).await;
    assert_eq!(stranger.read_coils(0, 1).await.unwrap().unwrap_err(), ExceptionCode::GatewayTargetDevice);
    // Unit 255 reaches the only station.
    let mut broadcast_unit = connect(&daemon, 255).await;
    assert_eq!(broadcast_unit.read_coils(0, 3).await.unwrap().unwrap(), vec![false; 3]);

    // Garbage: a foreign protocol id, and a Modbus header claiming 65535 bytes (which the
    // codec alone would wait for forever). The server drops each connection at once.
    for garbage in [
        [0x00, 0x01, 0x12, 0x34, 0x00, 0x06, 0x01, 0x63, 0xde, 0xad, 0xbe, 0xef],
        [0x00, 0x02, 0x00, 0x00, 0xff, 0xff, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01],
    ] {
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(&garbage).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut sink)).await.expect("connection closed");
    }

    // Nothing written by the refused requests, and the station still serves a handshake.
    assert_eq!(plc.read_coils(0, 3).await.unwrap().unwrap(), vec![false; 3]);
    let words = trigger_and_read(&mut plc).await;
    assert!((1..=3).contains(&words[map::IR_RESULT_DECISION as usize]));
    assert!(daemon.shutdown().await);
}
