//! dapt-mixer: from selected documents to training mixtures. Its job so far is deduplication over SQL
//! results: exact (xxHash of normalised text) and near (MinHash + LSH, verified by estimated Jaccard,
//! union-find clusters). Its input is a stream of Arrow batches with a key column and a text column
//! (any query of `dapt-sql`); its output is a duplicates table — `id`, `cluster_id`, `kept` — for the
//! documents that have duplicates, which SQL joins against. Results depend only on the input rows
//! and the settings: never on their order, partitioning or the number of threads.

mod dedup;
mod error;

pub use dedup::{
    duplicates_schema, exact_duplicates, near_duplicates, normalise, Duplicate, NearOptions,
};
pub use error::{Error, Result};
