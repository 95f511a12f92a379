//! `dapt model import-gguf|resize-embeddings|merge-lora`: model files in, HF model directories out.
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use dapt_trainer::tch::{Device, Kind};
use dapt_trainer::{CausalLm, NewTokenSpec, ResizeInit};

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
        #[arg(long)]
        model: PathBuf,
        /// Adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
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
    Mean,
    Random,
}

fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::ImportGguf { file, out, dtype } => {
            let settings = dapt_pipeline::import::ImportSettings {
                gguf: file,
                out,
                weights: match dtype {
                    DtypeArg::F32 => dapt_trainer::WeightType::F32,
                    DtypeArg::Bf16 => dapt_trainer::WeightType::Bf16,
                },
            };
            let bar = dapt_pipeline::progress::bar(0, "import", "tensors");
            let report = dapt_pipeline::import::import_gguf(&settings, |done, total| {
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
            let tokenizer_json = tokenizer_file(&tokenizer);
            let tokenizer_dir = tokenizer_json
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let new_tokens = new_tokens.unwrap_or_else(|| tokenizer_dir.join("new_tokens.json"));
            let tokens: Vec<NewTokenSpec> = serde_json::from_slice(
                &std::fs::read(&new_tokens)
                    .with_context(|| format!("cannot read {}", new_tokens.display()))?,
            )
            .with_context(|| format!("{}: not a list of new tokens", new_tokens.display()))?;
            let extended = dapt_packer::TokenizerFile::load(&tokenizer_json)?;
            let init = match init {
                InitArg::Mean => ResizeInit::Mean,
                InitArg::Random => ResizeInit::Random,
            };
            let report = dapt_trainer::resize_embeddings(
                &model,
                &tokens,
                extended.vocab_size() as i64,
                init,
                seed,
                &out,
            )?;
            // The output is a complete model directory: the base's companions, the extended tokenizer.
            for entry in std::fs::read_dir(&model)?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name == "generation_config.json" {
                    std::fs::copy(entry.path(), out.join(&name))?;
                }
            }
            for entry in std::fs::read_dir(&tokenizer_dir)?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("tokenizer") && entry.path().is_file() {
                    std::fs::copy(entry.path(), out.join(&name))?;
                }
            }
            std::fs::write(
                out.join("resize_report.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
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
            let (vs, mut base) = CausalLm::load(&model, Device::Cpu, Kind::Float)?;
            let (_adapters, options, layers) = base.load_adapter(&adapter, Device::Cpu)?;
            base.merge_lora();
            base.save(&vs, &out)?;
            for entry in std::fs::read_dir(&model)?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("tokenizer") || name == "generation_config.json" {
                    std::fs::copy(entry.path(), out.join(&name))?;
                }
            }
            println!(
                "merged {layers} adapted layers (r = {}); model: {}",
                options.r,
                out.display()
            );
        }
    }
    Ok(())
}
