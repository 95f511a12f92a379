//! MinHash signatures of word k-shingles: for each of `num_perm` seeded universal hash functions
//! `h_i(x) = (a_i·x + b_i) mod (2^61 − 1)` over the 64-bit hashes of the shingles, the minimum.
//! Text is lower-cased and split on whitespace; a text with fewer than `k` words is one shingle.
use xxhash_rust::xxh3::xxh3_64_with_seed;

const MERSENNE_61: u64 = (1 << 61) - 1;

fn mod_mersenne(x: u128) -> u64 {
    let folded = (x & u128::from(MERSENNE_61)) + (x >> 61);
    let folded = (folded & u128::from(MERSENNE_61)) + (folded >> 61);
    let v = folded as u64;
    if v >= MERSENNE_61 {
        v - MERSENNE_61
    } else {
        v
    }
}

/// SplitMix64: the permutation parameters are a function of the seed alone.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Computes signatures with fixed parameters.
#[derive(Clone, Debug)]
pub struct MinHasher {
    k: usize,
    seed: u64,
    /// `(a, b)` per permutation, `a` in [1, p), `b` in [0, p).
    permutations: Vec<(u64, u64)>,
}

impl MinHasher {
    /// A MinHash over `k`-word shingles with `num_perm` hash functions seeded by `seed`.
    pub fn new(k: usize, num_perm: usize, seed: u64) -> Self {
        let mut state = seed;
        let permutations = (0..num_perm)
            .map(|_| {
                let a = splitmix(&mut state) % (MERSENNE_61 - 1) + 1;
                let b = splitmix(&mut state) % MERSENNE_61;
                (a, b)
            })
            .collect();
        Self {
            k: k.max(1),
            seed,
            permutations,
        }
    }

    /// Signature length.
    pub fn num_perm(&self) -> usize {
        self.permutations.len()
    }

    /// The 64-bit hashes of the text's shingles (deduplicated, sorted).
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let mut hashes: Vec<u64> = if words.len() < self.k {
            vec![xxh3_64_with_seed(words.join(" ").as_bytes(), self.seed)]
        } else {
            words
                .windows(self.k)
                .map(|gram| xxh3_64_with_seed(gram.join(" ").as_bytes(), self.seed) & MERSENNE_61)
                .collect()
        };
        for h in &mut hashes {
            *h &= MERSENNE_61;
        }
        hashes.sort_unstable();
        hashes.dedup();
        hashes
    }

    /// The signature: one minimum per permutation.
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let shingles = self.shingles(text);
        self.permutations
            .iter()
            .map(|&(a, b)| {
                shingles
                    .iter()
                    .map(|&x| mod_mersenne(u128::from(a) * u128::from(x) + u128::from(b)))
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .collect()
    }
}

/// The share of equal positions of two signatures: an estimate of the Jaccard similarity.
pub fn estimated_jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_track_true_jaccard() {
        let hasher = MinHasher::new(3, 256, 42);
        let words: Vec<String> = (0..400).map(|i| format!("слово{i}")).collect();
        let base = words.join(" ");
        // Replace every 10th word: about 70% of 3-shingles survive.
        let edited: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i % 10 == 5 {
                    format!("другое{i}")
                } else {
                    w.clone()
                }
            })
            .collect();
        let edited = edited.join(" ");
        let (a, b) = (hasher.shingles(&base), hasher.shingles(&edited));
        let common = a.iter().filter(|x| b.binary_search(x).is_ok()).count();
        let jaccard = common as f64 / (a.len() + b.len() - common) as f64;
        let estimate = estimated_jaccard(&hasher.signature(&base), &hasher.signature(&edited));
        assert!((estimate - jaccard).abs() < 0.08, "{estimate} vs {jaccard}");
        assert_eq!(
            hasher.signature(&base),
            MinHasher::new(3, 256, 42).signature(&base)
        );
        assert_ne!(
            hasher.signature(&base),
            MinHasher::new(3, 256, 43).signature(&base)
        );
        assert_eq!(hasher.signature("").len(), 256);
    }
}
