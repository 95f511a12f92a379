//! Planning and materialising mixes.
//!
//! Each component is a sequence of epochs; epoch `j` lists the component's documents ordered by
//! `xxhash64(id, seed(seed, component, j))` (then id). A stage takes the documents whose middle
//! position (tokens before them in that sequence) falls in its token interval: stage 1 takes
//! `[0, target)`, a later stage that reuses the component (same name and SQL) continues at the next
//! position. So whether a document (and which repetition of it) is taken depends on the seed, the
//! component, the document id and the token counts only — never on partition order or threads — and
//! consecutive stages neither lose nor repeat a sample until a component is exhausted.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use dapt_core::shard_writer::ShardWriter;
use dapt_core::{Location, OutputDir};
use dapt_encoder::TokenizerFile;
use dapt_sql::SqlSession;
use futures::StreamExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::mix::{Component, Mix, Pipeline};
use crate::report::{
    traits, Attribution, AttributionBuilder, Grounding, GroundingBuilder, Knowledge,
};
use crate::{Error, Result};

/// Memory DataFusion may use before its sorts spill.
const SQL_MEMORY: usize = 256 << 20;

/// Schema of mix output shards.
pub fn mix_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("document_id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("component", DataType::Utf8, false),
        Field::new("epoch", DataType::Int32, false),
        Field::new("tokens", DataType::Int64, false),
    ]))
}

/// Inventories already counted in this run, by (SQL, sources, tokenizer, target language): a component
/// that several stages share (or plan then run) is tokenised once.
#[derive(Default)]
pub struct InventoryCache {
    inventories: HashMap<String, Arc<Inventory>>,
    /// Documents tokenised by this cache's owner (for reports and tests).
    pub documents_tokenised: u64,
}

impl InventoryCache {
    /// The key of a component's inventory: its SQL, the mix's sources (wherever the query runs), the
    /// tokenizer's bytes and the target language.
    pub fn key(mix: &Mix, component: &Component, tokenizer_sha256: &str) -> String {
        let mut sources = mix.sources.clone();
        sources.cluster = None;
        dapt_core::hash::sha256_hex(
            format!(
                "{}\u{0}{:?}\u{0}{}\u{0}{:?}",
                component.sql, sources, tokenizer_sha256, mix.target_language
            )
            .as_bytes(),
        )
    }

    /// Serves `inventory` for `key` (counted elsewhere, e.g. by a job array) instead of counting.
    pub fn insert(&mut self, key: String, inventory: Arc<Inventory>) {
        self.inventories.insert(key, inventory);
    }

    async fn get(
        &mut self,
        session: &SqlSession,
        mix: &Mix,
        component: &Component,
        tokenizers: &mut TokenizerCache,
    ) -> Result<Arc<Inventory>> {
        let key = Self::key(mix, component, &tokenizers.sha256(mix)?);
        if let Some(found) = self.inventories.get(&key) {
            return Ok(found.clone());
        }
        // Only counting needs the tokenizer itself.
        let tokenizer = tokenizers.get(mix)?;
        let counted = Arc::new(
            inventory(
                session,
                component,
                &tokenizer,
                mix.target_language.as_deref(),
            )
            .await?,
        );
        self.documents_tokenised += counted.ids.len() as u64;
        self.inventories.insert(key, counted.clone());
        Ok(counted)
    }
}

/// Tokenizers loaded in this run, by path and encoder, and the sha256 of tokenizer files (which
/// inventory keys need without the tokenizer: parsing a large vocabulary takes a good part of a
/// second).
#[derive(Default)]
pub struct TokenizerCache {
    loaded: HashMap<(std::path::PathBuf, String), Arc<TokenizerFile>>,
    hashes: HashMap<std::path::PathBuf, String>,
}

impl TokenizerCache {
    /// A cache that serves `tokenizer` for `mix` (one the caller loaded already).
    pub fn with(mix: &Mix, tokenizer: Arc<TokenizerFile>) -> Self {
        let mut cache = Self::default();
        cache
            .hashes
            .insert(mix.tokenizer.clone(), tokenizer.sha256().to_string());
        cache.loaded.insert(
            (mix.tokenizer.clone(), format!("{:?}", mix.encoder)),
            tokenizer,
        );
        cache
    }

    /// The mix's tokenizer, loaded once per run.
    pub fn get(&mut self, mix: &Mix) -> Result<Arc<TokenizerFile>> {
        let key = (mix.tokenizer.clone(), format!("{:?}", mix.encoder));
        if let Some(found) = self.loaded.get(&key) {
            return Ok(found.clone());
        }
        let loaded = Arc::new(TokenizerFile::load_with(&mix.tokenizer, mix.encoder)?);
        self.hashes
            .insert(mix.tokenizer.clone(), loaded.sha256().to_string());
        self.loaded.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// sha256 of the mix's `tokenizer.json` bytes (what [`TokenizerFile::sha256`] gives), read
    /// once per run without parsing it.
    pub fn sha256(&mut self, mix: &Mix) -> Result<String> {
        if let Some(found) = self.hashes.get(&mix.tokenizer) {
            return Ok(found.clone());
        }
        let bytes = std::fs::read(&mix.tokenizer).map_err(|source| Error::Io {
            path: mix.tokenizer.clone(),
            source,
        })?;
        let sha = dapt_core::hash::sha256_hex(&bytes);
        self.hashes.insert(mix.tokenizer.clone(), sha.clone());
        Ok(sha)
    }
}

/// A component's documents: ids and token counts (texts are not kept).
pub struct Inventory {
    /// Document ids, in the component's hash order.
    pub ids: Vec<String>,
    /// Their token counts.
    pub tokens: Vec<u64>,
    /// The component's lang-swap attribution.
    pub attribution: Attribution,
}

impl Inventory {
    /// Tokens of all documents.
    pub fn total_tokens(&self) -> u64 {
        self.tokens.iter().sum()
    }
}

/// A component's plan in one stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentPlan {
    /// Component name.
    pub name: String,
    /// Normalised weight.
    pub weight: f64,
    /// Tokens the stage wants from it.
    pub target_tokens: u64,
    /// Documents its query returns.
    pub available_documents: u64,
    /// Their tokens.
    pub available_tokens: u64,
    /// Epochs over the component this stage's target needs (from where earlier stages stopped).
    pub epochs_needed: f64,
    /// Most epochs allowed.
    pub max_epochs: Option<f64>,
    /// The target needs more epochs than `max_epochs` allows; the component gets less.
    pub capped: bool,
    /// Token interval of the component's sequence this stage takes.
    pub start: u64,
    /// End of that interval (exclusive).
    pub end: u64,
}

/// What a stage achieved for one component.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentReport {
    /// The plan.
    #[serde(flatten)]
    pub plan: ComponentPlan,
    /// Documents written.
    pub documents: u64,
    /// Their tokens.
    pub tokens: u64,
    /// The component's weight.
    pub target_share: f64,
    /// Its share of the stage's tokens.
    pub achieved_share: f64,
    /// Documents of this stage whose id an earlier stage of the pipeline already used.
    pub seen_in_earlier_stages: u64,
    /// Its lang-swap attribution.
    pub attribution: Attribution,
    /// QA/instruct components in a later stage: answers checked against earlier stages' text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grounding: Option<Grounding>,
    /// Documents left out for an answer grounded less than the component's `min_grounding`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_ungrounded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `mix_report.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MixReport {
    /// Stage name.
    pub stage: String,
    /// The mix file.
    pub mix: String,
    /// Seed of the sampling.
    pub seed: u64,
    /// Tokens the stage wants.
    pub total_tokens: u64,
    /// Documents written.
    pub documents: u64,
    /// Their tokens.
    pub tokens: u64,
    /// Largest |achieved − target| share over components, in percentage points.
    pub max_share_error_points: f64,
    /// Per component.
    pub components: Vec<ComponentReport>,
}

fn input_error(component: &str, e: impl Into<crate::error::BoxError>) -> Error {
    Error::Component {
        component: component.to_string(),
        source: e.into(),
    }
}

/// The SQL session of a mix's component queries (its sources, on its cluster if it names one).
pub async fn session(mix: &Mix) -> Result<SqlSession> {
    Ok(SqlSession::over_sources(&mix.sources, Some(SQL_MEMORY)).await?)
}

fn strings(batch: &RecordBatch, name: &str, component: &str) -> Result<Option<ArrayRef>> {
    batch
        .column_by_name(name)
        .map(|c| arrow::compute::cast(c, &DataType::Utf8).map_err(|e| input_error(component, e)))
        .transpose()
}

/// Counts a component's documents and tokens (and its attribution) by running its query.
pub async fn inventory(
    session: &SqlSession,
    component: &Component,
    tokenizer: &TokenizerFile,
    target_language: Option<&str>,
) -> Result<Inventory> {
    let part = inventory_part(session, component, tokenizer, target_language, &|_| true).await?;
    Ok(Inventory::from_parts(vec![part]))
}

/// One job's share of a component's inventory: the documents whose id `takes` accepts, with the
/// totals of their attribution (whole counts, so parts add up exactly).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InventoryPart {
    /// Document ids, in query order.
    pub ids: Vec<String>,
    /// Their token counts.
    pub tokens: Vec<u64>,
    /// The attribution's counts.
    pub attribution: AttributionBuilder,
}

impl Inventory {
    /// The inventory of a component whose documents the parts split between them (each id in one
    /// part). The order of ids does not matter: sampling orders them by their hash keys.
    pub fn from_parts(parts: Vec<InventoryPart>) -> Self {
        let mut ids = Vec::new();
        let mut tokens = Vec::new();
        let mut attribution: Option<AttributionBuilder> = None;
        for part in parts {
            ids.extend(part.ids);
            tokens.extend(part.tokens);
            match &mut attribution {
                Some(sum) => sum.merge(&part.attribution),
                None => attribution = Some(part.attribution),
            }
        }
        Inventory {
            ids,
            tokens,
            attribution: attribution.unwrap_or_default().finish(),
        }
    }
}

/// Counts the documents of a component whose id `takes` accepts (a job's share; see
/// [`InventoryPart`]).
pub async fn inventory_part(
    session: &SqlSession,
    component: &Component,
    tokenizer: &TokenizerFile,
    target_language: Option<&str>,
    takes: &(dyn Fn(&str) -> bool + Sync),
) -> Result<InventoryPart> {
    let mut stream = session
        .query(&component.sql)
        .await
        .map_err(|e| input_error(&component.name, e))?;
    let (mut ids, mut tokens) = (Vec::new(), Vec::new());
    let mut attribution = AttributionBuilder::new(target_language.map(str::to_string));
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| input_error(&component.name, e))?;
        let (Some(id), Some(text)) = (
            strings(&batch, "id", &component.name)?,
            strings(&batch, "text", &component.name)?,
        ) else {
            return Err(Error::Column {
                column: "id, text".into(),
                reason: format!("component {}'s query must return both", component.name),
            });
        };
        let (id, text) = (id.as_string::<i32>(), text.as_string::<i32>());
        let rows: Vec<(String, &str)> = (0..batch.num_rows())
            .filter(|&i| id.is_valid(i) && text.is_valid(i) && takes(id.value(i)))
            .map(|i| (id.value(i).to_string(), text.value(i)))
            .collect();
        let counted: Vec<(u64, Option<&'static str>, crate::report::DocumentTraits)> = rows
            .par_iter()
            .map(|(id, text)| {
                let n = tokenizer.encode(id, text)?.len() as u64;
                let (language, t) = traits(text, target_language);
                Ok((n, language, t))
            })
            .collect::<std::result::Result<_, dapt_encoder::Error>>()
            .map_err(|e| input_error(&component.name, e))?;
        for ((id, _), (n, language, t)) in rows.into_iter().zip(counted) {
            if !seen.insert(id.clone()) {
                return Err(input_error(
                    &component.name,
                    format!("document id {id:?} appears twice (ids must be unique)"),
                ));
            }
            attribution.add(language, t, n);
            ids.push(id);
            tokens.push(n);
        }
    }
    Ok(InventoryPart {
        ids,
        tokens,
        attribution,
    })
}

/// The stage name of a component's epoch order: epoch `j` of component `c` orders its documents by
/// `document_key(seed, "mix-order/c", j, id)` (see [`dapt_core::order`]).
fn order_stage(component: &str) -> String {
    format!("mix-order/{component}")
}

/// The key that shuffles documents within a window of mixer output (and a sweep's assembled
/// variant): a function of (seed, component, document id, epoch).
pub fn shuffle_key(seed: u64, component: &str, id: &str, epoch: u64) -> u64 {
    dapt_core::order::document_key(seed, "mix-window", 0, &format!("{component}/{id}/{epoch}"))
}

/// The mixer's sampling rule, for one component whose documents are `ids` with `tokens` tokens each:
/// the component is a sequence of epochs, each its documents in the epoch's document order, and the
/// documents whose middle position (tokens before them in that sequence, plus half their own) falls
/// in `[start, end)` are taken. Returns, per epoch touched, the indices taken, in order.
/// Consecutive intervals partition the sequence (stages neither lose nor repeat a sample), and a
/// component is off its target by at most half a document.
pub fn sample(
    seed: u64,
    component: &str,
    ids: &[String],
    tokens: &[u64],
    start: u64,
    end: u64,
) -> Vec<(u64, Vec<usize>)> {
    let available: u64 = tokens.iter().sum();
    if available == 0 || end <= start {
        return Vec::new();
    }
    let stage = order_stage(component);
    let mut out = Vec::new();
    let (first, last) = (start / available, end.div_ceil(available));
    for epoch in first..=last {
        let mut position = epoch * available;
        let mut taken = Vec::new();
        for i in dapt_core::order::ordered(seed, &stage, epoch, ids) {
            let middle = position + tokens[i] / 2;
            if middle >= start && middle < end {
                taken.push(i);
            }
            position += tokens[i];
        }
        if !taken.is_empty() {
            out.push((epoch, taken));
        }
    }
    out
}

/// Plans a component: target tokens from the weight, the interval from `start`, capped by epochs.
fn plan_component(
    component: &Component,
    inventory: &Inventory,
    total: u64,
    start: u64,
) -> ComponentPlan {
    let available = inventory.total_tokens();
    let target = (component.weight * total as f64).round() as u64;
    let mut end = start + target;
    let needed = (end as f64 / available.max(1) as f64) - (start as f64 / available.max(1) as f64);
    let mut capped = false;
    if let Some(max) = component.max_epochs {
        let cap = (max * available as f64).floor() as u64;
        if end > cap {
            end = cap.max(start);
            capped = true;
        }
    }
    ComponentPlan {
        name: component.name.clone(),
        weight: component.weight,
        target_tokens: target,
        available_documents: inventory.ids.len() as u64,
        available_tokens: available,
        epochs_needed: needed,
        max_epochs: component.max_epochs,
        capped,
        start,
        end,
    }
}

/// For each epoch the plan touches: the documents it takes (see [`sample`]).
fn selection(plan: &ComponentPlan, inventory: &Inventory, seed: u64) -> Vec<(u64, Vec<usize>)> {
    sample(
        seed,
        &plan.name,
        &inventory.ids,
        &inventory.tokens,
        plan.start,
        plan.end,
    )
}

/// A stage's plan: every component's inventory and plan.
pub struct StagePlan {
    /// Each component with its inventory and plan.
    pub components: Vec<(Component, Arc<Inventory>, ComponentPlan)>,
}

/// Runs the component queries and plans a stage (counting, not materialising). `starts` maps a
/// component's (name, SQL) to where earlier stages stopped in its sequence.
pub async fn plan_stage(
    session: &SqlSession,
    mix: &Mix,
    tokenizers: &mut TokenizerCache,
    starts: &HashMap<(String, String), u64>,
    cache: &mut InventoryCache,
) -> Result<StagePlan> {
    let total = mix.total_tokens.unwrap_or(0);
    let mut components = Vec::new();
    for component in &mix.components {
        let inventory = cache.get(session, mix, component, tokenizers).await?;
        let available = inventory.total_tokens();
        if available == 0 {
            return Err(Error::Setting {
                key: format!("{}: component {}", mix.path, component.name),
                reason: "its query returns no tokens".into(),
            });
        }
        if available < component.min_tokens {
            return Err(Error::Setting {
                key: format!("{}: component {}.min_tokens", mix.path, component.name),
                reason: format!(
                    "{available} tokens available, {} required",
                    component.min_tokens
                ),
            });
        }
        let start = starts
            .get(&(component.name.clone(), component.sql.clone()))
            .copied()
            .unwrap_or(0);
        let plan = plan_component(component, &inventory, total, start);
        if plan.capped {
            tracing::warn!(
                "component {}: the target needs {:.2} epochs, max_epochs is {}; it gets {} of {} tokens",
                component.name,
                plan.epochs_needed,
                component.max_epochs.unwrap_or(0.0),
                plan.end - plan.start,
                plan.target_tokens
            );
        }
        components.push((component.clone(), inventory, plan));
    }
    Ok(StagePlan { components })
}

/// A document on its way to the output.
pub(crate) struct OutDocument {
    pub(crate) id: String,
    pub(crate) text: String,
    pub(crate) source: Option<String>,
    pub(crate) answer: Option<String>,
    pub(crate) component: usize,
    pub(crate) epoch: u64,
    pub(crate) tokens: u64,
}

/// Streams one component's selected documents, epoch by epoch, in each epoch's order.
struct ComponentStream {
    index: usize,
    name: String,
    sql: String,
    seed: u64,
    epochs: VecDeque<(u64, HashSet<String>)>,
    tokens: HashMap<String, u64>,
    current: Option<(u64, HashSet<String>, BatchStream)>,
    buffer: VecDeque<OutDocument>,
}

/// The record batches of a running query.
type BatchStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = std::result::Result<RecordBatch, crate::error::BoxError>> + Send,
    >,
>;

impl ComponentStream {
    async fn next(&mut self, session: &SqlSession) -> Result<Option<OutDocument>> {
        loop {
            if let Some(doc) = self.buffer.pop_front() {
                return Ok(Some(doc));
            }
            if self.current.is_none() {
                let Some((epoch, selected)) = self.epochs.pop_front() else {
                    return Ok(None);
                };
                // The epoch's document order, computed by the SQL function that wraps
                // `dapt_core::order::document_key` (seed passed as its two's-complement bits).
                let query = format!(
                    "SELECT * FROM ({}) AS dapt_component \
                     ORDER BY order_key(CAST(id AS VARCHAR), {}, '{}', {epoch}), CAST(id AS VARCHAR)",
                    self.sql,
                    self.seed as i64,
                    order_stage(&self.name).replace('\'', "''"),
                );
                let stream = session
                    .query(&query)
                    .await
                    .map_err(|e| input_error(&self.name, e))?
                    .map(|b| b.map_err(crate::error::BoxError::from));
                self.current = Some((epoch, selected, Box::pin(stream)));
            }
            let Some((epoch, selected, stream)) = self.current.as_mut() else {
                continue;
            };
            match stream.next().await {
                None => self.current = None,
                Some(batch) => {
                    let batch = batch.map_err(|e| input_error(&self.name, e))?;
                    for doc in query_documents(&batch, &self.name, |id| selected.contains(id))? {
                        self.buffer.push_back(OutDocument {
                            tokens: self.tokens.get(&doc.id).copied().unwrap_or(0),
                            text: doc.text,
                            source: doc.source,
                            answer: doc.answer,
                            component: self.index,
                            epoch: *epoch,
                            id: doc.id,
                        });
                    }
                }
            }
        }
    }
}

/// A row of a component query: `id`, `text`, and `source` and `answer` where the query has them.
pub struct QueryDocument {
    /// The row's id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its source, if any.
    pub source: Option<String>,
    /// Its answer (QA components), if any.
    pub answer: Option<String>,
}

/// The rows of a batch of component `component`'s query whose id `keep` accepts (rows without an
/// id or text are skipped); only those rows' strings are copied.
pub fn query_documents(
    batch: &RecordBatch,
    component: &str,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<QueryDocument>> {
    let column = |n: &str| strings(batch, n, component);
    let (Some(ids), Some(texts)) = (column("id")?, column("text")?) else {
        return Err(input_error(component, "the query lost id or text"));
    };
    let (sources, answers) = (column("source")?, column("answer")?);
    let ids = ids.as_string::<i32>();
    let texts = texts.as_string::<i32>();
    let sources = sources
        .as_ref()
        .map(arrow::array::AsArray::as_string::<i32>);
    let answers = answers
        .as_ref()
        .map(arrow::array::AsArray::as_string::<i32>);
    let mut documents = Vec::new();
    for i in 0..batch.num_rows() {
        if !ids.is_valid(i) || !texts.is_valid(i) || !keep(ids.value(i)) {
            continue;
        }
        let optional =
            |a: Option<&StringArray>| a.filter(|a| a.is_valid(i)).map(|a| a.value(i).to_string());
        documents.push(QueryDocument {
            id: ids.value(i).to_string(),
            text: texts.value(i).to_string(),
            source: optional(sources),
            answer: optional(answers),
        });
    }
    Ok(documents)
}

/// Cross-stage state of a pipeline run: where each component stopped, which ids were used, and the
/// text n-grams of earlier stages.
#[derive(Default)]
pub struct PipelineState {
    /// Inventories counted so far (stages share them).
    pub inventories: InventoryCache,
    /// Where each (stage mix, component) continues in its sequence.
    pub starts: HashMap<(String, String), u64>,
    /// Ids used by earlier stages.
    pub used_ids: HashSet<String>,
    /// N-grams of earlier stages' text.
    pub knowledge: Knowledge,
}

/// What a plan takes of one component: per epoch touched, the documents taken, in order.
pub(crate) type Selection = Vec<(u64, Vec<usize>)>;

/// Each component's selection (see [`selection`]) and its target in the merge: the tokens selected
/// (at least 1).
pub(crate) fn stage_selection(plan: &StagePlan, seed: u64) -> (Vec<Selection>, Vec<u64>) {
    plan.components
        .iter()
        .map(|(_, inventory, p)| {
            let selected = selection(p, inventory, seed);
            let target: u64 = selected
                .iter()
                .flat_map(|(_, docs)| docs.iter().map(|&i| inventory.tokens[i]))
                .sum();
            (selected, target.max(1))
        })
        .unzip()
}

/// The component whose stream goes next in a stage's output: of those with documents left
/// (`alive`), the one furthest behind its target (`emitted / target` tokens; ties: the first).
pub(crate) fn next_component(
    alive: impl Fn(usize) -> bool,
    emitted: &[u64],
    targets: &[u64],
) -> Option<usize> {
    (0..emitted.len()).filter(|&i| alive(i)).min_by(|&a, &b| {
        let progress = |i: usize| emitted[i] as f64 / targets[i] as f64;
        progress(a).total_cmp(&progress(b)).then(a.cmp(&b))
    })
}

/// What a stage's output holds per component: tokens and documents written, documents whose id
/// an earlier stage used, answers left out as ungrounded.
pub(crate) struct StageCounts {
    pub(crate) tokens: Vec<u64>,
    pub(crate) documents: Vec<u64>,
    pub(crate) seen_before: Vec<u64>,
    pub(crate) dropped: Vec<u64>,
}

/// A stage's `mix_report.json` from what its output holds; `groundings` per component (`Some` for
/// QA components of a stage after one with text).
pub(crate) fn stage_report(
    stage: &str,
    mix: &Mix,
    plan: &StagePlan,
    counts: &StageCounts,
    groundings: Vec<Option<Grounding>>,
) -> MixReport {
    let produced: u64 = counts.tokens.iter().sum();
    let mut components = Vec::new();
    let mut max_error: f64 = 0.0;
    for (i, ((component, inventory, p), grounding)) in
        plan.components.iter().zip(groundings).enumerate()
    {
        let achieved_share = counts.tokens[i] as f64 / produced.max(1) as f64;
        max_error = max_error.max((achieved_share - component.weight).abs() * 100.0);
        components.push(ComponentReport {
            plan: p.clone(),
            documents: counts.documents[i],
            tokens: counts.tokens[i],
            target_share: component.weight,
            achieved_share,
            seen_in_earlier_stages: counts.seen_before[i],
            attribution: inventory.attribution.clone(),
            grounding: if component.qa { grounding } else { None },
            dropped_ungrounded: counts.dropped[i],
        });
    }
    MixReport {
        stage: stage.to_string(),
        mix: mix.path.clone(),
        seed: mix.seed,
        total_tokens: mix.total_tokens.unwrap_or(0),
        documents: counts.documents.iter().sum(),
        tokens: produced,
        max_share_error_points: max_error,
        components,
    }
}

/// The bytes of `mix_report.json`.
pub fn report_json(report: &MixReport) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(report).map_err(|source| Error::Json {
        what: "mix_report.json".into(),
        source,
    })
}

/// The key-value metadata of a stage's shards.
pub fn shard_metadata(mix: &Mix, stage: &str, config_hash: &str) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert("dapt.mix".to_string(), mix.path.clone());
    metadata.insert("dapt.stage".to_string(), stage.to_string());
    metadata.insert(
        dapt_core::schema::metadata::SEED.to_string(),
        mix.seed.to_string(),
    );
    metadata.insert(
        dapt_core::schema::metadata::CONFIG_HASH.to_string(),
        config_hash.to_string(),
    );
    metadata
}

/// The name of a mix output's shard `index`.
pub fn shard_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// Materialises one stage into `output` (reusing a complete output): merges the components'
/// streams so that every prefix of the output has the target shares (the component furthest behind
/// its target goes next), shuffles within windows of `shuffle_window` documents by a hash of
/// (seed, component, id, epoch), and writes shards of `documents_per_shard` rows. Returns the report.
pub async fn run_stage(
    stage: &str,
    mix: &Mix,
    tokenizers: &mut TokenizerCache,
    output: &mut OutputDir,
    state: &mut PipelineState,
) -> Result<MixReport> {
    let session = session(mix).await?;
    let plan = plan_stage(
        &session,
        mix,
        tokenizers,
        &state.starts,
        &mut state.inventories,
    )
    .await?;
    let mut streams = Vec::new();
    let (selections, targets) = stage_selection(&plan, mix.seed);
    for (index, ((component, inventory, _), selected)) in
        plan.components.iter().zip(selections).enumerate()
    {
        let tokens: HashMap<String, u64> = inventory
            .ids
            .iter()
            .cloned()
            .zip(inventory.tokens.iter().copied())
            .collect();
        streams.push(ComponentStream {
            index,
            name: component.name.clone(),
            sql: component.sql.clone(),
            seed: mix.seed,
            epochs: selected
                .into_iter()
                .map(|(epoch, docs)| {
                    (
                        epoch,
                        docs.into_iter().map(|i| inventory.ids[i].clone()).collect(),
                    )
                })
                .collect(),
            tokens,
            current: None,
            buffer: VecDeque::new(),
        });
    }

    let mut heads: Vec<Option<OutDocument>> = Vec::new();
    for stream in &mut streams {
        heads.push(stream.next(&session).await?);
    }
    let mut emitted = vec![0u64; streams.len()];
    let mut documents = vec![0u64; streams.len()];
    let mut seen_before = vec![0u64; streams.len()];
    let mut dropped = vec![0u64; streams.len()];
    let mut groundings: Vec<GroundingBuilder> = (0..streams.len())
        .map(|_| GroundingBuilder::default())
        .collect();
    let check_grounding = !state.knowledge.is_empty();
    let mut stage_ids: HashSet<String> = HashSet::new();
    let mut stage_knowledge = Knowledge::default();
    let mut window: Vec<OutDocument> = Vec::with_capacity(mix.shuffle_window);
    let mut writer = MixWriter::new(output, mix, stage)?;
    while let Some(i) = next_component(|i| heads[i].is_some(), &emitted, &targets) {
        let Some(doc) = heads[i].take() else { break };
        heads[i] = streams[i].next(&session).await?;
        let component = &plan.components[i].0;
        if component.qa && check_grounding {
            let answer = doc.answer.as_deref().unwrap_or(&doc.text);
            let grounding = state.knowledge.grounding(answer);
            groundings[i].add(&doc.id, answer, grounding);
            if component.min_grounding.is_some_and(|min| grounding < min) {
                dropped[i] += 1;
                continue;
            }
        }
        emitted[i] += doc.tokens;
        documents[i] += 1;
        if state.used_ids.contains(&doc.id) {
            seen_before[i] += 1;
        }
        stage_ids.insert(doc.id.clone());
        stage_knowledge.add(&doc.text);
        window.push(doc);
        if window.len() == mix.shuffle_window {
            writer.write_window(&mut window, &plan, mix.seed).await?;
        }
    }
    writer.write_window(&mut window, &plan, mix.seed).await?;

    for (component, _, p) in &plan.components {
        state
            .starts
            .insert((component.name.clone(), component.sql.clone()), p.end);
    }
    let counts = StageCounts {
        tokens: emitted,
        documents,
        seen_before,
        dropped,
    };
    let groundings = groundings
        .into_iter()
        .map(|g| check_grounding.then(|| g.finish(10)))
        .collect();
    let report = stage_report(stage, mix, &plan, &counts, groundings);
    writer.finish(report_json(&report)?).await?;
    state.used_ids.extend(stage_ids);
    state.knowledge.extend(stage_knowledge);
    Ok(report)
}

/// Writes windows of documents into streamed shards, skipping shards a previous run published.
struct MixWriter<'a> {
    output: &'a mut OutputDir,
    metadata: BTreeMap<String, String>,
    per_shard: usize,
    shard: usize,
    in_shard: usize,
    writer: Option<ShardWriter>,
}

impl<'a> MixWriter<'a> {
    fn new(output: &'a mut OutputDir, mix: &Mix, stage: &str) -> Result<Self> {
        let metadata = shard_metadata(mix, stage, &output.manifest().config_hash);
        Ok(Self {
            output,
            metadata,
            per_shard: mix.documents_per_shard,
            shard: 0,
            in_shard: 0,
            writer: None,
        })
    }

    async fn write_window(
        &mut self,
        window: &mut Vec<OutDocument>,
        plan: &StagePlan,
        seed: u64,
    ) -> Result<()> {
        let name_of = |d: &OutDocument| plan.components[d.component].0.name.as_str();
        let key = |d: &OutDocument| shuffle_key(seed, name_of(d), &d.id, d.epoch);
        window.sort_by_cached_key(|d| (key(d), name_of(d).to_string(), d.id.clone(), d.epoch));
        let mut rest: &[OutDocument] = window;
        while !rest.is_empty() {
            let take = (self.per_shard - self.in_shard).min(rest.len());
            let (now, later) = rest.split_at(take);
            let name = shard_name(self.shard);
            if !self.output.is_published(&name) {
                if self.writer.is_none() {
                    self.writer = Some(ShardWriter::create(
                        self.output.location(),
                        &name,
                        mix_schema(),
                        &self.metadata,
                    )?);
                }
                let batch = batch(now, plan)?;
                if let Some(writer) = self.writer.as_mut() {
                    writer.write(&batch).await?;
                }
            }
            self.in_shard += take;
            if self.in_shard == self.per_shard {
                self.close().await?;
            }
            rest = later;
        }
        window.clear();
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            let entry = writer.finish().await?;
            self.output.record(entry, Vec::new()).await?;
        }
        self.shard += 1;
        self.in_shard = 0;
        Ok(())
    }

    async fn finish(mut self, report: Vec<u8>) -> Result<()> {
        if self.in_shard > 0 {
            self.close().await?;
        }
        self.output
            .location()
            .write("mix_report.json", bytes::Bytes::from(report))
            .await?;
        let summary = serde_json::json!({ "shards": self.shard });
        self.output.finish(summary).await?;
        Ok(())
    }
}

pub(crate) fn batch(docs: &[OutDocument], plan: &StagePlan) -> Result<RecordBatch> {
    let name = |d: &OutDocument| plan.components[d.component].0.name.clone();
    let ids: StringArray = docs
        .iter()
        .map(|d| {
            let base = format!("{}/{}", name(d), d.id);
            Some(if d.epoch == 0 {
                base
            } else {
                format!("{base}#{}", d.epoch)
            })
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids),
        Arc::new(
            docs.iter()
                .map(|d| Some(d.id.clone()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            docs.iter()
                .map(|d| Some(d.text.clone()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            docs.iter()
                .map(|d| d.source.clone())
                .collect::<StringArray>(),
        ),
        Arc::new(docs.iter().map(|d| Some(name(d))).collect::<StringArray>()),
        Arc::new(docs.iter().map(|d| d.epoch as i32).collect::<Int32Array>()),
        Arc::new(docs.iter().map(|d| d.tokens as i64).collect::<Int64Array>()),
    ];
    RecordBatch::try_new(mix_schema(), columns).map_err(|source| Error::Arrow {
        what: "a mix shard".into(),
        source,
    })
}

/// Plans every stage of a pipeline (stages after the first continue where the earlier ones stop).
pub async fn plan_pipeline(pipeline: &Pipeline) -> Result<Vec<(String, StagePlan)>> {
    plan_pipeline_with(pipeline, &mut InventoryCache::default()).await
}

/// [`plan_pipeline`] with a cache of component inventories: a component shared by stages (same SQL,
/// sources, tokenizer) is tokenised once, and the cache can serve a later run.
pub async fn plan_pipeline_with(
    pipeline: &Pipeline,
    inventories: &mut InventoryCache,
) -> Result<Vec<(String, StagePlan)>> {
    plan_pipeline_cached(pipeline, inventories, &mut TokenizerCache::default()).await
}

/// [`plan_pipeline_with`] with the tokenizers of this run (loaded only where a component is
/// counted here).
pub async fn plan_pipeline_cached(
    pipeline: &Pipeline,
    inventories: &mut InventoryCache,
    tokenizers: &mut TokenizerCache,
) -> Result<Vec<(String, StagePlan)>> {
    let mut starts: HashMap<(String, String), u64> = HashMap::new();
    let mut out = Vec::new();
    for (name, mix) in &pipeline.stages {
        let plan = plan_stage(&session(mix).await?, mix, tokenizers, &starts, inventories).await?;
        for (component, _, p) in &plan.components {
            starts.insert((component.name.clone(), component.sql.clone()), p.end);
        }
        out.push((name.clone(), plan));
    }
    Ok(out)
}

/// Runs every stage of a pipeline into `out/<stage>/` (a single mix: `out/` itself). `hash` is the
/// configuration's hash (recorded in each manifest; a changed configuration is refused, unless
/// `overwrite` is set: then each stage's output is replaced, see `OutputDir::open_with`).
pub async fn run_pipeline(
    pipeline: &Pipeline,
    out: &Location,
    hash: &str,
    overwrite: bool,
) -> Result<Vec<MixReport>> {
    run_pipeline_with(pipeline, out, hash, overwrite, InventoryCache::default()).await
}

/// [`run_pipeline`] with component inventories already counted (e.g. by a job array of `dapt mix
/// plan --shard`); components not in `inventories` are counted here.
pub async fn run_pipeline_with(
    pipeline: &Pipeline,
    out: &Location,
    hash: &str,
    overwrite: bool,
    inventories: InventoryCache,
) -> Result<Vec<MixReport>> {
    let mut state = PipelineState {
        inventories,
        ..PipelineState::default()
    };
    let mut tokenizers = TokenizerCache::default();
    let mut reports = Vec::new();
    let single = pipeline.stages.len() == 1 && pipeline.stages[0].0 == "mix";
    for (name, mix) in &pipeline.stages {
        let location = if single {
            out.clone()
        } else {
            Location::parse(&format!("{}/{name}/", out.url().trim_end_matches('/')))?
        };
        let mut output = OutputDir::open_with(
            location,
            dapt_core::manifest::MANIFEST_NAME,
            "mix",
            hash,
            overwrite,
        )
        .await?;
        // A complete stage is still replayed (deterministically, without writing) so that the
        // cross-stage state of later stages is the same as in an uninterrupted run.
        let report = run_stage(name, mix, &mut tokenizers, &mut output, &mut state).await?;
        reports.push(report);
    }
    Ok(reports)
}
