use std::path::PathBuf;

/// Errors of the shared layer; each names the URL, path, key or row it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid location {url:?}: {reason}")]
    InvalidLocation { url: String, reason: String },

    #[error("object store error at {url}: {source}")]
    ObjectStore {
        url: String,
        #[source]
        source: object_store::Error,
    },

    #[error("I/O error at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Parquet error in {what}: {source}")]
    Parquet {
        what: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("Arrow error in {what}: {source}")]
    Arrow {
        what: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("invalid location {url:?}: {source}")]
    InvalidPath {
        url: String,
        #[source]
        source: Box<object_store::path::Error>,
    },

    #[error("manifest {url}: {reason}")]
    Manifest { url: String, reason: String },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("packed data violates the contract at row {row}: {reason}")]
    PackedContract { row: usize, reason: String },

    #[error("packed data {url}: {reason}")]
    Packed { url: String, reason: String },

    #[error("schema mismatch in {what}: {reason}")]
    Schema { what: String, reason: String },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
