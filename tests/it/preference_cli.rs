//! Preference training as a user runs it: pairs made from a BIG-bench multiple-choice task (the
//! correct answer, in Russian, against each wrong one, in English — a planted preference for
//! answering in Russian), `dapt pack --mode preference`, then `dapt train` with an SFT stage and a
//! LoRA DPO stage after it (and a SimPO stage), held-out pairs from other questions.
use std::path::Path;

use crate::common::{run_fails, run_ok, test_data};
use anyhow::{ensure, Result};

/// `pairs.jsonl` (questions 0..56) and `heldout.jsonl` (56..70), the SFT answers, a tokenizer.
fn prepare(dir: &Path) -> Result<String> {
    let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        test_data().join("tasks/bigbench/general_knowledge/task.json"),
    )?)?;
    let (mut train, mut heldout, mut sft) = (String::new(), String::new(), String::new());
    for (q, example) in task["examples"].as_array().unwrap().iter().enumerate() {
        let scores = example["target_scores"].as_object().unwrap();
        let correct = scores
            .iter()
            .find(|(_, s)| s.as_f64() == Some(1.0))
            .map(|(c, _)| c.clone())
            .unwrap();
        let chosen = format!("Ответ: {correct}.");
        for (w, (wrong, _)) in scores.iter().filter(|(c, _)| **c != correct).enumerate() {
            let line = serde_json::json!({
                "id": format!("q{q}w{w}"),
                "prompt": example["input"],
                "chosen": chosen,
                "rejected": format!("Answer: {wrong}."),
            })
            .to_string()
                + "\n";
            if q < 56 {
                train.push_str(&line);
            } else {
                heldout.push_str(&line);
            }
        }
        if q < 56 {
            sft.push_str(
                &(serde_json::json!({"id": format!("q{q}"), "prompt": example["input"], "response": chosen})
                    .to_string()
                    + "\n"),
            );
        }
    }
    std::fs::write(dir.join("pairs.jsonl"), train)?;
    std::fs::write(dir.join("heldout.jsonl"), heldout)?;
    std::fs::write(dir.join("sft.jsonl"), sft)?;
    let corpus = test_data().canonicalize()?.join("corpus");
    let sources = dir.join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "[sources.ru]\nurl = {:?}\n[sources.pairs]\nurl = {:?}\n[sources.heldout]\nurl = {:?}\n[sources.sft]\nurl = {:?}\n",
            corpus.join("ru/fortunes-ru.jsonl"),
            dir.join("pairs.jsonl"),
            dir.join("heldout.jsonl"),
            dir.join("sft.jsonl"),
        ),
    )?;
    let sources = sources.display().to_string();
    let tokenizer = dir.join("tokenizer.json");
    run_ok(&[
        "tokenizer",
        "train",
        "--config",
        &sources,
        "-e",
        "SELECT text FROM ru UNION ALL SELECT prompt AS text FROM pairs UNION ALL SELECT chosen AS text FROM pairs UNION ALL SELECT rejected AS text FROM pairs",
        "--vocab-size",
        "512",
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
    let pack = |mode: &str, query: &str, out: &str| -> Result<String> {
        run_ok(&[
            "pack",
            "--mode",
            mode,
            "--config",
            &sources,
            "-e",
            query,
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--chat-template",
            "chatml",
            "--seq-len",
            "256",
            "--pad-token",
            "<|pad|>",
            "--eos-token",
            "<|im_end|>",
            "--out",
            dir.join(out).to_str().unwrap(),
        ])
    };
    let packed = pack(
        "preference",
        "SELECT id, prompt, chosen, rejected FROM pairs",
        "pairs",
    )?;
    ensure!(packed.contains(" 0 dropped"), "{packed}");
    let held = pack(
        "preference",
        "SELECT id, prompt, chosen, rejected FROM heldout",
        "heldout-pairs",
    )?;
    ensure!(held.contains(" 0 dropped"), "{held}");
    pack("sft", "SELECT id, prompt, response FROM sft", "sft")?;
    Ok(dapt_packer::TokenizerFile::load(&tokenizer)?
        .vocab_size()
        .to_string())
}

fn config(dir: &Path, vocab: &str, data: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("train.toml");
    std::fs::write(
        &path,
        format!(
            r#"seed = 3
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
name = "sft"
data = "sft"
[stage.train]
steps = 15
batch_size = 8
learning_rate = 5e-3
warmup_steps = 2
objective = "sft"

[[stage]]
name = "dpo"
data = "{data}"
heldout = "heldout-pairs"
method = "lora"
[stage.train]
steps = 30
batch_size = 4
learning_rate = 5e-3
warmup_steps = 3
objective = "dpo"
beta = 0.1
loss = "sigmoid"
checkpoint_every = 10
[stage.lora]
r = 8
alpha = 16
target_modules = ["all-linear"]

[[stage]]
name = "simpo"
data = "{data}"
heldout = "heldout-pairs"
method = "lora"
[stage.train]
steps = 20
batch_size = 4
learning_rate = 5e-3
warmup_steps = 2
objective = "simpo"
beta = 2.0
simpo_gamma = 0.5
[stage.lora]
r = 8
alpha = 16
target_modules = ["all-linear"]
"#
        ),
    )?;
    Ok(path)
}

/// SFT, then LoRA DPO: held-out reward accuracy goes from 0 (the policy is its reference) to ≥ 0.9,
/// every step logs the reward margin, accuracy and log-probabilities, the reference is computed
/// once and kept; SimPO after it also prefers the Russian answers; DPO on rows that are not pairs
/// is refused naming the row.
#[test]
fn dpo_after_sft_learns_a_planted_preference() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vocab = prepare(dir.path())?;
    let out = dir.path().join("out");
    let config_path = config(dir.path(), &vocab, "pairs")?;
    run_ok(&[
        "train",
        config_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dpo/stage.json"))?)?;
    let before = &report["heldout_preference_before"];
    let after = &report["heldout_preference_after"];
    eprintln!("held-out pairs before DPO: {before}\nafter DPO: {after}");
    ensure!(
        before["pairs"].as_i64().unwrap() >= 40,
        "held-out pairs: {before}"
    );
    ensure!(
        before["reward_accuracy"].as_f64().unwrap() <= 0.5,
        "before DPO: {before}"
    );
    ensure!(
        after["reward_accuracy"].as_f64().unwrap() >= 0.9,
        "after DPO: {after}"
    );
    ensure!(
        after["reward_margin"].as_f64().unwrap() > 0.0,
        "after DPO: {after}"
    );
    ensure!(
        report["heldout_after"].as_f64().unwrap() < report["heldout_before"].as_f64().unwrap(),
        "held-out DPO loss: {report}"
    );
    // LoRA: an adapter, no second model; the reference kept beside the checkpoints.
    ensure!(out.join("dpo/adapter/adapter_config.json").exists());
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dpo/reference_logps.json"))?)?;
    ensure!(reference["rows"].as_array().unwrap().len() >= 10);
    let log = std::fs::read_to_string(out.join("dpo/train_log.jsonl"))?;
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(steps.len() == 30);
    for step in &steps {
        let p = &step["preference"];
        for key in [
            "reward_margin",
            "reward_accuracy",
            "chosen_logps",
            "rejected_logps",
        ] {
            ensure!(p[key].is_number(), "step log without {key}: {step}");
        }
        ensure!(p["pairs"].as_i64().unwrap() >= 4, "{step}");
    }
    let last = &steps[29]["preference"];
    ensure!(
        last["reward_accuracy"].as_f64().unwrap() >= 0.9,
        "last step: {last}"
    );
    let simpo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("simpo/stage.json"))?)?;
    ensure!(
        simpo["heldout_preference_after"]["reward_accuracy"]
            .as_f64()
            .unwrap()
            >= 0.9,
        "after SimPO: {simpo}"
    );
    eprintln!("after SimPO: {}", simpo["heldout_preference_after"]);
    ensure!(!out.join("simpo/reference_logps.json").exists());

    // Data-parallel DPO: two gloo ranks give one process's losses, preference metrics and weights
    // (the loss is averaged over the pairs of the global batch; each rank computes the reference
    // log-probabilities of its own rows).
    let ddp = dir.path().join("ddp.toml");
    std::fs::write(
        &ddp,
        format!(
            r#"seed = 4
device = "cpu"
model = {:?}

[[stage]]
name = "dpo"
data = "pairs"
method = "lora"
[stage.train]
steps = 4
batch_size = 4
learning_rate = 5e-3
warmup_steps = 1
objective = "dpo"
beta = 0.1
[stage.lora]
r = 4
alpha = 8
dropout = 0.0
target_modules = ["all-linear"]
"#,
            out.join("sft/model")
        ),
    )?;
    let (one, two) = (dir.path().join("ddp-one"), dir.path().join("ddp-two"));
    run_ok(&[
        "train",
        ddp.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
    ])?;
    run_ok(&[
        "train",
        ddp.to_str().unwrap(),
        "--out",
        two.to_str().unwrap(),
        "--nproc",
        "2",
    ])?;
    let log = |dir: &Path| -> Result<Vec<serde_json::Value>> {
        std::fs::read_to_string(dir.join("dpo/train_log.jsonl"))?
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    };
    let (a, b) = (log(&one)?, log(&two)?);
    ensure!(a.len() == 4 && b.len() == 4);
    for (x, y) in a.iter().zip(&b) {
        for (pointer, what) in [
            ("/loss", "loss"),
            ("/preference/reward_margin", "reward margin"),
            ("/preference/chosen_logps", "chosen log-probabilities"),
        ] {
            let value =
                |s: &serde_json::Value| s.pointer(pointer).and_then(serde_json::Value::as_f64);
            let (x, y) = (value(x).unwrap(), value(y).unwrap());
            ensure!(
                (x - y).abs() <= 1e-5,
                "{what}: {x} (one process) vs {y} (two ranks)"
            );
        }
        ensure!(
            x["preference"]["pairs"] == y["preference"]["pairs"],
            "{x} vs {y}"
        );
    }

    // DPO on SFT rows (single chats, not pairs) is refused, naming the row.
    let bad_out = dir.path().join("bad");
    let bad = config(dir.path(), &vocab, "sft")?;
    let error = run_fails(&[
        "train",
        bad.to_str().unwrap(),
        "--out",
        bad_out.to_str().unwrap(),
    ])?;
    ensure!(error.contains("row ") && error.contains("pairs"), "{error}");
    Ok(())
}

/// Pairs in chat form (`chosen`/`rejected` message lists) must share their prompt.
#[test]
fn preference_chats_must_share_the_prompt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokenizer = dir.path().join("tokenizer.json");
    let data = dir.path().join("chats.jsonl");
    let chat = |user: &str, answer: &str| {
        serde_json::json!([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
            .to_string()
    };
    std::fs::write(
        &data,
        [
            serde_json::json!({"id": "a", "chosen": chat("Сколько ног у лошади?", "Четыре."), "rejected": chat("Сколько ног у лошади?", "Две.")}),
            serde_json::json!({"id": "b", "chosen": chat("Столица Франции?", "Париж."), "rejected": chat("Столица Германии?", "Берлин.")}),
        ]
        .iter()
        .map(|l| l.to_string() + "\n")
        .collect::<String>(),
    )?;
    let sources = dir.path().join("sources.toml");
    std::fs::write(&sources, format!("[sources.chats]\nurl = {data:?}\n"))?;
    run_ok(&[
        "tokenizer",
        "train",
        "--config",
        sources.to_str().unwrap(),
        "-e",
        "SELECT chosen AS text FROM chats",
        "--vocab-size",
        "300",
        "--special-token",
        "<|endoftext|>",
        "--special-token",
        "<|im_start|>",
        "--special-token",
        "<|im_end|>",
        "--out",
        tokenizer.to_str().unwrap(),
    ])?;
    let pack = |query: &str, out: &str| {
        crate::common::dapt(&[
            "pack",
            "--mode",
            "preference",
            "--config",
            sources.to_str().unwrap(),
            "-e",
            query,
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--chat-template",
            "chatml",
            "--seq-len",
            "256",
            "--out",
            dir.path().join(out).to_str().unwrap(),
        ])
    };
    let bad = pack("SELECT id, chosen, rejected FROM chats", "bad");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && stderr.contains("row b") && stderr.contains("share"),
        "{stderr}"
    );
    let good = pack(
        "SELECT id, chosen, rejected FROM chats WHERE id = 'a'",
        "good",
    );
    ensure!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    // TRL's conversational layout as JSON lines with nested lists (read as JSON text): a prompt
    // list, the responses as lists of what follows it; the same pair packs to the same row.
    let trl = dir.path().join("trl.jsonl");
    std::fs::write(
        &trl,
        serde_json::json!({
            "id": "a",
            "prompt": [{"role": "user", "content": "Сколько ног у лошади?"}],
            "chosen": [{"role": "assistant", "content": "Четыре."}],
            "rejected": [{"role": "assistant", "content": "Две."}],
        })
        .to_string()
            + "\n",
    )?;
    std::fs::write(
        &sources,
        format!("[sources.chats]\nurl = {data:?}\n[sources.trl]\nurl = {trl:?}\n"),
    )?;
    let trl_layout = pack("SELECT id, prompt, chosen, rejected FROM trl", "trl");
    ensure!(
        trl_layout.status.success(),
        "{}",
        String::from_utf8_lossy(&trl_layout.stderr)
    );
    let read = |name: &str| {
        dapt_trainer::read_all_rows(
            dapt_core::Location::parse(dir.path().join(name).to_str().unwrap())?,
            16,
        )
    };
    ensure!(read("trl")? == read("good")?, "the two layouts pack alike");
    let rows = read("good")?;
    ensure!(rows.len() == 1 && rows[0].segment_lengths.len() == 2);
    ensure!(rows[0].segment_sources == ["chosen", "rejected"]);
    // Loss on the final answers only: the prompt's tokens are not targets.
    let first = rows[0].segment_lengths[0] as usize;
    let masked = rows[0].loss_mask[..first].iter().filter(|m| **m).count();
    ensure!(masked > 0 && masked < first / 2, "{masked} of {first}");
    Ok(())
}
