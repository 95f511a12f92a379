//! dapt-sql: the SQL layer. Its job is a DataFusion session in which sources (Parquet shards in the
//! Document schema, on any object store) are tables, and user SQL selects from them. Its input is
//! locations (or a sources TOML) and SQL; its output is Arrow record batches. Every session carries the
//! dapt function catalogue ([`register_functions`]). Mix SQL is read-only: only queries are
//! accepted; DDL, DML, COPY and session statements are refused with an error that says so.
#![warn(missing_docs)]

mod error;
pub mod functions;
mod jsonl_format;
pub mod rows;
mod session;
mod sources;
pub mod stores;

pub use error::{Error, Result};
pub use functions::register_functions;
pub use rows::string_rows;
pub use session::{load_models, SqlSession};
pub use sources::{SourceFormat, SourceOptions, SourcesOptions};
