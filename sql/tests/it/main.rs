//! Integration tests of dapt-sql: Document shards written as real Parquet, queried through SQL.
mod functions;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use dapt_core::schema::document_schema;
use dapt_core::{parquet_io, Location};
use dapt_sql::SqlSession;

async fn documents(dir: &std::path::Path) -> Location {
    let location = Location::parse(dir.to_str().unwrap()).unwrap();
    let texts = [
        ("1", "Аппетит приходит во время еды.", "ru"),
        ("2", "A short one.", "en"),
        ("3", "Беззубым остаётся в утешение «око за око».", "ru"),
    ];
    for (shard, chunk) in texts.chunks(2).enumerate() {
        let column = |field: usize| {
            let values = chunk.iter().map(|t| [t.0, t.1, t.2][field]);
            Arc::new(StringArray::from_iter_values(values)) as _
        };
        let batch = RecordBatch::try_new(
            document_schema(),
            vec![
                column(0),
                column(1),
                column(2),
                Arc::new(StringArray::new_null(chunk.len())),
                Arc::new(StringArray::new_null(chunk.len())),
            ],
        )
        .unwrap();
        let bytes =
            parquet_io::encode(document_schema(), &[batch], &BTreeMap::new(), "test").unwrap();
        location
            .write(&format!("part-{shard}.parquet"), bytes)
            .await
            .unwrap();
    }
    // Files that are not Parquet shards (manifests) must not be read as tables.
    location
        .write("_manifest.json", bytes::Bytes::from_static(b"{}"))
        .await
        .unwrap();
    location
}

#[tokio::test]
async fn selects_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let session = SqlSession::new();
    session
        .register_parquet("documents", &documents(dir.path()).await)
        .await
        .unwrap();
    let batches = session
        .query_collect(
            "SELECT source, count(*) AS n, sum(character_length(text)) AS chars \
             FROM documents GROUP BY source ORDER BY source",
        )
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    // DataFusion reads Parquet strings as Utf8View; cast for a uniform comparison.
    let sources = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
    let sources: Vec<_> = sources.as_string::<i32>().iter().flatten().collect();
    assert_eq!(sources, ["en", "ru"]);
    let counts: Vec<_> = batch
        .column(1)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(counts, [1, 2]);
    let chars: Vec<_> = batch
        .column(2)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let ru: i64 = [
        "Аппетит приходит во время еды.",
        "Беззубым остаётся в утешение «око за око».",
    ]
    .iter()
    .map(|t| t.chars().count() as i64)
    .sum();
    assert_eq!(chars, [12, ru]);
}

#[tokio::test]
async fn non_queries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let session = SqlSession::new();
    session
        .register_parquet("documents", &documents(dir.path()).await)
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "DROP TABLE documents",
        "INSERT INTO documents VALUES ('x','y','z',NULL,NULL)",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = session.query(sql).await.err().expect(sql).to_string();
        assert!(err.contains("read-only"), "{sql}: {err}");
    }
    let err = session
        .query("SELECT nope FROM documents")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("query failed"),
        "{err}"
    );
}
