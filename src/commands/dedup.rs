//! `dapt dedup exact|near`: duplicates among the rows of a query, as a table to join against.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use dapt_mixer::NearOptions;
use dapt_pipeline::dedup::DedupSettings;
use dapt_sql::SourcesOptions;

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
    let settings = DedupSettings {
        query: common.query,
        sources,
        key: common.key,
        text: common.text,
        near,
        out: common.out,
    };
    let summary = dapt_pipeline::runtime()?.block_on(dapt_pipeline::dedup::dedup(&settings))?;
    println!(
        "{} documents in {} clusters of duplicates ({} to drop); wrote {}",
        summary.documents,
        summary.clusters,
        summary.to_drop(),
        settings.out
    );
    Ok(())
}
