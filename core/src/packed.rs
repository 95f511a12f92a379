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
    pub input_ids: Vec<i32>,
    pub segment_lengths: Vec<i32>,
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
