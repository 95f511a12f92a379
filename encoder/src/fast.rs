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
//! - the split regex yields pieces, gaps between matches included (HF's `Isolated`); see
//!   [`Splitter`] for how the usual `\s+(?!\S)` look-ahead runs without a backtracking engine;
//! - a piece whose bytes spell a token is that token without calling the model, but only for tokens
//!   that HF's merges turn their own spelling into (checked by the model the first time a piece
//!   spells the token, remembered per token id; tiktoken-style cores skip that check and differ
//!   from HF on tokenizers with appended merges);
//! - every other piece is mapped to the byte-level alphabet and given to HF's BPE model, and its ids
//!   are remembered (a bounded cache shared by all threads, in front of HF's own word cache, whose
//!   hits still cost a token with an owned string per id).
//!
//! Accepted: model `BPE` without dropout, unknown token or byte fallback, over the GPT-2 byte-level
//! alphabet; normaliser none or NFC; pre-tokeniser `ByteLevel` (GPT-2 regex, no prefix space),
//! `Sequence[Split(regex, Isolated), ByteLevel(use_regex = false, no prefix space)]` or
//! `Sequence[Digits(individual_digits), ByteLevel(GPT-2 regex, no prefix space)]` (SmolLM, StarCoder:
//! every digit its own piece, GPT-2's split between them); added tokens
//! without strip/single-word options. [`FastEncoder::from_json`] says why otherwise; callers use HF.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, MatchKind};
use regex_automata::{meta, Anchored, Input};
use serde_json::Value;
use tokenizers::{Model, ModelWrapper, Tokenizer};

/// GPT-2's pre-tokenisation regex (ByteLevel with `use_regex`).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// States of [`FastEncoder::spelled`].
const UNCHECKED: u8 = 0;
const SPELLS: u8 = 1;
const SPLIT: u8 = 2;

/// Pieces whose ids the fast encoder remembers (all shards together).
const PIECE_CACHE_WORDS: usize = 200_000;
const PIECE_CACHE_SHARDS: usize = 32;

/// The tail that every GPT-2-style split pattern ends with: a run of white space keeps its last
/// character for the next piece when a non-space follows.
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// The split regex. Most split patterns are regular except for their tail `\s+(?!\S)|\s+`;
/// for those the tail is matched as `\s+` by a DFA-based engine, and a match that only the tail
/// made (no earlier alternative matches there, checked with an anchored search of the pattern's
/// head) and that a non-space follows gives back its last character, which is what the look-ahead
/// does. Leftmost-first priority makes this exact: where an earlier alternative matches, both
/// patterns take it; where none does, `\s+` takes the whole run of white space and `\s+(?!\S)`
/// the run without its last character (or fails, for one character, leaving it to `\s+`).
/// Any other pattern runs on `fancy-regex` (a backtracking engine, several times slower).
enum Splitter {
    Dfa {
        all: meta::Regex,
        /// The pattern without its tail, when it had the look-ahead tail.
        head: Option<meta::Regex>,
    },
    Backtracking(fancy_regex::Regex),
}

impl Splitter {
    fn new(pattern: &str) -> Result<Self, String> {
        if let Some(head) = pattern.strip_suffix(LOOKAHEAD_TAIL) {
            if let (Ok(all), Ok(head)) = (
                meta::Regex::new(&format!(r"{head}|\s+")),
                meta::Regex::new(head),
            ) {
                return Ok(Self::Dfa {
                    all,
                    head: Some(head),
                });
            }
        }
        if let Ok(all) = meta::Regex::new(pattern) {
            return Ok(Self::Dfa { all, head: None });
        }
        fancy_regex::Regex::new(pattern)
            .map(Self::Backtracking)
            .map_err(|e| format!("split regex: {e}"))
    }

    /// Calls `piece` with each piece of `text` in order: matches and the gaps between them.
    fn split(
        &self,
        text: &str,
        mut piece: impl FnMut(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut last = 0;
        match self {
            Self::Backtracking(regex) => {
                for m in regex.find_iter(text) {
                    let m = m.map_err(|e| format!("split regex: {e}"))?;
                    if m.start() > last {
                        piece(&text[last..m.start()])?;
                    }
                    if m.end() > m.start() {
                        piece(m.as_str())?;
                    }
                    last = m.end();
                }
            }
            Self::Dfa { all, head } => {
                let mut at = 0;
                while at < text.len() {
                    // Split patterns usually match wherever the last match ended; a match
                    // anchored there is the leftmost one and needs no reverse scan for its start.
                    let input = Input::new(text).span(at..text.len());
                    let found = match all.search_half(&input.clone().anchored(Anchored::Yes)) {
                        Some(half) => Some((at, half.offset())),
                        None => all.search(&input).map(|m| (m.start(), m.end())),
                    };
                    let Some((start, mut end)) = found else {
                        break;
                    };
                    if end == start {
                        // An empty match splits nothing; look again one character on.
                        at = end + text[end..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    if let Some(head) = head {
                        end = Self::look_ahead(text, start, end, head);
                    }
                    if start > last {
                        piece(&text[last..start])?;
                    }
                    piece(&text[start..end])?;
                    last = end;
                    at = end;
                }
            }
        }
        if last < text.len() {
            piece(&text[last..])?;
        }
        Ok(())
    }

    /// The end of the match `start..end` under the look-ahead tail (see [`Splitter`]).
    fn look_ahead(text: &str, start: usize, end: usize, head: &meta::Regex) -> usize {
        let matched = &text[start..end];
        let mut chars = matched.chars();
        let Some(last) = chars.next_back() else {
            return end;
        };
        let followed_by_non_space = text[end..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace());
        if !last.is_whitespace() || chars.as_str().is_empty() || !followed_by_non_space {
            return end;
        }
        let anchored = Input::new(text)
            .span(start..text.len())
            .anchored(Anchored::Yes);
        if head.search_half(&anchored).is_some() {
            return end; // an earlier alternative made this match
        }
        end - last.len_utf8()
    }
}

/// One shard of [`PieceCache`]: ids by piece bytes.
type PieceShard = Mutex<ahash::AHashMap<Box<[u8]>, Box<[u32]>>>;

/// Ids of pieces that went through the BPE model, shared by all threads (sharded locks).
struct PieceCache {
    shards: Vec<PieceShard>,
    hasher: ahash::RandomState,
}

impl PieceCache {
    fn new() -> Self {
        Self {
            shards: (0..PIECE_CACHE_SHARDS)
                .map(|_| Mutex::new(ahash::AHashMap::new()))
                .collect(),
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
        }
    }

    fn shard(&self, piece: &[u8]) -> &PieceShard {
        let hash = self.hasher.hash_one(piece) as usize;
        &self.shards[hash % PIECE_CACHE_SHARDS]
    }

    /// Appends the remembered ids of `piece` to `ids`; false when not remembered.
    fn extend(&self, piece: &[u8], ids: &mut Vec<u32>) -> bool {
        let shard = self
            .shard(piece)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match shard.get(piece) {
            Some(found) => {
                ids.extend_from_slice(found);
                true
            }
            None => false,
        }
    }

    fn insert(&self, piece: &[u8], ids: &[u32]) {
        let mut shard = self
            .shard(piece)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() < PIECE_CACHE_WORDS / PIECE_CACHE_SHARDS {
            shard.insert(piece.into(), ids.into());
        }
    }
}

/// The fast encoder.
pub struct FastEncoder {
    /// The tokenizer whose BPE model encodes the pieces (shared with the HF backend).
    tokenizer: Arc<Tokenizer>,
    /// Token ids by spelling (bytes).
    whole: ahash::AHashMap<Vec<u8>, u32>,
    /// By token id: whether a piece that spells the token is that token ([`SPELLS`]), is split by
    /// the merges ([`SPLIT`]), or not yet known.
    spelled: Vec<AtomicU8>,
    split: Splitter,
    /// Every digit (`char::is_numeric`, as HF's `Digits`) is a piece of its own; the regex splits
    /// the text between digits.
    digits_first: bool,
    cache: PieceCache,
    added: Option<(AhoCorasick, Vec<u32>)>,
    nfc: bool,
    byte_chars: [char; 256],
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

/// How the text is split before BPE: a regex, after isolating every digit when `digits_first`.
struct Split {
    pattern: String,
    digits_first: bool,
}

fn split_pattern(pre: &Value) -> Result<Split, String> {
    let regex = |pattern: String| Split {
        pattern,
        digits_first: false,
    };
    match pre["type"].as_str() {
        Some("ByteLevel") => {
            byte_level(pre)?;
            if pre["use_regex"] == false {
                return Err("ByteLevel without a split regex".into());
            }
            Ok(regex(GPT2_PATTERN.to_string()))
        }
        Some("Sequence") => {
            let parts = pre["pretokenizers"].as_array().cloned().unwrap_or_default();
            let [split, level] = parts.as_slice() else {
                return Err("a pre-tokenizer sequence other than Split + ByteLevel".into());
            };
            byte_level(level)?;
            if split["type"] == "Digits" {
                if split["individual_digits"] != true {
                    return Err("Digits that keep runs of digits together".into());
                }
                if level["use_regex"] != true {
                    return Err("Digits without a split regex".into());
                }
                return Ok(Split {
                    pattern: GPT2_PATTERN.to_string(),
                    digits_first: true,
                });
            }
            if split["type"] != "Split"
                || split["behavior"] != "Isolated"
                || split["invert"] == true
            {
                return Err("a Split other than an isolating regex".into());
            }
            if level["use_regex"] == true {
                return Err("two split regexes".into());
            }
            split["pattern"]["Regex"]
                .as_str()
                .map(|p| regex(p.to_string()))
                .ok_or_else(|| "a Split without a regex".to_string())
        }
        _ => Err(format!("pre-tokenizer {} is not supported", pre["type"])),
    }
}

impl FastEncoder {
    /// Builds the encoder from `tokenizer.json` bytes, or says why this tokenizer is not one it
    /// reproduces exactly.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        let tokenizer = Tokenizer::from_bytes(json).map_err(|e| e.to_string())?;
        Self::new(json, Arc::new(tokenizer))
    }

    /// As [`FastEncoder::from_json`], sharing `tokenizer` (loaded from `json`).
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
        let Split {
            pattern,
            digits_first,
        } = split_pattern(&t.pre_tokenizer)?;
        let split = Splitter::new(&pattern)?;

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

        // Every token's spelling in bytes; whether HF's merges turn a spelling into its token is
        // checked the first time a piece spells it.
        let inverse = byte_level_inverse();
        let vocab = model.get_vocab();
        let added_set: std::collections::HashSet<&str> =
            added_tokens.iter().map(String::as_str).collect();
        let mut whole = ahash::AHashMap::with_capacity(vocab.len());
        for (token, &id) in &vocab {
            let bytes: Option<Vec<u8>> = token.chars().map(|c| inverse.get(&c).copied()).collect();
            match bytes {
                Some(bytes) => {
                    whole.insert(bytes, id);
                }
                None if added_set.contains(token.as_str()) => {} // an added token in the vocabulary
                None => return Err(format!("token {token:?} is not in the byte-level alphabet")),
            }
        }
        let ids = vocab.values().max().map_or(0, |&m| m as usize + 1);
        Ok(Self {
            tokenizer: tokenizer.clone(),
            whole,
            spelled: (0..ids).map(|_| AtomicU8::new(UNCHECKED)).collect(),
            split,
            digits_first,
            cache: PieceCache::new(),
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
        let mut buffer = String::new();
        let mut encode = |piece: &str| self.encode_piece(piece, &mut buffer, ids);
        if !self.digits_first {
            return self.split.split(&text, encode);
        }
        // Each digit is a piece; the regex splits what lies between digits.
        let mut last = 0;
        for (at, c) in text.char_indices().filter(|(_, c)| c.is_numeric()) {
            let end = at + c.len_utf8();
            self.split.split(&text[last..at], &mut encode)?;
            encode(&text[at..end])?;
            last = end;
        }
        self.split.split(&text[last..], encode)
    }

    fn encode_piece(
        &self,
        piece: &str,
        buffer: &mut String,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        let spells = self.whole.get(piece.as_bytes()).copied();
        if let Some(id) = spells {
            if self.spelled[id as usize].load(Ordering::Relaxed) == SPELLS {
                ids.push(id);
                return Ok(());
            }
        }
        if self.cache.extend(piece.as_bytes(), ids) {
            return Ok(());
        }
        buffer.clear();
        buffer.extend(piece.bytes().map(|b| self.byte_chars[b as usize]));
        let ModelWrapper::BPE(model) = self.tokenizer.get_model() else {
            return Err("model is not BPE".into());
        };
        let tokens = model.tokenize(buffer).map_err(|e| e.to_string())?;
        let from = ids.len();
        ids.extend(tokens.iter().map(|t| t.id));
        match spells {
            Some(id) if tokens.len() == 1 && tokens[0].id == id => {
                self.spelled[id as usize].store(SPELLS, Ordering::Relaxed);
            }
            Some(id) => {
                self.spelled[id as usize].store(SPLIT, Ordering::Relaxed);
                self.cache.insert(piece.as_bytes(), &ids[from..]);
            }
            None => self.cache.insert(piece.as_bytes(), &ids[from..]),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(splitter: &Splitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        splitter
            .split(text, |p| {
                out.push(p.to_string());
                Ok(())
            })
            .unwrap();
        out
    }

    /// The DFA splitter with the emulated look-ahead cuts every text where the backtracking engine
    /// does, on strings built to hit white-space runs of every kind before letters, digits,
    /// punctuation, newlines and the end.
    #[test]
    fn emulated_look_ahead_splits_like_the_backtracking_engine() {
        let patterns = [
            GPT2_PATTERN,
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ];
        let alphabet = [
            " ", "  ", "\t", "\n", "\r\n", "\u{a0}", "\u{3000}", "\u{2009}", "a", "Я", "ё", "1",
            "42", "٣", ".", "'s", "'LL", "—", "(", "\u{301}", "😀", "x\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut texts: Vec<String> = Vec::new();
        for _ in 0..20_000 {
            let mut text = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state % 12) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            texts.push(text);
        }
        for pattern in patterns {
            let dfa = Splitter::new(pattern).unwrap();
            assert!(
                matches!(dfa, Splitter::Dfa { head: Some(_), .. }),
                "{pattern}"
            );
            let backtracking = Splitter::Backtracking(fancy_regex::Regex::new(pattern).unwrap());
            for text in &texts {
                let got = pieces(&dfa, text);
                assert_eq!(got, pieces(&backtracking, text), "{pattern}: {text:?}");
                assert_eq!(got.concat(), *text);
            }
        }
        // A pattern with a look-around elsewhere runs on the backtracking engine.
        assert!(matches!(
            Splitter::new(r"\p{L}+(?=\d)|\s+").unwrap(),
            Splitter::Backtracking(_)
        ));
    }
}
