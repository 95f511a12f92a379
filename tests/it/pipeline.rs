//! `dapt run` on a small config over the demo data: every stage connects, the packed Parquet honours
//! the contract, training lowers the loss, and a rerun reproduces the outputs.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::dapt;
use anyhow::{ensure, Context, Result};
use dapt_core::schema::metadata;
use dapt_core::{hash, packed, parquet_io, PackedRow};
use dapt_packer::TokenizerFile;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SMALL_CONFIG: &str = r#"
seed = 7

[ingest]
inputs = ["DATA/*.jsonl", "DATA/*.jsonl.zst"]

[sql]
query = "SELECT id, text FROM documents WHERE character_length(text) >= 120"

[tokenizer.train]
vocab_size = 700

[pack]
seq_len = 64
heldout_fraction = 0.08
rows_per_shard = 200
eos_token = "<|endoftext|>"
pad_token = "<|pad|>"

[model]
hidden_size = 64
intermediate_size = 172
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2

[train]
steps = 40
batch_size = 8
learning_rate = 5e-3
warmup_steps = 4
"#;

fn write_config(dir: &Path) -> PathBuf {
    let data = repo().join("configs/demo/data");
    let config = SMALL_CONFIG.replace("DATA", &data.display().to_string());
    let path = dir.join("small.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}

fn read_packed(dir: &Path) -> Result<(Vec<PackedRow>, BTreeMap<String, String>)> {
    let mut rows = Vec::new();
    let mut kv = BTreeMap::new();
    for file in parquet_files(dir) {
        let (batches, file_kv) = parquet_io::decode(std::fs::read(&file)?.into(), "test")?;
        for batch in &batches {
            rows.extend(packed::batch_to_rows(batch)?);
        }
        kv = file_kv;
    }
    Ok((rows, kv))
}

/// Every file below `dir` with its sha256, except the training log (it records measured speeds).
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.ends_with("train_log.jsonl") {
                let key = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(key, hash::sha256_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[test]
fn pipeline_runs_end_to_end_and_reruns_identically() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path());
    let out = dir.path().join("out");
    let run = dapt(&[
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    ensure!(
        run.status.success(),
        "dapt run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout)?;
    ensure!(
        stdout.contains("held-out perplexity: before"),
        "stdout: {stdout}"
    );

    // The report: held-out perplexity fell, and the training loss went down.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json"))?)?;
    let before = report["heldout"]["before"]["perplexity"]
        .as_f64()
        .context("before")?;
    let after = report["heldout"]["after"]["perplexity"]
        .as_f64()
        .context("after")?;
    ensure!(after < before * 0.5, "perplexity {before} → {after}");
    let first = report["train"]["first_loss"]
        .as_f64()
        .context("first loss")?;
    let last = report["train"]["last_loss"].as_f64().context("last loss")?;
    ensure!(last < first - 0.5, "loss {first} → {last}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl"))?;
    ensure!(log.lines().count() == 40, "one log line per step");

    // The packed Parquet honours the contract and records how it was made.
    let tokenizer = TokenizerFile::load(&out.join("tokenizer/tokenizer.json"))?;
    let pad_id = tokenizer.id_of("<|pad|>")? as i32;
    let eos_id = tokenizer.id_of("<|endoftext|>")? as i32;
    let (rows, kv) = read_packed(&out.join("packed/train"))?;
    ensure!(
        parquet_files(&out.join("packed/train")).len() >= 2,
        "several shards"
    );
    ensure!(kv[metadata::TOKENIZER_SHA256] == tokenizer.sha256());
    ensure!(kv[metadata::SEQ_LEN] == "64" && kv[metadata::SEED] == "7");
    ensure!(kv[metadata::PAD_ID] == pad_id.to_string());
    ensure!(kv.contains_key(metadata::CONFIG_HASH));
    for (i, row) in rows.iter().enumerate() {
        row.validate(i, 64, pad_id)?;
    }
    let used: usize = rows.iter().map(PackedRow::used).sum();
    ensure!(
        used as f64 / (rows.len() * 64) as f64 > 0.99,
        "rows are densely packed"
    );

    // Segments hold whole documents in order: concatenating every segment and splitting at EOS gives
    // back, decoded, exactly the selected training documents.
    let selected = std::fs::read(out.join("selected/part-00000.parquet"))?;
    let (batches, _) = parquet_io::decode(selected.into(), "selected")?;
    let mut selected_texts = std::collections::BTreeSet::new();
    for batch in &batches {
        let text = arrow::compute::cast(
            batch.column_by_name("text").context("text column")?,
            &arrow::datatypes::DataType::Utf8,
        )?;
        use arrow::array::AsArray;
        selected_texts.extend(text.as_string::<i32>().iter().flatten().map(str::to_string));
    }
    let mut documents = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    for row in &rows {
        let mut start = 0;
        for &length in &row.segment_lengths {
            for &id in &row.input_ids[start..start + length as usize] {
                if id == eos_id {
                    documents.push(tokenizer.decode(&current)?);
                    current.clear();
                } else {
                    current.push(id as u32);
                }
            }
            start += length as usize;
        }
    }
    ensure!(current.is_empty(), "every document ends with EOS");
    ensure!(
        documents.len() > 100,
        "{} training documents",
        documents.len()
    );
    for document in &documents {
        ensure!(
            selected_texts.contains(document),
            "not a selected document: {document:?}"
        );
    }

    // `dapt pack` over the same documents with the same tokenizer and seed orders them as `dapt run`
    // did: its document sequence without the held-out documents is the training split's sequence.
    let everything = dir.path().join("pack-all");
    let packed = dapt(&[
        "pack",
        "--input",
        out.join("selected").to_str().unwrap(),
        "--tokenizer",
        out.join("tokenizer/tokenizer.json").to_str().unwrap(),
        "--seq-len",
        "64",
        "--eos-token",
        "<|endoftext|>",
        "--pad-token",
        "<|pad|>",
        "--seed",
        "7",
        "--out",
        everything.to_str().unwrap(),
    ]);
    ensure!(
        packed.status.success(),
        "dapt pack failed: {}",
        String::from_utf8_lossy(&packed.stderr)
    );
    let split = |rows: &[PackedRow]| -> Vec<Vec<i32>> {
        let mut documents = Vec::new();
        let mut current = Vec::new();
        for row in rows {
            for &id in &row.input_ids[..row.used()] {
                if id == eos_id {
                    documents.push(std::mem::take(&mut current));
                } else {
                    current.push(id);
                }
            }
        }
        documents
    };
    let train_order = split(&rows);
    let heldout_documents: std::collections::BTreeSet<Vec<i32>> =
        split(&read_packed(&out.join("packed/heldout"))?.0)
            .into_iter()
            .collect();
    let pack_order = split(&read_packed(&everything)?.0);
    ensure!(pack_order.len() == train_order.len() + heldout_documents.len());
    let without_heldout: Vec<Vec<i32>> = pack_order
        .into_iter()
        .filter(|d| !heldout_documents.contains(d))
        .collect();
    ensure!(
        without_heldout == train_order,
        "dapt pack and dapt run order the same documents differently"
    );
    let heldout = report["documents"]["heldout"].as_u64().context("heldout")? as usize;
    ensure!(documents.len() + heldout == selected_texts.len());

    // The model directory is in HF layout.
    let model_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model/config.json"))?)?;
    ensure!(model_config["architectures"][0] == "LlamaForCausalLM");
    ensure!(model_config["vocab_size"] == 700);
    ensure!(out.join("model/model.safetensors").exists());

    // The run ends with base vs adapted side by side.
    let comparison = std::fs::read_to_string(out.join("report.md"))?;
    ensure!(
        comparison.contains("| metric | base | adapted |"),
        "{comparison}"
    );
    ensure!(comparison.contains("ppl/heldout") && out.join("plots/training_loss.svg").exists());
    let adapted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/adapted.json"))?)?;
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/base.json"))?)?;
    let bpb = |v: &serde_json::Value| -> f64 {
        v["bits_per_byte"].as_object().map_or(0.0, |m| {
            m.values()
                .map(|s| s["bits_per_byte"].as_f64().unwrap_or(0.0))
                .sum()
        })
    };
    ensure!(
        bpb(&adapted) > 0.0 && bpb(&adapted) < bpb(&base),
        "bits per byte fall with training"
    );

    // A rerun into the same directory, and a fresh run elsewhere, give the same bytes.
    let first_digests = digests(&out);
    let rerun = dapt(&[
        "run",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    ensure!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    ensure!(digests(&out) == first_digests, "rerun changed outputs");
    let fresh = dir.path().join("fresh");
    let again = dapt(&[
        "run",
        config.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
    ]);
    ensure!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let mut fresh_digests = digests(&fresh);
    let mut first_digests = first_digests;
    // The report names nothing run-specific except the config path, which is the same.
    fresh_digests.remove("report.json");
    first_digests.remove("report.json");
    ensure!(fresh_digests == first_digests, "a fresh run differs");
    Ok(())
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[pack]\nseq_len = 64\nsequence_length = 3\n").unwrap();
    let run = dapt(&["run", path.to_str().unwrap()]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("sequence_length"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    std::fs::write(
        &path,
        "[ingest]\ninputs = [\"nowhere/*.jsonl\"]\n[pack]\nheldout_fraction = 0.1\n",
    )
    .unwrap();
    let run = dapt(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("nowhere") && stderr.contains("names no object"),
        "{stderr}"
    );
}

#[test]
fn help_lists_only_working_commands() {
    let help = dapt(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("run"), "{text}");
    let run_help = dapt(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&run_help.stdout).contains("--out"));
    for command in [
        vec!["ingest"],
        vec!["sql"],
        vec!["dedup"],
        vec!["classify"],
        vec!["tokenizer"],
        vec!["pack"],
        vec!["mix"],
        vec!["train"],
        vec!["model", "resize-embeddings"],
        vec!["model", "merge-lora"],
        vec!["eval"],
        vec!["report"],
        vec!["serve"],
    ] {
        assert!(text.contains(command[0]), "{command:?} missing from --help");
        let mut args = command.clone();
        args.push("--help");
        let help = dapt(&args);
        assert!(
            help.status.success() && !help.stdout.is_empty(),
            "{command:?} --help"
        );
    }
}
