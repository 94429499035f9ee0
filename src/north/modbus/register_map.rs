//! The Modbus register map of one station (one unit id), as documented in docs/modbus.md.
//! A flat table by design: addresses are the contract with the PLC program and must not
//! move. Pure: state in, words and bits out; requests are checked against the map here.
//!
//! 32-bit values take two registers, high word first (big-endian word order, "ABCD").

use tokio_modbus::ExceptionCode;

use super::handshake::Handshake;
use crate::bus::StationSnapshot;
use crate::core::decision::Decision;

// Coils (FC01 read; FC05/FC15 write). The only writable addresses in the map.
pub const COIL_TRIGGER: u16 = 0;
pub const COIL_RESULTS_ACK: u16 = 1;
pub const COIL_ERROR_CLEAR: u16 = 2;
pub const COIL_COUNT: u16 = 3;

// Discrete inputs (FC02).
pub const DI_READY: u16 = 0;
pub const DI_TRIGGER_ACK: u16 = 1;
pub const DI_BUSY: u16 = 2;
pub const DI_RESULTS_VALID: u16 = 3;
pub const DI_ERROR: u16 = 4;
pub const DI_RESULT_PASS: u16 = 5;
pub const DI_RESULT_FAIL: u16 = 6;
pub const DI_RESULT_UNCERTAIN: u16 = 7;
pub const DI_BUFFER_FULL: u16 = 8;
pub const DI_COUNT: u16 = 9;

// Input registers (FC04; also readable with FC03). The handshake result block is valid
// while ResultsValid is set; the live block always shows the station's latest inspection,
// whatever triggered it.
pub const IR_RESULT_DECISION: u16 = 0;
pub const IR_RESULT_CONFIDENCE: u16 = 1;
pub const IR_RESULT_OBJECTS: u16 = 2;
pub const IR_RESULT_CYCLE_MS: u16 = 3;
pub const IR_RESULT_SEQ_HI: u16 = 4;
pub const IR_RESULT_SEQ_LO: u16 = 5;
pub const IR_RESULT_TRIGGER_ID: u16 = 6;
pub const IR_RESULTS_BUFFERED: u16 = 7;
pub const IR_ERROR_CODE: u16 = 8;
pub const IR_LAST_DECISION: u16 = 10;
pub const IR_LAST_CONFIDENCE: u16 = 11;
pub const IR_LAST_OBJECTS: u16 = 12;
pub const IR_LAST_CYCLE_MS: u16 = 13;
pub const IR_LAST_SEQ_HI: u16 = 14;
pub const IR_LAST_SEQ_LO: u16 = 15;
pub const IR_PASS_COUNT_HI: u16 = 16;
pub const IR_PASS_COUNT_LO: u16 = 17;
pub const IR_FAIL_COUNT_HI: u16 = 18;
pub const IR_FAIL_COUNT_LO: u16 = 19;
pub const IR_UNCERTAIN_COUNT_HI: u16 = 20;
pub const IR_UNCERTAIN_COUNT_LO: u16 = 21;
pub const IR_PASS_RATE_1H: u16 = 22;
pub const IR_HEARTBEAT: u16 = 23;
pub const IR_COUNT: u16 = 24;

/// Pass rate register value when nothing was inspected in the last hour.
pub const PASS_RATE_NONE: u16 = 0xFFFF;

pub fn decision_code(decision: Decision) -> u16 {
    match decision {
        Decision::Pass => 1,
        Decision::Fail => 2,
        Decision::Uncertain => 3,
    }
}

/// The range `[address, address + quantity)` within a table of `len` entries, or the
/// exception a PLC expects for a bad address or quantity.
pub fn checked_range(address: u16, quantity: u16, len: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
    if quantity == 0 {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let end = address as u32 + quantity as u32;
    if end > len as u32 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(address as usize..end as usize)
}

fn split(value: u32) -> [u16; 2] {
    [(value >> 16) as u16, value as u16]
}

fn saturate(value: f64) -> u16 {
    if value.is_finite() { value.round().clamp(0.0, u16::MAX as f64) as u16 } else { 0 }
}

pub fn discrete_inputs(handshake: &Handshake, station_ready: bool) -> [bool; DI_COUNT as usize] {
    let presented = handshake.presented().map(|r| r.decision_code).unwrap_or(0);
    let mut bits = [false; DI_COUNT as usize];
    bits[DI_READY as usize] = station_ready && !handshake.buffer_full();
    bits[DI_TRIGGER_ACK as usize] = handshake.trigger_ack();
    bits[DI_BUSY as usize] = handshake.busy();
    bits[DI_RESULTS_VALID as usize] = handshake.results_valid();
    bits[DI_ERROR as usize] = handshake.error().is_some();
    bits[DI_RESULT_PASS as usize] = presented == 1;
    bits[DI_RESULT_FAIL as usize] = presented == 2;
    bits[DI_RESULT_UNCERTAIN as usize] = presented == 3;
    bits[DI_BUFFER_FULL as usize] = handshake.buffer_full();
    bits
}

pub fn input_registers(
    handshake: &Handshake,
    station: Option<&StationSnapshot>,
    heartbeat: u16,
) -> [u16; IR_COUNT as usize] {
    let mut words = [0u16; IR_COUNT as usize];
    if let Some(result) = handshake.presented() {
        let [hi, lo] = split(result.seq);
        words[IR_RESULT_DECISION as usize] = result.decision_code;
        words[IR_RESULT_CONFIDENCE as usize] = result.confidence_milli;
        words[IR_RESULT_OBJECTS as usize] = result.objects_found;
        words[IR_RESULT_CYCLE_MS as usize] = result.cycle_time_ms;
        words[IR_RESULT_SEQ_HI as usize] = hi;
        words[IR_RESULT_SEQ_LO as usize] = lo;
        words[IR_RESULT_TRIGGER_ID as usize] = result.trigger_id;
    }
    words[IR_RESULTS_BUFFERED as usize] = handshake.buffered() as u16;
    words[IR_ERROR_CODE as usize] = handshake.error().map_or(0, |e| e as u16);
    words[IR_PASS_RATE_1H as usize] = PASS_RATE_NONE;
    if let Some(station) = station {
        if let Some(last) = &station.last {
            let [hi, lo] = split(last.seq as u32);
            words[IR_LAST_DECISION as usize] = decision_code(last.decision);
            words[IR_LAST_CONFIDENCE as usize] = saturate(last.confidence as f64 * 1000.0);
            words[IR_LAST_OBJECTS as usize] = last.objects_found.min(u16::MAX as u32) as u16;
            words[IR_LAST_CYCLE_MS as usize] = saturate(last.cycle_time_ms);
            words[IR_LAST_SEQ_HI as usize] = hi;
            words[IR_LAST_SEQ_LO as usize] = lo;
        }
        for (index, count) in [
            (IR_PASS_COUNT_HI, station.pass_count),
            (IR_FAIL_COUNT_HI, station.fail_count),
            (IR_UNCERTAIN_COUNT_HI, station.uncertain_count),
        ] {
            let [hi, lo] = split(count.min(u32::MAX as u64) as u32);
            words[index as usize] = hi;
            words[index as usize + 1] = lo;
        }
        if let Some(rate) = station.pass_rate_1h {
            words[IR_PASS_RATE_1H as usize] = saturate(rate * 100.0);
        }
    }
    words[IR_HEARTBEAT as usize] = heartbeat;
    words
}

/// Confidence as the PLC reads it.
pub fn confidence_milli(confidence: f32) -> u16 {
    saturate(confidence as f64 * 1000.0)
}

pub fn cycle_ms(cycle_time_ms: f64) -> u16 {
    saturate(cycle_time_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_exceptions() {
        assert_eq!(checked_range(0, 3, COIL_COUNT), Ok(0..3));
        assert_eq!(checked_range(2, 2, COIL_COUNT), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(checked_range(0, 0, COIL_COUNT), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(checked_range(u16::MAX, u16::MAX, IR_COUNT), Err(ExceptionCode::IllegalDataAddress));
    }

    #[test]
    fn counters_are_high_word_first() {
        let station = StationSnapshot { pass_count: 0x0001_0002, pass_rate_1h: Some(97.25), ..Default::default() };
        let words = input_registers(&Handshake::new(8), Some(&station), 7);
        assert_eq!(&words[IR_PASS_COUNT_HI as usize..=IR_PASS_COUNT_LO as usize], &[1, 2]);
        assert_eq!(words[IR_PASS_RATE_1H as usize], 9725);
        assert_eq!(words[IR_HEARTBEAT as usize], 7);
        let empty = input_registers(&Handshake::new(8), None, 0);
        assert_eq!(empty[IR_PASS_RATE_1H as usize], PASS_RATE_NONE);
        assert_eq!(empty[IR_RESULT_DECISION as usize], 0, "no result presented: decision 0 (none)");
    }
}
