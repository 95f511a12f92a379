/// Errors of tokenising and packing; each names the file, token, document or key concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("tokenizer {what}: {reason}")]
    Tokenizer { what: String, reason: String },

    #[error("cannot tokenise document {id:?}: {reason}")]
    Encode { id: String, reason: String },

    #[error("invalid pack setting {key}: {reason}")]
    Setting { key: String, reason: String },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
