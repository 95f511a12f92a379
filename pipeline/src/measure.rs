//! Tokenizer compression as a job (`dapt tokenizer measure`): the rows of a query streamed batch by
//! batch, grouped by a column, measured by each tokenizer, in bounded memory; or as a job array
//! (`--shard i/n --work URL`): each job measures the rows whose text hashes to it and publishes its
//! totals (`measure/I-of-N.json`); the job that finds every part present sums them into
//! `measure.json`. Totals are integers, so the array's table equals one process's exactly.
use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use dapt_core::Location;
use dapt_packer::{Compression, EncoderChoice, Measurer, TokenizerFile};
use dapt_sql::{SourcesOptions, SqlSession};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct MeasureSettings {
    /// Read-only query returning a `text` column (and the group column).
    pub query: String,
    /// Tables, tokenizers, storage (and the cluster the query runs on).
    pub sources: SourcesOptions,
    /// Column to group by; every row in one group `all` without it.
    pub group_by: Option<String>,
    /// Tokenizers by the names the table shows.
    pub tokenizers: Vec<(String, PathBuf)>,
    /// Encoder backend (the same ids either way).
    pub encoder: EncoderChoice,
    /// This job of an array; [`dapt_ingest::Job::ALL`] measures every row.
    pub shard: dapt_ingest::Job,
    /// Work directory of an array (needed with more than one job).
    pub work: Option<String>,
}

/// Totals per group, then per tokenizer in the order given.
pub type MeasureTable = BTreeMap<String, Vec<(String, Compression)>>;

/// One job's published totals.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MeasurePart {
    /// The identity of the measurement (query, group column, tokenizers' bytes, job count).
    identity: String,
    /// The job.
    index: usize,
    /// Jobs in the array.
    count: usize,
    /// Totals (ratios not computed).
    groups: MeasureTable,
}

/// What a measure job ends with.
#[derive(Clone, Debug)]
pub enum MeasureOutcome {
    /// Every row measured: the table (ratios computed).
    Complete(MeasureTable),
    /// This job's part is published; these jobs' parts are not there yet.
    Waiting {
        /// Jobs not finished, by index.
        missing: Vec<usize>,
    },
}

/// What one job of a measure array recorded when it finished.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeasureRecord {
    /// The job.
    pub index: usize,
    /// Jobs in the array.
    pub count: usize,
    /// Groups among its rows.
    pub groups: usize,
}

/// The step name of measure jobs in their records.
const STEP: &str = "measure";

/// Where the jobs of the measure array whose work directory is `location` stand (done, failed with
/// its error, not done): `None` when it holds no measure job's record. The job count comes from
/// the records' names.
pub async fn measure_status(
    location: &Location,
) -> Result<Option<Vec<crate::work::JobStatus<MeasureRecord>>>> {
    let Some(count) = crate::work::recorded_count(location, STEP).await? else {
        return Ok(None);
    };
    let mut jobs = Vec::new();
    for index in 0..count {
        jobs.push(crate::work::job_status(location, STEP, index, count).await?);
    }
    Ok(Some(jobs))
}

fn part_name(index: usize, count: usize) -> String {
    format!("measure/{index:05}-of-{count:05}.json")
}

/// The totals of the rows of `settings.query` this job takes.
async fn totals(
    settings: &MeasureSettings,
    tokenizers: &[(String, TokenizerFile)],
) -> Result<MeasureTable> {
    let measurers = tokenizers
        .iter()
        .map(|(_, tokenizer)| Measurer::new(tokenizer))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let session = SqlSession::over_sources(&settings.sources, None).await?;
    let mut stream = session
        .query(&settings.shard.restrict(&settings.query, "text"))
        .await?;
    let mut table = MeasureTable::new();
    let column =
        |batch: &arrow::array::RecordBatch, name: &str| -> Result<arrow::array::ArrayRef> {
            let array = batch.column_by_name(name).ok_or_else(|| Error::Data {
                what: format!("the query {:?}", settings.query),
                reason: format!("returns no column {name:?}"),
            })?;
            arrow::compute::cast(array, &DataType::Utf8).map_err(|e| Error::Data {
                what: format!("column {name:?}"),
                reason: e.to_string(),
            })
        };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|source| dapt_sql::Error::Query {
            query: settings.query.clone(),
            source,
        })?;
        let text = column(&batch, "text")?;
        let text = text.as_string::<i32>();
        let group = match &settings.group_by {
            Some(name) => Some(column(&batch, name)?),
            None => None,
        };
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            if !text.is_valid(row) || !settings.shard.takes(text.value(row)) {
                continue;
            }
            // Rows without a group are left out, as rows without text are.
            let name = match &group {
                Some(group) => {
                    let group = group.as_string::<i32>();
                    if !group.is_valid(row) {
                        continue;
                    }
                    group.value(row).to_string()
                }
                None => "all".to_string(),
            };
            groups
                .entry(name)
                .or_default()
                .push(text.value(row).to_string());
        }
        for (name, texts) in groups {
            let entry = table.entry(name).or_insert_with(|| {
                tokenizers
                    .iter()
                    .map(|(name, _)| (name.clone(), Compression::default()))
                    .collect()
            });
            for ((_, sum), measurer) in entry.iter_mut().zip(&measurers) {
                sum.add(&measurer.totals(&texts)?);
            }
        }
    }
    Ok(table)
}

fn finished(table: MeasureTable) -> MeasureTable {
    table
        .into_iter()
        .map(|(group, sums)| {
            let sums = sums
                .into_iter()
                .map(|(name, c)| (name, c.finish()))
                .collect();
            (group, sums)
        })
        .collect()
}

/// Measures the tokenizers on the query's rows (this job's share of them); see the module docs.
pub fn measure(settings: &MeasureSettings) -> Result<MeasureOutcome> {
    let shard = settings.shard;
    let work = match (&settings.work, shard.count) {
        (Some(work), _) => Some(Location::parse_with(work, &settings.sources.storage)?),
        (None, 1) => None,
        (None, _) => {
            return Err(Error::Setting {
                key: "--work".into(),
                reason: "a job array publishes its parts in a work directory: give --work URL"
                    .into(),
            })
        }
    };
    let mut tokenizers = Vec::new();
    let mut hashed = Vec::new();
    for (name, path) in &settings.tokenizers {
        tokenizers.push((
            name.clone(),
            TokenizerFile::load_with(path, settings.encoder)?,
        ));
        hashed.push((name.clone(), crate::identity::file_identity(path)?));
    }
    let identity = crate::identity::identity(
        "the measurement",
        &(&settings.query, &settings.group_by, &hashed, shard.count),
    )?;
    let runtime = crate::runtime()?;
    let Some(work) = work else {
        let table = runtime.block_on(totals(settings, &tokenizers))?;
        return Ok(MeasureOutcome::Complete(finished(table)));
    };
    runtime.block_on(async {
        let read_part = |name: String| {
            let work = &work;
            async move {
                let Some(bytes) = work.read_optional(&name).await? else {
                    return Ok(None);
                };
                let part: MeasurePart = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                    what: work.url_of(&work.child(&name)),
                    source,
                })?;
                Ok::<_, Error>(Some(part))
            }
        };
        // A work directory holds one measurement: another's parts are refused, not mixed.
        for index in 0..shard.count {
            if let Some(part) = read_part(part_name(index, shard.count)).await? {
                if part.identity != identity {
                    return Err(Error::Data {
                        what: work.url_of(&work.child(&part_name(index, shard.count))),
                        reason: "is a part of another measurement (query, group column, tokenizers or job count); use another --work".into(),
                    });
                }
            }
        }
        // From here on the job's end is recorded (`_done/` or `_failed/measure-I-of-N.json`)
        // for `dapt status`.
        let result = async {
            let table = totals(settings, &tokenizers).await?;
            let record = MeasureRecord {
                index: shard.index,
                count: shard.count,
                groups: table.len(),
            };
            let part = MeasurePart {
                identity: identity.clone(),
                index: shard.index,
                count: shard.count,
                groups: table,
            };
            let bytes = serde_json::to_vec_pretty(&part).map_err(|source| Error::Json {
                what: "a measure part".into(),
                source,
            })?;
            work.write(&part_name(shard.index, shard.count), bytes.into())
                .await?;
            Ok(record)
        }
        .await;
        crate::work::settle(&work, STEP, shard.index, shard.count, result).await?;
        let mut sum = MeasureTable::new();
        let mut missing = Vec::new();
        for index in 0..shard.count {
            match read_part(part_name(index, shard.count)).await? {
                Some(part) if part.identity == identity => {
                    for (group, sums) in part.groups {
                        let entry = sum.entry(group).or_insert_with(|| {
                            sums.iter()
                                .map(|(name, _)| (name.clone(), Compression::default()))
                                .collect()
                        });
                        for ((_, total), (_, add)) in entry.iter_mut().zip(&sums) {
                            total.add(add);
                        }
                    }
                }
                _ => missing.push(index),
            }
        }
        if !missing.is_empty() {
            return Ok(MeasureOutcome::Waiting { missing });
        }
        let table = finished(sum);
        let bytes = serde_json::to_vec_pretty(&table).map_err(|source| Error::Json {
            what: "measure.json".into(),
            source,
        })?;
        work.write("measure.json", bytes.into()).await?;
        Ok(MeasureOutcome::Complete(table))
    })
}
