//! dapt-ingest: reads shards that users did not write and normalises them. Its input is object-store
//! URLs (objects, prefixes or globs on s3://, gs://, az://, http(s)://, file:// or local paths) of
//! JSON-lines shards (plain, gzip, zstd) and Parquet files with any column names (presets for FineWeb and
//! C4); its output is a stream of Arrow record batches in the Document schema of `dapt-core`, and,
//! through [`ingest`], one Parquet shard per input file plus a manifest. Reading is streamed —
//! objects are decompressed and parsed as their bytes arrive, Parquet row groups one at a time, output
//! shards uploaded row group by row group — so memory does not grow with input size. Bad records fail
//! the job with an error naming object and line, or, under the `skip` policy, are counted and listed
//! in the manifest.
#![warn(missing_docs)]

mod document;
mod error;
mod format;
mod jsonl;
mod parquet_source;
mod reader;
mod run;
mod settings;

pub use error::{Error, Result};
pub use format::Format;
pub use reader::{read_documents, DocumentReader};
pub use run::{ingest, IngestSummary, Job, Progress};
pub use settings::{ErrorPolicy, IngestOptions, IngestSettings, Preset};
