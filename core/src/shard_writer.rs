//! Streaming Parquet shards: batches are encoded row group by row group and uploaded as they are made
//! (a multipart upload), so memory stays bounded whatever the shard's size. The object becomes visible
//! only when the upload completes — a killed writer leaves nothing behind under the shard's name — and
//! the shard's sha256 is computed from the bytes as they pass.
use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::buffered::BufWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::AsyncArrowWriter;
use sha2::{Digest, Sha256};

use crate::{Error, Location, Result, ShardEntry};

/// Encoded bytes kept in memory before a row group is flushed.
const ROW_GROUP_BYTES: usize = 8 << 20;
/// Upload part size.
const UPLOAD_BUFFER: usize = 8 << 20;

/// Forwards bytes to the object writer and hashes them on the way.
struct HashingWriter {
    inner: BufWriter,
    hasher: Sha256,
    bytes: u64,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.bytes += bs.len() as u64;
        AsyncFileWriter::write(&mut self.inner, bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        AsyncFileWriter::complete(&mut self.inner).boxed()
    }
}

/// Writes one Parquet shard below a location.
pub struct ShardWriter {
    writer: AsyncArrowWriter<HashingWriter>,
    name: String,
    url: String,
    rows: u64,
}

impl ShardWriter {
    /// Starts shard `name` below `location` with `schema` and key-value `metadata`. Does no I/O until
    /// the first row group is flushed.
    pub fn create(
        location: &Location,
        name: &str,
        schema: SchemaRef,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let properties =
            crate::parquet_io::writer_properties(metadata).map_err(|source| Error::Parquet {
                what: location.url_of(&location.child(name)),
                source,
            })?;
        Self::create_with(location, name, schema, properties)
    }

    /// [`ShardWriter::create`] with other writer properties (e.g.
    /// [`packed_writer_properties`](crate::parquet_io::packed_writer_properties)).
    pub fn create_with(
        location: &Location,
        name: &str,
        schema: SchemaRef,
        properties: parquet::file::properties::WriterProperties,
    ) -> Result<Self> {
        let path = location.child(name);
        let url = location.url_of(&path);
        let parquet_error = |source| Error::Parquet {
            what: url.clone(),
            source,
        };
        location.remove_stale_staging(&path)?;
        let upload = BufWriter::with_capacity(location.store().clone(), path, UPLOAD_BUFFER);
        let sink = HashingWriter {
            inner: upload,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer =
            AsyncArrowWriter::try_new(sink, schema, Some(properties)).map_err(parquet_error)?;
        Ok(Self {
            writer,
            name: name.to_string(),
            url,
            rows: 0,
        })
    }

    fn error(&self, source: parquet::errors::ParquetError) -> Error {
        Error::Parquet {
            what: self.url.clone(),
            source,
        }
    }

    /// Appends a batch; flushes a row group once enough encoded bytes are buffered.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).await.map_err(|e| self.error(e))?;
        self.rows += batch.num_rows() as u64;
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer.flush().await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Finishes the file and completes the upload, making the shard visible; returns its entry for
    /// the manifest.
    pub async fn finish(mut self) -> Result<ShardEntry> {
        self.writer.finish().await.map_err(|e| self.error(e))?;
        let sink = self.writer.into_inner();
        Ok(ShardEntry {
            name: self.name,
            rows: self.rows,
            bytes: sink.bytes,
            sha256: sink
                .hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::document_schema;
    use arrow::array::StringArray;
    use std::sync::Arc;

    #[tokio::test]
    async fn streamed_shard_equals_its_manifest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut writer =
            ShardWriter::create(&location, "s.parquet", document_schema(), &BTreeMap::new())
                .unwrap();
        for _ in 0..3 {
            let strings = |v: &str| Arc::new(StringArray::from(vec![v, v])) as _;
            let batch = RecordBatch::try_new(
                document_schema(),
                vec![
                    strings("i"),
                    strings("t"),
                    strings("s"),
                    Arc::new(StringArray::new_null(2)),
                    Arc::new(StringArray::new_null(2)),
                ],
            )
            .unwrap();
            writer.write(&batch).await.unwrap();
        }
        assert!(
            !dir.path().join("s.parquet").exists(),
            "invisible until finished"
        );
        let entry = writer.finish().await.unwrap();
        let bytes = std::fs::read(dir.path().join("s.parquet")).unwrap();
        assert_eq!(entry.rows, 6);
        assert_eq!(entry.bytes, bytes.len() as u64);
        assert_eq!(entry.sha256, crate::hash::sha256_hex(&bytes));
        let (batches, _) = crate::parquet_io::decode(bytes.into(), "s").unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 6);
    }
}
