/// Errors of tokenising and packing; each names the file, token, document or key concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet, schemas).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// A tokenizer or chat template that cannot be used as asked.
    #[error("tokenizer {what}: {reason}")]
    Tokenizer {
        /// What was being read, written or built.
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// A tokenizer error (loading, encoding).
    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    /// A tokenizer the `tokenizers` crate refuses, or training that failed.
    #[error("tokenizer {what}: {source}")]
    Tokenizers {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },

    /// A chat template that cannot be parsed or rendered.
    #[error("chat template {what}: {source}")]
    Template {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: minijinja::Error,
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

    /// A local file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Packing stopped because a part of it failed.
    #[error("packing stopped: {0}")]
    Stopped(String),

    /// A packing task that panicked or was cancelled.
    #[error("packing stopped: {what}: {source}")]
    Task {
        /// What was being read, written or built.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: tokio::task::JoinError,
    },

    /// An invalid setting.
    #[error("invalid pack setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A `tokenizers` error about `what` (training, a tokenizer being built).
pub(crate) fn tokenizers_error(what: &str) -> impl FnOnce(tokenizers::Error) -> Error + '_ {
    move |source| Error::Tokenizers {
        what: what.to_string(),
        source,
    }
}

/// A JSON error about `what`.
pub(crate) fn json_error(what: impl std::fmt::Display) -> impl FnOnce(serde_json::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Json { what, source }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
