//! `dapt pack`: tokenise documents and pack them into fixed-length training rows (Parquet).
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dapt_core::{Location, OutputDir};
use dapt_packer::{PackOptions, PackSettings, TokenizerFile};

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
    let tokenizer = TokenizerFile::load(&args.tokenizer)?;
    let query = match (&args.query, &args.input) {
        (Some(query), _) => query.clone(),
        (None, Some(_)) => "SELECT id, text FROM documents".to_string(),
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
    let rows = super::query_strings(config_path, &query, &["id", "text"])?;
    let (ids, texts): (Vec<String>, Vec<String>) = rows
        .into_iter()
        .map(|mut r| {
            let text = r.pop().unwrap_or_default();
            (r.pop().unwrap_or_default(), text)
        })
        .unzip();
    let hash = RunSettings::hash_of(&(&query, tokenizer.sha256(), &settings, args.seed));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = runtime
        .block_on(async {
            let mut output = OutputDir::open(Location::parse(&args.out)?, "pack", &hash).await?;
            let stats = dapt_packer::pack_documents(
                &mut output,
                &tokenizer,
                &ids,
                &texts,
                &settings,
                args.seed,
                &hash,
            )
            .await?;
            anyhow::Ok(stats)
        })
        .context("packing failed")?;
    println!(
        "packed {} documents, {} tokens into {} rows of {} ({:.2}% filled); wrote {}",
        stats.documents,
        stats.tokens,
        stats.rows,
        settings.seq_len,
        100.0 * stats.fill,
        args.out
    );
    Ok(())
}
