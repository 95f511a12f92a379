//! Integration tests of dapt-ingest: real text from the shared corpus, written as shards in every
//! supported compression, read back through the public API.
use std::io::Write;

use arrow::array::AsArray;
use dapt_core::{parquet_io, Location};
use dapt_ingest::{ingest, IngestOptions, IngestSettings};

fn corpus_lines(n: usize) -> Vec<String> {
    let text = include_str!("../../../configs/demo/data/fortunes-ru.jsonl");
    text.lines().take(n).map(str::to_string).collect()
}

async fn write_shards(dir: &std::path::Path, lines: &[String]) {
    let plain = lines.join("\n") + "\n";
    std::fs::write(dir.join("a.jsonl"), &plain).unwrap();
    let gz = gzip_compress(plain.as_bytes()).await;
    std::fs::write(dir.join("b.jsonl.gz"), gz).unwrap();
    let zst = zstd_compress(plain.as_bytes()).await;
    std::fs::write(dir.join("c.jsonl.zst"), zst).unwrap();
    std::fs::write(dir.join("README.md"), "not a shard").unwrap();
}

// Compression through async-compression's encoders, the same library that ingest decodes with.
async fn gzip_compress(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut encoder = async_compression::tokio::write::GzipEncoder::new(Vec::new());
    encoder.write_all(data).await.unwrap();
    encoder.shutdown().await.unwrap();
    encoder.into_inner()
}

async fn zstd_compress(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut encoder = async_compression::tokio::write::ZstdEncoder::new(Vec::new());
    encoder.write_all(data).await.unwrap();
    encoder.shutdown().await.unwrap();
    encoder.into_inner()
}

fn settings(inputs: Vec<String>) -> IngestSettings {
    IngestSettings::try_from(IngestOptions {
        inputs,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn every_compression_gives_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let lines = corpus_lines(50);
    write_shards(&input, &lines).await;
    let out = Location::parse(dir.path().join("out").to_str().unwrap()).unwrap();
    let summary = ingest(
        &settings(vec![input.display().to_string()]),
        out.clone(),
        "h",
        |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.files, 3);
    assert_eq!(summary.documents, 150);

    let mut texts_per_shard = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            let (batches, metadata) =
                parquet_io::decode(std::fs::read(&path).unwrap().into(), "test").unwrap();
            assert!(metadata["dapt.input_url"].starts_with("file:///"));
            let mut texts = Vec::new();
            for batch in &batches {
                let text = batch.column_by_name("text").unwrap().as_string::<i32>();
                let source = batch.column_by_name("source").unwrap().as_string::<i32>();
                let meta = batch.column_by_name("meta").unwrap().as_string::<i32>();
                for i in 0..batch.num_rows() {
                    texts.push(text.value(i).to_string());
                    assert_eq!(source.value(i), "fortunes-ru");
                    assert!(meta.value(i).contains("\"path\""));
                }
            }
            texts_per_shard.push(texts);
        }
    }
    assert_eq!(texts_per_shard.len(), 3);
    let expected: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    for texts in &texts_per_shard {
        assert_eq!(texts, &expected);
    }

    // A rerun skips every published shard and writes nothing new.
    let again = ingest(
        &settings(vec![input.display().to_string()]),
        out,
        "h",
        |_, _, _| {},
    )
    .await
    .unwrap();
    assert_eq!(again.files_read, 0);
}

#[tokio::test]
async fn malformed_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "{{\"text\": \"fine\"}}").unwrap();
    writeln!(file, "{{\"text\": \"broken").unwrap();
    drop(file);
    let out = Location::parse(dir.path().join("out").to_str().unwrap()).unwrap();
    let err = ingest(
        &settings(vec![path.display().to_string()]),
        out,
        "h",
        |_, _, _| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.jsonl line 2") && err.contains("malformed JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_text_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"text\": \"a\"}\n{\"body\": \"b\"}\n").unwrap();
    let out = Location::parse(dir.path().join("out").to_str().unwrap()).unwrap();
    let err = ingest(
        &settings(vec![path.display().to_string()]),
        out,
        "h",
        |_, _, _| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("x.jsonl line 2") && err.contains("no \"text\" field"),
        "{err}"
    );
}
