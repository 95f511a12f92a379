//! Seeds and content hashes. Every random decision in dapt is a function of (run seed, stage, shard or
//! document id), never of thread timing or partition order.
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64_with_seed;
use xxhash_rust::xxh64::xxh64;

/// A sub-seed for one stage and shard of a run: a hash of (seed, stage, shard).
pub fn sub_seed(seed: u64, stage: &str, shard: u64) -> u64 {
    let mut key = Vec::with_capacity(stage.len() + 9);
    key.extend_from_slice(stage.as_bytes());
    key.push(0);
    key.extend_from_slice(&shard.to_le_bytes());
    xxh3_64_with_seed(&key, seed)
}

/// A stable id for a document that has none: xxhash64 of its source and text, as 16 hex digits.
pub fn content_id(source: &str, text: &str) -> String {
    let mut key = Vec::with_capacity(source.len() + text.len() + 1);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(text.as_bytes());
    format!("{:016x}", xxh64(&key, 0))
}

/// Lower-case hex sha256 of bytes (tokenizer files, configs).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex sha256 of everything `reader` yields, read in 1 MiB blocks (a model file of any size
/// in bounded memory).
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The job of an array of `count` that takes `value` (a file name, key or id): `xxh3(value) %
/// count`. Every `--shard i/n` split, and SQL's `shard_of(value, n)`, use it.
pub fn shard_of(value: &str, count: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value.as_bytes()) % count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_sha256_equals_the_one_shot_digest() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(sha256_reader(&bytes[..]).unwrap(), sha256_hex(&bytes));
    }

    #[test]
    fn sub_seeds_differ_by_stage_and_shard_and_repeat() {
        assert_eq!(sub_seed(7, "pack", 0), sub_seed(7, "pack", 0));
        assert_ne!(sub_seed(7, "pack", 0), sub_seed(7, "pack", 1));
        assert_ne!(sub_seed(7, "pack", 0), sub_seed(7, "mix", 0));
        assert_ne!(sub_seed(7, "pack", 0), sub_seed(8, "pack", 0));
    }

    #[test]
    fn content_id_separates_source_from_text() {
        assert_eq!(content_id("a", "bc"), content_id("a", "bc"));
        assert_ne!(content_id("a", "bc"), content_id("ab", "c"));
        assert_eq!(content_id("a", "bc").len(), 16);
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
