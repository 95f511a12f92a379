//! `dapt model import-gguf|resize-embeddings|merge-lora`: model files in, HF model directories out.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use dapt_trainer::ResizeInit;

/// Arguments of `dapt model`.
#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Convert a GGUF model file (llama.cpp's format; architectures llama, qwen2, qwen3) into an HF model
    /// directory: config.json, model.safetensors (every tensor dequantised), tokenizer.json rebuilt from
    /// the GGUF vocabulary, tokenizer_config.json with the chat template. A rerun with the same file and
    /// settings reuses the directory.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// Output model directory (created; must be empty or absent, or hold this same import).
        #[arg(long)]
        out: PathBuf,
        /// Element type of the written weights: f32 keeps the dequantised values exactly, bf16 halves
        /// the size.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// Grow the embedding tables to an extended tokenizer's vocabulary; each new token's row starts as
    /// the mean of its old sub-token rows (new_tokens.json from `dapt tokenizer extend`).
    ResizeEmbeddings {
        /// The HF model directory.
        #[arg(long)]
        model: PathBuf,
        /// The extended tokenizer: its directory (tokenizer.json, new_tokens.json) or tokenizer.json.
        #[arg(long)]
        tokenizer: PathBuf,
        /// new_tokens.json (default: beside the extended tokenizer.json).
        #[arg(long)]
        new_tokens: Option<PathBuf>,
        /// How new rows start.
        #[arg(long, value_enum, default_value = "mean")]
        init: InitArg,
        /// Seed for random rows.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output model directory (gets the extended tokenizer's files).
        #[arg(long)]
        out: PathBuf,
    },
    /// Fold a LoRA adapter (PEFT layout) into its base model and write the merged model.
    MergeLora {
        /// The base HF model directory the adapter was trained on.
        #[arg(long)]
        model: PathBuf,
        /// Adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Output directory for the merged model (with the base's tokenizer files).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InitArg {
    /// Each new row = the mean of its old sub-token rows.
    Mean,
    /// Normal with the old rows' standard deviation (seeded).
    Random,
    /// Input rows as `mean`; an untied output head in which each new token predicts how often it
    /// follows its first piece in the extension text (needs token_counts.json from `tokenizer extend`).
    Frequency,
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::ImportGguf { file, out, dtype } => {
            let settings = dapt_recipes::import::ImportSettings {
                gguf: file,
                out,
                weights: match dtype {
                    DtypeArg::F32 => dapt_trainer::WeightType::F32,
                    DtypeArg::Bf16 => dapt_trainer::WeightType::Bf16,
                },
            };
            let bar = dapt_pipeline::progress::bar(0, "import", "tensors");
            let report = dapt_recipes::import::import_gguf(&settings, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            println!(
                "{} {} model: {} parameters in {} tensors, vocabulary {}; {}{}",
                if report.reused {
                    "up to date:"
                } else {
                    "imported"
                },
                report.architecture,
                report.parameters,
                report.tensors,
                report.vocab_size,
                report.out.display(),
                dapt_pipeline::peak_rss_mb()
                    .map(|mb| format!(" (peak RSS {mb} MB)"))
                    .unwrap_or_default()
            );
        }
        Mode::ResizeEmbeddings {
            model,
            tokenizer,
            new_tokens,
            init,
            seed,
            out,
        } => {
            let settings = dapt_recipes::model::ResizeSettings {
                model,
                tokenizer,
                new_tokens,
                init: match init {
                    InitArg::Mean => ResizeInit::Mean,
                    InitArg::Random => ResizeInit::Random,
                    InitArg::Frequency => ResizeInit::Frequency,
                },
                seed,
            };
            let report = dapt_recipes::model::resize_into(&settings, &out)?;
            println!(
                "embeddings: {} → {} rows ({} from sub-token means, {} random{}); model: {}",
                report.old_rows,
                report.new_rows,
                report.from_subtokens,
                report.random,
                if report.tied { ", tied" } else { "" },
                out.display()
            );
        }
        Mode::MergeLora {
            model,
            adapter,
            out,
        } => {
            let merged = dapt_recipes::model::merge_lora_into(&model, &adapter, &out)?;
            println!(
                "merged {} adapted layers (r = {}); model: {}",
                merged.layers,
                merged.r,
                out.display()
            );
        }
    }
    Ok(())
}
