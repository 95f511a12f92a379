//! Tokenisation throughput: HF `tokenizers`' own `encode_batch_fast` over a mixed corpus (Russian,
//! English, code from the test data) against `dapt pack` end to end over the same documents (read
//! Parquet through SQL, tokenise, pack, write Parquet), with the same tokenizer on the same machine.
//! Prints MB/s, tokens/s, the ratio, and pack's peak RSS.
//!
//! Run: `cargo bench --bench pack` (release) or `cargo bench --profile dev --bench pack`;
//! `DAPT_BENCH_MB` caps the corpus (default: all of it), `DAPT_BENCH_HF_PACK=1` also packs with HF,
//! `DAPT_BENCH_DATATROVE_PYTHON=/path/to/python` (a Python with `datatrove` and `orjson`) also runs
//! datatrove's tokenizer pipeline (JsonlReader → DocumentTokenizer, 2 tasks on 2 workers) over the
//! same JSONL files in the same run, the fair comparison on a shared machine whose speed drifts.
//! Then `dapt pack --shard i/n` with 1 and 2 one-thread processes: the job array's speed-up.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The test data (built by `scripts/test-data`; a missing folder fails naming that command).
/// Files of the even corpus the job-array form packs.
const ARRAY_FILES: usize = 32;

fn test_data() -> PathBuf {
    dapt_test_data::dir()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The whole test corpus (≈82 MB of text: ru, en, code, math, bilingual), as in the peers' benchmark,
    // unless DAPT_BENCH_MB caps it.
    let cap: Option<usize> = std::env::var("DAPT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|mb: usize| mb * 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let files = dapt_test_data::corpus_files();
    let mut texts = Vec::new();
    let mut taken = 0;
    'files: for file in &files {
        let mut lines = String::new();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            if cap.is_some_and(|cap| taken >= cap) {
                std::fs::write(raw.join(file.file_name().unwrap()), &lines).unwrap();
                break 'files;
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            taken += text.len();
            texts.push(text);
            lines.push_str(line);
            lines.push('\n');
        }
        std::fs::write(raw.join(file.file_name().unwrap()), lines).unwrap();
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let tokenizer_path = test_data().join("tokenizers/qwen3/tokenizer.json");
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
    drop(encoded);
    let raw_rate = bytes as f64 / 1e6 / seconds;
    println!(
        "HF encode_batch_fast        {raw_rate:>7.2} MB/s {:>10.0} tokens/s",
        tokens as f64 / seconds
    );
    let fast =
        dapt_packer::TokenizerFile::load_with(&tokenizer_path, dapt_packer::EncoderChoice::Fast)
            .unwrap();
    let ids: Vec<String> = (0..texts.len()).map(|i| i.to_string()).collect();
    let started = Instant::now();
    let fast_tokens: usize = fast
        .encode_all(&ids, &texts)
        .unwrap()
        .iter()
        .map(Vec::len)
        .sum();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(fast_tokens, tokens);
    let fast_rate = bytes as f64 / 1e6 / seconds;
    println!(
        "fast encoder (encode_all)   {fast_rate:>7.2} MB/s {:>10.0} tokens/s  = {:.2}x HF",
        tokens as f64 / seconds,
        fast_rate / raw_rate
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
    succeeded(&status);
    let mut datatrove_rate = 1.8; // measured on this machine class when the issue was filed
    if let Ok(python) = std::env::var("DAPT_BENCH_DATATROVE_PYTHON") {
        let script = dir.path().join("datatrove_tokenize.py");
        std::fs::write(&script, DATATROVE_SCRIPT).unwrap();
        let started = Instant::now();
        let output = Command::new(python)
            .arg(&script)
            .arg(&raw)
            .arg(&tokenizer_path)
            .arg(dir.path().join("datatrove"))
            .output()
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        succeeded(&output);
        datatrove_rate = bytes as f64 / 1e6 / seconds;
        println!(
            "datatrove DocumentTokenizer {datatrove_rate:>7.2} MB/s {:>10.0} tokens/s  (2 workers, same run)",
            tokens as f64 / seconds
        );
    }
    for encoder in ["fast", "hf"] {
        if encoder == "hf" && std::env::var("DAPT_BENCH_HF_PACK").is_err() {
            continue; // slow; set DAPT_BENCH_HF_PACK=1 to run it too
        }
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
                "--encoder",
                encoder,
                "--out",
            ])
            .arg(dir.path().join(format!("packed-{encoder}")))
            .env("DAPT_LOG", "warn")
            .output()
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        succeeded(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let rss = stdout
            .split("peak RSS ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?");
        let pack_rate = bytes as f64 / 1e6 / seconds;
        println!(
            "dapt pack --encoder {encoder:<5}   {pack_rate:>7.2} MB/s {:>10.0} tokens/s  = {:.2}x HF encode_batch_fast, {:.2}x the same encoder raw, {:.1}x datatrove ({datatrove_rate:.2} MB/s); peak RSS {rss} MB",
            tokens as f64 / seconds,
            pack_rate / raw_rate,
            pack_rate / if encoder == "fast" { fast_rate } else { raw_rate },
            pack_rate / datatrove_rate,
        );
    }

    // The job-array form (`--shard i/n`), 1 and then 2 processes of one thread each: the speed-up
    // of the processes alone, and the merged output's documents equal to one process's. A job array
    // splits a Document directory by its files, so the corpus goes in as many files of even size (as
    // a crawl's shards are), documents dealt round-robin.
    let even = dir.path().join("raw-even");
    std::fs::create_dir_all(&even).unwrap();
    let mut parts = vec![String::new(); ARRAY_FILES];
    for (i, text) in texts.iter().enumerate() {
        let row = serde_json::json!({ "id": format!("doc-{i:08}"), "text": text });
        parts[i % ARRAY_FILES].push_str(&format!("{row}\n"));
    }
    for (i, part) in parts.iter().enumerate() {
        std::fs::write(even.join(format!("part-{i:03}.jsonl")), part).unwrap();
    }
    drop(parts);
    let docs = dir.path().join("docs-even");
    succeeded(
        &Command::new(dapt)
            .args([
                "ingest",
                even.to_str().unwrap(),
                "--out",
                docs.to_str().unwrap(),
            ])
            .env("DAPT_LOG", "warn")
            .output()
            .unwrap(),
    );
    // Each process on a core of its own (`taskset`, where there is one): a "one-thread" process still
    // decodes, sorts and compresses on helper threads (≈1.4 cores busy), so only pinning measures what a
    // second process adds.
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut seconds_of = [f64::MAX; 2];
    let mut documents_of = [0u64; 2];
    for round in 0..rounds {
        for (slot, jobs) in [1usize, 2].into_iter().enumerate() {
            let out = dir.path().join(format!("array-{jobs}-{round}"));
            let started = Instant::now();
            let children: Vec<_> = (0..jobs)
                .map(|i| {
                    let mut command = if taskset {
                        let mut command = Command::new("taskset");
                        command.args(["-c", &i.to_string(), dapt]);
                        command
                    } else {
                        Command::new(dapt)
                    };
                    command
                        .args([
                            "pack",
                            "--input",
                            docs.to_str().unwrap(),
                            "--tokenizer",
                            tokenizer_path.to_str().unwrap(),
                            "--seq-len",
                            "2048",
                            "--shard",
                            &format!("{i}/{jobs}"),
                            "--out",
                        ])
                        .arg(&out)
                        .env("DAPT_LOG", "warn")
                        .env("RAYON_NUM_THREADS", "1")
                        .env("TOKIO_WORKER_THREADS", "1")
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for child in children {
                succeeded(&child.wait_with_output().unwrap());
            }
            seconds_of[slot] = seconds_of[slot].min(started.elapsed().as_secs_f64());
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap())
                    .unwrap();
            documents_of[slot] = manifest["summary"]["documents"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!(
        documents_of[0], documents_of[1],
        "the array packed other documents"
    );
    println!(
        "dapt pack --shard i/n      1 process {:.2} s ({:.2} MB/s), 2 processes {:.2} s ({:.2} MB/s): {:.2}x ({}, best of {rounds}; {} documents either way, {ARRAY_FILES} Document files)",
        seconds_of[0],
        bytes as f64 / 1e6 / seconds_of[0],
        seconds_of[1],
        bytes as f64 / 1e6 / seconds_of[1],
        seconds_of[0] / seconds_of[1],
        if taskset { "one core per process" } else { "one thread each, not pinned: taskset not found" },
        documents_of[0]
    );
}

/// datatrove's tokenisation pipeline as its docs show it: `python script.py JSONL_DIR TOKENIZER OUT`.
const DATATROVE_SCRIPT: &str = r#"
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer

if __name__ == "__main__":
    src, tokenizer, out = sys.argv[1], sys.argv[2], sys.argv[3]
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(src),
            DocumentTokenizer(
                output_folder=out + "/tokenized",
                local_working_dir=out + "/work",
                tokenizer_name_or_path=tokenizer,
                eos_token="<|endoftext|>",
            ),
        ],
        tasks=2,
        workers=2,
        logging_dir=out + "/logs",
    ).run()
"#;

/// Fails the bench with a child's stderr when it failed.
fn succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
