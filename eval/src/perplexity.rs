//! Perplexity over packed rows.
use dapt_core::PackedRow;
use dapt_trainer::{Batch, CausalLm};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::{Error, Result};

/// Perplexity of a model on some rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// Mean next-token cross-entropy (nats) per target token.
    pub mean_loss: f64,
    /// `exp(mean_loss)`.
    pub perplexity: f64,
    /// Target tokens scored.
    pub tokens: i64,
}

/// Scores `rows` in batches of `batch_size` without gradients. The result does not depend on the
/// batch size: losses are summed per token and divided once.
pub fn perplexity(
    model: &CausalLm,
    rows: &[PackedRow],
    batch_size: usize,
    device: Device,
) -> Result<Perplexity> {
    if rows.is_empty() {
        return Err(Error::Empty {
            what: "no held-out rows".into(),
        });
    }
    dapt_trainer::check_rows(model, rows, 0)?;
    let (sum, tokens) = tch::no_grad(|| {
        let mut sum = 0.0;
        let mut tokens = 0;
        for chunk in rows.chunks(batch_size.max(1)) {
            let refs: Vec<&PackedRow> = chunk.iter().collect();
            let batch = Batch::from_rows(&refs, device);
            sum += model.loss_sum(&batch).double_value(&[]);
            tokens += batch.target_count;
        }
        (sum, tokens)
    });
    if tokens == 0 {
        return Err(Error::Empty {
            what: "held-out rows have no target tokens".into(),
        });
    }
    let mean_loss = sum / tokens as f64;
    Ok(Perplexity {
        mean_loss,
        perplexity: mean_loss.exp(),
        tokens,
    })
}
