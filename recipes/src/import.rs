//! `dapt model import-gguf`: a GGUF model file → an HF model directory that dapt and HF `transformers`
//! load:
//!
//! ```text
//! OUT/config.json             from the <arch>.* metadata keys
//! OUT/generation_config.json  the special token ids
//! OUT/model.safetensors       every tensor dequantised (f32 or bf16), HF names, Q/K rows un-permuted
//! OUT/tokenizer.json          byte-level BPE rebuilt from tokenizer.ggml.* (pre-tokenizer as llama.cpp's)
//! OUT/tokenizer_config.json   special tokens, chat template
//! OUT/import.json             what was imported: source sha256, settings, tensors, identity
//! ```
//!
//! The directory is built under a temporary sibling and renamed into place, so it is whole or absent. Its
//! identity is the content hash of the GGUF file and the settings: a rerun with the same identity reuses
//! it without reading the weights again, a directory holding anything else is refused.
use std::path::{Path, PathBuf};

use dapt_packer::GgufVocabulary;
use dapt_trainer::{GgufModel, WeightType, WeightsReport};
use serde::Serialize;
use serde_json::json;

use crate::error::{io_error, setting, write_json};
use crate::identity::{file_identity, identity};
use crate::{Error, Result};

/// Bumped when the import writes other bytes for the same file and settings.
const IMPORT_FORMAT: u32 = 1;

/// What to import and how.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSettings {
    /// The `.gguf` file.
    pub gguf: PathBuf,
    /// The model directory to write.
    pub out: PathBuf,
    /// Element type of the written weights.
    pub weights: WeightType,
}

/// What an import wrote (or found already written).
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// The model directory.
    pub out: PathBuf,
    /// True when a finished import with the same identity was reused.
    pub reused: bool,
    /// Content hash of the GGUF file and the settings.
    pub identity: String,
    /// `general.architecture` of the GGUF.
    pub architecture: String,
    /// Parameters written.
    pub parameters: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Vocabulary size of the rebuilt tokenizer.
    pub vocab_size: usize,
}

/// The `tokenizer.json` rebuilt from the vocabulary of the GGUF file at `path` (what an import writes;
/// a vocabulary-only file, as llama.cpp ships for its tokenizer tests, is enough).
pub fn gguf_tokenizer_json(path: &Path) -> Result<String> {
    let model = GgufModel::open(path)?;
    Ok(vocabulary(&model, 0)?.tokenizer_json()?)
}

/// The tokenizer metadata of `model`.
fn vocabulary(model: &GgufModel, context_length: i64) -> Result<GgufVocabulary> {
    let id = |key: &str| -> Result<Option<u32>> {
        model
            .optional_u64(key)?
            .map(|v| {
                u32::try_from(v).map_err(|_| setting(key, format!("token id {v} is too large")))
            })
            .transpose()
    };
    Ok(GgufVocabulary {
        model: model.string("tokenizer.ggml.model")?,
        pre: model.optional_string("tokenizer.ggml.pre")?,
        tokens: model
            .optional_strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| setting("tokenizer.ggml.tokens", "the GGUF file has no vocabulary"))?,
        token_types: model
            .optional_i32s("tokenizer.ggml.token_type")?
            .unwrap_or_default(),
        merges: model
            .optional_strings("tokenizer.ggml.merges")?
            .unwrap_or_default(),
        scores: model
            .optional_f32s("tokenizer.ggml.scores")?
            .unwrap_or_default(),
        add_space_prefix: model.optional_bool("tokenizer.ggml.add_space_prefix")?,
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        unknown_token_id: id("tokenizer.ggml.unknown_token_id")?,
        padding_token_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos_token: model
            .optional_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false),
        add_eos_token: model
            .optional_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false),
        chat_template: model.optional_string("tokenizer.chat_template")?,
        context_length: u64::try_from(context_length).ok(),
    })
}

/// The finished import in `out`, if it has `identity`.
fn finished(out: &Path, identity: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("import.json")).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    let complete = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| out.join(f).is_file());
    (record["identity"] == identity && complete).then_some(record)
}

/// Imports `settings.gguf` into `settings.out`; `progress(done, total)` is called per tensor.
pub fn import_gguf(
    settings: &ImportSettings,
    progress: impl FnMut(usize, usize),
) -> Result<ImportReport> {
    let source_sha256 = file_identity(&settings.gguf)?;
    let id = identity(
        "the GGUF import",
        &(&source_sha256, settings.weights, IMPORT_FORMAT),
    )?;
    let out = &settings.out;
    if let Some(record) = finished(out, &id) {
        tracing::info!(out = %out.display(), "the import is up to date");
        return Ok(ImportReport {
            out: out.clone(),
            reused: true,
            identity: id,
            architecture: record["architecture"].as_str().unwrap_or_default().into(),
            parameters: record["weights"]["parameters"].as_u64().unwrap_or_default(),
            tensors: record["weights"]["tensors"].as_u64().unwrap_or_default() as usize,
            vocab_size: record["tokenizer"]["vocab_size"]
                .as_u64()
                .unwrap_or_default() as usize,
        });
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_error(out))?
            .next()
            .is_some()
    {
        return Err(Error::Data {
            what: out.display().to_string(),
            reason: "holds something other than this import (another file, other settings, or an \
                     unfinished directory); choose another --out or remove it"
                .into(),
        });
    }

    let model = GgufModel::open(&settings.gguf)?;
    let config = model.config(settings.weights)?;
    let vocabulary = vocabulary(&model, config.max_position_embeddings)?;
    if vocabulary.tokens.len() as i64 > config.vocab_size {
        return Err(setting(
            "tokenizer.ggml.tokens",
            format!(
                "{} tokens but the embedding has {} rows",
                vocabulary.tokens.len(),
                config.vocab_size
            ),
        ));
    }
    let tokenizer_json = vocabulary.tokenizer_json()?;
    let tokenizer_config = vocabulary.tokenizer_config()?;
    tracing::info!(
        gguf = %settings.gguf.display(),
        architecture = model.architecture(),
        version = model.version(),
        layers = config.num_hidden_layers,
        hidden = config.hidden_size,
        vocab = config.vocab_size,
        "importing GGUF"
    );

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let tmp = out.with_file_name(format!(".{name}.importing"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    config.save(&tmp)?;
    write_json(
        &tmp.join("generation_config.json"),
        &model.generation_config()?,
    )?;
    let path = tmp.join("tokenizer.json");
    std::fs::write(&path, &tokenizer_json).map_err(io_error(&path))?;
    write_json(&tmp.join("tokenizer_config.json"), &tokenizer_config)?;
    let weights: WeightsReport =
        model.write_weights(&tmp.join("model.safetensors"), settings.weights, progress)?;
    write_json(
        &tmp.join("import.json"),
        &json!({
            "identity": id,
            "source": settings.gguf.display().to_string(),
            "source_sha256": source_sha256,
            "gguf_version": model.version(),
            "architecture": model.architecture(),
            "weights": {
                "type": settings.weights,
                "tensors": weights.tensors,
                "parameters": weights.parameters,
                "source_types": weights.source_types,
                "bytes": weights.bytes,
            },
            "tokenizer": {
                "model": vocabulary.model,
                "pre": vocabulary.pre,
                "vocab_size": vocabulary.tokens.len(),
                "merges": vocabulary.merges.len(),
                "sha256": dapt_core::hash::sha256_hex(tokenizer_json.as_bytes()),
            },
            "dapt_version": env!("CARGO_PKG_VERSION"),
        }),
    )?;
    if out.exists() {
        // An empty directory (checked above) gives way to the finished one.
        std::fs::remove_dir(out).map_err(io_error(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_error(out))?;
    Ok(ImportReport {
        out: out.clone(),
        reused: false,
        identity: id,
        architecture: model.architecture().into(),
        parameters: weights.parameters,
        tensors: weights.tensors,
        vocab_size: vocabulary.tokens.len(),
    })
}
