//! Parquet encoding of whole shards in memory (shards are published with one atomic `put`), and
//! decoding back with the key-value metadata.
use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// Writer properties of every dapt Parquet file: zstd level 3, `metadata` as key-value metadata
/// (sorted by key, so that equal inputs give equal bytes).
pub fn writer_properties(
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<WriterProperties, parquet::errors::ParquetError> {
    let key_values = metadata
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(key_values))
        .build())
}

/// Encodes batches as one Parquet file (see [`writer_properties`]).
pub fn encode(
    schema: SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    what: &str,
) -> Result<Bytes> {
    let properties = writer_properties(metadata).map_err(|source| Error::Parquet {
        what: what.to_string(),
        source,
    })?;
    encode_with(schema, batches, properties, what)
}

/// Encodes packed token rows: as [`encode`], without dictionaries or statistics, which cost more
/// than they give on token ids (a dictionary over a 150k vocabulary, min/max of ids nobody filters on).
pub fn encode_packed(
    schema: SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    what: &str,
) -> Result<Bytes> {
    let properties = packed_writer_properties(metadata).map_err(|source| Error::Parquet {
        what: what.to_string(),
        source,
    })?;
    encode_with(schema, batches, properties, what)
}

/// [`writer_properties`] for packed token rows (see [`encode_packed`]).
pub fn packed_writer_properties(
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<WriterProperties, parquet::errors::ParquetError> {
    Ok(writer_properties(metadata)?
        .into_builder()
        .set_dictionary_enabled(false)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
        .build())
}

fn encode_with(
    schema: SchemaRef,
    batches: &[RecordBatch],
    properties: WriterProperties,
    what: &str,
) -> Result<Bytes> {
    let parquet_error = |source| Error::Parquet {
        what: what.to_string(),
        source,
    };
    let mut buffer = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buffer, schema, Some(properties)).map_err(parquet_error)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_error)?;
    }
    writer.close().map_err(parquet_error)?;
    Ok(Bytes::from(buffer))
}

/// Decodes a whole Parquet file: its batches and its key-value metadata.
pub fn decode(bytes: Bytes, what: &str) -> Result<(Vec<RecordBatch>, BTreeMap<String, String>)> {
    let parquet_error = |source| Error::Parquet {
        what: what.to_string(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_error)?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv.value.clone().map(|v| (kv.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    let reader = builder.build().map_err(parquet_error)?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Arrow {
            what: what.to_string(),
            source,
        })?;
    Ok((batches, metadata))
}
