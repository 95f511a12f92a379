use std::path::PathBuf;

/// Errors of the recipes: a stage's own error (passed through whole, so each cause is printed once),
/// or a file or setting of the recipe, named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet, schemas).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// An ingest error.
    #[error(transparent)]
    Ingest(#[from] dapt_ingest::Error),

    /// An SQL error.
    #[error(transparent)]
    Sql(#[from] dapt_sql::Error),

    /// A mixer error.
    #[error(transparent)]
    Mixer(#[from] dapt_mixer::Error),

    /// A packer error.
    #[error(transparent)]
    Packer(#[from] dapt_packer::Error),

    /// A tokenizer error.
    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    /// A local file that cannot be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
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

    /// A recipe config that cannot be parsed.
    #[error("{}: invalid config", path.display())]
    Config {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: toml::de::Error,
    },

    /// An invalid setting.
    #[error("invalid setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// Settings that cannot be hashed into an identity.
    #[error("cannot hash the settings of {what}: {source}")]
    Identity {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// Data that does not fit what the recipe needs.
    #[error("{what}: {reason}")]
    Data {
        /// What was being read, written or built.
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// An SFT example that cannot be rendered or tokenised.
    #[error("example {id}")]
    Example {
        /// The document's or example's id.
        id: String,
        /// The underlying error.
        #[source]
        source: dapt_packer::Error,
    },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error at `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// An invalid setting.
pub(crate) fn setting(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: key.into(),
        reason: reason.into(),
    }
}
