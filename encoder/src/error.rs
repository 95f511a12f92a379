/// Errors of loading tokenizers and encoding text; each names the tokenizer or document concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("tokenizer {what}: {reason}")]
    Tokenizer { what: String, reason: String },

    #[error("cannot tokenise document {id:?}: {reason}")]
    Encode { id: String, reason: String },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
