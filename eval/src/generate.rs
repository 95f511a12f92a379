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

/// Where one row of a batched generation stands.
struct Row {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
}

/// Generates a continuation of each prompt with its seed, as one batch: the prompts are padded on
/// the left to end together (the padding is masked and each row's positions start at its first
/// token), then decoded a token per row per step. Row `r` draws as [`generate`] would for
/// `prompts[r]` with `options.seed = seeds[r]`.
pub fn generate_batch(
    model: &CausalLm,
    tokenizer: &TokenizerFile,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    seeds: &[u64],
    device: Device,
) -> Result<Vec<Generation>> {
    if prompts.len() != seeds.len() {
        return Err(Error::Setting {
            key: "seeds".into(),
            reason: format!("{} prompts but {} seeds", prompts.len(), seeds.len()),
        });
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Request {
            index: i,
            reason: "empty prompt".into(),
        });
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let filler = model.config().eos_ids().first().copied().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut pads = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let pad = longest - prompt.len();
        pads.push(pad as i64);
        ids.extend(std::iter::repeat_n(filler, pad));
        ids.extend(prompt.iter().map(|&t| i64::from(t)));
    }
    let mut cache = KvCache::left_padded(pads);
    let logits = tch::no_grad(|| {
        model.next_token_logits(
            &Tensor::from_slice(&ids)
                .view([prompts.len() as i64, longest as i64])
                .to_device(device),
            &mut cache,
        )
    });
    decode_rows(model, tokenizer, logits, cache, options, seeds, device)
}

/// The decoding loop of a batch: `logits` `[n, vocab]` of each row's next token after what `cache`
/// holds; row `r` samples with `seeds[r]`; rows that ended wait for the others.
fn decode_rows(
    model: &CausalLm,
    tokenizer: &TokenizerFile,
    mut logits: Tensor,
    mut cache: KvCache,
    options: &GenerateOptions,
    seeds: &[u64],
    device: Device,
) -> Result<Vec<Generation>> {
    let n = seeds.len();
    let eos = model.config().eos_ids();
    let filler = eos.first().copied().unwrap_or(0);
    let mut rows: Vec<Row> = (0..n)
        .map(|_| Row {
            tokens: Vec::new(),
            text: String::new(),
            finish: None,
        })
        .collect();
    let row_options: Vec<GenerateOptions> = seeds
        .iter()
        .map(|&seed| GenerateOptions {
            seed,
            ..options.clone()
        })
        .collect();
    for step in 0..options.max_tokens {
        let mut inputs = Vec::with_capacity(n);
        for (r, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                inputs.push(filler);
                continue;
            }
            let next = pick(&logits.get(r as i64), &row_options[r], step as u64);
            inputs.push(i64::from(next));
            if eos.contains(&i64::from(next)) {
                row.finish = Some(FinishReason::Stop);
                continue;
            }
            row.tokens.push(next);
            row.text = tokenizer.decode(&row.tokens)?;
            if let Some(at) = options
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| row.text.find(s.as_str()))
                .min()
            {
                row.text.truncate(at);
                row.finish = Some(FinishReason::Stop);
            }
        }
        if rows.iter().all(|r| r.finish.is_some()) || step + 1 == options.max_tokens {
            break;
        }
        logits = tch::no_grad(|| {
            model.next_token_logits(
                &Tensor::from_slice(&inputs).unsqueeze(1).to_device(device),
                &mut cache,
            )
        });
    }
    Ok(rows
        .into_iter()
        .map(|row| Generation {
            text: row.text,
            tokens: row.tokens,
            finish_reason: row.finish.unwrap_or(FinishReason::Length),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapt_trainer::ModelConfig;
    use tch::nn;

    #[test]
    fn batched_samples_draw_as_single_generations_do() {
        tch::manual_seed(11);
        let tokenizer = TokenizerFile::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs/demo/tokenizer.json"),
        )
        .unwrap();
        let config = ModelConfig {
            vocab_size: tokenizer.vocab_size() as i64,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 128,
            ..ModelConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = CausalLm::new(&vs.root(), &config).unwrap();
        let prompt = tokenizer.encode("t", "Пакетный менеджер").unwrap();
        let options = GenerateOptions {
            max_tokens: 12,
            temperature: 1.0,
            ..GenerateOptions::default()
        };
        let seeds = [3, 9, 27, 81];
        let same = vec![prompt.clone(); seeds.len()];
        let batched =
            generate_batch(&model, &tokenizer, &same, &options, &seeds, Device::Cpu).unwrap();
        assert_eq!(batched.len(), 4);
        for (seed, row) in seeds.iter().zip(&batched) {
            let single = generate(
                &model,
                &tokenizer,
                &prompt,
                &GenerateOptions {
                    seed: *seed,
                    ..options.clone()
                },
                Device::Cpu,
            )
            .unwrap();
            assert_eq!(&single, row, "seed {seed}");
        }
        assert_ne!(batched[0].tokens, batched[1].tokens, "seeds draw apart");
        // Prompts of different lengths in one left-padded batch: each row as alone.
        let prompts: Vec<Vec<u32>> = [
            "Пакетный менеджер",
            "Файл",
            "Система устанавливает пакеты и",
        ]
        .iter()
        .map(|p| tokenizer.encode("t", p).unwrap())
        .collect();
        assert!(prompts[1].len() < prompts[0].len() && prompts[0].len() < prompts[2].len());
        for temperature in [0.0, 1.0] {
            let options = GenerateOptions {
                temperature,
                ..options.clone()
            };
            let rows = generate_batch(
                &model,
                &tokenizer,
                &prompts,
                &options,
                &[5, 6, 7],
                Device::Cpu,
            )
            .unwrap();
            for ((prompt, seed), row) in prompts.iter().zip([5, 6, 7]).zip(&rows) {
                let alone = generate(
                    &model,
                    &tokenizer,
                    prompt,
                    &GenerateOptions {
                        seed,
                        ..options.clone()
                    },
                    Device::Cpu,
                )
                .unwrap();
                assert_eq!(&alone, row, "temperature {temperature}, seed {seed}");
            }
        }
        // A stop string ends one row while the others go on.
        let stop = batched[2].text.chars().take(3).collect::<String>();
        let stopped = generate_batch(
            &model,
            &tokenizer,
            &same,
            &GenerateOptions {
                stop: vec![stop.clone()],
                ..options.clone()
            },
            &seeds,
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(stopped[2].finish_reason, FinishReason::Stop);
        assert!(!stopped[2].text.contains(&stop));
    }
}
