//! The `jobs` service: batch jobs (the inspection seed's "batch jobs over a folder with a
//! glob"). A job inspects every image under `input_root/<input_dir>` whose path matches
//! its pattern, one at a time, as ordinary uploaded inspections of its station (so they
//! are stored, counted and published, but drive no stack light), and records its progress
//! after each file. Started jobs run one after another; a cancel stops a job after the
//! file it is on. A job that was running when the daemon stopped is marked failed at the
//! next start.

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
use crate::storage::{JobProgress, JobRecord, JobStatus, StorageError};
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
}

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
        };
        let stored = job.clone();
        self.inspector.storage.call(move |db| db.insert_job(&stored)).await?;
        Ok(job)
    }

    pub async fn list(&self, limit: u32) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.inspector.storage.call(move |db| db.jobs(limit)).await?)
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

pub fn spawn(supervisor: &mut Supervisor, inspector: Inspector, input_root: PathBuf) -> Jobs {
    let (commands_tx, commands) = mpsc::channel(8);
    let jobs = Jobs { inspector, commands: commands_tx, input_root };
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
