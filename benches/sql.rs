//! `dapt sql` against DuckDB on the same files, whole processes, medians of `DAPT_BENCH_ROUNDS`
//! (default 3) runs, alternating: the test corpus (ru/en/code/math, ≈82 MB of text) as one Parquet
//! file of 8192-row groups (Snappy, as DuckDB writes by default) and as one JSON-lines file.
//! Queries: a filter on length and a Cyrillic regex (Parquet and JSON lines), a `GROUP BY` on a
//! 64-bit hash of the text, and `SELECT 1` (start-up).
//!
//! Run: `cargo bench --profile dev --bench sql` (the build the README's commands make) or
//! `cargo bench --bench sql` (release). `DAPT_BENCH_DUCKDB_PYTHON=/path/to/python` (a Python with
//! `duckdb`) runs DuckDB too (2 threads, as this machine has 2 cores) and prints the ratios.
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("corpus.parquet");
    let jsonl = dir.path().join("corpus.jsonl");
    let (documents, bytes) = write_corpus(&parquet, &jsonl);
    println!(
        "corpus: {documents} documents, {:.1} MB of text; Parquet {:.1} MB (8192-row groups), JSON lines {:.1} MB",
        bytes as f64 / 1e6,
        std::fs::metadata(&parquet).unwrap().len() as f64 / 1e6,
        std::fs::metadata(&jsonl).unwrap().len() as f64 / 1e6,
    );
    let (p, j) = (parquet.display(), jsonl.display());
    // (name, dapt's query, DuckDB's query): the same work in each dialect.
    let queries = [
        (
            "filter, Parquet",
            format!("SELECT count(*), sum(octet_length(text)) FROM '{p}' WHERE character_length(text) > 200 AND regexp_like(text, '[а-яА-Я]')"),
            format!("SELECT count(*), sum(strlen(text)) FROM '{p}' WHERE length(text) > 200 AND regexp_matches(text, '[а-яА-Я]')"),
        ),
        (
            "GROUP BY hash, Parquet",
            format!("SELECT count(*) FROM (SELECT xxhash64(text), count(*) FROM '{p}' GROUP BY 1)"),
            format!("SELECT count(*) FROM (SELECT hash(text), count(*) FROM '{p}' GROUP BY 1)"),
        ),
        (
            "filter, JSON lines",
            format!("SELECT count(*), sum(octet_length(text)) FROM '{j}' WHERE character_length(text) > 200 AND regexp_like(text, '[а-яА-Я]')"),
            format!("SELECT count(*), sum(strlen(text)) FROM read_json('{j}', columns = {{'id': 'VARCHAR', 'text': 'VARCHAR'}}) WHERE length(text) > 200 AND regexp_matches(text, '[а-яА-Я]')"),
        ),
        ("SELECT 1 (start-up)", "SELECT 1".to_string(), "SELECT 1".to_string()),
    ];
    let duckdb = std::env::var("DAPT_BENCH_DUCKDB_PYTHON").ok();
    let script = dir.path().join("duck.py");
    std::fs::write(&script, DUCKDB_SCRIPT).unwrap();
    for (name, dapt_query, duck_query) in &queries {
        let (mut dapt_times, mut duck_times) = (Vec::new(), Vec::new());
        let (mut dapt_answer, mut duck_answer) = (String::new(), String::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let output = Command::new(env!("CARGO_BIN_EXE_dapt"))
                .args(["sql", "--format", "csv", "-e", dapt_query])
                .env("DAPT_LOG", "warn")
                .output()
                .unwrap();
            dapt_times.push(started.elapsed().as_secs_f64());
            dapt_answer = answer(&output);
            if let Some(python) = &duckdb {
                let started = Instant::now();
                let output = Command::new(python)
                    .arg(&script)
                    .arg(duck_query)
                    .output()
                    .unwrap();
                duck_times.push(started.elapsed().as_secs_f64());
                duck_answer = answer(&output);
            }
        }
        let dapt = median(&mut dapt_times);
        if duckdb.is_none() {
            println!("{name:<24} dapt {dapt:>6.2} s  [{dapt_answer}]");
            continue;
        }
        let duck = median(&mut duck_times);
        assert_eq!(dapt_answer, duck_answer, "{name}: dapt and DuckDB disagree");
        println!(
            "{name:<24} dapt {dapt:>6.2} s | DuckDB {duck:>6.2} s | dapt at {:.2}x DuckDB's speed  [{dapt_answer}] (medians of {rounds})",
            duck / dapt
        );
    }
    if duckdb.is_none() {
        println!("DuckDB: set DAPT_BENCH_DUCKDB_PYTHON to compare");
    }
}

/// The first result row, as comma-separated values (the CSV header and DuckDB's tuple stripped).
fn answer(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    line.trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Writes every test-corpus document as `(id, text)` rows: one Parquet file with 8192-row groups
/// and one JSON-lines file.
fn write_corpus(parquet: &Path, jsonl: &Path) -> (usize, usize) {
    let files = dapt_test_data::corpus_files();
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    let mut lines = String::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            let id = format!("{:08}", ids.len());
            lines.push_str(&serde_json::json!({ "id": id, "text": text }).to_string());
            lines.push('\n');
            ids.push(id);
            texts.push(text);
        }
    }
    std::fs::write(jsonl, lines).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(8192))
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(parquet).unwrap(),
        schema.clone(),
        Some(properties),
    )
    .unwrap();
    for (id, text) in ids.chunks(8192).zip(texts.chunks(8192)) {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(id)),
                Arc::new(StringArray::from_iter_values(text)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
    let bytes = texts.iter().map(String::len).sum();
    (texts.len(), bytes)
}

/// One DuckDB query in a fresh process, 2 threads: `python duck.py QUERY`; prints the first row.
const DUCKDB_SCRIPT: &str = r#"
import sys
import duckdb
con = duckdb.connect()
con.execute("SET threads = 2")
row = con.execute(sys.argv[1]).fetchone()
print(",".join(str(v) for v in row))
"#;
