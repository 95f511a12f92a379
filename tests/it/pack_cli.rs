//! `dapt pack` as a user runs it: real corpus text, the Qwen3 tokenizer, rows read back and decoded.
use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{dapt, test_data};
use anyhow::{ensure, Result};
use dapt_core::{Location, OutputDir};
use dapt_packer::TokenizerFile;

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
        let lines: Vec<String> = std::fs::read_to_string(test_data().join("corpus").join(file))?
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
    crate::common::ingest(&raw, &docs)?;
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
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
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    ensure!(stdout.contains("with the fast encoder"), "{stdout}");

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

    // A rerun is a no-op; a fresh run with HF's encoder instead of the fast one gives the same bytes.
    let again = dir.path().join("again");
    let mut fresh_args = args.to_vec();
    let last = fresh_args.len() - 1;
    fresh_args[last] = again.to_str().unwrap();
    fresh_args.extend(["--encoder", "hf"]);
    ensure!(dapt(&args).status.success());
    let fresh = dapt(&fresh_args);
    ensure!(
        fresh.status.success()
            && String::from_utf8_lossy(&fresh.stdout).contains("with the hf encoder"),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    for entry in std::fs::read_dir(&packed)? {
        let name = entry?.file_name();
        ensure!(
            std::fs::read(packed.join(&name))? == std::fs::read(again.join(&name))?,
            "{name:?} differs"
        );
    }
    Ok(())
}

/// `dapt pack --mode sft` over chats selected with SQL: prompt/response columns with Qwen3's template,
/// and a `messages` JSON column with the built-in ChatML template.
#[test]
fn sft_packing_from_sql() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        test_data().join("tasks/bigbench/qa_wikidata/task.json"),
    )?)?;
    let mut pairs = String::new();
    let mut chats = String::new();
    for (i, example) in task["examples"]
        .as_array()
        .unwrap()
        .iter()
        .take(400)
        .enumerate()
    {
        let prompt = example["input"].as_str().unwrap_or_default();
        let response = match &example["target"] {
            serde_json::Value::Array(list) => list[0].as_str().unwrap_or_default(),
            target => target.as_str().unwrap_or_default(),
        };
        ensure!(!response.is_empty());
        pairs.push_str(
            &(serde_json::json!({"id": format!("q{i}"), "prompt": prompt, "response": response})
                .to_string()
                + "\n"),
        );
        let messages = serde_json::json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]);
        chats.push_str(
            &(serde_json::json!({"id": format!("c{i}"), "messages": messages.to_string()})
                .to_string()
                + "\n"),
        );
    }
    std::fs::write(dir.path().join("pairs.jsonl"), pairs)?;
    std::fs::write(dir.path().join("chats.jsonl"), chats)?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.pairs]\nurl = \"{}\"\n[sources.chats]\nurl = \"{}\"\n",
            dir.path().join("pairs.jsonl").display(),
            dir.path().join("chats.jsonl").display()
        ),
    )?;
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    // `dapt pack --mode sft` of `query` into `out`, with more arguments.
    let sft_args = |query: &'static str, out: &std::path::Path, extra: &[&'static str]| {
        let mut args: Vec<String> = [
            "pack",
            "--mode",
            "sft",
            "--config",
            config.to_str().unwrap_or_default(),
            "-e",
            query,
            "--tokenizer",
            qwen.to_str().unwrap_or_default(),
            "--seq-len",
            "256",
            "--out",
            out.to_str().unwrap_or_default(),
        ]
        .map(str::to_string)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    // The packed rows of a finished SFT output.
    let rows_of = |out: &std::path::Path, hash: &str| -> Result<Vec<dapt_core::PackedRow>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let output = OutputDir::open(
                Location::parse(out.to_str().unwrap_or_default())?,
                "pack-sft",
                hash,
            )
            .await?;
            anyhow::Ok(dapt_packer::read_packed(&output, 256, 151_643).await?)
        })
    };
    for (query, template, out) in [
        ("SELECT id, prompt, response FROM pairs", None, "sft-qwen"),
        (
            "SELECT id, messages FROM chats",
            Some("chatml"),
            "sft-chatml",
        ),
    ] {
        let out = dir.path().join(out);
        let owned = match template {
            Some(t) => sft_args(query, &out, &["--chat-template", t]),
            None => sft_args(query, &out, &[]),
        };
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let run = dapt(&args);
        ensure!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8(run.stdout)?;
        ensure!(stdout.starts_with("packed 400 examples"), "{stdout}");
        let manifest: dapt_core::Manifest =
            serde_json::from_slice(&std::fs::read(out.join("_manifest.json"))?)?;
        ensure!(manifest.complete && manifest.summary["examples"] == 400);
        let rows = rows_of(&out, &manifest.config_hash)?;
        let targets: usize = rows
            .iter()
            .map(|r| r.loss_mask.iter().filter(|m| **m).count())
            .sum();
        ensure!(
            targets as u64 == manifest.summary["target_tokens"].as_u64().unwrap_or(0)
                && targets > 400
        );
        let tokenizer = TokenizerFile::load(&qwen)?;
        let first: Vec<u32> = rows[0].input_ids[..rows[0].segment_lengths[0] as usize]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let text = tokenizer.decode(&first)?;
        ensure!(
            text.starts_with("<|im_start|>user\n") && text.ends_with("<|im_end|>\n"),
            "{text:?}"
        );
        ensure!(
            !text.contains("assistant\n<|im_end|>") && !text.contains("</think>\n\n<|im_end|>"),
            "{text:?}"
        );
        // A rerun reuses the finished output: the same report, the same bytes.
        let shard = out.join("part-00000.parquet");
        let before = std::fs::read(&shard)?;
        let again = dapt(&args);
        ensure!(again.status.success() && String::from_utf8(again.stdout)? == stdout);
        ensure!(std::fs::read(&shard)? == before);
    }

    // The same SFT packing as a job array of 2: each job packs the examples whose id hashes to it;
    // the merged manifest holds every example once and the packed metadata the trainer reads.
    let array = dir.path().join("sft-array");
    let mut totals = (0u64, 0u64);
    for job in ["1/2", "0/2"] {
        let owned = sft_args(
            "SELECT id, prompt, response FROM pairs",
            &array,
            &["--shard", job],
        );
        let run = dapt(&owned.iter().map(String::as_str).collect::<Vec<_>>());
        ensure!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8(run.stdout)?;
        ensure!(stdout.contains("this job's examples"), "{stdout}");
        ensure!(
            (job == "1/2") != array.join("_manifest.json").exists(),
            "merged too early or not at all after job {job}"
        );
        let index = &job[..1];
        let own: dapt_core::Manifest = serde_json::from_slice(&std::fs::read(
            array.join(format!("_manifest-0000{index}-of-00002.json")),
        )?)?;
        let examples = own.summary["examples"].as_u64().unwrap_or(0);
        ensure!(
            examples > 100
                && own
                    .shards
                    .iter()
                    .all(|s| s.name.starts_with(&format!("part-0000{index}-of-00002-"))),
            "job {job}: {examples} examples, {:?}",
            own.shards
        );
        totals.0 += examples;
        totals.1 += own.summary["target_tokens"].as_u64().unwrap_or(0);
    }
    let merged: dapt_core::Manifest =
        serde_json::from_slice(&std::fs::read(array.join("_manifest.json"))?)?;
    ensure!(
        merged.complete
            && totals.0 == 400
            && merged.summary["examples"] == 400
            && merged.summary["target_tokens"].as_u64() == Some(totals.1),
        "{:?}",
        merged.summary
    );
    let packed = dapt_core::PackedMetadata::from_manifest(&merged, "the merged manifest")?;
    ensure!(
        packed.seq_len == 256 && packed.max_token_id > 1000,
        "{packed:?}"
    );
    let rows = rows_of(&array, &merged.config_hash)?;
    let targets: u64 = rows
        .iter()
        .map(|r| r.loss_mask.iter().filter(|m| **m).count() as u64)
        .sum();
    ensure!(
        targets == totals.1,
        "{targets} target tokens in the rows, {} in the manifests",
        totals.1
    );
    Ok(())
}

/// #18.1: a pack output is bound to its input. Packing another input into a finished (or started)
/// output is refused with both identities named; the same input into it is a no-op.
#[test]
fn a_pack_output_refuses_another_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut inputs = Vec::new();
    for (name, file, n) in [
        ("a", "ru/fortunes-ru.jsonl", 40),
        ("b", "en/fortunes.jsonl", 40),
    ] {
        let raw = dir.path().join(format!("raw-{name}"));
        std::fs::create_dir_all(&raw)?;
        let lines: Vec<String> = std::fs::read_to_string(test_data().join("corpus").join(file))?
            .lines()
            .take(n)
            .map(str::to_string)
            .collect();
        std::fs::write(raw.join("part.jsonl"), lines.join("\n") + "\n")?;
        let docs = dir.path().join(format!("docs-{name}"));
        crate::common::ingest(&raw, &docs)?;
        inputs.push(docs);
    }
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let packed = dir.path().join("packed");
    let pack = |input: &std::path::Path| {
        dapt(&[
            "pack",
            "--input",
            input.to_str().unwrap(),
            "--tokenizer",
            qwen.to_str().unwrap(),
            "--seq-len",
            "128",
            "--out",
            packed.to_str().unwrap(),
        ])
    };
    let first = pack(&inputs[0]);
    ensure!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let manifest = std::fs::read(packed.join("_manifest.json"))?;
    let other = pack(&inputs[1]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    ensure!(
        !other.status.success(),
        "another input was packed into a finished output"
    );
    ensure!(
        stderr.contains("choose another output directory"),
        "{stderr}"
    );
    ensure!(
        std::fs::read(packed.join("_manifest.json"))? == manifest,
        "the refused run changed nothing"
    );
    let again = pack(&inputs[0]);
    ensure!(again.status.success());
    ensure!(std::fs::read(packed.join("_manifest.json"))? == manifest);

    // --overwrite replaces it: the output is then exactly what packing the other input alone gives.
    let mut args = vec![
        "pack",
        "--input",
        inputs[1].to_str().unwrap(),
        "--tokenizer",
        qwen.to_str().unwrap(),
        "--seq-len",
        "128",
        "--out",
    ];
    let alone = dir.path().join("alone");
    let run = dapt(&[&args[..], &[alone.to_str().unwrap()]].concat());
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    args.extend([packed.to_str().unwrap(), "--overwrite"]);
    let replaced = dapt(&args);
    ensure!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    ensure!(
        digests(&packed)?
            .into_iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .collect::<BTreeMap<_, _>>()
            == digests(&alone)?
                .into_iter()
                .filter(|(name, _)| !name.starts_with('.'))
                .collect::<BTreeMap<_, _>>(),
        "the replaced output differs from the other input's own"
    );
    Ok(())
}

/// Files of a directory with their bytes' sha256 (staging files `name#N` included).
fn digests(dir: &std::path::Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        out.insert(name, dapt_core::hash::sha256_hex(&std::fs::read(&path)?));
    }
    Ok(out)
}

fn spills(tmp: &std::path::Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(tmp)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().to_string()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|n| n.starts_with("dapt-sort-"))
        .collect())
}

/// #18.5: `dapt pack` killed with SIGKILL while it writes leaves its sort spill and maybe a staging
/// file; the rerun removes both and ends with exactly the output of an uninterrupted run.
#[test]
fn a_killed_pack_reruns_to_identical_output_and_leaves_nothing_behind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    crate::common::ingest(&test_data().join("corpus/ru"), &docs)?;
    std::fs::write(
        dir.path().join("sources.toml"),
        format!("[sources.docs]\nurl = {:?}\n", docs.to_str().unwrap()),
    )?;
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let pack = |out: &std::path::Path| {
        let mut command = crate::common::dapt_command();
        command
            .args(["pack", "--config"])
            .arg(dir.path().join("sources.toml"))
            .args(["-e", "SELECT id, text FROM docs", "--tokenizer"])
            .arg(&qwen)
            .args(["--seq-len", "512", "--rows-per-shard", "128", "--out"])
            .arg(out)
            .env("TMPDIR", &tmp)
            .env("DAPT_LOG", "warn");
        command
    };
    let clean = dir.path().join("clean");
    let run = pack(&clean).output()?;
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    ensure!(
        spills(&tmp)?.is_empty(),
        "a finished pack left {:?}",
        spills(&tmp)?
    );

    let killed = dir.path().join("killed");
    let mut child = pack(&killed)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = std::time::Instant::now();
    let mut saw_spill = false;
    loop {
        saw_spill |= !spills(&tmp)?.is_empty();
        let published = std::fs::read(killed.join("_manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<dapt_core::Manifest>(&b).ok())
            .is_some_and(|m| !m.shards.is_empty());
        if published {
            break;
        }
        ensure!(
            child.try_wait()?.is_none(),
            "the pack ended before it could be killed"
        );
        ensure!(
            started.elapsed().as_secs() < 120,
            "no shard published in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    ensure!(
        child.try_wait()?.is_none(),
        "the pack ended before it could be killed"
    );
    child.kill()?; // SIGKILL
    child.wait()?;
    ensure!(saw_spill, "the sort never spilled under TMPDIR");
    let left = spills(&tmp)?;
    ensure!(left.len() == 1, "the killed pack's spill: {left:?}");
    let manifest: dapt_core::Manifest =
        serde_json::from_slice(&std::fs::read(killed.join("_manifest.json"))?)?;
    ensure!(!manifest.complete, "killed after it finished");

    let rerun = pack(&killed).output()?;
    ensure!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    ensure!(
        spills(&tmp)?.is_empty(),
        "left after the rerun: {:?}",
        spills(&tmp)?
    );
    ensure!(
        digests(&killed)? == digests(&clean)?,
        "outputs differ after kill + rerun:\n{:?}\n{:?}",
        digests(&killed)?,
        digests(&clean)?
    );
    Ok(())
}

/// A pack output is bound to the files its sources resolve to: after a source file grew, the rerun is
/// refused instead of resuming over other data; `--overwrite` repacks.
#[test]
fn a_pack_output_is_bound_to_its_source_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("fortunes.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(test_data().join("corpus/en/fortunes.jsonl"))?
        .lines()
        .take(50)
        .map(str::to_string)
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n")?;
    let sources = dir.path().join("sources.toml");
    std::fs::write(
        &sources,
        format!("[sources.f]\nurl = {:?}\n", data.to_str().unwrap()),
    )?;
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let out = dir.path().join("packed");
    let pack = |extra: &[&str]| {
        let mut args = vec![
            "pack",
            "--config",
            sources.to_str().unwrap(),
            "-e",
            "SELECT concat(path, '#', CAST(i AS VARCHAR)) AS id, text FROM f",
            "--tokenizer",
            qwen.to_str().unwrap(),
            "--seq-len",
            "64",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        dapt(&args)
    };
    ensure!(pack(&[]).status.success());
    ensure!(pack(&[]).status.success(), "a rerun over the same data");
    std::fs::write(&data, lines.join("\n") + "\n" + &lines[0] + "\n")?;
    let grown = pack(&[]);
    let stderr = String::from_utf8_lossy(&grown.stderr);
    ensure!(!grown.status.success(), "packed over changed data");
    ensure!(
        stderr.contains("choose another output directory"),
        "{stderr}"
    );
    let again = pack(&["--overwrite"]);
    ensure!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

/// `dapt pack --shard` as a job array run by `configs/cluster/local-array.sh`: each job packs the
/// documents whose id hashes to it into its own shards, the last to finish merges the manifests; the
/// merged output holds every document once (as one process's does), a job rerun alone gives the same
/// bytes, `dapt status` reports the jobs, and SFT refuses to split.
#[test]
fn pack_as_a_job_array_merges_every_document_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw)?;
    for (file, n) in [
        ("ru/fortunes-ru.jsonl", 300),
        ("en/debian-reference-en.jsonl", 20),
    ] {
        let lines: Vec<String> = std::fs::read_to_string(test_data().join("corpus").join(file))?
            .lines()
            .take(n)
            .map(str::to_string)
            .collect();
        std::fs::write(raw.join(file.replace('/', "-")), lines.join("\n") + "\n")?;
    }
    let docs = dir.path().join("docs");
    crate::common::ingest(&raw, &docs)?;
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let dapt_bin = env!("CARGO_BIN_EXE_dapt");
    let pack_args = |out: &std::path::Path| -> Vec<String> {
        [
            dapt_bin,
            "pack",
            "--input",
            docs.to_str().unwrap(),
            "--tokenizer",
            qwen.to_str().unwrap(),
            "--seq-len",
            "256",
            "--rows-per-shard",
            "16",
            "--seed",
            "5",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: &[String]| -> Result<std::process::Output> {
        Ok(Command::new(&args[0])
            .args(&args[1..])
            .env("DAPT_LOG", "warn")
            .output()?)
    };
    let one = dir.path().join("one");
    let output = run(&pack_args(&one))?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/cluster/local-array.sh")
        .display()
        .to_string();
    let logs = dir.path().join("logs").display().to_string();
    let array = |out: &std::path::Path, only: &str| -> Result<()> {
        let mut args: Vec<String> = [script.as_str(), "--logs", &logs, "--only", only, "3", "--"]
            .map(str::to_string)
            .to_vec();
        args.extend(pack_args(out));
        args.extend(["--shard".to_string(), "env".to_string()]);
        let output = run(&args)?;
        ensure!(
            output.status.success(),
            "{} {}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_dir(&logs)?
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    };
    let arr = dir.path().join("array");
    array(&arr, "0,2")?;
    ensure!(
        !arr.join("_manifest.json").exists(),
        "merged before job 1 ran"
    );
    let status =
        crate::common::run_ok(&["status", arr.to_str().unwrap(), "--jobs", "3", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let states: Vec<&str> = status["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["state"].as_str())
        .collect();
    ensure!(states == ["done", "missing", "done"], "{status}");
    array(&arr, "1")?;
    ensure!(
        arr.join("_manifest.json").exists(),
        "not merged after the last job"
    );
    // The same array again, job by job in another order: the same bytes.
    let again = dir.path().join("again");
    array(&again, "2")?;
    array(&again, "1,0")?;
    for entry in std::fs::read_dir(&arr)? {
        let name = entry?.file_name();
        if name.to_string_lossy().ends_with(".parquet") || name == "_manifest.json" {
            ensure!(
                std::fs::read(arr.join(&name))? == std::fs::read(again.join(&name))?,
                "{name:?} differs between two runs of the array"
            );
        }
    }
    // Every shard of the merged manifest is named for the job that wrote it (which job gets which
    // input file depends on the files' names, so a job may get none).
    let merged: dapt_core::Manifest =
        serde_json::from_slice(&std::fs::read(arr.join("_manifest.json"))?)?;
    ensure!(
        !merged.shards.is_empty()
            && merged.shards.iter().all(|shard| {
                (0..3).any(|i| shard.name.starts_with(&format!("part-{i:05}-of-00003-")))
            }),
        "shards not named for their jobs: {:?}",
        merged.shards.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // The merged manifest carries the packed metadata the trainer reads (it once lacked it): the
    // jobs' own, with the highest token id of any of them.
    let packed = dapt_core::PackedMetadata::from_manifest(&merged, "the merged manifest")?;
    let mut highest = 0;
    for i in 0..3 {
        let job: dapt_core::Manifest = serde_json::from_slice(&std::fs::read(
            arr.join(format!("_manifest-{i:05}-of-00003.json")),
        )?)?;
        let own = dapt_core::PackedMetadata::from_manifest(&job, "a job manifest")?;
        ensure!(own.config_hash == packed.config_hash && own.seq_len == packed.seq_len);
        highest = highest.max(own.max_token_id);
    }
    ensure!(
        packed.max_token_id == highest && highest > 1000,
        "merged {packed:?}, highest of the jobs {highest}"
    );

    // Decoded, the merged output and the one-process output hold the same documents once each.
    let tokenizer = TokenizerFile::load(&qwen)?;
    let eos = tokenizer.id_of("<|endoftext|>")? as i32;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let documents = |packed: &std::path::Path| -> Result<BTreeMap<String, usize>> {
        let rows = runtime.block_on(async {
            let bytes = std::fs::read(packed.join("_manifest.json"))?;
            let manifest = serde_json::from_slice::<dapt_core::Manifest>(&bytes)?;
            let output = OutputDir::open(
                Location::parse(packed.to_str().unwrap())?,
                "pack",
                &manifest.config_hash,
            )
            .await?;
            anyhow::Ok(dapt_packer::read_packed(&output, 256, eos).await?)
        })?;
        let mut decoded: BTreeMap<String, usize> = BTreeMap::new();
        let mut current = Vec::new();
        for row in &rows {
            for &id in &row.input_ids[..row.used()] {
                if id == eos {
                    *decoded.entry(tokenizer.decode(&current)?).or_default() += 1;
                    current.clear();
                } else {
                    current.push(id as u32);
                }
            }
        }
        Ok(decoded)
    };
    let (from_one, from_array) = (documents(&one)?, documents(&arr)?);
    let packed_documents = |packed: &std::path::Path| -> Result<u64> {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(packed.join("_manifest.json"))?)?;
        Ok(manifest["summary"]["documents"].as_u64().unwrap_or(0))
    };
    let total = packed_documents(&one)?;
    ensure!(
        total > 300
            && from_one.values().sum::<usize>() as u64 == total
            && packed_documents(&arr)? == total
            && from_one == from_array,
        "one process {} documents, the array {}",
        from_one.values().sum::<usize>(),
        from_array.values().sum::<usize>()
    );
    // Split by id from a query (each job's query filtered by `shard_of(id, n)` in SQL): the same
    // documents once each.
    let sources = dir.path().join("sources.toml");
    std::fs::write(
        &sources,
        format!("[sources.docs]\nurl = \"{}/\"\n", docs.display()),
    )?;
    let by_query = dir.path().join("by-query");
    for job in ["1/2", "0/2"] {
        let mut args = pack_args(&by_query);
        let input = args.iter().position(|a| a == "--input").unwrap_or(2);
        args.splice(
            input..input + 2,
            [
                "--config".to_string(),
                sources.display().to_string(),
                "-e".to_string(),
                "SELECT id, text FROM docs".to_string(),
            ],
        );
        args.extend(["--shard".to_string(), job.to_string()]);
        let output = run(&args)?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    ensure!(
        packed_documents(&by_query)? == total && documents(&by_query)? == from_one,
        "the query-split array packed other documents"
    );
    Ok(())
}
