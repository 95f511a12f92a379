//! Bits-per-byte and perplexity of held-out text. Bits-per-byte (total negative log-likelihood in bits
//! over the UTF-8 bytes of the text) is the headline: it does not depend on the tokenizer, so a model
//! before and after vocabulary extension compare on it. Documents are scored as
//! lm-evaluation-harness's rolling log-likelihood scores them (`get_rolling_token_windows` with a
//! context of one, then `make_disjoint_window`): windows predicting `max_length` tokens each, the first
//! conditioned on a BOS/EOS prefix, each later one on the tokens before it so that its input is a full
//! `max_length` long — one token for a full window, more for the last, shorter one.
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

/// lm-eval's disjoint rolling windows of `ids` as (context, continuation): every token is predicted
/// once; each window's context plus continuation is `window + 1` tokens, except a short document's.
pub fn rolling_windows(ids: &[u32], prefix: u32, window: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let window = window.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < ids.len() {
        let end = (start + window).min(ids.len());
        let context = if start == 0 {
            vec![prefix]
        } else {
            ids[end.saturating_sub(window + 1)..start].to_vec()
        };
        out.push((context, ids[start..end].to_vec()));
        start = end;
    }
    out
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
        for (context, continuation) in rolling_windows(&ids, prefix, window) {
            requests.push(Request {
                context,
                continuation,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_windows_follow_lm_eval() {
        // What lm-eval's get_rolling_token_windows(tokens, prefix_token=99, max_seq_len=4,
        // context_len=1) gives after make_disjoint_window, for 10 tokens.
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(
            rolling_windows(&ids, 99, 4),
            vec![
                (vec![99], vec![0, 1, 2, 3]),
                (vec![3], vec![4, 5, 6, 7]),
                (vec![5, 6, 7], vec![8, 9]),
            ]
        );
        assert_eq!(
            rolling_windows(&ids[..3], 99, 4),
            vec![(vec![99], vec![0, 1, 2])]
        );
        assert_eq!(
            rolling_windows(&ids[..5], 99, 4),
            vec![(vec![99], vec![0, 1, 2, 3]), (vec![0, 1, 2, 3], vec![4])]
        );
    }
}
