//! `dapt pack` as a user runs it: real corpus text, the Qwen3 tokenizer, rows read back and decoded.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Result};
use dapt_core::{Location, OutputDir};
use dapt_packer::TokenizerFile;

fn dapt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dapt"))
        .args(args)
        .env("DAPT_LOG", "warn")
        .output()
        .expect("dapt runs")
}

fn shared() -> PathBuf {
    std::env::var("DAPT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

#[test]
fn packed_rows_decode_to_the_source_documents() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw)?;
    let mut sources = Vec::new();
    for (file, n) in [
        ("ru/debian-faq-ru.jsonl", 17),
        ("en/debian-reference-en.jsonl", 40),
        ("code/rust-src.jsonl", 30),
        ("ru/fortunes-ru.jsonl", 800),
    ] {
        let lines: Vec<String> = std::fs::read_to_string(shared().join("corpus").join(file))?
            .lines()
            .take(n)
            .map(str::to_string)
            .collect();
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line)?;
            sources.push(v["text"].as_str().unwrap_or_default().to_string());
        }
        std::fs::write(raw.join(file.replace('/', "-")), lines.join("\n") + "\n")?;
    }
    let docs = dir.path().join("docs");
    let out = dapt(&[
        "ingest",
        raw.to_str().unwrap(),
        "--out",
        docs.to_str().unwrap(),
    ]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qwen = shared().join("tokenizers/qwen3/tokenizer.json");
    let packed = dir.path().join("packed");
    let args = [
        "pack",
        "--input",
        docs.to_str().unwrap(),
        "--tokenizer",
        qwen.to_str().unwrap(),
        "--seq-len",
        "512",
        "--rows-per-shard",
        "64",
        "--seed",
        "3",
        "--out",
        packed.to_str().unwrap(),
    ];
    let run = dapt(&args);
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout));

    let tokenizer = TokenizerFile::load(&qwen)?;
    let eos = tokenizer.id_of("<|endoftext|>")? as i32;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(async {
        let output = OutputDir::open(Location::parse(packed.to_str().unwrap())?, "pack", &{
            let bytes = std::fs::read(packed.join("_manifest.json"))?;
            serde_json::from_slice::<dapt_core::Manifest>(&bytes)?.config_hash
        })
        .await?;
        anyhow::Ok(dapt_packer::read_packed(&output, 512, eos).await?)
    })?;
    ensure!(rows.len() > 100);
    let used: usize = rows.iter().map(|r| r.used()).sum();
    let fill = used as f64 / (rows.len() * 512) as f64;
    ensure!(fill >= 0.995, "fill {fill}");

    // Concatenated segments split at EOS give back every source document exactly once.
    let mut decoded: BTreeMap<String, usize> = BTreeMap::new();
    let mut current = Vec::new();
    for row in &rows {
        let mut start = 0;
        for &length in &row.segment_lengths {
            for &id in &row.input_ids[start..start + length as usize] {
                if id == eos {
                    *decoded.entry(tokenizer.decode(&current)?).or_default() += 1;
                    current.clear();
                } else {
                    current.push(id as u32);
                }
            }
            start += length as usize;
        }
    }
    ensure!(current.is_empty());
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for text in sources {
        *expected.entry(text).or_default() += 1;
    }
    ensure!(
        decoded == expected,
        "decoded {} documents, expected {}",
        decoded.len(),
        expected.len()
    );

    // An independent reader agrees on the contract.
    let check = Command::new("python3")
        .args(["-c", "import sys, pyarrow.parquet as pq, pyarrow.compute as pc; t = pq.read_table(sys.argv[1]); \
                      lens = set(pc.list_value_length(t['input_ids']).to_pylist()); \
                      meta = pq.read_metadata(sys.argv[2]).metadata; \
                      print(t.num_rows, sorted(lens), meta[b'dapt.seq_len'].decode(), t.schema.field('loss_mask').type)"])
        .arg(&packed)
        .arg(packed.join("part-00000.parquet"))
        .output()?;
    ensure!(
        check.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let printed = String::from_utf8(check.stdout)?;
    ensure!(
        printed.trim() == format!("{} [512] 512 list<item: bool not null>", rows.len()),
        "{printed}"
    );

    // A rerun is a no-op; a fresh run gives the same bytes.
    let again = dir.path().join("again");
    let mut fresh_args = args.to_vec();
    let last = fresh_args.len() - 1;
    fresh_args[last] = again.to_str().unwrap();
    ensure!(dapt(&args).status.success() && dapt(&fresh_args).status.success());
    for entry in std::fs::read_dir(&packed)? {
        let name = entry?.file_name();
        ensure!(
            std::fs::read(packed.join(&name))? == std::fs::read(again.join(&name))?,
            "{name:?} differs"
        );
    }
    Ok(())
}
