//! The ingest job: expand inputs, pick this job's files, read them concurrently, and write one
//! normalised Parquet shard per input file, streamed, plus a manifest.
use std::collections::BTreeMap;
use std::sync::Arc;

use dapt_core::manifest::manifest_name_of_job;
use dapt_core::schema::{document_schema, metadata};
use dapt_core::shard_writer::ShardWriter;
use dapt_core::{hash, Location, OutputDir, ShardEntry, SkipRecord};
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::reader::DocumentReader;
use crate::settings::IngestSettings;
use crate::{Error, Format, Result};

/// One job of an array of `count` jobs over the same inputs (`--shard index/count`): the job takes
/// the files whose URL hashes to `index`, so the jobs cover the inputs exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// This job's number, below `count`.
    pub index: usize,
    /// How many jobs share the inputs.
    pub count: usize,
}

impl Job {
    /// The whole input in one job.
    pub const ALL: Job = Job { index: 0, count: 1 };

    /// Parses `i/n`, or `env`: the index the batch system set (see [`Job::from_env`]).
    pub fn parse(text: &str) -> Result<Self> {
        if text.trim() == "env" {
            return Self::from_env();
        }
        let bad = || Error::Setting {
            key: "shard".into(),
            reason: format!("{text:?} is not INDEX/COUNT with INDEX < COUNT (e.g. 0/8) or env"),
        };
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// This job's place in an array as the batch system set it: Slurm
    /// (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`), a Kubernetes
    /// Indexed Job (`JOB_COMPLETION_INDEX`), AWS Batch (`AWS_BATCH_JOB_ARRAY_INDEX`) or any launcher
    /// (`DAPT_SHARD_INDEX`); the count comes from `DAPT_SHARD_COUNT` where the system does not say
    /// it (Kubernetes, AWS Batch). Errors name the variable that is missing or malformed.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// As [`Job::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |key: &str| -> Result<Option<usize>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| Error::Setting {
                        key: key.into(),
                        reason: format!("{v:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        let count_from = |key: &str| -> Result<usize> {
            number(key)?.ok_or_else(|| Error::Setting {
                key: key.into(),
                reason: "must give the number of jobs in the array".into(),
            })
        };
        let (index, count, source) = if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| Error::Setting {
                key: "SLURM_ARRAY_TASK_ID".into(),
                reason: format!("{id} is below SLURM_ARRAY_TASK_MIN {min}"),
            })?;
            (
                index,
                count_from("SLURM_ARRAY_TASK_COUNT")?,
                "SLURM_ARRAY_TASK_ID",
            )
        } else if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            (
                index,
                count_from("DAPT_SHARD_COUNT")?,
                "JOB_COMPLETION_INDEX",
            )
        } else if let Some(index) = number("AWS_BATCH_JOB_ARRAY_INDEX")? {
            (
                index,
                count_from("DAPT_SHARD_COUNT")?,
                "AWS_BATCH_JOB_ARRAY_INDEX",
            )
        } else if let Some(index) = number("DAPT_SHARD_INDEX")? {
            (index, count_from("DAPT_SHARD_COUNT")?, "DAPT_SHARD_INDEX")
        } else {
            return Err(Error::Setting {
                key: "shard".into(),
                reason: "--shard env, but no array index is set (SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, \
                         AWS_BATCH_JOB_ARRAY_INDEX or DAPT_SHARD_INDEX)"
                    .into(),
            });
        };
        if count == 0 || index >= count {
            return Err(Error::Setting {
                key: source.into(),
                reason: format!("index {index} is not below the job count {count}"),
            });
        }
        Ok(Self { index, count })
    }

    /// Whether this job takes the item named `name` (an input URL, a file name, a key): its
    /// `xxh3` hash modulo `count` is `index`, so the jobs of an array take every item exactly once.
    pub fn takes(&self, name: &str) -> bool {
        self.count == 1 || dapt_core::hash::shard_of(name, self.count as u64) == self.index as u64
    }

    /// `query` restricted to the rows this job takes by `column` (the same split as
    /// [`Job::takes`], through SQL's `shard_of`), so that DataFusion filters before the query's
    /// costlier expressions where it can push the filter down; the query itself for one job.
    pub fn restrict(&self, query: &str, column: &str) -> String {
        let query = query.trim().trim_end_matches(';');
        if self.count == 1 {
            return query.to_string();
        }
        format!(
            "SELECT * FROM ({query}) AS dapt_job WHERE shard_of(CAST(\"{}\" AS VARCHAR), {}) = {}",
            column.replace('"', "\"\""),
            self.count,
            self.index
        )
    }
}

/// Progress reported while ingesting (from several tasks at once).
#[derive(Clone, Debug)]
pub enum Progress {
    /// The files this job will read now, and their total size in bytes.
    Planned {
        /// Files to read.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// Documents read.
    Documents(u64),
    /// A file finished.
    File {
        /// The file's URL.
        url: String,
        /// Its size.
        bytes: u64,
        /// Documents read from it.
        documents: u64,
    },
}

/// What an ingest run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestSummary {
    /// Input files this job is responsible for.
    pub files: u64,
    /// Files read in this run (the others were published by an earlier run).
    pub files_read: u64,
    /// Documents written in this run.
    pub documents: u64,
    /// Input bytes read in this run (as stored, i.e. compressed).
    pub bytes: u64,
    /// Records skipped in this run.
    pub skipped: u64,
    /// Documents in this job's output, all runs together.
    pub total_documents: u64,
    /// Whether this run completed the merged manifest of all jobs.
    pub merged: bool,
}

/// The output shard name of an input: its file stem plus a hash of its full URL.
fn shard_name(url: &str, meta: &ObjectMeta) -> String {
    let stem = meta
        .location
        .filename()
        .unwrap_or_default()
        .split('.')
        .next()
        .unwrap_or_default();
    format!("{stem}-{}.parquet", &hash::content_id("ingest", url)[..8])
}

/// Ingests this job's inputs into `out`: one Parquet shard per input file and a manifest
/// (`_manifest.json`, or a per-job manifest that is merged into `_manifest.json` by whichever job
/// finishes last). The output is bound to `config_hash` (the settings) and to the resolved inputs:
/// every input file's URL and size, so that a rerun over changed inputs (a file grown or cut, a file
/// added to or gone from a prefix) is refused instead of mixing old and new shards. Reruns skip
/// published shards.
pub async fn ingest(
    settings: &IngestSettings,
    out: Location,
    config_hash: &str,
    job: Job,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<IngestSummary> {
    let settings = Arc::new(settings.clone());
    let inputs = dapt_core::location::expand_inputs(&settings.inputs, &settings.storage).await?;
    let mut resolved: Vec<(String, u64)> = Vec::new();
    let mut files = Vec::new();
    for (location, meta) in inputs {
        let name = meta.location.filename().unwrap_or_default().to_string();
        let format = match settings.format {
            Some(format) => format,
            // Inputs named by a prefix may hold other files (READMEs, checksums): not shards.
            None => match Format::detect(&name) {
                Some(format) => format,
                None => {
                    tracing::debug!(file = %name, "not a shard, skipping");
                    continue;
                }
            },
        };
        let url = location.url_of(&meta.location);
        resolved.push((url.clone(), meta.size));
        if job.takes(&url) {
            files.push((location, meta, format, url));
        }
    }
    // Every job of an array resolves the same list, so all bind the output to one identity.
    let identity = serde_json::to_vec(&(config_hash, &resolved)).map_err(|e| Error::Setting {
        key: "ingest.inputs".into(),
        reason: format!("cannot record the resolved inputs: {e}"),
    })?;
    let config_hash: &str = &dapt_core::hash::sha256_hex(&identity);
    if files.is_empty() && job.count == 1 {
        return Err(Error::Object {
            url: settings.inputs.join(", "),
            reason: "no .jsonl, .jsonl.gz, .jsonl.zst or .parquet shards found".into(),
        });
    }
    let manifest_name = manifest_name_of_job(job.index, job.count);
    if settings.overwrite && job.count > 1 {
        return Err(Error::Setting {
            key: "ingest.overwrite".into(),
            reason: "cannot replace an output from one job of an array (the others would write into it); \
                     remove the output directory first, then run the jobs"
                .into(),
        });
    }
    let output = OutputDir::open_with(
        out.clone(),
        &manifest_name,
        "ingest",
        config_hash,
        settings.overwrite,
    )
    .await?;
    // From here on this job writes the output: how it ends is recorded beside its manifest (a
    // failure record for `dapt status`, removed by a later success). Refusals before this point
    // (other settings, another writer) leave the output alone.
    let result = write_output(&settings, &out, config_hash, job, output, files, progress).await;
    dapt_core::status::record_outcome(&out, job.index, job.count, &result).await?;
    result
}

/// A file to ingest: its store, its object, its format and its URL.
type InputFile = (Location, ObjectMeta, Format, String);

/// Writes this job's pending files into the opened output, finishes its manifest and (the last job
/// of an array) merges the job manifests.
async fn write_output(
    settings: &Arc<IngestSettings>,
    out: &Location,
    config_hash: &str,
    job: Job,
    mut output: OutputDir,
    files: Vec<InputFile>,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<IngestSummary> {
    let mut summary = IngestSummary {
        files: files.len() as u64,
        ..Default::default()
    };
    let pending: Vec<_> = files
        .into_iter()
        .filter(|(_, meta, _, url)| {
            let done = output.is_published(&shard_name(url, meta));
            if done {
                tracing::info!(%url, "already ingested, skipping");
            }
            !done
        })
        .collect();
    progress(Progress::Planned {
        files: pending.len() as u64,
        bytes: pending.iter().map(|(_, m, _, _)| m.size).sum(),
    });

    let mut tasks = JoinSet::new();
    let mut pending = pending.into_iter();
    loop {
        while tasks.len() < settings.concurrency {
            let Some((location, meta, format, url)) = pending.next() else {
                break;
            };
            let settings = Arc::clone(settings);
            let out = out.clone();
            let progress = Arc::clone(&progress);
            let config_hash = config_hash.to_string();
            tasks.spawn(async move {
                ingest_file(
                    location,
                    meta,
                    format,
                    url,
                    settings,
                    out,
                    config_hash,
                    progress,
                )
                .await
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (entry, skipped, bytes) = joined.map_err(Error::Task)??;
        summary.files_read += 1;
        summary.documents += entry.rows;
        summary.bytes += bytes;
        summary.skipped += skipped.len() as u64;
        output.record(entry, skipped).await?;
    }
    summary.total_documents = output.manifest().shards.iter().map(|s| s.rows).sum();
    let skipped_total = output.manifest().skipped.len() as u64;
    output
        .finish(serde_json::json!({
            "files": output.manifest().shards.len(),
            "documents": summary.total_documents,
            "skipped": skipped_total,
        }))
        .await?;
    if job.count > 1 {
        summary.merged = OutputDir::merge_job_manifests(out, job.count, "ingest", config_hash)
            .await?
            .is_some();
    }
    Ok(summary)
}

/// Reads one input file into its output shard; returns the shard entry, the skipped records and the
/// bytes read.
#[allow(clippy::too_many_arguments)]
async fn ingest_file(
    location: Location,
    meta: ObjectMeta,
    format: Format,
    url: String,
    settings: Arc<IngestSettings>,
    out: Location,
    config_hash: String,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<(ShardEntry, Vec<SkipRecord>, u64)> {
    let name = shard_name(&url, &meta);
    let mut kv = BTreeMap::new();
    kv.insert("dapt.input_url".to_string(), url.clone());
    kv.insert(metadata::CONFIG_HASH.to_string(), config_hash);
    let mut writer = ShardWriter::create(&out, &name, document_schema(), &kv)?;
    let mut reader =
        DocumentReader::new(location, meta.location.clone(), meta.size, format, settings);
    let mut documents = 0;
    while let Some(batch) = reader.next_batch().await? {
        documents += batch.num_rows() as u64;
        progress(Progress::Documents(batch.num_rows() as u64));
        writer.write(&batch).await?;
    }
    let entry = writer.finish().await?;
    progress(Progress::File {
        url,
        bytes: meta.size,
        documents,
    });
    Ok((entry, reader.take_skipped(), meta.size))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_restricted_query_names_the_split_and_one_job_keeps_the_query() {
        let job = Job { index: 1, count: 3 };
        assert_eq!(
            job.restrict("SELECT id, text FROM docs; ", "id"),
            "SELECT * FROM (SELECT id, text FROM docs) AS dapt_job WHERE shard_of(CAST(\"id\" AS VARCHAR), 3) = 1"
        );
        assert_eq!(Job::ALL.restrict(" SELECT 1;", "id"), "SELECT 1");
    }
    use super::*;

    #[test]
    fn jobs_cover_every_file_exactly_once() {
        let urls: Vec<String> = (0..500)
            .map(|i| format!("s3://b/c4/part-{i:05}.json.gz"))
            .collect();
        let jobs: Vec<Job> = (0..7)
            .map(|i| Job::parse(&format!("{i}/7")).unwrap())
            .collect();
        for url in &urls {
            assert_eq!(jobs.iter().filter(|j| j.takes(url)).count(), 1);
        }
        let first = urls.iter().filter(|u| jobs[0].takes(u)).count();
        assert!((50..95).contains(&first), "balanced enough: {first}");
        assert!(Job::parse("7/7").is_err());
        assert!(Job::parse("x").is_err());
        assert!(Job::ALL.takes("anything"));
    }

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn the_array_index_comes_from_the_batch_system() {
        let job = |pairs: &[(&str, &str)]| Job::from_vars(vars(pairs));
        assert_eq!(
            job(&[
                ("SLURM_ARRAY_TASK_ID", "12"),
                ("SLURM_ARRAY_TASK_MIN", "10"),
                ("SLURM_ARRAY_TASK_COUNT", "4")
            ])
            .unwrap(),
            Job { index: 2, count: 4 }
        );
        assert_eq!(
            job(&[("JOB_COMPLETION_INDEX", "7"), ("DAPT_SHARD_COUNT", "8")]).unwrap(),
            Job { index: 7, count: 8 }
        );
        assert_eq!(
            job(&[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
                ("DAPT_SHARD_COUNT", "2")
            ])
            .unwrap(),
            Job { index: 0, count: 2 }
        );
        assert_eq!(
            job(&[("DAPT_SHARD_INDEX", "1"), ("DAPT_SHARD_COUNT", "3")]).unwrap(),
            Job { index: 1, count: 3 }
        );
        for (pairs, named) in [
            (&[][..], "SLURM_ARRAY_TASK_ID"),
            (&[("JOB_COMPLETION_INDEX", "1")][..], "DAPT_SHARD_COUNT"),
            (
                &[("DAPT_SHARD_INDEX", "3"), ("DAPT_SHARD_COUNT", "3")][..],
                "DAPT_SHARD_INDEX",
            ),
            (&[("SLURM_ARRAY_TASK_ID", "x")][..], "SLURM_ARRAY_TASK_ID"),
        ] {
            let error = job(pairs).unwrap_err().to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}
