//! An HF tokenizer rebuilt from the vocabulary a GGUF file carries in its metadata (`tokenizer.ggml.*`):
//! `tokenizer.json` and the `tokenizer_config.json` fields (special tokens, chat template, whether
//! BOS/EOS are added). Byte-level BPE (`gpt2`): tokens, merges, control tokens as special added
//! tokens, the pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre`. SentencePiece (`llama`: Llama 2,
//! Mistral v0.1, Phi-3, Gemma): BPE with byte fallback whose merges come from the pieces' scores as
//! transformers' `SpmConverter` derives them, spaces as `▁` (prefixed unless
//! `tokenizer.ggml.add_space_prefix` is false).
//!
//! The pre-tokenizer follows llama.cpp, the GGUF format's own runtime, which splits text as the model's
//! training tokenizer did. For `smollm` (SmolLM/SmolLM2, also StarCoder-style vocabularies) that is
//! every digit on its own, then GPT-2's split: the vocabulary holds no token that joins a digit with
//! anything. (HF transformers 5.24's GGUF loader ignores `tokenizer.ggml.pre` and splits GPT-2's way,
//! which differs where whitespace precedes a digit: "  1" is `ĠĠ` `Ġ` `1` there, `ĠĠĠ` `1` here.)
use serde_json::{json, Map, Value};

use crate::error::{json_error, tokenizers_error};
use crate::{Error, Result};

/// GGUF's token types (`tokenizer.ggml.token_type`).
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Llama 3's split (`llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`qwen2`): Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values dapt rebuilds, for error messages.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "llama-bpe",
    "llama3",
    "qwen2",
];

/// The tokenizer metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufVocabulary {
    /// `tokenizer.ggml.model`: `gpt2` is byte-level BPE, the one dapt rebuilds.
    pub model: String,
    /// `tokenizer.ggml.pre`: how text is split before BPE (llama.cpp's names).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, by id (empty when the file has none).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: "left right", by rank.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`, by id (SentencePiece vocabularies: the merge priorities).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; default true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default false for byte-level BPE).
    pub add_bos_token: bool,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: bool,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
    /// The model's context length, for `model_max_length`.
    pub context_length: Option<u64>,
}

fn invalid(key: &str, reason: impl Into<String>) -> Error {
    Error::Tokenizer {
        what: format!("from GGUF metadata {key}"),
        reason: reason.into(),
    }
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": use_regex,
    })
}

fn split(regex: &str) -> Value {
    json!({
        "type": "Split",
        "pattern": { "Regex": regex },
        "behavior": "Isolated",
        "invert": false,
    })
}

impl GgufVocabulary {
    fn token(&self, id: Option<u32>, key: &str) -> Result<Option<&str>> {
        match id {
            None => Ok(None),
            Some(id) => self
                .tokens
                .get(id as usize)
                .map(|t| Some(t.as_str()))
                .ok_or_else(|| {
                    invalid(
                        key,
                        format!("id {id} is outside the {} tokens", self.tokens.len()),
                    )
                }),
        }
    }

    /// The normalizer and pre-tokenizer of `tokenizer.ggml.pre`.
    fn split(&self) -> Result<(Value, Value)> {
        let pre = self.pre.as_deref().unwrap_or("default");
        let gpt2 = byte_level(false, true, true);
        Ok(match pre {
            "default" | "gpt-2" | "gpt2" => (Value::Null, gpt2),
            // Every digit on its own, then GPT-2's split (llama.cpp: "\p{N}" before GPT-2's regex).
            "smollm" | "starcoder" | "refact" | "codeshell" => (
                Value::Null,
                json!({
                    "type": "Sequence",
                    "pretokenizers": [{ "type": "Digits", "individual_digits": true }, gpt2],
                }),
            ),
            "llama-bpe" | "llama3" => (
                Value::Null,
                json!({
                    "type": "Sequence",
                    "pretokenizers": [split(LLAMA3_REGEX), byte_level(false, true, false)],
                }),
            ),
            "qwen2" => (
                json!({ "type": "NFC" }),
                json!({
                    "type": "Sequence",
                    "pretokenizers": [split(QWEN2_REGEX), byte_level(false, false, false)],
                }),
            ),
            other => {
                return Err(invalid(
                    "tokenizer.ggml.pre",
                    format!(
                        "{other:?} is not supported (supported: {})",
                        SUPPORTED_PRE_TOKENIZERS.join(", ")
                    ),
                ))
            }
        })
    }

    /// `tokenizer.json`: byte-level BPE over the GGUF vocabulary, loadable by HF `tokenizers`.
    pub fn tokenizer_json(&self) -> Result<String> {
        let sentencepiece = match self.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(invalid(
                    "tokenizer.ggml.model",
                    format!(
                        "{other:?} is not supported: dapt rebuilds byte-level BPE (\"gpt2\") and \
                         SentencePiece (\"llama\") vocabularies"
                    ),
                ))
            }
        };
        if self.tokens.is_empty() {
            return Err(invalid("tokenizer.ggml.tokens", "no tokens"));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(invalid(
                "tokenizer.ggml.token_type",
                format!(
                    "{} types for {} tokens",
                    self.token_types.len(),
                    self.tokens.len()
                ),
            ));
        }
        let mut vocab = Map::new();
        for (id, token) in self.tokens.iter().enumerate() {
            if vocab.insert(token.clone(), json!(id)).is_some() {
                return Err(invalid(
                    "tokenizer.ggml.tokens",
                    format!("token {token:?} (id {id}) appears twice"),
                ));
            }
        }
        let merges = if sentencepiece {
            self.sentencepiece_merges()?
        } else {
            self.listed_merges()?
        };
        let added: Vec<Value> = self
            .token_types
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                **t == CONTROL || **t == USER_DEFINED || (sentencepiece && **t == UNKNOWN)
            })
            .map(|(id, t)| {
                json!({
                    "id": id,
                    "content": self.tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": *t != USER_DEFINED,
                })
            })
            .collect();
        let (normalizer, pre_tokenizer) = if sentencepiece {
            (self.sentencepiece_normalizer(), Value::Null)
        } else {
            self.split()?
        };
        let bos = self.token(self.bos_token_id, "tokenizer.ggml.bos_token_id")?;
        let eos = self.token(self.eos_token_id, "tokenizer.ggml.eos_token_id")?;
        let required = |wanted: bool, token: Option<&str>, id: Option<u32>, key: &str| match (
            wanted, token, id,
        ) {
            (false, _, _) => Ok(None),
            (true, Some(token), Some(id)) => Ok(Some((token.to_string(), id))),
            _ => Err(invalid(key, "is true but the file names no such token")),
        };
        let bos_added = required(
            self.add_bos_token,
            bos,
            self.bos_token_id,
            "tokenizer.ggml.add_bos_token",
        )?;
        let eos_added = required(
            self.add_eos_token,
            eos,
            self.eos_token_id,
            "tokenizer.ggml.add_eos_token",
        )?;
        let post_processor = if bos_added.is_none() && eos_added.is_none() {
            if sentencepiece {
                Value::Null
            } else {
                byte_level(true, false, true)
            }
        } else {
            // BOS/EOS around each sequence, as HF writes it for Llama 3 (`<|begin_of_text|> $A`).
            let template = |part: &str, type_id: u32| -> Vec<Value> {
                let special = |token: &Option<(String, u32)>| {
                    token
                        .as_ref()
                        .map(|(t, _)| json!({ "SpecialToken": { "id": t, "type_id": type_id } }))
                };
                special(&bos_added)
                    .into_iter()
                    .chain([json!({ "Sequence": { "id": part, "type_id": type_id } })])
                    .chain(special(&eos_added))
                    .collect()
            };
            let special_tokens: Map<String, Value> = [&bos_added, &eos_added]
                .into_iter()
                .flatten()
                .map(|(token, id)| {
                    (
                        token.clone(),
                        json!({ "id": token, "ids": [id], "tokens": [token] }),
                    )
                })
                .collect();
            let mut pair = template("A", 0);
            pair.extend(template("B", 1));
            json!({
                "type": "TemplateProcessing",
                "single": template("A", 0),
                "pair": pair,
                "special_tokens": special_tokens,
            })
        };
        let document = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": if sentencepiece {
                self.sentencepiece_decoder()
            } else {
                byte_level(true, true, true)
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": if sentencepiece {
                    json!(self.sentencepiece_unknown()?)
                } else {
                    Value::Null
                },
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": sentencepiece,
                "byte_fallback": sentencepiece,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            },
        });
        let text = serde_json::to_string_pretty(&document).map_err(json_error(
            "the tokenizer.json rebuilt from tokenizer.ggml.tokens",
        ))?;
        // The tokenizers crate must take it as it stands.
        text.parse::<tokenizers::Tokenizer>()
            .map_err(tokenizers_error("rebuilt from tokenizer.ggml.tokens"))?;
        Ok(text + "\n")
    }

    /// `tokenizer.ggml.merges` as `[left, right]` pairs.
    fn listed_merges(&self) -> Result<Vec<Value>> {
        self.merges
            .iter()
            .enumerate()
            .map(|(rank, merge)| match merge.split_once(' ') {
                Some((left, right)) => Ok(json!([left, right])),
                None => Err(invalid(
                    "tokenizer.ggml.merges",
                    format!("merge {rank} ({merge:?}) is not two tokens separated by a space"),
                )),
            })
            .collect()
    }

    /// Whether spaces are prefixed (SentencePiece's `add_dummy_prefix`).
    fn space_prefix(&self) -> bool {
        self.add_space_prefix.unwrap_or(true)
    }

    /// Spaces as `▁`, with one prefixed (transformers' legacy Llama normalizer) unless the file says
    /// not to (Gemma).
    fn sentencepiece_normalizer(&self) -> Value {
        let replace =
            json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" });
        if self.space_prefix() {
            json!({
                "type": "Sequence",
                "normalizers": [{ "type": "Prepend", "prepend": "\u{2581}" }, replace],
            })
        } else {
            replace
        }
    }

    /// The unknown piece: `tokenizer.ggml.unknown_token_id`, or else the first piece of type unknown
    /// (llama.cpp's converter writes the id for Llama, not for Gemma).
    fn sentencepiece_unknown(&self) -> Result<Option<&str>> {
        match self.unknown_token_id {
            Some(_) => self.token(self.unknown_token_id, "tokenizer.ggml.unknown_token_id"),
            None => Ok(self
                .token_types
                .iter()
                .position(|&t| t == UNKNOWN)
                .map(|id| self.tokens[id].as_str())),
        }
    }

    /// `▁` back to spaces, byte tokens back to bytes, and the prefixed space stripped.
    fn sentencepiece_decoder(&self) -> Value {
        let mut decoders = vec![
            json!({ "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " }),
            json!({ "type": "ByteFallback" }),
            json!({ "type": "Fuse" }),
        ];
        if self.space_prefix() {
            decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
        }
        json!({ "type": "Sequence", "decoders": decoders })
    }

    /// BPE merges of a SentencePiece vocabulary, as transformers' `SentencePieceExtractor` derives
    /// them: every split of a piece into two pieces of the vocabulary (ordered by their ids), all of
    /// them ranked by the whole piece's score, highest first (ties: longer left, then longer right
    /// part first, then vocabulary order).
    fn sentencepiece_merges(&self) -> Result<Vec<Value>> {
        if self.scores.len() != self.tokens.len() {
            return Err(invalid(
                "tokenizer.ggml.scores",
                format!(
                    "{} scores for {} tokens (SentencePiece merges are ranked by score)",
                    self.scores.len(),
                    self.tokens.len()
                ),
            ));
        }
        let ids: std::collections::HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.as_str(), id))
            .collect();
        // (score, left chars, right chars, left id, right id)
        let mut candidates: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
        for (piece, score) in self.tokens.iter().zip(&self.scores) {
            let mut local: Vec<(usize, usize, usize, usize)> = Vec::new();
            for (left_chars, (split, _)) in piece.char_indices().enumerate().skip(1) {
                let (left, right) = piece.split_at(split);
                if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                    local.push((l, r, left_chars, right.chars().count()));
                }
            }
            local.sort_by_key(|&(l, r, _, _)| (l, r));
            candidates.extend(
                local
                    .into_iter()
                    .map(|(l, r, lc, rc)| (*score, lc, rc, l, r)),
            );
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        Ok(candidates
            .into_iter()
            .map(|(_, _, _, l, r)| json!([self.tokens[l], self.tokens[r]]))
            .collect())
    }

    /// `tokenizer_config.json`: the special tokens by content, whether BOS/EOS are added, the chat
    /// template and the context length.
    pub fn tokenizer_config(&self) -> Result<Value> {
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        config.insert("add_bos_token".into(), json!(self.add_bos_token));
        config.insert("add_eos_token".into(), json!(self.add_eos_token));
        config.insert("clean_up_tokenization_spaces".into(), json!(false));
        for (name, id, key) in [
            (
                "bos_token",
                self.bos_token_id,
                "tokenizer.ggml.bos_token_id",
            ),
            (
                "eos_token",
                self.eos_token_id,
                "tokenizer.ggml.eos_token_id",
            ),
            (
                "unk_token",
                self.unknown_token_id,
                "tokenizer.ggml.unknown_token_id",
            ),
            (
                "pad_token",
                self.padding_token_id,
                "tokenizer.ggml.padding_token_id",
            ),
        ] {
            if let Some(token) = self.token(id, key)? {
                config.insert(name.into(), json!(token));
            }
        }
        if let Some(template) = &self.chat_template {
            config.insert("chat_template".into(), json!(template));
        }
        if let Some(length) = self.context_length {
            config.insert("model_max_length".into(), json!(length));
        }
        Ok(Value::Object(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small byte-level vocabulary: every byte-level character of "ab 1", a few merges, control
    /// tokens at the front.
    fn vocabulary(pre: &str) -> GgufVocabulary {
        let tokens: Vec<String> = [
            "<|endoftext|>",
            "<|im_start|>",
            "a",
            "b",
            "Ġ",
            "1",
            "ab",
            "ĠĠ",
            "Ġa",
            "ĠĠĠ",
            "Ġ1",
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        let mut token_types = vec![1; tokens.len()];
        token_types[0] = CONTROL;
        token_types[1] = CONTROL;
        GgufVocabulary {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types,
            merges: vec![
                "a b".into(),
                "Ġ Ġ".into(),
                "Ġ a".into(),
                "ĠĠ Ġ".into(),
                "Ġ 1".into(),
            ],
            bos_token_id: Some(1),
            eos_token_id: Some(0),
            ..Default::default()
        }
    }

    fn ids(json: &str, text: &str) -> Vec<u32> {
        let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm_splits_every_digit_apart_and_gpt2_does_not() {
        let smollm = vocabulary("smollm").tokenizer_json().unwrap();
        // "ab" merges; three spaces stay one token before a digit; control tokens are special.
        assert_eq!(ids(&smollm, "ab   1<|im_start|>"), vec![6, 9, 5, 1]);
        let gpt2 = vocabulary("gpt-2").tokenizer_json().unwrap();
        assert_eq!(ids(&gpt2, "ab   1"), vec![6, 7, 10]);
    }

    #[test]
    fn bos_is_added_when_the_file_says_so() {
        let mut v = vocabulary("gpt-2");
        v.add_bos_token = true;
        let json = v.tokenizer_json().unwrap();
        let tokenizer: tokenizers::Tokenizer = json.parse().unwrap();
        assert_eq!(tokenizer.encode("ab", true).unwrap().get_ids(), &[1, 6]);
        assert_eq!(tokenizer.encode("ab", false).unwrap().get_ids(), &[6]);
        let config = v.tokenizer_config().unwrap();
        assert_eq!(config["bos_token"], "<|im_start|>");
        assert_eq!(config["eos_token"], "<|endoftext|>");
        assert_eq!(config["add_bos_token"], true);
    }

    #[test]
    fn unsupported_and_malformed_vocabularies_are_refused_by_key() {
        let err = vocabulary("deepseek-coder")
            .tokenizer_json()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer.ggml.pre") && err.contains("deepseek-coder"),
            "{err}"
        );
        let mut v = vocabulary("smollm");
        v.model = "rwkv".into();
        let err = v.tokenizer_json().unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.ggml.model") && err.contains("rwkv"),
            "{err}"
        );
        // SentencePiece merges are ranked by the scores, which must cover every token.
        v.model = "llama".into();
        let err = v.tokenizer_json().unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.ggml.scores") && err.contains("0 scores for 11 tokens"),
            "{err}"
        );
        let mut v = vocabulary("smollm");
        v.merges.push("nospace".into());
        let err = v.tokenizer_json().unwrap_err().to_string();
        assert!(err.contains("merge 5"), "{err}");
        let mut v = vocabulary("smollm");
        v.bos_token_id = Some(99);
        let err = v.tokenizer_config().unwrap_err().to_string();
        assert!(err.contains("bos_token_id") && err.contains("99"), "{err}");
        let mut v = vocabulary("smollm");
        v.tokens.push("ab".into());
        v.token_types.push(1);
        let err = v.tokenizer_json().unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    /// The Llama 3 and Qwen splits are the ones their own tokenizer.json files carry.
    #[test]
    fn llama3_and_qwen2_splits_match_their_published_tokenizers() {
        for (pre, name) in [("llama-bpe", "llama3_1"), ("qwen2", "qwen3")] {
            let published: Value = serde_json::from_slice(
                &std::fs::read(dapt_test_data::path(&format!(
                    "tokenizers/{name}/tokenizer.json"
                )))
                .unwrap(),
            )
            .unwrap();
            let (normalizer, pre_tokenizer) = vocabulary(pre).split().unwrap();
            assert_eq!(pre_tokenizer, published["pre_tokenizer"], "{pre}");
            assert_eq!(normalizer, published["normalizer"], "{pre}");
        }
    }
}
