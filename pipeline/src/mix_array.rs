//! `dapt mix run` as job arrays: after the count array (`mix plan --shard`), the output's layout —
//! which document lands at which row of which shard — follows from the counts alone
//! ([`dapt_mixer::layout`]), so materialising splits into two arrays over the same work directory:
//!
//! 1. **route** (`dapt mix route FILE --work URL --shard i/n`): job `i` runs every component query
//!    restricted to the ids that hash to it, and sends each selected document (once per epoch it is
//!    taken in) to the job that writes its shard (shard `s` belongs to job `s % n`). It writes, per
//!    stage and destination job, runs sorted by output position
//!    (`route/SSS/to-JJJJJ-of-NNNNN/from-IIIII-run-RRRRR.parquet`, a run per ≈64 MB of text
//!    buffered), the n-grams of its documents per stage (`knowledge/SSS/IIIII-of-NNNNN.bin`, for the
//!    QA grounding of later stages), then `_done/route-IIIII-of-NNNNN.json` listing its runs.
//! 2. **write** (`dapt mix run FILE --out URL --work URL --shard j/n`): job `j` merges its runs
//!    (streamed, a few rows of each at a time) into its shards of every stage, with the same rows,
//!    batches and Parquet settings as one process; QA answers of later stages are checked against the
//!    earlier stages' n-grams (`grounding/SSS/JJJJJ-of-NNNNN.json`). Each job keeps its own manifest
//!    (`_manifest-JJJJJ-of-NNNNN.json`); the job that finds all of them complete writes the stage's
//!    `mix_report.json` and `_manifest.json`. Shards, manifest and report equal the one process's
//!    byte for byte.
//!
//! A stage whose QA component leaves out ungrounded answers (`min_grounding` after the first stage)
//! depends on text beyond ids and counts and is refused (run it in one process).
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use dapt_core::manifest::{job_manifest_name, Manifest, MANIFEST_NAME};
use dapt_core::shard_writer::ShardWriter;
use dapt_core::{Location, OutputDir};
use dapt_mixer::layout::{
    check_layout_applies, layout_ids, layout_report, stage_layout, GroundingRecord, RoutedDocument,
    StageLayout,
};
use dapt_mixer::report::Knowledge;
use dapt_mixer::run::{StagePlan, TokenizerCache};
use dapt_mixer::{InventoryCache, Pipeline};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::mix::{counted_inventories, json_error, load, pipeline_identity};
use crate::Result;

/// Step names in the work directory's records.
const ROUTE: &str = "route";
const WRITE: &str = "write";

/// Text a route job buffers before it writes its buffers out as sorted runs.
const RUN_BYTES: usize = 64 << 20;

/// Rows per row group of a run (what a write job holds of each run at a time).
const RUN_ROW_GROUP: usize = 1024;

/// What one route job did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteRecord {
    /// The job.
    pub index: usize,
    /// Jobs in the array.
    pub count: usize,
    /// Documents routed (a document taken in two epochs or stages counts each time).
    pub documents: u64,
    /// Bytes of text routed.
    pub bytes: u64,
    /// The runs written, below the work directory.
    pub runs: Vec<String>,
    /// The job was already done: nothing was routed again.
    #[serde(skip)]
    pub reused: bool,
}

/// What one write job did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteRecord {
    /// The job.
    pub index: usize,
    /// Jobs in the array.
    pub count: usize,
    /// Shards this job holds, over all stages.
    pub shards: u64,
    /// Their documents.
    pub documents: u64,
    /// Stages whose output this job completed (merged manifest and report).
    pub merged: Vec<String>,
    /// The job was already done: nothing was written again.
    #[serde(skip)]
    pub reused: bool,
}

fn stage_dir(stage: usize) -> String {
    format!("{stage:03}")
}

fn run_dir(stage: usize, to: usize, count: usize) -> String {
    format!("route/{}/to-{to:05}-of-{count:05}/", stage_dir(stage))
}

fn knowledge_name(stage: usize, index: usize, count: usize) -> String {
    format!(
        "knowledge/{}/{index:05}-of-{count:05}.bin",
        stage_dir(stage)
    )
}

fn grounding_name(stage: usize, index: usize, count: usize) -> String {
    format!(
        "grounding/{}/{index:05}-of-{count:05}.json",
        stage_dir(stage)
    )
}

/// A pipeline with its plans and layouts, from a finished count array.
struct Planned {
    pipeline: Pipeline,
    identity: String,
    plans: Vec<StagePlan>,
    layouts: Vec<StageLayout>,
    /// Per stage and component: the component's inventory key.
    keys: Vec<Vec<String>>,
}

async fn planned(pipeline: Pipeline, identity: String, work: &str) -> Result<Planned> {
    let started = std::time::Instant::now();
    let mut tokenizers = TokenizerCache::default();
    let mut inventories =
        counted_inventories(&pipeline, identity.clone(), work, &mut tokenizers).await?;
    tracing::debug!("counts read in {:.2} s", started.elapsed().as_secs_f64());
    let plans: Vec<StagePlan> =
        dapt_mixer::run::plan_pipeline_cached(&pipeline, &mut inventories, &mut tokenizers)
            .await?
            .into_iter()
            .map(|(_, plan)| plan)
            .collect();
    tracing::debug!("planned in {:.2} s", started.elapsed().as_secs_f64());
    let layouts = plans
        .iter()
        .zip(&pipeline.stages)
        .map(|(plan, (_, mix))| stage_layout(plan, mix))
        .collect();
    tracing::debug!("laid out in {:.2} s", started.elapsed().as_secs_f64());
    let mut keys = Vec::new();
    for (_, mix) in &pipeline.stages {
        let sha256 = tokenizers.sha256(mix)?;
        keys.push(
            mix.components
                .iter()
                .map(|c| InventoryCache::key(mix, c, &sha256))
                .collect(),
        );
    }
    Ok(Planned {
        pipeline,
        identity,
        plans,
        layouts,
        keys,
    })
}

/// The route array's records for `count` jobs, or an error naming the jobs not done.
async fn route_records(work: &Location, count: usize) -> Result<Vec<RouteRecord>> {
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for index in 0..count {
        match crate::work::read_done::<RouteRecord>(work, ROUTE, index, count).await? {
            Some(record) => records.push(record),
            None => missing.push(index),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Data {
            what: work.url(),
            reason: format!(
                "route jobs {missing:?} of {count} are not done; run them (`dapt mix route FILE --work URL --shard I/{count}`)"
            ),
        });
    }
    Ok(records)
}

/// One job of the route array (see the module docs). A job that is already done is not run again.
pub fn route_mix(
    file: &Path,
    cluster: Option<&str>,
    job: dapt_ingest::Job,
    work: &str,
) -> Result<RouteRecord> {
    let pipeline = load(file, cluster)?;
    check_layout_applies(&pipeline)?;
    let identity = pipeline_identity(&pipeline)?;
    let location = Location::parse(work)?;
    let (mut record, reused) = crate::runtime()?.block_on(crate::work::once(
        &location,
        ROUTE,
        job.index,
        job.count,
        async {
            let planned = planned(pipeline, identity, work).await?;
            route_parts(&planned, job, &location).await
        },
    ))?;
    record.reused = reused;
    Ok(record)
}

/// Where one routed copy of a document goes.
struct Want {
    stage: usize,
    sequence: u64,
    position: u64,
    component: usize,
    epoch: u64,
    tokens: u64,
}

/// Routed documents waiting to be written as runs, per (stage, destination job).
struct RunBuffers {
    buffers: HashMap<(usize, usize), Vec<RoutedDocument>>,
    bytes: usize,
    runs: Vec<String>,
    next_run: usize,
}

impl RunBuffers {
    fn push(&mut self, stage: usize, to: usize, doc: RoutedDocument) {
        self.bytes += doc.id.len()
            + doc.text.len()
            + doc.source.as_ref().map_or(0, String::len)
            + doc.answer.as_ref().map_or(0, String::len);
        self.buffers.entry((stage, to)).or_default().push(doc);
    }

    /// Writes every buffer as a run sorted by position.
    async fn flush(&mut self, work: &Location, job: dapt_ingest::Job) -> Result<()> {
        let mut keys: Vec<(usize, usize)> = self.buffers.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(mut docs) = self.buffers.remove(&key) else {
                continue;
            };
            docs.sort_by_key(|d| d.position);
            let name = format!(
                "{}from-{:05}-run-{:05}.parquet",
                run_dir(key.0, key.1, job.count),
                job.index,
                self.next_run
            );
            let bytes = encode_run(&docs, &work.url_of(&work.child(&name)))?;
            work.write(&name, bytes).await?;
            self.runs.push(name);
        }
        self.next_run += 1;
        self.bytes = 0;
        Ok(())
    }
}

fn run_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("position", DataType::UInt64, false),
        Field::new("sequence", DataType::UInt64, false),
        Field::new("component", DataType::UInt32, false),
        Field::new("epoch", DataType::UInt64, false),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("answer", DataType::Utf8, true),
    ]))
}

fn encode_run(docs: &[RoutedDocument], url: &str) -> Result<bytes::Bytes> {
    let parquet_error = |source| dapt_core::Error::Parquet {
        what: url.to_string(),
        source,
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(docs.iter().map(|d| d.position).collect::<UInt64Array>()),
        Arc::new(docs.iter().map(|d| d.sequence).collect::<UInt64Array>()),
        Arc::new(
            docs.iter()
                .map(|d| d.component as u32)
                .collect::<UInt32Array>(),
        ),
        Arc::new(docs.iter().map(|d| d.epoch).collect::<UInt64Array>()),
        Arc::new(docs.iter().map(|d| d.tokens).collect::<UInt64Array>()),
        Arc::new(
            docs.iter()
                .map(|d| Some(d.id.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            docs.iter()
                .map(|d| Some(d.text.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            docs.iter()
                .map(|d| d.source.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            docs.iter()
                .map(|d| d.answer.as_deref())
                .collect::<StringArray>(),
        ),
    ];
    let batch =
        RecordBatch::try_new(run_schema(), columns).map_err(|source| dapt_core::Error::Arrow {
            what: url.to_string(),
            source,
        })?;
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(1).map_err(parquet_error)?,
        ))
        .set_max_row_group_row_count(Some(RUN_ROW_GROUP))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(Vec::new(), run_schema(), Some(properties))
            .map_err(parquet_error)?;
    writer.write(&batch).map_err(parquet_error)?;
    Ok(writer.into_inner().map_err(parquet_error)?.into())
}

/// Routes this job's share of every stage's documents and publishes runs and n-grams (not the
/// completion record).
async fn route_parts(
    planned: &Planned,
    job: dapt_ingest::Job,
    work: &Location,
) -> Result<RouteRecord> {
    // Every copy of this job's documents in every stage, by inventory key and id.
    let mut wanted: HashMap<&str, HashMap<&str, Vec<Want>>> = HashMap::new();
    for (stage, (plan, layout)) in planned.plans.iter().zip(&planned.layouts).enumerate() {
        for (sequence, slot) in layout.slots.iter().enumerate() {
            let inventory = &plan.components[slot.component].1;
            let id = inventory.ids[slot.doc].as_str();
            if !job.takes(id) {
                continue;
            }
            wanted
                .entry(planned.keys[stage][slot.component].as_str())
                .or_default()
                .entry(id)
                .or_default()
                .push(Want {
                    stage,
                    sequence: sequence as u64,
                    position: slot.position,
                    component: slot.component,
                    epoch: slot.epoch,
                    tokens: inventory.tokens[slot.doc],
                });
        }
    }
    let mut knowledge: Vec<Knowledge> = planned
        .layouts
        .iter()
        .map(|_| Knowledge::default())
        .collect();
    let mut buffers = RunBuffers {
        buffers: HashMap::new(),
        bytes: 0,
        runs: Vec::new(),
        next_run: 0,
    };
    let mut record = RouteRecord {
        index: job.index,
        count: job.count,
        documents: 0,
        bytes: 0,
        runs: Vec::new(),
        reused: false,
    };
    let mut queried = HashSet::new();
    for (stage, (_, mix)) in planned.pipeline.stages.iter().enumerate() {
        let session = dapt_mixer::run::session(mix).await?;
        for (c, component) in mix.components.iter().enumerate() {
            let key = planned.keys[stage][c].as_str();
            if !queried.insert(key) {
                continue;
            }
            let Some(mut wants) = wanted.remove(key) else {
                continue;
            };
            let what = format!("component {}", component.name);
            let input = |e: dapt_sql::Error| Error::Data {
                what: what.clone(),
                reason: e.to_string(),
            };
            let mut stream = session
                .query(&job.restrict(&component.sql, "id"))
                .await
                .map_err(input)?;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| Error::Data {
                    what: what.clone(),
                    reason: e.to_string(),
                })?;
                let documents = dapt_mixer::run::query_documents(&batch, &component.name, |id| {
                    wants.contains_key(id)
                })?;
                for doc in documents {
                    let Some(copies) = wants.remove(doc.id.as_str()) else {
                        continue;
                    };
                    let mut stages_seen = Vec::new();
                    for want in copies {
                        if !stages_seen.contains(&want.stage) {
                            knowledge[want.stage].add(&doc.text);
                            stages_seen.push(want.stage);
                        }
                        let layout = &planned.layouts[want.stage];
                        let to = layout.shard_of(want.position) % job.count;
                        record.documents += 1;
                        record.bytes += doc.text.len() as u64;
                        buffers.push(
                            want.stage,
                            to,
                            RoutedDocument {
                                position: want.position,
                                sequence: want.sequence,
                                component: want.component,
                                epoch: want.epoch,
                                tokens: want.tokens,
                                id: doc.id.clone(),
                                text: doc.text.clone(),
                                source: doc.source.clone(),
                                answer: doc.answer.clone(),
                            },
                        );
                    }
                    if buffers.bytes >= RUN_BYTES {
                        buffers.flush(work, job).await?;
                    }
                }
            }
            if let Some(id) = wants.keys().min() {
                return Err(Error::Data {
                    what,
                    reason: format!(
                        "{} counted documents of job {}/{} are no longer in the query's rows (e.g. id {id:?}): the sources changed after counting; count again in a new work directory",
                        wants.len(),
                        job.index,
                        job.count
                    ),
                });
            }
        }
    }
    buffers.flush(work, job).await?;
    for (stage, knowledge) in knowledge.iter().enumerate() {
        let bytes: Vec<u8> = knowledge
            .hashes()
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        work.write(&knowledge_name(stage, job.index, job.count), bytes.into())
            .await?;
    }
    record.runs = buffers.runs;
    tracing::info!(
        "route {}/{}: {} documents, {} bytes of text in {} runs",
        job.index,
        job.count,
        record.documents,
        record.bytes,
        record.runs.len()
    );
    Ok(record)
}

/// A run being read, row by row.
struct Run {
    name: String,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row: usize,
}

impl Run {
    /// The current row's position, reading the next batch where the current one is used up.
    fn position(&mut self) -> Result<Option<u64>> {
        loop {
            if let Some(batch) = &self.batch {
                if self.row < batch.num_rows() {
                    return Ok(Some(
                        batch.column(0).as_primitive::<UInt64Type>().value(self.row),
                    ));
                }
            }
            match self.reader.next() {
                None => return Ok(None),
                Some(batch) => {
                    let batch = batch.map_err(|source| dapt_core::Error::Arrow {
                        what: self.name.clone(),
                        source,
                    })?;
                    if batch.schema() != run_schema() {
                        return Err(Error::Data {
                            what: self.name.clone(),
                            reason: "is not a route run of this version".into(),
                        });
                    }
                    self.batch = Some(batch);
                    self.row = 0;
                }
            }
        }
    }

    /// The current row (after [`Run::position`] found one).
    fn take(&mut self) -> Option<RoutedDocument> {
        let batch = self.batch.as_ref()?;
        let row = self.row;
        self.row += 1;
        let u64s = |i: usize| batch.column(i).as_primitive::<UInt64Type>().value(row);
        let text = |i: usize| batch.column(i).as_string::<i32>().value(row).to_string();
        let optional = |i: usize| {
            let a = batch.column(i).as_string::<i32>();
            a.is_valid(row).then(|| a.value(row).to_string())
        };
        Some(RoutedDocument {
            position: u64s(0),
            sequence: u64s(1),
            component: batch.column(2).as_primitive::<UInt32Type>().value(row) as usize,
            epoch: u64s(3),
            tokens: u64s(4),
            id: text(5),
            text: text(6),
            source: optional(7),
            answer: optional(8),
        })
    }
}

/// The runs sent to one write job for one stage, merged by position.
struct RunMerge {
    runs: Vec<Run>,
    heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
}

impl RunMerge {
    /// Opens the runs `names` of `work` (copied to `scratch` first unless `work` is local).
    async fn open(work: &Location, names: &[String], scratch: &Path) -> Result<Self> {
        let mut runs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let url = work.url_of(&work.child(name));
            let path = match work.local_path() {
                Some(root) => root.join(name),
                None => {
                    let path = scratch.join(format!("run-{i:06}.parquet"));
                    let bytes = work.read(name).await?;
                    std::fs::write(&path, &bytes).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                    path
                }
            };
            let file = std::fs::File::open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let parquet_error = |source| dapt_core::Error::Parquet {
                what: url.clone(),
                source,
            };
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(parquet_error)?
                    .with_batch_size(256)
                    .build()
                    .map_err(parquet_error)?;
            runs.push(Run {
                name: url,
                reader,
                batch: None,
                row: 0,
            });
        }
        let mut heap = BinaryHeap::new();
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(position) = run.position()? {
                heap.push(std::cmp::Reverse((position, i)));
            }
        }
        Ok(Self { runs, heap })
    }

    /// The routed document with the lowest position left.
    fn next(&mut self) -> Result<Option<RoutedDocument>> {
        let Some(std::cmp::Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let doc = self.runs[i].take();
        if let Some(position) = self.runs[i].position()? {
            self.heap.push(std::cmp::Reverse((position, i)));
        }
        Ok(doc)
    }
}

/// One job of the write array (see the module docs). A job that is already done is not run again.
pub fn write_mix(file: &Path, out: &str, job: dapt_ingest::Job, work: &str) -> Result<WriteRecord> {
    let pipeline = load(file, None)?;
    check_layout_applies(&pipeline)?;
    let identity = pipeline_identity(&pipeline)?;
    let location = Location::parse(work)?;
    let out = Location::parse(out)?;
    let (mut record, reused) = crate::runtime()?.block_on(crate::work::once(
        &location,
        WRITE,
        job.index,
        job.count,
        async {
            let routes = route_records(&location, job.count).await?;
            let planned = planned(pipeline, identity, work).await?;
            write_parts(&planned, &routes, job, &location, &out).await
        },
    ))?;
    record.reused = reused;
    Ok(record)
}

/// Adds the n-grams of stage `stage` from every route job's part.
async fn add_stage_knowledge(
    knowledge: &mut Knowledge,
    work: &Location,
    stage: usize,
    count: usize,
) -> Result<()> {
    for index in 0..count {
        let name = knowledge_name(stage, index, count);
        let bytes = work.read(&name).await?;
        if bytes.len() % 8 != 0 {
            return Err(Error::Data {
                what: work.url_of(&work.child(&name)),
                reason: "is not a list of 64-bit hashes".into(),
            });
        }
        knowledge.extend_hashes(
            bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
        );
    }
    Ok(())
}

/// Writes this job's shards of every stage, and completes each stage whose jobs are all done.
async fn write_parts(
    planned: &Planned,
    routes: &[RouteRecord],
    job: dapt_ingest::Job,
    work: &Location,
    out: &Location,
) -> Result<WriteRecord> {
    let mut record = WriteRecord {
        index: job.index,
        count: job.count,
        shards: 0,
        documents: 0,
        merged: Vec::new(),
        reused: false,
    };
    let stages = &planned.pipeline.stages;
    let single = stages.len() == 1 && stages[0].0 == "mix";
    let mut used_ids: HashSet<String> = HashSet::new();
    // The n-grams of stages `0..known_stages`.
    let mut knowledge = Knowledge::default();
    let mut known_stages = 0;
    for (stage, ((name, mix), (plan, layout))) in stages
        .iter()
        .zip(planned.plans.iter().zip(&planned.layouts))
        .enumerate()
    {
        let location = if single {
            out.clone()
        } else {
            Location::parse(&format!("{}/{name}/", out.url().trim_end_matches('/')))?
        };
        if let Some(found) = Manifest::read_optional(&location, MANIFEST_NAME).await? {
            if found.config_hash != planned.identity {
                return Err(Error::Data {
                    what: location.url(),
                    reason: "holds the output of another mix configuration; remove it or write elsewhere (an array does not overwrite)".into(),
                });
            }
        }
        // QA answers are checked against the text of earlier stages, where there is some (read
        // once per stage, when a stage first needs it).
        let has_qa = mix.components.iter().any(|c| c.qa);
        if has_qa {
            while known_stages < stage {
                add_stage_knowledge(&mut knowledge, work, known_stages, job.count).await?;
                known_stages += 1;
            }
        }
        let checks_grounding = has_qa && !knowledge.is_empty();
        let mut output = OutputDir::open_with(
            location.clone(),
            &job_manifest_name(job.index, job.count),
            "mix",
            &planned.identity,
            false,
        )
        .await?;
        let mine: Vec<usize> = (job.index..layout.shards()).step_by(job.count).collect();
        record.shards += mine.len() as u64;
        record.documents += mine
            .iter()
            .map(|&s| {
                let r = layout.shard_positions(s);
                r.end - r.start
            })
            .sum::<u64>();
        if !output.manifest().complete {
            let prefix = run_dir(stage, job.index, job.count);
            let names: Vec<String> = routes
                .iter()
                .flat_map(|r| r.runs.iter().filter(|n| n.starts_with(&prefix)).cloned())
                .collect();
            let scratch = tempfile::tempdir().map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
            let mut merge = RunMerge::open(work, &names, scratch.path()).await?;
            let metadata = dapt_mixer::run::shard_metadata(mix, name, &planned.identity);
            let mut groundings = Vec::new();
            for &shard in &mine {
                let shard_name = dapt_mixer::run::shard_name(shard);
                let publish = !output.is_published(&shard_name);
                let mut writer: Option<ShardWriter> = None;
                let mut chunk: Vec<RoutedDocument> = Vec::new();
                for position in layout.shard_positions(shard) {
                    let doc = merge.next()?.ok_or_else(|| Error::Data {
                        what: work.url(),
                        reason: format!(
                            "the routed documents of stage {name} lack position {position} (shard {shard}); rerun the route jobs in a new work directory"
                        ),
                    })?;
                    if doc.position != position {
                        return Err(Error::Data {
                            what: work.url(),
                            reason: format!(
                                "the routed documents of stage {name} have position {} where {position} was due",
                                doc.position
                            ),
                        });
                    }
                    if checks_grounding && plan.components[doc.component].0.qa {
                        let answer = doc.answer.as_deref().unwrap_or(&doc.text);
                        groundings.push(GroundingRecord::new(&doc, knowledge.grounding(answer)));
                    }
                    chunk.push(doc);
                    if layout.batch_ends_after(position) {
                        if publish {
                            let batch = dapt_mixer::layout::routed_batch(&chunk, plan)?;
                            if writer.is_none() {
                                writer = Some(ShardWriter::create(
                                    &location,
                                    &shard_name,
                                    dapt_mixer::run::mix_schema(),
                                    &metadata,
                                )?);
                            }
                            if let Some(writer) = writer.as_mut() {
                                writer.write(&batch).await?;
                            }
                        }
                        chunk.clear();
                    }
                }
                if let Some(writer) = writer {
                    output.record(writer.finish().await?, Vec::new()).await?;
                }
            }
            if let Some(extra) = merge.next()? {
                return Err(Error::Data {
                    what: work.url(),
                    reason: format!(
                        "the routed documents of stage {name} hold position {}, which is not this job's",
                        extra.position
                    ),
                });
            }
            if checks_grounding {
                let bytes = serde_json::to_vec(&groundings)
                    .map_err(json_error("the grounding records".into()))?;
                work.write(&grounding_name(stage, job.index, job.count), bytes.into())
                    .await?;
            }
            output
                .finish(serde_json::json!({ "shards": mine.len() }))
                .await?;
        }
        if complete_stage(
            planned,
            stage,
            &location,
            &used_ids,
            checks_grounding,
            work,
            job.count,
        )
        .await?
        {
            record.merged.push(name.clone());
        }
        used_ids.extend(layout_ids(plan, layout).map(str::to_string));
    }
    Ok(record)
}

/// When every write job's manifest of the stage is complete: writes `mix_report.json`, then the
/// merged `_manifest.json` (the same bytes whichever job writes them). Returns whether it did.
#[allow(clippy::too_many_arguments)]
async fn complete_stage(
    planned: &Planned,
    stage: usize,
    location: &Location,
    used_ids: &HashSet<String>,
    checks_grounding: bool,
    work: &Location,
    count: usize,
) -> Result<bool> {
    for index in 0..count {
        match Manifest::read_optional(location, &job_manifest_name(index, count)).await? {
            Some(m) if m.complete => {}
            _ => return Ok(false),
        }
    }
    let (name, mix) = &planned.pipeline.stages[stage];
    let groundings = if checks_grounding {
        let mut records = Vec::new();
        for index in 0..count {
            let part = grounding_name(stage, index, count);
            let bytes = work.read(&part).await?;
            let part: Vec<GroundingRecord> = serde_json::from_slice(&bytes)
                .map_err(json_error(work.url_of(&work.child(&part))))?;
            records.extend(part);
        }
        Some(records)
    } else {
        None
    };
    let report = layout_report(
        name,
        mix,
        &planned.plans[stage],
        &planned.layouts[stage],
        used_ids,
        groundings,
    );
    location
        .write(
            "mix_report.json",
            dapt_mixer::run::report_json(&report)?.into(),
        )
        .await?;
    Ok(
        OutputDir::merge_job_manifests(location, count, "mix", &planned.identity)
            .await?
            .is_some(),
    )
}

/// Where the route and write jobs of the array in work directory `location` stand: `None` when
/// no route job has run there. The job count comes from the route jobs' records.
pub async fn array_status(
    location: &Location,
) -> Result<Option<Vec<crate::work::JobStatus<serde_json::Value>>>> {
    let Some(count) = crate::work::recorded_count(location, ROUTE).await? else {
        return Ok(None);
    };
    let mut jobs = Vec::new();
    for step in [ROUTE, WRITE] {
        for index in 0..count {
            jobs.push(crate::work::job_status(location, step, index, count).await?);
        }
    }
    Ok(Some(jobs))
}
