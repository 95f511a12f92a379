//! Query results as strings: for commands that read a few named columns of every row (labelled
//! examples, chats, ids and texts).
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use futures::TryStreamExt;

use crate::{Error, Result, SqlSession};

/// Runs a read-only query once and reads the first of `layouts` (alternative column lists) whose
/// columns its result has: returns that layout's index and, for every row without NULLs in them, the
/// string values of its columns (cast to text). A result without any layout's columns, or without
/// rows, is an error naming the query.
pub async fn string_rows(
    session: &SqlSession,
    query: &str,
    layouts: &[&[&str]],
) -> Result<(usize, Vec<Vec<String>>)> {
    let stream = session.query(query).await?;
    let schema = stream.schema();
    let Some(layout) = layouts
        .iter()
        .position(|columns| columns.iter().all(|c| schema.field_with_name(c).is_ok()))
    else {
        let wanted: Vec<String> = layouts
            .iter()
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        return Err(Error::Columns {
            query: query.to_string(),
            reason: format!("the query must return the columns {}", wanted.join(" or ")),
        });
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|source| Error::Query {
        query: query.to_string(),
        source,
    })?;
    let mut rows = Vec::new();
    for batch in batches {
        let values = layouts[layout]
            .iter()
            .map(|name| string_column(&batch, name, query))
            .collect::<Result<Vec<_>>>()?;
        let strings: Vec<_> = values
            .iter()
            .map(arrow::array::AsArray::as_string::<i32>)
            .collect();
        for i in 0..batch.num_rows() {
            if strings.iter().all(|s| s.is_valid(i)) {
                rows.push(strings.iter().map(|s| s.value(i).to_string()).collect());
            }
        }
    }
    if rows.is_empty() {
        return Err(Error::Columns {
            query: query.to_string(),
            reason: "the query returned no rows".into(),
        });
    }
    Ok((layout, rows))
}

/// Column `name` of `batch` cast to `Utf8`.
pub fn string_column(
    batch: &RecordBatch,
    name: &str,
    query: &str,
) -> Result<arrow::array::ArrayRef> {
    let column = batch.column_by_name(name).ok_or_else(|| Error::Columns {
        query: query.to_string(),
        reason: format!("the result has no column `{name}`"),
    })?;
    let fail = |reason: String| Error::Columns {
        query: query.to_string(),
        reason: format!("column `{name}` cannot be read as text: {reason}"),
    };
    if column.data_type().is_nested() {
        return nested_as_json(name, column).map_err(|e| fail(e.to_string()));
    }
    arrow::compute::cast(column, &DataType::Utf8).map_err(|source| fail(source.to_string()))
}

/// Each value of a nested column (lists, structs: a JSON-lines `messages` array, say) as its JSON
/// text; nulls stay null.
fn nested_as_json(
    name: &str,
    column: &arrow::array::ArrayRef,
) -> std::result::Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    let field = arrow::datatypes::Field::new(name, column.data_type().clone(), true);
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![field])),
        vec![column.clone()],
    )?;
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(&batch)?;
    writer.finish()?;
    let text = String::from_utf8(writer.into_inner())
        .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?;
    let mut values = arrow::array::StringBuilder::new();
    for (i, line) in text.lines().enumerate() {
        let object: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?;
        match object.get(name) {
            Some(value) if column.is_valid(i) => values.append_value(value.to_string()),
            _ => values.append_null(),
        }
    }
    Ok(std::sync::Arc::new(values.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_matching_layout_is_read_without_null_rows() {
        let session = SqlSession::new();
        let query = "SELECT * FROM (VALUES (1, 'a', 'x'), (2, NULL, 'y'), (3, 'c', 'z')) AS t(id, prompt, response)";
        let (layout, rows) = string_rows(
            &session,
            query,
            &[&["id", "messages"], &["id", "prompt", "response"]],
        )
        .await
        .unwrap();
        assert_eq!(layout, 1);
        let mut rows = rows;
        rows.sort();
        assert_eq!(
            rows,
            vec![
                vec!["1".to_string(), "a".into(), "x".into()],
                vec!["3".to_string(), "c".into(), "z".into()]
            ]
        );
        let err = string_rows(&session, query, &[&["id", "text"]])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("`id`, `text`"), "{err}");
        let err = string_rows(
            &session,
            "SELECT 1 AS id, 'a' AS text WHERE false",
            &[&["id", "text"]],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no rows"), "{err}");
    }
}
