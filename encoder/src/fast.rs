//! A fast byte-level BPE encoder built from the same `tokenizer.json` as the HF tokenizer, giving
//! the same ids several times faster, for every byte-level BPE tokenizer including those made by
//! `dapt tokenizer extend`.
//!
//! Where HF spends its time is not the BPE merges but the pipeline around them: normalised strings
//! with alignment tables, pre-tokenised pieces with offsets, and an `Encoding` with offsets, words and
//! type ids for every token. This backend keeps HF's own BPE model (the `tokenizers` crate's
//! `models::bpe::BPE`, with its merge ranks and its word cache) as the core, so there is no second
//! BPE implementation whose semantics could drift, and replaces the pipeline:
//! - added tokens are split off first (leftmost-longest, as HF's added vocabulary does);
//! - NFC (the only normaliser accepted) is skipped for text that is already NFC;
//! - the split regex (`fancy-regex`) yields pieces, gaps between matches included (HF's `Isolated`);
//! - a piece whose bytes spell a token is that token without calling the model, but only for tokens
//!   that HF's merges turn their own spelling into (checked once per vocabulary at construction;
//!   tiktoken-style cores skip that check and differ from HF on tokenizers with appended merges);
//! - every other piece is mapped to the byte-level alphabet and given to HF's BPE model.
//!
//! Accepted: model `BPE` without dropout, unknown token or byte fallback, over the GPT-2 byte-level
//! alphabet; normaliser none or NFC; pre-tokeniser `ByteLevel` (GPT-2 regex, no prefix space) or
//! `Sequence[Split(regex, Isolated), ByteLevel(use_regex = false, no prefix space)]`; added tokens
//! without strip/single-word options. [`FastEncoder::from_json`] says why otherwise; callers use HF.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use fancy_regex::Regex;
use rayon::prelude::*;
use serde_json::Value;
use tokenizers::{Model, ModelWrapper, Tokenizer};

/// GPT-2's pre-tokenisation regex (ByteLevel with `use_regex`).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Words the BPE model remembers (HF's default is 10,000, too few for a multilingual corpus).
const CACHE_WORDS: usize = 200_000;

/// The fast encoder.
pub struct FastEncoder {
    /// The tokenizer whose BPE model encodes the pieces (shared with the HF backend).
    tokenizer: Arc<Tokenizer>,
    /// Token ids by spelling (bytes), for tokens a piece may be turned into directly.
    whole: ahash::AHashMap<Vec<u8>, u32>,
    split: Regex,
    added: Option<(AhoCorasick, Vec<u32>)>,
    nfc: bool,
    byte_chars: [char; 256],
}

/// Gives memory that the allocator keeps after the vocabulary check (≈40 MB of cached words for a
/// 150k vocabulary) back to the operating system, so that it does not add to every later peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free heap pages; it takes no pointers.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// GPT-2's byte-level alphabet: the character that stands for each byte.
pub fn byte_level_alphabet() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        chars[b as usize] = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).expect("in range")
        };
    }
    chars
}

/// The alphabet reversed: the byte each alphabet character stands for.
pub fn byte_level_inverse() -> HashMap<char, u8> {
    byte_level_alphabet()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

fn byte_level(pre: &Value) -> Result<(), String> {
    if pre["type"] != "ByteLevel" {
        return Err(format!("pre-tokenizer {} is not ByteLevel", pre["type"]));
    }
    if pre["add_prefix_space"] == true {
        return Err("ByteLevel adds a prefix space".into());
    }
    Ok(())
}

fn split_pattern(pre: &Value) -> Result<String, String> {
    match pre["type"].as_str() {
        Some("ByteLevel") => {
            byte_level(pre)?;
            if pre["use_regex"] == false {
                return Err("ByteLevel without a split regex".into());
            }
            Ok(GPT2_PATTERN.to_string())
        }
        Some("Sequence") => {
            let parts = pre["pretokenizers"].as_array().cloned().unwrap_or_default();
            let [split, level] = parts.as_slice() else {
                return Err("a pre-tokenizer sequence other than Split + ByteLevel".into());
            };
            if split["type"] != "Split"
                || split["behavior"] != "Isolated"
                || split["invert"] == true
            {
                return Err("a Split other than an isolating regex".into());
            }
            byte_level(level)?;
            if level["use_regex"] == true {
                return Err("two split regexes".into());
            }
            split["pattern"]["Regex"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| "a Split without a regex".to_string())
        }
        _ => Err(format!("pre-tokenizer {} is not supported", pre["type"])),
    }
}

/// Lets a BPE model remember more words than HF's default (a no-op for other models).
pub fn enlarge_cache(tokenizer: &mut Tokenizer) {
    if let ModelWrapper::BPE(bpe) = tokenizer.get_model() {
        let mut bpe = bpe.clone();
        bpe.resize_cache(CACHE_WORDS);
        tokenizer.with_model(bpe);
    }
}

impl FastEncoder {
    /// Builds the encoder from `tokenizer.json` bytes, or says why this tokenizer is not one it
    /// reproduces exactly.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_bytes(json).map_err(|e| e.to_string())?;
        enlarge_cache(&mut tokenizer);
        Self::new(json, Arc::new(tokenizer))
    }

    /// As [`FastEncoder::from_json`], sharing `tokenizer` (loaded from `json`; see
    /// [`enlarge_cache`]).
    pub fn new(json: &[u8], tokenizer: Arc<Tokenizer>) -> Result<Self, String> {
        /// The parts of `tokenizer.json` this backend reads (the vocabulary and merges are skipped
        /// here and taken from the loaded model).
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(default)]
            normalizer: Value,
            #[serde(default)]
            pre_tokenizer: Value,
            #[serde(default)]
            added_tokens: Vec<Value>,
            model: ModelHeader,
        }
        #[derive(serde::Deserialize)]
        struct ModelHeader {
            #[serde(default, rename = "type")]
            kind: Value,
            #[serde(default)]
            dropout: Value,
            #[serde(default)]
            unk_token: Value,
            #[serde(default)]
            byte_fallback: Value,
            #[serde(default)]
            continuing_subword_prefix: Value,
            #[serde(default)]
            end_of_word_suffix: Value,
        }
        let t: Header = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let model = &t.model;
        if model.kind != "BPE" {
            return Err(format!("model {} is not BPE", model.kind));
        }
        if !model.dropout.is_null() || model.byte_fallback == true || !model.unk_token.is_null() {
            return Err("BPE with dropout, byte fallback or an unknown token".into());
        }
        let affix = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
        if affix(&model.continuing_subword_prefix) || affix(&model.end_of_word_suffix) {
            return Err("BPE with subword prefixes or suffixes".into());
        }
        let nfc = match &t.normalizer {
            Value::Null => false,
            n if n["type"] == "NFC" => true,
            n => return Err(format!("normalizer {} is not supported", n["type"])),
        };
        let pattern = split_pattern(&t.pre_tokenizer)?;
        let split = Regex::new(&pattern).map_err(|e| format!("split regex: {e}"))?;

        let mut added_tokens = Vec::new();
        let mut added_ids = Vec::new();
        for a in &t.added_tokens {
            if a["lstrip"] == true || a["rstrip"] == true || a["single_word"] == true {
                return Err(format!(
                    "added token {} strips or matches single words",
                    a["content"]
                ));
            }
            let content = a["content"]
                .as_str()
                .ok_or("an added token without content")?;
            if nfc && a["normalized"] == true {
                use unicode_normalization::UnicodeNormalization;
                if content.nfc().collect::<String>() != content {
                    return Err(format!("added token {content:?} changes under NFC"));
                }
            }
            added_tokens.push(content.to_string());
            added_ids.push(a["id"].as_u64().ok_or("an added token without an id")? as u32);
        }
        let added = if added_tokens.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&added_tokens)
                .map_err(|e| e.to_string())?;
            Some((matcher, added_ids))
        };

        let ModelWrapper::BPE(model) = tokenizer.get_model() else {
            return Err("model is not BPE".into());
        };

        // A piece that spells a token is that token only if HF's merges turn the spelling into it.
        let inverse = byte_level_inverse();
        let vocab = model.get_vocab();
        let added_set: std::collections::HashSet<&str> =
            added_tokens.iter().map(String::as_str).collect();
        let checked: Vec<Option<(Vec<u8>, u32)>> = vocab
            .par_iter()
            .map(|(token, &id)| -> Result<Option<(Vec<u8>, u32)>, String> {
                let bytes: Option<Vec<u8>> =
                    token.chars().map(|c| inverse.get(&c).copied()).collect();
                let Some(bytes) = bytes else {
                    if added_set.contains(token.as_str()) {
                        return Ok(None); // an added token also listed in the vocabulary
                    }
                    return Err(format!("token {token:?} is not in the byte-level alphabet"));
                };
                let merged = model.tokenize(token).map_err(|e| e.to_string())?;
                Ok((merged.len() == 1 && merged[0].id == id).then_some((bytes, id)))
            })
            .collect::<Result<_, String>>()?;
        model.clear_cache();
        let whole: ahash::AHashMap<Vec<u8>, u32> = checked.into_iter().flatten().collect();
        release_free_memory();
        Ok(Self {
            tokenizer: tokenizer.clone(),
            whole,
            split,
            added,
            nfc,
            byte_chars: byte_level_alphabet(),
        })
    }

    /// Ids of `text` (added tokens in the text are matched, no special tokens are added): the ids HF
    /// gives with `encode(text, add_special_tokens = false)`. Fails only where the split regex gives
    /// up (backtracking limit); callers then use HF.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        match &self.added {
            None => self.encode_ordinary(text, &mut ids)?,
            Some((matcher, added_ids)) => {
                let mut last = 0;
                for m in matcher.find_iter(text) {
                    self.encode_ordinary(&text[last..m.start()], &mut ids)?;
                    ids.push(added_ids[m.pattern().as_usize()]);
                    last = m.end();
                }
                self.encode_ordinary(&text[last..], &mut ids)?;
            }
        }
        Ok(ids)
    }

    fn encode_ordinary(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        let text: Cow<str> = if self.nfc && !text.is_ascii() {
            use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
            match is_nfc_quick(text.chars()) {
                IsNormalized::Yes => Cow::Borrowed(text),
                _ => Cow::Owned(text.nfc().collect()),
            }
        } else {
            Cow::Borrowed(text)
        };
        let text: &str = &text;
        let mut last = 0;
        let mut buffer = String::new();
        for m in self.split.find_iter(text) {
            let m = m.map_err(|e| format!("split regex: {e}"))?;
            if m.start() > last {
                self.encode_piece(&text[last..m.start()], &mut buffer, ids)?;
            }
            self.encode_piece(m.as_str(), &mut buffer, ids)?;
            last = m.end();
        }
        if last < text.len() {
            self.encode_piece(&text[last..], &mut buffer, ids)?;
        }
        Ok(())
    }

    fn encode_piece(
        &self,
        piece: &str,
        buffer: &mut String,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        if let Some(&id) = self.whole.get(piece.as_bytes()) {
            ids.push(id);
            return Ok(());
        }
        buffer.clear();
        buffer.extend(piece.bytes().map(|b| self.byte_chars[b as usize]));
        let ModelWrapper::BPE(model) = self.tokenizer.get_model() else {
            return Err("model is not BPE".into());
        };
        let tokens = model.tokenize(buffer).map_err(|e| e.to_string())?;
        ids.extend(tokens.iter().map(|t| t.id));
        Ok(())
    }
}
