//! Every format, read from local disk and from S3, gives exactly the documents written.
use bytes::Bytes;
use dapt_core::hash::content_id;
use dapt_core::Location;
use dapt_ingest::{IngestOptions, Job};

use crate::common::*;

/// Writes one shard per format below `root` and returns the documents ingest must produce.
async fn write_every_format(root: &Location) -> Vec<Out> {
    let mut expected = Vec::new();
    let jsonl_expected = |docs: &[Doc], prefix: &str, source: &str| -> Vec<Out> {
        docs.iter()
            .enumerate()
            .map(|(i, d)| Out {
                id: format!("{prefix}-{i}"),
                text: d.text.clone(),
                source: source.into(),
                url: None,
                meta: Some(serde_json::json!({"path": d.path}).to_string()),
            })
            .collect()
    };
    let ru = docs("ru/fortunes-ru.jsonl", 40);
    root.write("ru/a.jsonl", Bytes::from(jsonl(&ru, "ru")))
        .await
        .unwrap();
    expected.extend(jsonl_expected(&ru, "ru", "a"));

    let en = docs("en/fortunes.jsonl", 30);
    root.write(
        "en/b.jsonl.gz",
        gzip(jsonl(&en, "en").as_bytes()).await.into(),
    )
    .await
    .unwrap();
    expected.extend(jsonl_expected(&en, "en", "b"));

    let code = docs("code/rust-src.jsonl", 5);
    root.write(
        "code/c.jsonl.zst",
        zstd(jsonl(&code, "rs").as_bytes()).await.into(),
    )
    .await
    .unwrap();
    expected.extend(jsonl_expected(&code, "rs", "c"));

    let web = docs("ru/debian-handbook-ru.jsonl", 20);
    root.write("web/d.parquet", fineweb_parquet(&web))
        .await
        .unwrap();
    expected.extend(web.iter().enumerate().map(|(i, d)| Out {
        id: format!("<urn:uuid:{i}>"),
        text: d.text.clone(),
        source: "d".into(),
        url: Some(format!("https://example.org/{}", d.path)),
        meta: Some(format!(
            "{{\"dump\":\"CC-MAIN-2024-10\",\"language\":\"ru\",\"token_count\":{}}}",
            d.text.len() / 4
        )),
    }));

    // C4 layout: no id, so ids are content ids of (source, text).
    let c4 = docs("en/debian-reference-en.jsonl", 10);
    let c4_lines: String = c4
        .iter()
        .map(|d| {
            serde_json::json!({"text": d.text, "timestamp": "2019-04-25T12:57:54Z", "url": format!("https://c4.example/{}", d.path)})
                .to_string()
                + "\n"
        })
        .collect();
    root.write("c4/e.json.gz", gzip(c4_lines.as_bytes()).await.into())
        .await
        .unwrap();
    expected.extend(c4.iter().map(|d| Out {
        id: content_id("e", &d.text),
        text: d.text.clone(),
        source: "e".into(),
        url: Some(format!("https://c4.example/{}", d.path)),
        meta: Some("{\"timestamp\":\"2019-04-25T12:57:54Z\"}".into()),
    }));

    root.write("README.md", Bytes::from_static(b"not a shard"))
        .await
        .unwrap();
    expected.sort();
    expected
}

async fn every_format_round_trips(input: Location, out: Location) {
    let expected = write_every_format(&input).await;
    let settings = settings(vec![input.url()], IngestOptions::default());
    let summary = run(&settings, &out, Job::ALL).await.unwrap();
    assert_eq!(summary.files, 5, "README.md is not a shard");
    assert_eq!(summary.documents, expected.len() as u64);
    assert_eq!(summary.skipped, 0);
    assert_eq!(read_output(&out).await, expected);

    let manifest = manifest(&out, "_manifest.json").await;
    assert!(manifest.complete);
    assert_eq!(manifest.shards.len(), 5);
    assert_eq!(manifest.summary["documents"], expected.len());

    // A rerun reads nothing and changes nothing.
    let again = run(&settings, &out, Job::ALL).await.unwrap();
    assert_eq!(again.files_read, 0);
    assert_eq!(read_output(&out).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_from_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    every_format_round_trips(
        local(&dir.path().join("in")),
        local(&dir.path().join("out")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_from_s3() {
    let bucket = s3_bucket("formats");
    let input = Location::parse(&format!("{bucket}/raw/2024")).unwrap();
    let out = Location::parse(&format!("{bucket}/normalised")).unwrap();
    every_format_round_trips(input, out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_forced_format_and_custom_columns() {
    let dir = tempfile::tempdir().unwrap();
    let input = local(&dir.path().join("in"));
    let docs = docs("ru/debian-faq-ru.jsonl", 17);
    // A domain dump with its own column names and an extension that says nothing.
    let lines: String = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"doc_id": i, "body": d.text, "origin": "faq"}).to_string() + "\n"
        })
        .collect();
    input
        .write("dump/part-0.data", Bytes::from(lines))
        .await
        .unwrap();
    input
        .write(
            "dump/part-1.txt",
            Bytes::from_static(b"{\"body\": \"x\"}\n"),
        )
        .await
        .unwrap();
    let out = local(&dir.path().join("out"));
    let settings = settings(
        vec![format!("{}/dump/*.data", dir.path().join("in").display())],
        IngestOptions {
            format: Some("jsonl".into()),
            text_field: Some("body".into()),
            id_field: Some("doc_id".into()),
            source_field: Some("origin".into()),
            ..Default::default()
        },
    );
    run(&settings, &out, Job::ALL).await.unwrap();
    let output = read_output(&out).await;
    assert_eq!(output.len(), 17, "only the globbed file");
    let mut expected: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (i.to_string(), d.text.clone()))
        .collect();
    expected.sort();
    let got: Vec<(String, String)> = output
        .iter()
        .map(|o| (o.id.clone(), o.text.clone()))
        .collect();
    assert_eq!(got, expected);
    assert!(output.iter().all(|o| o.source == "faq" && o.meta.is_none()));
}
