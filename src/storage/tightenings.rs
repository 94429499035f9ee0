//! Tightening results and runtime settings. A result is stored once per (wrench,
//! controller tightening ID): a re-sent or backfilled result that is already there is a
//! no-op, which is what makes "acknowledge after commit" safe to repeat.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params, params_from_iter};

use super::{Db, StorageError};

/// One tightening as stored. Torque values are integer hundredths of `torque_unit`, as
/// the controller sends them; angles are whole degrees.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTightening {
    pub wrench_id: String,
    pub station_id: Option<String>,
    pub tightening_id: u64,
    /// Fetched after a gap (MID 0064/0065) rather than pushed.
    pub backfilled: bool,
    pub ok: bool,
    /// "low", "ok" or "high".
    pub torque_status: Option<String>,
    pub angle_status: Option<String>,
    /// "not_completed", "ok", "not_used" or "running".
    pub batch_status: Option<String>,
    pub pset: Option<u32>,
    pub job_id: Option<u32>,
    pub batch_size: Option<u32>,
    pub batch_counter: Option<u32>,
    pub torque: i64,
    pub torque_min: Option<i64>,
    pub torque_max: Option<i64>,
    pub torque_target: Option<i64>,
    pub torque_unit: String,
    pub angle: i64,
    pub angle_min: Option<i64>,
    pub angle_max: Option<i64>,
    pub angle_target: Option<i64>,
    pub vin: Option<String>,
    pub tool_serial: Option<String>,
    pub controller_name: Option<String>,
    /// The controller's local wall-clock time as sent (no zone).
    pub controller_time: String,
    pub mid_revision: u16,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TighteningRecord {
    pub seq: i64,
    pub tightening: NewTightening,
}

#[derive(Debug, Clone, Default)]
pub struct TighteningFilter {
    pub wrench_id: Option<String>,
    pub station_id: Option<String>,
    pub ok: Option<bool>,
    pub pset: Option<u32>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "seq, wrench_id, tightening_id, station_id, source, status, torque_status, angle_status,
    batch_status, pset, job_id, batch_size, batch_counter, torque, torque_min, torque_max, torque_target,
    torque_unit, angle, angle_min, angle_max, angle_target, vin, tool_serial, controller_name,
    controller_time, mid_revision, received_at_ms";

impl Db {
    /// Commits the result (and its outbox row when MQTT is on and the wrench belongs to a
    /// station). `None` when this (wrench, tightening ID) is already stored.
    pub fn insert_tightening(&mut self, new: NewTightening) -> Result<Option<TighteningRecord>, StorageError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO tightenings (wrench_id, tightening_id, station_id, source, status, torque_status,
                angle_status, batch_status, pset, job_id, batch_size, batch_counter, torque, torque_min,
                torque_max, torque_target, torque_unit, angle, angle_min, angle_max, angle_target, vin,
                tool_serial, controller_name, controller_time, mid_revision, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
                     ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)
             ON CONFLICT (wrench_id, tightening_id) DO NOTHING",
            params![
                new.wrench_id,
                new.tightening_id as i64,
                new.station_id,
                if new.backfilled { "backfill" } else { "live" },
                if new.ok { "ok" } else { "nok" },
                new.torque_status,
                new.angle_status,
                new.batch_status,
                new.pset,
                new.job_id,
                new.batch_size,
                new.batch_counter,
                new.torque,
                new.torque_min,
                new.torque_max,
                new.torque_target,
                new.torque_unit,
                new.angle,
                new.angle_min,
                new.angle_max,
                new.angle_target,
                new.vin,
                new.tool_serial,
                new.controller_name,
                new.controller_time,
                new.mid_revision,
                new.received_at.timestamp_millis(),
            ],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        let seq = tx.last_insert_rowid();
        if self.outbox
            && let Some(station_id) = &new.station_id
        {
            super::insert_outbox(&tx, station_id, "tightening", seq, new.received_at)?;
        }
        tx.commit()?;
        let mut tightening = new;
        tightening.received_at = DateTime::from_timestamp_millis(tightening.received_at.timestamp_millis())
            .unwrap_or(tightening.received_at);
        Ok(Some(TighteningRecord { seq, tightening }))
    }

    /// The newest controller tightening ID stored for a wrench: where backfill starts.
    pub fn newest_tightening_id(&self, wrench_id: &str) -> Result<Option<u64>, StorageError> {
        let id: Option<i64> = self.conn.query_row(
            "SELECT MAX(tightening_id) FROM tightenings WHERE wrench_id = ?1",
            [wrench_id],
            |row| row.get(0),
        )?;
        Ok(id.map(|id| id as u64))
    }

    /// What a link needs to know after (re)connecting: the newest stored tightening ID
    /// (or the controller's newest when the link first came up, the baseline), and the IDs
    /// missing below it within the newest `window` IDs.
    pub fn tightening_history(&self, wrench_id: &str, window: u64) -> Result<(Option<u64>, Vec<u64>), StorageError> {
        let baseline = self.setting(&baseline_key(wrench_id))?.and_then(|v| v.parse::<u64>().ok());
        let newest = self.newest_tightening_id(wrench_id)?;
        let Some(top) = newest.max(baseline) else { return Ok((None, Vec::new())) };
        let floor = top.saturating_sub(window).max(baseline.unwrap_or(0));
        let mut stmt = self.conn.prepare_cached(
            "SELECT tightening_id FROM tightenings WHERE wrench_id = ?1 AND tightening_id > ?2 ORDER BY tightening_id",
        )?;
        let stored = stmt
            .query_map(params![wrench_id, floor as i64], |row| row.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut missing = Vec::new();
        let mut expected = floor + 1;
        for id in stored.into_iter().map(|id| id as u64) {
            missing.extend(expected..id);
            expected = id + 1;
        }
        Ok((Some(top), missing))
    }

    /// The controller's newest tightening ID when a link first came up with nothing
    /// stored: results up to it happened before stationd watched and are not fetched.
    pub fn set_tightening_baseline(&mut self, wrench_id: &str, id: u64) -> Result<(), StorageError> {
        self.put_setting(&baseline_key(wrench_id), &id.to_string())
    }

    pub fn tightening_by_seq(&self, seq: i64) -> Result<Option<TighteningRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM tightenings WHERE seq = ?1");
        Ok(self.conn.prepare_cached(&sql)?.query_row([seq], read_tightening).optional()?)
    }

    /// Newest first, with the total matching count.
    pub fn list_tightenings(
        &self,
        filter: &TighteningFilter,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<TighteningRecord>, u64), StorageError> {
        use rusqlite::types::Value;
        let mut conditions = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let mut push = |condition: &str, value: Value| {
            values.push(value);
            conditions.push(format!("{condition} ?{}", values.len()));
        };
        if let Some(wrench) = &filter.wrench_id {
            push("wrench_id =", Value::Text(wrench.clone()));
        }
        if let Some(station) = &filter.station_id {
            push("station_id =", Value::Text(station.clone()));
        }
        if let Some(ok) = filter.ok {
            push("status =", Value::Text(if ok { "ok" } else { "nok" }.into()));
        }
        if let Some(pset) = filter.pset {
            push("pset =", Value::Integer(i64::from(pset)));
        }
        if let Some(since) = filter.since {
            push("received_at_ms >=", Value::Integer(since.timestamp_millis()));
        }
        if let Some(until) = filter.until {
            push("received_at_ms <", Value::Integer(until.timestamp_millis()));
        }
        let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let total: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM tightenings {clause}"),
            params_from_iter(values.iter()),
            |row| row.get(0),
        )?;
        let sql = format!(
            "SELECT {COLUMNS} FROM tightenings {clause} ORDER BY seq DESC LIMIT {} OFFSET {}",
            limit.min(1000),
            offset
        );
        let records = self
            .conn
            .prepare(&sql)?
            .query_map(params_from_iter(values.iter()), read_tightening)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, total as u64))
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self.conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| row.get(0)).optional()?)
    }

    pub fn put_setting(&mut self, key: &str, value: &str) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

fn baseline_key(wrench_id: &str) -> String {
    format!("wrench_baseline:{wrench_id}")
}

fn read_tightening(row: &rusqlite::Row<'_>) -> rusqlite::Result<TighteningRecord> {
    let at: i64 = row.get(27)?;
    Ok(TighteningRecord {
        seq: row.get(0)?,
        tightening: NewTightening {
            wrench_id: row.get(1)?,
            tightening_id: row.get::<_, i64>(2)? as u64,
            station_id: row.get(3)?,
            backfilled: row.get::<_, String>(4)? == "backfill",
            ok: row.get::<_, String>(5)? == "ok",
            torque_status: row.get(6)?,
            angle_status: row.get(7)?,
            batch_status: row.get(8)?,
            pset: row.get(9)?,
            job_id: row.get(10)?,
            batch_size: row.get(11)?,
            batch_counter: row.get(12)?,
            torque: row.get(13)?,
            torque_min: row.get(14)?,
            torque_max: row.get(15)?,
            torque_target: row.get(16)?,
            torque_unit: row.get(17)?,
            angle: row.get(18)?,
            angle_min: row.get(19)?,
            angle_max: row.get(20)?,
            angle_target: row.get(21)?,
            vin: row.get(22)?,
            tool_serial: row.get(23)?,
            controller_name: row.get(24)?,
            controller_time: row.get(25)?,
            mid_revision: row.get(26)?,
            received_at: DateTime::from_timestamp_millis(at).unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(wrench: &str, id: u64) -> NewTightening {
        NewTightening {
            wrench_id: wrench.into(),
            station_id: Some("station-1".into()),
            tightening_id: id,
            backfilled: false,
            ok: true,
            torque_status: Some("ok".into()),
            angle_status: Some("ok".into()),
            batch_status: None,
            pset: Some(5),
            job_id: None,
            batch_size: Some(4),
            batch_counter: Some(1),
            torque: 1250,
            torque_min: Some(1150),
            torque_max: None,
            torque_target: None,
            torque_unit: "Nm".into(),
            angle: 180,
            angle_min: None,
            angle_max: None,
            angle_target: None,
            vin: None,
            tool_serial: None,
            controller_name: Some("sim".into()),
            controller_time: "2026-11-23:10:00:00".into(),
            mid_revision: 7,
            received_at: DateTime::from_timestamp_millis(1_795_000_000_000).unwrap(),
        }
    }

    #[test]
    fn stored_once_per_wrench_and_tightening_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        assert_eq!(db.newest_tightening_id("w1").unwrap(), None);
        let first = db.insert_tightening(sample("w1", 7)).unwrap().expect("new");
        assert_eq!(db.insert_tightening(sample("w1", 7)).unwrap(), None, "a duplicate is a no-op");
        db.insert_tightening(sample("w2", 7)).unwrap().expect("another wrench's 7 is a different result");
        db.insert_tightening(sample("w1", 9)).unwrap().unwrap();
        assert_eq!(db.newest_tightening_id("w1").unwrap(), Some(9));
        assert_eq!(db.tightening_by_seq(first.seq).unwrap(), Some(first));
        let (records, total) = db
            .list_tightenings(&TighteningFilter { wrench_id: Some("w1".into()), ..Default::default() }, 10, 0)
            .unwrap();
        assert_eq!(total, 2);
        assert_eq!(records.iter().map(|r| r.tightening.tightening_id).collect::<Vec<_>>(), [9, 7]);
        // Outbox rows are numbered per station across kinds.
        let message = db.next_outbox("station-1").unwrap().unwrap();
        assert_eq!(message.station_seq, 1);
        assert!(matches!(message.record, Some(crate::storage::OutboxRecord::Tightening(_))));
    }

    #[test]
    fn history_names_the_gaps_below_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        assert_eq!(db.tightening_history("w1", 100).unwrap(), (None, vec![]));
        db.set_tightening_baseline("w1", 10).unwrap();
        assert_eq!(db.tightening_history("w1", 100).unwrap(), (Some(10), vec![]));
        for id in [12, 13, 16] {
            db.insert_tightening(sample("w1", id)).unwrap();
        }
        assert_eq!(db.tightening_history("w1", 100).unwrap(), (Some(16), vec![11, 14, 15]));
        assert_eq!(db.tightening_history("w1", 3).unwrap(), (Some(16), vec![14, 15]), "bounded by the window");
    }

    #[test]
    fn settings_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        assert_eq!(db.setting("release_control_enabled").unwrap(), None);
        db.put_setting("release_control_enabled", "true").unwrap();
        db.put_setting("release_control_enabled", "false").unwrap();
        drop(db);
        let db = Db::open(dir.path(), false).unwrap();
        assert_eq!(db.setting("release_control_enabled").unwrap().as_deref(), Some("false"));
    }
}
