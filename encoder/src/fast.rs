//! A fast byte-level BPE encoder built from the same `tokenizer.json` as the HF tokenizer, giving
//! the same ids several times faster, for every byte-level BPE tokenizer including those made by
//! `dapt tokenizer extend`.
//!
//! Where HF spends its time is not the BPE merges but the pipeline around them: normalised strings
//! with alignment tables, pre-tokenised pieces with offsets, a regex engine per piece, and an
//! `Encoding` with offsets, words and type ids (and an owned string) for every token. This backend
//! replaces the pipeline:
//! - added tokens are split off first (leftmost-longest, as HF's added vocabulary does);
//! - NFC (the only normaliser accepted) is skipped for text that is already NFC;
//! - the text is split into pieces, gaps between matches included (HF's `Isolated`): by a
//!   hand-written scanner for GPT-2's, Llama 3's and Qwen's patterns (`scan.rs`), else by a DFA
//!   with the usual `\s+(?!\S)` look-ahead emulated (see [`Splitter`]), else by a backtracking engine;
//! - each piece is looked up in a per-thread cache of pieces already encoded (no locks on the hot
//!   path); a piece not seen yet goes through the vocabulary's merges in HF's order (`bpe.rs`, on
//!   bytes and ids; with `ignore_merges` a piece that spells a token is that token), and is
//!   remembered.
//!
//! Accepted: model `BPE` without dropout, unknown token or byte fallback, over the GPT-2 byte-level
//! alphabet; normaliser none or NFC; pre-tokeniser `ByteLevel` (GPT-2 regex, no prefix space),
//! `Sequence[Split(regex, Isolated), ByteLevel(use_regex = false, no prefix space)]` or
//! `Sequence[Digits(individual_digits), ByteLevel(GPT-2 regex, no prefix space)]` (SmolLM, StarCoder:
//! every digit its own piece, GPT-2's split between them); added tokens
//! without strip/single-word options. [`FastEncoder::from_json`] says why otherwise; callers use HF.
use std::borrow::Cow;
use std::collections::HashMap;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, MatchKind};
use regex_automata::{meta, Anchored, Input};
use serde_json::Value;

use crate::bpe::{Bpe, MergeEntry, Scratch};
use crate::scan::{Scanner, GPT2_PATTERN};

/// Pieces whose ids one thread remembers for one encoder; past this the thread's cache starts
/// again (the ids never depend on it).
const PIECE_CACHE_WORDS: usize = 1 << 17;
/// Encoders whose caches one thread keeps (the least recently used goes first).
const PIECE_CACHES_PER_THREAD: usize = 4;

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
    /// A hand-written scanner for a known pattern (GPT-2, Llama 3, Qwen 2/3).
    Scan(Scanner),
    Dfa {
        all: meta::Regex,
        /// The pattern without its tail, when it had the look-ahead tail.
        head: Option<meta::Regex>,
    },
    Backtracking(fancy_regex::Regex),
}

impl Splitter {
    fn new(pattern: &str) -> Result<Self, String> {
        match Scanner::for_pattern(pattern)? {
            Some(scanner) => Ok(Self::Scan(scanner)),
            None => Self::regex(pattern),
        }
    }

    /// The splitter on a regex engine (DFA where the pattern allows, else backtracking).
    fn regex(pattern: &str) -> Result<Self, String> {
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
            Self::Scan(scanner) => return scanner.split(text, piece),
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

/// Ids of the pieces one thread has encoded with one encoder: a lookup without locks or atomics
/// on the hot path. Ids live in one arena; a piece maps to its range there. Pieces of up to 15
/// bytes (nearly all) are keyed by one integer (bytes, then the length in the last byte), so a
/// lookup compares integers instead of calling `memcmp`.
struct PieceCache {
    encoder: u64,
    short: ahash::AHashMap<u128, (u32, u32)>,
    long: ahash::AHashMap<Box<[u8]>, (u32, u32)>,
    ids: Vec<u32>,
    /// The merges' buffers.
    scratch: Scratch,
}

/// The integer key of a piece of at most 15 bytes.
#[inline(always)]
fn short_key(piece: &[u8]) -> Option<u128> {
    if piece.len() > 15 {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..piece.len()].copy_from_slice(piece);
    bytes[15] = piece.len() as u8;
    Some(u128::from_le_bytes(bytes))
}

impl PieceCache {
    fn new(encoder: u64) -> Self {
        Self {
            encoder,
            short: ahash::AHashMap::with_capacity(4096),
            long: ahash::AHashMap::new(),
            ids: Vec::with_capacity(16_384),
            scratch: Scratch::default(),
        }
    }

    /// Appends the remembered ids of `piece` to `ids`; false when not remembered.
    #[inline(always)]
    fn extend(&self, piece: &[u8], ids: &mut Vec<u32>) -> bool {
        let found = match short_key(piece) {
            Some(key) => self.short.get(&key),
            None => self.long.get(piece),
        };
        match found {
            Some(&(start, end)) => {
                ids.extend_from_slice(&self.ids[start as usize..end as usize]);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, piece: &[u8], ids: &[u32]) {
        if self.short.len() + self.long.len() >= PIECE_CACHE_WORDS
            || self.ids.len() + ids.len() > u32::MAX as usize
        {
            self.short.clear();
            self.long.clear();
            self.ids.clear();
        }
        let start = self.ids.len() as u32;
        self.ids.extend_from_slice(ids);
        let range = (start, self.ids.len() as u32);
        match short_key(piece) {
            Some(key) => self.short.insert(key, range),
            None => self.long.insert(piece.into(), range),
        };
    }
}

thread_local! {
    /// This thread's piece caches, most recently used last.
    static PIECE_CACHES: RefCell<Vec<PieceCache>> = const { RefCell::new(Vec::new()) };
}

/// Numbers the encoders, so that a thread's cache is never used by another encoder.
static NEXT_ENCODER: AtomicU64 = AtomicU64::new(0);

/// The fast encoder.
pub struct FastEncoder {
    /// Token ids by spelling (bytes).
    whole: ahash::AHashMap<Vec<u8>, u32>,
    /// The vocabulary's merges, applied as HF's BPE model applies them.
    bpe: Bpe,
    split: Splitter,
    /// Every digit (`char::is_numeric`, as HF's `Digits`) is a piece of its own; the regex splits
    /// the text between digits.
    digits_first: bool,
    /// This encoder's number in the threads' piece caches.
    number: u64,
    added: Option<(AhoCorasick, Vec<u32>)>,
    /// Added tokens by content (what HF looks up first in `token_to_id`).
    added_by_content: ahash::AHashMap<String, u32>,
    /// Distinct tokens of the vocabulary and the added tokens (HF's `get_vocab_size(true)`).
    vocab_size: usize,
    nfc: bool,
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
    /// reproduces exactly. Reads the file itself (one parse, no HF `Tokenizer` built: loading that
    /// takes ≈0.5 s for a 150k vocabulary).
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        /// The parts of `tokenizer.json` this backend reads.
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
            #[serde(default)]
            ignore_merges: bool,
            #[serde(default)]
            merges: Vec<MergeEntry>,
            vocab: HashMap<String, u32>,
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
        let added_by_content: ahash::AHashMap<String, u32> = added_tokens
            .iter()
            .cloned()
            .zip(added_ids.iter().copied())
            .collect();
        let added = if added_tokens.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&added_tokens)
                .map_err(|e| e.to_string())?;
            Some((matcher, added_ids))
        };

        // Every token's spelling in bytes (a word that spells a token is that token with
        // `ignore_merges`).
        let inverse = byte_level_inverse();
        let vocab = &model.vocab;
        let added_set: std::collections::HashSet<&str> =
            added_tokens.iter().map(String::as_str).collect();
        let mut whole = ahash::AHashMap::with_capacity(vocab.len());
        for (token, &id) in vocab {
            let bytes: Option<Vec<u8>> = token.chars().map(|c| inverse.get(&c).copied()).collect();
            match bytes {
                Some(bytes) => {
                    whole.insert(bytes, id);
                }
                None if added_set.contains(token.as_str()) => {} // an added token in the vocabulary
                None => return Err(format!("token {token:?} is not in the byte-level alphabet")),
            }
        }
        let bpe = Bpe::new(
            &model.merges,
            vocab,
            &byte_level_alphabet(),
            model.ignore_merges,
        )?;
        Ok(Self {
            whole,
            bpe,
            split,
            digits_first,
            number: NEXT_ENCODER.fetch_add(1, Ordering::Relaxed),
            added,
            vocab_size: vocab.len()
                + added_by_content
                    .keys()
                    .filter(|t| !vocab.contains_key(*t))
                    .count(),
            added_by_content,
            nfc,
        })
    }

    /// The id of `token` (an added token's content or a vocabulary token), as HF's `token_to_id`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(&id) = self.added_by_content.get(token) {
            return Some(id);
        }
        let inverse = byte_level_inverse();
        let bytes: Option<Vec<u8>> = token.chars().map(|c| inverse.get(&c).copied()).collect();
        self.whole.get(&bytes?).copied()
    }

    /// Distinct tokens of the vocabulary and the added tokens, as HF's `get_vocab_size(true)`.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Ids of `text` (added tokens in the text are matched, no special tokens are added): the ids HF
    /// gives with `encode(text, add_special_tokens = false)`. Fails only where the split regex gives
    /// up (backtracking limit); callers then use HF.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        self.with_cache(|cache| {
            match &self.added {
                None => self.encode_ordinary(text, cache, &mut ids)?,
                Some((matcher, added_ids)) => {
                    let mut last = 0;
                    for m in matcher.find_iter(text) {
                        self.encode_ordinary(&text[last..m.start()], cache, &mut ids)?;
                        ids.push(added_ids[m.pattern().as_usize()]);
                        last = m.end();
                    }
                    self.encode_ordinary(&text[last..], cache, &mut ids)?;
                }
            }
            Ok::<(), String>(())
        })?;
        Ok(ids)
    }

    /// Runs `f` with this thread's piece cache for this encoder.
    fn with_cache<T>(&self, f: impl FnOnce(&mut PieceCache) -> T) -> T {
        PIECE_CACHES.with(|caches| {
            let Ok(mut caches) = caches.try_borrow_mut() else {
                // Only a re-entrant call could get here; it encodes without the cache.
                return f(&mut PieceCache::new(self.number));
            };
            match caches.iter().position(|c| c.encoder == self.number) {
                Some(at) if at + 1 == caches.len() => {}
                Some(at) => {
                    let cache = caches.remove(at);
                    caches.push(cache);
                }
                None => {
                    if caches.len() >= PIECE_CACHES_PER_THREAD {
                        caches.remove(0);
                    }
                    caches.push(PieceCache::new(self.number));
                }
            }
            let cache = caches.last_mut().expect("pushed above");
            f(cache)
        })
    }

    fn encode_ordinary(
        &self,
        text: &str,
        cache: &mut PieceCache,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
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
        let mut encode = |piece: &str| self.encode_piece(piece, cache, ids);
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

    /// Appends the ids of one piece: from this thread's cache, else from the merges (then
    /// remembered).
    #[inline]
    fn encode_piece(
        &self,
        piece: &str,
        cache: &mut PieceCache,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        let piece = piece.as_bytes();
        if cache.extend(piece, ids) {
            return Ok(());
        }
        let from = ids.len();
        self.bpe.encode(piece, &self.whole, &mut cache.scratch, ids);
        cache.insert(piece, &ids[from..]);
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

    /// The DFA splitter with the emulated look-ahead and the hand-written scanners cut every
    /// text where the backtracking engine does, on strings built to hit white-space runs of every
    /// kind before letters, digits, punctuation, newlines and the end, contractions in every case
    /// (`ſ` folds to `s`), and letters, numbers and spaces of every general category.
    #[test]
    fn emulated_look_ahead_and_scanners_split_like_the_backtracking_engine() {
        use crate::scan::{LLAMA3_PATTERN, QWEN2_PATTERN};
        let alphabet = [
            " ", "  ", "\t", "\n", "\r\n", "\r", "\u{a0}", "\u{3000}", "\u{2009}", "\u{85}",
            "\u{2028}", "\u{b}", "\u{c}", "a", "Я", "ё", "ǅ", "ʰ", "中", "1", "42", "٣", "Ⅻ", "½",
            ".", "'", "'s", "'S", "'LL", "'Re", "'vE", "'d", "'M", "'ſ", "'t", "'x", "—", "(",
            "\u{301}", "😀", "x\n", " \n ", "1234",
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
        for pattern in [GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN] {
            let dfa = Splitter::regex(pattern).unwrap();
            assert!(
                matches!(dfa, Splitter::Dfa { head: Some(_), .. }),
                "{pattern}"
            );
            let scanner = Splitter::new(pattern).unwrap();
            assert!(matches!(scanner, Splitter::Scan(_)), "{pattern}");
            let backtracking = Splitter::Backtracking(fancy_regex::Regex::new(pattern).unwrap());
            for text in &texts {
                let expected = pieces(&backtracking, text);
                assert_eq!(pieces(&dfa, text), expected, "{pattern}: {text:?}");
                assert_eq!(pieces(&scanner, text), expected, "{pattern}: {text:?}");
                assert_eq!(expected.concat(), *text);
            }
        }
        // The contractions' letters fold to no other character than `ſ`.
        let folded = meta::Regex::new("(?i)^[stmdrevl]$").unwrap();
        let others: Vec<char> = (0..0x11_0000u32)
            .filter_map(char::from_u32)
            .filter(|c| !c.is_ascii() && folded.is_match(&*c.encode_utf8(&mut [0; 4])))
            .collect();
        assert_eq!(others, ['ſ']);
        // Other patterns run on a regex engine.
        assert!(matches!(
            Splitter::new(r"\p{L}+|\s+(?!\S)|\s+").unwrap(),
            Splitter::Dfa { .. }
        ));
        // A pattern with a look-around elsewhere runs on the backtracking engine.
        assert!(matches!(
            Splitter::new(r"\p{L}+(?=\d)|\s+").unwrap(),
            Splitter::Backtracking(_)
        ));
    }
}
