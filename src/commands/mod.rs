//! One module per data subcommand (the commands of both binaries), and what several of them share.
pub mod classify;
pub mod cluster;
pub mod dedup;
pub mod generate;
pub mod ingest;
pub mod mix;
pub mod pack;
pub mod sql;
pub mod status;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use dapt_sql::{SourcesOptions, SqlSession};

/// Runs a read-only query over the sources of `config` (on the Ballista cluster `cluster`, if given)
/// and returns the string values of `columns` for every row (rows with a NULL in any of them are left
/// out).
pub fn query_strings(
    config: Option<&Path>,
    query: &str,
    columns: &[&str],
    cluster: Option<&str>,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut sources = load_sources(config)?;
    sources.cluster = cluster.map(str::to_string);
    let rows = dapt_pipeline::runtime()?.block_on(async {
        let session = SqlSession::over_sources(&sources, None).await?;
        dapt_sql::string_rows(&session, query, &[columns]).await
    })?;
    Ok(rows.1)
}

/// The sources file at `config`, or none.
pub fn load_sources(config: Option<&Path>) -> anyhow::Result<SourcesOptions> {
    Ok(match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    })
}

/// `--storage-option KEY=VALUE` flags as object_store options.
pub fn storage_options(flags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    flags
        .iter()
        .map(|option| {
            let (key, value) = option
                .split_once('=')
                .with_context(|| format!("--storage-option {option:?} is not KEY=VALUE"))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}
