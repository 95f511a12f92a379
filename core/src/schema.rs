//! The Arrow schemas that stages exchange.
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Column names of the Document schema.
pub mod document {
    /// Stable document id (string).
    pub const ID: &str = "id";
    /// Document text (UTF-8).
    pub const TEXT: &str = "text";
    /// Source name (a corpus, a file stem).
    pub const SOURCE: &str = "source";
    /// URL the document came from, if any.
    pub const URL: &str = "url";
    /// Other fields of the record as a JSON object string, if any.
    pub const META: &str = "meta";
}

/// Column names of the Packed schema.
pub mod packed {
    /// Token ids of the row (`seq_len` of them, padded).
    pub const INPUT_IDS: &str = "input_ids";
    /// Lengths of the row's segments; attention never crosses one.
    pub const SEGMENT_LENGTHS: &str = "segment_lengths";
    /// Per token: whether it is a training target.
    pub const LOSS_MASK: &str = "loss_mask";
    /// Source or component of each segment.
    pub const SEGMENT_SOURCES: &str = "segment_sources";
}

/// Parquet key-value metadata keys written by dapt.
pub mod metadata {
    /// sha256 of the `tokenizer.json` that produced the ids.
    pub const TOKENIZER_SHA256: &str = "dapt.tokenizer_sha256";
    /// Row length in tokens.
    pub const SEQ_LEN: &str = "dapt.seq_len";
    /// Id of the padding token.
    pub const PAD_ID: &str = "dapt.pad_id";
    /// Seed of the run that wrote the file.
    pub const SEED: &str = "dapt.seed";
    /// sha256 of the settings that produced the file.
    pub const CONFIG_HASH: &str = "dapt.config_hash";
}

/// Documents: `id` (stable, unique per source), `text`, `source` (shard or dataset name), optional
/// `url`, and optional `meta` (the record's other fields as a JSON object).
pub fn document_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(document::ID, DataType::Utf8, false),
        Field::new(document::TEXT, DataType::Utf8, false),
        Field::new(document::SOURCE, DataType::Utf8, false),
        Field::new(document::URL, DataType::Utf8, true),
        Field::new(document::META, DataType::Utf8, true),
    ]))
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// Packed training rows, one per sequence:
/// - `input_ids: list<int32>` of exactly `seq_len` ids, padded at the end with the pad id;
/// - `segment_lengths: list<int32>`: lengths of the documents in the row, in order; their sum is the
///   number of non-pad tokens; attention never crosses a segment boundary;
/// - `loss_mask: list<bool>` of `seq_len`: true where a token is a training target (predicted from the
///   tokens before it in its own segment); false on pads and, in SFT, on prompt tokens;
/// - `segment_sources: list<utf8>`: the source or mix component of each segment, in order (empty when
///   unknown; readers accept files without the column).
pub fn packed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(packed::INPUT_IDS, list_of(DataType::Int32), false),
        Field::new(packed::SEGMENT_LENGTHS, list_of(DataType::Int32), false),
        Field::new(packed::LOSS_MASK, list_of(DataType::Boolean), false),
        Field::new(packed::SEGMENT_SOURCES, list_of(DataType::Utf8), false),
    ]))
}
