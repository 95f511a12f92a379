//! `dapt train CONFIG`: training in stages (CPT → CPT → SFT, full-weight or LoRA) on packed Parquet.
use std::path::PathBuf;

use clap::Args;
use dapt_trainer::{run_stages, TrainConfig};

use crate::progress;

/// Arguments of `dapt train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training config (TOML): `model` (HF directory) or `[init]`, `seed`, and `[[stage]]` entries with
    /// `name`, `data` (packed Parquet), `method` (full|lora), `[stage.train]`, `[stage.lora]`.
    config: PathBuf,
    /// Output directory: one subdirectory per stage (model/, adapter/, train_log.jsonl, stage.json).
    /// A rerun skips finished stages and resumes an interrupted one from its last checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = TrainConfig::load(&args.config)?;
    let total: usize = config.options.stages.iter().map(|s| s.train.steps).sum();
    let bar = progress::bar(total as u64, "train", "steps");
    let mut current = String::new();
    let reports = run_stages(&config, &args.out, |stage, m| {
        if stage != current {
            current = stage.to_string();
        }
        bar.inc(1);
        bar.set_message(format!("{stage} {:.3}", m.loss));
        if m.step % 10 == 0 {
            tracing::info!(
                stage,
                step = m.step,
                loss = m.loss,
                lr = m.learning_rate,
                grad_norm = m.grad_norm,
                tokens_per_second = m.tokens_per_second as u64,
                "train"
            );
        }
    })?;
    bar.finish_and_clear();
    for r in &reports {
        let heldout = match (r.heldout_before, r.heldout_after) {
            (Some(b), Some(a)) => format!(", held-out loss {b:.4} → {a:.4}"),
            _ => String::new(),
        };
        println!(
            "{}: {:?}, {} steps, {} target tokens, {} trainable parameters, loss {:.4} → {:.4}{heldout}; model: {}",
            r.name,
            r.method,
            r.steps,
            r.target_tokens,
            r.trainable_parameters,
            r.first_loss,
            r.last_loss,
            r.model
        );
    }
    Ok(())
}
