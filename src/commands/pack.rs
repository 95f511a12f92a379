//! `dapt pack`: tokenise documents and pack them into fixed-length training rows (Parquet).
use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dapt_core::{Location, OutputDir};
use dapt_packer::{PackOptions, PackSettings, TokenizerFile};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::RunSettings;

/// Arguments of `dapt pack`.
#[derive(Args)]
pub struct PackArgs {
    /// Query returning the documents (`id` and `text` columns), e.g. "SELECT id, text FROM mix".
    #[arg(
        short = 'e',
        long = "execute",
        conflicts_with = "input",
        required_unless_present = "input"
    )]
    query: Option<String>,
    /// Instead of a query: a Document Parquet directory (a `dapt ingest` output), packed whole.
    #[arg(long)]
    input: Option<String>,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The HF tokenizer.json to tokenise with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Encoder: auto (the fast backend where it gives HF's ids exactly, else HF), hf, or fast.
    #[arg(long, default_value = "auto")]
    encoder: dapt_packer::EncoderChoice,
    /// Tokens per row.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Token appended after each document.
    #[arg(long, default_value = "<|endoftext|>")]
    eos_token: String,
    /// Token filling the end of the last row (default: the EOS token).
    #[arg(long)]
    pad_token: Option<String>,
    /// Rows per Parquet shard.
    #[arg(long, default_value_t = 8192)]
    rows_per_shard: usize,
    /// Seed for the document order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (URL) for the packed shards and `_manifest.json`.
    #[arg(long)]
    out: String,
    /// cpt: documents, EOS-separated, split across rows; sft: chats (a `messages` column of JSON
    /// [{role, content}], or `prompt` and `response` columns), packed whole, loss on assistant turns.
    #[arg(long, value_enum, default_value = "cpt")]
    mode: Mode,
    /// SFT: a tokenizer_config.json with the chat template, or `chatml`; default: the
    /// tokenizer_config.json beside --tokenizer.
    #[arg(long)]
    chat_template: Option<String>,
    /// SFT: examples considered together by best-fit-decreasing packing.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// SFT: what to do with an example longer than a row.
    #[arg(long, value_enum, default_value = "drop")]
    overlong: OverlongArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Cpt,
    Sft,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OverlongArg {
    Drop,
    Truncate,
}

pub fn run(args: PackArgs) -> anyhow::Result<()> {
    let settings = PackSettings::try_from(PackOptions {
        seq_len: args.seq_len,
        heldout_fraction: 0.0,
        rows_per_shard: args.rows_per_shard,
        pad_token: args
            .pad_token
            .clone()
            .unwrap_or_else(|| args.eos_token.clone()),
        eos_token: args.eos_token.clone(),
    })?;
    let tokenizer = TokenizerFile::load_with(&args.tokenizer, args.encoder)?;
    let query = match (&args.query, &args.input) {
        (Some(query), _) => query.clone(),
        (None, Some(_)) => "SELECT id, text, source FROM documents".to_string(),
        (None, None) => unreachable!("clap requires one"),
    };
    let config = match &args.input {
        Some(input) => {
            // A one-source file for the input directory.
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("sources.toml");
            std::fs::write(
                &path,
                format!(
                    "[sources.documents]\nurl = {:?}\n",
                    format!("{}/", input.trim_end_matches('/'))
                ),
            )?;
            Some((dir, path))
        }
        None => None,
    };
    let config_path = config
        .as_ref()
        .map(|(_, p)| p.as_path())
        .or(args.config.as_deref());
    if args.mode == Mode::Sft {
        return run_sft(&args, &tokenizer, &settings, config_path, &query);
    }
    let hash = RunSettings::hash_of(&(&query, tokenizer.sha256(), &settings, args.seed));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tokenizer = Arc::new(tokenizer);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("    pack {spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = std::time::Instant::now();
    let progress_bar = bar.clone();
    let progress: dapt_packer::PackProgress = Arc::new(move |documents, bytes| {
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        progress_bar.set_message(format!(
            "{documents} documents, {:.1} MB, {:.2} MB/s",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / seconds
        ));
        progress_bar.tick();
    });
    let stats = runtime
        .block_on(async {
            let documents = ordered_documents(config_path, &query, args.seed).await?;
            let mut output = OutputDir::open(Location::parse(&args.out)?, "pack", &hash).await?;
            let stats = dapt_packer::pack_stream(
                &mut output,
                tokenizer.clone(),
                documents,
                &settings,
                args.seed,
                &hash,
                progress,
            )
            .await?;
            anyhow::Ok(stats)
        })
        .context("packing failed")?;
    bar.finish_and_clear();
    println!(
        "packed {} documents, {} tokens into {} rows of {} ({:.2}% filled) with the {} encoder in {:.1} s; peak RSS {} MB; wrote {}",
        stats.documents,
        stats.tokens,
        stats.rows,
        settings.seq_len,
        100.0 * stats.fill,
        tokenizer.encoder_name(),
        started.elapsed().as_secs_f64(),
        super::ingest::peak_rss_mb().map_or("?".into(), |m| m.to_string()),
        args.out
    );
    Ok(())
}

/// Hash buckets of the external sort in [`ordered_documents`].
const ORDER_BUCKETS: usize = 256;

/// One document of a bucket file: (hash, id, text, source).
type Keyed = (u64, String, String, Option<String>);

fn write_record(out: &mut impl std::io::Write, doc: &Keyed) -> std::io::Result<()> {
    out.write_all(&doc.0.to_le_bytes())?;
    for field in [Some(&doc.1), Some(&doc.2), doc.3.as_ref()] {
        match field {
            Some(value) => {
                out.write_all(&(value.len() as u64).to_le_bytes())?;
                out.write_all(value.as_bytes())?;
            }
            None => out.write_all(&u64::MAX.to_le_bytes())?,
        }
    }
    Ok(())
}

fn read_records(bytes: &[u8]) -> Option<Vec<Keyed>> {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let mut out = Vec::new();
    while let Some(hash) = take(8) {
        let hash = u64::from_le_bytes(hash.try_into().ok()?);
        let mut fields = Vec::with_capacity(3);
        for _ in 0..3 {
            let len = u64::from_le_bytes(take(8)?.try_into().ok()?);
            fields.push(if len == u64::MAX {
                None
            } else {
                Some(String::from_utf8(take(len as usize)?.to_vec()).ok()?)
            });
        }
        let source = fields.pop()?;
        let text = fields.pop()??;
        let id = fields.pop()??;
        out.push((hash, id, text, source));
    }
    Some(out)
}

/// The query's documents as a stream of chunks, in an order that is a function of (seed, id) only:
/// ascending `xxhash64(id, seed)`, then id. An external bucket sort with bounded memory: the query's
/// rows (in whatever order they arrive) go to 256 temporary files by the top byte of their hash, then
/// each file is read and sorted in turn, so memory holds one bucket (≈ 1/256 of the input) and the
/// temporary files hold the input's text once. Segments are labelled with the query's `component` or
/// `source` column, when it has one.
async fn ordered_documents(
    config: Option<&std::path::Path>,
    query: &str,
    seed: u64,
) -> anyhow::Result<
    impl futures::Stream<Item = dapt_packer::Result<Vec<dapt_packer::PackDocument>>> + Unpin,
> {
    use arrow::array::{Array, AsArray};
    use dapt_sql::{SourcesOptions, SqlSession};
    use futures::StreamExt;
    use std::io::Write;
    let sources = match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    let session = SqlSession::over_sources(&sources, None).await?;
    let order_seed = dapt_core::hash::sub_seed(seed, "pack-order", 0) & (i64::MAX as u64);
    let inner = query.trim().trim_end_matches(';');
    let mut stream = session
        .query(inner)
        .await
        .with_context(|| format!("the query must return `id` and `text` columns: {query}"))?;
    let schema = stream.schema();
    for column in ["id", "text"] {
        if schema.field_with_name(column).is_err() {
            anyhow::bail!("the query must return the columns `id`, `text`: {query}");
        }
    }
    let label = ["component", "source"]
        .into_iter()
        .find(|c| schema.field_with_name(c).is_ok());
    let strings = |batch: &arrow::record_batch::RecordBatch,
                   name: &str|
     -> anyhow::Result<arrow::array::ArrayRef> {
        let column = batch
            .column_by_name(name)
            .with_context(|| format!("column {name} vanished"))?;
        Ok(arrow::compute::cast(
            column,
            &arrow::datatypes::DataType::Utf8,
        )?)
    };
    let phase = std::time::Instant::now();
    let spill = tempfile::tempdir().context("cannot create a temporary directory for the sort")?;
    let mut buckets = (0..ORDER_BUCKETS)
        .map(|b| {
            let path = spill.path().join(format!("bucket-{b:03}"));
            std::fs::File::create(&path)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("cannot create {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    while let Some(batch) = stream.next().await {
        let batch = batch.with_context(|| format!("reading the query: {query}"))?;
        let ids = strings(&batch, "id")?;
        let texts = strings(&batch, "text")?;
        let labels = label.map(|l| strings(&batch, l)).transpose()?;
        let (ids, texts) = (ids.as_string::<i32>(), texts.as_string::<i32>());
        let labels = labels.as_ref().map(|l| l.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if !(ids.is_valid(i) && texts.is_valid(i)) {
                continue;
            }
            let id = ids.value(i);
            let hash = xxhash_rust::xxh64::xxh64(id.as_bytes(), order_seed);
            let doc: Keyed = (
                hash,
                id.to_string(),
                texts.value(i).to_string(),
                labels
                    .filter(|l| l.is_valid(i))
                    .map(|l| l.value(i).to_string()),
            );
            let bucket = (hash >> 56) as usize;
            write_record(&mut buckets[bucket], &doc)
                .context("cannot write the sort's temporary files")?;
        }
    }
    for bucket in &mut buckets {
        bucket
            .flush()
            .context("cannot write the sort's temporary files")?;
    }
    drop(buckets);
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "documents written to the sort's buckets"
    );
    // Buckets are read and sorted on a thread of their own, a few ahead of the tokeniser, so that
    // neither waits for the other nor for the shard writer.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<dapt_packer::Result<Vec<dapt_packer::PackDocument>>>(2);
    std::thread::Builder::new()
        .name("pack-sort".into())
        .spawn(move || {
            for b in 0..ORDER_BUCKETS {
                let chunk = sorted_bucket(spill.path(), b);
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    break;
                }
            }
        })
        .context("cannot start the sort's reader thread")?;
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })))
}

/// The documents of bucket `b` of the sort in `dir`, in order; the file is removed.
fn sorted_bucket(
    dir: &std::path::Path,
    b: usize,
) -> dapt_packer::Result<Vec<dapt_packer::PackDocument>> {
    let path = dir.join(format!("bucket-{b:03}"));
    let bytes = std::fs::read(&path)
        .map_err(|e| dapt_packer::Error::Stopped(format!("{}: {e}", path.display())))?;
    let _ = std::fs::remove_file(&path);
    let mut docs = read_records(&bytes).ok_or_else(|| {
        dapt_packer::Error::Stopped(format!("{}: a damaged sort file", path.display()))
    })?;
    docs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    Ok(docs
        .into_iter()
        .map(|(_, id, text, source)| dapt_packer::PackDocument { id, text, source })
        .collect())
}

/// Chats from the query: a `messages` column (JSON) or `prompt` and `response` columns.
fn chats(
    config: Option<&std::path::Path>,
    query: &str,
) -> anyhow::Result<Vec<(String, Vec<dapt_packer::Message>)>> {
    use dapt_packer::Message;
    let (layout, rows) = super::query_layout(
        config,
        query,
        &[&["id", "messages"], &["id", "prompt", "response"]],
    )?;
    rows.into_iter()
        .map(|row| {
            let messages = if layout == 0 {
                serde_json::from_str(&row[1]).with_context(|| {
                    format!(
                        "row {}: messages must be a JSON list of {{role, content}}",
                        row[0]
                    )
                })?
            } else {
                vec![
                    Message {
                        role: "user".into(),
                        content: row[1].clone(),
                    },
                    Message {
                        role: "assistant".into(),
                        content: row[2].clone(),
                    },
                ]
            };
            Ok((row[0].clone(), messages))
        })
        .collect()
}

fn run_sft(
    args: &PackArgs,
    tokenizer: &TokenizerFile,
    settings: &PackSettings,
    config: Option<&std::path::Path>,
    query: &str,
) -> anyhow::Result<()> {
    use dapt_packer::{ChatTemplate, Overlong, CHATML};
    let template = match args.chat_template.as_deref() {
        Some("chatml") => ChatTemplate::new(CHATML, "", &args.eos_token)?,
        Some(path) => ChatTemplate::from_tokenizer_config(std::path::Path::new(path))?,
        None => {
            let beside = args.tokenizer.with_file_name("tokenizer_config.json");
            ChatTemplate::from_tokenizer_config(&beside)
                .with_context(|| "give --chat-template PATH or --chat-template chatml")?
        }
    };
    let mut examples = chats(config, query)?;
    // The order is a function of (seed, id), never of how the rows arrived.
    let seed = dapt_core::hash::sub_seed(args.seed, "sft-order", 0);
    examples.sort_by(|a, b| {
        dapt_core::hash::unit_interval(seed, &a.0)
            .total_cmp(&dapt_core::hash::unit_interval(seed, &b.0))
            .then_with(|| a.0.cmp(&b.0))
    });
    use rayon::prelude::*;
    let tokenized: Vec<(Vec<u32>, Vec<bool>)> = examples
        .par_iter()
        .map(|(id, messages)| {
            template
                .tokenize(tokenizer, messages)
                .with_context(|| format!("example {id}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let overlong = match args.overlong {
        OverlongArg::Drop => Overlong::Drop,
        OverlongArg::Truncate => Overlong::Truncate,
    };
    let pad_id = tokenizer.id_of(&settings.pad_token)?;
    let (rows, stats) = dapt_packer::pack_sft(
        &tokenized,
        &[],
        pad_id,
        settings.seq_len,
        args.window,
        overlong,
    );
    let hash = RunSettings::hash_of(&(
        query,
        tokenizer.sha256(),
        settings,
        args.seed,
        "sft",
        args.window,
        &args.chat_template,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut output = OutputDir::open(Location::parse(&args.out)?, "pack-sft", &hash).await?;
        if !output.manifest().complete {
            dapt_packer::write_packed(
                &mut output,
                &rows,
                settings.rows_per_shard,
                settings.seq_len,
                pad_id,
                tokenizer.sha256(),
                args.seed,
                &hash,
                serde_json::to_value(&stats)?,
            )
            .await?;
        }
        anyhow::Ok(())
    })?;
    println!(
        "packed {} examples ({} target tokens of {}) into {} rows of {} ({:.2}% filled), {} dropped, {} truncated; wrote {}",
        stats.examples, stats.target_tokens, stats.tokens, stats.rows, settings.seq_len,
        100.0 * stats.fill, stats.dropped, stats.truncated, args.out
    );
    Ok(())
}
