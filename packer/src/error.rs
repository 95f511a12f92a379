/// Errors of tokenising and packing; each names the file, token, document or key concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("tokenizer {what}: {reason}")]
    Tokenizer { what: String, reason: String },

    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    #[error("tokenizer {what}: {source}")]
    Tokenizers {
        what: String,
        #[source]
        source: tokenizers::Error,
    },

    #[error("chat template {what}: {source}")]
    Template {
        what: String,
        #[source]
        source: minijinja::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("packing stopped: {0}")]
    Stopped(String),

    #[error("packing stopped: {what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    #[error("invalid pack setting {key}: {reason}")]
    Setting { key: String, reason: String },
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
