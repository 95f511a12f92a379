//! What an output directory says of the jobs that write it (`dapt status URL`): from its manifests,
//! its failure records and its writers' locks or leases, each job of an array (or the one job) is
//! done, running, interrupted, failed (with the error it recorded) or missing (never started).
//!
//! A job that fails records why in `_failed.json` (`_failed-00003-of-00008.json` for job 3 of 8)
//! beside its manifest; a later success of the same job removes the record.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::manifest::{job_numbers, lock_file_name, manifest_name_of_job, Manifest, MANIFEST_NAME};
use crate::{Location, Result};

/// The failure record of job `index` of `count` (`count == 1`: the output's only job).
pub fn failure_record_name(index: usize, count: usize) -> String {
    if count <= 1 {
        "_failed.json".to_string()
    } else {
        format!("_failed-{index:05}-of-{count:05}.json")
    }
}

/// An error with its causes, as one line (a cause already in the text is left out).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// What a failed job wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The error, with its causes.
    pub error: String,
    /// The host that ran the job.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since the Unix epoch when it failed.
    pub unix_ms: u64,
    /// Shards the job's manifest listed when it failed (a later run that published more was not
    /// this failure; no clocks are compared).
    #[serde(default)]
    pub shards: usize,
}

impl FailureRecord {
    /// A failure of this process on this host now, with `error` (and no shards).
    pub fn now(error: &str) -> Self {
        Self {
            error: error.to_string(),
            host: crate::lease::host_name(),
            pid: std::process::id(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            shards: 0,
        }
    }
}

/// Records that job `index` of `count` failed with `error` (best effort: a store that cannot take
/// the record is logged, the job's own error stays the one reported).
pub async fn record_failure(location: &Location, index: usize, count: usize, error: &str) {
    let shards = match Manifest::read_optional(location, &manifest_name_of_job(index, count)).await
    {
        Ok(manifest) => manifest.map_or(0, |m| m.shards.len()),
        Err(_) => 0,
    };
    let record = FailureRecord {
        shards,
        ..FailureRecord::now(error)
    };
    let name = failure_record_name(index, count);
    let written = match serde_json::to_vec_pretty(&record) {
        Ok(json) => location.write(&name, Bytes::from(json)).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the failure record");
            return;
        }
    };
    if let Err(e) = written {
        tracing::warn!(record = %location.url_of(&location.child(&name)), error = %e, "cannot write the failure record");
    }
}

/// Records how job `index` of `count` ended: its failure record when `result` is an error, or the
/// removal of an earlier failure's record when it succeeded.
pub async fn record_outcome<T, E: std::error::Error>(
    location: &Location,
    index: usize,
    count: usize,
    result: &std::result::Result<T, E>,
) -> Result<()> {
    match result {
        Ok(_) => clear_failure(location, index, count).await,
        Err(error) => {
            record_failure(location, index, count, &describe(error)).await;
            Ok(())
        }
    }
}

/// Removes job `index` of `count`'s failure record after it succeeded.
pub async fn clear_failure(location: &Location, index: usize, count: usize) -> Result<()> {
    location.delete(&failure_record_name(index, count)).await
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum JobState {
    /// Its manifest says complete.
    Done,
    /// A live writer holds its lock (local) or lease (object store).
    Running {
        /// Who: a process of this host, or the lease's owner.
        writer: String,
    },
    /// It failed and recorded why (no live writer, not complete, and its manifest lists what it
    /// listed at the failure: a later run that published more and was killed is `Interrupted`).
    Failed {
        /// The recorded error.
        error: String,
        /// Where it ran (`host/pid`).
        at: String,
    },
    /// It published some shards and stopped without finishing or a failure record (killed).
    Interrupted,
    /// Nothing of it is in the output.
    Missing,
}

/// One job's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job index (0 for a single-job output).
    pub index: usize,
    /// Jobs in the array (1: a single job).
    pub count: usize,
    /// Its state.
    #[serde(flatten)]
    pub state: JobState,
    /// Shards its manifest lists.
    pub shards: usize,
    /// Rows in them.
    pub rows: u64,
}

/// The status of one output directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStatus {
    /// The output's URL.
    pub url: String,
    /// What wrote it (`ingest`, `pack`, …), from any manifest.
    pub kind: Option<String>,
    /// Whether `_manifest.json` is complete (for an array: merged from every job).
    pub complete: bool,
    /// Each job, in index order.
    pub jobs: Vec<JobStatus>,
}

/// `(index, count)` of a job manifest or failure record name.
fn job_of(name: &str) -> Option<(usize, usize)> {
    job_numbers(name, "_manifest").or_else(|| job_numbers(name, "_failed"))
}

/// Whether a process holds the `flock` of local file `path` (from `/proc/locks`, without taking the
/// lock, so a writer starting now is never refused because of a status query).
fn local_lock_holder(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor) = (
        ((meta.dev() >> 8) & 0xfff) | ((meta.dev() >> 32) & !0xfff),
        (meta.dev() & 0xff) | ((meta.dev() >> 12) & !0xff),
    );
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a blocked waiter has "->" first).
        let at = fields.iter().position(|f| *f == "FLOCK")?;
        let pid = fields.get(at + 3)?;
        let file = fields.get(at + 4)?;
        (*file == wanted).then(|| format!("process {pid} of this host"))
    })
}

/// Who writes manifest `manifest_name` of `location` now, if anyone.
async fn live_writer(location: &Location, manifest_name: &str) -> Result<Option<String>> {
    match location.local_path() {
        Some(dir) => Ok(local_lock_holder(&dir.join(lock_file_name(manifest_name)))),
        None => crate::lease::live_holder(location, manifest_name).await,
    }
}

async fn job_status(
    location: &Location,
    index: usize,
    count: usize,
) -> Result<(JobStatus, Option<String>)> {
    let manifest_name = manifest_name_of_job(index, count);
    let manifest = Manifest::read_optional(location, &manifest_name).await?;
    let (shards, rows) = manifest.as_ref().map_or((0, 0), |m| {
        (m.shards.len(), m.shards.iter().map(|s| s.rows).sum())
    });
    let failure: Option<FailureRecord> = location
        .read_optional(&failure_record_name(index, count))
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let state = if manifest.as_ref().is_some_and(|m| m.complete) {
        JobState::Done
    } else if let Some(writer) = live_writer(location, &manifest_name).await? {
        JobState::Running { writer }
    } else if let Some(failure) = failure.filter(|f| shards <= f.shards) {
        JobState::Failed {
            error: failure.error,
            at: format!("{}/{}", failure.host, failure.pid),
        }
    } else if manifest.is_some() {
        JobState::Interrupted
    } else {
        JobState::Missing
    };
    Ok((
        JobStatus {
            index,
            count,
            state,
            shards,
            rows,
        },
        manifest.map(|m| m.kind),
    ))
}

/// Reads the status of output `location`. `count` is the size of the job array when known (jobs
/// that never started leave nothing that says how many there are); otherwise it is taken from the
/// job manifests and failure records found, and a single job is assumed when there are none.
pub async fn output_status(location: &Location, count: Option<usize>) -> Result<OutputStatus> {
    // Top-level object names (not those of subdirectories).
    let prefix = location.child("");
    let names: Vec<String> = location
        .list_objects()
        .await?
        .into_iter()
        .filter(|o| {
            o.location
                .prefix_match(&prefix)
                .is_some_and(|mut parts| parts.nth(1).is_none())
        })
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect();
    let found = names.iter().filter_map(|n| job_of(n)).map(|(_, c)| c).max();
    let merged = Manifest::read_optional(location, MANIFEST_NAME).await?;
    let count = count.or(found).unwrap_or(1);
    let mut kind = merged.as_ref().map(|m| m.kind.clone());
    let mut jobs = Vec::with_capacity(count);
    for index in 0..count {
        let (mut status, job_kind) = job_status(location, index, count).await?;
        // The merged manifest of a finished array stands for jobs whose own manifests it replaced.
        if count > 1
            && merged.as_ref().is_some_and(|m| m.complete)
            && status.state == JobState::Missing
        {
            status.state = JobState::Done;
        }
        kind = kind.or(job_kind);
        jobs.push(status);
    }
    Ok(OutputStatus {
        url: location.url(),
        kind,
        complete: merged.is_some_and(|m| m.complete),
        jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::job_manifest_name;

    #[test]
    fn job_numbers_come_from_manifest_and_failure_names() {
        assert_eq!(job_of("_manifest-00003-of-00008.json"), Some((3, 8)));
        assert_eq!(job_of("_failed-00000-of-00002.json"), Some((0, 2)));
        assert_eq!(job_of("_manifest.json"), None);
        assert_eq!(job_of("shard-1.parquet"), None);
        assert_eq!(failure_record_name(0, 1), "_failed.json");
        assert_eq!(failure_record_name(2, 3), "_failed-00002-of-00003.json");
    }

    #[tokio::test]
    async fn a_local_output_reports_done_running_failed_interrupted_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let write = |name: String, complete: bool| {
            let mut manifest = Manifest::new("ingest", "h");
            manifest.complete = complete;
            (name, serde_json::to_vec(&manifest).unwrap())
        };
        for (name, bytes) in [
            write(job_manifest_name(0, 5), true),
            write(job_manifest_name(1, 5), false),
            write(job_manifest_name(2, 5), false),
        ] {
            location.write(&name, Bytes::from(bytes)).await.unwrap();
        }
        record_failure(&location, 3, 5, "bad record at line 7").await;
        // Job 1 is held by a live writer (this test holds its lock).
        let lock = std::fs::File::create(
            dir.path()
                .join(format!(".{}.lock", job_manifest_name(1, 5))),
        )
        .unwrap();
        lock.lock().unwrap();
        let status = output_status(&location, None).await.unwrap();
        let states: Vec<&JobState> = status.jobs.iter().map(|j| &j.state).collect();
        assert!(matches!(states[0], JobState::Done), "{states:?}");
        assert!(
            matches!(states[1], JobState::Running { writer } if writer.contains(&std::process::id().to_string())),
            "{states:?}"
        );
        assert!(matches!(states[2], JobState::Interrupted), "{states:?}");
        assert!(
            matches!(states[3], JobState::Failed { error, .. } if error == "bad record at line 7"),
            "{states:?}"
        );
        assert!(matches!(states[4], JobState::Missing), "{states:?}");
        assert_eq!(status.kind.as_deref(), Some("ingest"));
        assert!(!status.complete);
        // Once the lock is gone, job 1 is interrupted; a success clears job 3's record.
        drop(lock);
        clear_failure(&location, 3, 5).await.unwrap();
        let status = output_status(&location, Some(5)).await.unwrap();
        assert!(matches!(status.jobs[1].state, JobState::Interrupted));
        assert!(matches!(status.jobs[3].state, JobState::Missing));
        // A failure, then a later run that published a shard and died: interrupted, not failed.
        record_failure(&location, 4, 5, "connection reset").await;
        let status = output_status(&location, Some(5)).await.unwrap();
        assert!(
            matches!(&status.jobs[4].state, JobState::Failed { error, .. } if error == "connection reset")
        );
        let mut manifest = Manifest::new("ingest", "h");
        manifest.shards.push(crate::ShardEntry {
            name: "a.parquet".into(),
            rows: 3,
            bytes: 10,
            sha256: "x".into(),
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        location
            .write(&job_manifest_name(4, 5), Bytes::from(bytes))
            .await
            .unwrap();
        let status = output_status(&location, Some(5)).await.unwrap();
        assert!(
            matches!(status.jobs[4].state, JobState::Interrupted),
            "{:?}",
            status.jobs[4]
        );
        assert_eq!((status.jobs[4].shards, status.jobs[4].rows), (1, 3));
    }
}
