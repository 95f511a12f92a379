//! Near-duplicate detection end to end, as users run it: `dapt dedup near` (one process, all cores)
//! over the test corpus as 8 JSON-lines files (so that each of datatrove's tasks has files to read), against datatrove's four MinHash stages (signatures
//! on 2 workers → 14 bucket tasks → clustering → filtering, 2 workers), whole processes, same run.
//! Each tool uses its defaults: 5-word shingles; dapt 32 bands × 4 rows, verified at Jaccard 0.75;
//! datatrove 14 buckets × 8 hashes. Prints documents per second, the ratio, and what each found.
//!
//! Run: `cargo bench --bench dedup` (release) or `cargo bench --profile dev --bench dedup`;
//! `DAPT_BENCH_MB` caps the corpus; `DAPT_BENCH_DATATROVE_PYTHON=/path/to/python` (a Python with
//! `datatrove` and `orjson`) runs datatrove too; `DAPT_BENCH_ROUNDS` (default 3) rounds each, best
//! round compared. Then the job-array form (`near-signatures|near-links|near-clusters`) with 1 and 2
//! processes of one thread each: the speed-up per step, and the table equal to one process's.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cap = std::env::var("DAPT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(usize::MAX, |mb| mb * 1_000_000);
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jsonl");
    std::fs::create_dir_all(&input).unwrap();
    let (documents, bytes) = write_corpus(&input, cap);
    println!(
        "corpus: {documents} documents, {:.1} MB of text, {FILES} JSON-lines files",
        bytes as f64 / 1e6
    );

    let dapt = env!("CARGO_BIN_EXE_dapt");
    let mut dapt_best = f64::MAX;
    let mut removed = 0;
    for round in 0..rounds {
        let out = dir.path().join(format!("dapt-{round}.parquet"));
        let query = format!("SELECT id, text FROM '{}/'", input.display());
        let started = Instant::now();
        let output = Command::new(dapt)
            .args(["dedup", "near", "-e", &query, "--out"])
            .arg(&out)
            .env("DAPT_LOG", "warn")
            .output()
            .unwrap();
        dapt_best = dapt_best.min(started.elapsed().as_secs_f64());
        succeeded(&output);
        let counted = Command::new(dapt)
            .args(["sql", "--format", "csv", "-e"])
            .arg(format!(
                "SELECT count(*) FROM '{}' WHERE NOT kept",
                out.display()
            ))
            .env("DAPT_LOG", "warn")
            .output()
            .unwrap();
        succeeded(&counted);
        removed = String::from_utf8_lossy(&counted.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<usize>().ok())
            .expect("a count");
    }
    let rate = |seconds: f64| documents as f64 / seconds;
    println!(
        "dapt dedup near        {:>9.0} docs/s {:>7.2} MB/s  {:.2} s, {removed} documents not kept (best of {rounds})",
        rate(dapt_best),
        bytes as f64 / 1e6 / dapt_best,
        dapt_best
    );

    sharded(dapt, dir.path(), &input, rounds);

    let Ok(python) = std::env::var("DAPT_BENCH_DATATROVE_PYTHON") else {
        println!("datatrove: set DAPT_BENCH_DATATROVE_PYTHON to compare");
        return;
    };
    let script = dir.path().join("datatrove_minhash.py");
    std::fs::write(&script, DATATROVE_SCRIPT).unwrap();
    let mut datatrove_best = f64::MAX;
    let mut datatrove_removed = 0;
    for round in 0..rounds {
        let out = dir.path().join(format!("datatrove-{round}"));
        let started = Instant::now();
        let output = Command::new(&python)
            .arg(&script)
            .arg(&input)
            .arg(&out)
            .output()
            .unwrap();
        datatrove_best = datatrove_best.min(started.elapsed().as_secs_f64());
        succeeded(&output);
        datatrove_removed = count_lines(&out.join("removed"));
    }
    println!(
        "datatrove MinHash x4   {:>9.0} docs/s {:>7.2} MB/s  {:.2} s, {datatrove_removed} documents removed (best of {rounds}, 2 workers)",
        rate(datatrove_best),
        bytes as f64 / 1e6 / datatrove_best,
        datatrove_best
    );
    println!(
        "dapt / datatrove: {:.1}x (same run, whole processes)",
        datatrove_best / dapt_best
    );
}

/// The job-array form (`near-signatures` → `near-links` → `near-clusters`) with 1 and then 2
/// processes per array step, each process on one thread (`RAYON_NUM_THREADS=1`,
/// `TOKIO_WORKER_THREADS=1`), so that the speed-up is the processes' alone; every step's best time of
/// `rounds`, and the table checked equal, byte for byte, to the one-process `dapt dedup near`'s.
fn sharded(dapt: &str, dir: &Path, input: &Path, rounds: usize) {
    let query = format!("SELECT id, text FROM '{}/'", input.display());
    let reference = std::fs::read(dir.join("dapt-0.parquet")).unwrap();
    let mut best = [[f64::MAX; 3]; 2];
    for (slot, jobs) in [1usize, 2].into_iter().enumerate() {
        for round in 0..rounds {
            let work = dir.join(format!("work-{jobs}-{round}"));
            let out = dir.join(format!("sharded-{jobs}-{round}.parquet"));
            let work_text = work.display().to_string();
            let count = jobs.to_string();
            let array = |args: Vec<Vec<String>>| -> f64 {
                let started = Instant::now();
                let children: Vec<_> = args
                    .into_iter()
                    .map(|a| {
                        Command::new(dapt)
                            .args(&a)
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
                started.elapsed().as_secs_f64()
            };
            let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
            let signatures = array(
                (0..jobs)
                    .map(|i| {
                        let shard = format!("{i}/{jobs}");
                        strings(&[
                            "dedup",
                            "near-signatures",
                            "-e",
                            &query,
                            "--work",
                            &work_text,
                            "--shard",
                            &shard,
                            "--partitions",
                            &count,
                        ])
                    })
                    .collect(),
            );
            let links = array(
                (0..jobs)
                    .map(|i| {
                        let partition = format!("{i}/{jobs}");
                        strings(&[
                            "dedup",
                            "near-links",
                            "--work",
                            &work_text,
                            "--partition",
                            &partition,
                        ])
                    })
                    .collect(),
            );
            let out_text = out.display().to_string();
            let clusters = array(vec![strings(&[
                "dedup",
                "near-clusters",
                "--work",
                &work_text,
                "--out",
                &out_text,
            ])]);
            assert!(
                std::fs::read(&out).unwrap() == reference,
                "{jobs} jobs: the table differs from one process's"
            );
            for (stage, seconds) in [signatures, links, clusters].into_iter().enumerate() {
                best[slot][stage] = best[slot][stage].min(seconds);
            }
        }
    }
    for (stage, name) in ["near-signatures", "near-links", "near-clusters"]
        .iter()
        .enumerate()
    {
        println!(
            "{name:<16} 1 process {:>6.2} s, 2 processes {:>6.2} s: {:.2}x (one thread each, best of {rounds})",
            best[0][stage],
            best[1][stage],
            best[0][stage] / best[1][stage]
        );
    }
    let total = |slot: usize| best[slot].iter().sum::<f64>();
    println!(
        "sharded near dedup     1 process {:.2} s, 2 processes {:.2} s: {:.2}x; tables equal to one `dapt dedup near`",
        total(0),
        total(1),
        total(0) / total(1)
    );
}

/// Files the corpus is written as.
const FILES: usize = 8;

/// Writes every test-corpus document (up to `cap` bytes of text) as `{"id", "text"}` lines, dealt
/// round-robin into [`FILES`] files under `dir`.
fn write_corpus(dir: &Path, cap: usize) -> (usize, usize) {
    let files = dapt_test_data::corpus_files();
    let mut outs: Vec<_> = (0..FILES)
        .map(|i| {
            std::io::BufWriter::new(
                std::fs::File::create(dir.join(format!("part-{i}.jsonl"))).unwrap(),
            )
        })
        .collect();
    let (mut documents, mut bytes) = (0, 0);
    'files: for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if bytes >= cap {
                break 'files;
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            bytes += text.len();
            let row = serde_json::json!({ "id": format!("{documents:08}"), "text": text });
            writeln!(outs[documents % FILES], "{row}").unwrap();
            documents += 1;
        }
    }
    for out in &mut outs {
        out.flush().unwrap();
    }
    (documents, bytes)
}

/// Lines of every file under `dir` (datatrove's compressed JSON-lines outputs, read by Python).
fn count_lines(dir: &Path) -> usize {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                &mut s,
            )
            .unwrap();
            s
        } else {
            String::from_utf8(bytes).unwrap()
        };
        total += text.lines().count();
    }
    total
}

/// datatrove's MinHash deduplication as its example shows it: `python script.py JSONL_DIR OUT`.
const DATATROVE_SCRIPT: &str = r#"
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

if __name__ == "__main__":
    src, out = sys.argv[1], sys.argv[2]
    config = MinhashConfig()
    LocalPipelineExecutor(
        pipeline=[JsonlReader(src), MinhashDedupSignature(output_folder=out + "/signatures", config=config)],
        tasks=2, workers=2, logging_dir=out + "/logs/signatures",
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupBuckets(input_folder=out + "/signatures", output_folder=out + "/buckets", config=config)],
        tasks=config.num_buckets, workers=2, logging_dir=out + "/logs/buckets",
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupCluster(input_folder=out + "/buckets", output_folder=out + "/remove_ids", config=config)],
        tasks=1, logging_dir=out + "/logs/clusters",
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(src),
            MinhashDedupFilter(input_folder=out + "/remove_ids", exclusion_writer=JsonlWriter(out + "/removed")),
            JsonlWriter(out + "/output"),
        ],
        tasks=2, workers=2, logging_dir=out + "/logs/filter",
    ).run()
"#;

/// Fails the bench with a child's stderr when it failed.
fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
