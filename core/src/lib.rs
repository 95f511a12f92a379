//! dapt-core: what every stage shares. Its job is to define the contracts that stages meet through —
//! the Arrow schemas of documents and packed training rows, object-store locations (s3://, gs://, az://,
//! http(s)://, file:// and plain paths), run seeds and content hashes, and atomic, self-describing
//! outputs (Parquet shards published whole plus a `_manifest.json`). Its input is URLs, batches and
//! bytes from the stages; its output is stores, validated batches and published files. It depends on
//! no other dapt crate.
#![warn(missing_docs)]

mod error;
pub mod hash;
pub mod lang;
mod lease;
pub mod location;
pub mod manifest;
pub mod order;
pub mod packed;
pub mod parquet_io;
pub mod schema;
pub mod script;
pub mod shard_writer;
pub mod status;

pub use error::{Error, Result};
pub use location::Location;
pub use manifest::{Manifest, OutputDir, ShardEntry, SkipRecord};
pub use packed::{PackedMetadata, PackedRow};
