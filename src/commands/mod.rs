//! One module per subcommand, and what several of them share.
pub mod classify;
pub mod dedup;
pub mod ingest;
pub mod pack;
pub mod run;
pub mod sql;
pub mod tokenizer;

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
    let sources = match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let session = SqlSession::new();
        session.register_sources(&sources).await?;
        let mut rows = Vec::new();
        for batch in session.query_collect(query).await? {
            let mut values = Vec::new();
            for name in columns {
                let column = batch
                    .column_by_name(name)
                    .with_context(|| format!("the query must return a `{name}` column: {query}"))?;
                values.push(arrow::compute::cast(column, &DataType::Utf8)?);
            }
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
        Ok(rows)
    })
}
