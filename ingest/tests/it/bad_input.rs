//! Bad input: under `fail` the error names object, line and reason; under `skip` every skipped record
//! is listed in the manifest and every good record still comes out.
use std::sync::Arc;

use bytes::Bytes;
use dapt_core::{Location, SkipRecord};
use dapt_ingest::{DocumentReader, ErrorPolicy, Format, IngestOptions, IngestSettings, Job};
use object_store::ObjectStoreExt;

use crate::common::*;

fn line(text: &str, id: &str) -> String {
    serde_json::json!({"id": id, "text": text}).to_string() + "\n"
}

/// A JSON-lines shard with one bad record of each kind among good ones; returns its bytes, the good
/// texts, and the expected (line, reason prefix) of each bad one.
fn mixed_shard() -> (Vec<u8>, Vec<String>, Vec<(u64, &'static str)>) {
    let good = docs("ru/fortunes-ru.jsonl", 5);
    let mut bytes = Vec::new();
    bytes.extend(line(&good[0].text, "g0").as_bytes());
    bytes.extend(b"{\"id\": \"broken\", \"text\": \"unterminated\n"); // line 2
    bytes.extend(line(&good[1].text, "g1").as_bytes());
    bytes.extend(b"{\"id\": \"latin1\", \"text\": \"caf\xe9\"}\n"); // line 4
    bytes.extend(b"{\"id\": \"notext\", \"body\": \"x\"}\n"); // line 5
    bytes.extend(line(&good[2].text, "g2").as_bytes());
    bytes.extend(b"{\"id\": \"empty\", \"text\": \"\"}\n"); // line 7
    bytes.extend(b"{\"id\": \"number\", \"text\": 42}\n"); // line 8
    bytes.extend(b"\n"); // blank lines are not records
    bytes.extend(line(&good[3].text, "g3").as_bytes()); // line 10
    let texts = good[..4].iter().map(|d| d.text.clone()).collect();
    let bad = vec![
        (2, "malformed JSON"),
        (4, "invalid UTF-8"),
        (5, "no \"text\" field"),
        (7, "empty \"text\""),
        (8, "\"text\" is not a string"),
    ];
    (bytes, texts, bad)
}

fn skip_settings(inputs: Vec<String>) -> IngestSettings {
    settings(
        inputs,
        IngestOptions {
            on_error: ErrorPolicy::Skip,
            batch_size: 2,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn fail_policy_names_object_line_and_reason() {
    let (bytes, _, bad) = mixed_shard();
    let dir = tempfile::tempdir().unwrap();
    let input = local(&dir.path().join("in"));
    input
        .write("mixed.jsonl", Bytes::from(bytes))
        .await
        .unwrap();
    let out = local(&dir.path().join("out"));
    let err = run(
        &settings(vec![input.url()], IngestOptions::default()),
        &out,
        Job::ALL,
    )
    .await
    .unwrap_err()
    .to_string();
    let (line, reason) = bad[0];
    assert!(
        err.contains(&format!(
            "{}/mixed.jsonl line {line}: {reason}",
            input.url()
        )),
        "{err}"
    );
    // Nothing was published for the failed file.
    assert!(read_output(&out).await.is_empty());
}

#[tokio::test]
async fn skip_policy_lists_every_bad_record_and_keeps_the_good_ones() {
    let (bytes, texts, bad) = mixed_shard();
    let dir = tempfile::tempdir().unwrap();
    let input = local(&dir.path().join("in"));
    input
        .write("mixed.jsonl", Bytes::from(bytes))
        .await
        .unwrap();
    let out = local(&dir.path().join("out"));
    let summary = run(&skip_settings(vec![input.url()]), &out, Job::ALL)
        .await
        .unwrap();
    assert_eq!(summary.skipped, bad.len() as u64);
    let mut got: Vec<String> = read_output(&out)
        .await
        .into_iter()
        .map(|o| o.text)
        .collect();
    let mut want = texts;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let manifest = manifest(&out, "_manifest.json").await;
    let object = format!("{}/mixed.jsonl", input.url());
    assert_eq!(manifest.skipped.len(), bad.len());
    for (record, (line, reason)) in manifest.skipped.iter().zip(&bad) {
        assert_eq!(record.object, object);
        assert_eq!(record.line, Some(*line));
        assert!(record.reason.starts_with(reason), "{record:?}");
    }
    assert_eq!(manifest.summary["skipped"], bad.len());
}

/// Truncated compressed streams: `fail` names the object and the line where reading stopped; `skip`
/// keeps every document before the cut and records the truncation.
#[tokio::test]
async fn truncated_gzip_and_zstd() {
    // Large enough that the cut falls after several zstd blocks (128 KB each).
    let all = docs("en/fortunes.jsonl", 2000);
    let plain = jsonl(&all, "f");
    for (name, compressed, what) in [
        ("cut.jsonl.gz", gzip(plain.as_bytes()).await, "gzip stream"),
        ("cut.jsonl.zst", zstd(plain.as_bytes()).await, "zstd stream"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = local(&dir.path().join("in"));
        let cut = compressed.len() / 2;
        input
            .write(name, Bytes::from(compressed[..cut].to_vec()))
            .await
            .unwrap();
        let object = format!("{}/{name}", input.url());

        let out = local(&dir.path().join("fail"));
        let err = run(
            &settings(vec![input.url()], IngestOptions::default()),
            &out,
            Job::ALL,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&object) && err.contains(&format!("truncated or corrupt {what}")),
            "{err}"
        );

        let out = local(&dir.path().join("skip"));
        run(&skip_settings(vec![input.url()]), &out, Job::ALL)
            .await
            .unwrap();
        let output = read_output(&out).await;
        let kept = output.len();
        assert!(kept > 200 && kept < 2000, "{name}: kept {kept}");
        // What was kept is exactly a prefix of the shard.
        let mut ids: Vec<usize> = output.iter().map(|o| o.id[2..].parse().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (0..kept).collect::<Vec<_>>());
        let manifest = manifest(&out, "_manifest.json").await;
        assert_eq!(manifest.skipped.len(), 1);
        let SkipRecord {
            object: o,
            line,
            reason,
        } = &manifest.skipped[0];
        assert_eq!(o, &object);
        assert!(
            line.unwrap() > kept as u64,
            "{line:?} after {kept} good lines"
        );
        assert!(
            reason.starts_with(&format!("truncated or corrupt {what}")),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn corrupt_parquet() {
    let good = fineweb_parquet(&docs("ru/debian-faq-ru.jsonl", 17));
    let dir = tempfile::tempdir().unwrap();
    let input = local(&dir.path().join("in"));
    let mut broken = good.to_vec();
    broken.truncate(broken.len() - 20); // the footer is gone
    input
        .write("broken.parquet", Bytes::from(broken))
        .await
        .unwrap();
    input.write("good.parquet", good).await.unwrap();
    let object = format!("{}/broken.parquet", input.url());

    let out = local(&dir.path().join("fail"));
    let err = run(
        &settings(vec![input.url()], IngestOptions::default()),
        &out,
        Job::ALL,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&object) && err.contains("corrupt or unreadable Parquet"),
        "{err}"
    );

    let out = local(&dir.path().join("skip"));
    run(&skip_settings(vec![input.url()]), &out, Job::ALL)
        .await
        .unwrap();
    assert_eq!(
        read_output(&out).await.len(),
        17,
        "the good file is read in full"
    );
    let manifest = manifest(&out, "_manifest.json").await;
    assert_eq!(manifest.skipped.len(), 1);
    assert_eq!(manifest.skipped[0].object, object);
    assert_eq!(manifest.skipped[0].line, None);
    assert!(manifest.skipped[0]
        .reason
        .contains("corrupt or unreadable Parquet"));
}

/// Ingests a FineWeb-layout Parquet file of three documents with `text_field` as the text column;
/// returns the result and the temporary directory (input in `in/`, output in `out/`).
async fn ingest_web_parquet(
    text_field: &str,
    on_error: ErrorPolicy,
) -> (
    dapt_ingest::Result<dapt_ingest::IngestSummary>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let input = local(&dir.path().join("in"));
    input
        .write(
            "web.parquet",
            fineweb_parquet(&docs("ru/debian-faq-ru.jsonl", 3)),
        )
        .await
        .unwrap();
    let out = local(&dir.path().join("out"));
    let options = IngestOptions {
        text_field: Some(text_field.into()),
        on_error,
        ..Default::default()
    };
    let result = run(&settings(vec![input.url()], options), &out, Job::ALL).await;
    (result, dir)
}

#[tokio::test]
async fn parquet_without_the_text_column_names_the_columns() {
    let (result, _dir) = ingest_web_parquet("content", ErrorPolicy::Fail).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("no text column \"content\"") && err.contains("text, id, dump"),
        "{err}"
    );
}

#[tokio::test]
async fn a_parquet_text_column_that_is_not_text_is_refused() {
    let (result, _dir) = ingest_web_parquet("token_count", ErrorPolicy::Fail).await;
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("text column \"token_count\" holds Int64, not strings"),
        "{err}"
    );
    // Under `skip` the object is listed as skipped, and no number becomes a document.
    let (result, _dir) = ingest_web_parquet("token_count", ErrorPolicy::Skip).await;
    let summary = result.unwrap();
    assert_eq!(summary.documents, 0);
    assert_eq!(summary.skipped, 1);
}

/// An object listed but gone when it is read (deleted by another process in between).
#[tokio::test]
async fn vanished_object() {
    let bucket = s3_bucket("vanishing");
    let input = Location::parse(&format!("{bucket}/raw")).unwrap();
    input
        .write("gone.jsonl", Bytes::from(line("text", "1")))
        .await
        .unwrap();
    let listed = input.list_objects().await.unwrap().remove(0);
    input.store().delete(&listed.location).await.unwrap();
    for (policy, expect_error) in [(ErrorPolicy::Fail, true), (ErrorPolicy::Skip, false)] {
        let settings = Arc::new(settings(
            vec![input.url()],
            IngestOptions {
                on_error: policy,
                ..Default::default()
            },
        ));
        let mut reader = DocumentReader::new(
            input.clone(),
            listed.location.clone(),
            listed.size,
            Format::Jsonl,
            settings,
        );
        let result = reader.next_batch().await;
        if expect_error {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("s3://vanishing/raw/gone.jsonl") && err.contains("vanished"),
                "{err}"
            );
        } else {
            assert!(result.unwrap().is_none());
            let skipped = reader.take_skipped();
            assert_eq!(skipped.len(), 1);
            assert!(skipped[0].reason.contains("vanished"), "{skipped:?}");
        }
    }
}

/// A store that refuses every request (HTTP 403) on loopback: the server thread answers at most
/// `requests` connections or stops after 60 seconds, whichever comes first.
fn refusing_store(requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut served = 0;
        while served < requests && std::time::Instant::now() < until {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    served += 1;
                    stream.set_nonblocking(false).ok();
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
                        .ok();
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer);
                    let _ = stream.write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    });
    format!("http://{address}")
}

/// An outage or a refused permission is not a bad record: under `skip` too the read fails, so that
/// nothing is recorded as skipped and a rerun reads the object again (JSON lines and Parquet).
#[tokio::test]
async fn a_store_failure_is_never_a_skipped_record() {
    let endpoint = refusing_store(8);
    let options = std::collections::BTreeMap::from([
        ("aws_endpoint".to_string(), endpoint),
        ("aws_access_key_id".to_string(), "testing".to_string()),
        ("aws_secret_access_key".to_string(), "testing".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
    ]);
    let input = Location::parse_with("s3://refused/raw", &options).unwrap();
    for (name, format) in [("a.jsonl", Format::Jsonl), ("b.parquet", Format::Parquet)] {
        let settings = Arc::new(settings(
            vec![input.url()],
            IngestOptions {
                on_error: ErrorPolicy::Skip,
                ..Default::default()
            },
        ));
        let mut reader =
            DocumentReader::new(input.clone(), input.child(name), 1000, format, settings);
        let err = reader.next_batch().await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("s3://refused/raw/{name}")) && err.contains("the store failed"),
            "{err}"
        );
        assert!(reader.take_skipped().is_empty());
    }
}
