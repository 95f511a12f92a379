//! dapt-ingest: reads shards that users did not write and normalises them. Its input is object-store
//! URLs (files, prefixes or globs) of JSON-lines shards, plain or compressed with gzip or zstd; its
//! output is a stream of Arrow record batches in the Document schema of `dapt-core`, and, through
//! [`ingest`], one Parquet shard per input file plus a manifest. Reading is streamed: an object is
//! decompressed and parsed as its bytes arrive, so memory does not grow with the size of a shard.

mod error;
mod jsonl;
mod run;

pub use error::{Error, Result};
pub use jsonl::{DocumentReader, Format};
pub use run::{ingest, IngestOptions, IngestSettings, IngestSummary};
