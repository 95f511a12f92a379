//! Fixtures: real documents, shards in every format, an S3 server, and reading outputs back.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use dapt_core::{parquet_io, Location, Manifest};
use dapt_ingest::{ingest, IngestOptions, IngestSettings, IngestSummary, Job};
use object_store::ObjectStoreExt;

/// The test corpus (built by `scripts/test-data`; a missing folder fails naming that command).
pub fn corpus() -> PathBuf {
    dapt_test_data::corpus("")
}

/// A real document: its text plus the fields the corpus records.
#[derive(Clone, Debug)]
pub struct Doc {
    pub text: String,
    pub path: String,
}

/// `n` documents from a corpus file, e.g. `ru/debian-faq-ru.jsonl`.
pub fn docs(file: &str, n: usize) -> Vec<Doc> {
    let text = std::fs::read_to_string(corpus().join(file))
        .unwrap_or_else(|e| panic!("test corpus file {file}: {e}"));
    text.lines()
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Doc {
                text: v["text"].as_str().unwrap().to_string(),
                path: v["path"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// JSON lines of documents with the corpus's fields plus an id.
pub fn jsonl(docs: &[Doc], id_prefix: &str) -> String {
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"id": format!("{id_prefix}-{i}"), "text": d.text, "path": d.path})
                .to_string()
                + "\n"
        })
        .collect()
}

pub async fn gzip(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut encoder = async_compression::tokio::write::GzipEncoder::new(Vec::new());
    encoder.write_all(data).await.unwrap();
    encoder.shutdown().await.unwrap();
    encoder.into_inner()
}

pub async fn zstd(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut encoder = async_compression::tokio::write::ZstdEncoder::new(Vec::new());
    encoder.write_all(data).await.unwrap();
    encoder.shutdown().await.unwrap();
    encoder.into_inner()
}

/// A FineWeb-layout Parquet file (`text, id, dump, url, date, language, language_score,
/// token_count`), in row groups of 7 rows.
pub fn fineweb_parquet(docs: &[Doc]) -> Bytes {
    let schema = Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("dump", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("language", DataType::Utf8, true),
        Field::new("token_count", DataType::Int64, true),
    ]));
    let batches: Vec<RecordBatch> = docs
        .chunks(7)
        .enumerate()
        .map(|(chunk, docs)| {
            let base = chunk * 7;
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        docs.iter().map(|d| d.text.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..docs.len()).map(|i| format!("<urn:uuid:{}>", base + i)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        docs.iter().map(|_| "CC-MAIN-2024-10"),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        docs.iter()
                            .map(|d| format!("https://example.org/{}", d.path)),
                    )),
                    Arc::new(StringArray::from_iter_values(docs.iter().map(|_| "ru"))),
                    Arc::new(Int64Array::from_iter_values(
                        docs.iter().map(|d| d.text.len() as i64 / 4),
                    )),
                ],
            )
            .unwrap()
        })
        .collect();
    parquet_io::encode(schema, &batches, &BTreeMap::new(), "fixture").unwrap()
}

/// A document as it comes out of ingest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Out {
    pub id: String,
    pub text: String,
    pub source: String,
    pub url: Option<String>,
    pub meta: Option<String>,
}

/// Every document of every Parquet shard below `out`, sorted.
pub async fn read_output(out: &Location) -> Vec<Out> {
    let mut docs = Vec::new();
    for meta in out.list_objects().await.unwrap() {
        if !meta.location.as_ref().ends_with(".parquet") {
            continue;
        }
        let bytes = out
            .store()
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (batches, _) = parquet_io::decode(bytes, "output").unwrap();
        for batch in batches {
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_string::<i32>()
                    .clone()
            };
            let (id, text, source, url, meta) = (
                col("id"),
                col("text"),
                col("source"),
                col("url"),
                col("meta"),
            );
            for i in 0..batch.num_rows() {
                docs.push(Out {
                    id: id.value(i).into(),
                    text: text.value(i).into(),
                    source: source.value(i).into(),
                    url: url.is_valid(i).then(|| url.value(i).into()),
                    meta: meta.is_valid(i).then(|| meta.value(i).into()),
                });
            }
        }
    }
    docs.sort();
    docs
}

pub async fn manifest(out: &Location, name: &str) -> Manifest {
    serde_json::from_slice(&out.read(name).await.unwrap()).unwrap()
}

pub fn settings(inputs: Vec<String>, options: IngestOptions) -> IngestSettings {
    IngestSettings::try_from(IngestOptions { inputs, ..options }).unwrap()
}

pub async fn run(
    settings: &IngestSettings,
    out: &Location,
    job: Job,
) -> dapt_ingest::Result<IngestSummary> {
    ingest(settings, out.clone(), "test-config", job, Arc::new(|_| {})).await
}

/// A local temporary directory as a location.
pub fn local(dir: &std::path::Path) -> Location {
    Location::parse(dir.to_str().unwrap()).unwrap()
}

#[path = "../../../tests/support/s3.rs"]
mod s3;
use s3::S3Server;

/// The process id of the `timeout` that runs the test server, for [`stop_s3_server`].
static SERVER_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs when the test binary exits (statics are never dropped): SIGTERM to `timeout`, which passes it
/// on to the server, so that no server outlives the tests.
extern "C" fn stop_s3_server() {
    let pid = SERVER_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid != 0 {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

/// The test S3 server, started once per test binary and stopped when it exits; the AWS_* variables
/// point object_store at it.
fn s3_server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = S3Server::start().unwrap();
        SERVER_PID.store(server.process_id(), std::sync::atomic::Ordering::SeqCst);
        // SAFETY: registers a plain function with the C runtime; it touches only an atomic.
        unsafe {
            atexit(stop_s3_server);
        }
        // Set once, before any S3 location is built.
        for (key, value) in server.env() {
            std::env::set_var(key, value);
        }
        server
    })
}

/// A fresh bucket on the test S3 server; returns its `s3://` URL.
pub fn s3_bucket(name: &str) -> String {
    s3_server().bucket(name).unwrap()
}
