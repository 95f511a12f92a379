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

    #[error("packing stopped: {0}")]
    Stopped(String),

    #[error("invalid pack setting {key}: {reason}")]
    Setting { key: String, reason: String },
}

impl From<dapt_encoder::Error> for Error {
    fn from(e: dapt_encoder::Error) -> Self {
        match e {
            dapt_encoder::Error::Encode { id, reason } => Error::Encode { id, reason },
            dapt_encoder::Error::Tokenizer { what, reason } => Error::Tokenizer { what, reason },
            other => Error::Tokenizer {
                what: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
