//! `dapt ingest`: read shards from object storage into normalised Document Parquet.
use std::time::Instant;

use clap::Args;
use dapt_core::Location;
use dapt_ingest::{ErrorPolicy, IngestOptions, IngestSettings, Job, Preset};

/// Arguments of `dapt ingest`.
#[derive(Args)]
pub struct IngestArgs {
    /// Input URLs: objects, prefixes or globs (s3://bucket/c4/en/*.json.gz, gs://…, az://…, https://…,
    /// file://…, local paths). S3 settings come from AWS_* environment variables (AWS_ENDPOINT_URL for
    /// S3-compatible servers).
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output URL (a directory or prefix) for Parquet shards and `_manifest.json`.
    #[arg(long)]
    out: String,
    /// Force a format (jsonl, jsonl.gz, jsonl.zst, parquet); default: by file name.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Column layout of a known dataset.
    #[arg(long, value_enum)]
    preset: Option<PresetArg>,
    /// Field holding the text (default `text`).
    #[arg(long)]
    text_field: Option<String>,
    /// Field holding the id (default `id`; missing ids become content ids). Pass "" for none.
    #[arg(long)]
    id_field: Option<String>,
    /// Field holding the source name (default `source`; else the file name).
    #[arg(long)]
    source_field: Option<String>,
    /// Field holding the document URL (default `url`).
    #[arg(long)]
    url_field: Option<String>,
    /// What to do with unreadable records: fail (stop, naming object and line) or skip (count, list
    /// them in the manifest, go on).
    #[arg(long, value_enum, default_value = "fail")]
    on_error: PolicyArg,
    /// Process only job INDEX of COUNT (e.g. 3/8): a deterministic subset of the input files, so COUNT
    /// jobs cover the inputs exactly once; their manifests merge into one.
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<String>,
    /// Files read at once (default: the number of cores).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Replace the output already in --out (of other inputs or settings, finished or not) instead of
    /// refusing or resuming it: its manifest goes first, then its shards, so readers never see a mix.
    /// Not with --shard.
    #[arg(long)]
    overwrite: bool,
    /// Object-store setting KEY=VALUE for inputs and output, over the environment (object_store keys:
    /// aws_endpoint, aws_region, timeout, connect_timeout, …); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    storage_options: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PresetArg {
    Fineweb,
    C4,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Fail,
    Skip,
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    let storage = super::storage_options(&args.storage_options)?;
    let settings = IngestSettings::try_from(IngestOptions {
        inputs: args.inputs,
        format: Some(args.format),
        preset: args.preset.map(|p| match p {
            PresetArg::Fineweb => Preset::Fineweb,
            PresetArg::C4 => Preset::C4,
        }),
        text_field: args.text_field,
        id_field: args.id_field,
        source_field: args.source_field,
        url_field: args.url_field,
        on_error: match args.on_error {
            PolicyArg::Fail => ErrorPolicy::Fail,
            PolicyArg::Skip => ErrorPolicy::Skip,
        },
        concurrency: args.concurrency,
        storage: storage.clone(),
        overwrite: args.overwrite,
        ..IngestOptions::default()
    })?;
    let job = match &args.shard {
        Some(text) => Job::parse(text)?,
        None => Job::ALL,
    };
    let out = Location::parse_with(&args.out, &storage)?;
    let runtime = dapt_pipeline::runtime()?;
    let started = Instant::now();
    let summary = dapt_pipeline::ingest::run_ingest(&runtime, &settings, out, job)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "ingested {} of {} files: {} documents, {:.1} MB in {:.1} s ({:.1} MB/s, {:.0} docs/s), {} skipped; {} documents in the output; peak RSS {} MB{}",
        summary.files_read,
        summary.files,
        summary.documents,
        summary.bytes as f64 / 1e6,
        seconds,
        summary.bytes as f64 / 1e6 / seconds,
        summary.documents as f64 / seconds,
        summary.skipped,
        summary.total_documents,
        dapt_pipeline::peak_rss_mb().map_or("?".into(), |m| m.to_string()),
        if summary.merged { "; merged the manifests of all jobs" } else { "" },
    );
    Ok(())
}
