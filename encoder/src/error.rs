/// Errors of loading tokenizers and encoding text; each names the tokenizer or document concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tokenizer that cannot be used as asked.
    #[error("tokenizer {what}: {reason}")]
    Tokenizer {
        /// What was being read, written or built.
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// A tokenizer file that cannot be read.
    #[error("tokenizer {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A tokenizer the `tokenizers` crate refuses or cannot run.
    #[error("tokenizer {what}: {source}")]
    Parse {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },

    /// A document that cannot be tokenised.
    #[error("cannot tokenise document {id:?}: {source}")]
    Encode {
        /// The document's or example's id.
        id: String,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
