/// Errors of ingestion; each names the object and, where there is one, the line or row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// An object that cannot be read as a whole.
    #[error("{url}: {reason}")]
    Object {
        /// The URL or location concerned.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// One record that cannot be read.
    #[error("{url} line {line}: {reason}")]
    Record {
        /// The URL or location concerned.
        url: String,
        /// The 1-based line (JSON lines) or row (Parquet) number.
        line: u64,
        /// What is wrong.
        reason: String,
    },

    /// An invalid ingest setting.
    #[error("invalid ingest setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A reading task that panicked or was cancelled.
    #[error("ingest task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
