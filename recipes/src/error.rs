use std::path::PathBuf;

/// Errors of the recipes: a stage's own error (passed through whole, so each cause is printed once),
/// or a file or setting of the recipe, named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of a data job (ingest, SQL, mixing, packing, tokenizers, identities); boxed, as it
    /// carries every stage's error.
    #[error(transparent)]
    Pipeline(Box<dapt_pipeline::Error>),

    /// A training error.
    #[error(transparent)]
    Trainer(#[from] dapt_trainer::Error),

    /// An evaluation error.
    #[error(transparent)]
    Eval(#[from] dapt_eval::Error),

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

    /// An error in the context of a setting or stage.
    #[error("{what}: {source}")]
    Invalid {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },

    /// Data that does not fit what the recipe needs.
    #[error("{what}: {reason}")]
    Data {
        /// What was being read, written or built.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// The stages' errors, through the data jobs' error (which carries each whole).
macro_rules! via_pipeline {
    ($($error:ty),*) => {$(
        impl From<$error> for Error {
            fn from(error: $error) -> Self {
                Self::Pipeline(Box::new(error.into()))
            }
        }
    )*};
}
via_pipeline!(
    dapt_pipeline::Error,
    dapt_core::Error,
    dapt_ingest::Error,
    dapt_sql::Error,
    dapt_mixer::Error,
    dapt_packer::Error,
    dapt_encoder::Error
);

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error at `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Writes `value` as pretty JSON (and a final newline) to `path`.
pub(crate) fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

/// An invalid setting.
pub(crate) fn setting(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `error` in the context of `what` (a setting key, a stage).
pub(crate) fn invalid<E: Into<Error>>(what: impl std::fmt::Display) -> impl FnOnce(E) -> Error {
    let what = what.to_string();
    move |source| Error::Invalid {
        what,
        source: Box::new(source.into()),
    }
}
