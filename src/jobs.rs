//! The `jobs` service: batch jobs (the inspection seed's "batch jobs over a folder with a
//! glob"). A job inspects every image under `input_root/<input_dir>` whose path matches
//! its pattern, one at a time, as ordinary uploaded inspections of its station (so they
//! are stored, counted and published, but drive no stack light), and records its progress
//! after each file. Started jobs run one after another; a cancel stops a job after the
//! file it is on. A job that was running when the daemon stopped is marked failed at the
//! next start.
//!
//! A fit job (`JobKind::Fit`) fits a PatchCore anomaly model ([`crate::patchcore`]) on
//! normal images uploaded with it or on a station's newest passed images, reports its
//! stage and images done as progress, and registers the fitted model (not activated).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::core::decision::Decision;
use crate::cycle::{CycleImage, InspectRequest, Inspector};
use crate::storage::{JobKind, JobProgress, JobRecord, JobStatus, StorageError};
use crate::supervisor::{Phase, ServiceContext, ServiceError, Supervisor};

/// Images larger than this are counted as errors, like an oversized upload.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Files one job may match.
pub const MAX_FILES: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job with that id")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the jobs service has stopped")]
    Stopped,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

enum Command {
    Start { id: Uuid, done: oneshot::Sender<Result<JobRecord, JobError>> },
    Cancel { id: Uuid, done: oneshot::Sender<Result<JobRecord, JobError>> },
}

/// Cheap to clone; the API's view of batch jobs.
#[derive(Clone)]
pub struct Jobs {
    inspector: Inspector,
    commands: mpsc::Sender<Command>,
    input_root: PathBuf,
    fits: Fits,
}

/// What fit jobs need: the backbone, where their uploads wait, and the registry.
#[derive(Clone)]
pub struct Fits {
    /// `[anomaly] backbone_dir`; `None` refuses fits.
    pub backbone_dir: Option<PathBuf>,
    /// `<state_dir>/fits`: a fit's uploaded images, under its job id, until it ends.
    pub root: PathBuf,
    pub registry: crate::models::Registry,
}

/// A fit job's parameters, as stored with it (JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitParams {
    pub model_name: String,
    pub model_version: String,
    pub coreset_ratio: f64,
    pub source: FitSource,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FitSource {
    /// Images uploaded with the job, kept under `<fits root>/<job id>/<set>/`.
    Upload { normal: usize, heldout_normal: usize, heldout_anomalous: usize },
    /// The station's newest passed images (normal) and failed images (held-out anomalous).
    Station { station_id: String, last_passed: u32, last_failed: u32 },
}

/// The image sets of an uploaded fit, as folder names under its job folder.
pub const FIT_SETS: [&str; 3] = ["normal", "heldout_normal", "heldout_anomalous"];

/// What a new job is asked to do.
pub struct NewJob {
    pub name: String,
    pub input_dir: String,
    pub file_pattern: String,
    pub station_id: String,
    pub created_by: String,
}

impl Jobs {
    pub fn input_root(&self) -> &Path {
        &self.input_root
    }

    /// Where fit job `id` keeps its uploaded images (`<folder>/<set>/`).
    pub fn fit_folder(&self, id: Uuid) -> PathBuf {
        self.fits.root.join(id.to_string())
    }

    /// Checks, stores and starts a fit job (id chosen by the caller, who may have put its
    /// images in [`Jobs::fit_folder`] already).
    pub async fn create_fit(&self, id: Uuid, params: FitParams, created_by: String) -> Result<JobRecord, JobError> {
        if self.fits.backbone_dir.is_none() {
            return Err(JobError::Conflict("fits need a backbone: set [anomaly] backbone_dir".into()));
        }
        let name_ok = |s: &str| !s.trim().is_empty() && s.len() <= 100 && !s.chars().any(char::is_control);
        if !name_ok(&params.model_name) || !name_ok(&params.model_version) {
            return Err(JobError::Invalid("name and version must be 1 to 100 characters".into()));
        }
        let (normal, all, station_id) = match &params.source {
            FitSource::Upload { normal, heldout_normal, heldout_anomalous } => {
                (*normal, normal + heldout_normal + heldout_anomalous, String::new())
            }
            FitSource::Station { station_id, last_passed, last_failed } => {
                if !self.inspector.has_station(station_id) {
                    return Err(JobError::Invalid(format!("no station {station_id:?}")));
                }
                let passed = *last_passed as usize;
                (passed, passed + *last_failed as usize, station_id.clone())
            }
        };
        crate::patchcore::check_request(normal, all, params.coreset_ratio)
            .map_err(|err| JobError::Invalid(err.to_string()))?;
        if self.fits.registry.has_version(&params.model_name, &params.model_version).await? {
            return Err(JobError::Conflict(format!(
                "model {} version {} is already registered",
                params.model_name, params.model_version
            )));
        }
        let job = JobRecord {
            id,
            kind: JobKind::Fit,
            name: format!("fit {} {}", params.model_name, params.model_version),
            input_dir: String::new(),
            file_pattern: String::new(),
            station_id,
            status: JobStatus::Pending,
            progress: JobProgress::default(),
            last_error: None,
            created_by: Some(created_by),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            params: Some(serde_json::to_string(&params).map_err(|err| JobError::Invalid(err.to_string()))?),
            result: None,
            stage: None,
        };
        let stored = job.clone();
        self.inspector.storage.call(move |db| db.insert_job(&stored)).await?;
        self.start(id).await
    }

    /// Checks and stores a new job (pending until started).
    pub async fn create(&self, new: NewJob) -> Result<JobRecord, JobError> {
        if new.name.trim().is_empty() || new.name.len() > 200 {
            return Err(JobError::Invalid("name must be 1 to 200 characters".into()));
        }
        if !self.inspector.has_station(&new.station_id) {
            return Err(JobError::Invalid(format!("no station {:?}", new.station_id)));
        }
        resolve_dir(&self.input_root, &new.input_dir)?;
        pattern(&new.file_pattern)?;
        let job = JobRecord {
            id: Uuid::new_v4(),
            kind: JobKind::Batch,
            name: new.name.trim().to_owned(),
            input_dir: new.input_dir,
            file_pattern: new.file_pattern,
            station_id: new.station_id,
            status: JobStatus::Pending,
            progress: JobProgress::default(),
            last_error: None,
            created_by: Some(new.created_by),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            params: None,
            result: None,
            stage: None,
        };
        let stored = job.clone();
        self.inspector.storage.call(move |db| db.insert_job(&stored)).await?;
        Ok(job)
    }

    pub async fn list(
        &self,
        limit: u32,
        kind: Option<JobKind>,
        status: Option<JobStatus>,
    ) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.inspector.storage.call(move |db| db.jobs(limit, kind, status)).await?)
    }

    pub async fn get(&self, id: Uuid) -> Result<JobRecord, JobError> {
        self.inspector.storage.call(move |db| db.job(id)).await?.ok_or(JobError::NotFound)
    }

    /// Starts a pending job (queued behind a running one).
    pub async fn start(&self, id: Uuid) -> Result<JobRecord, JobError> {
        self.command(|done| Command::Start { id, done }).await
    }

    /// Cancels a pending, queued or running job (a running one after its current file).
    pub async fn cancel(&self, id: Uuid) -> Result<JobRecord, JobError> {
        self.command(|done| Command::Cancel { id, done }).await
    }

    async fn command(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<JobRecord, JobError>>) -> Command,
    ) -> Result<JobRecord, JobError> {
        let (done, answer) = oneshot::channel();
        self.commands.send(command(done)).await.map_err(|_| JobError::Stopped)?;
        answer.await.map_err(|_| JobError::Stopped)?
    }
}

/// `input_root/input_dir`, which must exist and stay under the root.
fn resolve_dir(root: &Path, input_dir: &str) -> Result<PathBuf, JobError> {
    let root = root
        .canonicalize()
        .map_err(|err| JobError::Invalid(format!("the batch input root {} is not usable: {err}", root.display())))?;
    let dir = root
        .join(input_dir.trim_start_matches('/'))
        .canonicalize()
        .map_err(|err| JobError::Invalid(format!("input_dir {input_dir:?}: {err}")))?;
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Err(JobError::Invalid(format!(
            "input_dir {input_dir:?} must be a folder under the batch input root {}",
            root.display()
        )));
    }
    Ok(dir)
}

fn pattern(text: &str) -> Result<glob::Pattern, JobError> {
    if text.is_empty() || text.starts_with('/') || text.split('/').any(|part| part == "..") {
        return Err(JobError::Invalid(
            "file_pattern must be a relative glob such as *.jpg or **/*.png, without ..".into(),
        ));
    }
    glob::Pattern::new(text).map_err(|err| JobError::Invalid(format!("file_pattern {text:?}: {err}")))
}

/// The files under `dir` whose path relative to it matches `pattern`, sorted.
fn matching_files(dir: &Path, pattern: &glob::Pattern) -> Result<Vec<PathBuf>, String> {
    let full = dir.join(pattern.as_str());
    let paths = glob::glob(&full.to_string_lossy()).map_err(|err| err.to_string())?;
    let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).take(MAX_FILES + 1).collect();
    if files.len() > MAX_FILES {
        return Err(format!("the pattern matches more than {MAX_FILES} files"));
    }
    files.sort();
    Ok(files)
}

pub fn spawn(supervisor: &mut Supervisor, inspector: Inspector, input_root: PathBuf, fits: Fits) -> Jobs {
    let (commands_tx, commands) = mpsc::channel(8);
    let jobs = Jobs { inspector, commands: commands_tx, input_root, fits };
    let service = jobs.clone();
    supervisor.spawn("jobs", Phase::Intake, move |ctx| run(service, commands, ctx));
    jobs
}

async fn run(jobs: Jobs, mut commands: mpsc::Receiver<Command>, ctx: ServiceContext) -> Result<(), ServiceError> {
    let storage = jobs.inspector.storage.clone();
    match storage.call(|db| db.fail_interrupted_jobs(Utc::now())).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(jobs = n, "batch jobs interrupted by the last stop are marked failed"),
        Err(StorageError::Stopped) => return Ok(()),
        Err(err) => return Err(ServiceError::new(err)),
    }
    // Fits are started as they are created and fail when a stop interrupts them, so at
    // start no fit needs its uploaded images any more.
    let root = jobs.fits.root.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
    ctx.set_ready();
    let mut queue: VecDeque<Uuid> = VecDeque::new();
    let mut current: Option<(Uuid, CancellationToken, BoxFuture<'static, ()>)> = None;
    loop {
        if current.is_none()
            && let Some(id) = queue.pop_front()
        {
            let token = ctx.token.child_token();
            current = Some((id, token.clone(), run_job(jobs.clone(), id, token, ctx.token.clone()).boxed()));
        }
        let running = async {
            match current.as_mut() {
                Some((_, _, job)) => job.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = running => current = None,
            () = ctx.token.cancelled() => {
                // The running job stops after its current file and records why.
                if let Some((_, _, job)) = current.take() {
                    job.await;
                }
                return Ok(());
            }
            Some(command) = commands.recv() => {
                let running = current.as_ref().map(|(id, token, _)| (*id, token.clone()));
                handle(&jobs, command, &mut queue, running).await;
            }
        }
    }
}

async fn handle(jobs: &Jobs, command: Command, queue: &mut VecDeque<Uuid>, running: Option<(Uuid, CancellationToken)>) {
    match command {
        Command::Start { id, done } => {
            let answer = transition(jobs, id, &[JobStatus::Pending], JobStatus::Queued, |status| {
                format!("the job is {}; only a pending job starts", status.as_str())
            })
            .await;
            if answer.is_ok() {
                queue.push_back(id);
            }
            let _ = done.send(answer);
        }
        Command::Cancel { id, done } => {
            let answer = match running {
                // The job records its own end once its current file is done.
                Some((running, token)) if running == id => {
                    token.cancel();
                    jobs.get(id).await
                }
                _ => {
                    queue.retain(|queued| *queued != id);
                    let from = &[JobStatus::Pending, JobStatus::Queued];
                    transition(jobs, id, from, JobStatus::Cancelled, |status| {
                        format!("the job is already {}", status.as_str())
                    })
                    .await
                }
            };
            let _ = done.send(answer);
        }
    }
}

/// Moves job `id` from one of `from` to `to` and answers with the job; a job in another
/// state is a conflict that `refused` describes.
async fn transition(
    jobs: &Jobs,
    id: Uuid,
    from: &'static [JobStatus],
    to: JobStatus,
    refused: impl FnOnce(JobStatus) -> String,
) -> Result<JobRecord, JobError> {
    let now = Utc::now();
    let moved = jobs.inspector.storage.call(move |db| db.set_job_status(id, from, to, None, now)).await?;
    let job = jobs.get(id).await?;
    if moved { Ok(job) } else { Err(JobError::Conflict(refused(job.status))) }
}

/// Runs one job to its end and records the end. Errors of single files are counted, not
/// fatal; a storage failure ends the job as failed.
async fn run_job(jobs: Jobs, id: Uuid, token: CancellationToken, stop: CancellationToken) {
    let storage = jobs.inspector.storage.clone();
    let end = |status: JobStatus, error: Option<String>| {
        let storage = storage.clone();
        async move {
            let from = [JobStatus::Queued, JobStatus::Running];
            let at = Utc::now();
            if let Err(err) = storage.call(move |db| db.set_job_status(id, &from, status, error.as_deref(), at)).await {
                tracing::error!(job = %id, cause = %err, "a batch job's end could not be recorded");
            }
        }
    };
    let job = match jobs.get(id).await {
        Ok(job) => job,
        Err(err) => return end(JobStatus::Failed, Some(err.to_string())).await,
    };
    if job.kind == JobKind::Fit {
        let (status, error) = run_fit(&jobs, &job, &token, &stop).await;
        // A fit's uploaded images are only its input.
        let folder = jobs.fit_folder(id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(folder)).await;
        return end(status, error).await;
    }
    let files =
        match resolve_dir(&jobs.input_root, &job.input_dir).and_then(|dir| Ok((dir, pattern(&job.file_pattern)?))) {
            Ok((dir, pattern)) => {
                let listed = tokio::task::spawn_blocking(move || matching_files(&dir, &pattern)).await;
                listed.map_err(|err| err.to_string()).and_then(|files| files)
            }
            Err(err) => Err(err.to_string()),
        };
    let files = match files {
        Ok(files) => files,
        Err(err) => return end(JobStatus::Failed, Some(err)).await,
    };
    let now = Utc::now();
    let started =
        storage.call(move |db| db.set_job_status(id, &[JobStatus::Queued], JobStatus::Running, None, now)).await;
    if !matches!(started, Ok(true)) {
        return;
    }
    tracing::info!(job = %id, name = job.name, files = files.len(), "batch job started");
    let root = jobs.input_root.canonicalize().unwrap_or_else(|_| jobs.input_root.clone());
    let mut progress = JobProgress { total: Some(files.len() as u64), ..JobProgress::default() };
    let saved = progress;
    if storage.call(move |db| db.set_job_progress(id, &saved, None)).await.is_err() {
        return end(JobStatus::Failed, Some("storage failed".into())).await;
    }
    for file in files {
        if token.is_cancelled() {
            // The service's token is cancelled only at shutdown; a user's cancel is the job's.
            let error = stop.is_cancelled().then(|| "the daemon stopped while the job ran".to_owned());
            tracing::info!(job = %id, processed = progress.processed, reason = ?error, "batch job cancelled");
            return end(JobStatus::Cancelled, error).await;
        }
        let part = file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().into_owned();
        let mut error = None;
        match inspect_file(&jobs.inspector, &job.station_id, &file, &part).await {
            Ok(Decision::Pass) => progress.passed += 1,
            Ok(Decision::Fail) => progress.failed += 1,
            Ok(Decision::Uncertain) => progress.uncertain += 1,
            Err(err) => {
                progress.errors += 1;
                error = Some(format!("{part}: {err}"));
            }
        }
        progress.processed += 1;
        let saved = progress;
        if let Err(err) = storage.call(move |db| db.set_job_progress(id, &saved, error.as_deref())).await {
            return end(JobStatus::Failed, Some(format!("progress could not be stored: {err}"))).await;
        }
    }
    tracing::info!(job = %id, processed = progress.processed, errors = progress.errors, "batch job completed");
    end(JobStatus::Completed, None).await;
}

async fn inspect_file(inspector: &Inspector, station_id: &str, file: &Path, part: &str) -> Result<Decision, String> {
    let size = tokio::fs::metadata(file).await.map_err(|err| err.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("larger than {} MiB", MAX_FILE_BYTES / (1024 * 1024)));
    }
    let bytes = tokio::fs::read(file).await.map_err(|err| err.to_string())?;
    let format = image::guess_format(&bytes)
        .ok()
        .and_then(crate::cycle::accepted_format)
        .ok_or_else(|| "not a jpeg, png, bmp, tiff or webp image".to_owned())?;
    let request = InspectRequest {
        station_id: station_id.to_owned(),
        part_id: Some(part.to_owned()),
        image: CycleImage::Upload { bytes: bytes.into(), format },
        triggered_at: Instant::now(),
        expected: None,
    };
    inspector.inspect(request).await.map(|record| record.decision).map_err(|err| err.to_string())
}

/// Runs fit job `job` to its end: how it ended and why, for the caller to record.
async fn run_fit(
    jobs: &Jobs,
    job: &JobRecord,
    token: &CancellationToken,
    stop: &CancellationToken,
) -> (JobStatus, Option<String>) {
    let failed = |why: String| (JobStatus::Failed, Some(why));
    let id = job.id;
    let storage = jobs.inspector.storage.clone();
    let params: FitParams = match job.params.as_deref().map(serde_json::from_str) {
        Some(Ok(params)) => params,
        _ => return failed("the fit's parameters are unreadable".into()),
    };
    let Some(backbone_dir) = jobs.fits.backbone_dir.clone() else {
        return failed("no [anomaly] backbone_dir".into());
    };
    // The images.
    let folder = jobs.fit_folder(id);
    let sets = match &params.source {
        FitSource::Upload { .. } => {
            let folder = folder.clone();
            let listed = tokio::task::spawn_blocking(move || FIT_SETS.map(|set| sorted_files(&folder.join(set))));
            match listed.await {
                Ok(sets) => sets,
                Err(err) => return failed(err.to_string()),
            }
        }
        FitSource::Station { station_id, last_passed, last_failed } => {
            let (station, passed, failed_n) = (station_id.clone(), *last_passed, *last_failed);
            let listed = storage
                .call(move |db| {
                    Ok((
                        db.recent_images(&station, Decision::Pass, passed)?,
                        db.recent_images(&station, Decision::Fail, failed_n)?,
                    ))
                })
                .await;
            match listed {
                Ok((normal, anomalous)) => [normal, Vec::new(), anomalous],
                Err(err) => return failed(err.to_string()),
            }
        }
    };
    let [normal, heldout_normal, heldout_anomalous] = sets;
    let now = Utc::now();
    let started =
        storage.call(move |db| db.set_job_status(id, &[JobStatus::Queued], JobStatus::Running, None, now)).await;
    if !matches!(started, Ok(true)) {
        return (JobStatus::Cancelled, None);
    }
    tracing::info!(job = %id, model = params.model_name, normal = normal.len(), "PatchCore fit started");
    let request = crate::patchcore::FitRequest {
        name: params.model_name.clone(),
        version: params.model_version.clone(),
        normal,
        heldout_normal,
        heldout_anomalous,
        coreset_ratio: params.coreset_ratio,
    };
    // The fit blocks; it reports progress through a watch and stops when told.
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel((crate::patchcore::Stage::Features, 0, 0));
    let out = folder.join("model");
    let (cancel, started_at) = (token.clone(), Instant::now());
    let fitting = tokio::task::spawn_blocking(move || {
        let backbone = crate::patchcore::Backbone::load(&backbone_dir)?;
        crate::patchcore::fit(&backbone, &request, &out, &mut |stage, done, all| {
            // The coreset asks again with the same figures: store a change only.
            progress_tx.send_if_modified(|last| {
                let changed = *last != (stage, done, all);
                *last = (stage, done, all);
                changed
            });
            !cancel.is_cancelled()
        })
    });
    let save_progress = |(stage, done, all): (crate::patchcore::Stage, usize, usize)| {
        let storage = storage.clone();
        async move {
            let saved = storage.call(move |db| db.set_job_stage(id, stage.as_str(), done as u64, all as u64)).await;
            if let Err(err) = saved {
                tracing::warn!(job = %id, cause = %err, "a fit's progress could not be stored");
            }
        }
    };
    tokio::pin!(fitting);
    let outcome = loop {
        tokio::select! {
            outcome = &mut fitting => break outcome,
            Ok(()) = progress_rx.changed() => {
                let progress = *progress_rx.borrow_and_update();
                save_progress(progress).await;
            }
        }
    };
    // The fit may end before its last report was stored.
    let last = *progress_rx.borrow();
    save_progress(last).await;
    let report = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(crate::patchcore::FitError::Cancelled)) => {
            let error = stop.is_cancelled().then(|| "the daemon stopped while the job ran".to_owned());
            return (JobStatus::Cancelled, error);
        }
        Ok(Err(err)) => return failed(err.to_string()),
        Err(err) => return failed(format!("the fit stopped: {err}")),
    };
    let by = job.created_by.clone().unwrap_or_default();
    let model = match jobs.fits.registry.add_folder(folder.join("model"), by).await {
        Ok(model) => model,
        Err(err) => return failed(format!("the fitted model could not be registered: {err}")),
    };
    let result = serde_json::json!({
        "model_id": model.id.to_string(),
        "model_name": model.name,
        "model_version": model.version,
        "image_auroc": report.image_auroc,
        "pass_threshold": report.pass_threshold,
        "fail_threshold": report.fail_threshold,
        "heldout_normal": report.heldout_normal,
        "heldout_anomalous": report.heldout_anomalous,
        "heldout_normal_passed": report.normal_passed,
        "heldout_anomalous_failed": report.anomalous_failed,
        "bank_images": report.bank_images,
        "calibration_images": report.calibration_images,
        "candidate_patches": report.candidate_patches,
        "bank_patches": report.bank_patches,
        "feature_dim": report.feature_dim,
        "fit_seconds": (started_at.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
    .to_string();
    if let Err(err) = storage.call(move |db| db.set_job_result(id, &result)).await {
        return failed(format!("the result could not be stored: {err}"));
    }
    tracing::info!(job = %id, model = %model.id, auroc = ?report.image_auroc, "PatchCore fit completed");
    (JobStatus::Completed, None)
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}
