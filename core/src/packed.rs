//! Packed training rows in memory, their conversion to and from Arrow, and the contract check.
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanBuilder, Int32Builder, ListBuilder, RecordBatch, StringBuilder,
};
use arrow::datatypes::Int32Type;

use crate::schema::{packed, packed_schema};
use crate::{Error, Result};

/// One training sequence (see [`packed_schema`](crate::schema::packed_schema)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedRow {
    /// Token ids, `seq_len` of them (padding at the end).
    pub input_ids: Vec<i32>,
    /// Lengths of the segments (documents or examples), in order; they sum to the unpadded length.
    pub segment_lengths: Vec<i32>,
    /// Per token: whether it is a training target.
    pub loss_mask: Vec<bool>,
    /// Source or component of each segment; empty when unknown.
    pub segment_sources: Vec<String>,
}

impl PackedRow {
    /// Number of non-pad tokens.
    pub fn used(&self) -> usize {
        self.segment_lengths.iter().map(|&l| l as usize).sum()
    }

    /// Checks the contract for one row: lengths equal `seq_len`, positive segment lengths summing to at
    /// most `seq_len`, pad ids (and no loss) after the last segment.
    pub fn validate(&self, row: usize, seq_len: usize, pad_id: i32) -> Result<()> {
        let bad = |reason: String| Error::PackedContract { row, reason };
        if self.input_ids.len() != seq_len {
            return Err(bad(format!(
                "input_ids has {} ids, seq_len is {seq_len}",
                self.input_ids.len()
            )));
        }
        if self.loss_mask.len() != seq_len {
            return Err(bad(format!(
                "loss_mask has {} flags, seq_len is {seq_len}",
                self.loss_mask.len()
            )));
        }
        if self.segment_lengths.is_empty() {
            return Err(bad("no segments".into()));
        }
        if !self.segment_sources.is_empty()
            && self.segment_sources.len() != self.segment_lengths.len()
        {
            return Err(bad(format!(
                "{} segment sources for {} segments",
                self.segment_sources.len(),
                self.segment_lengths.len()
            )));
        }
        if let Some(l) = self.segment_lengths.iter().find(|&&l| l <= 0) {
            return Err(bad(format!("segment length {l} is not positive")));
        }
        let used = self.used();
        if used > seq_len {
            return Err(bad(format!(
                "segment lengths sum to {used}, more than seq_len {seq_len}"
            )));
        }
        if let Some(i) = (used..seq_len).find(|&i| self.input_ids[i] != pad_id) {
            return Err(bad(format!(
                "position {i} after the last segment holds id {}, not the pad id {pad_id}",
                self.input_ids[i]
            )));
        }
        if let Some(i) = (used..seq_len).find(|&i| self.loss_mask[i]) {
            return Err(bad(format!("pad position {i} is marked as a loss target")));
        }
        Ok(())
    }
}

/// Builds a Packed record batch from rows.
pub fn rows_to_batch(rows: &[PackedRow]) -> Result<RecordBatch> {
    let mut ids = ListBuilder::new(Int32Builder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Int32, false),
    ));
    let mut segments = ListBuilder::new(Int32Builder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Int32, false),
    ));
    let mut mask = ListBuilder::new(BooleanBuilder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Boolean, false),
    ));
    let mut sources = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(
        arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, false),
    ));
    for row in rows {
        for source in &row.segment_sources {
            sources.values().append_value(source);
        }
        sources.append(true);
        ids.values().append_slice(&row.input_ids);
        ids.append(true);
        segments.values().append_slice(&row.segment_lengths);
        segments.append(true);
        mask.values().append_slice(&row.loss_mask);
        mask.append(true);
    }
    RecordBatch::try_new(
        packed_schema(),
        vec![
            Arc::new(ids.finish()),
            Arc::new(segments.finish()),
            Arc::new(mask.finish()),
            Arc::new(sources.finish()),
        ],
    )
    .map_err(|source| Error::Arrow {
        what: "building a packed batch".into(),
        source,
    })
}

/// Reads rows back from a Packed record batch, checking column names and types.
pub fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<PackedRow>> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| Error::Schema {
            what: "packed batch".into(),
            reason: format!("no column {name:?}"),
        })
    };
    let wrong = |name: &str| Error::Schema {
        what: "packed batch".into(),
        reason: format!("column {name:?} has the wrong type"),
    };
    let ids = column(packed::INPUT_IDS)?
        .as_list_opt::<i32>()
        .ok_or_else(|| wrong(packed::INPUT_IDS))?;
    let segments = column(packed::SEGMENT_LENGTHS)?
        .as_list_opt::<i32>()
        .ok_or_else(|| wrong(packed::SEGMENT_LENGTHS))?;
    let mask = column(packed::LOSS_MASK)?
        .as_list_opt::<i32>()
        .ok_or_else(|| wrong(packed::LOSS_MASK))?;
    // Optional: files written before the column existed have none.
    let sources = match batch.column_by_name(packed::SEGMENT_SOURCES) {
        Some(column) => Some(
            column
                .as_list_opt::<i32>()
                .ok_or_else(|| wrong(packed::SEGMENT_SOURCES))?,
        ),
        None => None,
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let segment_sources = match sources {
            Some(list) => {
                let values = list.value(i);
                let values = values
                    .as_string_opt::<i32>()
                    .ok_or_else(|| wrong(packed::SEGMENT_SOURCES))?;
                (0..values.len())
                    .map(|j| values.value(j).to_string())
                    .collect()
            }
            None => Vec::new(),
        };
        let id_values = ids.value(i);
        let seg_values = segments.value(i);
        let mask_values = mask.value(i);
        let id_values = id_values
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| wrong(packed::INPUT_IDS))?;
        let seg_values = seg_values
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| wrong(packed::SEGMENT_LENGTHS))?;
        let mask_values = mask_values
            .as_boolean_opt()
            .ok_or_else(|| wrong(packed::LOSS_MASK))?;
        rows.push(PackedRow {
            input_ids: id_values.values().to_vec(),
            segment_lengths: seg_values.values().to_vec(),
            loss_mask: (0..mask_values.len())
                .map(|j| mask_values.value(j))
                .collect(),
            segment_sources,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> PackedRow {
        PackedRow {
            input_ids: vec![5, 6, 7, 8, 9, 0],
            segment_lengths: vec![3, 2],
            loss_mask: vec![true, true, true, true, true, false],
            segment_sources: vec!["ru".into(), "en".into()],
        }
    }

    #[test]
    fn round_trip_through_arrow() {
        let rows = vec![row(), row()];
        let batch = rows_to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), packed_schema());
        assert_eq!(batch_to_rows(&batch).unwrap(), rows);
    }

    #[test]
    fn contract_violations_are_named() {
        row().validate(0, 6, 0).unwrap();
        let err = row().validate(3, 7, 0).unwrap_err().to_string();
        assert!(
            err.contains("row 3") && err.contains("seq_len is 7"),
            "{err}"
        );
        let mut r = row();
        r.input_ids[5] = 4;
        let err = r.validate(0, 6, 0).unwrap_err().to_string();
        assert!(err.contains("position 5"), "{err}");
        let mut r = row();
        r.segment_lengths = vec![3, 4];
        assert!(r
            .validate(0, 6, 0)
            .unwrap_err()
            .to_string()
            .contains("sum to 7"));
        let mut r = row();
        r.loss_mask[5] = true;
        assert!(r.validate(0, 6, 0).is_err());
        let mut r = row();
        r.segment_sources.pop();
        assert!(r
            .validate(0, 6, 0)
            .unwrap_err()
            .to_string()
            .contains("1 segment sources for 2"));
    }
}

/// What a packed output declares about its rows: written into every shard's Parquet key-value metadata
/// (`dapt.*` keys) and, with the highest token id, into the manifest's summary under
/// [`PackedMetadata::SUMMARY_KEY`]; read back by the trainer and evaluation, which refuse data that
/// does not fit the model (an id at or above `vocab_size`) or the other data of a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackedMetadata {
    /// sha256 of the `tokenizer.json` that produced the ids.
    pub tokenizer_sha256: String,
    /// Tokens per row.
    pub seq_len: usize,
    /// The id that fills rows after their last segment.
    pub pad_id: i32,
    /// The seed of the run that packed the rows.
    pub seed: u64,
    /// The identity (content hash) of the settings and inputs that produced the rows.
    pub config_hash: String,
    /// The highest token id in the rows, pads included.
    pub max_token_id: i32,
}

impl PackedMetadata {
    /// The key of the manifest summary that holds this metadata.
    pub const SUMMARY_KEY: &'static str = "packed";

    /// The Parquet key-value metadata of a shard.
    pub fn key_values(&self) -> std::collections::BTreeMap<String, String> {
        use crate::schema::metadata;
        [
            (metadata::TOKENIZER_SHA256, self.tokenizer_sha256.clone()),
            (metadata::SEQ_LEN, self.seq_len.to_string()),
            (metadata::PAD_ID, self.pad_id.to_string()),
            (metadata::SEED, self.seed.to_string()),
            (metadata::CONFIG_HASH, self.config_hash.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `summary` (a JSON object, or null) with this metadata under [`Self::SUMMARY_KEY`].
    pub fn add_to_summary(&self, summary: serde_json::Value) -> serde_json::Value {
        let mut object = match summary {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut map = serde_json::Map::new();
                map.insert("summary".into(), other);
                map
            }
        };
        object.insert(
            Self::SUMMARY_KEY.into(),
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
        );
        serde_json::Value::Object(object)
    }

    /// The metadata of an output whose jobs recorded `merged` (so far) and `next` (summary
    /// entries): the highest token id of either; every other field must agree (`url` names the job
    /// manifest that does not).
    pub fn merge(
        merged: Option<serde_json::Value>,
        next: serde_json::Value,
        url: &str,
    ) -> Result<serde_json::Value> {
        let parse = |value: serde_json::Value| -> Result<Self> {
            serde_json::from_value(value).map_err(|e| Error::Packed {
                url: url.to_string(),
                reason: format!(
                    "the manifest's `{}` entry is malformed: {e}",
                    Self::SUMMARY_KEY
                ),
            })
        };
        let next = parse(next)?;
        let Some(merged) = merged else {
            return Ok(serde_json::to_value(&next).unwrap_or(serde_json::Value::Null));
        };
        let mut merged = parse(merged)?;
        let highest = merged.max_token_id.max(next.max_token_id);
        merged.max_token_id = next.max_token_id;
        if merged != next {
            return Err(Error::Packed {
                url: url.to_string(),
                reason: "its packed metadata (tokenizer, seq_len, pad id, seed or settings) differs from the other jobs'".into(),
            });
        }
        merged.max_token_id = highest;
        Ok(serde_json::to_value(&merged).unwrap_or(serde_json::Value::Null))
    }

    /// The metadata recorded in the manifest of the packed output at `url`.
    pub fn from_manifest(manifest: &crate::Manifest, url: &str) -> Result<Self> {
        let value = manifest.summary.get(Self::SUMMARY_KEY).ok_or_else(|| Error::Packed {
            url: url.to_string(),
            reason: format!(
                "the manifest has no `{}` entry (tokenizer, seq_len, pad id, highest token id): not the output of `dapt pack`, or of an older dapt; pack it again",
                Self::SUMMARY_KEY
            ),
        })?;
        serde_json::from_value(value.clone()).map_err(|e| Error::Packed {
            url: url.to_string(),
            reason: format!(
                "the manifest's `{}` entry is malformed: {e}",
                Self::SUMMARY_KEY
            ),
        })
    }

    /// Refuses rows with token ids the model has no embedding for.
    pub fn check_vocab(&self, vocab_size: i64, url: &str) -> Result<()> {
        if i64::from(self.max_token_id) >= vocab_size || self.max_token_id < 0 {
            return Err(Error::Packed {
                url: url.to_string(),
                reason: format!(
                    "holds token id {}, but the model's vocab_size is {vocab_size} (tokenizer sha256 {}): resize the model's embeddings to the tokenizer (`dapt model resize-embeddings`) or pack with the model's tokenizer",
                    self.max_token_id, self.tokenizer_sha256
                ),
            });
        }
        Ok(())
    }

    /// Refuses data packed differently from `other` (another split of the same run): another tokenizer,
    /// sequence length or pad id.
    pub fn check_matches(&self, url: &str, other: &Self, other_url: &str) -> Result<()> {
        let mismatch = |what: &str, a: String, b: String| Error::Packed {
            url: url.to_string(),
            reason: format!("{what} is {a}, but {b} in {other_url}"),
        };
        if self.tokenizer_sha256 != other.tokenizer_sha256 {
            return Err(mismatch(
                "the tokenizer sha256",
                self.tokenizer_sha256.clone(),
                other.tokenizer_sha256.clone(),
            ));
        }
        if self.seq_len != other.seq_len {
            return Err(mismatch(
                "seq_len",
                self.seq_len.to_string(),
                other.seq_len.to_string(),
            ));
        }
        if self.pad_id != other.pad_id {
            return Err(mismatch(
                "the pad id",
                self.pad_id.to_string(),
                other.pad_id.to_string(),
            ));
        }
        Ok(())
    }

    /// Refuses data whose ids come from another tokenizer than `tokenizer_sha256`.
    pub fn check_tokenizer(
        &self,
        tokenizer_sha256: &str,
        tokenizer: &str,
        url: &str,
    ) -> Result<()> {
        if self.tokenizer_sha256 != tokenizer_sha256 {
            return Err(Error::Packed {
                url: url.to_string(),
                reason: format!(
                    "was packed with the tokenizer of sha256 {}, not {tokenizer} (sha256 {tokenizer_sha256})",
                    self.tokenizer_sha256
                ),
            });
        }
        Ok(())
    }
}

/// The highest token id in `rows` (pads included); -1 when there are none.
pub fn max_token_id(rows: &[PackedRow]) -> i32 {
    rows.iter()
        .flat_map(|r| r.input_ids.iter().copied())
        .max()
        .unwrap_or(-1)
}

impl PackedRow {
    /// Checks that every id is in `0..vocab_size` (an embedding exists for it).
    pub fn check_ids(&self, row: usize, vocab_size: i64) -> Result<()> {
        if let Some((position, id)) = self
            .input_ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id < 0 || i64::from(id) >= vocab_size)
        {
            return Err(Error::PackedContract {
                row,
                reason: format!(
                    "token id {id} at position {position} is outside the model's vocabulary (vocab_size {vocab_size})"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    fn empty_manifest() -> crate::Manifest {
        crate::Manifest {
            complete: true,
            ..crate::Manifest::new("pack", "h")
        }
    }

    fn metadata(max: i32) -> PackedMetadata {
        PackedMetadata {
            tokenizer_sha256: "abc".into(),
            seq_len: 8,
            pad_id: 0,
            seed: 1,
            config_hash: "h".into(),
            max_token_id: max,
        }
    }

    #[test]
    fn job_metadata_merges_to_the_highest_token_id_and_refuses_other_settings() {
        let value = |m: PackedMetadata| serde_json::to_value(m).unwrap();
        let first = PackedMetadata::merge(None, value(metadata(7)), "a").unwrap();
        let merged = PackedMetadata::merge(Some(first), value(metadata(99)), "b").unwrap();
        let merged = PackedMetadata::merge(Some(merged), value(metadata(40)), "c").unwrap();
        assert_eq!(
            serde_json::from_value::<PackedMetadata>(merged.clone()).unwrap(),
            metadata(99)
        );
        let other = PackedMetadata {
            seq_len: 16,
            ..metadata(3)
        };
        let error = PackedMetadata::merge(Some(merged), value(other), "job-2").unwrap_err();
        assert!(error.to_string().contains("job-2"), "{error}");
    }

    #[test]
    fn metadata_round_trips_through_a_manifest_summary_and_checks_the_vocabulary() {
        let summary = metadata(99).add_to_summary(serde_json::json!({ "rows": 3 }));
        assert_eq!(summary["rows"], 3);
        let manifest = crate::Manifest {
            summary,
            ..empty_manifest()
        };
        let back = PackedMetadata::from_manifest(&manifest, "file:///p").unwrap();
        assert_eq!(back, metadata(99));
        assert!(back.check_vocab(100, "file:///p").is_ok());
        let err = back.check_vocab(99, "file:///p").unwrap_err().to_string();
        assert!(
            err.contains("file:///p")
                && err.contains("token id 99")
                && err.contains("vocab_size is 99"),
            "{err}"
        );
        let other = PackedMetadata {
            seq_len: 16,
            ..metadata(5)
        };
        let err = back
            .check_matches("a", &other, "b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("seq_len is 8, but 16 in b"), "{err}");
        assert!(back.check_tokenizer("zzz", "tok.json", "a").is_err());
        let empty = empty_manifest();
        assert!(PackedMetadata::from_manifest(&empty, "x")
            .unwrap_err()
            .to_string()
            .contains("pack it again"));
    }

    #[test]
    fn rows_with_ids_outside_the_vocabulary_are_refused() {
        let row = PackedRow {
            input_ids: vec![1, 2, 70000, 0],
            segment_lengths: vec![3],
            loss_mask: vec![true, true, true, false],
            segment_sources: vec![],
        };
        assert_eq!(max_token_id(std::slice::from_ref(&row)), 70000);
        assert!(row.check_ids(0, 70001).is_ok());
        let err = row.check_ids(4, 49152).unwrap_err().to_string();
        assert!(
            err.contains("row 4") && err.contains("70000") && err.contains("position 2"),
            "{err}"
        );
    }
}
