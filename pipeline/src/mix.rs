//! `dapt mix plan|run` as jobs: a mix or pipeline file planned (counted) or materialised into an
//! output whose identity is every stage's mix settings and the bytes of its tokenizer.
//!
//! Counting (tokenising every document of every component) is the expensive part, so it also runs as
//! a job array ([`count_mix`], `dapt mix plan --shard i/n --work URL`): each job counts the documents
//! whose id hashes to it and publishes its part of each component's inventory in the work directory:
//! - `_mix_count.json`: the pipeline's identity and the number of jobs (other settings are refused);
//! - `inventory/KEY/I-of-N.parquet`: a job's part of the component with inventory key `KEY` (ids
//!   and token counts as columns, the attribution's counts as JSON in the file's metadata);
//! - `_done/plan-I-of-N.json`: written last by each job (`_failed/plan-I-of-N.json` with the error
//!   when it fails, removed by its next success); `dapt status WORK` lists the jobs ([`count_status`]).
//!
//! `dapt mix plan|run --work URL` then plans and materialises from the parts (every job must be
//! done): the same plan and the same output bytes as counting in one process.
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use dapt_core::Location;
use dapt_mixer::run::{Inventory, InventoryPart, TokenizerCache};
use dapt_mixer::{InventoryCache, MixReport, Pipeline};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::Result;

/// The identity of a pipeline's output: every stage's mix settings and its tokenizer's sha256.
pub fn pipeline_identity(pipeline: &Pipeline) -> Result<String> {
    let stages = pipeline
        .stages
        .iter()
        .map(|(name, mix)| {
            Ok((
                name.clone(),
                mix,
                crate::identity::file_identity(&mix.tokenizer)?,
                crate::identity::sources_data(&mix.sources)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    crate::identity::identity("the mix pipeline", &stages)
}

/// A mix or pipeline file whose queries run on the Ballista cluster `cluster` (`df://HOST:PORT`), or
/// here.
pub(crate) fn load(file: &Path, cluster: Option<&str>) -> Result<Pipeline> {
    let mut pipeline = Pipeline::load(file)?;
    for (_, mix) in &mut pipeline.stages {
        mix.sources.cluster = cluster.map(str::to_string);
    }
    Ok(pipeline)
}

/// Counts each stage's components (nothing is written), or takes the counts of a `count_mix` job
/// array from `work`; the component queries run on `cluster` (`df://HOST:PORT`) when given.
pub fn plan_mix(
    file: &Path,
    cluster: Option<&str>,
    work: Option<&str>,
) -> Result<Vec<(String, dapt_mixer::run::StagePlan)>> {
    let pipeline = load(file, cluster)?;
    let runtime = crate::runtime()?;
    let mut tokenizers = TokenizerCache::default();
    let mut inventories = match work {
        Some(work) => {
            let identity = pipeline_identity(&pipeline)?;
            runtime.block_on(counted_inventories(
                &pipeline,
                identity,
                work,
                &mut tokenizers,
            ))?
        }
        None => InventoryCache::default(),
    };
    Ok(runtime.block_on(dapt_mixer::run::plan_pipeline_cached(
        &pipeline,
        &mut inventories,
        &mut tokenizers,
    ))?)
}

/// The settings a count array's work directory is bound to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CountWork {
    /// [`pipeline_identity`] of the mix or pipeline file.
    pipeline: String,
    /// Jobs in the array.
    jobs: usize,
}

/// What one count job did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountRecord {
    /// The job.
    pub index: usize,
    /// Jobs in the array.
    pub count: usize,
    /// Components counted (shared components once).
    pub components: usize,
    /// Documents of this job's share.
    pub documents: u64,
    /// Their tokens.
    pub tokens: u64,
    /// The job was already done: nothing was counted again.
    #[serde(skip)]
    pub reused: bool,
}

/// The settings file of a count array's work directory.
const COUNT_SETTINGS: &str = "_mix_count.json";

/// Where one job of a count array stands (step `plan`).
pub type CountJobStatus = crate::work::JobStatus<CountRecord>;

/// Every job of the count array whose work directory is `location`: `None` when it holds none.
pub async fn count_status(location: &Location) -> Result<Option<(String, Vec<CountJobStatus>)>> {
    let Some(bytes) = location.read_optional(COUNT_SETTINGS).await? else {
        return Ok(None);
    };
    let settings: CountWork = serde_json::from_slice(&bytes)
        .map_err(json_error(location.url_of(&location.child(COUNT_SETTINGS))))?;
    let mut jobs = Vec::new();
    for index in 0..settings.jobs {
        jobs.push(crate::work::job_status(location, STEP, index, settings.jobs).await?);
    }
    Ok(Some((settings.pipeline, jobs)))
}

/// The step name of count jobs in their records (`_done/plan-I-of-N.json`).
const STEP: &str = "plan";

fn part_name(key: &str, index: usize, count: usize) -> String {
    format!("inventory/{key}/{index:05}-of-{count:05}.parquet")
}

/// Key of the attribution counts (JSON) in a part's Parquet metadata.
const ATTRIBUTION_KEY: &str = "dapt.attribution";

fn part_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("tokens", DataType::UInt64, false),
    ]))
}

/// A count job's part as Parquet: ids and token counts as columns (zstd), the attribution's counts
/// as JSON in the file's metadata.
fn encode_part(part: &InventoryPart, what: &str) -> Result<bytes::Bytes> {
    use arrow::array::{ArrayRef, StringArray, UInt64Array};
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            part.ids
                .iter()
                .map(|id| Some(id.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(part.tokens.iter().copied().collect::<UInt64Array>()),
    ];
    let batch = arrow::array::RecordBatch::try_new(part_schema(), columns).map_err(|source| {
        dapt_core::Error::Arrow {
            what: what.to_string(),
            source,
        }
    })?;
    let attribution =
        serde_json::to_string(&part.attribution).map_err(json_error(what.to_string()))?;
    let metadata = std::collections::BTreeMap::from([(ATTRIBUTION_KEY.to_string(), attribution)]);
    Ok(dapt_core::parquet_io::encode(
        part_schema(),
        &[batch],
        &metadata,
        what,
    )?)
}

/// A part written by [`encode_part`].
fn decode_part(bytes: bytes::Bytes, what: &str) -> Result<InventoryPart> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt64Type;
    let (batches, metadata) = dapt_core::parquet_io::decode(bytes, what)?;
    let bad = |reason: &str| Error::Data {
        what: what.to_string(),
        reason: reason.to_string(),
    };
    let attribution = metadata
        .get(ATTRIBUTION_KEY)
        .ok_or_else(|| bad("has no attribution counts: not a count part of this version"))?;
    let mut part = InventoryPart {
        attribution: serde_json::from_str(attribution).map_err(json_error(what.to_string()))?,
        ..InventoryPart::default()
    };
    for batch in batches {
        if batch.schema() != part_schema() {
            return Err(bad(
                "is not a count part of this version (columns id, tokens)",
            ));
        }
        let ids = batch.column(0).as_string::<i32>();
        part.ids
            .extend(ids.iter().map(|id| id.unwrap_or_default().to_string()));
        part.tokens
            .extend(batch.column(1).as_primitive::<UInt64Type>().values().iter());
    }
    Ok(part)
}

pub(crate) fn json_error(what: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Json { what, source }
}

/// Binds `work` to this pipeline and job count, or refuses it if another's parts are there.
async fn bind_count_work(work: &Location, settings: &CountWork) -> Result<()> {
    let name = COUNT_SETTINGS;
    match work.read_optional(name).await? {
        Some(bytes) => {
            let found: CountWork = serde_json::from_slice(&bytes)
                .map_err(json_error(work.url_of(&work.child(name))))?;
            if &found != settings {
                return Err(Error::Data {
                    what: work.url(),
                    reason: format!(
                        "holds the counts of another mix configuration or job count ({} jobs of {}; this is {} jobs of {}); use another --work",
                        found.jobs, found.pipeline, settings.jobs, settings.pipeline
                    ),
                });
            }
        }
        None => {
            let bytes = serde_json::to_vec_pretty(settings)
                .map_err(json_error("the count settings".into()))?;
            work.write(name, bytes.into()).await?;
        }
    }
    Ok(())
}

/// One job of the count array: counts the documents whose id hashes to `job` in every component of
/// every stage (a component shared by stages once) and publishes the parts under `work`. A job that
/// is already done is not counted again.
pub fn count_mix(
    file: &Path,
    cluster: Option<&str>,
    job: dapt_ingest::Job,
    work: &str,
) -> Result<CountRecord> {
    let pipeline = load(file, cluster)?;
    let settings = CountWork {
        pipeline: pipeline_identity(&pipeline)?,
        jobs: job.count,
    };
    let work = Location::parse(work)?;
    crate::runtime()?.block_on(async {
        bind_count_work(&work, &settings).await?;
        let (mut record, reused) = crate::work::once(
            &work,
            STEP,
            job.index,
            job.count,
            count_parts(&pipeline, job, &work),
        )
        .await?;
        record.reused = reused;
        Ok(record)
    })
}

/// Counts this job's share of every component and publishes the parts (not the completion record).
async fn count_parts(
    pipeline: &Pipeline,
    job: dapt_ingest::Job,
    work: &Location,
) -> Result<CountRecord> {
    let mut tokenizers = TokenizerCache::default();
    let mut counted = HashSet::new();
    let mut record = CountRecord {
        index: job.index,
        count: job.count,
        components: 0,
        documents: 0,
        tokens: 0,
        reused: false,
    };
    for (_, mix) in &pipeline.stages {
        let tokenizer = tokenizers.get(mix)?;
        let session = dapt_mixer::run::session(mix).await?;
        for component in &mix.components {
            let key = InventoryCache::key(mix, component, tokenizer.sha256());
            if !counted.insert(key.clone()) {
                continue;
            }
            // The job's rows only, filtered in SQL before the text is read where it can be.
            let mut restricted = component.clone();
            restricted.sql = job.restrict(&component.sql, "id");
            let part = dapt_mixer::run::inventory_part(
                &session,
                &restricted,
                &tokenizer,
                mix.target_language.as_deref(),
                &|id| job.takes(id),
            )
            .await?;
            record.components += 1;
            record.documents += part.ids.len() as u64;
            record.tokens += part.tokens.iter().sum::<u64>();
            tracing::info!(
                "component {}: {} documents of job {}/{}",
                component.name,
                part.ids.len(),
                job.index,
                job.count
            );
            let name = part_name(&key, job.index, job.count);
            let bytes = encode_part(&part, &work.url_of(&work.child(&name)))?;
            work.write(&name, bytes).await?;
        }
    }
    Ok(record)
}

/// Every component inventory of `pipeline` (whose [`pipeline_identity`] is `identity`) from a
/// finished count array in `work`.
pub(crate) async fn counted_inventories(
    pipeline: &Pipeline,
    identity: String,
    work: &str,
    tokenizers: &mut TokenizerCache,
) -> Result<InventoryCache> {
    let work = Location::parse(work)?;
    let name = COUNT_SETTINGS;
    let Some(bytes) = work.read_optional(name).await? else {
        return Err(Error::Data {
            what: work.url(),
            reason: "holds no counts: run `dapt mix plan FILE --shard i/n --work URL` first".into(),
        });
    };
    let found: CountWork =
        serde_json::from_slice(&bytes).map_err(json_error(work.url_of(&work.child(name))))?;
    let settings = CountWork {
        pipeline: identity,
        jobs: found.jobs,
    };
    bind_count_work(&work, &settings).await?;
    let mut missing = Vec::new();
    for index in 0..found.jobs {
        if work
            .read_optional(&crate::work::done_name(STEP, index, found.jobs))
            .await?
            .is_none()
        {
            missing.push(index);
        }
    }
    if !missing.is_empty() {
        return Err(Error::Data {
            what: work.url(),
            reason: format!(
                "count jobs {missing:?} of {} are not done; run them (--shard I/{})",
                found.jobs, found.jobs
            ),
        });
    }
    let mut cache = InventoryCache::default();
    let mut loaded = HashSet::new();
    for (_, mix) in &pipeline.stages {
        let sha256 = tokenizers.sha256(mix)?;
        for component in &mix.components {
            let key = InventoryCache::key(mix, component, &sha256);
            if !loaded.insert(key.clone()) {
                continue;
            }
            let mut parts = Vec::new();
            for index in 0..found.jobs {
                let part = part_name(&key, index, found.jobs);
                let bytes = work.read(&part).await?;
                parts.push(decode_part(bytes, &work.url_of(&work.child(&part)))?);
            }
            cache.insert(key, Arc::new(Inventory::from_parts(parts)));
        }
    }
    Ok(cache)
}

/// Materialises every stage of a mix or pipeline file into `out`; `overwrite` replaces outputs of
/// other configurations there instead of refusing them; the component queries run on `cluster`
/// (`df://HOST:PORT`) when given (the output is the same).
///
/// With `work`, the inventories come from a finished count array there ([`count_mix`]) instead of
/// being counted here; the output is the same.
pub fn run_mix(
    file: &Path,
    out: &str,
    overwrite: bool,
    cluster: Option<&str>,
    work: Option<&str>,
) -> Result<Vec<MixReport>> {
    let pipeline = load(file, cluster)?;
    let hash = pipeline_identity(&pipeline)?;
    let runtime = crate::runtime()?;
    let inventories = match work {
        Some(work) => runtime.block_on(counted_inventories(
            &pipeline,
            hash.clone(),
            work,
            &mut TokenizerCache::default(),
        ))?,
        None => InventoryCache::default(),
    };
    Ok(runtime.block_on(dapt_mixer::run_pipeline_with(
        &pipeline,
        &Location::parse(out)?,
        &hash,
        overwrite,
        inventories,
    ))?)
}
