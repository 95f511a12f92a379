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

/// The query's documents as a stream of chunks, in an order that is a function of (seed, id) only
/// (the query is wrapped in an `ORDER BY` on a seeded hash of the id, which DataFusion sorts with
/// spilling). Segments are labelled with its `component` or `source` column, when it has one.
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
    let sources = match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    // The sort spills to temporary files beyond this, so memory does not grow with the input.
    let session = SqlSession::over_sources(&sources, Some(256 << 20)).await?;
    let order_seed = dapt_core::hash::sub_seed(seed, "pack-order", 0) & (i64::MAX as u64);
    let inner = query.trim().trim_end_matches(';');
    let ordered = format!(
        "SELECT * FROM ({inner}) AS dapt_input \
         ORDER BY xxhash64(CAST(id AS VARCHAR), {order_seed}), CAST(id AS VARCHAR)"
    );
    let stream = session
        .query(&ordered)
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
    let strings = move |batch: &arrow::record_batch::RecordBatch,
                        name: &str|
          -> dapt_packer::Result<arrow::array::ArrayRef> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| dapt_packer::Error::Stopped(format!("column {name} vanished")))?;
        arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| dapt_packer::Error::Stopped(format!("column {name}: {e}")))
    };
    Ok(stream.map(move |batch| {
        let batch =
            batch.map_err(|e| dapt_packer::Error::Stopped(format!("reading the query: {e}")))?;
        let ids = strings(&batch, "id")?;
        let texts = strings(&batch, "text")?;
        let labels = label.map(|l| strings(&batch, l)).transpose()?;
        let (ids, texts) = (ids.as_string::<i32>(), texts.as_string::<i32>());
        let labels = labels.as_ref().map(|l| l.as_string::<i32>());
        Ok((0..batch.num_rows())
            .filter(|&i| ids.is_valid(i) && texts.is_valid(i))
            .map(|i| dapt_packer::PackDocument {
                id: ids.value(i).to_string(),
                text: texts.value(i).to_string(),
                source: labels
                    .filter(|l| l.is_valid(i))
                    .map(|l| l.value(i).to_string()),
            })
            .collect())
    }))
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
