//! Compression of a tokenizer on a corpus: how a user decides whether to adapt one.
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Result, TokenizerFile};

/// Totals and ratios of one tokenizer over some texts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    /// Documents measured.
    pub documents: u64,
    /// Their characters.
    pub chars: u64,
    /// Their UTF-8 bytes.
    pub bytes: u64,
    /// Whitespace-separated words.
    pub words: u64,
    /// Tokens the tokenizer made of them.
    pub tokens: u64,
    /// Tokens that stand for unknown text: the model's unknown token, SentencePiece byte-fallback
    /// tokens (`<0xNN>`), or byte-level tokens holding a single non-ASCII byte (part of a character
    /// that the vocabulary has no token for).
    pub fallback_tokens: u64,
    /// Characters per token (higher: better compression).
    pub chars_per_token: f64,
    /// Bytes per token.
    pub bytes_per_token: f64,
    /// Tokens per whitespace-separated word (lower: better).
    pub tokens_per_word: f64,
    /// Share of tokens that are byte fallbacks or the unknown token.
    pub fallback_share: f64,
}

impl Compression {
    /// Adds another measurement's totals to these (the ratios are recomputed by
    /// [`Compression::finish`]).
    pub fn add(&mut self, other: &Compression) {
        self.documents += other.documents;
        self.chars += other.chars;
        self.bytes += other.bytes;
        self.words += other.words;
        self.tokens += other.tokens;
        self.fallback_tokens += other.fallback_tokens;
    }

    /// The ratios of the totals.
    pub fn finish(mut self) -> Self {
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.chars_per_token = per(self.chars, self.tokens);
        self.bytes_per_token = per(self.bytes, self.tokens);
        self.tokens_per_word = per(self.tokens, self.words);
        self.fallback_share = per(self.fallback_tokens, self.tokens);
        self
    }
}

/// Which ids are fallback tokens (see [`Compression::fallback_tokens`]).
fn fallback_ids(tokenizer: &TokenizerFile) -> Result<Vec<bool>> {
    let t = tokenizer.tokenizer()?;
    let inverse = dapt_encoder::byte_level_inverse();
    let vocab = t.get_vocab(true);
    let size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
    let mut fallback = vec![false; size];
    for (token, id) in vocab {
        let sentencepiece_byte =
            token.len() == 6 && token.starts_with("<0x") && token.ends_with('>');
        let mut chars = token.chars();
        let lone_byte = match (chars.next(), chars.next()) {
            (Some(c), None) => inverse.get(&c).is_some_and(|&b| b >= 0x80),
            _ => false,
        };
        fallback[id as usize] = token == "<unk>" || sentencepiece_byte || lone_byte;
    }
    Ok(fallback)
}

/// Measures `tokenizer` on `texts` (tokenised in parallel, no special tokens).
pub fn measure(tokenizer: &TokenizerFile, texts: &[String]) -> Result<Compression> {
    Ok(Measurer::new(tokenizer)?.totals(texts)?.finish())
}

/// Measures one tokenizer batch after batch: totals to add up (see [`Compression::add`]), so that a
/// corpus streams through in bounded memory and job arrays can sum their parts.
pub struct Measurer<'a> {
    tokenizer: &'a TokenizerFile,
    fallback: Vec<bool>,
}

impl<'a> Measurer<'a> {
    /// A measurer of `tokenizer` (finds its fallback tokens once).
    pub fn new(tokenizer: &'a TokenizerFile) -> Result<Self> {
        Ok(Self {
            tokenizer,
            fallback: fallback_ids(tokenizer)?,
        })
    }

    /// The totals over `texts` (ratios not computed).
    pub fn totals(&self, texts: &[String]) -> Result<Compression> {
        let ids: Vec<String> = (0..texts.len()).map(|i| format!("text {i}")).collect();
        let encoded = self.tokenizer.encode_all(&ids, texts)?;
        Ok(texts
            .par_iter()
            .zip(encoded.par_iter())
            .map(|(text, ids)| Compression {
                documents: 1,
                chars: text.chars().count() as u64,
                bytes: text.len() as u64,
                words: text.split_whitespace().count() as u64,
                tokens: ids.len() as u64,
                fallback_tokens: ids
                    .iter()
                    .filter(|&&id| self.fallback.get(id as usize).copied().unwrap_or(false))
                    .count() as u64,
                ..Default::default()
            })
            .reduce(Compression::default, |mut a, b| {
                a.add(&b);
                a
            }))
    }
}
