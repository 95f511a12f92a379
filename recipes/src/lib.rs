//! dapt-recipes: the recipes that train and evaluate models. Its job is orchestration — the
//! adaptation of a pretrained model (`dapt run` with `recipe = "adapt"`), the demo pipeline
//! (`dapt run`), sweeps over mixtures and training settings (`dapt sweep`), and model files
//! (importing a GGUF model, resizing embeddings, merging LoRA) — over the data jobs of
//! `dapt-pipeline`, with typed settings whose identity (a content hash) binds every output to what
//! produced it, so reruns reuse finished steps. Its input is config files and settings; its output
//! is the stages' directories, reports and summaries. It is the only crate that sees every stage
//! and LibTorch; the `dapt-torch` binary only parses arguments and calls it.
#![warn(missing_docs)]

pub mod adapt;
mod error;
pub mod import;
pub mod model;
pub mod run;
pub mod search;
pub mod sweep;

pub use error::{Error, Result};

// The data jobs these recipes chain, under the names the recipes use.
use dapt_pipeline::{identity, ingest, log_peak_rss, pack, peak_rss_mb, runtime, tokenizer};

/// Progress bars: the data jobs' own, and a training bar.
pub mod progress {
    pub use dapt_pipeline::progress::*;

    /// Advances a training bar by one step and logs every tenth step (and the last).
    pub fn train_step(
        bar: &indicatif::ProgressBar,
        stage: &str,
        m: &dapt_trainer::StepMetrics,
        steps: usize,
    ) {
        bar.inc(1);
        bar.set_message(format!("{stage} {:.3}", m.loss));
        if m.step.is_multiple_of(10) || m.step + 1 == steps {
            tracing::info!(
                stage,
                step = m.step,
                loss = m.loss,
                lr = m.learning_rate,
                grad_norm = m.grad_norm,
                tokens_per_second = m.tokens_per_second as u64,
                heldout_loss = m.heldout_loss,
                "train"
            );
        }
    }
}
