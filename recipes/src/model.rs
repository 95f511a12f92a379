//! Model directories as jobs: growing the embeddings to an extended tokenizer and folding a LoRA
//! adapter into its base. Each writes a complete HF model directory (weights, `config.json`, the
//! tokenizer and its companions). `dapt model resize-embeddings|merge-lora` and the adaptation recipe
//! call these.
use std::path::{Path, PathBuf};

use dapt_trainer::tch::{Device, Kind};
use dapt_trainer::{CausalLm, NewTokenSpec, ResizeInit, ResizeReport};

use crate::error::{io_error, Error, Result};
use crate::tokenizer::{copy_files, TOKENIZER_COMPANIONS};

/// Where a tokenizer lives: a directory holding `tokenizer.json` (and `new_tokens.json`), or the
/// `tokenizer.json` itself.
pub fn tokenizer_json(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

/// How [`resize_into`] grows a model.
#[derive(Clone, Debug)]
pub struct ResizeSettings {
    /// The HF model directory to grow.
    pub model: PathBuf,
    /// The extended tokenizer: its directory or its `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The new tokens' list (default: `new_tokens.json` beside the tokenizer).
    pub new_tokens: Option<PathBuf>,
    /// How new rows start.
    pub init: ResizeInit,
    /// Seed of random rows.
    pub seed: u64,
}

/// Grows the model's embedding tables to the extended tokenizer's vocabulary and writes a complete
/// model directory `out`: the resized weights and `config.json`, the base's generation defaults, the
/// extended tokenizer's files (over the base's), and `resize_report.json`.
pub fn resize_into(settings: &ResizeSettings, out: &Path) -> Result<ResizeReport> {
    let tokenizer_json = tokenizer_json(&settings.tokenizer);
    let tokenizer_dir = tokenizer_json
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let list = settings
        .new_tokens
        .clone()
        .unwrap_or_else(|| tokenizer_dir.join("new_tokens.json"));
    let bytes = std::fs::read(&list).map_err(io_error(&list))?;
    let tokens: Vec<NewTokenSpec> =
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: list.display().to_string(),
            source,
        })?;
    let extended = dapt_packer::TokenizerFile::load(&tokenizer_json)?;
    let statistics = match settings.init {
        ResizeInit::Frequency => Some(frequency_statistics(
            &settings.model,
            &tokenizer_dir,
            &tokens,
            extended.vocab_size(),
        )?),
        _ => None,
    };
    let report = dapt_trainer::resize_embeddings(
        &settings.model,
        &tokens,
        extended.vocab_size() as i64,
        settings.init,
        settings.seed,
        statistics.as_ref(),
        out,
    )?;
    copy_files(&settings.model, out, &TOKENIZER_COMPANIONS)?;
    copy_files(&tokenizer_dir, out, &["tokenizer.json"])?;
    copy_files(&tokenizer_dir, out, &TOKENIZER_COMPANIONS)?;
    if !out.join("tokenizer.json").is_file() {
        // A tokenizer.json not named so (`--tokenizer my-tokenizer.json`).
        let target = out.join("tokenizer.json");
        std::fs::copy(&tokenizer_json, &target).map_err(io_error(&target))?;
    }
    crate::error::write_json(&out.join("resize_report.json"), &report)?;
    Ok(report)
}

/// Base tokens the mean hidden state of the `frequency` init is taken over.
const HIDDEN_SAMPLE_TOKENS: usize = 1024;

/// What the `frequency` init needs: the counts `dapt tokenizer extend` wrote beside the extended
/// tokenizer, and the base model's mean final hidden state over text made of the new tokens (their
/// texts in id order, the most frequent merges first, read with the base tokenizer: text of the
/// target domain without needing the corpus again).
fn frequency_statistics(
    model: &Path,
    tokenizer_dir: &Path,
    tokens: &[NewTokenSpec],
    vocab_size: usize,
) -> Result<dapt_trainer::FrequencyStatistics> {
    let counts_path = tokenizer_dir.join(crate::tokenizer::TOKEN_COUNTS);
    if !counts_path.is_file() {
        return Err(Error::Setting {
            key: "init".into(),
            reason: format!(
                "`frequency` needs {} (written by `dapt tokenizer extend` beside new_tokens.json)",
                counts_path.display()
            ),
        });
    }
    let counts = crate::tokenizer::TokenCounts::load(&counts_path)?.dense(vocab_size);
    let base = dapt_packer::TokenizerFile::load(&model.join("tokenizer.json"))?;
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    let ids = base
        .encode_all(&["new tokens".to_string()], &[text])?
        .pop()
        .unwrap_or_default();
    let sequences: Vec<Vec<i64>> = ids
        .iter()
        .take(HIDDEN_SAMPLE_TOKENS)
        .map(|&id| i64::from(id))
        .collect::<Vec<_>>()
        .chunks(256)
        .map(<[i64]>::to_vec)
        .collect();
    let hidden_mean = dapt_trainer::mean_final_hidden(model, &sequences)?;
    Ok(dapt_trainer::FrequencyStatistics {
        counts,
        hidden_mean,
    })
}

/// What [`merge_lora_into`] did.
pub struct MergeReport {
    /// Layers that had an adapter.
    pub layers: usize,
    /// The adapter's rank.
    pub r: i64,
}

/// Folds the PEFT adapter in `adapter` into the model in `model` and writes the merged model (with
/// the base's tokenizer and companions) to `out`.
pub fn merge_lora_into(model: &Path, adapter: &Path, out: &Path) -> Result<MergeReport> {
    let (vs, mut base) = CausalLm::load(model, Device::Cpu, Kind::Float)?;
    let (_adapters, options, layers) = base.load_adapter(adapter, Device::Cpu)?;
    base.merge_lora();
    base.save(&vs, out)?;
    dapt_trainer::copy_companions(model, out)?;
    Ok(MergeReport {
        layers,
        r: options.r,
    })
}
