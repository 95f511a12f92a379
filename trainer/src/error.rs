use std::path::PathBuf;

/// Errors of model loading, saving and training; each names the file or key concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    #[error("{path}: {reason}")]
    File { path: String, reason: String },

    #[error("torch error in {what}: {source}")]
    Torch {
        what: String,
        #[source]
        source: tch::TchError,
    },

    #[error("{}: {source}", path.display())]
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

    #[error("{}: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },

    #[error("{what}: {source}")]
    Invalid {
        what: String,
        #[source]
        source: Box<Error>,
    },

    #[error("training data at step {step} (next row: epoch {}, shard {}, row {})", cursor.epoch, cursor.shard, cursor.row)]
    Data {
        step: usize,
        cursor: crate::DataCursor,
        #[source]
        source: Box<Error>,
    },

    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f64 },
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error at `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// A JSON error about `what` (a file, URL or setting).
pub(crate) fn json_error(what: impl std::fmt::Display) -> impl FnOnce(serde_json::Error) -> Error {
    let what = what.to_string();
    move |source| Error::Json { what, source }
}

/// `error` in the context of `what` (a file or key).
pub(crate) fn invalid(what: impl std::fmt::Display) -> impl FnOnce(Error) -> Error {
    let what = what.to_string();
    move |source| Error::Invalid {
        what,
        source: Box::new(source),
    }
}
