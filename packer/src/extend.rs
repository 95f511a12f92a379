//! Vocabulary extension (the "merge" of domain tokens into an existing BPE tokenizer): new merges are
//! learned on domain text with the base tokenizer's own normaliser and pre-tokeniser, and appended —
//! old token ids and merges unchanged, new ids after every old id (added tokens included), each new
//! merge made of tokens that exist before it. Because appended merges rank after all old ones, they
//! only fire where the old merges are exhausted: text encodes to fewer tokens, and the old model stays
//! valid for every old id.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
    TokenizerBuilder,
};

use crate::error::{json_error, tokenizers_error};
use crate::{Error, Result, TokenizerFile};

/// One appended token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Its id (after every old id).
    pub id: u32,
    /// The token as the vocabulary spells it (byte-level alphabet).
    pub token: String,
    /// The text it stands for.
    pub text: String,
    /// Its decomposition into old token ids (for mean-of-subtoken embedding initialisation).
    pub decomposition: Vec<u32>,
}

/// The extended tokenizer and what was added.
pub struct Extension {
    /// The base tokenizer with the new merges and tokens appended.
    pub tokenizer: TokenizerFile,
    /// The appended tokens, in id order.
    pub new_tokens: Vec<NewToken>,
}

fn fail(reason: impl Into<String>) -> Error {
    Error::Tokenizer {
        what: "extension".into(),
        reason: reason.into(),
    }
}

/// Learns merges on `texts` with the base tokenizer's normaliser and pre-tokeniser, in rank order.
fn learn_merges(
    base: &Tokenizer,
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<Vec<(String, String)>> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let builder: TokenizerBuilder<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(base.get_normalizer().cloned())
        .with_pre_tokenizer(base.get_pre_tokenizer().cloned())
        .with_post_processor(None)
        .with_decoder(None);
    let mut auxiliary = builder.build().map_err(tokenizers_error("extension"))?;
    auxiliary
        .train(&mut trainer, texts.iter())
        .map_err(tokenizers_error("extension"))?;
    let json: Value = serde_json::from_str(
        &Tokenizer::from(auxiliary)
            .to_string(false)
            .map_err(tokenizers_error("extension"))?,
    )
    .map_err(json_error("the extension's merges"))?;
    parse_merges(&json["model"]["merges"])
}

fn parse_merges(merges: &Value) -> Result<Vec<(String, String)>> {
    let list = merges
        .as_array()
        .ok_or_else(|| fail("the model has no merges list"))?;
    list.iter()
        .map(|m| match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| fail(format!("malformed merge {s:?}"))),
            Value::Array(pair) if pair.len() == 2 => Ok((
                pair[0].as_str().unwrap_or_default().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )),
            other => Err(fail(format!("malformed merge {other}"))),
        })
        .collect()
}

/// Appends up to `count` tokens learned on `texts` to the byte-level BPE tokenizer `base`.
pub fn extend(
    base: &TokenizerFile,
    texts: &[String],
    count: usize,
    min_frequency: u64,
) -> Result<Extension> {
    let mut json: Value =
        serde_json::from_slice(base.json()).map_err(json_error("the base tokenizer"))?;
    if json["model"]["type"] != "BPE" {
        return Err(fail("the base tokenizer is not BPE"));
    }
    let vocab: HashMap<String, u32> = json["model"]["vocab"]
        .as_object()
        .ok_or_else(|| fail("the model has no vocabulary"))?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as u32)))
        .collect();
    let strings_style = matches!(
        json["model"]["merges"].as_array().and_then(|m| m.first()),
        Some(Value::String(_))
    );
    let added_max = json["added_tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["id"].as_u64()).max().unwrap_or(0))
        .unwrap_or(0) as u32;
    let mut next_id = vocab.values().copied().max().unwrap_or(0).max(added_max) + 1;

    // Learn more merges than needed: most of the first ones the base already has.
    let mut size = 256 + 4 * count + 1000;
    let mut added: Vec<(String, String, String, u32)> = Vec::new();
    loop {
        added.clear();
        let mut known: HashSet<String> = vocab.keys().cloned().collect();
        let mut id = next_id;
        for (a, b) in learn_merges(base.tokenizer()?, texts, size, min_frequency)? {
            let merged = format!("{a}{b}");
            if known.contains(&merged) || !known.contains(&a) || !known.contains(&b) {
                continue;
            }
            known.insert(merged.clone());
            added.push((a, b, merged, id));
            id += 1;
            if added.len() == count {
                break;
            }
        }
        if added.len() == count || size >= 400_000 {
            break;
        }
        size *= 2;
    }
    tracing::info!(
        requested = count,
        added = added.len(),
        "vocabulary extension"
    );

    let added_tokens: Vec<(String, u32)> = json["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((t["content"].as_str()?.to_string(), t["id"].as_u64()? as u32))
                })
                .collect()
        })
        .unwrap_or_default();
    let model = json["model"]
        .as_object_mut()
        .ok_or_else(|| fail("no model"))?;
    {
        let vocab_json = model
            .get_mut("vocab")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| fail("no vocabulary"))?;
        // On load, HF tokenizers gives added tokens that are not in the model's vocabulary the ids after
        // it: with a larger vocabulary they would move. Listed in the vocabulary, they keep their ids.
        for (content, id) in &added_tokens {
            if !vocab_json.contains_key(content) {
                vocab_json.insert(content.clone(), Value::from(*id));
            }
        }
        for (_, _, merged, id) in &added {
            vocab_json.insert(merged.clone(), Value::from(*id));
        }
    }
    {
        let merges_json = model
            .get_mut("merges")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| fail("no merges"))?;
        for (a, b, _, _) in &added {
            merges_json.push(if strings_style {
                Value::from(format!("{a} {b}"))
            } else {
                Value::from(vec![a.clone(), b.clone()])
            });
        }
    }
    next_id += added.len() as u32;
    let bytes = serde_json::to_vec(&json).map_err(json_error("the extended tokenizer"))?;
    let tokenizer = TokenizerFile::from_json(bytes, "extended tokenizer")?;
    debug_assert!(tokenizer.vocab_size() as u32 <= next_id);

    // Decompositions into old ids, through the merge tree.
    let parts: BTreeMap<&str, (&str, &str)> = added
        .iter()
        .map(|(a, b, m, _)| (m.as_str(), (a.as_str(), b.as_str())))
        .collect();
    fn expand(
        token: &str,
        vocab: &HashMap<String, u32>,
        parts: &BTreeMap<&str, (&str, &str)>,
        out: &mut Vec<u32>,
    ) {
        match vocab.get(token) {
            Some(&id) => out.push(id),
            None => {
                if let Some((a, b)) = parts.get(token) {
                    expand(a, vocab, parts, out);
                    expand(b, vocab, parts, out);
                }
            }
        }
    }
    let mut new_tokens = Vec::with_capacity(added.len());
    for (_, _, merged, id) in &added {
        let mut decomposition = Vec::new();
        expand(merged, &vocab, &parts, &mut decomposition);
        new_tokens.push(NewToken {
            id: *id,
            token: merged.clone(),
            text: tokenizer.decode(&[*id])?,
            decomposition,
        });
    }
    Ok(Extension {
        tokenizer,
        new_tokens,
    })
}
