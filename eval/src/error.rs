/// Errors of evaluation; each names the file, task, row or request concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Trainer(#[from] dapt_trainer::Error),

    #[error(transparent)]
    Tokenizer(#[from] dapt_encoder::Error),

    #[error("nothing to evaluate: {what}")]
    Empty { what: String },

    #[error("request {index}: {reason}")]
    Request { index: usize, reason: String },

    #[error("{path}: {reason}")]
    File { path: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
