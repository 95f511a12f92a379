/// Errors of ingestion; each names the object and, where there is one, the line or row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the shared layer (locations, manifests, Parquet).
    #[error(transparent)]
    Core(#[from] dapt_core::Error),

    /// An object that cannot be read as a whole.
    #[error("{url}: {reason}")]
    Object {
        /// The URL or location concerned.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// One record that cannot be read.
    #[error("{url} line {line}: {reason}")]
    Record {
        /// The URL or location concerned.
        url: String,
        /// The 1-based line (JSON lines) or row (Parquet) number.
        line: u64,
        /// What is wrong.
        reason: String,
    },

    /// The store failed (network, permission, server error) while an object was read: never a
    /// skipped record, so that a rerun reads the object again.
    #[error("{url}: the store failed ({source}); nothing of this object is recorded as skipped, rerun when the store is reachable")]
    Storage {
        /// The URL or location concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An invalid ingest setting.
    #[error("invalid ingest setting {key}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A reading task that panicked or was cancelled.
    #[error("ingest task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The object-store failure behind `error`, if its chain holds one that is not "not found" (an object
/// that is gone is the data's problem; a store that cannot be reached is an outage).
pub(crate) fn storage_failure<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a object_store::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(store) = e.downcast_ref::<object_store::Error>() {
            return (!matches!(store, object_store::Error::NotFound { .. })).then_some(store);
        }
        current = e.source();
    }
    None
}
