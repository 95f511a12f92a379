/// Errors of the SQL layer; each names the table, URL or query concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet, schemas).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// A source that cannot be registered as a table.
    #[error("cannot register table {table:?} at {url}: {source}")]
    Register {
        /// The table's name.
        table: String,
        /// The URL or location concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: datafusion::error::DataFusionError,
    },

    /// A statement that would change data (mix SQL is read-only).
    #[error("query refused: mix SQL is read-only (only SELECT, WITH, EXPLAIN, DESCRIBE and SHOW run): {reason}")]
    NotReadOnly {
        /// What is wrong.
        reason: String,
    },

    /// A sources file or setting that cannot be used.
    #[error("{path}: {reason}")]
    Config {
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

    /// A TOML file that cannot be parsed.
    #[error("{}: {source}", path.display())]
    Toml {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: Box<toml::de::Error>,
    },

    /// A DataFusion setting that cannot be applied.
    #[error("{what}: {source}")]
    DataFusion {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: datafusion::error::DataFusionError,
    },

    /// A tokenizer named in the sources that cannot be loaded.
    #[error("tokenizer {name:?}: {source}")]
    Tokenizer {
        /// The name it was given.
        name: String,
        /// The underlying error.
        #[source]
        source: dapt_encoder::Error,
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

    /// A query whose result lacks the columns a command needs.
    #[error("{reason}\n  query: {query}")]
    Columns {
        /// The query.
        query: String,
        /// What is wrong.
        reason: String,
    },

    /// A query that fails to plan or run.
    #[error("query failed: {source}\n  query: {query}")]
    Query {
        /// The query.
        query: String,
        /// The underlying error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
