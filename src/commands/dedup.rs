//! `dapt dedup exact|near`: duplicates among the rows of a query, as a table to join against; and
//! `near-signatures|near-links|near-clusters`: the same near dedup as arrays of processes.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use dapt_ingest::Job;
use dapt_mixer::NearOptions;
use dapt_pipeline::dedup::{DedupSettings, NearJobRecord};
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
        #[command(flatten)]
        near: NearArgs,
    },
    /// Sharded near dedup, step 1 of 3 (a job array): this shard's MinHash signatures and its LSH
    /// band records, partitioned by bucket, under --work. The shard takes the rows whose key hashes
    /// to it; a finished shard is not redone.
    NearSignatures {
        #[command(flatten)]
        query: Query,
        #[command(flatten)]
        near: NearArgs,
        /// Work directory URL shared by the three steps (e.g. s3://bucket/dedup/work/).
        #[arg(long)]
        work: String,
        /// This job of the array: INDEX/COUNT (e.g. 0/8), or `env` (Slurm, a Kubernetes Indexed Job,
        /// AWS Batch or DAPT_SHARD_INDEX/DAPT_SHARD_COUNT).
        #[arg(long)]
        shard: String,
        /// Bucket partitions: the jobs of step 2.
        #[arg(long)]
        partitions: usize,
    },
    /// Sharded near dedup, step 2 of 3 (a job array): one partition of the LSH buckets, verified
    /// into links between documents. Needs every shard of step 1; a finished partition is not redone.
    NearLinks {
        /// Work directory URL of step 1.
        #[arg(long)]
        work: String,
        /// This job of the array: INDEX/COUNT with COUNT = step 1's --partitions, or `env`.
        #[arg(long)]
        partition: String,
        /// Sources file (TOML) whose [storage] options reach the work directory.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Sharded near dedup, step 3 of 3 (one job): the links joined into clusters, written as the
    /// table `dapt dedup near` writes for the same query and settings (the same bytes).
    NearClusters {
        /// Work directory URL of steps 1 and 2.
        #[arg(long)]
        work: String,
        /// Parquet file URL for the duplicates table (id, cluster_id, kept).
        #[arg(long)]
        out: String,
        /// Sources file (TOML) whose [storage] options reach the work directory and the output.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Query {
    /// Query whose rows are compared (read-only SQL), e.g. "SELECT id, text FROM docs".
    #[arg(short = 'e', long = "execute")]
    query: String,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Column with the stable key (unique); the smallest key of a cluster is kept.
    #[arg(long, default_value = "id")]
    key: String,
    /// Column with the text.
    #[arg(long, default_value = "text")]
    text: String,
    /// Run the query on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); the result is the same.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

#[derive(Args)]
struct Common {
    #[command(flatten)]
    query: Query,
    /// Parquet file URL for the duplicates table (id, cluster_id, kept).
    #[arg(long)]
    out: String,
}

#[derive(Args)]
struct NearArgs {
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
}

impl From<NearArgs> for NearOptions {
    fn from(n: NearArgs) -> Self {
        NearOptions {
            k: n.k,
            bands: n.bands,
            rows: n.rows,
            threshold: n.threshold,
            seed: n.seed,
        }
    }
}

fn sources(config: Option<&PathBuf>) -> anyhow::Result<SourcesOptions> {
    Ok(match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    })
}

fn settings(query: Query, near: Option<NearOptions>, out: String) -> anyhow::Result<DedupSettings> {
    let mut sources = sources(query.config.as_ref())?;
    sources.cluster = query.cluster;
    Ok(DedupSettings {
        sources,
        query: query.query,
        key: query.key,
        text: query.text,
        near,
        out,
    })
}

fn report(record: &NearJobRecord, work: &str) {
    let what = match record.stage.as_str() {
        "signatures" => format!("{} documents signed", record.items),
        _ => format!("{} band records, {} links", record.items, record.pairs),
    };
    let state = if record.reused { "up to date" } else { "done" };
    println!(
        "{} {}/{} {state}: {what}; work: {work}",
        record.stage, record.index, record.count
    );
}

pub fn run(args: DedupArgs) -> anyhow::Result<()> {
    let runtime = dapt_pipeline::runtime()?;
    let (settings, summary) = match args.mode {
        Mode::Exact(common) => {
            let settings = settings(common.query, None, common.out)?;
            let summary = runtime.block_on(dapt_pipeline::dedup::dedup(&settings))?;
            (settings.out, summary)
        }
        Mode::Near { common, near } => {
            let settings = settings(common.query, Some(near.into()), common.out)?;
            let summary = runtime.block_on(dapt_pipeline::dedup::dedup(&settings))?;
            (settings.out, summary)
        }
        Mode::NearSignatures {
            query,
            near,
            work,
            shard,
            partitions,
        } => {
            let settings = settings(query, Some(near.into()), String::new())?;
            let job = Job::parse(&shard)?;
            let record = runtime.block_on(dapt_pipeline::dedup::near_signatures(
                &settings, &work, job, partitions,
            ))?;
            report(&record, &work);
            return Ok(());
        }
        Mode::NearLinks {
            work,
            partition,
            config,
        } => {
            let storage = sources(config.as_ref())?.storage;
            let job = Job::parse(&partition)?;
            let record =
                runtime.block_on(dapt_pipeline::dedup::near_links(&work, &storage, job))?;
            report(&record, &work);
            return Ok(());
        }
        Mode::NearClusters { work, out, config } => {
            let storage = sources(config.as_ref())?.storage;
            let summary =
                runtime.block_on(dapt_pipeline::dedup::near_clusters(&work, &storage, &out))?;
            (out, summary)
        }
    };
    println!(
        "{} documents in {} clusters of duplicates ({} to drop); wrote {}",
        summary.documents,
        summary.clusters,
        summary.to_drop(),
        settings
    );
    Ok(())
}
