//! The training loop: AdamW with decoupled weight decay (none on norms), linear warmup then cosine
//! decay, gradient accumulation with the loss averaged over all target tokens of the window, and
//! global gradient-norm clipping.
use std::time::Instant;

use dapt_core::hash::{sub_seed, unit_interval};
use dapt_core::PackedRow;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::model::{GROUP_DECAY, GROUP_NO_DECAY};
use crate::{Batch, Error, Llama, Result};

/// Training options (`[train]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Decoupled weight decay (not applied to norms).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Maximum global gradient L2 norm; 0 disables clipping.
    pub grad_clip: f64,
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
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
        }
    }
}

/// Validated training settings.
pub type TrainSettings = TrainOptions;

impl TrainOptions {
    /// Checks the options; errors name the key.
    pub fn validate(&self) -> Result<()> {
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
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return Err(bad(
                "weight_decay",
                "weight_decay and grad_clip must not be negative",
            ));
        }
        Ok(())
    }

    /// Learning rate at a step (0-based): linear warmup, then cosine decay to `min_lr_ratio`.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = peak * self.min_lr_ratio;
        floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Metrics of one optimiser step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    /// Mean loss per target token over the step's window.
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens in the step.
    pub tokens: i64,
    pub tokens_per_second: f64,
}

/// The order in which rows are visited in an epoch: a function of (seed, epoch, row index).
fn epoch_order(seed: u64, epoch: u64, rows: usize) -> Vec<usize> {
    let seed = sub_seed(seed, "train-order", epoch);
    let mut order: Vec<(f64, usize)> = (0..rows)
        .map(|i| (unit_interval(seed, &i.to_string()), i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    order.into_iter().map(|(_, i)| i).collect()
}

/// Trains `model` (whose variables live in `vs`) on `rows`; calls `on_step` after every step.
pub fn train(
    model: &Llama,
    vs: &nn::VarStore,
    rows: &[PackedRow],
    options: &TrainSettings,
    seed: u64,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<Vec<StepMetrics>> {
    options.validate()?;
    if rows.is_empty() {
        return Err(Error::Setting {
            key: "train.data".into(),
            reason: "no training rows".into(),
        });
    }
    let device = vs.device();
    let mut optimizer = nn::AdamW {
        beta1: options.beta1,
        beta2: options.beta2,
        wd: options.weight_decay,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(vs, options.learning_rate)
    .map_err(|source| Error::Torch {
        what: "building the optimiser".into(),
        source,
    })?;
    optimizer.set_weight_decay_group(GROUP_DECAY, options.weight_decay);
    optimizer.set_weight_decay_group(GROUP_NO_DECAY, 0.0);

    let mut cursor = Cursor::new(seed, rows.len());
    let mut history = Vec::with_capacity(options.steps);
    for step in 0..options.steps {
        let started = Instant::now();
        let learning_rate = options.learning_rate_at(step);
        optimizer.set_lr(learning_rate);
        let batches: Vec<Batch> = (0..options.grad_accumulation)
            .map(|_| {
                let picked: Vec<&PackedRow> = (0..options.batch_size)
                    .map(|_| &rows[cursor.next()])
                    .collect();
                Batch::from_rows(&picked, device)
            })
            .collect();
        let tokens: i64 = batches.iter().map(|b| b.target_count).sum();
        optimizer.zero_grad();
        let mut loss_sum = 0.0;
        for batch in &batches {
            let loss = model.loss_sum(batch);
            loss_sum += loss.double_value(&[]);
            (loss / tokens.max(1) as f64).backward();
        }
        let loss = loss_sum / tokens.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::Diverged { step, loss });
        }
        let grad_norm = clip_grad_norm(vs, options.grad_clip, device);
        optimizer.step();
        let metrics = StepMetrics {
            step,
            loss,
            learning_rate,
            grad_norm,
            tokens,
            tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        };
        on_step(&metrics);
        history.push(metrics);
    }
    Ok(history)
}

/// Scales gradients so that their global L2 norm is at most `max` (when `max > 0`); returns the norm
/// before scaling.
fn clip_grad_norm(vs: &nn::VarStore, max: f64, device: Device) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(|v| v.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
            .collect();
        let norm = Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .to_device(device);
        let norm = norm.double_value(&[]);
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    })
}

/// Walks rows epoch by epoch in a seeded order.
struct Cursor {
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
    position: usize,
}

impl Cursor {
    fn new(seed: u64, rows: usize) -> Self {
        Self {
            seed,
            epoch: 0,
            order: epoch_order(seed, 0, rows),
            position: 0,
        }
    }

    fn next(&mut self) -> usize {
        if self.position == self.order.len() {
            self.epoch += 1;
            self.order = epoch_order(self.seed, self.epoch, self.order.len());
            self.position = 0;
        }
        self.position += 1;
        self.order[self.position - 1]
    }
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
    }

    #[test]
    fn cursor_visits_every_row_once_per_epoch() {
        let mut cursor = Cursor::new(5, 7);
        let mut first: Vec<usize> = (0..7).map(|_| cursor.next()).collect();
        let mut second: Vec<usize> = (0..7).map(|_| cursor.next()).collect();
        assert_ne!(first, second, "epochs are reshuffled");
        first.sort();
        second.sort();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
        assert_eq!(second, first);
    }
}
