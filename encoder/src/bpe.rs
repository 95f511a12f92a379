//! Byte-level BPE merges in HF `tokenizers`' order, on byte strings and token ids, without HF's
//! per-token strings and offsets: the fast encoder's path for a piece it has not seen yet.
//!
//! HF's `BPE` (no dropout, no unknown token, no byte fallback, no affixes) turns a word into one
//! symbol per character of its byte-level spelling, drops characters that are not in the
//! vocabulary, and then repeatedly applies the merge of lowest rank among adjacent symbols, the
//! leftmost first on a tie (a heap of candidate merges; entries whose pair has changed are
//! skipped). With `ignore_merges`, a word that is a token is that token. This is the same
//! procedure; the packer's identity test compares ids with HF on the whole test corpus.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::Deserialize;

/// One entry of `model.merges`: `"a b"` (older files) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum MergeEntry {
    Joined(String),
    Pair(String, String),
}

/// Merge ranks and results by pair of token ids.
pub(crate) struct Bpe {
    /// `(left << 32) | right` → (rank, merged id).
    merges: ahash::AHashMap<u64, (u32, u32)>,
    /// The token of each byte's byte-level character, `u32::MAX` where the vocabulary lacks it.
    byte_ids: [u32; 256],
    ignore_merges: bool,
}

/// A symbol of the word being merged: its token, its neighbours, and whether a merge into its left neighbour removed it.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    gone: bool,
}

/// Buffers reused from one word to the next.
#[derive(Default)]
pub(crate) struct Scratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, usize, u32)>>,
    ids: Vec<u32>,
    /// Rank and result of each adjacent pair (`u32::MAX`: no merge).
    pairs: Vec<(u32, u32)>,
}

/// Words of up to this many symbols are merged by scanning their pairs (fewer steps than a heap);
/// longer ones by the heap, as HF does, so that a long run stays O(n log n).
const SCAN_SYMBOLS: usize = 48;

const NO_MERGE: (u32, u32) = (u32::MAX, u32::MAX);

const NONE: usize = usize::MAX;

#[inline]
fn key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

impl Bpe {
    /// The merges of `entries` over `vocab` (token string → id); `byte_chars` is the byte-level
    /// alphabet.
    pub(crate) fn new(
        entries: &[MergeEntry],
        vocab: &HashMap<String, u32>,
        byte_chars: &[char; 256],
        ignore_merges: bool,
    ) -> Result<Self, String> {
        let mut merges = ahash::AHashMap::with_capacity(entries.len());
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("merge token {token:?} is not in the vocabulary"))
        };
        for (rank, entry) in entries.iter().enumerate() {
            let (left, right) = match entry {
                MergeEntry::Pair(left, right) => (left.as_str(), right.as_str()),
                MergeEntry::Joined(line) => {
                    let mut parts = line.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(left), Some(right), None) => (left, right),
                        _ => return Err(format!("merge {line:?} is not two tokens")),
                    }
                }
            };
            let merged = id(&format!("{left}{right}"))?;
            // As HF builds its map, a repeated pair keeps its last rank.
            merges.insert(key(id(left)?, id(right)?), (rank as u32, merged));
        }
        let mut byte_ids = [u32::MAX; 256];
        let mut buf = [0; 4];
        for (b, c) in byte_chars.iter().enumerate() {
            if let Some(&id) = vocab.get(&*c.encode_utf8(&mut buf)) {
                byte_ids[b] = id;
            }
        }
        Ok(Self {
            merges,
            byte_ids,
            ignore_merges,
        })
    }

    /// Appends the ids of `word` (bytes); `whole` gives the token a word spells, if any.
    pub(crate) fn encode(
        &self,
        word: &[u8],
        whole: &ahash::AHashMap<Vec<u8>, u32>,
        scratch: &mut Scratch,
        ids: &mut Vec<u32>,
    ) {
        if self.ignore_merges {
            if let Some(&id) = whole.get(word) {
                ids.push(id);
                return;
            }
        }
        if word.len() <= SCAN_SYMBOLS {
            self.merge_by_scan(word, scratch, ids);
        } else {
            self.merge_by_heap(word, scratch, ids);
        }
    }

    #[inline]
    fn pair(&self, left: u32, right: u32) -> (u32, u32) {
        self.merges
            .get(&key(left, right))
            .copied()
            .unwrap_or(NO_MERGE)
    }

    /// The lowest-rank pair, leftmost on a tie, merged until none is left: a scan of the pairs'
    /// ranks, updated around each merge.
    fn merge_by_scan(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let ids = &mut scratch.ids;
        ids.clear();
        ids.extend(
            word.iter()
                .map(|&b| self.byte_ids[b as usize])
                .filter(|&id| id != u32::MAX),
        );
        let pairs = &mut scratch.pairs;
        pairs.clear();
        pairs.extend(ids.windows(2).map(|w| self.pair(w[0], w[1])));
        loop {
            let mut best = NO_MERGE.0;
            let mut at = usize::MAX;
            for (i, &(rank, _)) in pairs.iter().enumerate() {
                if rank < best {
                    best = rank;
                    at = i;
                }
            }
            if at == usize::MAX {
                break;
            }
            let merged = pairs[at].1;
            ids[at] = merged;
            ids.remove(at + 1);
            pairs.remove(at);
            if at > 0 {
                pairs[at - 1] = self.pair(ids[at - 1], merged);
            }
            if at < pairs.len() {
                pairs[at] = self.pair(merged, ids[at + 1]);
            }
        }
        out.extend_from_slice(ids);
    }

    /// HF's procedure: a heap of candidate merges by (rank, position), stale entries skipped.
    fn merge_by_heap(&self, word: &[u8], scratch: &mut Scratch, ids: &mut Vec<u32>) {
        let symbols = &mut scratch.symbols;
        symbols.clear();
        for &b in word {
            let id = self.byte_ids[b as usize];
            if id != u32::MAX {
                let at = symbols.len();
                symbols.push(Symbol {
                    id,
                    prev: at.wrapping_sub(1),
                    next: at + 1,
                    gone: false,
                });
            }
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        let heap = &mut scratch.heap;
        heap.clear();
        for at in 1..symbols.len() {
            if let Some(&(rank, merged)) = self.merges.get(&key(symbols[at - 1].id, symbols[at].id))
            {
                heap.push(Reverse((rank, at - 1, merged)));
            }
        }
        while let Some(Reverse((_, at, merged))) = heap.pop() {
            let left = symbols[at];
            if left.gone || left.next == NONE {
                continue;
            }
            let right = symbols[left.next];
            // Skip an entry whose pair has changed since it was pushed.
            match self.merges.get(&key(left.id, right.id)) {
                Some(&(_, now)) if now == merged => {}
                _ => continue,
            }
            symbols[at].id = merged;
            symbols[at].next = right.next;
            symbols[left.next].gone = true;
            if right.next != NONE {
                symbols[right.next].prev = at;
            }
            if left.prev != NONE {
                let prev = symbols[left.prev];
                if let Some(&(rank, m)) = self.merges.get(&key(prev.id, merged)) {
                    heap.push(Reverse((rank, left.prev, m)));
                }
            }
            if right.next != NONE {
                if let Some(&(rank, m)) = self.merges.get(&key(merged, symbols[right.next].id)) {
                    heap.push(Reverse((rank, at, m)));
                }
            }
        }
        ids.extend(symbols.iter().filter(|s| !s.gone).map(|s| s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::Model;

    /// On random merges over a small alphabet (so that merges chain and several pairs spell the
    /// same token), both merge procedures give HF's BPE model's ids for words of 1 to 120 bytes.
    #[test]
    fn merges_apply_in_hfs_order() {
        let chars = crate::byte_level_alphabet();
        let mut vocab: HashMap<String, u32> = chars
            .iter()
            .enumerate()
            .map(|(b, c)| (c.to_string(), b as u32))
            .collect();
        let mut tokens: Vec<String> = "abcĠ".chars().map(String::from).collect();
        let mut pairs = std::collections::HashSet::new();
        let mut merges = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        while merges.len() < 400 {
            let (left, right) = (
                tokens[next(tokens.len())].clone(),
                tokens[next(tokens.len())].clone(),
            );
            let merged = format!("{left}{right}");
            if merged.chars().count() > 8 || !pairs.insert((left.clone(), right.clone())) {
                continue;
            }
            if !vocab.contains_key(&merged) {
                vocab.insert(merged.clone(), vocab.len() as u32);
                tokens.push(merged);
            }
            merges.push((left, right));
        }
        let hf = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(
                vocab
                    .iter()
                    .map(|(k, &v)| (k.clone(), v))
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges.clone(),
            )
            .build()
            .unwrap();
        let entries: Vec<MergeEntry> = merges
            .iter()
            .map(|(l, r)| MergeEntry::Pair(l.clone(), r.clone()))
            .collect();
        let bpe = Bpe::new(&entries, &vocab, &chars, false).unwrap();
        let whole = ahash::AHashMap::new();
        let mut scratch = Scratch::default();
        let mut shared_spellings = 0;
        for _ in 0..5000 {
            let len = 1 + next(120);
            let word: Vec<u8> = (0..len).map(|_| b"abc "[next(4)]).collect();
            let spelled: String = word.iter().map(|&b| chars[b as usize]).collect();
            let expected: Vec<u32> = hf
                .tokenize(&spelled)
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect();
            let mut got = Vec::new();
            bpe.encode(&word, &whole, &mut scratch, &mut got);
            assert_eq!(got, expected, "{spelled}");
            let (mut by_scan, mut by_heap) = (Vec::new(), Vec::new());
            bpe.merge_by_scan(&word, &mut scratch, &mut by_scan);
            bpe.merge_by_heap(&word, &mut scratch, &mut by_heap);
            assert_eq!(by_scan, expected, "{spelled}");
            assert_eq!(by_heap, expected, "{spelled}");
            shared_spellings += usize::from(expected.len() < word.len());
        }
        assert!(
            shared_spellings > 4000,
            "{shared_spellings} words merged at all"
        );
        assert!(
            merges.len() > vocab.len() - 256,
            "several pairs spell one token"
        );
    }
}
