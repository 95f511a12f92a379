//! Parquet shards with any column names, streamed one row group at a time.
// parquet 59 deprecates `ParquetObjectReader` in favour of hand-written `AsyncFileReader`s; it is still
// the reader that matches our pinned object_store, so it stays until the pin moves.
#![allow(deprecated)]
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use dapt_core::Location;
use futures::StreamExt;
use object_store::path::Path;
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStream};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;

use crate::document::{DocumentBuilder, RawDocument, ReadContext};
use crate::error::storage_failure;
use crate::{Error, Result};

/// A Parquet error that is the store's failure (not the file's) ends the run, whatever the policy;
/// any other is returned for the policy to judge.
fn outage(context: &ReadContext, error: ParquetError) -> Result<ParquetError> {
    if storage_failure(&error).is_some() {
        return Err(Error::Storage {
            url: context.url.clone(),
            source: Box::new(error),
        });
    }
    Ok(error)
}

pub(crate) struct ParquetSource {
    location: Location,
    path: Path,
    size: u64,
    stream: Option<ParquetRecordBatchStream<ParquetObjectReader>>,
    rows_read: u64,
    done: bool,
}

impl ParquetSource {
    pub fn new(location: Location, path: Path, size: u64) -> Self {
        Self {
            location,
            path,
            size,
            stream: None,
            rows_read: 0,
            done: false,
        }
    }

    async fn open(
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        path: Path,
        size: u64,
        batch_size: usize,
    ) -> std::result::Result<ParquetRecordBatchStream<ParquetObjectReader>, ParquetError> {
        let reader = ParquetObjectReader::new(store, path).with_file_size(size);
        ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .with_batch_size(batch_size)
            .build()
    }

    pub async fn next_batch(&mut self, context: &mut ReadContext) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        if self.stream.is_none() {
            let store = self.location.store().clone();
            let opened = Self::open(
                store,
                self.path.clone(),
                self.size,
                context.settings.batch_size,
            );
            match opened.await {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => {
                    self.done = true;
                    let e = outage(context, e)?;
                    context.reject(None, format!("corrupt or unreadable Parquet: {e}"))?;
                    return Ok(None);
                }
            }
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            let batch = match stream.next().await {
                None => {
                    self.done = true;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    self.done = true;
                    let e = outage(context, e)?;
                    let reason = format!("corrupt Parquet after row {}: {e}", self.rows_read);
                    context.reject(None, reason)?;
                    return Ok(None);
                }
                Some(Ok(batch)) => batch,
            };
            let first_row = self.rows_read;
            self.rows_read += batch.num_rows() as u64;
            if let Some(documents) = self.convert(context, &batch, first_row)? {
                return Ok(Some(documents));
            }
            // Every row of this batch was skipped: read on.
        }
    }

    /// Maps a batch with user columns onto the Document schema; `None` when no row survived.
    fn convert(
        &mut self,
        context: &mut ReadContext,
        batch: &RecordBatch,
        first_row: u64,
    ) -> Result<Option<RecordBatch>> {
        let settings = context.settings.clone();
        let as_strings = |name: &str| -> Option<arrow::array::ArrayRef> {
            let column = batch.column_by_name(name)?;
            arrow::compute::cast(column, &DataType::Utf8).ok()
        };
        // The text must be text: numbers or lists cast to strings would become "documents".
        if let Some(column) = batch.column_by_name(&settings.text_field) {
            let kind = column.data_type();
            if !matches!(
                kind,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                self.done = true;
                let reason = format!(
                    "text column {:?} holds {kind}, not strings; set the text field to a string column",
                    settings.text_field
                );
                context.reject(None, reason)?;
                return Ok(None);
            }
        }
        let Some(text) = as_strings(&settings.text_field) else {
            self.done = true;
            let columns: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let reason = format!(
                "no text column {:?} (columns: {}); set the text field",
                settings.text_field,
                columns.join(", ")
            );
            context.reject(None, reason)?;
            return Ok(None);
        };
        let id = settings.id_field.as_deref().and_then(as_strings);
        let source = as_strings(&settings.source_field);
        let url = as_strings(&settings.url_field);
        let mapped: Vec<&str> = [
            Some(settings.text_field.as_str()),
            settings.id_field.as_deref(),
            Some(settings.source_field.as_str()),
            Some(settings.url_field.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let meta = meta_json(batch, &mapped).map_err(|source| dapt_core::Error::Arrow {
            what: context.url.clone(),
            source,
        })?;
        let text = text.as_string::<i32>();
        let id = id.as_ref().map(arrow::array::AsArray::as_string::<i32>);
        let source = source.as_ref().map(arrow::array::AsArray::as_string::<i32>);
        let url = url.as_ref().map(arrow::array::AsArray::as_string::<i32>);
        fn value(array: Option<&arrow::array::StringArray>, row: usize) -> Option<&str> {
            array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
        }
        let mut builder = DocumentBuilder::default();
        for row in 0..batch.num_rows() {
            builder.push(
                context,
                first_row + row as u64 + 1,
                RawDocument {
                    text: value(Some(text), row),
                    id: value(id, row).map(str::to_string),
                    source: value(source, row),
                    url: value(url, row),
                    meta: meta.as_ref().map(|m| m[row].as_str()),
                },
            )?;
        }
        if builder.rows() == 0 {
            return Ok(None);
        }
        builder.finish(&context.url).map(Some)
    }
}

/// The columns not mapped to Document fields, as one JSON object per row (`None` when there are none).
fn meta_json(
    batch: &RecordBatch,
    mapped: &[&str],
) -> std::result::Result<Option<Vec<String>>, arrow::error::ArrowError> {
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !mapped.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    let rest = batch.project(&keep)?;
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer.write(&rest)?;
        writer.finish()?;
    }
    let text = String::from_utf8(buffer)
        .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
    Ok(Some(text.lines().map(str::to_string).collect()))
}
