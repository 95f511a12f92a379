//! `eval.json`: everything one `dapt eval` measured of one checkpoint.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, GenerateOptions, LangSwapReport, Perplexity, Result, TaskResult, TextScore};

/// One generation of the lang-swap check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// The prompt.
    pub prompt: String,
    /// The continuation.
    pub output: String,
    /// Why it ended.
    pub finish_reason: crate::FinishReason,
}

/// Generations for target-language prompts and their lang-swap rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationResults {
    /// How it was generated.
    pub options: GenerateOptions,
    /// The lang-swap judgement.
    pub lang_swap: LangSwapReport,
    /// Every generation.
    pub outputs: Vec<GenerationRecord>,
}

/// The results of one checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// Name of the checkpoint in reports.
    pub label: String,
    /// Where the model came from.
    pub model: String,
    /// The adapter applied, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// sha256 of the tokenizer.json used.
    pub tokenizer_sha256: String,
    /// Whether the model ran under bf16 autocast (else in its own precision).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16: bool,
    /// Perplexity on packed held-out rows, by name.
    #[serde(default)]
    pub perplexity: BTreeMap<String, Perplexity>,
    /// Bits-per-byte on held-out texts, by name.
    #[serde(default)]
    pub bits_per_byte: BTreeMap<String, TextScore>,
    /// Multiple-choice tasks, by name.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskResult>,
    /// Generative tasks (code run in a sandbox, checked answers), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generative: BTreeMap<String, crate::GenerativeResult>,
    /// Generations and lang-swap, when prompts were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationResults>,
}

impl EvalResults {
    /// Reads an `eval.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// The headline metrics as (name, value, higher is better).
    pub fn metrics(&self) -> Vec<(String, f64, bool)> {
        let mut out = Vec::new();
        for (name, s) in &self.bits_per_byte {
            out.push((format!("bpb/{name}"), s.bits_per_byte, false));
        }
        for (name, p) in &self.perplexity {
            out.push((format!("ppl/{name}"), p.perplexity, false));
        }
        for (name, t) in &self.tasks {
            out.push((format!("acc/{name}"), t.acc, true));
            out.push((format!("acc_norm/{name}"), t.acc_norm, true));
        }
        for (name, g) in &self.generative {
            for (metric, value) in &g.scores {
                out.push((format!("{metric}/{name}"), *value, true));
            }
        }
        if let Some(g) = &self.generation {
            out.push((
                format!("lang_swap/{}", g.lang_swap.target_language),
                g.lang_swap.rate,
                false,
            ));
        }
        out
    }
}
