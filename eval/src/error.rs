/// Errors of evaluation; each names the file, task, row or request concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model error (loading, running).
    #[error(transparent)]
    Trainer(#[from] dapt_trainer::Error),

    /// A tokenizer error.
    #[error(transparent)]
    Tokenizer(#[from] dapt_encoder::Error),

    /// An evaluation with nothing to evaluate.
    #[error("nothing to evaluate: {what}")]
    Empty {
        /// What was being read, written or built.
        what: String,
    },

    /// A request to the server that cannot be served.
    #[error("request {index}: {reason}")]
    Request {
        /// The prompt's or request's index.
        index: usize,
        /// What is wrong.
        reason: String,
    },

    /// A task, text or results file that cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file or directory concerned.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// A local file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// JSON that cannot be read or written.
    #[error("{what}: {source}")]
    Json {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// The sandbox that runs generated code could not be set up or waited for.
    #[error("sandbox: {reason}")]
    Sandbox {
        /// What went wrong.
        reason: String,
    },

    /// An invalid setting.
    #[error("invalid setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
