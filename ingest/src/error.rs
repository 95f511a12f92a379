/// Errors of ingestion; each names the object and, where there is one, the line or row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("{url}: {reason}")]
    Object { url: String, reason: String },

    #[error("{url} line {line}: {reason}")]
    Record {
        url: String,
        line: u64,
        reason: String,
    },

    #[error("invalid ingest setting {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("ingest task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
