//! The one document-order key. Every stage that orders or samples documents (packing, held-out
//! splits, mixture epochs and windows, sweeps, training-row order, few-shot draws) asks this module,
//! so the same documents under the same seed are ordered the same way by every command: `dapt run`
//! and `dapt pack` give one order, and `dapt mix run` and `dapt sweep` sample with one rule.
//!
//! The key of a document is `xxh64(id, sub_seed(seed, stage, pass) mod 2^63)`: a function of the run
//! seed, the stage's name, a pass number (an epoch, a shard) and the document id alone — never of
//! arrival order or threads. Ties (equal keys) are broken by the id. The stage seed is kept below 2^63
//! so that SQL can compute the same key with `xxhash64(id, stage_seed)` (an `Int64` seed), which is
//! what the SQL function `order_key(id, seed, stage, pass)` does.
use std::cmp::Ordering;

use xxhash_rust::xxh64::xxh64;

use crate::hash::sub_seed;

/// The order key of document `id` in pass `pass` of stage `stage` of a run seeded with `seed`.
pub fn document_key(seed: u64, stage: &str, pass: u64, id: &str) -> u64 {
    key_with(stage_seed(seed, stage, pass), id)
}

/// The key of `id` under a stage seed from [`stage_seed`] (for loops over many documents).
pub fn key_with(stage_seed: u64, id: &str) -> u64 {
    xxh64(id.as_bytes(), stage_seed)
}

/// The seed of one pass of one stage: what [`key_with`] takes.
pub fn stage_seed(seed: u64, stage: &str, pass: u64) -> u64 {
    sub_seed(seed, stage, pass) & (i64::MAX as u64)
}

/// A uniform number in `[0, 1)` from an order key: `fraction(key) < p` samples with probability `p`,
/// consistently with the order (a smaller key gives a smaller fraction).
pub fn fraction(key: u64) -> f64 {
    (key >> 11) as f64 / (1u64 << 53) as f64
}

/// The document order: by key, then by id.
pub fn compare(a: (u64, &str), b: (u64, &str)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// Indices of `ids` in document order for (seed, stage, pass).
pub fn ordered<S: AsRef<str>>(seed: u64, stage: &str, pass: u64, ids: &[S]) -> Vec<usize> {
    let stage_seed = stage_seed(seed, stage, pass);
    let mut keyed: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (key_with(stage_seed, id.as_ref()), i))
        .collect();
    keyed.sort_by(|a, b| compare((a.0, ids[a.1].as_ref()), (b.0, ids[b.1].as_ref())));
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_seed_stage_pass_and_id_only() {
        let k = document_key(7, "pack-order", 0, "doc-1");
        assert_eq!(k, document_key(7, "pack-order", 0, "doc-1"));
        assert_ne!(k, document_key(8, "pack-order", 0, "doc-1"));
        assert_ne!(k, document_key(7, "heldout", 0, "doc-1"));
        assert_ne!(k, document_key(7, "pack-order", 1, "doc-1"));
        assert_ne!(k, document_key(7, "pack-order", 0, "doc-2"));
        assert_eq!(k, key_with(stage_seed(7, "pack-order", 0), "doc-1"));
    }

    #[test]
    fn ordered_does_not_depend_on_input_order() {
        let ids: Vec<String> = (0..500).map(|i| format!("d{i}")).collect();
        let mut reversed = ids.clone();
        reversed.reverse();
        let names = |ids: &[String], order: Vec<usize>| -> Vec<String> {
            order.into_iter().map(|i| ids[i].clone()).collect()
        };
        let a = names(&ids, ordered(3, "s", 0, &ids));
        let b = names(&reversed, ordered(3, "s", 0, &reversed));
        assert_eq!(a, b);
        assert_ne!(a, ids, "a seeded order is not the input order");
        let keys: Vec<u64> = a.iter().map(|id| document_key(3, "s", 0, id)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn fraction_is_uniform_and_follows_the_key() {
        let n = 20_000;
        let below = (0..n)
            .filter(|i| fraction(document_key(3, "heldout", 0, &i.to_string())) < 0.25)
            .count();
        let share = below as f64 / f64::from(n);
        assert!((share - 0.25).abs() < 0.02, "share {share}");
        assert!(fraction(10 << 11) < fraction(11 << 11));
        assert!(fraction(u64::MAX) < 1.0);
    }

    #[test]
    fn ties_are_broken_by_id() {
        assert_eq!(compare((5, "a"), (5, "b")), Ordering::Less);
        assert_eq!(compare((4, "z"), (5, "a")), Ordering::Less);
    }
}
