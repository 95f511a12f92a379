//! Ingest throughput and memory: `dapt ingest` over jsonl.zst and FineWeb-layout Parquet shards built
//! from the test corpus, at 1× and 10× input size. Prints MB/s (of uncompressed text), docs/s and the
//! process's peak RSS; bounded memory shows as equal peak RSS at both sizes.
//!
//! Run: `cargo bench --bench ingest` (release) or `cargo bench --profile dev --bench ingest`.
//! `DAPT_BENCH_SCALE` multiplies the base size (default 1 = about 20 MB of text).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

/// The test corpus (built by `scripts/test-data`; a missing folder fails naming that command).
fn corpus() -> PathBuf {
    dapt_test_data::corpus("")
}

/// Documents (text, path) from a mix of Russian, English and code sources, about `bytes` of text.
fn documents(bytes: usize) -> Vec<(String, String)> {
    let files = [
        "ru/gimp-help-ru.jsonl",
        "ru/fortunes-ru.jsonl",
        "en/python3.11-doc.jsonl",
        "en/fortunes.jsonl",
        "code/rust-src.jsonl",
    ];
    let mut out = Vec::new();
    let mut total = 0;
    for file in files.iter().cycle() {
        let text = std::fs::read_to_string(corpus().join(file)).expect("test corpus");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap().to_string();
            total += t.len();
            out.push((t, v["path"].as_str().unwrap().to_string()));
            if total >= bytes {
                return out;
            }
            if out.len() % 5000 == 0 {
                break; // move on to the next source to keep the mix
            }
        }
    }
    out
}

fn write_zst(dir: &Path, docs: &[(String, String)], files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, chunk) in docs.chunks(docs.len().div_ceil(files)).enumerate() {
        let plain: String = chunk
            .iter()
            .map(|(t, p)| serde_json::json!({"text": t, "path": p}).to_string() + "\n")
            .collect();
        let compressed = zstd_compress(plain.as_bytes());
        std::fs::write(dir.join(format!("part-{i:04}.jsonl.zst")), compressed).unwrap();
    }
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-3", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output.stdout
}

fn write_parquet(dir: &Path, docs: &[(String, String)], files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("dump", DataType::Utf8, false),
    ]));
    for (i, chunk) in docs.chunks(docs.len().div_ceil(files)).enumerate() {
        let batches: Vec<RecordBatch> = chunk
            .chunks(2000)
            .enumerate()
            .map(|(j, rows)| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|r| r.0.as_str()),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            (0..rows.len()).map(|k| format!("<urn:uuid:{i}-{j}-{k}>")),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|r| format!("https://example.org/{}", r.1)),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|_| "CC-MAIN-2024-10"),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        let bytes =
            dapt_core::parquet_io::encode(schema.clone(), &batches, &BTreeMap::new(), "bench")
                .unwrap();
        std::fs::write(dir.join(format!("part-{i:04}.parquet")), bytes).unwrap();
    }
}

fn ingest(input: &Path, out: &Path, text_bytes: usize, docs: usize, label: &str) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_dapt"))
        .arg("ingest")
        .arg(input)
        .arg("--out")
        .arg(out)
        .env("DAPT_LOG", "warn")
        .output()
        .expect("dapt runs");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rss = stdout
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    println!(
        "{label:<24} {:>8.1} MB text  {:>7.1} MB/s  {:>9.0} docs/s  peak RSS {rss:>5} MB",
        text_bytes as f64 / 1e6,
        text_bytes as f64 / 1e6 / seconds,
        docs as f64 / seconds,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list themselves
    }
    let scale: usize = std::env::var("DAPT_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = documents(20_000_000 * scale);
    let base_bytes: usize = base.iter().map(|d| d.0.len()).sum();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "dapt ingest: {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (times, files) in [(1, 8), (10, 80)] {
        let docs: Vec<(String, String)> = (0..times).flat_map(|_| base.iter().cloned()).collect();
        let zst = dir.path().join(format!("zst-{times}"));
        let parquet = dir.path().join(format!("parquet-{times}"));
        write_zst(&zst, &docs, files);
        write_parquet(&parquet, &docs, files);
        ingest(
            &zst,
            &dir.path().join(format!("out-zst-{times}")),
            base_bytes * times,
            docs.len(),
            &format!("jsonl.zst {times}x"),
        );
        ingest(
            &parquet,
            &dir.path().join(format!("out-pq-{times}")),
            base_bytes * times,
            docs.len(),
            &format!("parquet {times}x"),
        );
        std::fs::remove_dir_all(&zst).ok();
        std::fs::remove_dir_all(&parquet).ok();
    }
}
