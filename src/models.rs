//! The model registry: model versions the station can serve, uploads validated by
//! loading them in tract, activation with a hot swap, rollback, delete and a latency
//! benchmark.
//!
//! Which model serves is the newest row of the activation log. At start the model that
//! `inference.model_dir` names is registered; it becomes active when it is new to the
//! registry (a first start, or a config that now names another model), and otherwise the
//! model activated last keeps serving, so an activation through the API survives a
//! restart.
//!
//! A swap never fails a trigger: the new model is loaded and warmed up on the blocking
//! pool while the old one serves, the activation is committed, and only then do the
//! inference threads take the new model, from their next job on (`inference::SwapGuard`).

use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::ThresholdOverrides;
use crate::inference::{self, InferenceHandle, ModelSpec};
use crate::storage::{
    ConfigRegistration, ModelActivation, ModelDeleteError, ModelRecord, ModelSource, Storage, StorageError,
};

/// The largest model archive accepted, and the largest model.onnx inside it.
pub const MAX_ARCHIVE_BYTES: usize = 256 * 1024 * 1024;
const MAX_TOML_BYTES: u64 = 64 * 1024;

/// Benchmark iterations allowed per request.
pub const MAX_BENCHMARK_ITERATIONS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model with that id")]
    NotFound,
    /// The archive is not a zip or a (gzipped) tar.
    #[error("{0}")]
    NotAnArchive(String),
    /// The archive or the model in it is not usable.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<ModelDeleteError> for RegistryError {
    fn from(err: ModelDeleteError) -> RegistryError {
        match err {
            ModelDeleteError::NotFound => RegistryError::NotFound,
            ModelDeleteError::Storage(err) => RegistryError::Storage(err),
            other => RegistryError::Conflict(other.to_string()),
        }
    }
}

/// Latency of one model with tract, one inference at a time on one thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    pub iterations: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Cheap to clone; the API's view of the registry.
#[derive(Clone)]
pub struct Registry {
    storage: Storage,
    inference: InferenceHandle,
    overrides: ThresholdOverrides,
    models_root: PathBuf,
}

/// Registers the config's model and picks the model to load at start: its registry id
/// and folder, or why there is none.
pub async fn resolve_start(storage: &Storage, config_dir: &Path) -> Result<(String, PathBuf), String> {
    let dir = config_dir.to_owned();
    let record = tokio::task::spawn_blocking(move || describe(Uuid::new_v4(), &dir, ModelSource::Config, None))
        .await
        .map_err(|err| err.to_string())
        .and_then(|described| described.map_err(|err| err.to_string()));
    // The config's model, and whether it is new to the registry (then it serves).
    let config = match record {
        Ok(record) => match storage.call(move |db| db.register_config_model(record)).await {
            Ok(ConfigRegistration::New(record)) => Some((record.id, true)),
            Ok(ConfigRegistration::Known(record)) => Some((record.id, false)),
            Ok(ConfigRegistration::Clash(known)) => {
                tracing::warn!(
                    model = known.name,
                    version = known.version,
                    "inference.model_dir names a model whose name and version an uploaded model has, \
                     with other contents; the config's model is not registered"
                );
                None
            }
            Err(err) => return Err(err.to_string()),
        },
        Err(err) => {
            tracing::error!(cause = %err, dir = %config_dir.display(), "the model inference.model_dir names is unusable");
            None
        }
    };
    let active = storage.call(|db| db.active_model()).await.map_err(|err| err.to_string())?;
    let chosen = match (config, active) {
        (Some((id, true)), _) | (Some((id, false)), None) => {
            storage
                .call(move |db| db.record_activation(id, Utc::now(), None, "config"))
                .await
                .map_err(|err| err.to_string())?;
            tracing::info!(id = %id, "the model inference.model_dir names is activated");
            id
        }
        (_, Some(active)) => active.model_id,
        (None, None) => {
            return Err(format!("no usable model: {} is unusable and none is registered", config_dir.display()));
        }
    };
    let record = storage.call(move |db| db.model(chosen)).await.map_err(|err| err.to_string())?;
    let record = record.ok_or_else(|| "the active model is not registered".to_owned())?;
    Ok((record.id.to_string(), record.dir))
}

/// Reads a model folder's spec and checksum into a registry row (not yet stored).
fn describe(id: Uuid, dir: &Path, source: ModelSource, by: Option<String>) -> Result<ModelRecord, RegistryError> {
    let spec = ModelSpec::load(dir).map_err(|err| RegistryError::Invalid(err.to_string()))?;
    let onnx = dir.join("model.onnx");
    let mut file = std::fs::File::open(&onnx)
        .map_err(|err| RegistryError::Invalid(format!("cannot read {}: {err}", onnx.display())))?;
    let mut hasher = Sha256::new();
    let size_bytes = std::io::copy(&mut file, &mut hasher)
        .map_err(|err| RegistryError::Invalid(format!("cannot read {}: {err}", onnx.display())))?;
    let metrics_json = serde_json::to_string(&spec.metrics).unwrap_or_else(|_| "{}".to_owned());
    Ok(ModelRecord {
        id,
        name: spec.name,
        version: spec.version,
        task: spec.task.as_str().to_owned(),
        description: spec.description,
        source,
        dir: dir.to_owned(),
        sha256: hex(&hasher.finalize()),
        metrics_json,
        size_bytes,
        created_at: Utc::now(),
        created_by: by,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    pub fn new(
        storage: Storage,
        inference: InferenceHandle,
        overrides: ThresholdOverrides,
        state_dir: &Path,
    ) -> Registry {
        Registry { storage, inference, overrides, models_root: state_dir.join("models") }
    }

    /// Every registered model, oldest first, and the newest activation.
    pub async fn list(&self) -> Result<(Vec<ModelRecord>, Option<ModelActivation>), RegistryError> {
        Ok(self.storage.call(|db| Ok((db.models()?, db.active_model()?))).await?)
    }

    pub async fn get(&self, id: Uuid) -> Result<(ModelRecord, Option<ModelActivation>), RegistryError> {
        let (record, active) = self.storage.call(move |db| Ok((db.model(id)?, db.active_model()?))).await?;
        Ok((record.ok_or(RegistryError::NotFound)?, active))
    }

    /// Unpacks an uploaded archive, loads the model in tract (a model that does not load
    /// or run is refused), and registers it. It does not serve until activated.
    pub async fn upload(&self, archive: bytes::Bytes, by: String) -> Result<ModelRecord, RegistryError> {
        let root = self.models_root.clone();
        let (staged, record) = tokio::task::spawn_blocking(move || stage_upload(&archive, &root, by))
            .await
            .map_err(|err| RegistryError::Invalid(format!("the upload could not be unpacked: {err}")))??;
        self.commit(staged, record).await
    }

    /// Registers the model folder `dir` (model.toml and model.onnx) like an upload: a
    /// fitted model joins the registry this way. `dir` itself is left as it is.
    pub async fn add_folder(&self, dir: PathBuf, by: String) -> Result<ModelRecord, RegistryError> {
        let root = self.models_root.clone();
        let staged = tokio::task::spawn_blocking(move || {
            let read = |name: &str| {
                std::fs::read(dir.join(name))
                    .map_err(|err| RegistryError::Invalid(format!("{}: {err}", dir.join(name).display())))
            };
            stage_files(read("model.toml")?, &read("model.onnx")?, &root, by)
        });
        let (staged, record) =
            staged.await.map_err(|err| RegistryError::Invalid(format!("the model could not be staged: {err}")))??;
        self.commit(staged, record).await
    }

    /// Whether a model with `name` and `version` is registered.
    pub async fn has_version(&self, name: &str, version: &str) -> Result<bool, StorageError> {
        let models = self.storage.call(|db| db.models()).await?;
        Ok(models.iter().any(|m| m.name == name && m.version == version))
    }

    async fn commit(&self, staged: PathBuf, record: ModelRecord) -> Result<ModelRecord, RegistryError> {
        let committed = self.storage.call(move |db| db.commit_model(&staged, record)).await?;
        committed.map_err(|known| {
            RegistryError::Conflict(format!("model {} version {} is already registered", known.name, known.version))
        })
    }

    /// Loads and warms up the registered model `id` on the blocking pool.
    async fn load(&self, id: Uuid) -> Result<inference::Loaded, RegistryError> {
        let record = self.storage.call(move |db| db.model(id)).await?.ok_or(RegistryError::NotFound)?;
        inference::load_off_runtime(id.to_string(), record.dir)
            .await
            .map_err(|err| RegistryError::Invalid(format!("the model does not load: {err}")))
    }

    /// Loads and warms `id` while the current model serves, commits the activation and
    /// swaps. Activating the model that serves is a no-op.
    pub async fn activate(&self, id: Uuid, by: &str, reason: &'static str) -> Result<ModelActivation, RegistryError> {
        let swap = self.inference.begin_swap().await;
        if self.inference.model().is_some_and(|m| m.id == id.to_string()) {
            let active = self.storage.call(|db| db.active_model()).await?;
            if let Some(active) = active.filter(|a| a.model_id == id) {
                return Ok(active);
            }
        }
        let loaded = self.load(id).await?;
        loaded.info().spec.rule(&self.overrides).map_err(|err| {
            RegistryError::Invalid(format!("the model does not fit the config's [inference] thresholds: {err}"))
        })?;
        let by = by.to_owned();
        let activation = self.storage.call(move |db| db.record_activation(id, Utc::now(), Some(&by), reason)).await?;
        swap.install(loaded);
        Ok(activation)
    }

    /// Activates the model that served before the current one.
    pub async fn rollback(&self, by: &str) -> Result<ModelActivation, RegistryError> {
        let previous = self.storage.call(|db| db.previous_model()).await?;
        let previous = previous.ok_or_else(|| RegistryError::Conflict("no earlier model to roll back to".into()))?;
        self.activate(previous, by, "rollback").await
    }

    pub async fn delete(&self, id: Uuid) -> Result<ModelRecord, RegistryError> {
        Ok(self.storage.call(move |db| Ok(db.delete_model(id))).await??)
    }

    /// Loads `id` on the blocking pool and times `iterations` inferences (after three
    /// warm-up runs) on one thread, as the inference threads run them.
    pub async fn benchmark(&self, id: Uuid, iterations: usize) -> Result<Benchmark, RegistryError> {
        let loaded = self.load(id).await?;
        let times = tokio::task::spawn_blocking(move || {
            loaded.time_runs(3)?;
            loaded.time_runs(iterations)
        })
        .await
        .map_err(|err| RegistryError::Invalid(format!("the benchmark failed: {err}")))?
        .map_err(|err| RegistryError::Invalid(format!("the model failed to run: {err}")))?;
        Ok(summarise(times))
    }
}

/// Mean, nearest-rank percentiles, min and max of per-run milliseconds (at least one).
pub fn summarise(mut times: Vec<f64>) -> Benchmark {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Benchmark {
        iterations: times.len(),
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        min_ms: times[0],
        max_ms: times[times.len() - 1],
    }
}

/// The two files of a model folder, read from an archive.
#[derive(Debug, Default)]
struct ModelFiles {
    toml: Option<Vec<u8>>,
    onnx: Option<Vec<u8>>,
}

impl ModelFiles {
    /// Takes an archive entry if it is `model.toml` or `model.onnx`, at the top or in one
    /// folder (an archive of the folder itself). Other files are ignored.
    fn take(&mut self, path: &str, size: u64, reader: &mut dyn Read) -> Result<(), RegistryError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let (slot, limit) = match parts.as_slice() {
            [name] | [_, name] if *name == "model.toml" => (&mut self.toml, MAX_TOML_BYTES),
            [name] | [_, name] if *name == "model.onnx" => (&mut self.onnx, MAX_ARCHIVE_BYTES as u64),
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(RegistryError::Invalid(format!("the archive holds more than one {}", parts[parts.len() - 1])));
        }
        if size > limit {
            return Err(RegistryError::Invalid(format!("{path} is larger than {limit} bytes")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| RegistryError::Invalid(format!("cannot read {path} from the archive: {err}")))?;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::Invalid(format!("{path} is larger than {limit} bytes")));
        }
        *slot = Some(bytes);
        Ok(())
    }
}

/// Reads model.toml and model.onnx from a zip, tar or tar.gz archive.
fn unpack(archive: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RegistryError> {
    let mut files = ModelFiles::default();
    if archive.starts_with(b"PK\x03\x04") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive))
            .map_err(|err| RegistryError::Invalid(format!("the zip archive is damaged: {err}")))?;
        for index in 0..zip.len() {
            let mut entry = zip
                .by_index(index)
                .map_err(|err| RegistryError::Invalid(format!("the zip archive is damaged: {err}")))?;
            if entry.is_file() {
                let name = entry
                    .name()
                    .map_err(|err| RegistryError::Invalid(format!("the zip archive is damaged: {err}")))?
                    .into_owned();
                let size = entry.size();
                files.take(&name, size, &mut entry)?;
            }
        }
    } else if archive.starts_with(&[0x1f, 0x8b]) {
        read_tar(tar::Archive::new(flate2::read::GzDecoder::new(archive)), &mut files)?;
    } else if archive.get(257..262) == Some(b"ustar") {
        read_tar(tar::Archive::new(archive), &mut files)?;
    } else {
        return Err(RegistryError::NotAnArchive(
            "send the model folder (model.toml and model.onnx) as a .zip, .tar or .tar.gz archive".into(),
        ));
    }
    match (files.toml, files.onnx) {
        (Some(toml), Some(onnx)) => Ok((toml, onnx)),
        (None, _) => Err(RegistryError::Invalid("the archive has no model.toml".into())),
        (_, None) => Err(RegistryError::Invalid("the archive has no model.onnx".into())),
    }
}

fn read_tar<R: Read>(mut archive: tar::Archive<R>, files: &mut ModelFiles) -> Result<(), RegistryError> {
    let bad = |err: std::io::Error| RegistryError::Invalid(format!("the archive is damaged: {err}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let size = entry.size();
        files.take(&path, size, &mut entry)?;
    }
    Ok(())
}

/// Unpacks, stages and loads an upload; on success the staged folder and its row.
fn stage_upload(archive: &[u8], root: &Path, by: String) -> Result<(PathBuf, ModelRecord), RegistryError> {
    let (toml, onnx) = unpack(archive)?;
    stage_files(toml, &onnx, root, by)
}

/// Stages a model's two files and loads them; on success the staged folder and its row.
fn stage_files(toml: Vec<u8>, onnx: &[u8], root: &Path, by: String) -> Result<(PathBuf, ModelRecord), RegistryError> {
    let text = String::from_utf8(toml).map_err(|_| RegistryError::Invalid("model.toml is not UTF-8".into()))?;
    ModelSpec::parse(&text).map_err(|err| RegistryError::Invalid(err.to_string()))?;
    let id = Uuid::new_v4();
    let staged = crate::storage::stage_model(root, id, &[("model.toml", text.as_bytes()), ("model.onnx", onnx)])
        .map_err(|err| RegistryError::Storage(err.into()))?;
    let checked = describe(id, &staged, ModelSource::Upload, Some(by)).and_then(|record| {
        // Loading runs a warm-up inference: a graph that loads but cannot run on the
        // input model.toml declares is refused here, not at activation.
        inference::Model::load(&staged)
            .map_err(|err| RegistryError::Invalid(format!("model.onnx does not load in tract: {err}")))?;
        Ok(record)
    });
    if checked.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    Ok((staged, checked?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpack_takes_the_two_files_at_the_top_or_in_one_folder() {
        let archive = tar_of(&[("m/model.toml", b"t"), ("m/model.onnx", b"o"), ("m/heldout/a.png", b"x")]);
        assert_eq!(unpack(&archive).unwrap(), (b"t".to_vec(), b"o".to_vec()));
        let archive = tar_of(&[("model.toml", b"t"), ("model.onnx", b"o")]);
        assert_eq!(unpack(&archive).unwrap(), (b"t".to_vec(), b"o".to_vec()));

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &archive).unwrap();
        assert_eq!(unpack(&gz.finish().unwrap()).unwrap().1, b"o");

        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("folder/model.toml", options).unwrap();
        std::io::Write::write_all(&mut zip, b"t").unwrap();
        zip.start_file("folder/model.onnx", options).unwrap();
        std::io::Write::write_all(&mut zip, b"o").unwrap();
        assert_eq!(unpack(&zip.finish().unwrap().into_inner()).unwrap().0, b"t");
    }

    #[test]
    fn unpack_refusals_say_what_is_wrong() {
        let cases: [(Vec<u8>, &str); 5] = [
            (b"just some bytes".to_vec(), "as a .zip, .tar or .tar.gz"),
            (tar_of(&[("model.onnx", b"o")]), "no model.toml"),
            (tar_of(&[("a/b/model.toml", b"t"), ("model.onnx", b"o")]), "no model.toml"),
            (tar_of(&[("model.toml", b"t"), ("x/model.toml", b"u"), ("model.onnx", b"o")]), "more than one model.toml"),
            (tar_of(&[("model.toml", &[b'x'; 70_000]), ("model.onnx", b"o")]), "larger than 65536 bytes"),
        ];
        for (archive, expected) in cases {
            let err = unpack(&archive).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn benchmark_summary_is_order_statistics() {
        let summary = summarise((1..=100).rev().map(f64::from).collect());
        assert_eq!((summary.p50_ms, summary.p99_ms, summary.min_ms, summary.max_ms), (51.0, 99.0, 1.0, 100.0));
        assert_eq!(summary.mean_ms, 50.5);
        assert_eq!(summary.iterations, 100);
    }
}
