use std::path::PathBuf;

/// Errors of the shared layer; each names the URL, path, key or row it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URL or path that cannot name a store location.
    #[error("invalid location {url:?}: {reason}")]
    InvalidLocation {
        /// The URL or location concerned.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// The object store refused or failed a request.
    #[error("object store error at {url}: {source}")]
    ObjectStore {
        /// The URL or location concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },

    /// A local file could not be read or written.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A Parquet file could not be read or written.
    #[error("Parquet error in {what}: {source}")]
    Parquet {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow batch could not be built or converted.
    #[error("Arrow error in {what}: {source}")]
    Arrow {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A URL whose path the object store does not accept.
    #[error("invalid location {url:?}: {source}")]
    InvalidPath {
        /// The URL or location concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<object_store::path::Error>,
    },

    /// A manifest that is missing, inconsistent or made by other settings.
    #[error("manifest {url}: {reason}")]
    Manifest {
        /// The URL or location concerned.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// A JSON document that could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A packed row that breaks the Packed schema's rules.
    #[error("packed data violates the contract at row {row}: {reason}")]
    PackedContract {
        /// The row concerned (0-based).
        row: usize,
        /// What is wrong.
        reason: String,
    },

    /// Packed data that does not fit what reads it.
    #[error("packed data {url}: {reason}")]
    Packed {
        /// The URL or location concerned.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// A setting (an environment variable, an option) with a value that cannot be used.
    #[error("{name}: {reason}")]
    Setting {
        /// The setting's name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// Batches whose schema is not the expected one.
    #[error("schema mismatch in {what}: {reason}")]
    Schema {
        /// What was being read, written or built.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
