//! Embedding adaptation after vocabulary extension (seed §5.0): the input (and untied output) embedding
//! tables grow to the extended vocabulary, and each new token's row starts as the mean of the rows of the
//! old tokens it decomposes into (`new_tokens.json` from `dapt tokenizer extend`), so that the adapted
//! model reads a new token about as it read its pieces. Other strategies: `random` (normal with the old
//! rows' standard deviation, seeded). Works on the checkpoint's tensors directly: no model is built.
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
    /// Whether input and output tables are one.
    pub tied: bool,
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
        let use_mean = init == ResizeInit::Mean
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
pub fn resize_embeddings(
    model_dir: &Path,
    tokens: &[NewTokenSpec],
    vocab_size: i64,
    init: ResizeInit,
    seed: u64,
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
    let seed = seed as i64;
    let (embed, from_subtokens, random) = grow(&tensors[embed_at].1, rows, tokens, init, seed);
    tensors[embed_at].1 = embed;
    let tied = config.tie_word_embeddings;
    if tied {
        tensors.retain(|(n, _)| n != HEAD);
    } else if let Some(head_at) = tensors.iter().position(|(n, _)| n == HEAD) {
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
    })
}
