/// Errors of ingestion; each names the object and, where there is one, the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("{url}: cannot read: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{url} line {line}: {reason}")]
    Record {
        url: String,
        line: u64,
        reason: String,
    },

    #[error("{url}: unsupported format: {reason}")]
    Format { url: String, reason: String },

    #[error("invalid ingest setting {key}: {reason}")]
    Setting { key: String, reason: String },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
