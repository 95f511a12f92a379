//! `dapt sweep` on the test corpus: three mixtures of Russian, English and code, each assembled from
//! components tokenised once, a proxy trained and evaluated per mixture; a rerun with a fourth variant
//! tokenises nothing and retrains nothing that was done.
use std::path::Path;

use crate::common::{run_fails, run_ok, test_data};
use anyhow::{ensure, Result};

const ID: &str = "concat(path, '#', CAST(i AS VARCHAR)) AS id";

fn files(dir: &Path, variants: &str) -> Result<std::path::PathBuf> {
    let corpus = test_data().canonicalize()?.join("corpus");
    let tokenizer = test_data()
        .canonicalize()?
        .join("tokenizers/qwen3/tokenizer.json");
    // A small tokenizer keeps the proxy small: train one on the components' text.
    let small = dir.join("tokenizer.json");
    if !small.exists() {
        std::fs::write(
            dir.join("tok.toml"),
            format!(
                "[sources.ru]\nurl = {:?}\n[sources.en]\nurl = {:?}\n",
                corpus.join("ru/fortunes-ru.jsonl"),
                corpus.join("en/fortunes.jsonl")
            ),
        )?;
        run_ok(&[
            "tokenizer",
            "train",
            "--config",
            dir.join("tok.toml").to_str().unwrap(),
            "-e",
            "SELECT text FROM ru UNION ALL SELECT text FROM en",
            "--vocab-size",
            "512",
            "--out",
            small.to_str().unwrap(),
        ])?;
    }
    let _ = tokenizer;
    std::fs::write(
        dir.join("mix.toml"),
        format!(
            "seed = 3\ntokenizer = {small:?}\n\
             [sources.ru]\nurl = {:?}\n[sources.en]\nurl = {:?}\n[sources.code]\nurl = {:?}\n\
             [[component]]\nname = \"ru\"\nweight = 0.4\nsql = \"SELECT {ID}, text FROM ru WHERE i % 10 <> 0\"\n\
             [[component]]\nname = \"en\"\nweight = 0.3\nsql = \"SELECT {ID}, text FROM en\"\n\
             [[component]]\nname = \"code\"\nweight = 0.3\nsql = \"SELECT {ID}, text FROM code WHERE i < 600 AND character_length(text) < 3000\"\n",
            corpus.join("ru/fortunes-ru.jsonl"),
            corpus.join("en/fortunes.jsonl"),
            corpus.join("code/rust-src.jsonl"),
        ),
    )?;
    // Held-out Russian: the documents the ru component leaves out.
    let heldout: String = std::fs::read_to_string(corpus.join("ru/fortunes-ru.jsonl"))?
        .lines()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0)
        .take(150)
        .map(|(_, l)| l.to_string() + "\n")
        .collect();
    std::fs::write(dir.join("heldout-ru.jsonl"), heldout)?;
    let path = dir.join("sweep.toml");
    std::fs::write(
        &path,
        format!(
            "seed = 5\nmix = \"mix.toml\"\ntokens = 40000\nseq_len = 64\n{variants}\
             [model]\nmodel_type = \"llama\"\nhidden_size = 48\nintermediate_size = 96\nnum_hidden_layers = 2\n\
             num_attention_heads = 4\nnum_key_value_heads = 2\ntie_word_embeddings = true\n\
             [train]\nsteps = 40\nbatch_size = 8\nlearning_rate = 1e-2\nwarmup_steps = 4\n\
             [eval]\nobjective = \"bpb/ru\"\n[eval.texts]\nru = \"heldout-ru.jsonl\"\n"
        ),
    )?;
    Ok(path)
}

const THREE: &str =
    "[[variant]]\nname = \"ru-heavy\"\nweights = { ru = 0.8, en = 0.1, code = 0.1 }\n\
     [[variant]]\nname = \"balanced\"\nweights = { ru = 0.34, en = 0.33, code = 0.33 }\n\
     [[variant]]\nname = \"code-heavy\"\nweights = { ru = 0.1, en = 0.1, code = 0.8 }\n";

/// `dapt sweep FILE --out OUT`; its stdout.
fn sweep(file: &Path, out: &Path) -> Result<String> {
    run_ok(&[
        "sweep",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn results(dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("sweep_results.json"),
    )?)?)
}

#[test]
fn sweep_tokenises_components_once_and_ranks_mixtures() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sweep = files(dir.path(), THREE)?;
    let out = dir.path().join("out");
    let stdout = run_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    ensure!(
        stdout.contains("| ru-heavy |") && stdout.contains("## Regression"),
        "{stdout}"
    );
    let first = results(&out)?;
    let data = &first["data"];
    ensure!(data["components_tokenised"] == 3);
    // Every component text went through the tokenizer exactly once, however many variants.
    ensure!(
        data["bytes_tokenised"] == data["component_bytes"]
            && data["bytes_tokenised"].as_u64().unwrap_or(0) > 0
    );
    let variants = first["variants"].as_array().unwrap();
    ensure!(variants.len() == 3);
    for v in variants {
        for (component, weight) in v["weights"].as_object().unwrap() {
            let share = v["shares"][component].as_f64().unwrap();
            let weight = weight.as_f64().unwrap();
            ensure!(
                (share - weight).abs() < 0.02,
                "{}: {component} share {share} vs weight {weight}",
                v["name"]
            );
        }
        ensure!(v["metrics"]["bpb/ru"].as_f64().unwrap_or(0.0) > 0.0);
    }
    let bpb = |name: &str| -> f64 {
        variants.iter().find(|v| v["name"] == name).unwrap()["metrics"]["bpb/ru"]
            .as_f64()
            .unwrap()
    };
    ensure!(
        bpb("ru-heavy") < bpb("code-heavy"),
        "more Russian, better Russian: {} vs {}",
        bpb("ru-heavy"),
        bpb("code-heavy")
    );
    let regression = &first["regression"];
    ensure!(regression["objective"] == "bpb/ru");
    ensure!(
        regression["coefficients"]["ru"].as_f64().unwrap()
            < regression["coefficients"]["code"].as_f64().unwrap()
    );
    ensure!(
        regression["predicted_best"]["ru"].as_f64().unwrap() >= 0.5,
        "{regression}"
    );
    ensure!(out.join("plots/bpb_ru.svg").exists() && out.join("sweep.md").exists());

    // A fourth variant: components come from the cache; finished variants are not retrained.
    let log_before = std::fs::read(out.join("variants/balanced/run/train/train_log.jsonl"))?;
    let four =
        format!("{THREE}[[variant]]\nname = \"no-code\"\nweights = {{ ru = 0.5, en = 0.5 }}\n");
    let sweep = files(dir.path(), &four)?;
    run_ok(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    let second = results(&out)?;
    ensure!(second["data"]["components_tokenised"] == 0 && second["data"]["bytes_tokenised"] == 0);
    ensure!(second["variants"].as_array().unwrap().len() == 4);
    ensure!(std::fs::read(out.join("variants/balanced/run/train/train_log.jsonl"))? == log_before);
    for (a, b) in first["variants"]
        .as_array()
        .unwrap()
        .iter()
        .zip(second["variants"].as_array().unwrap())
    {
        ensure!(a["metrics"] == b["metrics"], "reruns give the same results");
    }
    ensure!(second["variants"][3]["shares"]["code"].as_f64() == Some(0.0));

    // LoRA on a base model instead of proxies from scratch: the components come from the cache.
    let base = out.join("variants/balanced/run/train/model");
    let text = std::fs::read_to_string(&sweep)?;
    let model_start = text.find("[model]").unwrap();
    let train_start = text.find("[train]").unwrap();
    let lora_sweep = dir.path().join("lora-sweep.toml");
    std::fs::write(
        &lora_sweep,
        format!(
            "base = {:?}\nmethod = \"lora\"\n{}[lora]\nr = 4\ndropout = 0.0\n{}",
            base,
            &text[..model_start],
            &text[train_start..].replace("steps = 40", "steps = 10")
        ),
    )?;
    let lora_out = dir.path().join("lora-out");
    std::fs::create_dir_all(&lora_out)?;
    copy_dir(&out.join("components"), &lora_out.join("components"))?;
    run_ok(&[
        "sweep",
        lora_sweep.to_str().unwrap(),
        "--out",
        lora_out.to_str().unwrap(),
    ])?;
    let lora = results(&lora_out)?;
    ensure!(
        lora["data"]["components_tokenised"] == 0
            && lora["variants"].as_array().unwrap().len() == 4
    );
    let stage: serde_json::Value = serde_json::from_slice(&std::fs::read(
        lora_out.join("variants/ru-heavy/run/train/stage.json"),
    )?)?;
    ensure!(
        stage["method"] == "lora"
            && lora_out
                .join("variants/ru-heavy/run/train/adapter/adapter_config.json")
                .exists()
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// A variant naming a component the mix does not have is an error naming both.
#[test]
fn sweep_rejects_unknown_components() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sweep = files(
        dir.path(),
        "[[variant]]\nname = \"x\"\nweights = { math = 1.0 }\n",
    )?;
    let out = dir.path().join("o");
    let stderr = run_fails(&[
        "sweep",
        sweep.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])?;
    ensure!(
        stderr.contains("\"math\"") && stderr.contains("ru, en, code"),
        "{stderr}"
    );
    Ok(())
}

/// A hyperparameter search over `lora.r` × `learning_rate` by successive halving: four trials train
/// 10 steps, the better two go on to 20, the best to 40 — resumed from their checkpoints, so the
/// winner's model is what a straight 40-step run of its settings gives. The planted best (the
/// learning rate that moves the model at all) wins; a rerun reuses every trial.
#[test]
fn search_halves_trials_and_continues_the_best() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let search_toml = "method = \"lora\"\n[lora]\nr = 4\ndropout = 0.0\n\
                  [search.space]\nlearning_rate = [1e-5, 3e-2]\n\"lora.r\" = [2, 8]\n\
                  [search.halving]\nmin_steps = 10\neta = 2\n";
    let file = files(dir.path(), search_toml)?;
    let out = dir.path().join("out");
    let stdout = sweep(&file, &out)?;
    ensure!(stdout.contains("## Hyperparameter search"), "{stdout}");
    let first = results(&out)?;
    let search = &first["search"];
    ensure!(search["objective"] == "bpb/ru" && search["higher_is_better"] == false);
    ensure!(
        search["rungs"] == serde_json::json!([10, 20, 40]),
        "{search}"
    );
    let trials = search["trials"].as_array().unwrap();
    ensure!(trials.len() == 4);
    let reached = |t: &serde_json::Value| t["rungs"].as_array().map_or(0, Vec::len);
    let mut counts: Vec<usize> = trials.iter().map(reached).collect();
    counts.sort_unstable();
    ensure!(counts == [1, 1, 2, 3], "4 → 2 → 1: {counts:?}");
    for t in trials {
        if t["settings"]["learning_rate"] == 1e-5 {
            ensure!(
                reached(t) == 1,
                "the useless learning rate stops first: {t}"
            );
        }
    }
    let best = trials.iter().find(|t| t["name"] == search["best"]).unwrap();
    ensure!(
        best["settings"]["learning_rate"] == 3e-2 && reached(best) == 3,
        "{best}"
    );
    let markdown = std::fs::read_to_string(out.join("sweep.md"))?;
    ensure!(
        markdown.contains("Best: **") && markdown.contains("stopped"),
        "{markdown}"
    );
    let chart = std::fs::read_to_string(out.join("plots/search.svg"))?;
    ensure!(
        chart.contains("<svg") && chart.contains("★ ") && chart.contains("learning_rate=0.03"),
        "the chart names the best settings"
    );

    // The winner's 40 steps equal a straight run of its settings: same losses, same score.
    let r = best["settings"]["lora.r"].clone();
    let straight = files(
        dir.path(),
        &format!(
            "method = \"lora\"\n[lora]\nr = 4\ndropout = 0.0\n\
             [search.space]\nlearning_rate = [3e-2]\n\"lora.r\" = [{r}]\n"
        ),
    )?;
    let straight_out = dir.path().join("straight");
    std::fs::create_dir_all(&straight_out)?;
    copy_dir(&out.join("components"), &straight_out.join("components"))?;
    sweep(&straight, &straight_out)?;
    let once = results(&straight_out)?;
    let losses = |path: std::path::PathBuf| -> Result<Vec<f64>> {
        std::fs::read_to_string(path)?
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok(v["loss"].as_f64().unwrap_or(f64::NAN))
            })
            .collect()
    };
    let halved = losses(
        out.join("trials")
            .join(best["name"].as_str().unwrap())
            .join("steps-40/train/train_log.jsonl"),
    )?;
    let direct = losses(straight_out.join("trials/t0/steps-40/train/train_log.jsonl"))?;
    ensure!(
        halved.len() == 40 && halved == direct,
        "{halved:?}\n{direct:?}"
    );
    ensure!(
        once["search"]["trials"][0]["rungs"][0]["metrics"]["bpb/ru"]
            == best["rungs"][2]["metrics"]["bpb/ru"]
    );

    // A rerun trains nothing again and ranks the same.
    let log = out
        .join("trials")
        .join(best["name"].as_str().unwrap())
        .join("steps-40/train/train_log.jsonl");
    let before = std::fs::read(&log)?;
    let file = files(dir.path(), search_toml)?;
    sweep(&file, &out)?;
    ensure!(std::fs::read(&log)? == before);
    let again = results(&out)?;
    ensure!(
        again["search"] == first["search"],
        "{}\n{}",
        again["search"],
        first["search"]
    );
    Ok(())
}
