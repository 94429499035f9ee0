//! Per-station counters and a true rolling pass rate.
//!
//! The window holds every decision of the last hour with its timestamp and drops entries
//! as `now` moves on, so "pass rate, last hour" means the last sixty minutes, not "since
//! start" and not "since the top of the hour". At 20 Hz that is 72 000 entries of 16 bytes.

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};

use super::decision::Decision;

/// Cumulative counters plus the rolling window of one station.
#[derive(Debug, Clone)]
pub struct StationStats {
    pub pass_count: u64,
    pub fail_count: u64,
    pub uncertain_count: u64,
    window: RollingWindow,
}

impl StationStats {
    pub fn new(window: TimeDelta) -> StationStats {
        StationStats { pass_count: 0, fail_count: 0, uncertain_count: 0, window: RollingWindow::new(window) }
    }

    pub fn record(&mut self, at: DateTime<Utc>, decision: Decision, now: DateTime<Utc>) {
        match decision {
            Decision::Pass => self.pass_count += 1,
            Decision::Fail => self.fail_count += 1,
            Decision::Uncertain => self.uncertain_count += 1,
        }
        self.window.record(at, decision, now);
    }

    /// Adds counts restored from storage without touching the window.
    pub fn add_totals(&mut self, pass: u64, fail: u64, uncertain: u64) {
        self.pass_count += pass;
        self.fail_count += fail;
        self.uncertain_count += uncertain;
    }

    /// Puts a stored decision back into the window only (its count is in the totals).
    pub fn restore_window_entry(&mut self, at: DateTime<Utc>, decision: Decision, now: DateTime<Utc>) {
        self.window.record(at, decision, now);
    }

    /// Percentage 0..=100 of passes among decisions in the window; `None` when empty.
    pub fn pass_rate(&mut self, now: DateTime<Utc>) -> Option<f64> {
        self.window.expire(now);
        self.window.pass_rate()
    }

    pub fn window_len(&mut self, now: DateTime<Utc>) -> usize {
        self.window.expire(now);
        self.window.entries.len()
    }
}

#[derive(Debug, Clone)]
struct RollingWindow {
    span: TimeDelta,
    /// In arrival order; timestamps are nondecreasing unless the clock stepped back.
    entries: VecDeque<(DateTime<Utc>, Decision)>,
    passed: usize,
}

impl RollingWindow {
    fn new(span: TimeDelta) -> RollingWindow {
        RollingWindow { span, entries: VecDeque::new(), passed: 0 }
    }

    fn record(&mut self, at: DateTime<Utc>, decision: Decision, now: DateTime<Utc>) {
        if at <= now - self.span {
            return;
        }
        self.entries.push_back((at, decision));
        if decision == Decision::Pass {
            self.passed += 1;
        }
        self.expire(now);
    }

    fn expire(&mut self, now: DateTime<Utc>) {
        let horizon = now - self.span;
        while let Some(&(at, decision)) = self.entries.front() {
            if at > horizon {
                break;
            }
            self.entries.pop_front();
            if decision == Decision::Pass {
                self.passed -= 1;
            }
        }
    }

    fn pass_rate(&self) -> Option<f64> {
        if self.entries.is_empty() { None } else { Some(100.0 * self.passed as f64 / self.entries.len() as f64) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + TimeDelta::minutes(minutes)
    }

    #[test]
    fn pass_rate_is_a_rolling_hour_not_since_start() {
        let mut stats = StationStats::new(TimeDelta::hours(1));
        assert_eq!(stats.pass_rate(t(0)), None);
        // Three fails at the start of the shift, then passes only.
        for m in 0..3 {
            stats.record(t(m), Decision::Fail, t(m));
        }
        for m in 10..20 {
            stats.record(t(m), Decision::Pass, t(m));
        }
        let rate = stats.pass_rate(t(20)).unwrap();
        assert!((rate - 100.0 * 10.0 / 13.0).abs() < 1e-9, "{rate}");
        // An hour after the fails they have left the window; the counters keep them.
        assert_eq!(stats.pass_rate(t(63)), Some(100.0));
        assert_eq!(stats.fail_count, 3);
        assert_eq!(stats.pass_count, 10);
        // Exactly one hour old is out of the window.
        assert_eq!(stats.window_len(t(70)), 9);
        assert_eq!(stats.pass_rate(t(200)), None);
    }

    #[test]
    fn uncertain_counts_against_the_pass_rate() {
        let mut stats = StationStats::new(TimeDelta::hours(1));
        stats.record(t(0), Decision::Pass, t(0));
        stats.record(t(1), Decision::Uncertain, t(1));
        assert_eq!(stats.pass_rate(t(1)), Some(50.0));
        assert_eq!(stats.uncertain_count, 1);
    }

    #[test]
    fn restored_entries_older_than_the_window_are_ignored() {
        let mut stats = StationStats::new(TimeDelta::hours(1));
        stats.add_totals(5, 1, 0);
        stats.restore_window_entry(t(-90), Decision::Fail, t(0));
        stats.restore_window_entry(t(-30), Decision::Pass, t(0));
        assert_eq!(stats.pass_rate(t(0)), Some(100.0));
        assert_eq!((stats.pass_count, stats.fail_count), (5, 1));
    }
}
