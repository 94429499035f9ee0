//! Disk usage by kind, and image retention: old inspection images are removed while their
//! records stay (decision, scores, times). Rows are updated first and the files removed
//! after the commit, so no row ever points at a missing image; a crash in between leaves
//! orphan files, which the start-up sweep removes.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Db, Storage, StorageError, images};
use crate::supervisor::{Phase, Supervisor};

/// What the state directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageUsage {
    pub inspections: u64,
    pub images: u64,
    pub image_bytes: u64,
    pub tightenings: u64,
    pub pipeline_events: u64,
    pub outbox_pending: u64,
    /// The database file and its WAL.
    pub database_bytes: u64,
    pub wal_bytes: u64,
}

/// What a cleanup removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub images_removed: u64,
    pub bytes_freed: u64,
}

/// Images removed per transaction: keeps each commit short next to live inspections.
const BATCH: usize = 500;

/// How often automatic retention runs.
const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes images older than `keep` at start and then every hour.
pub fn spawn(supervisor: &mut Supervisor, storage: Storage, keep: std::time::Duration) {
    supervisor.spawn("retention", Phase::Intake, move |ctx| async move {
        ctx.set_ready();
        let mut ticker = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                () = ctx.token.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let cutoff = Utc::now() - chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
            match storage.call(move |db| db.remove_images_before(cutoff)).await {
                Ok(cleanup) if cleanup.images_removed > 0 => tracing::info!(
                    images = cleanup.images_removed,
                    bytes = cleanup.bytes_freed,
                    "retention removed old images"
                ),
                Ok(_) => {}
                Err(StorageError::Stopped) => return Ok(()),
                Err(err) => tracing::error!(cause = %err, "retention failed; trying again in an hour"),
            }
        }
    });
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl Db {
    pub fn usage(&self) -> Result<StorageUsage, StorageError> {
        let (inspections, images, image_bytes): (i64, i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COUNT(image_path), COALESCE(SUM(image_bytes), 0) FROM inspections",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let count = |table: &str, clause: &str| -> Result<u64, StorageError> {
            let n: i64 =
                self.conn.query_row(&format!("SELECT COUNT(*) FROM {table} {clause}"), [], |row| row.get(0))?;
            Ok(n as u64)
        };
        let db_path = self.conn.path().map(std::path::PathBuf::from).unwrap_or_default();
        let wal_path = db_path.with_extension("db-wal");
        Ok(StorageUsage {
            inspections: inspections as u64,
            images: images as u64,
            image_bytes: image_bytes as u64,
            tightenings: count("tightenings", "")?,
            pipeline_events: count("pipeline_events", "")?,
            outbox_pending: count("outbox", "WHERE delivered_at_ms IS NULL")?,
            database_bytes: file_size(&db_path),
            wal_bytes: file_size(&wal_path),
        })
    }

    /// Removes the images of inspections made before `cutoff`; the records stay. Images in
    /// the active-learning queue stay until they have been exported.
    pub fn remove_images_before(&mut self, cutoff: DateTime<Utc>) -> Result<Cleanup, StorageError> {
        let mut cleanup = Cleanup::default();
        loop {
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let batch: Vec<(i64, String, i64)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, image_path, COALESCE(image_bytes, 0) FROM inspections
                     WHERE inspected_at_ms < ?1 AND image_path IS NOT NULL
                       AND seq NOT IN (SELECT inspection_seq FROM learning_queue WHERE exported_at_ms IS NULL)
                     ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![cutoff.timestamp_millis(), BATCH as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            if batch.is_empty() {
                return Ok(cleanup);
            }
            for (seq, _, _) in &batch {
                tx.execute(
                    "UPDATE inspections SET image_path = NULL, image_bytes = NULL, image_type = NULL WHERE seq = ?1",
                    [seq],
                )?;
            }
            tx.commit()?;
            for (_, relative, bytes) in &batch {
                images::remove(&self.images_root, relative)?;
                cleanup.images_removed += 1;
                cleanup.bytes_freed += *bytes as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Decision;
    use crate::storage::tests::new_inspection;

    #[test]
    fn old_images_go_and_their_records_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let old = db.insert_inspection(new_inspection("a", Decision::Fail, at(0))).unwrap();
        let new = db.insert_inspection(new_inspection("a", Decision::Pass, at(100))).unwrap();
        let old_file = db.image_path(old.image.as_ref().unwrap());
        assert!(old_file.exists());
        let before = db.usage().unwrap();
        assert_eq!((before.inspections, before.images), (2, 2));

        let cleanup = db.remove_images_before(at(50)).unwrap();
        assert_eq!(cleanup.images_removed, 1);
        assert!(cleanup.bytes_freed > 0);
        assert!(!old_file.exists());
        let kept = db.get(old.id).unwrap().expect("the record stays");
        assert_eq!((kept.decision, kept.image), (Decision::Fail, None));
        assert!(db.get(new.id).unwrap().unwrap().image.is_some());
        let after = db.usage().unwrap();
        assert_eq!((after.inspections, after.images), (2, 1));
        assert_eq!(db.remove_images_before(at(50)).unwrap(), Cleanup::default(), "nothing left to remove");
    }
}
