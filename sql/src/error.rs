/// Errors of the SQL layer; each names the table, URL or query concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("cannot register table {table:?} at {url}: {source}")]
    Register {
        table: String,
        url: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    #[error("query refused: mix SQL is read-only (only SELECT, WITH, EXPLAIN, DESCRIBE and SHOW run): {reason}")]
    NotReadOnly { reason: String },

    #[error("{path}: {reason}")]
    Config { path: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {source}", path.display())]
    Toml {
        path: std::path::PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },

    #[error("{what}: {source}")]
    DataFusion {
        what: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    #[error("tokenizer {name:?}: {source}")]
    Tokenizer {
        name: String,
        #[source]
        source: dapt_encoder::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{reason}\n  query: {query}")]
    Columns { query: String, reason: String },

    #[error("query failed: {source}\n  query: {query}")]
    Query {
        query: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
