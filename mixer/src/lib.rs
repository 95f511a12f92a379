//! dapt-mixer: from selected documents to training mixtures. A mix is a set of SQL components with
//! token-budget weights (TOML), in stages; the mixer counts each component's tokens, plans how much of
//! it each stage takes, samples deterministically (a function of seed, component and document id),
//! and writes the mix as Parquet shards with a `component` column plus `mix_report.json` (target vs
//! achieved shares, lang-swap attribution, QA grounding against earlier stages). It also deduplicates
//! SQL results: exact (xxHash of normalised text) and near (MinHash + LSH, verified by estimated Jaccard,
//! union-find clusters). Its input is a stream of Arrow batches with a key column and a text column
//! (any query of `dapt-sql`); its output is a duplicates table — `id`, `cluster_id`, `kept` — for the
//! documents that have duplicates, which SQL joins against. Results depend only on the input rows
//! and the settings: never on their order, partitioning or the number of threads.
#![warn(missing_docs)]

mod dedup;
mod error;
pub mod layout;
pub mod mix;
pub mod report;
pub mod run;

pub use dedup::{
    band_bucket, clusters_of_links, duplicates_schema, exact_duplicates, key_text_columns,
    link_bucket, near_duplicates, normalise, Duplicate, NearOptions,
};
pub use error::{Error, Result};
pub use mix::{Mix, MixOptions, Pipeline};
pub use run::{
    plan_pipeline, plan_pipeline_with, run_pipeline, run_pipeline_with, InventoryCache, MixReport,
};
