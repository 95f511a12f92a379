use std::path::PathBuf;

/// Errors of the recipes: a stage's own error (passed through whole, so each cause is printed once),
/// or a file or setting of the recipe, named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error(transparent)]
    Ingest(#[from] dapt_ingest::Error),

    #[error(transparent)]
    Sql(#[from] dapt_sql::Error),

    #[error(transparent)]
    Mixer(#[from] dapt_mixer::Error),

    #[error(transparent)]
    Packer(#[from] dapt_packer::Error),

    #[error(transparent)]
    Encoder(#[from] dapt_encoder::Error),

    #[cfg(feature = "torch")]
    #[error(transparent)]
    Trainer(#[from] dapt_trainer::Error),

    #[cfg(feature = "torch")]
    #[error(transparent)]
    Eval(#[from] dapt_eval::Error),

    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: invalid config", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("cannot hash the settings of {what}: {source}")]
    Identity {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{what}: {source}")]
    Invalid {
        what: String,
        #[source]
        source: Box<Error>,
    },

    #[error("{what}: {reason}")]
    Data { what: String, reason: String },

    #[error("example {id}")]
    Example {
        id: String,
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

/// Writes `value` as pretty JSON (and a final newline) to `path`.
#[cfg(feature = "torch")]
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
#[cfg(feature = "torch")]
pub(crate) fn invalid<E: Into<Error>>(what: impl std::fmt::Display) -> impl FnOnce(E) -> Error {
    let what = what.to_string();
    move |source| Error::Invalid {
        what,
        source: Box::new(source.into()),
    }
}
