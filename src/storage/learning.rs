//! The active-learning queue: uncertain results (queued in the inspection's own
//! transaction) and results someone sent for review, the reviewers' annotations, and
//! which labelled items went into an exported dataset. Queued images are kept by the
//! retention sweep until exported.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{Db, InspectionRecord, StorageError};

/// One label a reviewer gave: the class of the whole image (`bbox` `None`), or an object's
/// class and box `[x1, y1, x2, y2]` in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub class_name: String,
    pub bbox: Option<[f32; 4]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReviewItem {
    pub record: InspectionRecord,
    /// `uncertain` or `requested`.
    pub reason: String,
    pub queued_at: DateTime<Utc>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub exported_at: Option<DateTime<Utc>>,
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LearningCounts {
    pub pending: u64,
    pub labeled: u64,
    pub exported: u64,
}

/// What asking to queue an inspection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    AlreadyQueued,
    NoInspection,
    /// The image is gone (retention), so there is nothing to label.
    NoImage,
}

pub(super) fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    reason: &str,
    at: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let added = tx.execute(
        "INSERT INTO learning_queue (inspection_seq, reason, queued_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (inspection_seq) DO NOTHING",
        params![seq, reason, at.timestamp_millis()],
    )?;
    Ok(added == 1)
}

/// seq, reason, queued, reviewed by, reviewed, exported.
type QueueRow = (i64, String, i64, Option<String>, Option<i64>, Option<i64>);

const ITEM_COLUMNS: &str =
    "q.inspection_seq, q.reason, q.queued_at_ms, q.reviewed_by, q.reviewed_at_ms, q.exported_at_ms";

impl Db {
    /// Sends an inspection for review by hand (a result someone doubts).
    pub fn enqueue_for_review(&mut self, id: Uuid, at: DateTime<Utc>) -> Result<Enqueued, StorageError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<(i64, Option<String>)> = tx
            .query_row("SELECT seq, image_path FROM inspections WHERE id = ?1", [id.to_string()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let outcome = match found {
            None => Enqueued::NoInspection,
            Some((_, None)) => Enqueued::NoImage,
            Some((seq, Some(_))) => {
                if enqueue(&tx, seq, "requested", at)? {
                    Enqueued::Queued
                } else {
                    Enqueued::AlreadyQueued
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    pub fn learning_counts(&self) -> Result<LearningCounts, StorageError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE reviewed_at_ms IS NULL),
                    COUNT(*) FILTER (WHERE reviewed_at_ms IS NOT NULL AND exported_at_ms IS NULL),
                    COUNT(*) FILTER (WHERE exported_at_ms IS NOT NULL)
             FROM learning_queue",
            [],
            |row| {
                let n = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(LearningCounts { pending: n(0)?, labeled: n(1)?, exported: n(2)? })
            },
        )?)
    }

    /// The oldest `limit` items waiting for a label whose image is still stored.
    pub fn learning_next(&self, limit: u32) -> Result<Vec<ReviewItem>, StorageError> {
        self.review_items(
            "q.reviewed_at_ms IS NULL AND i.image_path IS NOT NULL ORDER BY q.queued_at_ms, q.inspection_seq",
            limit,
        )
    }

    /// Labelled items with their image, oldest first; only those not exported yet unless
    /// `include_exported`.
    pub fn learning_labeled(&self, include_exported: bool, limit: u32) -> Result<Vec<ReviewItem>, StorageError> {
        let exported = if include_exported { "" } else { "AND q.exported_at_ms IS NULL" };
        self.review_items(
            &format!("q.reviewed_at_ms IS NOT NULL AND i.image_path IS NOT NULL {exported} ORDER BY q.inspection_seq"),
            limit,
        )
    }

    fn review_items(&self, condition: &str, limit: u32) -> Result<Vec<ReviewItem>, StorageError> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM learning_queue q JOIN inspections i ON i.seq = q.inspection_seq
             WHERE {condition} LIMIT {limit}"
        );
        let rows: Vec<QueueRow> = {
            let mut stmt = self.conn.prepare(&sql)?;
            stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let at = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
        let mut items = Vec::with_capacity(rows.len());
        for (seq, reason, queued, reviewed_by, reviewed, exported) in rows {
            let Some(record) = self.record_where("seq = ?1", seq)? else { continue };
            items.push(ReviewItem {
                record,
                reason,
                queued_at: at(Some(queued)).unwrap_or_default(),
                reviewed_by,
                reviewed_at: at(reviewed),
                exported_at: at(exported),
                annotations: self.annotations(seq)?,
            });
        }
        Ok(items)
    }

    fn annotations(&self, seq: i64) -> Result<Vec<Annotation>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT class_name, x1, y1, x2, y2 FROM annotations WHERE inspection_seq = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([seq], |row| {
            let corners: [Option<f32>; 4] = [row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?];
            let bbox = match corners {
                [Some(x1), Some(y1), Some(x2), Some(y2)] => Some([x1, y1, x2, y2]),
                _ => None,
            };
            Ok(Annotation { class_name: row.get(0)?, bbox })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a review: the annotations replace earlier ones, and the item counts as
    /// labelled (and, if it had been exported, as not exported since). `None` when the
    /// inspection is not in the queue.
    pub fn annotate(
        &mut self,
        id: Uuid,
        annotations: &[Annotation],
        reviewed_by: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<()>, StorageError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx
            .query_row(
                "SELECT q.inspection_seq FROM learning_queue q JOIN inspections i ON i.seq = q.inspection_seq
                 WHERE i.id = ?1",
                [id.to_string()],
                |row| row.get(0),
            )
            .optional()?;
        let Some(seq) = seq else { return Ok(None) };
        tx.execute("DELETE FROM annotations WHERE inspection_seq = ?1", [seq])?;
        for annotation in annotations {
            let b = annotation.bbox;
            tx.execute(
                "INSERT INTO annotations (inspection_seq, class_name, x1, y1, x2, y2) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![seq, annotation.class_name, b.map(|b| b[0]), b.map(|b| b[1]), b.map(|b| b[2]), b.map(|b| b[3])],
            )?;
        }
        tx.execute(
            "UPDATE learning_queue SET reviewed_by = ?2, reviewed_at_ms = ?3, exported_at_ms = NULL
             WHERE inspection_seq = ?1",
            params![seq, reviewed_by, at.timestamp_millis()],
        )?;
        tx.commit()?;
        Ok(Some(()))
    }

    /// Marks items as part of an exported dataset (their images may now age out).
    pub fn mark_exported(&mut self, seqs: &[i64], at: DateTime<Utc>) -> Result<(), StorageError> {
        let tx = self.conn.transaction()?;
        for seq in seqs {
            tx.execute(
                "UPDATE learning_queue SET exported_at_ms = ?2 WHERE inspection_seq = ?1",
                params![seq, at.timestamp_millis()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Decision;
    use crate::storage::tests::new_inspection;

    #[test]
    fn uncertain_results_queue_reviews_label_and_exports_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let uncertain = db.insert_inspection(new_inspection("s", Decision::Uncertain, at)).unwrap();
        let passed = db.insert_inspection(new_inspection("s", Decision::Pass, at)).unwrap();
        assert_eq!(db.learning_counts().unwrap(), LearningCounts { pending: 1, labeled: 0, exported: 0 });

        assert_eq!(db.enqueue_for_review(passed.id, at).unwrap(), Enqueued::Queued);
        assert_eq!(db.enqueue_for_review(passed.id, at).unwrap(), Enqueued::AlreadyQueued);
        assert_eq!(db.enqueue_for_review(Uuid::new_v4(), at).unwrap(), Enqueued::NoInspection);
        let next = db.learning_next(10).unwrap();
        assert_eq!(
            next.iter().map(|i| (i.record.id, i.reason.as_str())).collect::<Vec<_>>(),
            [(uncertain.id, "uncertain"), (passed.id, "requested")]
        );

        let boxes = [Annotation { class_name: "dent".into(), bbox: Some([1.0, 2.0, 30.0, 40.0]) }];
        assert_eq!(db.annotate(uncertain.id, &boxes, "qe", at).unwrap(), Some(()));
        assert_eq!(db.annotate(Uuid::new_v4(), &boxes, "qe", at).unwrap(), None);
        assert_eq!(db.learning_counts().unwrap(), LearningCounts { pending: 1, labeled: 1, exported: 0 });
        let labeled = db.learning_labeled(false, 100).unwrap();
        assert_eq!((labeled.len(), labeled[0].annotations.as_slice()), (1, boxes.as_slice()));
        assert_eq!(labeled[0].reviewed_by.as_deref(), Some("qe"));

        // Queued images survive retention until exported.
        assert_eq!(db.remove_images_before(at + chrono::TimeDelta::days(1)).unwrap().images_removed, 0);
        db.mark_exported(&[labeled[0].record.seq], at).unwrap();
        assert_eq!(db.learning_counts().unwrap(), LearningCounts { pending: 1, labeled: 0, exported: 1 });
        assert!(db.learning_labeled(false, 100).unwrap().is_empty());
        assert_eq!(db.learning_labeled(true, 100).unwrap().len(), 1);
        assert_eq!(db.remove_images_before(at + chrono::TimeDelta::days(1)).unwrap().images_removed, 1);
        assert!(db.learning_labeled(true, 100).unwrap().is_empty(), "no image, nothing to export");
    }
}
