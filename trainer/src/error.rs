use std::path::PathBuf;

/// Errors of model loading, saving and training; each names the file or key concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet, schemas).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// A model, config or checkpoint file that cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file or directory concerned.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// A LibTorch operation that failed.
    #[error("torch error in {what}: {source}")]
    Torch {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: tch::TchError,
    },

    /// A local file that cannot be read or written.
    #[error("{}: {source}", path.display())]
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

    /// A TOML file that cannot be parsed.
    #[error("{}: {source}", path.display())]
    Toml {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<toml::de::Error>,
    },

    /// An invalid setting.
    #[error("invalid setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// An error in the context of a file or key.
    #[error("{what}: {source}")]
    Invalid {
        /// What was being read, written or built.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },

    /// Training data that failed at a known step and position.
    #[error("training data at step {step} (next row: epoch {}, shard {}, row {})", cursor.epoch, cursor.shard, cursor.row)]
    Data {
        /// The optimiser step (0-based).
        step: usize,
        /// Where the data reader was.
        cursor: crate::DataCursor,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },

    /// A collective of data-parallel training that failed (a lost rank, the timeout, a bad setup).
    #[error("distributed training (rank {rank} of {world}): {what}: {message}")]
    Distributed {
        /// This process's rank.
        rank: usize,
        /// Ranks in the group.
        world: usize,
        /// The collective or setup step.
        what: String,
        /// LibTorch's message.
        message: String,
    },

    /// A loss that is no longer a finite number.
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged {
        /// The optimiser step (0-based).
        step: usize,
        /// The loss value.
        loss: f64,
    },
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
