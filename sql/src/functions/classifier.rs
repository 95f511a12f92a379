//! A fastText-style binary text classifier, trained in Rust: hashed features (lower-cased word
//! unigrams and bigrams, character 3–5-grams of `<word>`) into `2^bits` buckets, a linear model over
//! the L2-normalised feature vector (the weights' sum over √n), logistic loss, SGD in a seeded order. Model files are
//! `DAPTCLS1`, a JSON header and little-endian f32 weights.
use std::io::Write;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Words read from a document (longer documents are judged on their start).
const MAX_WORDS: usize = 2000;
const MAGIC: &[u8; 8] = b"DAPTCLS1";

/// Training settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    /// Feature buckets: `2^bits`.
    pub bits: u32,
    /// Passes over the training examples.
    pub epochs: usize,
    /// SGD step size.
    pub learning_rate: f32,
    /// L2 penalty per step.
    pub l2: f32,
    /// Seed of the example order and the train/held-out split.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            bits: 20,
            epochs: 5,
            learning_rate: 0.5,
            l2: 1e-6,
            seed: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    bits: u32,
    seed: u64,
    bias: f32,
    min_char_ngram: usize,
    max_char_ngram: usize,
}

/// A trained classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct Classifier {
    header: Header,
    weights: Vec<f32>,
}

/// Quality of a classifier on labelled texts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Examples scored.
    pub examples: usize,
    /// Positives among them.
    pub positives: usize,
    /// At a score threshold of 0.5.
    pub precision: f64,
    /// Share of positives found (at 0.5).
    pub recall: f64,
    /// Share of examples classified right (at 0.5).
    pub accuracy: f64,
    /// Area under the ROC curve.
    pub auc: f64,
}

fn features(text: &str, bits: u32, seed: u64, chars: (usize, usize)) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    let hash = |kind: u8, bytes: &[u8]| -> u32 {
        (xxh3_64_with_seed(bytes, seed ^ u64::from(kind)) & mask) as u32
    };
    let words: Vec<String> = text
        .split_whitespace()
        .take(MAX_WORDS)
        .map(str::to_lowercase)
        .collect();
    let mut out = Vec::with_capacity(words.len() * 6);
    for (i, word) in words.iter().enumerate() {
        out.push(hash(1, word.as_bytes()));
        if let Some(next) = words.get(i + 1) {
            out.push(hash(2, format!("{word} {next}").as_bytes()));
        }
        let marked: Vec<char> = format!("<{word}>").chars().collect();
        for n in chars.0..=chars.1 {
            for gram in marked.windows(n) {
                let gram: String = gram.iter().collect();
                out.push(hash(3, gram.as_bytes()));
            }
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Classifier {
    fn raw(&self, features: &[u32]) -> f32 {
        if features.is_empty() {
            return self.header.bias;
        }
        let sum: f32 = features.iter().map(|&f| self.weights[f as usize]).sum();
        self.header.bias + sum / (features.len() as f32).sqrt()
    }

    fn features(&self, text: &str) -> Vec<u32> {
        let h = &self.header;
        features(text, h.bits, h.seed, (h.min_char_ngram, h.max_char_ngram))
    }

    /// Probability in [0, 1] that the text is of the positive class.
    pub fn score(&self, text: &str) -> f64 {
        f64::from(sigmoid(self.raw(&self.features(text))))
    }

    /// Trains on `(text, is_positive)` examples.
    pub fn train(examples: &[(String, bool)], options: &TrainOptions) -> Self {
        let header = Header {
            bits: options.bits.clamp(10, 26),
            seed: options.seed,
            bias: 0.0,
            min_char_ngram: 3,
            max_char_ngram: 5,
        };
        let mut model = Self {
            weights: vec![0.0; 1 << header.bits],
            header,
        };
        use rayon::prelude::*;
        let cached: Vec<Vec<u32>> = examples
            .par_iter()
            .map(|(t, _)| model.features(t))
            .collect();
        let mut order: Vec<usize> = (0..examples.len()).collect();
        let mut state = options.seed;
        for epoch in 0..options.epochs {
            // Fisher–Yates with a seeded generator: the order is a function of (seed, epoch).
            for i in (1..order.len()).rev() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407 + epoch as u64);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let rate =
                options.learning_rate * (1.0 - epoch as f32 / options.epochs as f32).max(0.05);
            for &i in &order {
                let feats = &cached[i];
                let target = if examples[i].1 { 1.0 } else { 0.0 };
                let gradient = sigmoid(model.raw(feats)) - target;
                model.header.bias -= rate * gradient;
                if feats.is_empty() {
                    continue;
                }
                let step = rate * gradient / (feats.len() as f32).sqrt();
                for &f in feats {
                    let w = &mut model.weights[f as usize];
                    *w -= step + options.l2 * *w;
                }
            }
        }
        model
    }

    /// Precision, recall, accuracy and AUC on labelled texts.
    pub fn evaluate(&self, examples: &[(String, bool)]) -> Metrics {
        use rayon::prelude::*;
        let scores: Vec<(f64, bool)> = examples
            .par_iter()
            .map(|(t, y)| (self.score(t), *y))
            .collect();
        metrics(&scores)
    }

    /// Writes the model file.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let header = serde_json::to_vec(&self.header)?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        file.write_all(MAGIC)?;
        file.write_all(&(header.len() as u32).to_le_bytes())?;
        file.write_all(&header)?;
        for w in &self.weights {
            file.write_all(&w.to_le_bytes())?;
        }
        file.flush()
    }

    /// Reads a model file; the error says what is wrong with it.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |reason: &str| format!("{}: not a dapt classifier ({reason})", path.display());
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(bad("no DAPTCLS1 header"));
        }
        let length =
            u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("header"))?) as usize;
        let header: Header = serde_json::from_slice(
            bytes
                .get(12..12 + length)
                .ok_or_else(|| bad("truncated header"))?,
        )
        .map_err(|e| bad(&e.to_string()))?;
        let body = &bytes[12 + length..];
        if header.bits > 26 || body.len() != 4 << header.bits {
            return Err(bad("weights do not match the header"));
        }
        let weights = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { header, weights })
    }
}

/// Metrics from (score, label) pairs.
pub fn metrics(scores: &[(f64, bool)]) -> Metrics {
    let positives = scores.iter().filter(|s| s.1).count();
    let negatives = scores.len() - positives;
    let predicted = |s: &(f64, bool)| s.0 >= 0.5;
    let tp = scores.iter().filter(|s| predicted(s) && s.1).count();
    let fp = scores.iter().filter(|s| predicted(s) && !s.1).count();
    let correct = scores.iter().filter(|s| predicted(s) == s.1).count();
    // AUC: the probability that a random positive outscores a random negative (ties count half).
    let mut sorted: Vec<&(f64, bool)> = scores.iter().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let average_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += average_rank * sorted[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    let auc = if positives == 0 || negatives == 0 {
        f64::NAN
    } else {
        (rank_sum - (positives * (positives + 1)) as f64 / 2.0) / (positives * negatives) as f64
    };
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Metrics {
        examples: scores.len(),
        positives,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, positives),
        accuracy: ratio(correct, scores.len()),
        auc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_rankings() {
        let perfect = [(0.9, true), (0.8, true), (0.2, false), (0.1, false)];
        assert_eq!(metrics(&perfect).auc, 1.0);
        let inverted = [(0.1, true), (0.9, false)];
        assert_eq!(metrics(&inverted).auc, 0.0);
        let tied = [(0.5, true), (0.5, false)];
        assert_eq!(metrics(&tied).auc, 0.5);
        let m = metrics(&[(0.9, true), (0.6, false), (0.4, true), (0.1, false)]);
        assert_eq!((m.precision, m.recall, m.accuracy), (0.5, 0.5, 0.5));
        assert_eq!(m.auc, 0.75);
    }

    #[test]
    fn learns_and_round_trips_through_a_file() {
        let positives = [
            "SELECT id FROM users WHERE age > 30",
            "CREATE INDEX ON orders (customer_id)",
            "VACUUM ANALYZE the table to update planner statistics",
        ];
        let negatives = [
            "The cat sat on the warm windowsill all afternoon",
            "Мы гуляли в парке до самого вечера",
            "A long walk by the sea clears the head",
        ];
        let examples: Vec<(String, bool)> = positives
            .iter()
            .map(|t| (t.to_string(), true))
            .chain(negatives.iter().map(|t| (t.to_string(), false)))
            .collect();
        let options = TrainOptions {
            bits: 16,
            epochs: 20,
            ..Default::default()
        };
        let model = Classifier::train(&examples, &options);
        assert_eq!(model.evaluate(&examples).accuracy, 1.0);
        assert_eq!(
            Classifier::train(&examples, &options),
            model,
            "deterministic"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        model.save(&path).unwrap();
        assert_eq!(Classifier::load(&path).unwrap(), model);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(Classifier::load(&path)
            .unwrap_err()
            .contains("not a dapt classifier"));
    }
}
