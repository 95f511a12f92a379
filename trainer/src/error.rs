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

    #[error("invalid setting {key}: {reason}")]
    Setting { key: String, reason: String },

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
