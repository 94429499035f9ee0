//! The model registry: one row per model version, their folders under
//! `<state_dir>/models/<id>/`, and the activation log, whose newest row names the model
//! that serves.
//!
//! An uploaded model's folder is staged under `models/.staging-<id>/` (files fsynced),
//! validated by its caller, then renamed into place and fsynced before its row commits,
//! as with images: a row never names a missing or partial folder. The model named by
//! `inference.model_dir` is registered with its own folder, which the registry never
//! writes or removes.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Db, StorageError};

/// Where a registered model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// `inference.model_dir` of the config (the bundled model on the laptop defaults).
    Config,
    /// Uploaded through `POST /api/v1/models`; its folder is in the registry's store.
    Upload,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Config => "config",
            ModelSource::Upload => "upload",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub task: String,
    pub description: String,
    pub source: ModelSource,
    pub dir: PathBuf,
    /// SHA-256 of model.onnx, hex.
    pub sha256: String,
    /// model.toml's `[metrics]` table as JSON text.
    pub metrics_json: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// The newest activation: the model that serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelActivation {
    pub model_id: Uuid,
    pub activated_at: DateTime<Utc>,
    pub activated_by: Option<String>,
    /// `config`, `activate` or `rollback`.
    pub reason: String,
}

/// What [`Db::register_config_model`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigRegistration {
    /// The model was not registered before (a first start, or the config names another
    /// model now).
    New(ModelRecord),
    /// Already registered (its folder and checksum are refreshed).
    Known(ModelRecord),
    /// An uploaded model has the same name and version but other contents.
    Clash(ModelRecord),
}

/// Why a model row was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum ModelDeleteError {
    #[error("no model with that id")]
    NotFound,
    #[error("the model is active; activate another one first")]
    Active,
    #[error("the model is the one `inference.model_dir` names; change the config instead")]
    FromConfig,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

const COLUMNS: &str =
    "id, name, version, task, description, source, dir, sha256, metrics, size_bytes, created_at_ms, created_by";

fn read_model(row: &Row<'_>) -> rusqlite::Result<ModelRecord> {
    let id: String = row.get(0)?;
    let source: String = row.get(5)?;
    let dir: String = row.get(6)?;
    Ok(ModelRecord {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        name: row.get(1)?,
        version: row.get(2)?,
        task: row.get(3)?,
        description: row.get(4)?,
        // The column's CHECK allows only the two names.
        source: if source == "config" { ModelSource::Config } else { ModelSource::Upload },
        dir: PathBuf::from(dir),
        sha256: row.get(7)?,
        metrics_json: row.get(8)?,
        size_bytes: row.get::<_, i64>(9)?.max(0) as u64,
        created_at: DateTime::from_timestamp_millis(row.get(10)?).unwrap_or_default(),
        created_by: row.get(11)?,
    })
}

/// The files of a model folder, written durably under `root/.staging-<id>/`. Returns the
/// staging folder; [`Db::commit_model`] moves it into place.
pub(crate) fn stage_model(root: &Path, id: Uuid, files: &[(&str, &[u8])]) -> io::Result<PathBuf> {
    fs::create_dir_all(root)?;
    let staged = root.join(format!(".staging-{id}"));
    fs::create_dir(&staged)?;
    for (name, bytes) in files {
        let mut file = File::create(staged.join(name))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    File::open(&staged)?.sync_all()?;
    Ok(staged)
}

impl Db {
    pub fn models_root(&self) -> &Path {
        &self.models_root
    }

    /// Removes staging folders left by a crash and folders no row names.
    pub(super) fn sweep_model_store(&self) -> Result<usize, StorageError> {
        if !self.models_root.exists() {
            return Ok(0);
        }
        let known: HashSet<PathBuf> = self.models()?.into_iter().map(|m| m.dir).collect();
        let mut removed = 0;
        for entry in fs::read_dir(&self.models_root)? {
            let path = entry?.path();
            if path.is_dir() && !known.contains(&path) {
                fs::remove_dir_all(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn models(&self) -> Result<Vec<ModelRecord>, StorageError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLUMNS} FROM models ORDER BY created_at_ms, name"))?;
        let rows = stmt.query_map([], read_model)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn model(&self, id: Uuid) -> Result<Option<ModelRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM models WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], read_model).optional()?)
    }

    pub fn model_by_version(&self, name: &str, version: &str) -> Result<Option<ModelRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM models WHERE name = ?1 AND version = ?2");
        Ok(self.conn.query_row(&sql, [name, version], read_model).optional()?)
    }

    /// Registers the config's model (`record.source` is `Config`), or refreshes its row.
    pub fn register_config_model(&mut self, record: ModelRecord) -> Result<ConfigRegistration, StorageError> {
        let tx = self.conn.transaction()?;
        let sql = format!("SELECT {COLUMNS} FROM models WHERE name = ?1 AND version = ?2");
        let known = tx.query_row(&sql, [&record.name, &record.version], read_model).optional()?;
        let outcome = match known {
            Some(known) if known.source == ModelSource::Upload => {
                if known.sha256 == record.sha256 {
                    ConfigRegistration::Known(known)
                } else {
                    ConfigRegistration::Clash(known)
                }
            }
            Some(known) => {
                tx.execute(
                    "UPDATE models SET dir = ?2, sha256 = ?3, metrics = ?4, size_bytes = ?5, task = ?6,
                         description = ?7
                     WHERE id = ?1",
                    params![
                        known.id.to_string(),
                        record.dir.to_string_lossy(),
                        record.sha256,
                        record.metrics_json,
                        record.size_bytes as i64,
                        record.task,
                        record.description,
                    ],
                )?;
                ConfigRegistration::Known(ModelRecord { id: known.id, created_at: known.created_at, ..record })
            }
            None => {
                insert_model(&tx, &record)?;
                ConfigRegistration::New(record)
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Moves a staged folder to `<models>/<id>` (durably) and commits its row. On a
    /// conflict (same name and version) the staged folder is removed and `Ok(Err(known))`
    /// returned.
    pub fn commit_model(
        &mut self,
        staged: &Path,
        mut record: ModelRecord,
    ) -> Result<Result<ModelRecord, ModelRecord>, StorageError> {
        if let Some(known) = self.model_by_version(&record.name, &record.version)? {
            fs::remove_dir_all(staged)?;
            return Ok(Err(known));
        }
        let dir = self.models_root.join(record.id.to_string());
        fs::rename(staged, &dir)?;
        File::open(&self.models_root)?.sync_all()?;
        record.dir = dir.clone();
        let tx = self.conn.transaction()?;
        if let Err(err) = insert_model(&tx, &record).and_then(|()| tx.commit()) {
            // Not committed: the folder is an orphan; take it back now.
            let _ = fs::remove_dir_all(&dir);
            return Err(err.into());
        }
        Ok(Ok(record))
    }

    /// The newest activation, if any model was ever activated.
    pub fn active_model(&self) -> Result<Option<ModelActivation>, StorageError> {
        let row = self
            .conn
            .query_row(
                "SELECT model_id, activated_at_ms, activated_by, reason FROM model_activations
                 ORDER BY seq DESC LIMIT 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.map(|(id, at, by, reason)| ModelActivation {
            model_id: Uuid::parse_str(&id).unwrap_or_default(),
            activated_at: DateTime::from_timestamp_millis(at).unwrap_or_default(),
            activated_by: by,
            reason,
        }))
    }

    /// The model that served before the active one (the newest activation of another
    /// model that is still registered), for a rollback.
    pub fn previous_model(&self) -> Result<Option<Uuid>, StorageError> {
        let Some(active) = self.active_model()? else { return Ok(None) };
        let previous: Option<String> = self
            .conn
            .query_row(
                "SELECT model_id FROM model_activations WHERE model_id != ?1 ORDER BY seq DESC LIMIT 1",
                [active.model_id.to_string()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(previous.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    /// Records that `model_id` serves from now on. Committed before the swap, so that a
    /// restart serves the same model the API answered with.
    pub fn record_activation(
        &mut self,
        model_id: Uuid,
        at: DateTime<Utc>,
        by: Option<&str>,
        reason: &str,
    ) -> Result<ModelActivation, StorageError> {
        self.conn.execute(
            "INSERT INTO model_activations (model_id, activated_at_ms, activated_by, reason) VALUES (?1, ?2, ?3, ?4)",
            params![model_id.to_string(), at.timestamp_millis(), by, reason],
        )?;
        Ok(ModelActivation {
            model_id,
            activated_at: at,
            activated_by: by.map(str::to_owned),
            reason: reason.to_owned(),
        })
    }

    /// Deletes an uploaded model that is not active: the row (and its activations)
    /// first, then its folder.
    pub fn delete_model(&mut self, id: Uuid) -> Result<ModelRecord, ModelDeleteError> {
        let record = self.model(id)?.ok_or(ModelDeleteError::NotFound)?;
        if record.source == ModelSource::Config {
            return Err(ModelDeleteError::FromConfig);
        }
        if self.active_model()?.is_some_and(|a| a.model_id == id) {
            return Err(ModelDeleteError::Active);
        }
        self.conn.execute("DELETE FROM models WHERE id = ?1", [id.to_string()]).map_err(StorageError::from)?;
        if let Err(err) = fs::remove_dir_all(&record.dir) {
            // The row is gone; the next start's sweep removes what is left.
            tracing::warn!(dir = %record.dir.display(), cause = %err, "cannot remove a deleted model's folder");
        }
        Ok(record)
    }
}

fn insert_model(tx: &rusqlite::Transaction<'_>, record: &ModelRecord) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO models ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            record.id.to_string(),
            record.name,
            record.version,
            record.task,
            record.description,
            record.source.as_str(),
            record.dir.to_string_lossy(),
            record.sha256,
            record.metrics_json,
            record.size_bytes as i64,
            record.created_at.timestamp_millis(),
            record.created_by,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str, source: ModelSource, sha: &str) -> ModelRecord {
        ModelRecord {
            id: Uuid::new_v4(),
            name: name.into(),
            version: version.into(),
            task: "classification".into(),
            description: String::new(),
            source,
            dir: PathBuf::from("models/x"),
            sha256: sha.into(),
            metrics_json: "{}".into(),
            size_bytes: 1,
            created_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            created_by: None,
        }
    }

    #[test]
    fn uploads_activations_rollback_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), false).unwrap();
        let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();

        let ConfigRegistration::New(bundled) =
            db.register_config_model(record("m", "1", ModelSource::Config, "aa")).unwrap()
        else {
            panic!("first registration is new")
        };
        // Same name and version again: known, refreshed in place.
        let again = db.register_config_model(record("m", "1", ModelSource::Config, "bb")).unwrap();
        assert!(matches!(&again, ConfigRegistration::Known(r) if r.id == bundled.id && r.sha256 == "bb"));
        db.record_activation(bundled.id, at(0), None, "config").unwrap();

        let staged = stage_model(db.models_root(), Uuid::new_v4(), &[("model.toml", b"x")]).unwrap();
        let upload = db.commit_model(&staged, record("m", "2", ModelSource::Upload, "cc")).unwrap().unwrap();
        assert!(upload.dir.join("model.toml").exists() && !staged.exists());
        // A second upload of the same version is refused and its staging removed.
        let staged = stage_model(db.models_root(), Uuid::new_v4(), &[("model.toml", b"y")]).unwrap();
        let clash = db.commit_model(&staged, record("m", "2", ModelSource::Upload, "dd")).unwrap();
        assert_eq!(clash.unwrap_err().id, upload.id);
        assert!(!staged.exists());

        assert_eq!(db.previous_model().unwrap(), None);
        db.record_activation(upload.id, at(1), Some("eng"), "activate").unwrap();
        assert_eq!(db.active_model().unwrap().unwrap().model_id, upload.id);
        assert_eq!(db.previous_model().unwrap(), Some(bundled.id));
        assert!(matches!(db.delete_model(upload.id), Err(ModelDeleteError::Active)));
        assert!(matches!(db.delete_model(bundled.id), Err(ModelDeleteError::FromConfig)));

        db.record_activation(bundled.id, at(2), Some("eng"), "rollback").unwrap();
        assert_eq!(db.previous_model().unwrap(), Some(upload.id));
        let deleted = db.delete_model(upload.id).unwrap();
        assert!(!deleted.dir.exists());
        // Its activations went with it: nothing to roll back to.
        assert_eq!(db.previous_model().unwrap(), None);
        assert!(matches!(db.delete_model(upload.id), Err(ModelDeleteError::NotFound)));

        // A crash between staging and commit leaves a folder the next open removes.
        let orphan = stage_model(db.models_root(), Uuid::new_v4(), &[("model.onnx", b"z")]).unwrap();
        drop(db);
        let db = Db::open(dir.path(), false).unwrap();
        assert!(!orphan.exists());
        assert_eq!(db.models().unwrap().len(), 1);
    }
}
