//! `dapt sql`: explore sources with SQL; print or write the result.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use dapt_core::shard_writer::ShardWriter;
use dapt_core::Location;
use dapt_sql::{SourcesOptions, SqlSession};
use futures::StreamExt;

/// Arguments of `dapt sql`.
#[derive(Args)]
pub struct SqlArgs {
    /// SQL to run: read-only queries (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW) and CREATE EXTERNAL TABLE;
    /// `;` separates statements, the last query's result is the output.
    #[arg(
        short = 'e',
        long = "execute",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    execute: Option<String>,
    /// File with the SQL to run.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Sources file (TOML): `[sources.NAME] url = "s3://…", format = "parquet"|"jsonl",
    /// [sources.NAME.columns] text = "content"`, and `[storage]` object-store settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the result to this URL (local path, s3://, …) instead of stdout.
    #[arg(long)]
    out: Option<String>,
    /// Output format (default: table on stdout, else from --out's extension).
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// Run the query on an Apache DataFusion Ballista cluster (`dapt cluster scheduler|executor`):
    /// df://HOST:PORT of its scheduler. Tables must be on storage the executors reach (s3://…), and
    /// the executors need this --config for token_count and classify.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Csv,
    Jsonl,
    Parquet,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => bail!("give the SQL with -e or -f"),
    };
    let mut sources = match &args.config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    sources.cluster = args.cluster.clone();
    let format = match (args.format, &args.out) {
        (Some(format), _) => format,
        (None, None) => OutputFormat::Table,
        (None, Some(out)) => {
            if out.ends_with(".parquet") {
                OutputFormat::Parquet
            } else if out.ends_with(".csv") {
                OutputFormat::Csv
            } else if out.ends_with(".jsonl") || out.ends_with(".json") {
                OutputFormat::Jsonl
            } else {
                bail!("--out {out}: give --format (table, csv, jsonl, parquet) or a file extension")
            }
        }
    };
    if format == OutputFormat::Parquet && args.out.is_none() {
        bail!("--format parquet needs --out");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let session = SqlSession::over_sources(&sources, None).await?;
        let Some(mut stream) = session.run_script(&script, &sources.storage).await? else {
            return Ok(());
        };
        let schema = stream.schema();
        let mut rows = 0usize;
        match (&args.out, format) {
            (Some(out), OutputFormat::Parquet) => {
                let (parent, name) = split_file_url(out)?;
                let location = Location::parse_with(&parent, &sources.storage)?;
                let mut metadata = std::collections::BTreeMap::new();
                metadata.insert("dapt.query".to_string(), script.clone());
                let mut writer = ShardWriter::create(&location, &name, schema, &metadata)?;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    rows += batch.num_rows();
                    writer.write(&batch).await?;
                }
                writer.finish().await?;
            }
            (out, format) => {
                // CSV and JSON lines go out batch by batch; a table needs every row first.
                let mut buffer = Vec::new();
                let mut batches = Vec::new();
                let mut first = true;
                while let Some(batch) = stream.next().await {
                    let batch: RecordBatch = batch?;
                    rows += batch.num_rows();
                    match format {
                        OutputFormat::Csv => arrow::csv::WriterBuilder::new()
                            .with_header(first)
                            .build(&mut buffer)
                            .write(&batch)?,
                        OutputFormat::Jsonl => {
                            let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                            writer.write(&batch)?;
                            writer.finish()?;
                        }
                        _ => batches.push(batch),
                    }
                    first = false;
                    if out.is_none() {
                        std::io::stdout().write_all(&buffer)?;
                        buffer.clear();
                    }
                }
                if format == OutputFormat::Table {
                    let table = arrow::util::pretty::pretty_format_batches(&batches)?;
                    buffer.extend(format!("{table}\n").bytes());
                }
                match out {
                    None => std::io::stdout().write_all(&buffer)?,
                    Some(out) => {
                        let (parent, name) = split_file_url(out)?;
                        let location = Location::parse_with(&parent, &sources.storage)?;
                        location.write(&name, buffer.into()).await?;
                    }
                }
            }
        }
        tracing::info!(rows, "query done");
        if let Some(out) = &args.out {
            eprintln!("wrote {rows} rows to {out}");
        }
        anyhow::Ok(())
    })
}

/// `s3://b/dir/x.parquet` → (`s3://b/dir`, `x.parquet`).
fn split_file_url(url: &str) -> anyhow::Result<(String, String)> {
    let url = url.trim_end_matches('/');
    match url.rsplit_once('/') {
        Some((parent, name))
            if !name.is_empty() && !parent.ends_with(':') && !parent.ends_with(":/") =>
        {
            Ok((parent.to_string(), name.to_string()))
        }
        _ if !url.contains('/') => Ok((".".to_string(), url.to_string())),
        _ => bail!("--out {url}: expected a file URL such as s3://bucket/dir/result.parquet"),
    }
}
