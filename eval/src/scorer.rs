//! Log-likelihoods of continuations given contexts (lm-evaluation-harness style), and per-token
//! log-probabilities of whole sequences. Each request is its own row in a batch, padded on the right
//! with a pad segment that no real token attends to, so a request's score does not depend on what it
//! is batched with; requests are sorted by length (longest first) to waste little padding and the
//! results returned in request order.
use dapt_core::PackedRow;
use dapt_trainer::{Batch, CausalLm};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// One (context, continuation) pair of token ids; the context must not be empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
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
    pub id: u32,
    /// Log-probability given the tokens before it (`None` for the first token).
    pub logprob: Option<f64>,
    /// The most likely tokens at its position and their log-probabilities.
    pub top: Vec<(u32, f64)>,
}

/// Scores requests with a model.
pub struct Scorer<'a> {
    pub model: &'a CausalLm,
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
            let logprobs = self.log_softmax(&rows);
            for (row, &i) in chunk.iter().enumerate() {
                let (all, scored) = &sequences[i];
                let n = all.len() - 1;
                let targets: Vec<i64> = all[all.len() - scored..]
                    .iter()
                    .map(|&t| t as i64)
                    .collect();
                let positions =
                    logprobs
                        .get(row as i64)
                        .narrow(0, (n - scored) as i64, *scored as i64);
                let targets_t = Tensor::from_slice(&targets).to_device(positions.device());
                let picked = positions
                    .gather(1, &targets_t.unsqueeze(1), false)
                    .squeeze_dim(1);
                let greedy = positions.argmax(1, false).eq_tensor(&targets_t).all();
                out[i] = Some(LogLikelihood {
                    logprob: picked.sum(Kind::Double).double_value(&[]),
                    is_greedy: greedy.int64_value(&[]) != 0,
                    tokens: *scored,
                });
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

    /// `[rows, width, vocab]` log-softmax (float32) of the model's next-token distributions.
    fn log_softmax(&self, rows: &[PackedRow]) -> Tensor {
        let refs: Vec<&PackedRow> = rows.iter().collect();
        let batch = Batch::from_rows(&refs, self.device);
        tch::no_grad(|| {
            self.model
                .forward(&batch.input_ids, &batch.positions, &batch.mask)
                .to_kind(Kind::Float)
                .log_softmax(-1, Kind::Float)
                .to_device(Device::Cpu)
        })
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
            let logprobs = self.log_softmax(std::slice::from_ref(&row)).get(0);
            let (values, indices) = if top > 0 {
                let (v, i) = logprobs.topk(top as i64, -1, true, true);
                (Some(v), Some(i))
            } else {
                (None, None)
            };
            for p in 0..n {
                let id = window[p + 1];
                let logprob = logprobs.double_value(&[p as i64, id as i64]);
                let top_list = match (&values, &indices) {
                    (Some(v), Some(i)) => (0..top as i64)
                        .map(|k| {
                            (
                                i.int64_value(&[p as i64, k]) as u32,
                                v.double_value(&[p as i64, k]),
                            )
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                out.push(TokenScore {
                    id,
                    logprob: Some(logprob),
                    top: top_list,
                });
            }
            start = end - 1;
        }
        out
    }
}
