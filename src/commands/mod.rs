//! One module per subcommand, and what several of them share.
pub mod classify;
pub mod dedup;
pub mod eval;
pub mod ingest;
pub mod mix;
pub mod model;
pub mod pack;
pub mod run;
pub mod sql;
pub mod sweep;
pub mod tokenizer;
pub mod train;

use std::path::Path;

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use dapt_sql::{SourcesOptions, SqlSession};

/// Runs a read-only query over the sources of `config` and returns the string values of `columns`
/// for every row (rows with a NULL in any of them are left out).
pub fn query_strings(
    config: Option<&Path>,
    query: &str,
    columns: &[&str],
) -> anyhow::Result<Vec<Vec<String>>> {
    Ok(query_layout(config, query, &[columns])?.1)
}

/// Runs a read-only query once and reads the first of `layouts` (alternative column lists) whose
/// columns its result has: returns that layout's index and, for every row without NULLs in them, the
/// string values of its columns.
pub fn query_layout(
    config: Option<&Path>,
    query: &str,
    layouts: &[&[&str]],
) -> anyhow::Result<(usize, Vec<Vec<String>>)> {
    let sources = match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let session = SqlSession::over_sources(&sources, None).await?;
        let stream = session.query(query).await?;
        let schema = stream.schema();
        let Some(layout) = layouts
            .iter()
            .position(|columns| columns.iter().all(|c| schema.field_with_name(c).is_ok()))
        else {
            let wanted: Vec<String> = layouts
                .iter()
                .map(|columns| {
                    columns
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            bail!(
                "the query must return the columns {}: {query}",
                wanted.join(" or ")
            );
        };
        let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await?;
        let mut rows = Vec::new();
        for batch in batches {
            let values = layouts[layout]
                .iter()
                .map(|name| {
                    let column = batch.column_by_name(name).context("column vanished")?;
                    Ok(arrow::compute::cast(column, &DataType::Utf8)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let strings: Vec<_> = values.iter().map(|v| v.as_string::<i32>()).collect();
            for i in 0..batch.num_rows() {
                if strings.iter().all(|s| s.is_valid(i)) {
                    rows.push(strings.iter().map(|s| s.value(i).to_string()).collect());
                }
            }
        }
        if rows.is_empty() {
            bail!("the query returned no rows: {query}");
        }
        Ok((layout, rows))
    })
}
