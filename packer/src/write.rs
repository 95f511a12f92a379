//! Writing packed rows as Parquet shards with self-describing metadata.
use std::collections::BTreeMap;

use dapt_core::schema::{metadata, packed_schema};
use dapt_core::{packed, parquet_io, OutputDir, PackedRow};

use crate::Result;

/// Writes rows as shards `part-00000.parquet`, … of at most `rows_per_shard` rows into `output`,
/// skipping shards an earlier run published, and records `summary` in the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn write_packed(
    output: &mut OutputDir,
    rows: &[PackedRow],
    rows_per_shard: usize,
    seq_len: usize,
    pad_id: u32,
    tokenizer_sha256: &str,
    seed: u64,
    config_hash: &str,
    summary: serde_json::Value,
) -> Result<()> {
    let mut kv = BTreeMap::new();
    kv.insert(
        metadata::TOKENIZER_SHA256.to_string(),
        tokenizer_sha256.to_string(),
    );
    kv.insert(metadata::SEQ_LEN.to_string(), seq_len.to_string());
    kv.insert(metadata::PAD_ID.to_string(), pad_id.to_string());
    kv.insert(metadata::SEED.to_string(), seed.to_string());
    kv.insert(metadata::CONFIG_HASH.to_string(), config_hash.to_string());
    for (index, chunk) in rows.chunks(rows_per_shard).enumerate() {
        let name = format!("part-{index:05}.parquet");
        if output.is_published(&name) {
            continue;
        }
        let batch = packed::rows_to_batch(chunk)?;
        let bytes = parquet_io::encode(packed_schema(), &[batch], &kv, &name)?;
        output.publish(&name, bytes, chunk.len() as u64).await?;
    }
    output.finish(summary).await?;
    Ok(())
}
