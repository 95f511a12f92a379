//! Text generation with a KV cache: the prompt is fed once, then one token per step. Greedy when
//! `temperature` is 0, else sampling (temperature, nucleus `top_p`) with draws that depend on (seed,
//! step) only. Stops at an end-of-sequence id, at a stop string (cut before it) or after `max_tokens`.
use dapt_encoder::TokenizerFile;
use dapt_trainer::{CausalLm, KvCache};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// How to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateOptions {
    /// Most tokens generated.
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Seed of the sampling.
    pub seed: u64,
    /// Generation ends before the first of these strings.
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`.
    Length,
}

/// A generated continuation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The continuation's text.
    pub text: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// SplitMix64: a draw in [0, 1) from (seed, step).
fn uniform(seed: u64, step: u64) -> f64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn pick(logits: &Tensor, options: &GenerateOptions, step: u64) -> u32 {
    if options.temperature <= 0.0 {
        return logits.argmax(-1, false).int64_value(&[]) as u32;
    }
    let probs: Vec<f64> = Vec::try_from(
        (logits.to_kind(Kind::Double) / options.temperature)
            .softmax(-1, Kind::Double)
            .to_device(Device::Cpu),
    )
    .unwrap_or_default();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for i in order {
        kept.push(i);
        mass += probs[i];
        if mass >= options.top_p {
            break;
        }
    }
    let mut target = uniform(options.seed, step) * mass;
    for &i in &kept {
        target -= probs[i];
        if target <= 0.0 {
            return i as u32;
        }
    }
    kept.last().copied().unwrap_or(0) as u32
}

/// Generates a continuation of `prompt` (token ids).
pub fn generate(
    model: &CausalLm,
    tokenizer: &TokenizerFile,
    prompt: &[u32],
    options: &GenerateOptions,
    device: Device,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Setting {
            key: "prompt".into(),
            reason: "empty prompt".into(),
        });
    }
    let eos = model.config().eos_ids();
    let mut cache = KvCache::default();
    let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut logits = tch::no_grad(|| {
        model
            .next_token_logits(
                &Tensor::from_slice(&ids).unsqueeze(0).to_device(device),
                &mut cache,
            )
            .get(0)
    });
    let mut tokens = Vec::new();
    let mut text = String::new();
    for step in 0..options.max_tokens {
        let next = pick(&logits, options, step as u64);
        if eos.contains(&i64::from(next)) {
            return Ok(Generation {
                text,
                tokens,
                finish_reason: FinishReason::Stop,
            });
        }
        tokens.push(next);
        text = tokenizer.decode(&tokens)?;
        if let Some(at) = options
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(at);
            return Ok(Generation {
                text,
                tokens,
                finish_reason: FinishReason::Stop,
            });
        }
        if step + 1 == options.max_tokens {
            break;
        }
        logits = tch::no_grad(|| {
            model
                .next_token_logits(
                    &Tensor::from_slice(&[i64::from(next)])
                        .unsqueeze(0)
                        .to_device(device),
                    &mut cache,
                )
                .get(0)
        });
    }
    Ok(Generation {
        text,
        tokens,
        finish_reason: FinishReason::Length,
    })
}
