//! Continuous-monitoring pipelines (what to watch, how, and where to report) and the
//! anomalies they raised. A pipeline's `active` flag survives a restart: a pipeline that
//! was running when the daemon stopped runs again when it starts.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{Db, StorageError};

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    pub id: Uuid,
    pub name: String,
    pub station_id: String,
    /// The camera it watches.
    pub source_id: String,
    /// The model it expects (informational until the model registry: the loaded model runs).
    pub model_id: Option<String>,
    /// Frames per second at most.
    pub fps: f64,
    /// Anomaly score at or above which a frame counts; `None` uses the model's rule.
    pub threshold: Option<f32>,
    /// An anomaly is raised when `confirm_frames` of the last `confirm_window` frames count.
    pub confirm_frames: u32,
    pub confirm_window: u32,
    pub sinks: Vec<Sink>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Published from the station's MQTT outbox on `stationd/<station>/anomaly`.
    Mqtt,
    /// POSTed as JSON, retried with backoff.
    Webhook { url: String, headers: Vec<(String, String)> },
    /// `<output_dir>/<event id>.json`, and the frame as `<event id>.jpg` with `save_images`.
    Filesystem { output_dir: PathBuf, save_images: bool },
}

/// One raised anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineEvent {
    pub seq: i64,
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub station_id: String,
    pub score: f32,
    pub threshold: f32,
    /// Anomalous frames in the confirmation window when it was raised, and the window.
    pub frames_anomalous: u32,
    pub frames_window: u32,
    pub label: Option<String>,
    pub at: DateTime<Utc>,
}

fn sinks_to_json(sinks: &[Sink]) -> String {
    let sinks: Vec<serde_json::Value> = sinks
        .iter()
        .map(|sink| {
            let (kind, config) = match &sink.kind {
                SinkKind::Mqtt => ("mqtt", serde_json::json!({})),
                SinkKind::Webhook { url, headers } => {
                    let headers: serde_json::Map<String, serde_json::Value> =
                        headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                    ("webhook", serde_json::json!({"url": url, "headers": headers}))
                }
                SinkKind::Filesystem { output_dir, save_images } => (
                    "filesystem",
                    serde_json::json!({"output_dir": output_dir.display().to_string(), "save_images": save_images}),
                ),
            };
            serde_json::json!({"type": kind, "name": sink.name, "config": config})
        })
        .collect();
    serde_json::Value::Array(sinks).to_string()
}

fn sinks_from_json(text: &str) -> Result<Vec<Sink>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let sinks = value.as_array().ok_or("sinks: not an array")?;
    sinks
        .iter()
        .map(|sink| {
            let name = sink["name"].as_str().unwrap_or_default().to_owned();
            let config = &sink["config"];
            let kind = match sink["type"].as_str() {
                Some("mqtt") => SinkKind::Mqtt,
                Some("webhook") => SinkKind::Webhook {
                    url: config["url"].as_str().ok_or("webhook without url")?.to_owned(),
                    headers: config["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                        })
                        .unwrap_or_default(),
                },
                Some("filesystem") => SinkKind::Filesystem {
                    output_dir: config["output_dir"].as_str().ok_or("filesystem without output_dir")?.into(),
                    save_images: config["save_images"].as_bool().unwrap_or(true),
                },
                other => return Err(format!("unknown sink type {other:?}")),
            };
            Ok(Sink { name, kind })
        })
        .collect()
}

const PIPELINE_COLUMNS: &str = "id, name, station_id, source_id, model_id, fps, threshold, confirm_frames, confirm_window, sinks, active, created_at_ms";

fn read_pipeline(row: &rusqlite::Row<'_>) -> rusqlite::Result<PipelineSpec> {
    let bad = |index: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, what.into())
    };
    let id: String = row.get(0)?;
    let sinks: String = row.get(9)?;
    Ok(PipelineSpec {
        id: Uuid::parse_str(&id).map_err(|e| bad(0, e.to_string()))?,
        name: row.get(1)?,
        station_id: row.get(2)?,
        source_id: row.get(3)?,
        model_id: row.get(4)?,
        fps: row.get(5)?,
        threshold: row.get::<_, Option<f64>>(6)?.map(|t| t as f32),
        confirm_frames: row.get(7)?,
        confirm_window: row.get(8)?,
        sinks: sinks_from_json(&sinks).map_err(|e| bad(9, e))?,
        active: row.get(10)?,
        created_at: DateTime::from_timestamp_millis(row.get(11)?).unwrap_or_default(),
    })
}

impl Db {
    /// Inserts or replaces a pipeline (by id).
    pub fn put_pipeline(&mut self, spec: &PipelineSpec) -> Result<(), StorageError> {
        self.conn.execute(
            &format!(
                "INSERT OR REPLACE INTO pipelines ({PIPELINE_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                spec.id.to_string(),
                spec.name,
                spec.station_id,
                spec.source_id,
                spec.model_id,
                spec.fps,
                spec.threshold.map(f64::from),
                spec.confirm_frames,
                spec.confirm_window,
                sinks_to_json(&spec.sinks),
                spec.active,
                spec.created_at.timestamp_millis(),
            ],
        )?;
        Ok(())
    }

    pub fn pipelines(&self) -> Result<Vec<PipelineSpec>, StorageError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {PIPELINE_COLUMNS} FROM pipelines ORDER BY created_at_ms, id"))?;
        let rows = stmt.query_map([], read_pipeline)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn pipeline(&self, id: Uuid) -> Result<Option<PipelineSpec>, StorageError> {
        let sql = format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], read_pipeline).optional()?)
    }

    pub fn set_pipeline_active(&mut self, id: Uuid, active: bool) -> Result<(), StorageError> {
        self.conn.execute("UPDATE pipelines SET active = ?2 WHERE id = ?1", params![id.to_string(), active])?;
        Ok(())
    }

    /// Deletes a pipeline; its events stay (they are part of the record).
    pub fn delete_pipeline(&mut self, id: Uuid) -> Result<bool, StorageError> {
        Ok(self.conn.execute("DELETE FROM pipelines WHERE id = ?1", [id.to_string()])? > 0)
    }

    /// Stores a raised anomaly, with an MQTT outbox row when `publish` and MQTT is on.
    pub fn insert_pipeline_event(
        &mut self,
        event: PipelineEvent,
        publish: bool,
    ) -> Result<PipelineEvent, StorageError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO pipeline_events (id, pipeline_id, station_id, score, threshold, frames_anomalous,
                frames_window, label, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                event.id.to_string(),
                event.pipeline_id.to_string(),
                event.station_id,
                f64::from(event.score),
                f64::from(event.threshold),
                event.frames_anomalous,
                event.frames_window,
                event.label,
                event.at.timestamp_millis(),
            ],
        )?;
        let seq = tx.last_insert_rowid();
        if publish && self.outbox {
            super::insert_outbox(&tx, &event.station_id, "pipeline_event", seq, event.at)?;
        }
        tx.commit()?;
        let at = DateTime::from_timestamp_millis(event.at.timestamp_millis()).unwrap_or(event.at);
        Ok(PipelineEvent { seq, at, ..event })
    }

    /// The newest events of a pipeline (all pipelines with `None`), newest first.
    pub fn pipeline_events(&self, pipeline_id: Option<Uuid>, limit: u32) -> Result<Vec<PipelineEvent>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, pipeline_id, station_id, score, threshold, frames_anomalous, frames_window, label, at_ms
             FROM pipeline_events WHERE ?1 IS NULL OR pipeline_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![pipeline_id.map(|id| id.to_string()), limit], read_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn pipeline_event_by_seq(&self, seq: i64) -> Result<Option<PipelineEvent>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, pipeline_id, station_id, score, threshold, frames_anomalous, frames_window, label, at_ms
             FROM pipeline_events WHERE seq = ?1",
        )?;
        Ok(stmt.query_row([seq], read_event).optional()?)
    }
}

fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<PipelineEvent> {
    let uuid = |index: usize| -> rusqlite::Result<Uuid> {
        let text: String = row.get(index)?;
        Uuid::parse_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
    };
    Ok(PipelineEvent {
        seq: row.get(0)?,
        id: uuid(1)?,
        pipeline_id: uuid(2)?,
        station_id: row.get(3)?,
        score: row.get::<_, f64>(4)? as f32,
        threshold: row.get::<_, f64>(5)? as f32,
        frames_anomalous: row.get(6)?,
        frames_window: row.get(7)?,
        label: row.get(8)?,
        at: DateTime::from_timestamp_millis(row.get(9)?).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_and_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), true).unwrap();
        let spec = PipelineSpec {
            id: Uuid::from_u128(7),
            name: "line 2 watch".into(),
            station_id: "default".into(),
            source_id: "cam0".into(),
            model_id: None,
            fps: 2.5,
            threshold: Some(0.5),
            confirm_frames: 3,
            confirm_window: 5,
            sinks: vec![
                Sink { name: "mes".into(), kind: SinkKind::Mqtt },
                Sink {
                    name: "andon".into(),
                    kind: SinkKind::Webhook {
                        url: "http://10.0.0.5/hook".into(),
                        headers: vec![("X-Line".into(), "2".into())],
                    },
                },
                Sink {
                    name: "disk".into(),
                    kind: SinkKind::Filesystem { output_dir: "/data/anomalies".into(), save_images: false },
                },
            ],
            active: false,
            created_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
        };
        db.put_pipeline(&spec).unwrap();
        assert_eq!(db.pipelines().unwrap(), std::slice::from_ref(&spec));
        db.set_pipeline_active(spec.id, true).unwrap();
        assert!(db.pipeline(spec.id).unwrap().unwrap().active);

        let event = PipelineEvent {
            seq: 0,
            id: Uuid::from_u128(9),
            pipeline_id: spec.id,
            station_id: "default".into(),
            score: 0.75,
            threshold: 0.5,
            frames_anomalous: 3,
            frames_window: 5,
            label: Some("scratch".into()),
            at: Utc::now(),
        };
        let stored = db.insert_pipeline_event(event, true).unwrap();
        assert_eq!(db.pipeline_events(Some(spec.id), 10).unwrap(), std::slice::from_ref(&stored));
        let message = db.next_outbox("default").unwrap().unwrap();
        assert_eq!(message.record, Some(super::super::OutboxRecord::PipelineEvent(stored)));
        assert!(db.delete_pipeline(spec.id).unwrap());
        assert_eq!(db.pipeline_events(None, 10).unwrap().len(), 1, "events outlive their pipeline");
    }
}
