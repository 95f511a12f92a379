//! Records of the jobs of an array that share a work directory (the sharded near dedup's steps, mix
//! counting): each job writes `_done/STEP-I-of-N.json` last, or `_failed/STEP-I-of-N.json` with its
//! error (removed by its next success); `dapt status WORK` reads them back.
use dapt_core::Location;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The completion record of job `index` of `count` of `step`.
pub(crate) fn done_name(step: &str, index: usize, count: usize) -> String {
    format!("_done/{step}-{index:05}-of-{count:05}.json")
}

/// The failure record of job `index` of `count` of `step`.
pub(crate) fn failed_name(step: &str, index: usize, count: usize) -> String {
    format!("_failed/{step}-{index:05}-of-{count:05}.json")
}

fn parse<T: DeserializeOwned>(location: &Location, name: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: location.url_of(&location.child(name)),
        source,
    })
}

/// The completion record of a job, if it finished.
pub(crate) async fn read_done<R: DeserializeOwned>(
    location: &Location,
    step: &str,
    index: usize,
    count: usize,
) -> Result<Option<R>> {
    let name = done_name(step, index, count);
    match location.read_optional(&name).await? {
        None => Ok(None),
        Some(bytes) => parse(location, &name, &bytes).map(Some),
    }
}

/// Records how a job ended: its failure (for `dapt status`), or its completion record (written
/// last) and the removal of an earlier failure's record.
pub(crate) async fn settle<R: Serialize>(
    location: &Location,
    step: &str,
    index: usize,
    count: usize,
    result: Result<R>,
) -> Result<R> {
    let failed = failed_name(step, index, count);
    match &result {
        Ok(record) => {
            location.delete(&failed).await?;
            let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
                what: "the completion record".into(),
                source,
            })?;
            location
                .write(&done_name(step, index, count), bytes.into())
                .await?;
        }
        Err(error) => {
            let record = dapt_core::status::FailureRecord::now(&dapt_core::status::describe(error));
            if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
                if let Err(e) = location.write(&failed, bytes.into()).await {
                    tracing::warn!(error = %e, "cannot write the failure record");
                }
            }
        }
    }
    result
}

/// Runs job `index` of `count` of `step` unless its completion record is there: the record and
/// whether it was already done; otherwise `job`'s result, settled (see [`settle`]). `job` is not
/// started for a finished job.
pub(crate) async fn once<R, F>(
    location: &Location,
    step: &str,
    index: usize,
    count: usize,
    job: F,
) -> Result<(R, bool)>
where
    R: Serialize + DeserializeOwned,
    F: std::future::Future<Output = Result<R>>,
{
    if let Some(record) = read_done::<R>(location, step, index, count).await? {
        return Ok((record, true));
    }
    let record = settle(location, step, index, count, job.await).await?;
    Ok((record, false))
}

/// The job count of the array of `step` in `location`, from the names of its completion and failure
/// records (the largest count named; `None` when there are none). Lists only the record folders.
pub(crate) async fn recorded_count(location: &Location, step: &str) -> Result<Option<usize>> {
    let mut count: Option<usize> = None;
    for folder in ["_done", "_failed"] {
        let records = location.with_prefix(location.child(folder));
        for object in records.list_objects().await? {
            let name = object.location.filename().unwrap_or_default();
            if let Some((_, n)) = dapt_core::manifest::job_numbers(name, step) {
                count = Some(count.map_or(n, |c| c.max(n)));
            }
        }
    }
    Ok(count)
}

/// Where one job of an array stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStatus<R> {
    /// The step the job belongs to (`signatures`, `links`, `clusters`, `plan`).
    pub step: String,
    /// The job's index.
    pub index: usize,
    /// Jobs of the step.
    pub count: usize,
    /// `done`, `failed` (its error below) or `not done` (never started, or still running).
    pub state: String,
    /// The error a failed job recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a finished job recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<R>,
}

/// Where job `index` of `count` of `step` stands, from its records.
pub(crate) async fn job_status<R: DeserializeOwned>(
    location: &Location,
    step: &str,
    index: usize,
    count: usize,
) -> Result<JobStatus<R>> {
    let record: Option<R> = read_done(location, step, index, count).await?;
    let failed = failed_name(step, index, count);
    let failure = match location.read_optional(&failed).await? {
        None => None,
        Some(bytes) => Some(parse::<dapt_core::status::FailureRecord>(
            location, &failed, &bytes,
        )?),
    };
    let state = match (&record, &failure) {
        (Some(_), _) => "done",
        (None, Some(_)) => "failed",
        (None, None) => "not done",
    };
    Ok(JobStatus {
        step: step.into(),
        index,
        count,
        state: state.into(),
        error: failure.filter(|_| record.is_none()).map(|f| f.error),
        record,
    })
}
