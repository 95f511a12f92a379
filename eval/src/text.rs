//! Bits-per-byte and perplexity of held-out text. Bits-per-byte (total negative log-likelihood in bits
//! over the UTF-8 bytes of the text) is the headline: it does not depend on the tokenizer, so a model
//! before and after vocabulary extension compare on it. Documents are scored in disjoint windows of
//! `max_length` tokens, each conditioned on the token before it (the first on a BOS/EOS prefix), as
//! lm-evaluation-harness's rolling log-likelihood does.
use dapt_encoder::TokenizerFile;
use serde::{Deserialize, Serialize};

use crate::scorer::{Request, Scorer};
use crate::Result;

/// Scores of a set of texts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextScore {
    /// Texts scored.
    pub documents: usize,
    /// Their UTF-8 bytes.
    pub bytes: u64,
    /// Tokens scored.
    pub tokens: u64,
    /// Total negative log-likelihood (nats).
    pub nll: f64,
    /// `nll / ln 2 / bytes`.
    pub bits_per_byte: f64,
    /// `exp(nll / tokens)` (depends on the tokenizer).
    pub perplexity: f64,
}

/// Scores `texts` (empty ones are skipped); `prefix` is the token that conditions each document's first
/// token.
pub fn score_texts(
    scorer: &Scorer,
    tokenizer: &TokenizerFile,
    texts: &[String],
    prefix: u32,
) -> Result<TextScore> {
    let mut requests = Vec::new();
    let mut bytes = 0u64;
    let mut documents = 0;
    let window = scorer.max_length.max(1);
    for (i, text) in texts.iter().enumerate() {
        if text.is_empty() {
            continue;
        }
        let ids = tokenizer.encode(&format!("text {i}"), text)?;
        if ids.is_empty() {
            continue;
        }
        documents += 1;
        bytes += text.len() as u64;
        let mut start = 0;
        while start < ids.len() {
            let end = (start + window).min(ids.len());
            let context = if start == 0 {
                vec![prefix]
            } else {
                vec![ids[start - 1]]
            };
            requests.push(Request {
                context,
                continuation: ids[start..end].to_vec(),
            });
            start = end;
        }
    }
    if requests.is_empty() {
        return Err(crate::Error::Empty {
            what: "no text to score".into(),
        });
    }
    let scores = scorer.loglikelihoods(&requests)?;
    let nll: f64 = -scores.iter().map(|s| s.logprob).sum::<f64>();
    let tokens: u64 = scores.iter().map(|s| s.tokens as u64).sum();
    Ok(TextScore {
        documents,
        bytes,
        tokens,
        nll,
        bits_per_byte: nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
        perplexity: (nll / tokens.max(1) as f64).exp(),
    })
}
