//! Continual-pretraining packing: documents ended with EOS, concatenated and cut into rows of
//! `seq_len`; a document that does not fit continues in the next row as a new segment.
use dapt_core::hash::{sub_seed, unit_interval};
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
    pub seq_len: usize,
    pub heldout_fraction: f64,
    pub rows_per_shard: usize,
    pub eos_token: String,
    pub pad_token: String,
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
    pub documents: u64,
    /// Tokens including the EOS after each document.
    pub tokens: u64,
    pub rows: u64,
    pub pad_tokens: u64,
    /// Share of row positions holding tokens.
    pub fill: f64,
}

/// Decides, per document id, whether it is held out: a function of (seed, id) only.
pub fn split_heldout(seed: u64, fraction: f64, ids: &[String]) -> Vec<bool> {
    let seed = sub_seed(seed, "heldout", 0);
    ids.iter()
        .map(|id| unit_interval(seed, id) < fraction)
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
    let mut rows = Vec::new();
    let mut ids: Vec<i32> = Vec::with_capacity(seq_len);
    let mut segments: Vec<i32> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let mut stats = PackStats::default();
    let finish_row = |ids: &mut Vec<i32>,
                      segments: &mut Vec<i32>,
                      labels: &mut Vec<String>,
                      rows: &mut Vec<PackedRow>| {
        let used = ids.len();
        let mut loss_mask = vec![true; used];
        loss_mask.resize(seq_len, false);
        ids.resize(seq_len, pad_id as i32);
        rows.push(PackedRow {
            input_ids: std::mem::replace(ids, Vec::with_capacity(seq_len)),
            segment_lengths: std::mem::take(segments),
            loss_mask,
            segment_sources: std::mem::take(labels),
        });
        (seq_len - used) as u64
    };
    for (index, document) in documents.iter().enumerate() {
        stats.documents += 1;
        stats.tokens += document.len() as u64 + 1;
        let mut rest = document
            .iter()
            .copied()
            .chain(std::iter::once(eos_id))
            .peekable();
        while rest.peek().is_some() {
            let space = seq_len - ids.len();
            let before = ids.len();
            ids.extend(rest.by_ref().take(space).map(|t| t as i32));
            segments.push((ids.len() - before) as i32);
            if let Some(source) = sources.get(index) {
                labels.push(source.clone());
            }
            if ids.len() == seq_len {
                stats.pad_tokens += finish_row(&mut ids, &mut segments, &mut labels, &mut rows);
            }
        }
    }
    if !ids.is_empty() {
        stats.pad_tokens += finish_row(&mut ids, &mut segments, &mut labels, &mut rows);
    }
    stats.rows = rows.len() as u64;
    let positions = stats.rows * seq_len as u64;
    stats.fill = if positions == 0 {
        0.0
    } else {
        (positions - stats.pad_tokens) as f64 / positions as f64
    };
    (rows, stats)
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
