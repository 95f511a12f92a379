/// Errors of mixing and deduplication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error(transparent)]
    Sql(#[from] dapt_sql::Error),

    #[error("the input has no usable column {column:?}: {reason}")]
    Column { column: String, reason: String },

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("spill file {path}: {source}")]
    Spill {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    #[error("reading the input: {0}")]
    Input(String),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
