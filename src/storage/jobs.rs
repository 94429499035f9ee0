//! Batch jobs: a folder's images inspected one by one, with their progress. The `jobs`
//! service runs them; this is their record.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Db, StorageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Inspects a folder's images.
    Batch,
    /// Fits a PatchCore anomaly model.
    Fit,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Batch => "batch",
            JobKind::Fit => "fit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Created, not started.
    Pending,
    /// Started, waiting for the job before it.
    Queued,
    Running,
    Completed,
    Cancelled,
    /// Could not run (the folder is gone), or the daemon stopped while it ran.
    Failed,
}

impl JobStatus {
    const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Cancelled,
        JobStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Cancelled | JobStatus::Failed)
    }
}

/// Counts of a job's files so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobProgress {
    pub total: Option<u64>,
    pub processed: u64,
    pub passed: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Files that could not be inspected (unreadable, not an image).
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: JobKind,
    pub name: String,
    pub input_dir: String,
    pub file_pattern: String,
    pub station_id: String,
    pub status: JobStatus,
    pub progress: JobProgress,
    pub last_error: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What a fit was asked to do (JSON, the jobs service's).
    pub params: Option<String>,
    /// What a finished fit measured (JSON, the jobs service's).
    pub result: Option<String>,
    /// Where a running fit is.
    pub stage: Option<String>,
}

const COLUMNS: &str = "id, name, input_dir, file_pattern, station_id, status, total, processed, passed, failed, \
                       uncertain, errors, last_error, created_by, created_at_ms, started_at_ms, finished_at_ms, kind, \
                       params, result, stage";

fn read_job(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: String = row.get(0)?;
    let status: String = row.get(5)?;
    let count = |i: usize| row.get::<_, i64>(i).map(|v| v.max(0) as u64);
    let at = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
    Ok(JobRecord {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        name: row.get(1)?,
        input_dir: row.get(2)?,
        file_pattern: row.get(3)?,
        station_id: row.get(4)?,
        // The column's CHECK allows only these names.
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        progress: JobProgress {
            total: row.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
            processed: count(7)?,
            passed: count(8)?,
            failed: count(9)?,
            uncertain: count(10)?,
            errors: count(11)?,
        },
        last_error: row.get(12)?,
        created_by: row.get(13)?,
        created_at: at(row.get(14)?).unwrap_or_default(),
        started_at: at(row.get(15)?),
        finished_at: at(row.get(16)?),
        kind: if row.get::<_, String>(17)? == "fit" { JobKind::Fit } else { JobKind::Batch },
        params: row.get(18)?,
        result: row.get(19)?,
        stage: row.get(20)?,
    })
}

impl Db {
    pub fn insert_job(&mut self, job: &JobRecord) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO batch_jobs (id, name, input_dir, file_pattern, station_id, status, created_by, created_at_ms,
                 kind, params)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                job.id.to_string(),
                job.name,
                job.input_dir,
                job.file_pattern,
                job.station_id,
                job.status.as_str(),
                job.created_by,
                job.created_at.timestamp_millis(),
                job.kind.as_str(),
                job.params,
            ],
        )?;
        Ok(())
    }

    /// Newest first.
    /// The newest `limit` jobs, of `kind` and in `status` when given.
    pub fn jobs(
        &self,
        limit: u32,
        kind: Option<JobKind>,
        status: Option<JobStatus>,
    ) -> Result<Vec<JobRecord>, StorageError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM batch_jobs WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY created_at_ms DESC LIMIT {limit}"
        ))?;
        let rows = stmt.query_map(params![kind.map(JobKind::as_str), status.map(JobStatus::as_str)], read_job)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn job(&self, id: Uuid) -> Result<Option<JobRecord>, StorageError> {
        let sql = format!("SELECT {COLUMNS} FROM batch_jobs WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id.to_string()], read_job).optional()?)
    }

    /// Moves a job from one of `from` to `to`; `false` when it was in another state.
    pub fn set_job_status(
        &mut self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let Some(job) = self.job(id)? else { return Ok(false) };
        if !from.contains(&job.status) {
            return Ok(false);
        }
        let started = (to == JobStatus::Running).then_some(at.timestamp_millis());
        let finished = to.is_finished().then_some(at.timestamp_millis());
        self.conn.execute(
            "UPDATE batch_jobs SET status = ?2, last_error = COALESCE(?3, last_error),
                 started_at_ms = COALESCE(?4, started_at_ms), finished_at_ms = COALESCE(?5, finished_at_ms)
             WHERE id = ?1",
            params![id.to_string(), to.as_str(), error, started, finished],
        )?;
        Ok(true)
    }

    pub fn set_job_progress(
        &mut self,
        id: Uuid,
        progress: &JobProgress,
        last_error: Option<&str>,
    ) -> Result<(), StorageError> {
        let n = |v: u64| v as i64;
        self.conn.execute(
            "UPDATE batch_jobs SET total = ?2, processed = ?3, passed = ?4, failed = ?5, uncertain = ?6, errors = ?7,
                 last_error = COALESCE(?8, last_error)
             WHERE id = ?1",
            params![
                id.to_string(),
                progress.total.map(n),
                n(progress.processed),
                n(progress.passed),
                n(progress.failed),
                n(progress.uncertain),
                n(progress.errors),
                last_error,
            ],
        )?;
        Ok(())
    }

    /// A fit's stage and images done of all.
    pub fn set_job_stage(&mut self, id: Uuid, stage: &str, processed: u64, total: u64) -> Result<(), StorageError> {
        self.conn.execute(
            "UPDATE batch_jobs SET stage = ?2, processed = ?3, total = ?4 WHERE id = ?1",
            params![id.to_string(), stage, processed as i64, total as i64],
        )?;
        Ok(())
    }

    /// What a finished fit measured.
    pub fn set_job_result(&mut self, id: Uuid, result: &str) -> Result<(), StorageError> {
        self.conn.execute("UPDATE batch_jobs SET result = ?2 WHERE id = ?1", params![id.to_string(), result])?;
        Ok(())
    }

    /// Jobs that were queued or running when the daemon last stopped without finishing
    /// them: they fail with the reason.
    pub fn fail_interrupted_jobs(&mut self, at: DateTime<Utc>) -> Result<usize, StorageError> {
        Ok(self.conn.execute(
            "UPDATE batch_jobs SET status = 'failed', finished_at_ms = ?1,
                 last_error = 'interrupted: the daemon stopped while the job was queued or running'
             WHERE status IN ('queued', 'running')",
            [at.timestamp_millis()],
        )?)
    }
}
