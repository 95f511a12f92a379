/// Errors of loading tokenizers and encoding text; each names the tokenizer or document concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("tokenizer {what}: {reason}")]
    Tokenizer { what: String, reason: String },

    #[error("tokenizer {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("tokenizer {what}: {source}")]
    Parse {
        what: String,
        #[source]
        source: tokenizers::Error,
    },

    #[error("cannot tokenise document {id:?}: {source}")]
    Encode {
        id: String,
        #[source]
        source: tokenizers::Error,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
