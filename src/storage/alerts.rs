//! Alerts as raised and cleared by the alert rules, and acknowledged by people. At most one
//! uncleared alert per key (a unique partial index); a worse severity updates it in place
//! and asks for a new acknowledgement.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Db, StorageError};
use crate::core::alerts::Severity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub id: String,
    /// The rule's key, e.g. `device_down:camera[cam0]`.
    pub key: String,
    pub station_id: Option<String>,
    pub severity: Severity,
    pub title: String,
    pub message: String,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub severity: Option<Severity>,
    pub acknowledged: Option<bool>,
    /// Only uncleared (true) or only cleared (false) alerts.
    pub active: Option<bool>,
    pub limit: u32,
}

const COLUMNS: &str = "id, key, station_id, severity, title, message, raised_at_ms, cleared_at_ms, \
                       acknowledged_by, acknowledged_at_ms";

fn read_alert(row: &Row<'_>) -> rusqlite::Result<AlertRecord> {
    let severity: String = row.get(3)?;
    let at = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
    Ok(AlertRecord {
        id: row.get(0)?,
        key: row.get(1)?,
        station_id: row.get(2)?,
        // The column's CHECK allows only the four names.
        severity: Severity::parse(&severity).unwrap_or(Severity::Error),
        title: row.get(4)?,
        message: row.get(5)?,
        raised_at: at(row.get(6)?).unwrap_or_default(),
        cleared_at: at(row.get(7)?),
        acknowledged_by: row.get(8)?,
        acknowledged_at: at(row.get(9)?),
    })
}

impl Db {
    /// Raises the alert of `key`, or updates its active row (a worse severity).
    pub fn raise_alert(
        &mut self,
        key: &str,
        station_id: Option<&str>,
        severity: Severity,
        title: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<AlertRecord, StorageError> {
        let tx = self.conn.transaction()?;
        let updated = tx.execute(
            "UPDATE alerts SET severity = ?2, title = ?3, message = ?4, acknowledged_by = NULL,
                 acknowledged_at_ms = NULL
             WHERE key = ?1 AND cleared_at_ms IS NULL",
            params![key, severity.as_str(), title, message],
        )?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO alerts (id, key, station_id, severity, title, message, raised_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    Uuid::new_v4().to_string(),
                    key,
                    station_id,
                    severity.as_str(),
                    title,
                    message,
                    now.timestamp_millis()
                ],
            )?;
        }
        let sql = format!("SELECT {COLUMNS} FROM alerts WHERE key = ?1 AND cleared_at_ms IS NULL");
        let record = tx.query_row(&sql, [key], read_alert)?;
        tx.commit()?;
        Ok(record)
    }

    /// Clears the active alert of `key`; `None` if there was none.
    pub fn clear_alert(&mut self, key: &str, now: DateTime<Utc>) -> Result<Option<AlertRecord>, StorageError> {
        let id: Option<String> = self
            .conn
            .query_row(
                "UPDATE alerts SET cleared_at_ms = ?2 WHERE key = ?1 AND cleared_at_ms IS NULL RETURNING id",
                params![key, now.timestamp_millis()],
                |row| row.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.alert(&id),
            None => Ok(None),
        }
    }

    pub fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id], read_alert).optional()?)
    }

    /// Uncleared alerts: the rules start from these after a restart.
    pub fn active_alerts(&self) -> Result<Vec<AlertRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM alerts WHERE cleared_at_ms IS NULL ORDER BY raised_at_ms");
        Ok(self.conn.prepare(&sql)?.query_map([], read_alert)?.collect::<Result<_, _>>()?)
    }

    /// Newest first.
    pub fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>, StorageError> {
        let mut clauses = vec!["(?1 IS NULL OR severity = ?1)"];
        match filter.acknowledged {
            Some(true) => clauses.push("acknowledged_at_ms IS NOT NULL"),
            Some(false) => clauses.push("acknowledged_at_ms IS NULL"),
            None => {}
        }
        match filter.active {
            Some(true) => clauses.push("cleared_at_ms IS NULL"),
            Some(false) => clauses.push("cleared_at_ms IS NOT NULL"),
            None => {}
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM alerts WHERE {} ORDER BY raised_at_ms DESC, rowid DESC LIMIT ?2",
            clauses.join(" AND ")
        );
        let severity = filter.severity.map(Severity::as_str);
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map(params![severity, filter.limit], read_alert)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Acknowledges an alert (again, if it was); `None` for an unknown id.
    pub fn acknowledge_alert(
        &mut self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertRecord>, StorageError> {
        self.conn.execute(
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at_ms = ?3 WHERE id = ?1",
            params![id, by, now.timestamp_millis()],
        )?;
        self.alert(id)
    }

    /// Undelivered MQTT messages of every station.
    pub fn outbox_pending_total(&self) -> Result<u64, StorageError> {
        let n: i64 =
            self.conn.query_row("SELECT COUNT(*) FROM outbox WHERE delivered_at_ms IS NULL", [], |row| row.get(0))?;
        Ok(n as u64)
    }

    /// Removes cleared alerts raised before `cutoff`.
    pub fn prune_alerts(&mut self, cutoff: DateTime<Utc>) -> Result<usize, StorageError> {
        Ok(self.conn.execute(
            "DELETE FROM alerts WHERE cleared_at_ms IS NOT NULL AND raised_at_ms < ?1",
            [cutoff.timestamp_millis()],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn one_active_alert_per_key_escalation_clear_and_acknowledge() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let now = Utc::now();
        let first = db.raise_alert("disk_low", None, Severity::Error, "Disk space low", "8% free", now).unwrap();
        let acked = db.acknowledge_alert(&first.id, "olga", now).unwrap().unwrap();
        assert_eq!(acked.acknowledged_by.as_deref(), Some("olga"));
        let worse = db.raise_alert("disk_low", None, Severity::Critical, "Disk space low", "4% free", now).unwrap();
        assert_eq!((worse.id == first.id, worse.severity, worse.acknowledged_by), (true, Severity::Critical, None));
        db.raise_alert("pass_rate:s1", Some("s1"), Severity::Warning, "Pass rate below threshold", "85%", now).unwrap();
        assert_eq!(db.active_alerts().unwrap().len(), 2);

        let cleared = db.clear_alert("disk_low", now + TimeDelta::minutes(5)).unwrap().unwrap();
        assert!(cleared.cleared_at.is_some());
        assert_eq!(db.clear_alert("disk_low", now).unwrap(), None, "nothing active to clear");
        let again = db.raise_alert("disk_low", None, Severity::Error, "Disk space low", "9% free", now).unwrap();
        assert_ne!(again.id, first.id, "a new alert after the clear");

        let only = |filter: AlertFilter| db.alerts(&AlertFilter { limit: 100, ..filter }).unwrap().len();
        assert_eq!(only(AlertFilter::default()), 3);
        assert_eq!(only(AlertFilter { severity: Some(Severity::Warning), ..Default::default() }), 1);
        assert_eq!(only(AlertFilter { active: Some(false), ..Default::default() }), 1);
        assert_eq!(only(AlertFilter { acknowledged: Some(false), ..Default::default() }), 3, "escalation asks again");
        assert_eq!(db.acknowledge_alert("nope", "olga", now).unwrap(), None);

        assert_eq!(db.prune_alerts(now + TimeDelta::days(1)).unwrap(), 1, "only cleared ones go");
    }
}
