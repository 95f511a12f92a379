//! Continual-pretraining packing: documents ended with EOS, concatenated and cut into rows of
//! `seq_len`; a document that does not fit continues in the next row as a new segment.
use dapt_core::PackedRow;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Packing options (`[pack]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PackOptions {
    /// Tokens per training row.
    pub seq_len: usize,
    /// Share of documents held out for evaluation (decided by seed and document id).
    pub heldout_fraction: f64,
    /// Rows per Parquet shard.
    pub rows_per_shard: usize,
    /// Token appended after each document.
    pub eos_token: String,
    /// Token that fills the end of the last row.
    pub pad_token: String,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            seq_len: 2048,
            heldout_fraction: 0.0,
            rows_per_shard: 8192,
            eos_token: "<|endoftext|>".into(),
            pad_token: "<|endoftext|>".into(),
        }
    }
}

/// Validated packing settings.
#[derive(Clone, Debug, Serialize)]
pub struct PackSettings {
    /// Tokens per row.
    pub seq_len: usize,
    /// Share of documents held out (chosen by seed and id), in [0, 1).
    pub heldout_fraction: f64,
    /// Rows per Parquet shard.
    pub rows_per_shard: usize,
    /// Token that ends every document.
    pub eos_token: String,
    /// Token that pads the last row.
    pub pad_token: String,
    /// Name stem of the shards (`part` → `part-00000.parquet`); job `i` of an array of `n` writes
    /// `part-I-of-N-00000.parquet`, so that the jobs' shards sit side by side.
    #[serde(skip)]
    pub shard_stem: String,
}

impl TryFrom<PackOptions> for PackSettings {
    type Error = Error;

    fn try_from(options: PackOptions) -> Result<Self> {
        let setting = |key: &str, reason: &str| Error::Setting {
            key: format!("pack.{key}"),
            reason: reason.into(),
        };
        if options.seq_len < 2 {
            return Err(setting("seq_len", "must be at least 2"));
        }
        if !(0.0..1.0).contains(&options.heldout_fraction) {
            return Err(setting("heldout_fraction", "must be in [0, 1)"));
        }
        if options.rows_per_shard == 0 {
            return Err(setting("rows_per_shard", "must be positive"));
        }
        Ok(Self {
            shard_stem: "part".into(),
            seq_len: options.seq_len,
            heldout_fraction: options.heldout_fraction,
            rows_per_shard: options.rows_per_shard,
            eos_token: options.eos_token,
            pad_token: options.pad_token,
        })
    }
}

/// Facts about one packing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackStats {
    /// Documents packed.
    pub documents: u64,
    /// Tokens including the EOS after each document.
    pub tokens: u64,
    /// Rows written.
    pub rows: u64,
    /// Padding tokens in them.
    pub pad_tokens: u64,
    /// Share of row positions holding tokens.
    pub fill: f64,
}

/// Decides, per document id, whether it is held out: a function of (seed, id) only.
pub fn split_heldout(seed: u64, fraction: f64, ids: &[String]) -> Vec<bool> {
    let stage = dapt_core::order::stage_seed(seed, "heldout", 0);
    ids.iter()
        .map(|id| dapt_core::order::fraction(dapt_core::order::key_with(stage, id)) < fraction)
        .collect()
}

/// Packs tokenised documents, in the order given, into rows of `seq_len`; `sources` (one per
/// document, or empty) label the segments.
pub fn pack_cpt(
    documents: &[Vec<u32>],
    sources: &[String],
    eos_id: u32,
    pad_id: u32,
    seq_len: usize,
) -> (Vec<PackedRow>, PackStats) {
    let mut packer = CptPacker::new(eos_id, pad_id, seq_len);
    for (index, document) in documents.iter().enumerate() {
        packer.push(document, sources.get(index).map(String::as_str));
    }
    let mut rows = packer.take_rows();
    let (last, stats) = packer.finish();
    rows.extend(last);
    (rows, stats)
}

/// Incremental CPT packing: documents go in one at a time, finished rows come out as they fill.
pub struct CptPacker {
    eos_id: u32,
    pad_id: u32,
    seq_len: usize,
    ids: Vec<i32>,
    segments: Vec<i32>,
    labels: Vec<String>,
    rows: Vec<PackedRow>,
    stats: PackStats,
}

impl CptPacker {
    /// A packer that ends documents with `eos_id` and pads rows of `seq_len` tokens with `pad_id`.
    pub fn new(eos_id: u32, pad_id: u32, seq_len: usize) -> Self {
        Self {
            eos_id,
            pad_id,
            seq_len,
            ids: Vec::with_capacity(seq_len),
            segments: Vec::new(),
            labels: Vec::new(),
            rows: Vec::new(),
            stats: PackStats::default(),
        }
    }

    /// Appends a document (EOS added), labelling its segments with `source` if given.
    pub fn push(&mut self, document: &[u32], source: Option<&str>) {
        self.stats.documents += 1;
        self.stats.tokens += document.len() as u64 + 1;
        let mut rest = document
            .iter()
            .copied()
            .chain(std::iter::once(self.eos_id))
            .peekable();
        while rest.peek().is_some() {
            let space = self.seq_len - self.ids.len();
            let before = self.ids.len();
            self.ids.extend(rest.by_ref().take(space).map(|t| t as i32));
            self.segments.push((self.ids.len() - before) as i32);
            if let Some(source) = source {
                self.labels.push(source.to_string());
            }
            if self.ids.len() == self.seq_len {
                self.finish_row();
            }
        }
    }

    fn finish_row(&mut self) {
        let used = self.ids.len();
        let mut loss_mask = vec![true; used];
        loss_mask.resize(self.seq_len, false);
        self.ids.resize(self.seq_len, self.pad_id as i32);
        self.rows.push(PackedRow {
            input_ids: std::mem::replace(&mut self.ids, Vec::with_capacity(self.seq_len)),
            segment_lengths: std::mem::take(&mut self.segments),
            loss_mask,
            segment_sources: std::mem::take(&mut self.labels),
        });
        self.stats.rows += 1;
        self.stats.pad_tokens += (self.seq_len - used) as u64;
    }

    /// Rows finished so far and not yet taken.
    pub fn ready(&self) -> usize {
        self.rows.len()
    }

    /// Takes the finished rows.
    pub fn take_rows(&mut self) -> Vec<PackedRow> {
        std::mem::take(&mut self.rows)
    }

    /// Pads the last row; returns the rows not yet taken and the statistics of the whole packing.
    pub fn finish(mut self) -> (Vec<PackedRow>, PackStats) {
        if !self.ids.is_empty() {
            self.finish_row();
        }
        let positions = self.stats.rows * self.seq_len as u64;
        self.stats.fill = if positions == 0 {
            0.0
        } else {
            (positions - self.stats.pad_tokens) as f64 / positions as f64
        };
        (self.rows, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_continue_across_rows_as_new_segments() {
        let docs = vec![vec![10, 11, 12], vec![20, 21, 22, 23, 24, 25], vec![30]];
        let sources: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (rows, stats) = pack_cpt(&docs, &sources, 1, 0, 4);
        let ids: Vec<Vec<i32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
        assert_eq!(
            ids,
            [
                vec![10, 11, 12, 1],
                vec![20, 21, 22, 23],
                vec![24, 25, 1, 30],
                vec![1, 0, 0, 0]
            ]
        );
        let segments: Vec<Vec<i32>> = rows.iter().map(|r| r.segment_lengths.clone()).collect();
        assert_eq!(segments, [vec![4], vec![4], vec![3, 1], vec![1]]);
        let labels: Vec<Vec<String>> = rows.iter().map(|r| r.segment_sources.clone()).collect();
        assert_eq!(labels, [vec!["a"], vec!["b"], vec!["b", "c"], vec!["c"]]);
        assert_eq!(rows[3].loss_mask, [true, false, false, false]);
        for (i, row) in rows.iter().enumerate() {
            row.validate(i, 4, 0).unwrap();
        }
        assert_eq!(stats.tokens, 13);
        assert_eq!(stats.pad_tokens, 3);
        assert_eq!(stats.rows, 4);
    }

    #[test]
    fn heldout_split_depends_on_seed_and_id_only() {
        let ids: Vec<String> = (0..2000).map(|i| format!("doc-{i}")).collect();
        let a = split_heldout(1, 0.1, &ids);
        let mut reversed = ids.clone();
        reversed.reverse();
        let mut b = split_heldout(1, 0.1, &reversed);
        b.reverse();
        assert_eq!(a, b);
        let share = a.iter().filter(|&&h| h).count() as f64 / ids.len() as f64;
        assert!((share - 0.1).abs() < 0.03, "{share}");
        assert_ne!(a, split_heldout(2, 0.1, &ids));
    }
}
