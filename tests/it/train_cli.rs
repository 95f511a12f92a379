//! `dapt train` and `dapt model` as a user runs them: a tokenizer trained on the test corpus, CPT and
//! SFT rows packed by `dapt pack`, a three-stage config (CPT full → CPT LoRA → SFT full) on a small
//! proxy model, a SIGKILL in the middle and a rerun that gives the same bytes.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{run_fails, run_ok, test_data};
use anyhow::{ensure, Result};
use dapt_trainer::tch::{Device, Kind};

/// Tokenizer, CPT rows (train + held-out) and SFT rows in `dir`.
fn prepare(dir: &Path) -> Result<(PathBuf, usize)> {
    let corpus = test_data().canonicalize()?.join("corpus");
    let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        test_data().join("tasks/bigbench/qa_wikidata/task.json"),
    )?)?;
    let mut pairs = String::new();
    for (i, example) in task["examples"]
        .as_array()
        .unwrap()
        .iter()
        .take(300)
        .enumerate()
    {
        let response = match &example["target"] {
            serde_json::Value::Array(list) => list[0].clone(),
            target => target.clone(),
        };
        pairs.push_str(
            &(serde_json::json!({"id": format!("q{i}"), "prompt": example["input"], "response": response})
                .to_string()
                + "\n"),
        );
    }
    std::fs::write(dir.join("pairs.jsonl"), pairs)?;
    let sources = dir.join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "[sources.ru]\nurl = {:?}\n[sources.pairs]\nurl = {:?}\n",
            corpus.join("ru/fortunes-ru.jsonl"),
            dir.join("pairs.jsonl")
        ),
    )?;
    let sources = sources.to_str().unwrap();
    let tokenizer = dir.join("tokenizer.json");
    run_ok(&[
        "tokenizer",
        "train",
        "--config",
        sources,
        "-e",
        "SELECT text FROM ru",
        "--vocab-size",
        "384",
        "--special-token",
        "<|endoftext|>",
        "--special-token",
        "<|pad|>",
        "--special-token",
        "<|im_start|>",
        "--special-token",
        "<|im_end|>",
        "--out",
        tokenizer.to_str().unwrap(),
    ])?;
    let id = "concat(path, '#', CAST(i AS VARCHAR)) AS id";
    for (query, out) in [
        (
            format!("SELECT {id}, text FROM ru WHERE i % 20 <> 0"),
            "cpt",
        ),
        (
            format!("SELECT {id}, text FROM ru WHERE i % 20 = 0"),
            "heldout",
        ),
    ] {
        run_ok(&[
            "pack",
            "--config",
            sources,
            "-e",
            &query,
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--seq-len",
            "64",
            "--rows-per-shard",
            "100",
            "--pad-token",
            "<|pad|>",
            "--out",
            dir.join(out).to_str().unwrap(),
        ])?;
    }
    run_ok(&[
        "pack",
        "--mode",
        "sft",
        "--config",
        sources,
        "-e",
        "SELECT id, prompt, response FROM pairs",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--chat-template",
        "chatml",
        "--seq-len",
        "64",
        "--pad-token",
        "<|pad|>",
        "--eos-token",
        "<|im_end|>",
        "--out",
        dir.join("sft").to_str().unwrap(),
    ])?;
    let vocab = dapt_packer::TokenizerFile::load(&tokenizer)?.vocab_size();
    Ok((tokenizer, vocab))
}

fn config(dir: &Path, vocab: usize) -> Result<PathBuf> {
    let path = dir.join("train.toml");
    std::fs::write(
        &path,
        format!(
            r#"seed = 5
device = "cpu"

[init]
model_type = "qwen3"
vocab_size = {vocab}
hidden_size = 48
head_dim = 16
intermediate_size = 96
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
tie_word_embeddings = true

[[stage]]
name = "cpt1"
data = "cpt"
heldout = "heldout"
[stage.train]
steps = 40
batch_size = 8
learning_rate = 1e-2
warmup_steps = 4
checkpoint_every = 5
eval_every = 10

[[stage]]
name = "cpt2"
data = "cpt"
heldout = "heldout"
method = "lora"
[stage.train]
steps = 10
batch_size = 8
learning_rate = 5e-3
warmup_steps = 2
checkpoint_every = 5
[stage.lora]
r = 4
alpha = 8
dropout = 0.1
target_modules = ["q_proj", "v_proj", "down_proj"]

[[stage]]
name = "sft"
data = "sft"
[stage.train]
steps = 10
batch_size = 8
learning_rate = 3e-3
warmup_steps = 2
objective = "sft"
"#
        ),
    )?;
    Ok(path)
}

fn train_command(config: &Path, out: &Path) -> Command {
    let mut command = crate::common::dapt_command();
    command
        .args(["train"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .env("DAPT_LOG", "warn");
    command
}

fn stage_report(out: &Path, stage: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        out.join(stage).join("stage.json"),
    )?)?)
}

/// Three stages train from one another; CPT lowers held-out loss; LoRA writes a PEFT adapter and a
/// merged model; SFT trains on answer tokens only; every model directory loads; a run killed with
/// SIGKILL mid-stage and rerun writes the same model bytes as the uninterrupted run.
#[test]
fn staged_training_resumes_after_kill_to_identical_models() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_tokenizer, vocab) = prepare(dir.path())?;
    let config = config(dir.path(), vocab)?;
    let whole = dir.path().join("whole");
    let run = train_command(&config, &whole).output()?;
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout)?;
    ensure!(stdout.lines().count() == 3, "{stdout}");

    let cpt1 = stage_report(&whole, "cpt1")?;
    let (before, after) = (
        cpt1["heldout_before"].as_f64().unwrap_or(0.0),
        cpt1["heldout_after"].as_f64().unwrap_or(f64::MAX),
    );
    ensure!(
        before > 5.0 && after < before - 1.0,
        "held-out loss {before} → {after}"
    );
    ensure!(cpt1["steps"] == 40 && !whole.join("cpt1/checkpoints").exists());
    let log = std::fs::read_to_string(whole.join("cpt1/train_log.jsonl"))?;
    let evaluated: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["heldout_loss"].as_f64())
        .collect();
    ensure!(
        evaluated.len() == 4,
        "held-out loss every 10 steps: {evaluated:?}"
    );
    ensure!(
        (evaluated[3] - after).abs() < 1e-6,
        "the last held-out loss is the stage's"
    );
    let cpt2 = stage_report(&whole, "cpt2")?;
    ensure!(cpt2["method"] == "lora");
    // q: 48→64, v: 48→32, down: 96→48, r = 4, two layers.
    ensure!(
        cpt2["trainable_parameters"] == 2 * 4 * ((48 + 64) + (48 + 32) + (96 + 48)),
        "{cpt2}"
    );
    let adapter: serde_json::Value = serde_json::from_slice(&std::fs::read(
        whole.join("cpt2/adapter/adapter_config.json"),
    )?)?;
    ensure!(adapter["peft_type"] == "LORA" && adapter["r"] == 4);
    ensure!(whole
        .join("cpt2/adapter/adapter_model.safetensors")
        .exists());
    let sft = stage_report(&whole, "sft")?;
    let cpt_tokens_per_step = 8 * 63; // at most: every next token of every row
    let sft_tokens = sft["target_tokens"].as_i64().unwrap_or(0);
    ensure!(
        sft_tokens > 0 && sft_tokens < 10 * cpt_tokens_per_step / 2,
        "SFT trains on answers only: {sft_tokens} target tokens"
    );
    for stage in ["cpt1", "cpt2", "sft"] {
        let (_, model) = dapt_trainer::CausalLm::load(
            &whole.join(stage).join("model"),
            Device::Cpu,
            Kind::Float,
        )?;
        ensure!(model.config().vocab_size == vocab as i64 && !model.has_lora());
    }

    // Kill mid-way through the first stage, after a checkpoint, then rerun.
    let killed = dir.path().join("killed");
    let mut child = train_command(&config, &killed).spawn()?;
    let latest = killed.join("cpt1/checkpoints/latest");
    let started = std::time::Instant::now();
    while !latest.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    let finished_early = killed.join("cpt1/stage.json").exists();
    eprintln!("killed after a checkpoint; stage finished before the kill: {finished_early}");
    let rerun = train_command(&config, &killed).output()?;
    ensure!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    for stage in ["cpt1", "cpt2", "sft"] {
        let a = std::fs::read(whole.join(stage).join("model/model.safetensors"))?;
        let b = std::fs::read(killed.join(stage).join("model/model.safetensors"))?;
        ensure!(a == b, "{stage}: the resumed run's model differs");
        let losses = |out: &Path| -> Result<Vec<f64>> {
            Ok(
                std::fs::read_to_string(out.join(stage).join("train_log.jsonl"))?
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .map(|v| v["loss"].as_f64().unwrap_or(0.0))
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
        ensure!(
            losses(&whole)? == losses(&killed)?,
            "{stage}: loss curves differ"
        );
    }
    // A third run finds everything done.
    let again = train_command(&config, &killed).output()?;
    ensure!(again.status.success());
    Ok(())
}

/// Config mistakes are errors that name the file and the key.
#[test]
fn bad_train_config_names_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "seed = 1\nmodel = \"m\"\n[[stage]]\nname = \"a\"\ndata = \"d\"\n[stage.train]\nstepz = 3\n",
    )?;
    let out = dir.path().join("o");
    let args = [
        "train",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let stderr = run_fails(&args)?;
    ensure!(
        stderr.contains("stepz") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    std::fs::write(
        &path,
        "seed = 1\nmodel = \"m\"\n[[stage]]\nname = \"a\"\ndata = \"d\"\nmethod = \"lora\"\n[stage.lora]\ntarget_modules = [\"qq_proj\"]\n",
    )?;
    let stderr = run_fails(&args)?;
    ensure!(
        stderr.contains("stage[0].lora") && stderr.contains("qq_proj"),
        "{stderr}"
    );
    Ok(())
}

/// `dapt tokenizer extend` → `dapt model resize-embeddings`: new rows are the means of their
/// sub-token rows, the tokenizer travels with the model; `dapt model merge-lora` folds PEFT's adapter
/// into the base (the fixture from HF PEFT) and gives PEFT's logits.
#[test]
fn resize_embeddings_and_merge_lora_from_the_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (tokenizer, vocab) = prepare_tokenizer_only(dir.path())?;
    // A base model over the small tokenizer.
    let base = dir.path().join("base");
    {
        let vs = dapt_trainer::tch::nn::VarStore::new(Device::Cpu);
        let config = dapt_trainer::ModelConfig {
            vocab_size: vocab as i64,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            ..Default::default()
        };
        let model = dapt_trainer::CausalLm::new(&vs.root(), &config)?;
        model.save(&vs, &base)?;
    }
    let extended = dir.path().join("extended");
    let corpus = test_data().canonicalize()?.join("corpus");
    let sources = dir.path().join("ext.toml");
    std::fs::write(
        &sources,
        format!(
            "[sources.hb]\nurl = {:?}\n",
            corpus.join("ru/debian-handbook-ru.jsonl")
        ),
    )?;
    run_ok(&[
        "tokenizer",
        "extend",
        "--config",
        sources.to_str().unwrap(),
        "-e",
        "SELECT text FROM hb LIMIT 200",
        "--base",
        tokenizer.to_str().unwrap(),
        "--new-tokens",
        "50",
        "--out",
        extended.to_str().unwrap(),
    ])?;
    let resized = dir.path().join("resized");
    let stdout = run_ok(&[
        "model",
        "resize-embeddings",
        "--model",
        base.to_str().unwrap(),
        "--tokenizer",
        extended.to_str().unwrap(),
        "--out",
        resized.to_str().unwrap(),
    ])?;
    ensure!(stdout.contains("from sub-token means"), "{stdout}");
    ensure!(resized.join("tokenizer.json").exists());
    let new_tokens: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(extended.join("new_tokens.json"))?)?;
    ensure!(new_tokens.len() == 50);
    let (_, old) = dapt_trainer::CausalLm::load(&base, Device::Cpu, Kind::Float)?;
    let (_, new) = dapt_trainer::CausalLm::load(&resized, Device::Cpu, Kind::Float)?;
    ensure!(new.config().vocab_size == vocab as i64 + 50);
    for token in &new_tokens {
        let id = token["id"].as_i64().unwrap_or(-1);
        let pieces: Vec<i64> = token["decomposition"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap_or(0))
            .collect();
        ensure!(pieces.len() >= 2, "{token}");
        let mean = old
            .input_embeddings()
            .index_select(0, &dapt_trainer::tch::Tensor::from_slice(&pieces))
            .mean_dim(0, false, Kind::Float);
        let difference = (new.input_embeddings().get(id) - mean)
            .abs()
            .max()
            .double_value(&[]);
        ensure!(difference < 1e-6, "token {id}: {difference}");
    }

    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures");
    let merged = dir.path().join("merged");
    let stdout = run_ok(&[
        "model",
        "merge-lora",
        "--model",
        fixtures.join("qwen3").to_str().unwrap(),
        "--adapter",
        fixtures.join("lora").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ])?;
    ensure!(stdout.starts_with("merged 8 adapted layers"), "{stdout}");
    let (_, model) = dapt_trainer::CausalLm::load(&merged, Device::Cpu, Kind::Float)?;
    let reference =
        dapt_trainer::weights::read_safetensors(&fixtures.join("lora/reference.safetensors"))?;
    let get = |name: &str| {
        reference
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let (ids, expected) = (get("input_ids").unwrap(), get("logits").unwrap());
    let rows: Vec<dapt_core::PackedRow> = (0..ids.size()[0])
        .map(|r| {
            let row: Vec<i64> = ids.get(r).try_into().unwrap();
            dapt_core::PackedRow {
                input_ids: row.iter().map(|&i| i as i32).collect(),
                segment_lengths: vec![row.len() as i32],
                loss_mask: vec![true; row.len()],
                ..Default::default()
            }
        })
        .collect();
    let refs: Vec<&dapt_core::PackedRow> = rows.iter().collect();
    let batch = dapt_trainer::Batch::from_rows(&refs, Device::Cpu);
    let logits = dapt_trainer::tch::no_grad(|| {
        model.forward(&batch.input_ids, &batch.positions, &batch.mask)
    });
    let difference = (logits - expected).abs().max().double_value(&[]);
    ensure!(difference < 1e-4, "merged vs PEFT: {difference}");
    Ok(())
}

fn prepare_tokenizer_only(dir: &Path) -> Result<(PathBuf, usize)> {
    let corpus = test_data().canonicalize()?.join("corpus");
    let sources = dir.join("tok.toml");
    std::fs::write(
        &sources,
        format!(
            "[sources.ru]\nurl = {:?}\n",
            corpus.join("ru/fortunes-ru.jsonl")
        ),
    )?;
    let tokenizer = dir.join("tokenizer.json");
    run_ok(&[
        "tokenizer",
        "train",
        "--config",
        sources.to_str().unwrap(),
        "-e",
        "SELECT text FROM ru",
        "--vocab-size",
        "384",
        "--out",
        tokenizer.to_str().unwrap(),
    ])?;
    let vocab = dapt_packer::TokenizerFile::load(&tokenizer)?.vocab_size();
    Ok((tokenizer, vocab))
}

/// Packed rows written to a real S3-compatible server train a model read back from it: the loader
/// streams shards from `s3://` as from disk, and gives the same model as the local copy.
#[test]
fn training_streams_packed_rows_from_s3() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (tokenizer, vocab) = prepare_tokenizer_only(dir.path())?;
    let server = crate::common::S3Server::start()?;
    let bucket = server.bucket("training")?;
    let corpus = test_data().canonicalize()?.join("corpus");
    std::fs::write(
        dir.path().join("s.toml"),
        format!(
            "[sources.ru]\nurl = {:?}\n",
            corpus.join("ru/fortunes-ru.jsonl")
        ),
    )?;
    let id = "concat(path, '#', CAST(i AS VARCHAR)) AS id";
    let query = format!("SELECT {id}, text FROM ru WHERE i < 400");
    for out in [
        format!("{bucket}/packed/"),
        dir.path().join("packed").display().to_string(),
    ] {
        let mut command = crate::common::dapt_command();
        command.args([
            "pack",
            "--config",
            dir.path().join("s.toml").to_str().unwrap(),
            "-e",
            &query,
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--seq-len",
            "64",
            "--rows-per-shard",
            "40",
            "--out",
            &out,
        ]);
        command.envs(server.env()).env("DAPT_LOG", "warn");
        let run = command.output()?;
        ensure!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let config = |data: &str| {
        format!(
            "seed = 2\ndevice = \"cpu\"\n[init]\nmodel_type = \"llama\"\nvocab_size = {vocab}\nhidden_size = 32\n\
             intermediate_size = 64\nnum_hidden_layers = 1\nnum_attention_heads = 2\nnum_key_value_heads = 1\n\
             [[stage]]\nname = \"cpt\"\ndata = {data:?}\n[stage.train]\nsteps = 12\nbatch_size = 4\n"
        )
    };
    let mut models = Vec::new();
    for (name, data) in [
        ("s3", format!("{bucket}/packed/")),
        ("local", "packed".to_string()),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config(&data))?;
        let out = dir.path().join(format!("run-{name}"));
        let run = crate::common::dapt_command()
            .args([
                "train",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .envs(server.env())
            .env("DAPT_LOG", "warn")
            .output()?;
        ensure!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        models.push(std::fs::read(out.join("cpt/model/model.safetensors"))?);
    }
    ensure!(
        models[0] == models[1],
        "training from S3 and from disk give the same model"
    );
    Ok(())
}

/// Data and config that do not fit are refused before LibTorch sees them: token ids at or above the
/// model's `vocab_size` (named with the data directory and the highest id), and a misspelt `[init]`
/// key (named), instead of a panic inside LibTorch or a 7B-sized default model.
#[test]
fn ids_beyond_the_vocabulary_and_misspelt_model_keys_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, vocab) = prepare(dir.path())?;
    let write = |name: &str, init: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "seed = 1\ndevice = \"cpu\"\n[init]\n{init}\n[[stage]]\nname = \"cpt\"\ndata = \"cpt\"\n\
                 [stage.train]\nsteps = 2\nbatch_size = 2\n"
            ),
        )?;
        Ok(path)
    };
    let small = write(
        "small.toml",
        "vocab_size = 100\nhidden_size = 32\nintermediate_size = 64\nnum_attention_heads = 2\nnum_key_value_heads = 1",
    )?;
    let out = dir.path().join("run");
    let stderr = run_fails(&[
        "train",
        small.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    ensure!(
        stderr.contains("vocab_size is 100")
            && stderr.contains("cpt")
            && stderr.contains("token id"),
        "{stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");
    ensure!(
        !out.join("cpt/model").exists(),
        "nothing was trained on data that does not fit"
    );
    // The failed run left no checkpoint: the same output trains with settings that fit.
    let fitting = write(
        "fitting.toml",
        &format!(
            "vocab_size = {vocab}\nhidden_size = 32\nintermediate_size = 64\nnum_attention_heads = 2\nnum_key_value_heads = 1"
        ),
    )?;
    run_ok(&[
        "train",
        fitting.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    ensure!(out.join("cpt/model/model.safetensors").exists());
    let typo = write(
        "typo.toml",
        &format!("vocab_size = {vocab}\nnum_layers = 2\nhidden_size = 32"),
    )?;
    let stderr = run_fails(&[
        "train",
        typo.to_str().unwrap(),
        "--out",
        dir.path().join("typo").to_str().unwrap(),
    ])?;
    ensure!(
        stderr.contains("num_layers") && stderr.contains("typo.toml"),
        "{stderr}"
    );
    Ok(())
}

/// A two-stage config (full CPT with gradient accumulation, then LoRA) for data-parallel runs.
fn ddp_config(dir: &Path, vocab: usize) -> Result<PathBuf> {
    let path = dir.join("ddp.toml");
    std::fs::write(
        &path,
        format!(
            r#"seed = 11
device = "cpu"

[init]
model_type = "llama"
vocab_size = {vocab}
hidden_size = 48
head_dim = 16
intermediate_size = 96
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
tie_word_embeddings = false

[[stage]]
name = "cpt"
data = "cpt"
heldout = "heldout"
[stage.train]
steps = 12
batch_size = 8
grad_accumulation = 2
learning_rate = 2e-3
warmup_steps = 2
checkpoint_every = 3
eval_every = 6

[[stage]]
name = "lora"
data = "cpt"
method = "lora"
[stage.train]
steps = 6
batch_size = 4
learning_rate = 5e-3
warmup_steps = 1
checkpoint_every = 2
[stage.lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = ["q_proj", "v_proj", "down_proj"]
"#
        ),
    )?;
    Ok(path)
}

fn losses(out: &Path, stage: &str) -> Result<Vec<f64>> {
    std::fs::read_to_string(out.join(stage).join("train_log.jsonl"))?
        .lines()
        .map(|l| {
            Ok(serde_json::from_str::<serde_json::Value>(l)?["loss"]
                .as_f64()
                .unwrap_or(f64::NAN))
        })
        .collect()
}

/// The largest absolute difference between two model directories' weights (same names required).
fn max_weight_difference(a: &Path, b: &Path) -> Result<f64> {
    let read = |dir: &Path| dapt_trainer::weights::read_safetensors(&dir.join("model.safetensors"));
    let (a, b) = (read(a)?, read(b)?);
    ensure!(a.len() == b.len() && !a.is_empty());
    let b: std::collections::HashMap<String, dapt_trainer::tch::Tensor> = b.into_iter().collect();
    let mut worst = 0.0f64;
    for (name, x) in a {
        let y = b
            .get(&name)
            .ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
        worst = worst.max((x - y).abs().max().double_value(&[]));
    }
    Ok(worst)
}

fn launched_rank(config: &Path, out: &Path, rank: usize, port: u16) -> Command {
    let mut command = train_command(config, out);
    command
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .env("DAPT_DIST_TIMEOUT_S", "30");
    command
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for(path: &Path, seconds: u64) -> Result<()> {
    let started = std::time::Instant::now();
    while !path.exists() {
        ensure!(
            started.elapsed().as_secs() < seconds,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Data-parallel training over two gloo ranks on 127.0.0.1: the same per-step losses and final
/// weights as one process on the full batch (DDP and ZeRO-1), a rank killed mid-run ends the other
/// with an error within the timeout, and both ranks killed then rerun give the uninterrupted run's
/// bytes (DDP and ZeRO-1).
#[test]
fn two_gloo_ranks_train_as_one_process_and_resume_after_a_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_tokenizer, vocab) = prepare(dir.path())?;
    let config = ddp_config(dir.path(), vocab)?;
    let run = |out: &Path, extra: &[&str]| -> Result<String> {
        let output = train_command(&config, out).args(extra).output()?;
        ensure!(
            output.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let one = dir.path().join("one");
    run(&one, &[])?;
    let two = dir.path().join("two");
    run(&two, &["--nproc", "2"])?;
    let zero = dir.path().join("zero");
    let zero_log = {
        let output = train_command(&config, &zero)
            .args(["--nproc", "2", "--zero1"])
            .env("DAPT_LOG", "info")
            .output()?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for stage in ["cpt", "lora"] {
        let (a, b, z) = (
            losses(&one, stage)?,
            losses(&two, stage)?,
            losses(&zero, stage)?,
        );
        ensure!(a.len() == b.len() && a.len() == z.len() && !a.is_empty());
        for (step, ((x, y), w)) in a.iter().zip(&b).zip(&z).enumerate() {
            ensure!(
                (x - y).abs() <= 1e-6 && (y - w).abs() <= 1e-6,
                "{stage} step {step}: loss {x} (one process) vs {y} (two ranks) vs {w} (ZeRO-1)"
            );
        }
        for (x, y, what) in [(&one, &two, "two ranks"), (&two, &zero, "ZeRO-1")] {
            let difference =
                max_weight_difference(&x.join(stage).join("model"), &y.join(stage).join("model"))?;
            ensure!(
                difference <= 1e-6,
                "{stage}: {what}: weights differ by {difference}"
            );
        }
    }
    // Both runs saw the whole global batch: the same target tokens per step.
    let tokens = |out: &Path| -> Result<i64> {
        Ok(stage_report(out, "cpt")?["target_tokens"]
            .as_i64()
            .unwrap_or(0))
    };
    ensure!(tokens(&one)? == tokens(&two)? && tokens(&one)? > 0);
    // Rank 0 evaluated held-out rows; only rank 0 wrote the stage.
    let report = stage_report(&two, "cpt")?;
    ensure!(report["heldout_after"].as_f64().is_some(), "{report}");
    // ZeRO-1 halves the optimiser state per rank (the full state is 2 × 4 bytes per weight).
    let held: Vec<i64> = zero_log
        .lines()
        .filter(|l| l.contains("optimiser state held by this rank") && l.contains("zero1=true"))
        .filter_map(|l| {
            l.split("optimizer_state_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ensure!(held.len() >= 4, "{zero_log}");
    let trainable = stage_report(&one, "cpt")?["trainable_parameters"]
        .as_i64()
        .unwrap_or(0);
    let full_state = 8 * trainable;
    ensure!(
        held[..2].iter().sum::<i64>() == full_state
            && held[..2].iter().all(|&h| h < full_state * 6 / 10),
        "per-rank optimiser state {held:?} of {full_state}"
    );

    // A rank killed mid-run: the other ends with an error naming the distributed step, in time.
    let lost = dir.path().join("lost");
    let port = free_port()?;
    let rank0 = launched_rank(&config, &lost, 0, port)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut rank1 = launched_rank(&config, &lost, 1, port).spawn()?;
    wait_for(&lost.join("cpt/checkpoints/latest"), 120)?;
    rank1.kill()?;
    rank1.wait()?;
    let killed_at = std::time::Instant::now();
    let output = rank0.wait_with_output()?;
    let waited = killed_at.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("distributed training (rank 0 of 2)"),
        "rank 0 after rank 1 was killed: {stderr}"
    );
    ensure!(waited < 40.0, "rank 0 took {waited:.1} s to notice");

    // Both ranks killed after a checkpoint, then rerun: the uninterrupted run's bytes (DDP, then
    // ZeRO-1, whose checkpoint holds the moments gathered from both owners).
    let kill_both_after_a_checkpoint = |name: &str, extra: &[&str]| -> Result<PathBuf> {
        let killed = dir.path().join(name);
        let port = free_port()?;
        let mut ranks = Vec::new();
        for rank in 0..2 {
            ranks.push(
                launched_rank(&config, &killed, rank, port)
                    .args(extra)
                    .spawn()?,
            );
        }
        wait_for(&killed.join("cpt/checkpoints/latest"), 120)?;
        for rank in &mut ranks {
            rank.kill()?;
            rank.wait()?;
        }
        Ok(killed)
    };
    let same_as = |reference: &Path, resumed: &Path| -> Result<()> {
        for stage in ["cpt", "lora"] {
            let a = std::fs::read(reference.join(stage).join("model/model.safetensors"))?;
            let b = std::fs::read(resumed.join(stage).join("model/model.safetensors"))?;
            ensure!(
                a == b,
                "{}: the resumed run's model differs",
                resumed.join(stage).display()
            );
            ensure!(
                losses(reference, stage)? == losses(resumed, stage)?,
                "{}: loss curves differ",
                resumed.join(stage).display()
            );
        }
        Ok(())
    };
    let killed = kill_both_after_a_checkpoint("killed", &[])?;
    run(&killed, &["--nproc", "2"])?;
    same_as(&two, &killed)?;

    let killed = kill_both_after_a_checkpoint("killed-zero1", &["--zero1"])?;
    let checkpoint = std::fs::read_dir(killed.join("cpt/checkpoints"))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path().join("optimizer.safetensors"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no checkpoint"))?;
    let saved: i64 = dapt_trainer::weights::read_safetensors(&checkpoint)?
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    ensure!(
        saved == 2 * trainable,
        "the ZeRO-1 checkpoint holds {saved} moment values, not both moments of all {trainable} weights"
    );
    run(&killed, &["--nproc", "2", "--zero1"])?;
    same_as(&zero, &killed)?;
    Ok(())
}
