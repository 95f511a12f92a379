//! `dapt dedup exact|near`: duplicates among the rows of a query, as a table to join against.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dapt_core::Location;
use dapt_mixer::{Duplicate, NearOptions};
use dapt_sql::{SourcesOptions, SqlSession};
use futures::StreamExt;

/// Arguments of `dapt dedup`.
#[derive(Args)]
pub struct DedupArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Documents whose normalised text (lower case, whitespace collapsed) is identical.
    Exact(Common),
    /// Near duplicates: MinHash over word shingles, LSH candidates, verified by estimated Jaccard.
    Near {
        #[command(flatten)]
        common: Common,
        /// Words per shingle.
        #[arg(long, default_value_t = NearOptions::default().k)]
        k: usize,
        /// LSH bands (bands × rows = signature length).
        #[arg(long, default_value_t = NearOptions::default().bands)]
        bands: usize,
        /// Signature values per band.
        #[arg(long, default_value_t = NearOptions::default().rows)]
        rows: usize,
        /// Estimated Jaccard similarity from which two documents are duplicates.
        #[arg(long, default_value_t = NearOptions::default().threshold)]
        threshold: f64,
        /// MinHash seed.
        #[arg(long, default_value_t = NearOptions::default().seed)]
        seed: u64,
    },
}

#[derive(Args)]
struct Common {
    /// Query whose rows are compared (read-only SQL), e.g. "SELECT id, text FROM docs".
    #[arg(short = 'e', long = "execute")]
    query: String,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Column with the stable key; the smallest key of a cluster is kept.
    #[arg(long, default_value = "id")]
    key: String,
    /// Column with the text.
    #[arg(long, default_value = "text")]
    text: String,
    /// Parquet file URL for the duplicates table (id, cluster_id, kept).
    #[arg(long)]
    out: String,
}

pub fn run(args: DedupArgs) -> anyhow::Result<()> {
    let (common, near) = match args.mode {
        Mode::Exact(common) => (common, None),
        Mode::Near {
            common,
            k,
            bands,
            rows,
            threshold,
            seed,
        } => (
            common,
            Some(NearOptions {
                k,
                bands,
                rows,
                threshold,
                seed,
            }),
        ),
    };
    let sources = match &common.config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    let Some((parent, name)) = common
        .out
        .trim_end_matches('/')
        .rsplit_once('/')
        .map(|(p, n)| (p.to_string(), n.to_string()))
    else {
        bail!(
            "--out {}: expected a file URL such as s3://bucket/dedup/duplicates.parquet",
            common.out
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let session = SqlSession::over_sources(&sources, None).await?;
        let stream = session.query(&common.query).await?;
        let input = stream.map(|batch| batch.map_err(|e| e.to_string()));
        let duplicates = match &near {
            None => dapt_mixer::exact_duplicates(input, &common.key, &common.text).await?,
            Some(options) => {
                dapt_mixer::near_duplicates(input, &common.key, &common.text, options).await?
            }
        };
        let clusters = duplicates.iter().filter(|d| d.kept).count();
        let batch = Duplicate::to_batch(&duplicates)?;
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("dapt.query".to_string(), common.query.clone());
        if let Some(options) = &near {
            metadata.insert(
                "dapt.near_options".to_string(),
                serde_json::to_string(options)?,
            );
        }
        let bytes =
            dapt_core::parquet_io::encode(batch.schema(), &[batch], &metadata, &common.out)?;
        Location::parse_with(&parent, &sources.storage)?
            .write(&name, bytes)
            .await?;
        println!(
            "{} documents in {clusters} clusters of duplicates ({} to drop); wrote {}",
            duplicates.len(),
            duplicates.len() - clusters,
            common.out
        );
        anyhow::Ok(())
    })
}
