//! Embedding adaptation after vocabulary extension (seed §5.0): the input (and untied output) embedding
//! tables grow to the extended vocabulary, and each new token's row starts as the mean of the rows of the
//! old tokens it decomposes into (`new_tokens.json` from `dapt tokenizer extend`), so that the adapted
//! model reads a new token about as it read its pieces. Other strategies: `random` (normal with the old
//! rows' standard deviation, seeded), and `frequency`, which also gives the model an output head that
//! predicts new tokens about as often as the text holds them (see [`ResizeInit::Frequency`]). Works on
//! the checkpoint's tensors directly: no model is built (`frequency`'s statistics come with one
//! forward pass of the base, [`mean_final_hidden`]).
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::io_error;
use crate::weights::{read_safetensors, save_safetensors, weight_files};
use crate::{Error, ModelConfig, Result};

/// One appended token, as `new_tokens.json` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTokenSpec {
    /// Its id in the extended vocabulary.
    pub id: i64,
    /// The text it stands for (for messages and fallbacks).
    #[serde(default)]
    pub text: String,
    /// Old token ids it is made of.
    #[serde(default)]
    pub decomposition: Vec<i64>,
}

/// How new rows start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeInit {
    /// Mean of the old sub-token rows (random where a token has no decomposition).
    #[default]
    Mean,
    /// Normal with the old rows' standard deviation.
    Random,
    /// Input rows as `mean`; the output head is untied (a tied model gets `lm_head` as a copy of its
    /// table) and each new token `t` with first piece `p` predicts `log P(t | p)` above `p`:
    /// `head[t] = head[p] + log P(t | p) · u/|u|²`, and `head[p] += log P(p alone | p) · u/|u|²`, where
    /// `u` is the base's mean final hidden state (whose projection `h·u/|u|²` is close to 1 at every
    /// position, so the added vector acts as a bias) and the probabilities come from how often the
    /// extension text, tokenised with the extended tokenizer, holds `t` and `p` alone (add-one
    /// smoothed over `p`'s group). The new tokens and `p` alone then share what the base gave `p`.
    /// Needs [`FrequencyStatistics`].
    Frequency,
}

/// What [`ResizeInit::Frequency`] needs from text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrequencyStatistics {
    /// Occurrences of each token id in the extension text tokenised with the extended tokenizer (ids
    /// past the end count 0).
    pub counts: Vec<u64>,
    /// The base model's mean final hidden state (the input of its output head), `hidden_size` long.
    pub hidden_mean: Vec<f32>,
}

/// What a resize did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResizeReport {
    /// Rows before.
    pub old_rows: i64,
    /// Rows after.
    pub new_rows: i64,
    /// New tokens initialised from their sub-tokens.
    pub from_subtokens: usize,
    /// Rows initialised at random (new tokens without decomposition, padding rows).
    pub random: usize,
    /// Whether input and output tables are one (after the resize: `frequency` unties them).
    pub tied: bool,
    /// New tokens whose output row got a frequency bias (`frequency` init).
    #[serde(default)]
    pub frequency_biased: usize,
}

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// Grows `table` (`[old, hidden]`) to `rows` rows and fills every row listed in `fill` (and every new
/// padding row) per `init`.
fn grow(
    table: &Tensor,
    rows: i64,
    tokens: &[NewTokenSpec],
    init: ResizeInit,
    seed: i64,
) -> (Tensor, usize, usize) {
    let old = table.size()[0];
    let hidden = table.size()[1];
    let kind = table.kind();
    let base = table.to_kind(Kind::Float);
    let std = base.std(true).double_value(&[]);
    tch::manual_seed(seed);
    let grown = if rows > old {
        Tensor::cat(
            &[
                &base,
                &(Tensor::randn([rows - old, hidden], (Kind::Float, table.device())) * std),
            ],
            0,
        )
    } else {
        base.copy()
    };
    let (mut from_subtokens, mut random) = (0, (rows - old).max(0) as usize);
    for token in tokens {
        let pieces: Vec<i64> = token
            .decomposition
            .iter()
            .copied()
            .filter(|&id| id >= 0 && id < old)
            .collect();
        let use_mean = init != ResizeInit::Random
            && !pieces.is_empty()
            && pieces.len() == token.decomposition.len();
        let row = if use_mean {
            from_subtokens += 1;
            if token.id >= old {
                random -= 1;
            }
            base.index_select(0, &Tensor::from_slice(&pieces).to_device(table.device()))
                .mean_dim(0, false, Kind::Float)
        } else {
            if token.id < old {
                random += 1; // an existing (padding) row is re-drawn
            }
            Tensor::randn([hidden], (Kind::Float, table.device())) * std
        };
        grown.get(token.id).copy_(&row);
    }
    (grown.to_kind(kind), from_subtokens, random)
}

/// Writes to `out` a copy of the model in `model_dir` whose embedding tables have
/// `max(old rows, vocab_size, largest new id + 1)` rows, each new token's row initialised per `init`.
/// `config.json` gets the new `vocab_size`; other weights are copied unchanged.
///
/// `statistics` are required by (and only used by) [`ResizeInit::Frequency`].
pub fn resize_embeddings(
    model_dir: &Path,
    tokens: &[NewTokenSpec],
    vocab_size: i64,
    init: ResizeInit,
    seed: u64,
    statistics: Option<&FrequencyStatistics>,
    out: &Path,
) -> Result<ResizeReport> {
    let mut config = ModelConfig::load(&model_dir.join("config.json"))?;
    let mut tensors = Vec::new();
    for file in weight_files(model_dir)? {
        tensors.extend(read_safetensors(&file)?);
    }
    let embed_at = tensors
        .iter()
        .position(|(n, _)| n == EMBED)
        .ok_or_else(|| Error::File {
            path: model_dir.display().to_string(),
            reason: format!("no {EMBED} in the checkpoint"),
        })?;
    let old = tensors[embed_at].1.size()[0];
    let mut rows = old.max(vocab_size);
    for token in tokens {
        if token.id < 0 {
            return Err(Error::Setting {
                key: "new_tokens".into(),
                reason: format!("token {:?} has a negative id", token.text),
            });
        }
        rows = rows.max(token.id + 1);
    }
    let statistics = match (init, statistics) {
        (ResizeInit::Frequency, None) => {
            return Err(Error::Setting {
                key: "init".into(),
                reason: "`frequency` needs token counts and the base's mean hidden state".into(),
            })
        }
        (ResizeInit::Frequency, Some(s)) => {
            if s.hidden_mean.len() as i64 != config.hidden_size {
                return Err(Error::Setting {
                    key: "init".into(),
                    reason: format!(
                        "the mean hidden state has {} values, the model's hidden size is {}",
                        s.hidden_mean.len(),
                        config.hidden_size
                    ),
                });
            }
            Some(s)
        }
        _ => None,
    };
    let seed = seed as i64;
    let base_head = match (statistics, config.tie_word_embeddings) {
        // The old output rows, before the input table grows.
        (Some(_), true) => Some(tensors[embed_at].1.to_kind(Kind::Float)),
        _ => None,
    };
    let (embed, from_subtokens, random) = grow(&tensors[embed_at].1, rows, tokens, init, seed);
    let kind = embed.kind();
    tensors[embed_at].1 = embed;
    let mut frequency_biased = 0;
    if let Some(statistics) = statistics {
        let old_head = match base_head {
            Some(head) => head,
            None => tensors
                .iter()
                .find(|(n, _)| n == HEAD)
                .map(|(_, t)| t.to_kind(Kind::Float))
                .ok_or_else(|| Error::File {
                    path: model_dir.display().to_string(),
                    reason: format!("untied embeddings but no {HEAD} in the checkpoint"),
                })?,
        };
        let (head, biased) = frequency_head(&old_head, rows, tokens, statistics, seed)?;
        frequency_biased = biased;
        tensors.retain(|(n, _)| n != HEAD);
        tensors.push((HEAD.to_string(), head.to_kind(kind)));
        config.tie_word_embeddings = false;
    }
    // (`frequency` wrote its untied head above.)
    let tied = config.tie_word_embeddings;
    if tied {
        tensors.retain(|(n, _)| n != HEAD);
    } else if let (None, Some(head_at)) = (statistics, tensors.iter().position(|(n, _)| n == HEAD))
    {
        let (head, _, _) = grow(
            &tensors[head_at].1,
            rows,
            tokens,
            init,
            seed.wrapping_add(1),
        );
        tensors[head_at].1 = head;
    }
    config.vocab_size = rows;
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    save_safetensors(&out.join("model.safetensors"), &tensors)?;
    config.save(out)?;
    Ok(ResizeReport {
        old_rows: old,
        new_rows: rows,
        from_subtokens,
        random,
        tied,
        frequency_biased,
    })
}

/// The output head of [`ResizeInit::Frequency`]: `old_head` (`[old, hidden]`, f32) grown to `rows`;
/// returns it and how many new rows got a bias.
fn frequency_head(
    old_head: &Tensor,
    rows: i64,
    tokens: &[NewTokenSpec],
    statistics: &FrequencyStatistics,
    seed: i64,
) -> Result<(Tensor, usize)> {
    let old = old_head.size()[0];
    let u = Tensor::from_slice(&statistics.hidden_mean).to_kind(Kind::Float);
    let norm2 = u.dot(&u).double_value(&[]);
    if !(norm2.is_finite() && norm2 > 0.0) {
        return Err(Error::Setting {
            key: "init".into(),
            reason: "the base's mean hidden state is zero or not finite".into(),
        });
    }
    let direction = &u / norm2;
    let count = |id: i64| statistics.counts.get(id as usize).copied().unwrap_or(0) as f64;
    // Each first piece's group: the piece alone and the new tokens that start with it.
    let mut groups: std::collections::BTreeMap<i64, Vec<&NewTokenSpec>> = Default::default();
    for token in tokens {
        if let Some(&first) = token.decomposition.first() {
            if first >= 0
                && first < old
                && token.decomposition.iter().all(|&id| id >= 0 && id < old)
            {
                groups.entry(first).or_default().push(token);
            }
        }
    }
    // New rows start as mean-of-pieces rows (the random ones where a token has no pieces); the
    // grouped ones are replaced below.
    let (head, _, _) = grow(
        old_head,
        rows,
        tokens,
        ResizeInit::Mean,
        seed.wrapping_add(1),
    );
    let mut biased = 0;
    tch::no_grad(|| {
        for (&piece, members) in &groups {
            let total: f64 = count(piece)
                + members.iter().map(|t| count(t.id)).sum::<f64>()
                + members.len() as f64
                + 1.0;
            let piece_row = old_head.get(piece);
            for token in members {
                let p = (count(token.id) + 1.0) / total;
                head.get(token.id)
                    .copy_(&(&piece_row + &direction * p.ln()));
                biased += 1;
            }
            let alone = (count(piece) + 1.0) / total;
            head.get(piece)
                .copy_(&(&piece_row + &direction * alone.ln()));
        }
    });
    Ok((head, biased))
}

/// The mean final hidden state (after the last norm, the input of the output head) of the model in
/// `model_dir` over the token sequences `sequences` (each run on its own from position 0), on the
/// CPU: what [`ResizeInit::Frequency`] needs besides counts.
pub fn mean_final_hidden(model_dir: &Path, sequences: &[Vec<i64>]) -> Result<Vec<f32>> {
    let (_vs, model) = crate::CausalLm::load(model_dir, tch::Device::Cpu, Kind::Float)?;
    let vocab = model.config().vocab_size;
    let mut sum: Option<Tensor> = None;
    let mut positions = 0i64;
    for sequence in sequences.iter().filter(|s| !s.is_empty()) {
        if let Some(&bad) = sequence.iter().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::Setting {
                key: "init".into(),
                reason: format!("token id {bad} is outside the model's vocabulary of {vocab}"),
            });
        }
        let hidden = tch::no_grad(|| {
            model
                .final_hidden(&Tensor::from_slice(sequence).unsqueeze(0))
                .sum_dim_intlist(&[0i64, 1][..], false, Kind::Float)
        });
        positions += sequence.len() as i64;
        sum = Some(match sum {
            None => hidden,
            Some(s) => s + hidden,
        });
    }
    let sum = sum.ok_or_else(|| Error::Setting {
        key: "init".into(),
        reason: "no text to take the mean hidden state over".into(),
    })?;
    let mean = sum / positions as f64;
    Vec::<f32>::try_from(&mean).map_err(|e| Error::Setting {
        key: "init".into(),
        reason: format!("mean hidden state: {e}"),
    })
}
