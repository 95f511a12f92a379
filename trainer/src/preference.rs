//! Preference objectives: DPO (Rafailov et al. 2023) with the `sigmoid`, `hinge` (SLiC), `ipo` and
//! `robust` (rDPO) losses, and SimPO (Meng et al. 2024), reference-free.
//!
//! Rows hold pairs: `dapt pack --preference` writes each example as two segments of one row, the
//! prompt + chosen response and then the prompt + rejected response (segment sources `chosen`,
//! `rejected`), with `loss_mask` on the response tokens only; segment attention keeps the two apart.
//! A response's log-probability is the sum of its target tokens' log-probabilities (SimPO and IPO:
//! their mean per token), as TRL computes it.
//!
//! DPO compares with a frozen reference model: the stage's input model. Its log-probabilities are
//! computed once per row before the first step ([`ReferenceLogps::compute`]) — with LoRA by turning
//! the adapters off, so no second copy of the weights is ever held — and kept beside the stage's
//! checkpoints, so a resumed run reads them back instead of computing them from moved weights.
use std::collections::HashMap;
use std::path::Path;

use dapt_core::PackedRow;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use xxhash_rust::xxh3::Xxh3;

use crate::batch::Objective;
use crate::error::{io_error, json_error};
use crate::train::TrainOptions;
use crate::weights::write_atomically;
use crate::{Batch, CausalLm, Error, Result};

/// The loss of `objective = "dpo"` on the (β-scaled) difference of the chosen and rejected
/// log-ratios against the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// `−log σ(β·Δ)` (with label smoothing ε: `−(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ)`, conservative DPO).
    #[default]
    Sigmoid,
    /// `max(0, 1 − β·Δ)` (SLiC).
    Hinge,
    /// `(Δ̄ − 1/(2β))²` on per-token mean log-ratios (IPO, as TRL normalises it).
    Ipo,
    /// `(−(1−ε)·log σ(β·Δ) + ε·log σ(−β·Δ)) / (1 − 2ε)` (robust DPO under label noise ε).
    Robust,
}

/// What a step (or an evaluation) measured over its pairs: means per pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// Pairs measured.
    pub pairs: i64,
    /// Mean preference loss.
    pub loss: f64,
    /// Share of pairs whose chosen response gets the higher reward.
    pub reward_accuracy: f64,
    /// Mean of chosen minus rejected reward.
    pub reward_margin: f64,
    /// Mean reward of the chosen responses (DPO: `β·(log π − log π_ref)`; SimPO: `β·` mean log π).
    pub chosen_rewards: f64,
    /// Mean reward of the rejected responses.
    pub rejected_rewards: f64,
    /// Mean log-probability of the chosen responses: summed over their tokens (SimPO: the mean
    /// per token, what its reward scales), as TRL reports them.
    pub chosen_logps: f64,
    /// Mean log-probability of the rejected responses.
    pub rejected_logps: f64,
}

/// Sums behind [`PreferenceMetrics`], added over micro-batches (and ranks) before the means.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PairSums {
    values: [f64; 8],
}

impl PairSums {
    /// The sums as numbers (to all-reduce them).
    pub fn to_vec(self) -> Vec<f64> {
        self.values.to_vec()
    }

    /// Sums from [`PairSums::to_vec`]'s numbers.
    pub fn from_slice(values: &[f64]) -> Self {
        let mut out = Self::default();
        for (o, v) in out.values.iter_mut().zip(values) {
            *o = *v;
        }
        out
    }

    /// Adds another batch's sums.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.values.iter_mut().zip(other.values) {
            *a += b;
        }
    }

    /// Pairs counted.
    pub fn pairs(&self) -> i64 {
        self.values[0].round() as i64
    }

    /// The means.
    pub fn finish(&self) -> PreferenceMetrics {
        let n = self.values[0].max(1.0);
        let v = &self.values;
        PreferenceMetrics {
            pairs: self.pairs(),
            loss: v[1] / n,
            reward_accuracy: v[2] / n,
            reward_margin: v[3] / n,
            chosen_rewards: v[4] / n,
            rejected_rewards: v[5] / n,
            chosen_logps: v[6] / n,
            rejected_logps: v[7] / n,
        }
    }
}

/// A row's identity in the reference cache: its ids, segment lengths and loss mask.
pub fn row_key(row: &PackedRow) -> u64 {
    let mut hasher = Xxh3::new();
    for id in &row.input_ids {
        hasher.update(&id.to_le_bytes());
    }
    hasher.update(&[0xff]);
    for length in &row.segment_lengths {
        hasher.update(&length.to_le_bytes());
    }
    hasher.update(&[0xfe]);
    for &m in &row.loss_mask {
        hasher.update(&[u8::from(m)]);
    }
    hasher.digest()
}

/// Refuses rows that are not pairs: an odd number of segments, segment labels other than
/// `chosen`, `rejected` in turn (when labelled), or a response without target tokens. `first` numbers
/// the rows in messages.
pub fn check_pair_rows<'r>(
    rows: impl IntoIterator<Item = &'r PackedRow>,
    first: usize,
) -> Result<()> {
    for (i, row) in rows.into_iter().enumerate() {
        let bad = |reason: String| {
            Error::Setting {
            key: "train.objective".into(),
            reason: format!(
                "row {}: {reason}; preference objectives train on rows of (chosen, rejected) pairs from `dapt pack --preference`",
                first + i
            ),
        }
        };
        if row.segment_lengths.is_empty() || row.segment_lengths.len() % 2 != 0 {
            return Err(bad(format!(
                "{} segments, not whole pairs",
                row.segment_lengths.len()
            )));
        }
        if !row.segment_sources.is_empty() {
            for (s, source) in row.segment_sources.iter().enumerate() {
                let want = if s % 2 == 0 { "chosen" } else { "rejected" };
                if source != want {
                    return Err(bad(format!(
                        "segment {s} is labelled {source:?}, not {want:?}"
                    )));
                }
            }
        }
        let mut start = 0usize;
        for (s, &length) in row.segment_lengths.iter().enumerate() {
            let end = start + length as usize;
            // A target is a masked token after the segment's first.
            let targets = row.loss_mask[(start + 1).min(end)..end]
                .iter()
                .filter(|m| **m)
                .count();
            if targets == 0 {
                return Err(bad(format!("segment {s} has no response tokens")));
            }
            start = end;
        }
    }
    Ok(())
}

/// Per segment of `batch` (numbered as [`Batch::target_segments`]), the sum of its target tokens'
/// log-probabilities (with gradients) and how many targets it has, both `[segments]` float.
pub fn segment_logps(model: &CausalLm, batch: &Batch) -> (Tensor, Tensor) {
    let token_logps = model.token_losses(batch).view([-1]).neg();
    let device = token_logps.device();
    let index = batch.target_segments.to_device(device);
    let counted = index.ge(0);
    let index = index.masked_select(&counted);
    let values = token_logps.masked_select(&counted);
    let zeros = Tensor::zeros([batch.segment_count], (Kind::Float, device));
    let sums = zeros.index_add(0, &index, &values.to_kind(Kind::Float));
    let counts = zeros.index_add(0, &index, &values.ones_like().to_kind(Kind::Float));
    (sums, counts)
}

/// One batch's per-pair losses (to sum and back-propagate) and the sums of what they measured.
pub struct PairTerms {
    /// `[pairs]` losses, with gradients.
    pub losses: Tensor,
    /// Loss, rewards and log-probabilities summed over the pairs.
    pub sums: PairSums,
}

/// The objective's per-pair losses from segment log-probability sums and target counts
/// ([`segment_logps`]; chosen at even, rejected at odd segments) and, for DPO, the reference
/// model's sums for the same segments.
pub fn pair_terms(
    options: &TrainOptions,
    logps: &Tensor,
    counts: &Tensor,
    reference: Option<&Tensor>,
) -> Result<PairTerms> {
    let n = logps.size()[0];
    let (beta, epsilon) = (options.beta, options.label_smoothing);
    let even = |t: &Tensor| t.slice(0, 0, n, 2);
    let odd = |t: &Tensor| t.slice(0, 1, n, 2);
    let (chosen, rejected) = (even(logps), odd(logps));
    let (chosen_n, rejected_n) = (even(counts).clamp_min(1.0), odd(counts).clamp_min(1.0));
    let smoothed = |x: &Tensor| {
        // −(1−ε)·log σ(x) − ε·log σ(−x)
        (x.log_sigmoid() * (1.0 - epsilon) + x.neg().log_sigmoid() * epsilon).neg()
    };
    let (losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) =
        match options.objective {
            Objective::Dpo => {
                let reference = reference.ok_or_else(|| Error::Setting {
                    key: "train.objective".into(),
                    reason: "`dpo` needs the reference model's log-probabilities".into(),
                })?;
                let reference = reference.to_device(logps.device()).to_kind(Kind::Float);
                let chosen_ratio = &chosen - even(&reference);
                let rejected_ratio = &rejected - odd(&reference);
                let delta = &chosen_ratio - &rejected_ratio;
                let losses = match options.loss {
                    PreferenceLoss::Sigmoid => smoothed(&(&delta * beta)),
                    PreferenceLoss::Hinge => ((&delta * beta).neg() + 1.0).relu(),
                    PreferenceLoss::Ipo => {
                        let mean_delta = &chosen_ratio / &chosen_n - &rejected_ratio / &rejected_n;
                        (mean_delta - 1.0 / (2.0 * beta)).square()
                    }
                    PreferenceLoss::Robust => {
                        let x = &delta * beta;
                        let clean = x.log_sigmoid() * (1.0 - epsilon);
                        let flipped = x.neg().log_sigmoid() * epsilon;
                        (flipped - clean) / (1.0 - 2.0 * epsilon)
                    }
                };
                (
                    losses,
                    chosen_ratio.detach() * beta,
                    rejected_ratio.detach() * beta,
                    chosen.detach(),
                    rejected.detach(),
                )
            }
            Objective::Simpo => {
                let chosen_mean = &chosen / &chosen_n;
                let rejected_mean = &rejected / &rejected_n;
                let logits = &chosen_mean - &rejected_mean - options.simpo_gamma / beta;
                (
                    smoothed(&(logits * beta)),
                    chosen_mean.detach() * beta,
                    rejected_mean.detach() * beta,
                    chosen_mean.detach(),
                    rejected_mean.detach(),
                )
            }
            other => {
                return Err(Error::Setting {
                    key: "train.objective".into(),
                    reason: format!("{other:?} is not a preference objective"),
                })
            }
        };
    let sum = |t: &Tensor| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    let sums = PairSums {
        values: [
            (n / 2) as f64,
            sum(&losses.detach()),
            sum(&chosen_rewards.gt_tensor(&rejected_rewards)),
            sum(&(&chosen_rewards - &rejected_rewards)),
            sum(&chosen_rewards),
            sum(&rejected_rewards),
            sum(&chosen_logps),
            sum(&rejected_logps),
        ],
    };
    Ok(PairTerms { losses, sums })
}

/// The reference model's log-probability sums per segment of every row it has seen, by row
/// ([`row_key`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceLogps {
    by_row: HashMap<u64, Vec<f64>>,
}

#[derive(Serialize, Deserialize)]
struct ReferenceFile {
    rows: Vec<ReferenceRow>,
}

#[derive(Serialize, Deserialize)]
struct ReferenceRow {
    key: String,
    logps: Vec<f64>,
}

impl ReferenceLogps {
    /// Computes the sums of `rows` with `model` as its frozen base: adapters off, no dropout, no
    /// gradients.
    pub fn compute(
        model: &CausalLm,
        rows: &[PackedRow],
        batch_size: usize,
        device: Device,
    ) -> Result<Self> {
        crate::train::check_rows(model, rows, 0)?;
        check_pair_rows(rows, 0)?;
        let (was_training, had_adapters) = (model.is_training(), model.adapters_enabled());
        model.set_training(false);
        model.set_adapters_enabled(false);
        let mut by_row = HashMap::new();
        let result = tch::no_grad(|| -> Result<()> {
            for chunk in rows.chunks(batch_size.max(1)) {
                let refs: Vec<&PackedRow> = chunk.iter().collect();
                let batch = Batch::from_rows_with(&refs, device, Objective::Dpo);
                let (sums, _) = segment_logps(model, &batch);
                let sums = Vec::<f64>::try_from(&sums.to_kind(Kind::Double)).map_err(|e| {
                    Error::Setting {
                        key: "reference".into(),
                        reason: format!("reference log-probabilities: {e}"),
                    }
                })?;
                let mut at = 0;
                for row in chunk {
                    let segments = row.segment_lengths.len();
                    by_row.insert(row_key(row), sums[at..at + segments].to_vec());
                    at += segments;
                }
            }
            Ok(())
        });
        model.set_adapters_enabled(had_adapters);
        model.set_training(was_training);
        result?;
        Ok(Self { by_row })
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.by_row.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.by_row.is_empty()
    }

    /// Whether every row of `rows` is held.
    pub fn covers<'r>(&self, rows: impl IntoIterator<Item = &'r PackedRow>) -> bool {
        rows.into_iter()
            .all(|row| self.by_row.contains_key(&row_key(row)))
    }

    /// The sums of `rows`' segments in order, `[segments]` on `device`.
    pub fn for_rows(&self, rows: &[&PackedRow], device: Device) -> Result<Tensor> {
        let mut values = Vec::new();
        for row in rows {
            let sums = self.by_row.get(&row_key(row)).ok_or_else(|| Error::Setting {
                key: "reference".into(),
                reason: "a training row has no reference log-probabilities (the cache was made for other data)".into(),
            })?;
            values.extend_from_slice(sums);
        }
        Ok(Tensor::from_slice(&values).to_device(device))
    }

    /// Reads a cache written by [`ReferenceLogps::save`]; `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path)(e)),
        };
        let file: ReferenceFile =
            serde_json::from_str(&text).map_err(json_error(path.display()))?;
        let mut by_row = HashMap::with_capacity(file.rows.len());
        for row in file.rows {
            let key = u64::from_str_radix(&row.key, 16).map_err(|e| Error::File {
                path: path.display().to_string(),
                reason: format!("row key {:?}: {e}", row.key),
            })?;
            by_row.insert(key, row.logps);
        }
        Ok(Some(Self { by_row }))
    }

    /// Writes the cache atomically (rows in key order, so the file is the same for the same rows).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut keys: Vec<&u64> = self.by_row.keys().collect();
        keys.sort();
        let file = ReferenceFile {
            rows: keys
                .into_iter()
                .map(|k| ReferenceRow {
                    key: format!("{k:016x}"),
                    logps: self.by_row[k].clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&file).map_err(json_error(path.display()))?;
        write_atomically(path, &json)
    }
}

/// The objective's loss and reward statistics over `rows` (no gradients; dropout off).
pub fn preference_eval(
    model: &CausalLm,
    rows: &[PackedRow],
    batch_size: usize,
    options: &TrainOptions,
    reference: Option<&ReferenceLogps>,
    device: Device,
) -> Result<PreferenceMetrics> {
    crate::train::check_rows(model, rows, 0)?;
    check_pair_rows(rows, 0)?;
    let was = model.is_training();
    model.set_training(false);
    let result = tch::no_grad(|| -> Result<PairSums> {
        let mut sums = PairSums::default();
        for chunk in rows.chunks(batch_size.max(1)) {
            let refs: Vec<&PackedRow> = chunk.iter().collect();
            let batch = Batch::from_rows_with(&refs, device, options.objective);
            let (logps, counts) = segment_logps(model, &batch);
            let reference = reference.map(|r| r.for_rows(&refs, device)).transpose()?;
            sums.add(&pair_terms(options, &logps, &counts, reference.as_ref())?.sums);
        }
        Ok(sums)
    });
    model.set_training(was);
    Ok(result?.finish())
}
