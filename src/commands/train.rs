//! `dapt train CONFIG`: training in stages (CPT → CPT → SFT, full-weight or LoRA) on packed Parquet.
use std::path::PathBuf;

use clap::Args;
use dapt_trainer::{run_stages, TrainConfig};

use dapt_pipeline::progress;

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
    let steps: std::collections::BTreeMap<String, usize> = config
        .options
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.train.steps))
        .collect();
    let reports = run_stages(&config, &args.out, |stage, m| {
        progress::train_step(&bar, stage, m, steps.get(stage).copied().unwrap_or(0))
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
    dapt_pipeline::log_peak_rss("train");
    Ok(())
}
