/// An error of another layer (a query stream's, a string reason) kept whole as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

    #[error("reading the input: {source}")]
    Input {
        #[source]
        source: BoxError,
    },

    #[error("component {component}: {source}")]
    Component {
        component: String,
        #[source]
        source: BoxError,
    },

    #[error("the input's column {column:?} is not text: {source}")]
    ColumnType {
        column: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("{what}: {source}")]
    Arrow {
        what: String,
        #[source]
        source: arrow::error::ArrowError,
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

    #[error("{}: {source}", path.display())]
    Toml {
        path: std::path::PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
