//! Reading one shard as Document batches, whatever its format, under the configured error policy.
use std::sync::Arc;

use arrow::array::RecordBatch;
use dapt_core::{Location, SkipRecord};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;

use crate::document::ReadContext;
use crate::jsonl::JsonlSource;
use crate::parquet_source::ParquetSource;
use crate::settings::IngestSettings;
use crate::{Format, Result};

enum Source {
    Jsonl(JsonlSource),
    Parquet(ParquetSource),
}

/// Reads one shard as Document batches. Creating it does no I/O; the object is opened on the first
/// call to [`DocumentReader::next_batch`].
pub struct DocumentReader {
    context: ReadContext,
    source: Source,
}

impl DocumentReader {
    /// A reader of the object at `path` (of `size` bytes) below `location`.
    pub fn new(
        location: Location,
        path: Path,
        size: u64,
        format: Format,
        settings: Arc<IngestSettings>,
    ) -> Self {
        let file_name = path.filename().unwrap_or_default();
        let default_source = file_name.split('.').next().unwrap_or(file_name).to_string();
        let context = ReadContext {
            url: location.url_of(&path),
            settings,
            default_source,
            skipped: Vec::new(),
        };
        let source = match format {
            Format::Parquet => Source::Parquet(ParquetSource::new(location, path, size)),
            jsonl => Source::Jsonl(JsonlSource::new(location, path, jsonl)),
        };
        Self { context, source }
    }

    /// The object's URL.
    pub fn url(&self) -> &str {
        &self.context.url
    }

    /// The next batch of at most `batch_size` documents, or `None` at the end of the shard.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match &mut self.source {
            Source::Jsonl(source) => source.next_batch(&mut self.context).await,
            Source::Parquet(source) => source.next_batch(&mut self.context).await,
        }
    }

    /// Records skipped so far (under the `skip` policy), in the order met.
    pub fn take_skipped(&mut self) -> Vec<SkipRecord> {
        std::mem::take(&mut self.context.skipped)
    }
}

/// The documents of one shard as a stream of batches (no I/O until polled).
pub fn read_documents(reader: DocumentReader) -> BoxStream<'static, Result<RecordBatch>> {
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next_batch().await {
            Ok(Some(batch)) => Some((Ok(batch), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}
