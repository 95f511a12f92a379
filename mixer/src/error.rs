/// An error of another layer (a query stream's, a string reason) kept whole as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of mixing and deduplication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet, schemas).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// An error of the SQL layer.
    #[error(transparent)]
    Sql(#[from] dapt_sql::Error),

    /// An input without a usable key or text column.
    #[error("the input has no usable column {column:?}: {reason}")]
    Column {
        /// The column's name.
        column: String,
        /// What is wrong.
        reason: String,
    },

    /// An invalid setting.
    #[error("invalid setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A spill file of the dedup or sort that cannot be written or read.
    #[error("spill file {path}: {source}")]
    Spill {
        /// The file or directory concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A tokenizer error.
    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    /// A query stream that failed while it was read.
    #[error("reading the input: {source}")]
    Input {
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A mix component whose query or rows cannot be used.
    #[error("component {component}: {source}")]
    Component {
        /// The mix component's name.
        component: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A column that cannot be read as text.
    #[error("the input's column {column:?} is not text: {source}")]
    ColumnType {
        /// The column's name.
        column: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A batch that cannot be built.
    #[error("{what}: {source}")]
    Arrow {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
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

    /// A TOML file that cannot be parsed.
    #[error("{}: {source}", path.display())]
    Toml {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
