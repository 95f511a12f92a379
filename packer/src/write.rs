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

/// Packs documents for continual pretraining into `output` (`sources`, one per document or none, label
/// the segments): documents are ordered by a hash of
/// (seed, id) — so the order never depends on how they arrived — tokenised in parallel, ended with
/// EOS, packed into rows of `settings.seq_len` and written as shards. A finished output is reused
/// as it is. Returns the packing statistics recorded in the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn pack_documents(
    output: &mut OutputDir,
    tokenizer: &crate::TokenizerFile,
    ids: &[String],
    texts: &[String],
    sources: &[String],
    settings: &crate::PackSettings,
    seed: u64,
    config_hash: &str,
) -> Result<crate::PackStats> {
    if output.manifest().complete {
        return Ok(serde_json::from_value(output.manifest().summary.clone()).unwrap_or_default());
    }
    let order_seed = dapt_core::hash::sub_seed(seed, "pack-order", 0);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| {
        dapt_core::hash::unit_interval(order_seed, &ids[a])
            .total_cmp(&dapt_core::hash::unit_interval(order_seed, &ids[b]))
            .then_with(|| ids[a].cmp(&ids[b]))
    });
    let ordered_ids: Vec<String> = order.iter().map(|&i| ids[i].clone()).collect();
    let ordered_texts: Vec<String> = order.iter().map(|&i| texts[i].clone()).collect();
    let ordered_sources: Vec<String> = if sources.len() == ids.len() {
        order.iter().map(|&i| sources[i].clone()).collect()
    } else {
        Vec::new()
    };
    let eos_id = tokenizer.id_of(&settings.eos_token)?;
    let pad_id = tokenizer.id_of(&settings.pad_token)?;
    let encoded = tokenizer.encode_all(&ordered_ids, &ordered_texts)?;
    let (rows, stats) =
        crate::pack_cpt(&encoded, &ordered_sources, eos_id, pad_id, settings.seq_len);
    tracing::info!(
        documents = stats.documents,
        tokens = stats.tokens,
        rows = stats.rows,
        fill = stats.fill,
        "packed"
    );
    let summary = serde_json::to_value(&stats).unwrap_or_default();
    write_packed(
        output,
        &rows,
        settings.rows_per_shard,
        settings.seq_len,
        pad_id,
        tokenizer.sha256(),
        seed,
        config_hash,
        summary,
    )
    .await?;
    Ok(stats)
}

/// Reads every packed row of an output directory, checking the contract row by row.
pub async fn read_packed(
    output: &OutputDir,
    seq_len: usize,
    pad_id: i32,
) -> Result<Vec<PackedRow>> {
    let mut rows = Vec::new();
    for (shard, bytes) in output.read_shards().await? {
        let (batches, _) = parquet_io::decode(bytes, &shard)?;
        for batch in &batches {
            rows.extend(packed::batch_to_rows(batch)?);
        }
    }
    for (i, row) in rows.iter().enumerate() {
        row.validate(i, seq_len, pad_id)?;
    }
    Ok(rows)
}
