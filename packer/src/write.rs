//! Writing packed rows as Parquet shards with self-describing metadata.
use std::collections::BTreeMap;

use dapt_core::schema::packed_schema;
use dapt_core::shard_writer::ShardWriter;
use dapt_core::{packed, parquet_io, OutputDir, PackedMetadata, PackedRow};

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rayon::prelude::*;

use crate::error::json_error;
use crate::{CptPacker, Error, PackSettings, PackStats, Result, TokenizerFile};

/// The metadata of packed shards (the highest token id is filled in when the rows are known).
fn shard_metadata(
    seq_len: usize,
    pad_id: u32,
    tokenizer_sha256: &str,
    seed: u64,
    config_hash: &str,
) -> PackedMetadata {
    PackedMetadata {
        tokenizer_sha256: tokenizer_sha256.to_string(),
        seq_len,
        pad_id: pad_id as i32,
        seed,
        config_hash: config_hash.to_string(),
        max_token_id: pad_id as i32,
    }
}

fn shard_name(stem: &str, index: usize) -> String {
    format!("{stem}-{index:05}.parquet")
}

fn encode_shard(rows: &[PackedRow], kv: &BTreeMap<String, String>, name: &str) -> Result<Bytes> {
    let batch = packed::rows_to_batch(rows)?;
    Ok(parquet_io::encode_packed(
        packed_schema(),
        &[batch],
        kv,
        name,
    )?)
}

/// Writes rows as shards `{stem}-00000.parquet`, … (`part`, or a job of an array's own stem) of at
/// most `rows_per_shard` rows into `output`, skipping shards an earlier run published, and records
/// `summary` in the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn write_packed(
    output: &mut OutputDir,
    rows: &[PackedRow],
    stem: &str,
    rows_per_shard: usize,
    seq_len: usize,
    pad_id: u32,
    tokenizer_sha256: &str,
    seed: u64,
    config_hash: &str,
    summary: serde_json::Value,
) -> Result<()> {
    let mut declared = shard_metadata(seq_len, pad_id, tokenizer_sha256, seed, config_hash);
    declared.max_token_id = declared.max_token_id.max(packed::max_token_id(rows));
    let kv = declared.key_values();
    for (index, chunk) in rows.chunks(rows_per_shard).enumerate() {
        let name = shard_name(stem, index);
        if output.is_published(&name) {
            continue;
        }
        let bytes = encode_shard(chunk, &kv, &name)?;
        output.publish(&name, bytes, chunk.len() as u64).await?;
    }
    output.finish(declared.add_to_summary(summary)).await?;
    Ok(())
}

/// A document to pack.
#[derive(Clone, Debug, Default)]
pub struct PackDocument {
    /// Document id.
    pub id: String,
    /// Document text.
    pub text: String,
    /// Labels the document's segments (`segment_sources`).
    pub source: Option<String>,
}

/// Progress of a streamed packing: documents and text bytes tokenised so far.
pub type PackProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Rows per record batch (row-group piece) sent from the packing worker to the shard writer.
const BATCH_ROWS: usize = 512;

/// A piece of a shard on its way to the writer.
struct ShardPiece {
    shard: usize,
    /// Rows to append (none: only close the shard).
    batch: Option<arrow::array::RecordBatch>,
    /// The shard is complete after this piece.
    last: bool,
}

/// Chunks of documents being tokenised at once by [`pack_stream`].
const CHUNKS_IN_FLIGHT: usize = 4;

/// A chunk of documents and their token ids.
type Encoded = (Vec<PackDocument>, Result<Vec<Vec<u32>>>);

/// Packs a stream of document chunks for continual pretraining, in the order they arrive, into
/// `output`, with reading, tokenising and writing overlapped: the stream is read on the async side
/// while a worker tokenises the next chunks (up to [`CHUNKS_IN_FLIGHT`], each in parallel with rayon)
/// and packs them in order, and rows go to the
/// shard writer in batches that are encoded and uploaded row group by row group. Memory stays bounded
/// (a few chunks of documents, a few batches of rows) whatever the input size. Shards an earlier run
/// published are not written again (a rerun over the same ordered input produces the same bytes); a
/// finished output is reused as it is. If the stream fails, the shard in progress is abandoned (it
/// never becomes visible). Returns the statistics recorded in the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn pack_stream<S>(
    output: &mut OutputDir,
    tokenizer: Arc<TokenizerFile>,
    documents: S,
    settings: &PackSettings,
    seed: u64,
    config_hash: &str,
    progress: PackProgress,
) -> Result<PackStats>
where
    S: Stream<Item = Result<Vec<PackDocument>>> + Unpin + Send + 'static,
{
    if output.manifest().complete {
        return Ok(serde_json::from_value(output.manifest().summary.clone()).unwrap_or_default());
    }
    let eos_id = tokenizer.id_of(&settings.eos_token)?;
    let pad_id = tokenizer.id_of(&settings.pad_token)?;
    let mut declared = shard_metadata(
        settings.seq_len,
        pad_id,
        tokenizer.sha256(),
        seed,
        config_hash,
    );
    declared.max_token_id = declared.max_token_id.max(eos_id as i32);
    let kv = declared.key_values();
    let published: HashSet<String> = output
        .manifest()
        .shards
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let (seq_len, rows_per_shard) = (settings.seq_len, settings.rows_per_shard);
    let stem = settings.shard_stem.clone();
    let writer_stem = stem.clone();
    let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<Vec<PackDocument>>(2);
    let (piece_tx, mut piece_rx) = tokio::sync::mpsc::channel::<ShardPiece>(2);
    let aborted = Arc::new(AtomicBool::new(false));
    let worker_aborted = aborted.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<(PackStats, u32)> {
        let mut packer = CptPacker::new(eos_id, pad_id, seq_len);
        let mut max_id = 0u32;
        let mut pending: VecDeque<PackedRow> = VecDeque::new();
        // (shard index, rows already sent to it)
        let mut cursor = (0usize, 0usize);
        let (mut documents, mut bytes) = (0u64, 0u64);
        let (mut tokenising, mut waiting) = (0.0f64, 0.0f64);
        // Sends the next batch of at most `BATCH_ROWS` rows, never crossing a shard boundary.
        let send = |pending: &mut VecDeque<PackedRow>, cursor: &mut (usize, usize)| -> Result<()> {
            let (shard, in_shard) = cursor;
            let take = BATCH_ROWS
                .min(rows_per_shard - *in_shard)
                .min(pending.len());
            let rows: Vec<PackedRow> = pending.drain(..take).collect();
            *in_shard += take;
            let last = *in_shard == rows_per_shard;
            if !published.contains(&shard_name(&stem, *shard)) {
                let piece = ShardPiece {
                    shard: *shard,
                    batch: Some(packed::rows_to_batch(&rows)?),
                    last,
                };
                piece_tx
                    .blocking_send(piece)
                    .map_err(|_| Error::Stopped("the shard writer stopped".into()))?;
            }
            if last {
                *cursor = (*shard + 1, 0);
            }
            Ok(())
        };
        // Chunks are tokenised a few at a time (each in parallel over its documents), so that a
        // core that finishes its part of one chunk goes on with the next instead of waiting for
        // the chunk's longest document; they are packed in their order.
        let mut in_flight: VecDeque<std::sync::mpsc::Receiver<Encoded>> = VecDeque::new();
        let mut input_open = true;
        loop {
            while input_open && in_flight.len() < CHUNKS_IN_FLIGHT {
                let started = std::time::Instant::now();
                let Some(chunk) = chunk_rx.blocking_recv() else {
                    input_open = false;
                    break;
                };
                waiting += started.elapsed().as_secs_f64();
                let (done, result) = std::sync::mpsc::sync_channel(1);
                let tokenizer = tokenizer.clone();
                rayon::spawn(move || {
                    let encoded = chunk
                        .par_iter()
                        .map(|d| tokenizer.encode(&d.id, &d.text))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(Error::from);
                    let _ = done.send((chunk, encoded));
                });
                in_flight.push_back(result);
            }
            let Some(next) = in_flight.pop_front() else {
                break;
            };
            let started = std::time::Instant::now();
            let (chunk, encoded) = next
                .recv()
                .map_err(|_| Error::Stopped("a tokenising task failed".into()))?;
            let encoded = encoded?;
            tokenising += started.elapsed().as_secs_f64();
            for (document, ids) in chunk.iter().zip(&encoded) {
                max_id = max_id.max(ids.iter().copied().max().unwrap_or(0));
                packer.push(ids, document.source.as_deref());
                bytes += document.text.len() as u64;
            }
            documents += chunk.len() as u64;
            progress(documents, bytes);
            pending.extend(packer.take_rows());
            while pending.len() >= BATCH_ROWS.min(rows_per_shard - cursor.1) {
                send(&mut pending, &mut cursor)?;
            }
        }
        if worker_aborted.load(Ordering::SeqCst) {
            return Err(Error::Stopped("the input failed".into()));
        }
        let (last, stats) = packer.finish();
        let stats = (stats, max_id);
        pending.extend(last);
        while !pending.is_empty() {
            send(&mut pending, &mut cursor)?;
        }
        if cursor.1 > 0 && !published.contains(&shard_name(&stem, cursor.0)) {
            let close = ShardPiece {
                shard: cursor.0,
                batch: None,
                last: true,
            };
            piece_tx
                .blocking_send(close)
                .map_err(|_| Error::Stopped("the shard writer stopped".into()))?;
        }
        tracing::debug!(tokenising, waiting, "pack worker seconds");
        Ok(stats)
    });
    // The input is read on a task of its own: the shard writer below encodes row groups on its
    // task, and the tokeniser must not wait for that.
    let feed = tokio::spawn(async move {
        let chunk_tx = chunk_tx;
        let mut documents = documents;
        while let Some(chunk) = documents.next().await {
            match chunk {
                Ok(chunk) => {
                    if chunk_tx.send(chunk).await.is_err() {
                        break; // the worker failed; its error is reported
                    }
                }
                Err(e) => {
                    aborted.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(())
    });
    let write = async {
        let properties = parquet_io::packed_writer_properties(&kv).map_err(|source| {
            Error::Core(dapt_core::Error::Parquet {
                what: output.location().url(),
                source,
            })
        })?;
        let mut current: Option<(usize, ShardWriter)> = None;
        while let Some(piece) = piece_rx.recv().await {
            if piece.batch.is_some()
                && current
                    .as_ref()
                    .is_none_or(|(shard, _)| *shard != piece.shard)
            {
                let writer = ShardWriter::create_with(
                    output.location(),
                    &shard_name(&writer_stem, piece.shard),
                    packed_schema(),
                    properties.clone(),
                )?;
                current = Some((piece.shard, writer));
            }
            if let (Some((_, writer)), Some(batch)) = (current.as_mut(), &piece.batch) {
                writer.write(batch).await?;
            }
            if piece.last {
                if let Some((_, writer)) = current.take() {
                    let entry = writer.finish().await?;
                    output.record(entry, Vec::new()).await?;
                }
            }
        }
        Ok::<_, Error>(())
    };
    let written = write.await;
    feed.await.map_err(|source| Error::Task {
        what: "the input reader failed",
        source,
    })??;
    let (stats, max_id) = worker.await.map_err(|source| Error::Task {
        what: "the packing worker failed",
        source,
    })??;
    declared.max_token_id = declared.max_token_id.max(max_id as i32);
    written?;
    tracing::info!(
        documents = stats.documents,
        tokens = stats.tokens,
        rows = stats.rows,
        fill = stats.fill,
        "packed"
    );
    let summary = serde_json::to_value(&stats).map_err(json_error("the pack statistics"))?;
    output.finish(declared.add_to_summary(summary)).await?;
    Ok(stats)
}

/// Packs documents for continual pretraining into `output` (`sources`, one per document or none, label
/// the segments): documents are ordered by a hash of
/// (seed, id) — so the order never depends on how they arrived — tokenised in parallel, ended with
/// EOS, packed into rows of `settings.seq_len` and written as shards. A finished output is reused
/// as it is. Returns the packing statistics recorded in the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn pack_documents(
    output: &mut OutputDir,
    tokenizer: Arc<TokenizerFile>,
    ids: &[String],
    texts: &[String],
    sources: &[String],
    settings: &crate::PackSettings,
    seed: u64,
    config_hash: &str,
) -> Result<crate::PackStats> {
    let order = dapt_core::order::ordered(seed, crate::PACK_ORDER, 0, ids);
    let mut documents = order.iter().map(|&i| PackDocument {
        id: ids[i].clone(),
        text: texts[i].clone(),
        source: sources
            .get(i)
            .filter(|_| sources.len() == ids.len())
            .cloned(),
    });
    let mut chunks: Vec<Result<Vec<PackDocument>>> = Vec::new();
    loop {
        let chunk: Vec<PackDocument> = documents.by_ref().take(1024).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(Ok(chunk));
    }
    pack_stream(
        output,
        tokenizer,
        futures::stream::iter(chunks),
        settings,
        seed,
        config_hash,
        Arc::new(|_, _| {}),
    )
    .await
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
