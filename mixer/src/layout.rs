//! A stage's output laid out from its plan alone, for writing it as a job array.
//!
//! `run_stage` streams each component's selected documents and merges them (the component furthest
//! behind its target goes next), shuffles windows of `shuffle_window` documents by their shuffle
//! keys and cuts shards of `documents_per_shard` rows. Without answers left out as ungrounded
//! (`min_grounding` after a stage with text) every one of those decisions depends on ids and token
//! counts only, so the whole layout — which document (and which epoch of it) lands at which position
//! of which shard — follows from the plan: [`stage_layout`]. Jobs can then read their share of the
//! documents anywhere, send each to the job that writes its shard, and the shards equal the one
//! process's byte for byte ([`routed_batch`] builds the same rows, cut at the same window and shard
//! boundaries).
use std::collections::HashSet;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::mix::Pipeline;
use crate::report::{Grounding, GroundingBuilder};
use crate::run::{
    batch, next_component, shuffle_key, stage_report, stage_selection, MixReport, OutDocument,
    StageCounts, StagePlan,
};
use crate::{Error, Mix, Result};

/// One document of a stage's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Its component (index in the stage plan).
    pub component: usize,
    /// Which pass over the component it comes from.
    pub epoch: u64,
    /// Its index in the component's inventory.
    pub doc: usize,
    /// Its row in the stage's output (shards in order, rows in order).
    pub position: u64,
}

/// A stage's output: its documents in the order the merge takes them (the order grounding is
/// accumulated in), each with its position in the output.
pub struct StageLayout {
    /// The documents, in merge order.
    pub slots: Vec<Slot>,
    /// Rows per shard.
    pub documents_per_shard: usize,
    /// Documents shuffled together.
    pub shuffle_window: usize,
}

impl StageLayout {
    /// Documents in the stage's output.
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// True for an output without documents.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Shards of the output (the last one may be short).
    pub fn shards(&self) -> usize {
        self.slots.len().div_ceil(self.documents_per_shard)
    }

    /// The shard that holds `position`.
    pub fn shard_of(&self, position: u64) -> usize {
        (position / self.documents_per_shard as u64) as usize
    }

    /// The positions of shard `shard`.
    pub fn shard_positions(&self, shard: usize) -> std::ops::Range<u64> {
        let per = self.documents_per_shard as u64;
        let start = shard as u64 * per;
        start..(start + per).min(self.len())
    }

    /// True when the rows at `position` and `position + 1` go to the shard writer in separate
    /// batches: they are in different shuffle windows or different shards (as `run_stage` writes
    /// them).
    pub fn batch_ends_after(&self, position: u64) -> bool {
        let next = position + 1;
        next == self.len()
            || next.is_multiple_of(self.shuffle_window as u64)
            || next.is_multiple_of(self.documents_per_shard as u64)
    }
}

/// Refuses a pipeline whose output depends on its text beyond ids and token counts: a QA component
/// with `min_grounding` in a stage after the first leaves out answers by their n-grams.
pub fn check_layout_applies(pipeline: &Pipeline) -> Result<()> {
    for (name, mix) in pipeline.stages.iter().skip(1) {
        if let Some(component) = mix
            .components
            .iter()
            .find(|c| c.qa && c.min_grounding.is_some())
        {
            return Err(Error::Setting {
                key: format!("{}: stage {name}, component {}.min_grounding", mix.path, component.name),
                reason: "leaves out answers by the text of earlier stages, so the stage cannot be written as a job array; run `dapt mix run` in one process".into(),
            });
        }
    }
    Ok(())
}

/// The layout of a stage from its plan (see the module docs).
pub fn stage_layout(plan: &StagePlan, mix: &Mix) -> StageLayout {
    let (selections, targets) = stage_selection(plan, mix.seed);
    let sequences: Vec<Vec<(u64, usize)>> = selections
        .into_iter()
        .map(|selected| {
            selected
                .into_iter()
                .flat_map(|(epoch, docs)| docs.into_iter().map(move |d| (epoch, d)))
                .collect()
        })
        .collect();
    let mut cursors = vec![0usize; sequences.len()];
    let mut emitted = vec![0u64; sequences.len()];
    let mut slots = Vec::with_capacity(sequences.iter().map(Vec::len).sum());
    while let Some(i) = next_component(|i| cursors[i] < sequences[i].len(), &emitted, &targets) {
        let (epoch, doc) = sequences[i][cursors[i]];
        cursors[i] += 1;
        emitted[i] += plan.components[i].1.tokens[doc];
        slots.push(Slot {
            component: i,
            epoch,
            doc,
            position: 0,
        });
    }
    // Each window of merged documents is written in the order of its shuffle keys.
    let window = mix.shuffle_window;
    for (w, chunk) in slots.chunks_mut(window).enumerate() {
        let name = |s: &Slot| plan.components[s.component].0.name.as_str();
        let id = |s: &Slot| plan.components[s.component].1.ids[s.doc].as_str();
        let mut order: Vec<usize> = (0..chunk.len()).collect();
        order.sort_by_cached_key(|&k| {
            let s = &chunk[k];
            (
                shuffle_key(mix.seed, name(s), id(s), s.epoch),
                name(s).to_string(),
                id(s).to_string(),
                s.epoch,
            )
        });
        for (rank, k) in order.into_iter().enumerate() {
            chunk[k].position = (w * window + rank) as u64;
        }
    }
    StageLayout {
        slots,
        documents_per_shard: mix.documents_per_shard,
        shuffle_window: window,
    }
}

/// The ids of a stage's documents (what later stages count as seen before).
pub fn layout_ids<'a>(
    plan: &'a StagePlan,
    layout: &'a StageLayout,
) -> impl Iterator<Item = &'a str> {
    layout
        .slots
        .iter()
        .map(|s| plan.components[s.component].1.ids[s.doc].as_str())
}

/// One document routed to the job that writes its shard.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedDocument {
    /// Its row in the stage's output.
    pub position: u64,
    /// Its place in the merge order ([`StageLayout::slots`]).
    pub sequence: u64,
    /// Its component (index in the stage plan).
    pub component: usize,
    /// Which pass over the component it comes from.
    pub epoch: u64,
    /// Its token count.
    pub tokens: u64,
    /// The component query's `id`.
    pub id: String,
    /// Its `text`.
    pub text: String,
    /// Its `source`, if the query has one.
    pub source: Option<String>,
    /// Its `answer`, if the query has one (QA components).
    pub answer: Option<String>,
}

/// The rows of the stage's output for consecutive routed documents, as `run_stage` writes them.
pub fn routed_batch(docs: &[RoutedDocument], plan: &StagePlan) -> Result<RecordBatch> {
    let out: Vec<OutDocument> = docs
        .iter()
        .map(|d| OutDocument {
            id: d.id.clone(),
            text: d.text.clone(),
            source: d.source.clone(),
            answer: d.answer.clone(),
            component: d.component,
            epoch: d.epoch,
            tokens: d.tokens,
        })
        .collect();
    batch(&out, plan)
}

/// One QA answer's grounding against the earlier stages' text, found by the job that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundingRecord {
    /// The document's place in the merge order.
    pub sequence: u64,
    /// Its component (index in the stage plan).
    pub component: usize,
    /// Share of its n-grams found in earlier stages.
    pub grounding: f64,
    /// Its id.
    pub id: String,
    /// The start of the answer (what the report shows).
    pub answer: String,
}

impl GroundingRecord {
    /// The record of one answer.
    pub fn new(doc: &RoutedDocument, grounding: f64) -> Self {
        let answer = doc.answer.as_deref().unwrap_or(&doc.text);
        Self {
            sequence: doc.sequence,
            component: doc.component,
            grounding,
            id: doc.id.clone(),
            answer: answer.chars().take(crate::report::SNIPPET_CHARS).collect(),
        }
    }
}

/// The `mix_report.json` of a stage written by a job array: what the layout holds, `used_ids` the
/// ids of earlier stages, and `groundings` the QA answers' records (`None`: the stage checks none,
/// as the first stage or one after stages without text).
pub fn layout_report(
    stage: &str,
    mix: &Mix,
    plan: &StagePlan,
    layout: &StageLayout,
    used_ids: &HashSet<String>,
    groundings: Option<Vec<GroundingRecord>>,
) -> MixReport {
    let n = plan.components.len();
    let mut counts = StageCounts {
        tokens: vec![0; n],
        documents: vec![0; n],
        seen_before: vec![0; n],
        dropped: vec![0; n],
    };
    for s in &layout.slots {
        let inventory = &plan.components[s.component].1;
        counts.tokens[s.component] += inventory.tokens[s.doc];
        counts.documents[s.component] += 1;
        if used_ids.contains(&inventory.ids[s.doc]) {
            counts.seen_before[s.component] += 1;
        }
    }
    let groundings: Vec<Option<Grounding>> = match groundings {
        None => vec![None; n],
        Some(mut records) => {
            // In merge order, as one process accumulates them.
            records.sort_by_key(|r| r.sequence);
            let mut builders: Vec<GroundingBuilder> =
                (0..n).map(|_| GroundingBuilder::default()).collect();
            for r in records {
                if let Some(builder) = builders.get_mut(r.component) {
                    builder.add(&r.id, &r.answer, r.grounding);
                }
            }
            builders.into_iter().map(|b| Some(b.finish(10))).collect()
        }
    };
    stage_report(stage, mix, plan, &counts, groundings)
}
