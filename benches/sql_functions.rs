//! Throughput of the SQL text functions on real mixed text from the test corpus (Russian, English,
//! code), one core, called through their Rust entry points exactly as the UDFs call them per row;
//! and near dedup in documents per second (all cores).
//!
//! Run: `cargo bench --bench sql_functions` (release) or `cargo bench --profile dev --bench sql_functions`.
use std::path::PathBuf;
use std::time::Instant;

use dapt_sql::functions::classifier::{Classifier, TrainOptions};
use dapt_sql::functions::minhash::MinHasher;
use dapt_sql::functions::{lang, quality, script, stats};

/// The test corpus (built by `scripts/test-data`; a missing folder fails naming that command).
fn corpus() -> PathBuf {
    dapt_test_data::corpus("")
}

fn texts(bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    for file in [
        "ru/gimp-help-ru.jsonl",
        "en/python3.11-doc.jsonl",
        "ru/fortunes-ru.jsonl",
        "code/rust-src.jsonl",
        "en/fortunes.jsonl",
    ] {
        let text = std::fs::read_to_string(corpus().join(file)).expect("test corpus");
        let mut taken = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap().to_string();
            taken += t.len();
            total += t.len();
            out.push(t);
            if taken > bytes / 5 {
                break;
            }
        }
    }
    println!(
        "corpus: {} documents, {:.1} MB",
        out.len(),
        total as f64 / 1e6
    );
    out
}

fn measure(name: &str, texts: &[String], f: impl Fn(&str) -> f64) {
    let bytes: usize = texts.iter().map(String::len).sum();
    let started = Instant::now();
    let mut sink = 0.0;
    for t in texts {
        sink += f(t);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>8.1} MB/s {:>10.0} docs/s   (checksum {sink:.1})",
        bytes as f64 / 1e6 / seconds,
        texts.len() as f64 / seconds
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let docs = texts(10_000_000);
    let en_stop = quality::stop_words("en").unwrap();
    measure("xxhash64", &docs, |t| {
        (xxhash_rust::xxh64::xxh64(t.as_bytes(), 0) & 1) as f64
    });
    measure("lang_id", &docs, |t| {
        lang::lang_id(t).map_or(0.0, |c| c.len() as f64)
    });
    measure("script_ratio(Cyrillic)", &docs, |t| {
        script::script_ratio(t, script::Script::Cyrillic)
    });
    measure("text_stats", &docs, |t| {
        stats::TextStats::of(t).words as f64
    });
    measure("gopher_quality", &docs, |t| {
        quality::gopher(t, en_stop) as u8 as f64
    });
    measure("c4_quality", &docs, |t| quality::c4(t) as u8 as f64);
    measure("fineweb_quality", &docs, |t| {
        quality::fineweb(t) as u8 as f64
    });
    let hasher = MinHasher::new(5, 128, 1);
    measure("minhash(k=5, 128 perms)", &docs, |t| {
        (hasher.signature(t)[0] & 1) as f64
    });
    let examples: Vec<(String, bool)> = docs
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i % 2 == 0))
        .collect();
    let classifier = Classifier::train(
        &examples[..2000.min(examples.len())],
        &TrainOptions {
            epochs: 1,
            ..Default::default()
        },
    );
    measure("classify", &docs, |t| classifier.score(t));

    // Near dedup end to end (signatures on all cores, LSH, verification).
    let rows: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i:08}"), t.clone()))
        .collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("text", arrow::datatypes::DataType::Utf8, false),
    ]));
    let batches: Vec<Result<arrow::array::RecordBatch, String>> = rows
        .chunks(4096)
        .map(|c| {
            Ok(arrow::array::RecordBatch::try_new(
                schema.clone(),
                vec![
                    std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                        c.iter().map(|r| r.0.as_str()),
                    )),
                    std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                        c.iter().map(|r| r.1.as_str()),
                    )),
                ],
            )
            .unwrap())
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let started = Instant::now();
    let found = runtime
        .block_on(dapt_mixer::near_duplicates(
            futures::stream::iter(batches),
            "id",
            "text",
            &Default::default(),
        ))
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{:<28} {:>10.0} docs/s  ({} documents, {} in duplicate clusters, {} threads)",
        "near dedup",
        rows.len() as f64 / seconds,
        rows.len(),
        found.len(),
        rayon::current_num_threads()
    );
}
