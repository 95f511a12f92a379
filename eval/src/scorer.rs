//! Log-likelihoods of continuations given contexts (lm-evaluation-harness style), and per-token
//! log-probabilities of whole sequences. Each request is its own row in a batch, padded on the right
//! with a pad segment that no real token attends to, so a request's score does not depend on what it
//! is batched with; requests are sorted by length (longest first) to waste little padding and the
//! results returned in request order.
use dapt_core::PackedRow;
use dapt_trainer::{Batch, CausalLm, TargetScores, IGNORE_INDEX};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// One (context, continuation) pair of token ids; the context must not be empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Token ids the continuation is conditioned on.
    pub context: Vec<u32>,
    /// Token ids scored.
    pub continuation: Vec<u32>,
}

/// The score of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub logprob: f64,
    /// Whether greedy decoding would produce the continuation.
    pub is_greedy: bool,
    /// Continuation tokens scored.
    pub tokens: usize,
}

/// One token of a scored sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    /// The token id.
    pub id: u32,
    /// Log-probability given the tokens before it (`None` for the first token).
    pub logprob: Option<f64>,
    /// The most likely tokens at its position and their log-probabilities.
    pub top: Vec<(u32, f64)>,
}

/// Scores requests with a model.
pub struct Scorer<'a> {
    /// The model.
    pub model: &'a CausalLm,
    /// Where it runs.
    pub device: Device,
    /// Longest input; longer requests lose context tokens from the left.
    pub max_length: usize,
    /// Requests per forward pass.
    pub batch_size: usize,
}

impl Scorer<'_> {
    /// Log-likelihood of every request, in request order.
    pub fn loglikelihoods(&self, requests: &[Request]) -> Result<Vec<LogLikelihood>> {
        let mut sequences = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if r.context.is_empty() {
                return Err(Error::Request {
                    index: i,
                    reason: "empty context (prefix a BOS/EOS token)".into(),
                });
            }
            if r.continuation.is_empty() {
                return Err(Error::Request {
                    index: i,
                    reason: "empty continuation".into(),
                });
            }
            let mut all: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
            let keep = self.max_length.max(1) + 1;
            if all.len() > keep {
                all.drain(..all.len() - keep);
            }
            let scored = r.continuation.len().min(all.len() - 1);
            sequences.push((all, scored));
        }
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by(|&a, &b| {
            sequences[b]
                .0
                .len()
                .cmp(&sequences[a].0.len())
                .then(a.cmp(&b))
        });
        let mut out = vec![None; sequences.len()];
        for chunk in order.chunks(self.batch_size.max(1)) {
            let width = chunk
                .iter()
                .map(|&i| sequences[i].0.len() - 1)
                .max()
                .unwrap_or(1);
            let rows: Vec<PackedRow> = chunk
                .iter()
                .map(|&i| {
                    let (all, _) = &sequences[i];
                    let n = all.len() - 1;
                    let mut input_ids: Vec<i32> = all[..n].iter().map(|&t| t as i32).collect();
                    input_ids.resize(width, 0);
                    PackedRow {
                        input_ids,
                        segment_lengths: vec![n as i32],
                        loss_mask: (0..width).map(|p| p < n).collect(),
                        ..Default::default()
                    }
                })
                .collect();
            // The target of each scored position: the token after it.
            let mut targets = vec![IGNORE_INDEX; chunk.len() * width];
            for (row, &i) in chunk.iter().enumerate() {
                let (all, scored) = &sequences[i];
                let n = all.len() - 1;
                for p in n - scored..n {
                    targets[row * width + p] = i64::from(all[p + 1]);
                }
            }
            let scores = self.score(&rows, &targets, 0);
            // Scores come in flat order: each row's scored positions, row after row.
            let mut offset = 0;
            for &i in chunk {
                let scored = sequences[i].1 as i64;
                let greedy = scores.greedy.narrow(0, offset, scored).all();
                out[i] = Some(LogLikelihood {
                    logprob: scores
                        .logprob
                        .narrow(0, offset, scored)
                        .sum(Kind::Double)
                        .double_value(&[]),
                    is_greedy: greedy.int64_value(&[]) != 0,
                    tokens: scored as usize,
                });
                offset += scored;
            }
        }
        Ok(out
            .into_iter()
            .map(|s| {
                s.unwrap_or(LogLikelihood {
                    logprob: 0.0,
                    is_greedy: false,
                    tokens: 0,
                })
            })
            .collect())
    }

    /// The model's log-probabilities of `targets` (`[rows × width]`, [`IGNORE_INDEX`] where none) at
    /// each position of `rows`, and the `top` most likely tokens there; logits are computed in bounded
    /// chunks of positions (see [`CausalLm::score_targets`]).
    fn score(&self, rows: &[PackedRow], targets: &[i64], top: i64) -> TargetScores {
        let refs: Vec<&PackedRow> = rows.iter().collect();
        let batch = Batch::from_rows(&refs, self.device);
        let width = rows.first().map_or(0, |r| r.input_ids.len()) as i64;
        let targets = Tensor::from_slice(targets).view([rows.len() as i64, width]);
        tch::no_grad(|| self.model.score_targets(&batch, &targets, top))
    }

    /// Per-token log-probabilities of `tokens` (each given the ones before it, the first has none) and
    /// the `top` most likely tokens at each position (truncated to the last `max_length` tokens' context).
    pub fn token_scores(&self, tokens: &[u32], top: usize) -> Vec<TokenScore> {
        let mut out = vec![TokenScore {
            id: tokens.first().copied().unwrap_or(0),
            logprob: None,
            top: Vec::new(),
        }];
        if tokens.len() < 2 {
            out.truncate(tokens.len());
            return out;
        }
        // Windows of max_length inputs, each starting with the previous window's last token.
        let step = self.max_length.max(1);
        let mut start = 0;
        while start + 1 < tokens.len() {
            let end = (start + step + 1).min(tokens.len());
            let window = &tokens[start..end];
            let n = window.len() - 1;
            let row = PackedRow {
                input_ids: window[..n].iter().map(|&t| t as i32).collect(),
                segment_lengths: vec![n as i32],
                loss_mask: vec![true; n],
                ..Default::default()
            };
            let targets: Vec<i64> = window[1..].iter().map(|&t| i64::from(t)).collect();
            let scores = self.score(std::slice::from_ref(&row), &targets, top as i64);
            let logprobs = Vec::<f32>::try_from(&scores.logprob).unwrap_or_default();
            let (values, ids) = match &scores.top {
                Some((values, ids)) => (
                    Vec::<f32>::try_from(&values.view([-1])).unwrap_or_default(),
                    Vec::<i64>::try_from(&ids.view([-1])).unwrap_or_default(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            for p in 0..n {
                let top_list = (0..top)
                    .filter_map(|k| {
                        let at = p * top + k;
                        Some((*ids.get(at)? as u32, f64::from(*values.get(at)?)))
                    })
                    .collect();
                out.push(TokenScore {
                    id: window[p + 1],
                    logprob: logprobs.get(p).map(|&l| f64::from(l)),
                    top: top_list,
                });
            }
            start = end - 1;
        }
        out
    }
}
