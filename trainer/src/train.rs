//! The training loop: AdamW with decoupled weight decay (none on norms/biases), linear warmup then
//! cosine or linear decay, gradient accumulation with the loss averaged over all target tokens of the
//! window, global gradient-norm clipping, bf16 autocast on CUDA, periodic held-out loss, a JSONL
//! metrics log, and atomic checkpoints (trainable weights, optimiser moments, step, data cursor) from
//! which `resume` continues so that the loss curve equals the uninterrupted run's.
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use dapt_core::hash::sub_seed;
use dapt_core::PackedRow;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::batch::Objective;
use crate::data::{DataCursor, RowSource};
use crate::dist::{Dist, ShardLayout};
use crate::optim::AdamW;
use crate::preference::{
    check_pair_rows, pair_terms, preference_eval, segment_logps, PairSums, PreferenceLoss,
    PreferenceMetrics, ReferenceLogps,
};
use crate::weights::{file_error, load_into, read_safetensors, save_safetensors, write_atomically};
use crate::{Batch, CausalLm, Error, Result};

/// Shape of the learning-rate decay after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the peak to the floor.
    #[default]
    Cosine,
    /// A straight line from the peak to the floor.
    Linear,
    /// The peak throughout.
    Constant,
}

/// Training options (`[train]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    /// Optimiser steps.
    pub steps: usize,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accumulation: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Final learning rate as a share of the peak.
    pub min_lr_ratio: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Decay after warmup: cosine, linear or constant.
    pub schedule: Schedule,
    /// Decoupled weight decay (not applied to norms and biases).
    pub weight_decay: f64,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// Maximum global gradient L2 norm; 0 disables clipping.
    pub grad_clip: f64,
    /// `cpt`: loss on every token of every segment; `sft`: only where `loss_mask` is set; `dpo`
    /// and `simpo`: preference pairs (rows from `dapt pack --preference`), see `beta`, `loss`.
    pub objective: Objective,
    /// Preference objectives: the inverse temperature β of the implicit reward (TRL's `beta`).
    pub beta: f64,
    /// `dpo`: `sigmoid` (the DPO paper's), `hinge` (SLiC), `ipo` (IPO, on per-token mean
    /// log-ratios, as TRL) or `robust` (rDPO, unbiased under `label_smoothing` label noise).
    pub loss: PreferenceLoss,
    /// Preference objectives: the share of pairs assumed to be labelled the wrong way round
    /// (conservative DPO for `sigmoid` and `simpo`; `robust` corrects for it); 0 for none.
    pub label_smoothing: f64,
    /// `simpo`: the target reward margin γ between chosen and rejected (TRL's `simpo_gamma`).
    pub simpo_gamma: f64,
    /// bf16 autocast on CUDA (a CPU trains in float32 unless `bf16_cpu`).
    pub bf16: bool,
    /// With `bf16`: autocast on the CPU too. Matrix products and attention run in bf16 on AMX or
    /// AVX512-BF16 (about 1.6× a float32 LoRA step of SmolLM2-135M on 2 Sapphire Rapids cores);
    /// refused on a processor without them, where LibTorch emulates bf16 more slowly than float32.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16_cpu: bool,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Held-out loss every this many steps (0: never; needs held-out rows).
    pub eval_every: usize,
    /// Peak accelerator throughput in TFLOP/s for the MFU estimate (0: not reported).
    pub peak_tflops: f64,
    /// Multiplies the learning rate of the embedding tables and of trainable embedding rows (new
    /// tokens' rows learn from few occurrences; a LoRA stage's adapters keep `learning_rate`).
    pub embedding_lr_scale: f64,
    /// The steps the learning-rate schedule decays over (default: `steps`). A run of fewer steps
    /// with the horizon of a longer one is the start of that run: successive halving stops trials
    /// at a budget and continues the best from their checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_steps: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            grad_accumulation: 1,
            learning_rate: 3e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            objective: Objective::Cpt,
            beta: 0.1,
            loss: PreferenceLoss::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            bf16: true,
            bf16_cpu: false,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            eval_every: 0,
            peak_tflops: 0.0,
            embedding_lr_scale: 1.0,
            schedule_steps: None,
        }
    }
}

/// Validated training settings: [`TrainOptions`] that passed the checks of
/// `TrainSettings::try_from`. A [`Trainer`] takes only these, so a run from a config file, a recipe,
/// a sweep or code is checked by the same rules, once. The options are read through `Deref`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct TrainSettings {
    options: TrainOptions,
}

impl TryFrom<TrainOptions> for TrainSettings {
    type Error = Error;

    /// Checks the options; errors name the key (`train.steps`, …).
    fn try_from(options: TrainOptions) -> Result<Self> {
        options.check()?;
        Ok(Self { options })
    }
}

impl std::ops::Deref for TrainSettings {
    type Target = TrainOptions;

    fn deref(&self) -> &TrainOptions {
        &self.options
    }
}

impl TrainSettings {
    /// The validated options.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }
}

impl TrainOptions {
    /// The checks behind `TrainSettings::try_from`; errors name the key.
    fn check(&self) -> Result<()> {
        let bad = |key: &str, reason: &str| Error::Setting {
            key: format!("train.{key}"),
            reason: reason.into(),
        };
        if self.steps == 0 {
            return Err(bad("steps", "must be positive"));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be positive"));
        }
        if self.grad_accumulation == 0 {
            return Err(bad("grad_accumulation", "must be positive"));
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            return Err(bad("learning_rate", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(bad("min_lr_ratio", "must be in [0, 1]"));
        }
        if self.weight_decay < 0.0 {
            return Err(bad("weight_decay", "must not be negative"));
        }
        if self.grad_clip < 0.0 {
            return Err(bad("grad_clip", "must not be negative"));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(bad("beta1", "beta1 and beta2 must be in [0, 1)"));
        }
        if self.keep_checkpoints == 0 {
            return Err(bad("keep_checkpoints", "must be at least 1"));
        }
        if !(self.embedding_lr_scale.is_finite() && self.embedding_lr_scale > 0.0) {
            return Err(bad("embedding_lr_scale", "must be a positive number"));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(bad("beta", "must be a positive number"));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(bad("label_smoothing", "must be in [0, 0.5)"));
        }
        if self.label_smoothing > 0.0
            && self.objective == Objective::Dpo
            && matches!(self.loss, PreferenceLoss::Hinge | PreferenceLoss::Ipo)
        {
            return Err(bad(
                "label_smoothing",
                "applies to the `sigmoid` and `robust` losses (and `simpo`), not to `hinge` or `ipo`",
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(bad("simpo_gamma", "must be a number"));
        }
        Ok(())
    }

    /// Learning rate at a step (0-based): linear warmup, then decay to `min_lr_ratio` of the peak.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let horizon = self.schedule_steps.unwrap_or(self.steps);
        let decay_steps = horizon.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = peak * self.min_lr_ratio;
        match self.schedule {
            Schedule::Cosine => {
                floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Linear => peak - (peak - floor) * progress,
            Schedule::Constant => peak,
        }
    }
}

/// Metrics of one optimiser step (one line of the JSONL log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step (0-based).
    pub step: usize,
    /// Mean loss per target token over the step's window.
    pub loss: f64,
    /// Learning rate of the step.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens in the step.
    pub tokens: i64,
    /// Target tokens per second of wall time.
    pub tokens_per_second: f64,
    /// Model FLOPs utilisation, when `peak_tflops` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Mean held-out loss after this step, when evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_loss: Option<f64>,
    /// Preference objectives: the step's reward margin and accuracy and the chosen/rejected
    /// log-probabilities, means over its pairs (`loss` is then the mean loss per pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
}

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: usize,
    /// Where the data reader continues.
    pub cursor: DataCursor,
    /// The run's seed.
    pub seed: u64,
    /// Optimiser steps taken (equals `step`).
    pub optimizer_steps: i64,
}

/// A training run over one model.
pub struct Trainer<'a> {
    /// The model.
    pub model: &'a CausalLm,
    /// The VarStore whose variables train: the model's own (full fine-tuning) or the adapters' (LoRA).
    pub trainable: &'a nn::VarStore,
    /// Validated training settings.
    pub options: &'a TrainSettings,
    /// The run's seed (data order, dropout).
    pub seed: u64,
    /// Held-out rows for `eval_every`.
    pub heldout: Option<&'a [PackedRow]>,
    /// Keep input/output embedding rows below this id unchanged (train only new tokens' rows).
    pub freeze_embeddings_below: Option<i64>,
    /// Where checkpoints go (`step-00000010/`, `latest`); none: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// The JSONL metrics log; on resume, lines of steps not yet redone are dropped.
    pub log_path: Option<PathBuf>,
    /// Data-parallel training: this rank's process group. Each micro-batch's rows are split
    /// evenly over the ranks (rank r takes the r-th slice), gradients are summed over all ranks,
    /// and the loss is averaged over the target tokens of the whole (global) batch, so a run gives
    /// the losses and weights of one process for any number of ranks. Rank 0 alone writes
    /// checkpoints and the log and evaluates held-out rows.
    pub dist: Option<&'a Dist>,
    /// ZeRO-1: each rank keeps and updates the optimiser state of its share of the variables
    /// (whole variables, balanced by size), then every variable is sent from its owner to all.
    pub zero1: bool,
    /// `objective = "dpo"`: the reference model's log-probabilities of the training (and
    /// held-out) rows, computed before the first step ([`ReferenceLogps::compute`]).
    pub reference: Option<&'a ReferenceLogps>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Metrics of the steps run in this call (after a resume: from the resumed step on).
    pub history: Vec<StepMetrics>,
    /// The step training resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// Parameters that trained.
    pub trainable_parameters: i64,
    /// Bytes of optimiser state this rank held (all of it unless `zero1` shards it).
    pub optimizer_state_bytes: i64,
}

/// Mean loss of `model` over `rows` and the target tokens scored (no gradients, batch size does not
/// change the result). Rows with ids outside the model's vocabulary are refused.
pub fn mean_loss(
    model: &CausalLm,
    rows: &[PackedRow],
    batch_size: usize,
    objective: Objective,
    device: Device,
) -> Result<(f64, i64)> {
    check_rows(model, rows.iter(), 0)?;
    let was = model.is_training();
    model.set_training(false);
    let (sum, tokens) = tch::no_grad(|| {
        let mut sum = 0.0;
        let mut tokens = 0;
        for chunk in rows.chunks(batch_size.max(1)) {
            let refs: Vec<&PackedRow> = chunk.iter().collect();
            let batch = Batch::from_rows_with(&refs, device, objective);
            sum += model.loss_sum(&batch).double_value(&[]);
            tokens += batch.target_count;
        }
        (sum, tokens)
    });
    model.set_training(was);
    Ok((sum / tokens.max(1) as f64, tokens))
}

/// Held-out loss of `rows` under `options`' objective (no gradients): the mean loss per target
/// token, or for preference objectives the mean loss per pair, with the pairs' reward statistics
/// (DPO scores against `reference`).
pub fn heldout_loss(
    model: &CausalLm,
    rows: &[PackedRow],
    options: &TrainOptions,
    reference: Option<&ReferenceLogps>,
    device: Device,
) -> Result<(f64, Option<PreferenceMetrics>)> {
    if options.objective.is_preference() {
        let metrics = preference_eval(model, rows, options.batch_size, options, reference, device)?;
        Ok((metrics.loss, Some(metrics)))
    } else {
        let (loss, _) = mean_loss(model, rows, options.batch_size, options.objective, device)?;
        Ok((loss, None))
    }
}

/// Refuses rows whose ids have no embedding in `model` (numbered from `first`), before LibTorch
/// would index out of range.
pub fn check_rows<'r>(
    model: &CausalLm,
    rows: impl IntoIterator<Item = &'r PackedRow>,
    first: usize,
) -> Result<()> {
    let vocab_size = model.config().vocab_size;
    for (i, row) in rows.into_iter().enumerate() {
        row.check_ids(first + i, vocab_size)?;
    }
    Ok(())
}

impl<'a> Trainer<'a> {
    /// A run without held-out rows, frozen embedding rows, checkpoints or a log (set those fields to
    /// have them).
    pub fn new(
        model: &'a CausalLm,
        trainable: &'a nn::VarStore,
        options: &'a TrainSettings,
        seed: u64,
    ) -> Self {
        Self {
            model,
            trainable,
            options,
            seed,
            heldout: None,
            freeze_embeddings_below: None,
            checkpoint_dir: None,
            log_path: None,
            dist: None,
            zero1: false,
            reference: None,
        }
    }

    fn rank(&self) -> usize {
        self.dist.map_or(0, Dist::rank)
    }

    fn embedding_rows(&self) -> Vec<Tensor> {
        let mut out = vec![self.model.input_embeddings().shallow_clone()];
        if let Some(head) = self.model.output_embeddings() {
            out.push(head.shallow_clone());
        }
        out
    }

    /// Trains from step 0, or from the latest checkpoint when `resume` is set and one exists.
    pub fn run(
        &self,
        data: &mut dyn RowSource,
        resume: bool,
        mut on_step: impl FnMut(&StepMetrics),
    ) -> Result<TrainOutcome> {
        let options = self.options;
        let device = self.trainable.device();
        let (rank, world) = self.dist.map_or((0, 1), |d| (d.rank(), d.world()));
        if !options.batch_size.is_multiple_of(world) {
            return Err(Error::Setting {
                key: "train.batch_size".into(),
                reason: format!(
                    "{} rows per micro-batch do not split evenly over {world} ranks; use a multiple of {world}",
                    options.batch_size
                ),
            });
        }
        let share = options.batch_size / world;
        let mut optimizer = AdamW::new(
            self.trainable,
            options.beta1,
            options.beta2,
            options.eps,
            options.weight_decay,
        )
        .with_lr_scale(|name| {
            if name.contains("embed_tokens") || name.contains("lm_head") {
                options.embedding_lr_scale
            } else {
                1.0
            }
        });
        if self.zero1 {
            optimizer.shard(rank, world);
        }
        let trainable_parameters = optimizer.parameter_count();
        if trainable_parameters == 0 {
            return Err(Error::Setting {
                key: "train".into(),
                reason: "the model has no trainable parameters".into(),
            });
        }
        let mut start = 0;
        if resume {
            if let Some(state) = self.load_latest(&mut optimizer)? {
                tracing::info!(step = state.step, "resuming from checkpoint");
                data.seek(state.cursor)?;
                start = state.step;
            }
        }
        if let Some(dist) = self.dist {
            // Every rank starts from rank 0's weights (a model loaded or initialised differently
            // on one machine must not drift apart).
            dist.broadcast_tensors(&optimizer.tensors(), 0)?;
        }
        let layout = match (self.dist, self.zero1) {
            (Some(_), true) => Some(ShardLayout::new(optimizer.owners(), world)),
            _ => None,
        };
        let optimizer_state_bytes = optimizer.state_bytes();
        tracing::info!(
            rank,
            world,
            zero1 = self.zero1,
            optimizer_state_bytes,
            "optimiser state held by this rank"
        );
        let mut log = if rank == 0 {
            self.open_log(start)?
        } else {
            None
        };
        let frozen: Vec<(Tensor, Tensor)> = match self.freeze_embeddings_below {
            Some(rows) => self
                .embedding_rows()
                .into_iter()
                .map(|t| {
                    let kept = t.narrow(0, 0, rows.min(t.size()[0])).copy();
                    (t, kept)
                })
                .collect(),
            None => Vec::new(),
        };
        let flops_per_token = self.flops_per_token();
        let preference = options.objective.is_preference();
        if options.objective == Objective::Dpo && self.reference.is_none() {
            return Err(Error::Setting {
                key: "train.objective".into(),
                reason: "`dpo` needs the reference model's log-probabilities of the rows (computed by the stage runner before the first step); `simpo` needs none".into(),
            });
        }
        let autocast = autocasts(options, device)?;
        let mut history = Vec::new();
        self.model.set_training(true);
        self.model.set_flash_attention(autocast && device.is_cuda());
        for step in start..options.steps {
            let started = Instant::now();
            // Dropout draws depend on (seed, step) only, so a resumed run draws what the full one did.
            tch::manual_seed(sub_seed(self.seed, "train-step", step as u64) as i64);
            let learning_rate = options.learning_rate_at(step);
            let mut batches = Vec::with_capacity(options.grad_accumulation);
            // DPO: the reference's log-probabilities of each micro-batch's segments.
            let mut references = Vec::with_capacity(options.grad_accumulation);
            for _ in 0..options.grad_accumulation {
                let rows = (0..options.batch_size)
                    .map(|_| data.next_row())
                    .collect::<Result<Vec<_>>>()?;
                let checked = check_rows(self.model, &rows, 0).and_then(|()| {
                    if preference {
                        check_pair_rows(&rows, 0)
                    } else {
                        Ok(())
                    }
                });
                checked.map_err(|e| Error::Data {
                    step,
                    cursor: data.cursor(),
                    source: Box::new(e),
                })?;
                // Every rank reads the same rows (one cursor for all) and trains on its slice.
                let refs: Vec<&PackedRow> = rows[rank * share..(rank + 1) * share].iter().collect();
                batches.push(Batch::from_rows_with(&refs, device, options.objective));
                references.push(
                    self.reference
                        .filter(|_| preference)
                        .map(|r| r.for_rows(&refs, device))
                        .transpose()?,
                );
            }
            let local_tokens: i64 = batches.iter().map(|b| b.target_count).sum();
            // What the loss is averaged over: target tokens, or pairs for preference objectives.
            let local_units: i64 = if preference {
                batches.iter().map(|b| b.segment_count / 2).sum()
            } else {
                local_tokens
            };
            let (tokens, units) = match self.dist {
                Some(dist) => {
                    let sums = dist.sum_f64(&[local_tokens as f64, local_units as f64])?;
                    (sums[0].round() as i64, sums[1].round() as i64)
                }
                None => (local_tokens, local_units),
            };
            optimizer.zero_grad();
            let mut loss_sum = 0.0;
            let mut pair_sums = PairSums::default();
            for (batch, reference) in batches.iter().zip(&references) {
                let loss = if preference {
                    let terms = crate::autocast::autocast(device, autocast, || {
                        let (logps, counts) = segment_logps(self.model, batch);
                        pair_terms(options, &logps, &counts, reference.as_ref())
                    })?;
                    pair_sums.add(&terms.sums);
                    terms.losses.sum(tch::Kind::Float)
                } else {
                    crate::autocast::autocast(device, autocast, || self.model.loss_sum(batch))
                };
                loss_sum += loss.double_value(&[]);
                (loss / units.max(1) as f64).backward();
            }
            if let Some(dist) = self.dist {
                match &layout {
                    Some(layout) => layout.reduce_scatter_gradients(dist)?,
                    None => dist.all_reduce_gradients(&optimizer.tensors())?,
                }
                loss_sum = dist.sum_f64(&[loss_sum])?[0];
                if preference {
                    pair_sums = PairSums::from_slice(&dist.sum_f64(&pair_sums.to_vec())?);
                }
            }
            let loss = loss_sum / units.max(1) as f64;
            if !loss.is_finite() {
                return Err(Error::Diverged { step, loss });
            }
            let grad_norm = match (self.dist, &layout) {
                (Some(dist), Some(_)) => optimizer
                    .clip_grad_norm_by(options.grad_clip, |local| Ok(dist.sum_f64(&[local])?[0]))?,
                _ => optimizer.clip_grad_norm(options.grad_clip),
            };
            optimizer.step(learning_rate);
            if let (Some(dist), Some(layout)) = (self.dist, &layout) {
                // Each owner updated its variables: gather them on every rank.
                layout.all_gather_values(dist)?;
            }
            if !frozen.is_empty() {
                tch::no_grad(|| {
                    for (table, kept) in &frozen {
                        table.narrow(0, 0, kept.size()[0]).copy_(kept);
                    }
                });
            }
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_second = tokens as f64 / seconds;
            let heldout_loss = match (self.heldout, options.eval_every) {
                (Some(rows), every)
                    if rank == 0
                        && every > 0
                        && ((step + 1) % every == 0 || step + 1 == options.steps) =>
                {
                    Some(heldout_loss(self.model, rows, options, self.reference, device)?.0)
                }
                _ => None,
            };
            let metrics = StepMetrics {
                step,
                loss,
                learning_rate,
                grad_norm,
                tokens,
                tokens_per_second,
                mfu: (options.peak_tflops > 0.0)
                    .then(|| tokens_per_second * flops_per_token / (options.peak_tflops * 1e12)),
                heldout_loss,
                preference: preference.then(|| pair_sums.finish()),
            };
            if let Some((path, file)) = log.as_mut() {
                let line = serde_json::to_string(&metrics)
                    .map_err(crate::error::json_error(path.display()))?;
                writeln!(file, "{line}")
                    .and_then(|()| file.flush())
                    .map_err(crate::error::io_error(path.as_path()))?;
            }
            on_step(&metrics);
            history.push(metrics);
            let done = step + 1;
            let due = options.checkpoint_every > 0 && done % options.checkpoint_every == 0;
            if due || done == options.steps {
                self.save_checkpoint(&optimizer, done, data.cursor())?;
            }
        }
        self.model.set_training(false);
        Ok(TrainOutcome {
            history,
            resumed_from: start,
            trainable_parameters,
            optimizer_state_bytes,
        })
    }

    /// Forward + backward FLOPs per target token: 6 per weight plus attention scores.
    fn flops_per_token(&self) -> f64 {
        let c = self.model.config();
        let weights: i64 = self.model.input_embeddings().size().iter().product::<i64>()
            * if c.tie_word_embeddings { 1 } else { 2 };
        let per_layer =
            c.hidden_size * c.head_dim() * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
                + 3 * c.hidden_size * c.intermediate_size;
        let n = (weights + per_layer * c.num_hidden_layers) as f64;
        6.0 * n + 6.0 * (c.num_hidden_layers * c.num_attention_heads * c.head_dim()) as f64 * 512.0
    }

    fn open_log(&self, start: usize) -> Result<Option<(PathBuf, std::fs::File)>> {
        let Some(path) = &self.log_path else {
            return Ok(None);
        };
        let mut kept = String::new();
        if start > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                for line in text.lines() {
                    let step = serde_json::from_str::<StepMetrics>(line).map(|m| m.step);
                    if matches!(step, Ok(s) if s < start) {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
            }
        }
        std::fs::write(path, kept).map_err(crate::error::io_error(path))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(crate::error::io_error(path))?;
        Ok(Some((path.clone(), file)))
    }

    /// The optimiser's moments of every variable, gathered on rank 0 from their owners when the
    /// state is sharded (every rank takes part; ranks other than 0 get an empty list).
    fn gathered_moments(&self, optimizer: &AdamW) -> Result<Vec<(String, Tensor)>> {
        let (Some(dist), true) = (self.dist, self.zero1) else {
            return Ok(optimizer.state().0);
        };
        let mut out = Vec::new();
        for owner in 0..dist.world() {
            let moments = optimizer.moments_of(owner);
            if moments.is_empty() {
                continue;
            }
            let flat = if dist.rank() == owner {
                crate::dist::flatten(
                    moments
                        .iter()
                        .filter_map(|m| m.values.as_ref())
                        .flat_map(|(a, b)| [a.shallow_clone(), b.shallow_clone()]),
                )
            } else {
                let total: i64 = moments
                    .iter()
                    .map(|m| 2 * m.shape.iter().product::<i64>())
                    .sum();
                Tensor::zeros([total], (tch::Kind::Float, Device::Cpu))
            };
            dist.broadcast(&flat, owner)?;
            if dist.rank() == 0 {
                let mut offset = 0;
                for m in moments {
                    let n: i64 = m.shape.iter().product();
                    for prefix in ["exp_avg", "exp_avg_sq"] {
                        out.push((
                            format!("{prefix}.{}", m.name),
                            flat.narrow(0, offset, n).view(m.shape.as_slice()),
                        ));
                        offset += n;
                    }
                }
            }
        }
        Ok(out)
    }

    fn save_checkpoint(&self, optimizer: &AdamW, step: usize, cursor: DataCursor) -> Result<()> {
        let Some(dir) = &self.checkpoint_dir else {
            return Ok(());
        };
        let moments = self.gathered_moments(optimizer)?;
        if self.rank() != 0 {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(crate::error::io_error(dir))?;
        let name = format!("step-{step:08}");
        let final_dir = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(crate::error::io_error(&tmp))?;
        let weights: Vec<(String, Tensor)> = self.trainable.variables().into_iter().collect();
        save_safetensors(&tmp.join("trainable.safetensors"), &weights)?;
        let optimizer_steps = optimizer.steps_taken();
        save_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
        let state = CheckpointState {
            step,
            cursor,
            seed: self.seed,
            optimizer_steps,
        };
        let json = serde_json::to_string_pretty(&state)
            .map_err(crate::error::json_error(&tmp.display()))?;
        write_atomically(&tmp.join("state.json"), json.as_bytes())?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(crate::error::io_error(&final_dir))?;
        write_atomically(&dir.join("latest"), name.as_bytes())?;
        tracing::debug!(step, dir = %final_dir.display(), "checkpoint saved");
        // Prune older checkpoints (their names are ours: `step-NNNNNNNN`, `.tmp` while written).
        #[expect(
            clippy::case_sensitive_file_extension_comparisons,
            reason = "checkpoint names dapt writes itself"
        )]
        let mut existing: Vec<String> = std::fs::read_dir(dir)
            .map_err(crate::error::io_error(dir))?
            .filter_map(std::result::Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
            .collect();
        existing.sort();
        let keep = self.options.keep_checkpoints.max(1);
        if existing.len() > keep {
            for old in &existing[..existing.len() - keep] {
                let _ = std::fs::remove_dir_all(dir.join(old));
            }
        }
        Ok(())
    }

    fn load_latest(&self, optimizer: &mut AdamW) -> Result<Option<CheckpointState>> {
        let Some(dir) = &self.checkpoint_dir else {
            return Ok(None);
        };
        let latest = dir.join("latest");
        let Ok(name) = std::fs::read_to_string(&latest) else {
            return Ok(None);
        };
        let checkpoint = dir.join(name.trim());
        let state_path = checkpoint.join("state.json");
        let text =
            std::fs::read_to_string(&state_path).map_err(crate::error::io_error(&state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(crate::error::json_error(&state_path.display()))?;
        if state.seed != self.seed {
            return Err(file_error(
                &state_path,
                format!(
                    "was written with seed {}, this run has seed {}",
                    state.seed, self.seed
                ),
            ));
        }
        load_into(
            &self.trainable.variables(),
            &[checkpoint.join("trainable.safetensors")],
            &|_| false,
        )?;
        let optimizer_path = checkpoint.join("optimizer.safetensors");
        optimizer.load_state(
            read_safetensors(&optimizer_path)?,
            state.optimizer_steps,
            &optimizer_path.display().to_string(),
        )?;
        Ok(Some(state))
    }
}

/// Whether training under these options autocasts to bf16 on `device`; `bf16_cpu` on a processor
/// without native bf16 instructions is refused (naming the key).
pub(crate) fn autocasts(options: &TrainOptions, device: Device) -> Result<bool> {
    if device.is_cuda() {
        return Ok(options.bf16);
    }
    if options.bf16 && options.bf16_cpu {
        crate::autocast::check_cpu_bf16("train.bf16_cpu")?;
        return Ok(true);
    }
    Ok(false)
}

/// The precision a stage trains in on `device` (errors as [`autocasts`]).
pub fn describe_precision(options: &TrainOptions, device: Device) -> Result<&'static str> {
    Ok(if autocasts(options, device)? {
        "bf16 autocast"
    } else {
        "float32"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let options = TrainOptions {
            steps: 110,
            warmup_steps: 10,
            learning_rate: 1.0,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((options.learning_rate_at(0) - 0.1).abs() < 1e-12);
        assert!((options.learning_rate_at(9) - 1.0).abs() < 1e-12);
        assert!((options.learning_rate_at(10) - 1.0).abs() < 1e-12);
        assert!((options.learning_rate_at(60) - 0.55).abs() < 1e-12);
        assert!((options.learning_rate_at(110) - 0.1).abs() < 1e-12);
        let linear = TrainOptions {
            schedule: Schedule::Linear,
            ..options
        };
        assert!((linear.learning_rate_at(60) - 0.55).abs() < 1e-12);
        assert!((linear.learning_rate_at(35) - 0.775).abs() < 1e-12);
    }

    #[test]
    fn settings_are_options_that_passed_every_check() {
        let good = TrainSettings::try_from(TrainOptions::default()).unwrap();
        assert_eq!(good.steps, TrainOptions::default().steps);
        assert_eq!(good.options(), &TrainOptions::default());
        for (options, key) in [
            (
                TrainOptions {
                    steps: 0,
                    ..Default::default()
                },
                "train.steps",
            ),
            (
                TrainOptions {
                    learning_rate: f64::NAN,
                    ..Default::default()
                },
                "train.learning_rate",
            ),
            (
                TrainOptions {
                    beta2: 1.0,
                    ..Default::default()
                },
                "train.beta1",
            ),
            (
                TrainOptions {
                    embedding_lr_scale: 0.0,
                    ..Default::default()
                },
                "train.embedding_lr_scale",
            ),
        ] {
            let error = TrainSettings::try_from(options).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
        // A settings file key that does not exist is refused by name.
        let error = toml::from_str::<TrainOptions>("stepz = 3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("stepz"), "{error}");
    }
}
