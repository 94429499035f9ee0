//! The PLC trigger handshake of one Modbus unit, as industrial vision sensors do it.
//! Pure: coil writes and finished inspections in, actions and bit/register state out.
//!
//! ```text
//! PLC: Trigger 0→1        station: TriggerAck=1, Busy=1, inspection starts
//! PLC: Trigger 1→0        station: TriggerAck=0
//! (inspection committed)  station: result queued; if nothing is presented, ResultsValid=1
//! PLC reads the result registers, then ResultsAck 0→1
//!                         station: ResultsValid=0, the result leaves the buffer
//! PLC: ResultsAck 1→0     station: next buffered result presented, ResultsValid=1
//! ```
//!
//! Up to `depth` results (in flight plus buffered) are held, so fast triggers are not
//! lost; a trigger beyond that sets Error with code BufferFull instead of TriggerAck.

use std::collections::VecDeque;

/// A result as the PLC reads it; only committed inspections become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlcResult {
    /// 1 pass, 2 fail, 3 uncertain.
    pub decision_code: u16,
    /// Confidence × 1000.
    pub confidence_milli: u16,
    pub objects_found: u16,
    pub cycle_time_ms: u16,
    /// The record's storage sequence number.
    pub seq: u32,
    pub trigger_id: u16,
}

/// Why a trigger produced no result (the Error register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerError {
    BufferFull = 1,
    CaptureFailed = 2,
    ModelNotReady = 3,
    StorageFailed = 4,
    NoCamera = 5,
    InspectionFailed = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run an inspection for this trigger and report back with `inspection_done`.
    Inspect { trigger_id: u16 },
}

#[derive(Debug, Clone)]
pub struct Handshake {
    depth: usize,
    trigger_coil: bool,
    ack_coil: bool,
    clear_coil: bool,
    trigger_ack: bool,
    in_flight: usize,
    results: VecDeque<PlcResult>,
    valid: bool,
    error: Option<TriggerError>,
    last_trigger_id: u16,
}

impl Handshake {
    pub fn new(depth: usize) -> Handshake {
        Handshake {
            depth: depth.max(1),
            trigger_coil: false,
            ack_coil: false,
            clear_coil: false,
            trigger_ack: false,
            in_flight: 0,
            results: VecDeque::new(),
            valid: false,
            error: None,
            last_trigger_id: 0,
        }
    }

    pub fn write_trigger(&mut self, value: bool) -> Option<Action> {
        let rising = value && !self.trigger_coil;
        let falling = !value && self.trigger_coil;
        self.trigger_coil = value;
        if falling {
            self.trigger_ack = false;
        }
        if !rising {
            return None;
        }
        if self.in_flight + self.results.len() >= self.depth {
            self.error = Some(TriggerError::BufferFull);
            return None;
        }
        self.in_flight += 1;
        self.trigger_ack = true;
        self.last_trigger_id = self.last_trigger_id.wrapping_add(1);
        Some(Action::Inspect { trigger_id: self.last_trigger_id })
    }

    pub fn write_results_ack(&mut self, value: bool) {
        let rising = value && !self.ack_coil;
        let falling = !value && self.ack_coil;
        self.ack_coil = value;
        if rising && self.valid {
            self.results.pop_front();
            self.valid = false;
        }
        if falling {
            self.present_next();
        }
    }

    pub fn write_error_clear(&mut self, value: bool) {
        if value && !self.clear_coil {
            self.error = None;
        }
        self.clear_coil = value;
    }

    pub fn inspection_done(&mut self, outcome: Result<PlcResult, TriggerError>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Ok(result) => {
                self.results.push_back(result);
                self.present_next();
            }
            Err(error) => self.error = Some(error),
        }
    }

    /// A new result is presented only while the PLC is not holding ResultsAck, so every
    /// result gets its own ResultsValid edge.
    fn present_next(&mut self) {
        if !self.valid && !self.ack_coil && !self.results.is_empty() {
            self.valid = true;
        }
    }

    pub fn coils(&self) -> [bool; 3] {
        [self.trigger_coil, self.ack_coil, self.clear_coil]
    }

    pub fn trigger_ack(&self) -> bool {
        self.trigger_ack
    }

    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    pub fn results_valid(&self) -> bool {
        self.valid
    }

    pub fn presented(&self) -> Option<&PlcResult> {
        if self.valid { self.results.front() } else { None }
    }

    pub fn buffered(&self) -> usize {
        self.results.len()
    }

    pub fn buffer_full(&self) -> bool {
        self.in_flight + self.results.len() >= self.depth
    }

    pub fn error(&self) -> Option<TriggerError> {
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn result(seq: u32, trigger_id: u16) -> PlcResult {
        PlcResult { decision_code: 1, confidence_milli: 990, objects_found: 0, cycle_time_ms: 12, seq, trigger_id }
    }

    /// Runs a script of steps and renders the visible state after each.
    fn check(depth: usize, script: &str, expect: Expect) {
        let mut hs = Handshake::new(depth);
        let mut log = String::new();
        let mut next_seq = 100;
        for step in script.split_whitespace() {
            let action = match step {
                "T1" => hs.write_trigger(true),
                "T0" => hs.write_trigger(false),
                "A1" => {
                    hs.write_results_ack(true);
                    None
                }
                "A0" => {
                    hs.write_results_ack(false);
                    None
                }
                "C1" => {
                    hs.write_error_clear(true);
                    None
                }
                "C0" => {
                    hs.write_error_clear(false);
                    None
                }
                "done" => {
                    next_seq += 1;
                    hs.inspection_done(Ok(result(next_seq, (next_seq - 100) as u16)));
                    None
                }
                "fail" => {
                    hs.inspection_done(Err(TriggerError::CaptureFailed));
                    None
                }
                other => panic!("unknown step {other}"),
            };
            log.push_str(&format!(
                "{step:<4} ack={} busy={} valid={} presented={:?} buffered={} err={:?}{}\n",
                hs.trigger_ack() as u8,
                hs.busy() as u8,
                hs.results_valid() as u8,
                hs.presented().map(|r| r.seq),
                hs.buffered(),
                hs.error().map(|e| e as u8),
                action.map(|a| format!(" -> {a:?}")).unwrap_or_default(),
            ));
        }
        expect.assert_eq(&log);
    }

    #[test]
    fn one_full_handshake() {
        check(
            8,
            "T1 T0 done A1 A0",
            expect![[r#"
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 1 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                done ack=0 busy=0 valid=1 presented=Some(101) buffered=1 err=None
                A1   ack=0 busy=0 valid=0 presented=None buffered=0 err=None
                A0   ack=0 busy=0 valid=0 presented=None buffered=0 err=None
            "#]],
        );
    }

    #[test]
    fn fast_triggers_queue_results_in_order_each_with_its_own_edge() {
        check(
            8,
            "T1 T0 T1 T0 done done A1 A0 A1 A0",
            expect![[r#"
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 1 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 2 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                done ack=0 busy=1 valid=1 presented=Some(101) buffered=1 err=None
                done ack=0 busy=0 valid=1 presented=Some(101) buffered=2 err=None
                A1   ack=0 busy=0 valid=0 presented=None buffered=1 err=None
                A0   ack=0 busy=0 valid=1 presented=Some(102) buffered=1 err=None
                A1   ack=0 busy=0 valid=0 presented=None buffered=0 err=None
                A0   ack=0 busy=0 valid=0 presented=None buffered=0 err=None
            "#]],
        );
    }

    #[test]
    fn a_full_buffer_refuses_the_trigger_and_a_clear_resets_the_error() {
        check(
            2,
            "T1 T0 T1 T0 T1 T0 done C1 C0 A1 A0 T1",
            expect![[r#"
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 1 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 2 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                T1   ack=0 busy=1 valid=0 presented=None buffered=0 err=Some(1)
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=Some(1)
                done ack=0 busy=1 valid=1 presented=Some(101) buffered=1 err=Some(1)
                C1   ack=0 busy=1 valid=1 presented=Some(101) buffered=1 err=None
                C0   ack=0 busy=1 valid=1 presented=Some(101) buffered=1 err=None
                A1   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                A0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 3 }
            "#]],
        );
    }

    #[test]
    fn a_failed_inspection_sets_the_error_and_frees_its_slot() {
        check(
            1,
            "T1 T0 fail T1",
            expect![[r#"
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 1 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                fail ack=0 busy=0 valid=0 presented=None buffered=0 err=Some(2)
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=Some(2) -> Inspect { trigger_id: 2 }
            "#]],
        );
    }

    #[test]
    fn holding_ack_delays_the_next_result() {
        check(
            8,
            "T1 T0 A1 done A0",
            expect![[r#"
                T1   ack=1 busy=1 valid=0 presented=None buffered=0 err=None -> Inspect { trigger_id: 1 }
                T0   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                A1   ack=0 busy=1 valid=0 presented=None buffered=0 err=None
                done ack=0 busy=0 valid=0 presented=None buffered=1 err=None
                A0   ack=0 busy=0 valid=1 presented=Some(101) buffered=1 err=None
            "#]],
        );
    }
}
