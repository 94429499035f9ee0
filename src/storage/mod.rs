//! Durable records: SQLite (rusqlite, bundled) plus the image store, on one thread.
//!
//! Architecture Invariant: the only module with SQL. One connection, one writer thread;
//! callers send closures over [`Storage::call`] and await the answer, so writes are
//! serialised and blocking I/O never runs on the tokio runtime.
//!
//! Durability: WAL with `synchronous=FULL` (every commit is fsynced), images written and
//! fsynced before the row that references them is committed, and a caller is answered
//! only after `COMMIT` returned. That answer is what callers acknowledge upstream on
//! (HTTP 201, and later the PLC's ResultsValid and the wrench's MID 0062).

mod alerts;
mod assembly;
mod drift;
mod images;
mod jobs;
mod learning;
mod models;
mod pipelines;
mod retention;
mod schema;
mod tightenings;
mod users;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::core::StationHistory;
use crate::core::decision::{AnomalyMap, Decision, Detection};
use crate::core::expected::{self, Expectation, ExpectedCheck, ExpectedItem};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

pub use alerts::{AlertFilter, AlertRecord};
pub use assembly::{
    Assembly, AssemblyError, AssemblyFields, NewOperator, Operator, OperatorUpdate, Step, StepAction, StepFields,
    UnitEvent, UnitFilter, UnitRecord, data_type,
};
pub use jobs::{JobKind, JobProgress, JobRecord, JobStatus};
pub use learning::{Annotation, Enqueued, LearningCounts, ReviewItem};
pub(crate) use models::stage_model;
pub use models::{ConfigRegistration, ModelActivation, ModelDeleteError, ModelRecord, ModelSource};
pub use pipelines::{PipelineEvent, PipelineSpec, Sink, SinkKind};
pub use retention::{Cleanup, StorageUsage, spawn as spawn_retention};
pub use tightenings::{NewTightening, TighteningFilter, TighteningRecord};
pub use users::{AuditEntry, NewUser, UserChange, UserRecord, UserUpdate};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("image store: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage has stopped")]
    Stopped,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// Where an inspection's image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Upload,
    Camera,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upload => "upload",
            Source::Camera => "camera",
        }
    }
}

/// An image to keep with its record, as it was received (or as the camera frame was encoded).
#[derive(Debug, Clone)]
pub struct NewImage {
    pub bytes: bytes::Bytes,
    /// File extension without the dot, e.g. "jpg".
    pub extension: &'static str,
    pub content_type: &'static str,
}

#[derive(Debug, Clone)]
pub struct NewInspection {
    pub id: Uuid,
    pub station_id: String,
    pub part_id: Option<String>,
    pub source: Source,
    pub decision: Decision,
    pub confidence: f32,
    pub label: Option<String>,
    /// Per-label scores of a classifier, in label order.
    pub scores: Vec<(String, f32)>,
    /// Detections the rule counted as defects.
    pub defects: Vec<Detection>,
    /// The other detections: the parts found.
    pub parts: Vec<Detection>,
    pub expected: Option<Expectation>,
    /// The station's image scale, for areas.
    pub mm_per_pixel: Option<f64>,
    /// An anomaly model's patch scores over the fail threshold (1.0 is the fail level).
    pub anomaly_map: Option<AnomalyMap>,
    pub model_name: String,
    pub model_version: String,
    pub inference_ms: f64,
    pub total_ms: f64,
    pub image: Option<NewImage>,
    pub image_width: u32,
    pub image_height: u32,
    pub inspected_at: DateTime<Utc>,
}

/// A stored image's reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// Relative to the image store root, `/`-separated.
    pub relative_path: String,
    pub bytes: u64,
    pub content_type: String,
}

/// One inspection as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectionRecord {
    pub seq: i64,
    pub id: Uuid,
    pub station_id: String,
    pub part_id: Option<String>,
    pub source: String,
    pub decision: Decision,
    pub confidence: f32,
    pub label: Option<String>,
    pub scores: Vec<(String, f32)>,
    /// Detections the rule counted as defects.
    pub defects: Vec<Detection>,
    /// The other detections: the parts found.
    pub parts: Vec<Detection>,
    pub expected: Option<Expectation>,
    pub mm_per_pixel: Option<f64>,
    pub anomaly_map: Option<AnomalyMap>,
    pub model_name: String,
    pub model_version: String,
    pub inference_ms: f64,
    pub total_ms: f64,
    pub image: Option<ImageRef>,
    pub image_width: u32,
    pub image_height: u32,
    pub inspected_at: DateTime<Utc>,
}

impl InspectionRecord {
    /// Everything the model found: the defects, then the parts.
    pub fn detections(&self) -> impl Iterator<Item = &Detection> {
        self.defects.iter().chain(&self.parts)
    }

    /// The expected items against what was found, if the inspection was asked to find some.
    /// Computed from the stored detections, so it is the check the decision was made with.
    pub fn expected_check(&self) -> Option<ExpectedCheck> {
        let expected = self.expected.as_ref()?;
        Some(expected::check(&expected.items, self.detections().map(|d| (d.class_name.as_str(), d.confidence))))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub station_id: Option<String>,
    pub decision: Option<Decision>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub uncertain: u64,
    pub avg_total_ms: Option<f64>,
    pub defect_breakdown: BTreeMap<String, u64>,
}

/// One undelivered MQTT message: what to announce and its per-station number.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub seq: i64,
    pub station_seq: i64,
    /// `None` when the record was deleted before it could be announced.
    pub record: Option<OutboxRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboxRecord {
    Inspection(InspectionRecord),
    Tightening(TighteningRecord),
    PipelineEvent(PipelineEvent),
    UnitRecord(UnitRecord, Vec<UnitEvent>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrendInterval {
    Hour,
    Day,
}

impl TrendInterval {
    fn span(self) -> TimeDelta {
        match self {
            TrendInterval::Hour => TimeDelta::hours(1),
            TrendInterval::Day => TimeDelta::days(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrendBucket {
    pub start: DateTime<Utc>,
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
}

/// The database file and image store, owned by the storage thread.
pub struct Db {
    conn: Connection,
    images_root: PathBuf,
    /// The model registry's store: `<state_dir>/models`.
    models_root: PathBuf,
    /// Whether records also get an MQTT outbox row (only while MQTT is enabled, so that
    /// rows nobody will deliver do not pile up).
    outbox: bool,
}

fn connect(state_dir: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(state_dir.join("stationd.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) `<state_dir>/stationd.db` and `<state_dir>/images`,
    /// applies migrations, checks integrity and removes orphan images.
    pub fn open(state_dir: &Path, outbox: bool) -> Result<Db, StorageError> {
        std::fs::create_dir_all(state_dir)?;
        let images_root = state_dir.join("images");
        std::fs::create_dir_all(&images_root)?;
        let mut conn = connect(state_dir)?;
        let started = Instant::now();
        let check: String = conn.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        if check != "ok" {
            return Err(StorageError::Corrupt(format!("quick_check: {check}")));
        }
        let applied = schema::migrate(&mut conn)?;
        let db = Db { conn, images_root, models_root: state_dir.join("models"), outbox };
        let referenced = db.referenced_images()?;
        let removed = images::sweep_orphans(&db.images_root, &referenced)?;
        let models_removed = db.sweep_model_store()?;
        tracing::info!(
            path = %state_dir.join("stationd.db").display(),
            schema = schema::CURRENT,
            migrations_applied = applied,
            orphan_images_removed = removed,
            orphan_model_folders_removed = models_removed,
            check_ms = started.elapsed().as_millis() as u64,
            "storage open"
        );
        Ok(db)
    }

    /// Opens the database for the `stationd user` commands, which may run beside the
    /// daemon: migrations only, no integrity check and no sweep of the image store (an
    /// image whose row the daemon is about to commit is not an orphan).
    pub fn open_for_users(state_dir: &Path) -> Result<Db, StorageError> {
        std::fs::create_dir_all(state_dir)?;
        let mut conn = connect(state_dir)?;
        schema::migrate(&mut conn)?;
        Ok(Db { conn, images_root: state_dir.join("images"), models_root: state_dir.join("models"), outbox: false })
    }

    pub fn images_root(&self) -> &Path {
        &self.images_root
    }

    fn referenced_images(&self) -> Result<HashSet<String>, StorageError> {
        let mut stmt = self.conn.prepare("SELECT image_path FROM inspections WHERE image_path IS NOT NULL")?;
        let paths = stmt.query_map([], |row| row.get(0))?.collect::<Result<HashSet<String>, _>>()?;
        Ok(paths)
    }

    /// Stores the image durably, then commits the row. Returns the stored record.
    pub fn insert_inspection(&mut self, new: NewInspection) -> Result<InspectionRecord, StorageError> {
        let image = match &new.image {
            Some(image) => {
                let relative =
                    format!("{}/{}.{}", new.inspected_at.format("%Y-%m-%d"), new.id.simple(), image.extension);
                images::write_durably(&self.images_root, &relative, &image.bytes)?;
                Some(ImageRef {
                    relative_path: relative,
                    bytes: image.bytes.len() as u64,
                    content_type: image.content_type.to_owned(),
                })
            }
            None => None,
        };
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO inspections (id, station_id, part_id, source, decision, confidence, label, scores,
                objects_found, model_name, model_version, inference_ms, total_ms, image_path, image_bytes,
                image_type, image_width, image_height, inspected_at_ms, recipe, expected_items, mm_per_pixel,
                anomaly_map, anomaly_map_width)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                ?22, ?23, ?24)",
            params![
                new.id.to_string(),
                new.station_id,
                new.part_id,
                new.source.as_str(),
                new.decision.as_str(),
                new.confidence,
                new.label,
                encode_scores(&new.scores),
                (new.defects.len() + new.parts.len()) as i64,
                new.model_name,
                new.model_version,
                new.inference_ms,
                new.total_ms,
                image.as_ref().map(|i| i.relative_path.clone()),
                image.as_ref().map(|i| i.bytes as i64),
                image.as_ref().map(|i| i.content_type.clone()),
                new.image_width,
                new.image_height,
                new.inspected_at.timestamp_millis(),
                new.expected.as_ref().and_then(|e| e.recipe.clone()),
                new.expected.as_ref().map(|e| encode_expected(&e.items)),
                new.mm_per_pixel,
                new.anomaly_map.as_ref().map(|m| m.values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
                new.anomaly_map.as_ref().map(|m| m.width),
            ],
        )?;
        let seq = tx.last_insert_rowid();
        if self.outbox {
            insert_outbox(&tx, &new.station_id, "inspection", seq, new.inspected_at)?;
        }
        if new.decision == Decision::Uncertain && image.is_some() {
            learning::enqueue(&tx, seq, "uncertain", new.inspected_at)?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO detections (inspection_seq, class_name, confidence, x1, y1, x2, y2, defect)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let flagged = new.defects.iter().map(|d| (d, true)).chain(new.parts.iter().map(|d| (d, false)));
            for (d, defect) in flagged {
                let [x1, y1, x2, y2] = d.bbox;
                stmt.execute(params![seq, d.class_name, d.confidence, x1, y1, x2, y2, defect])?;
            }
        }
        tx.commit()?;
        Ok(InspectionRecord {
            seq,
            id: new.id,
            station_id: new.station_id,
            part_id: new.part_id,
            source: new.source.as_str().to_owned(),
            decision: new.decision,
            confidence: new.confidence,
            label: new.label,
            scores: new.scores,
            defects: new.defects,
            parts: new.parts,
            expected: new.expected,
            mm_per_pixel: new.mm_per_pixel,
            anomaly_map: new.anomaly_map,
            model_name: new.model_name,
            model_version: new.model_version,
            inference_ms: new.inference_ms,
            total_ms: new.total_ms,
            image,
            image_width: new.image_width,
            image_height: new.image_height,
            inspected_at: DateTime::from_timestamp_millis(new.inspected_at.timestamp_millis())
                .unwrap_or(new.inspected_at),
        })
    }

    /// The stored images of station `station_id`'s newest records with `decision`, newest
    /// first (a PatchCore fit takes its normal images from the passed ones).
    pub fn recent_images(
        &self,
        station_id: &str,
        decision: Decision,
        limit: u32,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let mut stmt = self.conn.prepare(
            "SELECT image_path FROM inspections
             WHERE station_id = ?1 AND decision = ?2 AND image_path IS NOT NULL
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![station_id, decision.as_str(), limit], |row| row.get::<_, String>(0))?;
        rows.map(|relative| Ok(images::full_path(&self.images_root, &relative?))).collect()
    }

    pub fn get(&self, id: Uuid) -> Result<Option<InspectionRecord>, StorageError> {
        self.record_where("id = ?1", id.to_string())
    }

    /// The one record matching `condition` (one `?1` parameter), with its detections.
    fn record_where(
        &self,
        condition: &str,
        param: impl rusqlite::ToSql,
    ) -> Result<Option<InspectionRecord>, StorageError> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM inspections WHERE {condition}");
        let record = self.conn.prepare_cached(&sql)?.query_row([param], read_record).optional()?;
        record.map(|r| self.with_detections(r)).transpose()
    }

    /// Newest first. Returns the page and the number of matching records.
    pub fn list(
        &self,
        filter: &ListFilter,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<InspectionRecord>, u64), StorageError> {
        let (clause, values) = where_clause(filter);
        let total: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM inspections {clause}"),
            params_from_iter(&values),
            |row| row.get(0),
        )?;
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM inspections {clause} ORDER BY seq DESC LIMIT {limit} OFFSET {offset}"
        );
        let records = self.query_records(&sql, &values)?;
        Ok((records, total as u64))
    }

    /// Oldest first, `seq > after_seq`: the export walks the table in pages with this.
    pub fn page_after(
        &self,
        filter: &ListFilter,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<InspectionRecord>, StorageError> {
        let (clause, mut values) = where_clause(filter);
        let joiner = if clause.is_empty() { "WHERE" } else { "AND" };
        values.push(rusqlite::types::Value::Integer(after_seq));
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM inspections {clause} {joiner} seq > ?{} ORDER BY seq ASC LIMIT {limit}",
            values.len()
        );
        self.query_records(&sql, &values)
    }

    fn query_records(
        &self,
        sql: &str,
        values: &[rusqlite::types::Value],
    ) -> Result<Vec<InspectionRecord>, StorageError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let records = stmt.query_map(params_from_iter(values), read_record)?.collect::<Result<Vec<_>, _>>()?;
        records.into_iter().map(|r| self.with_detections(r)).collect()
    }

    fn with_detections(&self, mut record: InspectionRecord) -> Result<InspectionRecord, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT class_name, confidence, x1, y1, x2, y2, defect FROM detections WHERE inspection_seq = ?1
             ORDER BY rowid",
        )?;
        let rows = stmt.query_map([record.seq], |row| {
            let detection = Detection {
                class_name: row.get(0)?,
                confidence: row.get(1)?,
                bbox: [row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?],
            };
            Ok((detection, row.get::<_, bool>(6)?))
        })?;
        for row in rows {
            let (detection, defect) = row?;
            if defect { record.defects.push(detection) } else { record.parts.push(detection) }
        }
        Ok(record)
    }

    /// Deletes the row (committed first), then its image. A crash in between leaves an
    /// orphan file that the next open removes, never a row without its image.
    pub fn delete(&mut self, id: Uuid) -> Result<bool, StorageError> {
        let image: Option<Option<String>> = self
            .conn
            .query_row("SELECT image_path FROM inspections WHERE id = ?1", [id.to_string()], |row| row.get(0))
            .optional()?;
        let Some(image) = image else { return Ok(false) };
        self.conn.execute("DELETE FROM inspections WHERE id = ?1", [id.to_string()])?;
        if let Some(relative) = image {
            images::remove(&self.images_root, &relative)?;
        }
        Ok(true)
    }

    pub fn image_path(&self, image: &ImageRef) -> PathBuf {
        images::full_path(&self.images_root, &image.relative_path)
    }

    pub fn statistics(&self, filter: &ListFilter) -> Result<Statistics, StorageError> {
        let (clause, values) = where_clause(&ListFilter { decision: None, ..filter.clone() });
        let (total, passed, failed, uncertain, avg): (i64, i64, i64, i64, Option<f64>) = self.conn.query_row(
            &format!(
                "SELECT COUNT(*),
                        COALESCE(SUM(decision = 'pass'), 0),
                        COALESCE(SUM(decision = 'fail'), 0),
                        COALESCE(SUM(decision = 'uncertain'), 0),
                        AVG(total_ms)
                 FROM inspections {clause}"
            ),
            params_from_iter(&values),
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )?;
        // Defects of failed parts: detections by class, or the classifier's label.
        let joiner = if clause.is_empty() { "WHERE" } else { "AND" };
        let sql = format!(
            "SELECT class, COUNT(*) FROM (
                 SELECT d.class_name AS class FROM detections d JOIN inspections i ON i.seq = d.inspection_seq
                 WHERE d.defect = 1 AND i.seq IN (SELECT seq FROM inspections {clause} {joiner} decision = 'fail')
                 UNION ALL
                 SELECT label AS class FROM inspections {clause} {joiner} decision = 'fail' AND label IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM detections d WHERE d.inspection_seq = inspections.seq AND d.defect = 1)
             ) GROUP BY class ORDER BY class"
        );
        let doubled: Vec<rusqlite::types::Value> = values.iter().chain(values.iter()).cloned().collect();
        let sql = renumber_placeholders(&sql);
        let mut stmt = self.conn.prepare(&sql)?;
        let defect_breakdown = stmt
            .query_map(params_from_iter(&doubled), |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?;
        Ok(Statistics {
            total: total as u64,
            passed: passed as u64,
            failed: failed as u64,
            uncertain: uncertain as u64,
            avg_total_ms: avg,
            defect_breakdown,
        })
    }

    /// Buckets from the one holding `filter.since` to the one holding `now`, including
    /// empty ones, so charts get a continuous axis.
    pub fn trends(
        &self,
        filter: &ListFilter,
        interval: TrendInterval,
        now: DateTime<Utc>,
    ) -> Result<Vec<TrendBucket>, StorageError> {
        let span_ms = interval.span().num_milliseconds();
        let (clause, values) = where_clause(&ListFilter { decision: None, ..filter.clone() });
        let sql = format!(
            "SELECT (inspected_at_ms / {span_ms}) * {span_ms} AS bucket, COUNT(*),
                    COALESCE(SUM(decision = 'pass'), 0), COALESCE(SUM(decision = 'fail'), 0)
             FROM inspections {clause} GROUP BY bucket ORDER BY bucket"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows: BTreeMap<i64, (u64, u64, u64)> = stmt
            .query_map(params_from_iter(&values), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    (row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64, row.get::<_, i64>(3)? as u64),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let first = filter.since.map(|s| s.timestamp_millis()).or_else(|| rows.keys().next().copied());
        let Some(first) = first else { return Ok(Vec::new()) };
        let (first, last) = (first.div_euclid(span_ms) * span_ms, now.timestamp_millis().div_euclid(span_ms) * span_ms);
        let mut buckets = Vec::new();
        let mut start = first;
        while start <= last {
            let (total, passed, failed) = rows.get(&start).copied().unwrap_or_default();
            let start_time = DateTime::from_timestamp_millis(start).expect("bucket within chrono's range");
            buckets.push(TrendBucket { start: start_time, total, passed, failed });
            start += span_ms;
        }
        Ok(buckets)
    }

    /// Totals and the last hour of decisions per station, for the core after a restart.
    pub fn station_history(&self, station_id: &str, now: DateTime<Utc>) -> Result<StationHistory, StorageError> {
        let mut history = StationHistory::default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT decision, COUNT(*) FROM inspections WHERE station_id = ?1 GROUP BY decision")?;
        for row in stmt.query_map([station_id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))? {
            let (decision, count) = row?;
            let decision = Decision::parse(&decision).ok_or_else(|| StorageError::Corrupt(decision.clone()))?;
            history.totals.insert(decision, count as u64);
        }
        let since = (now - crate::core::PASS_RATE_WINDOW).timestamp_millis();
        let mut stmt = self.conn.prepare_cached(
            "SELECT inspected_at_ms, decision FROM inspections
             WHERE station_id = ?1 AND inspected_at_ms > ?2 ORDER BY seq",
        )?;
        for row in
            stmt.query_map(params![station_id, since], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?
        {
            let (at, decision) = row?;
            let decision = Decision::parse(&decision).ok_or_else(|| StorageError::Corrupt(decision.clone()))?;
            history.recent.push((DateTime::from_timestamp_millis(at).unwrap_or(now), decision));
        }
        let sql = format!("SELECT {RECORD_COLUMNS} FROM inspections WHERE station_id = ?1 ORDER BY seq DESC LIMIT 1");
        if let Some(last) = self.conn.query_row(&sql, [station_id], read_record).optional()? {
            history.last = Some(crate::bus::InspectionSummary {
                id: last.id,
                seq: last.seq,
                station_id: last.station_id,
                part_id: last.part_id,
                triggered_at: None,
                source: if last.source == Source::Upload.as_str() { Source::Upload } else { Source::Camera },
                decision: last.decision,
                confidence: last.confidence,
                label: last.label,
                objects_found: 0,
                detected: Vec::new(),
                cycle_time_ms: last.total_ms,
                inference_ms: last.inference_ms,
                inspected_at: last.inspected_at,
            });
        }
        Ok(history)
    }

    /// The oldest undelivered outbox message of a station.
    pub fn next_outbox(&self, station_id: &str) -> Result<Option<OutboxMessage>, StorageError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT seq, station_seq, kind, record_seq FROM outbox
                 WHERE station_id = ?1 AND delivered_at_ms IS NULL ORDER BY seq LIMIT 1",
            )?
            .query_row([station_id], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?))
            })
            .optional()?;
        let Some((seq, station_seq, kind, record_seq)) = row else { return Ok(None) };
        let record = match kind.as_str() {
            "tightening" => self.tightening_by_seq(record_seq)?.map(OutboxRecord::Tightening),
            "pipeline_event" => self.pipeline_event_by_seq(record_seq)?.map(OutboxRecord::PipelineEvent),
            "unit_record" => match self.unit_record_by_seq(record_seq)? {
                Some(unit) => Some(OutboxRecord::UnitRecord(unit, self.unit_events(record_seq)?)),
                None => None,
            },
            _ => self.record_where("seq = ?1", record_seq)?.map(OutboxRecord::Inspection),
        };
        Ok(Some(OutboxMessage { seq, station_seq, record }))
    }

    pub fn mark_delivered(&mut self, outbox_seq: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        self.conn.execute(
            "UPDATE outbox SET delivered_at_ms = ?2 WHERE seq = ?1 AND delivered_at_ms IS NULL",
            params![outbox_seq, at.timestamp_millis()],
        )?;
        Ok(())
    }

    /// Undelivered messages of a station and the age of the oldest.
    pub fn outbox_backlog(&self, station_id: &str) -> Result<(u64, Option<DateTime<Utc>>), StorageError> {
        let (count, oldest): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*), MIN(created_at_ms) FROM outbox WHERE station_id = ?1 AND delivered_at_ms IS NULL",
            [station_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((count as u64, oldest.and_then(DateTime::from_timestamp_millis)))
    }

    /// Applies the outbox retention: delivered rows go after an hour; undelivered rows
    /// older than `max_age` or beyond `max_rows` per station go too (the records stay;
    /// only their announcement is dropped). Returns how many undelivered rows were dropped.
    pub fn prune_outbox(
        &mut self,
        station_id: &str,
        now: DateTime<Utc>,
        max_age: TimeDelta,
        max_rows: u64,
    ) -> Result<u64, StorageError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM outbox WHERE station_id = ?1 AND delivered_at_ms IS NOT NULL AND delivered_at_ms < ?2",
            params![station_id, (now - TimeDelta::hours(1)).timestamp_millis()],
        )?;
        let mut dropped = tx.execute(
            "DELETE FROM outbox WHERE station_id = ?1 AND delivered_at_ms IS NULL AND created_at_ms < ?2",
            params![station_id, (now - max_age).timestamp_millis()],
        )? as u64;
        dropped += tx.execute(
            "DELETE FROM outbox WHERE station_id = ?1 AND delivered_at_ms IS NULL AND seq NOT IN (
                 SELECT seq FROM outbox WHERE station_id = ?1 AND delivered_at_ms IS NULL ORDER BY seq DESC LIMIT ?2)",
            params![station_id, max_rows as i64],
        )? as u64;
        tx.commit()?;
        Ok(dropped)
    }

    /// Moves the WAL into the database file; run at shutdown so the next start is quick.
    fn checkpoint(&self) -> Result<(), StorageError> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The MQTT announcement of record `record_seq`, numbered next in its station's sequence;
/// written in the record's own transaction.
fn insert_outbox(
    tx: &rusqlite::Transaction<'_>,
    station_id: &str,
    kind: &str,
    record_seq: i64,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO outbox (station_id, station_seq, kind, record_seq, created_at_ms)
         VALUES (?1, (SELECT COALESCE(MAX(station_seq), 0) + 1 FROM outbox WHERE station_id = ?1), ?2, ?3, ?4)",
        params![station_id, kind, record_seq, at.timestamp_millis()],
    )?;
    Ok(())
}

const RECORD_COLUMNS: &str = "seq, id, station_id, part_id, source, decision, confidence, label, scores,
    model_name, model_version, inference_ms, total_ms, image_path, image_bytes, image_type,
    image_width, image_height, inspected_at_ms, recipe, expected_items, mm_per_pixel, anomaly_map, anomaly_map_width";

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<InspectionRecord> {
    let bad = |index: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, what.to_owned().into())
    };
    let id: String = row.get(1)?;
    let decision: String = row.get(5)?;
    let scores: String = row.get(8)?;
    let image_path: Option<String> = row.get(13)?;
    let image = match image_path {
        Some(relative_path) => Some(ImageRef {
            relative_path,
            bytes: row.get::<_, Option<i64>>(14)?.unwrap_or(0) as u64,
            content_type: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
        }),
        None => None,
    };
    let at: i64 = row.get(18)?;
    let expected = match row.get::<_, Option<String>>(20)? {
        Some(json) => Some(Expectation {
            recipe: row.get(19)?,
            items: decode_expected(&json).ok_or_else(|| bad(20, "expected_items are not a JSON list of items"))?,
        }),
        None => None,
    };
    Ok(InspectionRecord {
        seq: row.get(0)?,
        id: Uuid::parse_str(&id).map_err(|_| bad(1, "id is not a UUID"))?,
        station_id: row.get(2)?,
        part_id: row.get(3)?,
        source: row.get(4)?,
        decision: Decision::parse(&decision).ok_or_else(|| bad(5, "unknown decision"))?,
        confidence: row.get(6)?,
        label: row.get(7)?,
        scores: decode_scores(&scores).ok_or_else(|| bad(8, "scores are not label=value pairs"))?,
        defects: Vec::new(),
        parts: Vec::new(),
        expected,
        mm_per_pixel: row.get(21)?,
        anomaly_map: decode_map(row.get(22)?, row.get(23)?),
        model_name: row.get(9)?,
        model_version: row.get(10)?,
        inference_ms: row.get(11)?,
        total_ms: row.get(12)?,
        image,
        image_width: row.get(16)?,
        image_height: row.get(17)?,
        inspected_at: DateTime::from_timestamp_millis(at).ok_or_else(|| bad(18, "timestamp out of range"))?,
    })
}

/// An anomaly map as stored: little-endian f32 cells, row-major, `width` to a row. A blob
/// that does not fill whole rows reads as no map.
fn decode_map(blob: Option<Vec<u8>>, width: Option<u32>) -> Option<AnomalyMap> {
    let (blob, width) = (blob?, width.filter(|w| *w > 0)?);
    let values: Vec<f32> = blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if !blob.len().is_multiple_of(4) || values.is_empty() || !values.len().is_multiple_of(width as usize) {
        return None;
    }
    Some(AnomalyMap { width, height: (values.len() / width as usize) as u32, values })
}

/// Expected items as stored: a JSON list of `{name, quantity, aliases}`.
pub(crate) fn encode_expected(items: &[ExpectedItem]) -> String {
    let list: Vec<serde_json::Value> = items
        .iter()
        .map(|i| serde_json::json!({"name": i.name, "quantity": i.quantity, "aliases": i.aliases}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

pub(crate) fn decode_expected(json: &str) -> Option<Vec<ExpectedItem>> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    list.iter()
        .map(|item| {
            let aliases = item.get("aliases")?.as_array()?.iter().map(|a| a.as_str().map(str::to_owned));
            Some(ExpectedItem {
                name: item.get("name")?.as_str()?.to_owned(),
                quantity: u32::try_from(item.get("quantity")?.as_u64()?).ok()?,
                aliases: aliases.collect::<Option<_>>()?,
            })
        })
        .collect()
}

/// Scores are stored as `label=value` lines: labels come from model.toml and never
/// contain a newline (the spec parser would not produce one through TOML strings with
/// `\n`, and `decode_scores` refuses malformed lines rather than guessing).
fn encode_scores(scores: &[(String, f32)]) -> String {
    scores.iter().map(|(label, p)| format!("{}={p}", label.replace(['\n', '='], "_"))).collect::<Vec<_>>().join("\n")
}

fn decode_scores(text: &str) -> Option<Vec<(String, f32)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.lines()
        .map(|line| {
            let (label, value) = line.rsplit_once('=')?;
            Some((label.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn where_clause(filter: &ListFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    if let Some(station) = &filter.station_id {
        values.push(Value::Text(station.clone()));
        conditions.push(format!("station_id = ?{}", values.len()));
    }
    if let Some(decision) = filter.decision {
        values.push(Value::Text(decision.as_str().to_owned()));
        conditions.push(format!("decision = ?{}", values.len()));
    }
    if let Some(since) = filter.since {
        values.push(Value::Integer(since.timestamp_millis()));
        conditions.push(format!("inspected_at_ms >= ?{}", values.len()));
    }
    if conditions.is_empty() {
        (String::new(), values)
    } else {
        (format!("WHERE {}", conditions.join(" AND ")), values)
    }
}

/// The defect breakdown query repeats the filter clause; number its placeholders so that
/// the second copy binds the second copy of the values.
fn renumber_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '?' {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push_str(&next.to_string());
            next += 1;
        }
    }
    out
}

enum Command {
    Call(Box<dyn FnOnce(&mut Db) + Send>),
    Stop,
}

/// Cheap to clone; every database access goes through it.
#[derive(Clone)]
pub struct Storage {
    commands: mpsc::Sender<Command>,
}

const COMMAND_QUEUE: usize = 256;

impl Storage {
    /// Runs `f` on the storage thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let command = Command::Call(Box::new(move |db| {
            let _ = reply.send(f(db));
        }));
        self.commands.send(command).await.map_err(|_| StorageError::Stopped)?;
        answer.await.map_err(|_| StorageError::Stopped)?
    }
}

/// Starts the storage thread. It opens the database (ready after that), serves calls in
/// order, and on stop serves what was queued before the stop, checkpoints and closes.
pub fn spawn(supervisor: &mut Supervisor, state_dir: PathBuf, outbox: bool) -> Storage {
    let (tx, mut rx) = mpsc::channel(COMMAND_QUEUE);
    let stop_tx = tx.clone();
    supervisor.spawn_thread(
        "storage",
        Phase::Storage,
        move |ctx: ServiceContext| {
            let mut db = Db::open(&state_dir, outbox).map_err(ServiceError::new)?;
            ctx.set_ready();
            while let Some(command) = rx.blocking_recv() {
                match command {
                    Command::Call(f) => f(&mut db),
                    Command::Stop => break,
                }
            }
            rx.close();
            // Calls queued behind the stop are answered with `Stopped` when dropped here.
            db.checkpoint().map_err(ServiceError::new)?;
            tracing::info!("storage flushed and closed");
            Ok(())
        },
        async move {
            let _ = stop_tx.send(Command::Stop).await;
        },
    );
    Storage { commands: tx }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn new_inspection(station: &str, decision: Decision, at: DateTime<Utc>) -> NewInspection {
        NewInspection {
            id: Uuid::new_v4(),
            station_id: station.into(),
            part_id: Some("P-1".into()),
            source: Source::Upload,
            decision,
            confidence: 0.9,
            label: Some(if decision == Decision::Fail { "scratch" } else { "ok" }.into()),
            scores: vec![("ok".into(), 0.9), ("scratch".into(), 0.1)],
            defects: Vec::new(),
            parts: Vec::new(),
            expected: None,
            mm_per_pixel: None,
            anomaly_map: None,
            model_name: "m".into(),
            model_version: "1".into(),
            inference_ms: 2.0,
            total_ms: 4.0,
            image: Some(NewImage {
                bytes: bytes::Bytes::from_static(b"jpeg"),
                extension: "jpg",
                content_type: "image/jpeg",
            }),
            image_width: 10,
            image_height: 10,
            inspected_at: at,
        }
    }

    fn t(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + TimeDelta::hours(hours)
    }

    #[test]
    fn pragmas_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        let mode: String = db.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = db.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }

    #[test]
    fn insert_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let mut new = new_inspection("a", Decision::Fail, t(0));
        new.defects = vec![Detection { class_name: "dent".into(), confidence: 0.7, bbox: [1.0, 2.0, 3.0, 4.0] }];
        let stored = db.insert_inspection(new).unwrap();
        let image = stored.image.clone().unwrap();
        assert_eq!(std::fs::read(db.image_path(&image)).unwrap(), b"jpeg");
        assert_eq!(db.get(stored.id).unwrap().unwrap(), stored);
        db.insert_inspection(new_inspection("b", Decision::Pass, t(1))).unwrap();
        let (page, total) = db.list(&ListFilter { station_id: Some("a".into()), ..Default::default() }, 10, 0).unwrap();
        assert_eq!((page.len(), total), (1, 1));
        assert!(db.delete(stored.id).unwrap());
        assert!(!db.delete(stored.id).unwrap());
        assert!(!db.image_path(&image).exists());
        assert_eq!(db.list(&ListFilter::default(), 10, 0).unwrap().1, 1);
    }

    #[test]
    fn statistics_and_trends() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        for (h, d) in [(0, Decision::Pass), (0, Decision::Fail), (2, Decision::Pass), (2, Decision::Uncertain)] {
            db.insert_inspection(new_inspection("a", d, t(h))).unwrap();
        }
        let mut detected = new_inspection("b", Decision::Fail, t(2));
        detected.defects = vec![
            Detection { class_name: "dent".into(), confidence: 0.7, bbox: [0.0; 4] },
            Detection { class_name: "dent".into(), confidence: 0.6, bbox: [0.0; 4] },
        ];
        db.insert_inspection(detected).unwrap();
        let stats = db.statistics(&ListFilter::default()).unwrap();
        assert_eq!((stats.total, stats.passed, stats.failed, stats.uncertain), (5, 2, 2, 1));
        assert_eq!(stats.defect_breakdown, [("dent".to_owned(), 2), ("scratch".to_owned(), 1)].into());
        let only_a = db.statistics(&ListFilter { station_id: Some("a".into()), ..Default::default() }).unwrap();
        assert_eq!(only_a.defect_breakdown, [("scratch".to_owned(), 1)].into());

        let filter = ListFilter { station_id: Some("a".into()), since: Some(t(-1)), ..Default::default() };
        let trend = db.trends(&filter, TrendInterval::Hour, t(3)).unwrap();
        let rendered: Vec<_> = trend.iter().map(|b| (b.total, b.passed, b.failed)).collect();
        assert_eq!(rendered, [(0, 0, 0), (2, 1, 1), (0, 0, 0), (2, 1, 0), (0, 0, 0)]);
    }

    #[test]
    fn parts_and_expected_items_round_trip_and_only_defects_count_as_defects() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let found = |name: &str, confidence: f32| Detection {
            class_name: name.into(),
            confidence,
            bbox: [1.0, 2.0, 11.0, 7.0],
        };
        let mut kit = new_inspection("a", Decision::Fail, t(0));
        kit.label = Some("missing:washer".into());
        kit.defects = vec![found("debris", 0.4)];
        kit.parts = vec![found("bolt", 0.9), found("bolt", 0.8), found("nut", 0.7)];
        let items = vec![
            ExpectedItem { name: "bolt".into(), quantity: 2, aliases: vec!["M8 bolt".into()] },
            ExpectedItem { name: "washer".into(), quantity: 1, aliases: Vec::new() },
        ];
        kit.expected = Some(Expectation { recipe: Some("kit-a".into()), items: items.clone() });
        kit.mm_per_pixel = Some(0.5);
        kit.anomaly_map = Some(AnomalyMap { width: 2, height: 3, values: vec![0.5, 1.0, 1.5, 2.0, 2.5, f32::MAX] });
        let stored = db.insert_inspection(kit).unwrap();
        let read = db.get(stored.id).unwrap().unwrap();
        assert_eq!(read, stored);
        assert_eq!(read.detections().count(), 4);
        assert_eq!(read.expected.as_ref().map(|e| e.items.clone()), Some(items));
        let check = read.expected_check().unwrap();
        let missing: Vec<&str> = check.missing.iter().map(|m| m.name.as_str()).collect();
        let extra: Vec<&str> = check.extra.iter().map(|e| e.name.as_str()).collect();
        assert_eq!((check.summary.matched_items, missing, extra), (1, vec!["washer"], vec!["debris", "nut"]));

        // A failed kit with a defect row counts the defect, not the parts or its label.
        let stats = db.statistics(&ListFilter::default()).unwrap();
        assert_eq!(stats.defect_breakdown, [("debris".to_owned(), 1)].into());
        // Without a defect row, the label counts.
        let mut short = new_inspection("a", Decision::Fail, t(0));
        short.label = Some("missing:washer".into());
        short.parts = vec![found("bolt", 0.9)];
        db.insert_inspection(short).unwrap();
        let stats = db.statistics(&ListFilter::default()).unwrap();
        assert_eq!(stats.defect_breakdown, [("debris".to_owned(), 1), ("missing:washer".to_owned(), 1)].into());
    }

    #[test]
    fn reopen_restores_history_and_sweeps_orphans() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = Db::open(dir.path(), false).unwrap();
            db.insert_inspection(new_inspection("a", Decision::Pass, t(0))).unwrap();
            db.insert_inspection(new_inspection("a", Decision::Fail, t(-3))).unwrap();
        }
        let orphan = dir.path().join("images/2023-11-14/orphan.jpg");
        std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        std::fs::write(&orphan, b"x").unwrap();
        let db = Db::open(dir.path(), false).unwrap();
        assert!(!orphan.exists());
        let history = db.station_history("a", t(0)).unwrap();
        assert_eq!(history.totals.values().sum::<u64>(), 2);
        assert_eq!(history.recent.len(), 1);
        assert_eq!(history.last.unwrap().decision, Decision::Fail);
    }

    fn inspection_id(record: &OutboxRecord) -> Uuid {
        match record {
            OutboxRecord::Inspection(record) => record.id,
            OutboxRecord::Tightening(_) | OutboxRecord::PipelineEvent(_) | OutboxRecord::UnitRecord(..) => Uuid::nil(),
        }
    }

    #[test]
    fn outbox_rows_commit_with_their_record_and_drain_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        let first = db.insert_inspection(new_inspection("a", Decision::Pass, t(0))).unwrap();
        db.insert_inspection(new_inspection("b", Decision::Fail, t(0))).unwrap();
        let second = db.insert_inspection(new_inspection("a", Decision::Fail, t(0))).unwrap();
        assert_eq!(db.outbox_backlog("a").unwrap().0, 2);
        let next = db.next_outbox("a").unwrap().unwrap();
        assert_eq!((next.station_seq, next.record.as_ref().map(inspection_id)), (1, Some(first.id)));
        db.mark_delivered(next.seq, t(0)).unwrap();
        let next = db.next_outbox("a").unwrap().unwrap();
        assert_eq!((next.station_seq, next.record.as_ref().map(inspection_id)), (2, Some(second.id)));
        assert_eq!(db.next_outbox("b").unwrap().unwrap().station_seq, 1, "numbered per station");
        // A deleted record leaves its message, announcing nothing.
        db.delete(second.id).unwrap();
        assert_eq!(db.next_outbox("a").unwrap().unwrap().record, None);
    }

    #[test]
    fn outbox_retention_drops_oldest_undelivered_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        for _ in 0..5 {
            db.insert_inspection(new_inspection("a", Decision::Pass, t(0))).unwrap();
        }
        assert_eq!(db.prune_outbox("a", t(1), TimeDelta::days(7), 3).unwrap(), 2);
        assert_eq!(db.next_outbox("a").unwrap().unwrap().station_seq, 3);
        assert_eq!(db.prune_outbox("a", t(24 * 8), TimeDelta::days(7), 100).unwrap(), 3);
        assert_eq!(db.outbox_backlog("a").unwrap(), (0, None));
    }

    #[test]
    fn scores_encoding_round_trips() {
        let scores = vec![("ok".to_owned(), 0.25f32), ("a=b".to_owned(), 1e-7)];
        let decoded = decode_scores(&encode_scores(&scores)).unwrap();
        assert_eq!(decoded, [("ok".to_owned(), 0.25), ("a_b".to_owned(), 1e-7)]);
        assert_eq!(decode_scores("garbage"), None);
    }
}
