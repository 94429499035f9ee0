//! Each camera's drift reference (`core::drift::Summary`), kept so that a restart does not
//! learn a new reference from frames that may already have drifted.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Db, StorageError};
use crate::core::drift::{FEATURES, Summary};

impl Db {
    pub fn drift_references(&self) -> Result<Vec<(String, Summary, DateTime<Utc>)>, StorageError> {
        let mut stmt = self.conn.prepare("SELECT camera_id, frames, means, stds, set_at_ms FROM drift_references")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        let mut references = Vec::new();
        for row in rows {
            let (camera, frames, means, stds, at) = row?;
            let parse = |text: &str| -> Option<[f64; FEATURES.len()]> {
                serde_json::from_str::<Vec<f64>>(text).ok()?.try_into().ok()
            };
            // A row from a build with other statistics is skipped: the reference is learnt again.
            if let (Some(mean), Some(std)) = (parse(&means), parse(&stds)) {
                let summary = Summary { frames: frames.max(0) as usize, mean, std };
                references.push((camera, summary, DateTime::from_timestamp_millis(at).unwrap_or_default()));
            }
        }
        Ok(references)
    }

    pub fn set_drift_reference(
        &mut self,
        camera: &str,
        summary: &Summary,
        at: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let json = |values: &[f64]| serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned());
        self.conn.execute(
            "INSERT INTO drift_references (camera_id, frames, means, stds, set_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (camera_id) DO UPDATE SET frames = ?2, means = ?3, stds = ?4, set_at_ms = ?5",
            params![camera, summary.frames as i64, json(&summary.mean), json(&summary.std), at.timestamp_millis()],
        )?;
        Ok(())
    }

    pub fn clear_drift_reference(&mut self, camera: &str) -> Result<(), StorageError> {
        self.conn.execute("DELETE FROM drift_references WHERE camera_id = ?1", [camera])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let summary = Summary { frames: 50, mean: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], std: [0.5; 6] };
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        db.set_drift_reference("cam0", &summary, at).unwrap();
        db.set_drift_reference("cam0", &Summary { frames: 60, ..summary }, at).unwrap();
        assert_eq!(db.drift_references().unwrap(), vec![("cam0".to_owned(), Summary { frames: 60, ..summary }, at)]);
        db.clear_drift_reference("cam0").unwrap();
        assert!(db.drift_references().unwrap().is_empty());
    }
}
