//! The pipeline config file (`dapt run CONFIG`): serde options with defaults, validated once into
//! settings whose errors name the file and key.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dapt_ingest::{IngestOptions, IngestSettings};
use dapt_packer::{BpeTrainOptions, PackOptions, PackSettings};
use dapt_trainer::{ModelConfig, TokenIds, TrainOptions};
use serde::{Deserialize, Serialize};

/// A pipeline run, as written in TOML.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// The run's one seed; every random decision derives from it.
    pub seed: u64,
    pub ingest: IngestOptions,
    pub sql: SqlOptions,
    pub tokenizer: TokenizerOptions,
    pub pack: PackOptions,
    pub model: ModelOptions,
    pub train: TrainOptions,
    pub eval: EvalOptions,
}

/// `[sql]`: the query that selects training documents from table `documents`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlOptions {
    /// A read-only query over `documents` (id, text, source, url, meta) returning at least `id` and
    /// `text`.
    pub query: String,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            query: "SELECT id, text, source FROM documents".into(),
        }
    }
}

/// `[tokenizer]`: an existing `tokenizer.json` (`path`) or one trained on the selected documents
/// (`train`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerOptions {
    /// Path of an HF `tokenizer.json`, relative to the config file.
    pub path: Option<PathBuf>,
    /// Train a byte-level BPE on the training documents instead.
    pub train: Option<BpeTrainOptions>,
}

/// `[model]`: shape of the model trained from scratch (its vocabulary is the tokenizer's).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOptions {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        }
    }
}

/// `[eval]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// Rows per evaluation batch (results do not depend on it).
    pub batch_size: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 16 }
    }
}

/// Validated settings of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    pub seed: u64,
    pub ingest: IngestSettings,
    pub query: String,
    pub tokenizer: TokenizerSource,
    pub pack: PackSettings,
    pub model: ModelOptions,
    pub train: TrainOptions,
    pub eval: EvalOptions,
}

#[derive(Clone, Debug, Serialize)]
pub enum TokenizerSource {
    File(PathBuf),
    Train(BpeTrainOptions),
}

impl RunSettings {
    /// Reads and validates a config file; relative input paths resolve against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let options: RunOptions =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::try_from_options(options, base)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    fn try_from_options(mut options: RunOptions, base: &Path) -> anyhow::Result<Self> {
        options.ingest.inputs = options
            .ingest
            .inputs
            .iter()
            .map(|input| resolve_input(base, input))
            .collect();
        let ingest = IngestSettings::try_from(options.ingest)?;
        if options.sql.query.trim().is_empty() {
            bail!("sql.query: must not be empty");
        }
        let tokenizer = match (options.tokenizer.path, options.tokenizer.train) {
            (Some(path), None) => TokenizerSource::File(base.join(path)),
            (None, Some(train)) => TokenizerSource::Train(train),
            (None, None) => TokenizerSource::Train(BpeTrainOptions::default()),
            (Some(_), Some(_)) => bail!("tokenizer: give either `path` or `train`, not both"),
        };
        let pack = PackSettings::try_from(options.pack)?;
        if pack.heldout_fraction <= 0.0 {
            bail!("pack.heldout_fraction: must be positive, the run reports held-out perplexity");
        }
        options.train.validate()?;
        let settings = Self {
            seed: options.seed,
            ingest,
            query: options.sql.query,
            tokenizer,
            pack,
            model: options.model,
            train: options.train,
            eval: options.eval,
        };
        settings.model_config(256, 0, 0).validate()?;
        Ok(settings)
    }

    /// The model configuration for a tokenizer of `vocab_size` tokens.
    pub fn model_config(&self, vocab_size: usize, eos_id: u32, pad_id: u32) -> ModelConfig {
        let m = &self.model;
        ModelConfig {
            vocab_size: vocab_size as i64,
            hidden_size: m.hidden_size,
            intermediate_size: m.intermediate_size,
            num_hidden_layers: m.num_hidden_layers,
            num_attention_heads: m.num_attention_heads,
            num_key_value_heads: m.num_key_value_heads,
            max_position_embeddings: self.pack.seq_len as i64,
            rms_norm_eps: m.rms_norm_eps,
            rope_theta: Some(m.rope_theta),
            tie_word_embeddings: m.tie_word_embeddings,
            eos_token_id: Some(TokenIds::One(eos_id as i64)),
            pad_token_id: Some(TokenIds::One(pad_id as i64)),
            ..ModelConfig::default()
        }
    }

    /// sha256 of a JSON value: the hash of some part of these settings.
    pub fn hash_of(value: &impl Serialize) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        dapt_core::hash::sha256_hex(&json)
    }
}

/// A relative local input path is taken relative to the config file; URLs are left alone.
fn resolve_input(base: &Path, input: &str) -> String {
    if input.contains("://") || Path::new(input).is_absolute() {
        input.to_string()
    } else {
        base.join(input).display().to_string()
    }
}
