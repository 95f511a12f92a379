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

    #[error("{}: invalid config", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("cannot hash the settings of {what}: {reason}")]
    Identity { what: String, reason: String },

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
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| setting(path.display().to_string(), e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

/// An invalid setting.
pub(crate) fn setting(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: key.into(),
        reason: reason.into(),
    }
}
