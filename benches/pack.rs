//! Tokenisation throughput: HF `tokenizers`' own `encode_batch_fast` over a mixed corpus (Russian,
//! English, code from the shared data) against `dapt pack` end to end over the same documents (read
//! Parquet through SQL, tokenise, pack, write Parquet), with the same tokenizer on the same machine.
//! Prints MB/s, tokens/s, the ratio, and pack's peak RSS.
//!
//! Run: `cargo bench --bench pack` (release) or `cargo bench --profile dev --bench pack`;
//! `DAPT_BENCH_MB` sets the corpus size (default 20).
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn shared() -> PathBuf {
    std::env::var("DAPT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let megabytes: usize = std::env::var("DAPT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let mut texts = Vec::new();
    let per_file = megabytes * 1_000_000 / 4;
    for file in [
        "ru/gimp-help-ru.jsonl",
        "ru/debian-handbook-ru.jsonl",
        "en/python3.11-doc.jsonl",
        "code/rust-src.jsonl",
    ] {
        let mut lines = String::new();
        let mut taken = 0;
        for line in std::fs::read_to_string(shared().join("corpus").join(file))
            .unwrap()
            .lines()
        {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            taken += text.len();
            texts.push(text);
            lines.push_str(line);
            lines.push('\n');
            if taken >= per_file {
                break;
            }
        }
        std::fs::write(raw.join(file.replace('/', "-")), lines).unwrap();
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let tokenizer_path = shared().join("tokenizers/qwen3/tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).unwrap();
    println!(
        "corpus: {} documents, {:.1} MB; Qwen3 tokenizer; {} threads",
        texts.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );

    let started = Instant::now();
    let encoded = tokenizer.encode_batch_fast(texts.clone(), false).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = encoded.iter().map(|e| e.len()).sum();
    let raw_rate = bytes as f64 / 1e6 / seconds;
    println!(
        "HF encode_batch_fast   {raw_rate:>7.2} MB/s {:>10.0} tokens/s",
        tokens as f64 / seconds
    );

    let docs = dir.path().join("docs");
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let status = Command::new(dapt)
        .args([
            "ingest",
            raw.to_str().unwrap(),
            "--out",
            docs.to_str().unwrap(),
        ])
        .env("DAPT_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let started = Instant::now();
    let output = Command::new(dapt)
        .args([
            "pack",
            "--input",
            docs.to_str().unwrap(),
            "--tokenizer",
            tokenizer_path.to_str().unwrap(),
            "--seq-len",
            "2048",
            "--out",
        ])
        .arg(dir.path().join("packed"))
        .env("DAPT_LOG", "warn")
        .output()
        .unwrap();
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
    let pack_rate = bytes as f64 / 1e6 / seconds;
    println!(
        "dapt pack (end to end) {pack_rate:>7.2} MB/s {:>10.0} tokens/s  = {:.2}x raw encode; peak RSS {rss} MB",
        tokens as f64 / seconds,
        pack_rate / raw_rate
    );
}
