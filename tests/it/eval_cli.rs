//! `dapt eval`, `dapt report` and `dapt serve` as a user runs them, on a task whose answers are planted:
//! facts from BIG-bench's qa_wikidata are packed and trained into a small model; its multiple-choice
//! accuracy goes from near chance to 1.0, results do not depend on the batch size, perplexity equals
//! the trainer's held-out loss, the report compares base and trained, and the completions endpoint
//! answers a real HTTP client with the log-probabilities `dapt eval` computed.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

use crate::common::{run_fails, run_ok, test_data};
use anyhow::{ensure, Context, Result};

/// 40 facts with one-word answers, and a 4-choice task over them.
fn planted(dir: &Path) -> Result<()> {
    let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        test_data().join("tasks/bigbench/qa_wikidata/task.json"),
    )?)?;
    let mut facts: Vec<(String, String)> = Vec::new();
    for example in task["examples"].as_array().context("examples")? {
        let (Some(input), Some(target)) = (example["input"].as_str(), example["target"].as_str())
        else {
            continue;
        };
        if !target.contains(' ') && target.len() > 3 && !facts.iter().any(|(_, t)| t == target) {
            facts.push((input.to_string(), target.to_string()));
        }
        if facts.len() == 40 {
            break;
        }
    }
    let mut docs = String::new();
    let mut questions = String::new();
    for (i, (input, target)) in facts.iter().enumerate() {
        // Four copies: packing splits documents across rows, each copy at another place.
        for copy in 0..4 {
            docs.push_str(
                &(serde_json::json!({"id": format!("f{i}-{copy}"), "text": format!("{input} {target}.")})
                    .to_string()
                    + "\n"),
            );
        }
        let gold = (i * 7) % 4;
        let mut choices: Vec<String> = (1..4)
            .map(|k| facts[(i + k * 11) % facts.len()].1.clone())
            .collect();
        choices.insert(gold, target.clone());
        questions.push_str(
            &(serde_json::json!({"id": format!("q{i}"), "context": input, "choices": choices, "gold": gold}).to_string() + "\n"),
        );
    }
    std::fs::write(dir.join("facts.jsonl"), docs)?;
    std::fs::write(dir.join("planted.jsonl"), questions)?;
    let prompts = [
        "Пакетный менеджер",
        "Система устанавливает",
        "Файл конфигурации",
    ]
    .iter()
    .map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n")
    .collect::<String>();
    std::fs::write(dir.join("prompts.jsonl"), prompts)?;
    Ok(())
}

fn eval_json(path: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Sends one HTTP/1.1 request and returns the status and JSON body.
fn http(
    address: &str,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect(address)?;
    let body = body.to_string();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, json) = response.split_once("\r\n\r\n").context("no header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, serde_json::from_str(json)?))
}

#[test]
fn eval_report_and_serve_on_a_planted_task() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    planted(d)?;
    let corpus = test_data().canonicalize()?.join("corpus");
    std::fs::write(
        d.join("sources.toml"),
        format!(
            "[sources.facts]\nurl = {:?}\n[sources.ru]\nurl = {:?}\n",
            d.join("facts.jsonl"),
            corpus.join("ru/fortunes-ru.jsonl")
        ),
    )?;
    let sources = d.join("sources.toml");
    let sources = sources.to_str().unwrap();
    let tokenizer = d.join("tokenizer.json");
    run_ok(&[
        "tokenizer",
        "train",
        "--config",
        sources,
        "-e",
        "SELECT text FROM facts UNION ALL SELECT text FROM ru",
        "--vocab-size",
        "512",
        "--out",
        tokenizer.to_str().unwrap(),
    ])?;
    run_ok(&[
        "pack",
        "--config",
        sources,
        "-e",
        "SELECT id, text FROM facts",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--seq-len",
        "64",
        "--out",
        d.join("facts").to_str().unwrap(),
    ])?;
    // The held-out Russian text for bits-per-byte.
    let mut ru: String = std::fs::read_to_string(corpus.join("ru/fortunes-ru.jsonl"))?
        .lines()
        .take(200)
        .map(|l| l.to_string() + "\n")
        .collect();
    // 50 English lines among them: scored apart with --group-by source.
    for line in std::fs::read_to_string(corpus.join("en/fortunes.jsonl"))?
        .lines()
        .take(50)
    {
        ru.push_str(line);
        ru.push('\n');
    }
    std::fs::write(d.join("ru.jsonl"), ru)?;
    let vocab = dapt_packer::TokenizerFile::load(&tokenizer)?.vocab_size();
    std::fs::write(
        d.join("train.toml"),
        format!(
            "seed = 3\ndevice = \"cpu\"\n[init]\nmodel_type = \"llama\"\nvocab_size = {vocab}\nhidden_size = 64\n\
             intermediate_size = 128\nnum_hidden_layers = 2\nnum_attention_heads = 4\nnum_key_value_heads = 2\n\
             tie_word_embeddings = true\neos_token_id = 0\nmax_position_embeddings = 64\n\
             [[stage]]\nname = \"facts\"\ndata = \"facts\"\nheldout = \"facts\"\n\
             [stage.train]\nsteps = 600\nbatch_size = 8\nlearning_rate = 1e-2\nwarmup_steps = 10\nweight_decay = 0.0\n\
             [[stage]]\nname = \"lora\"\ndata = \"facts\"\nmethod = \"lora\"\n\
             [stage.train]\nsteps = 20\nbatch_size = 8\nlearning_rate = 1e-2\nwarmup_steps = 2\n\
             [stage.lora]\nr = 4\ndropout = 0.0\n"
        ),
    )?;
    run_ok(&[
        "train",
        d.join("train.toml").to_str().unwrap(),
        "--out",
        d.join("runs").to_str().unwrap(),
    ])?;
    let runs = d.join("runs");
    for entry in ["tokenizer.json"] {
        for model in ["init/model", "facts/model", "lora/model"] {
            std::fs::copy(&tokenizer, runs.join(model).join(entry))?;
        }
    }
    let eval_args = |model: &str, out: &str, batch: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "eval",
            "--model",
            runs.join(model).to_str().unwrap(),
            "--task",
            &format!("planted={}", d.join("planted.jsonl").display()),
            "--text",
            &format!("ru={}", d.join("ru.jsonl").display()),
            "--packed",
            &format!("facts={}", d.join("facts").display()),
            "--prompts",
            d.join("prompts.jsonl").to_str().unwrap(),
            "--max-tokens",
            "12",
            "--batch-size",
            batch,
            "--group-by",
            "source",
            "--device",
            "cpu",
            "--out",
            d.join(out).to_str().unwrap(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(extra.iter().map(ToString::to_string));
        args
    };
    let evaluate_with = |model: &str, out: &str, batch: &str, extra: &[&str]| {
        let args = eval_args(model, out, batch, extra);
        run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        eval_json(&d.join(out))
    };
    let evaluate = |model: &str, out: &str, batch: &str| evaluate_with(model, out, batch, &[]);
    let base = evaluate("init/model", "base.json", "16")?;
    let trained = evaluate("facts/model", "trained.json", "16")?;
    let acc = |v: &serde_json::Value| v["tasks"]["planted"]["acc"].as_f64().unwrap_or(-1.0);
    ensure!(
        acc(&base) <= 0.5,
        "before training the answers are guesses: {}",
        acc(&base)
    );
    // Nearly all are learned (600 steps at a high learning rate: which one or two stay unlearned depends
    // on the CPU's kernels; seen: 40/40 in earlier runs, 39/40 on an AVX-512 machine).
    ensure!(
        acc(&trained) >= 0.95,
        "the planted answers are learned: {} {}",
        acc(&trained),
        std::fs::read_to_string(runs.join("facts/stage.json"))?
    );
    ensure!(base["label"] == "init" && trained["label"] == "facts");

    // Batch size does not change results.
    let one = evaluate("facts/model", "trained-b1.json", "1")?;
    let seven = evaluate("facts/model", "trained-b7.json", "7")?;
    for other in [&one, &seven] {
        ensure!(acc(other) == acc(&trained));
        let pairs = other["tasks"]["planted"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .zip(trained["tasks"]["planted"]["details"].as_array().unwrap());
        for (a, b) in pairs {
            for (x, y) in a["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["logprobs"].as_array().unwrap())
            {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                ensure!(
                    (x - y).abs() < 1e-4,
                    "batch size changed a log-likelihood: {x} vs {y}"
                );
            }
        }
        let (p, q) = (
            other["bits_per_byte"]["ru"]["bits_per_byte"]
                .as_f64()
                .unwrap(),
            trained["bits_per_byte"]["ru"]["bits_per_byte"]
                .as_f64()
                .unwrap(),
        );
        ensure!((p - q).abs() < 1e-6 * q, "bits per byte: {p} vs {q}");
    }

    // `--bf16`: on a processor with AMX or AVX512-BF16 the model runs under bf16 autocast, the
    // results say so and the scores stay close to float32's; elsewhere the flag is refused.
    let ru_bpb = |v: &serde_json::Value| v["bits_per_byte"]["ru"]["bits_per_byte"].as_f64();
    if dapt_trainer::autocast::cpu_bf16_native() {
        let bf16 = evaluate_with("facts/model", "trained-bf16.json", "16", &["--bf16"])?;
        ensure!(bf16["bf16"] == true && trained.get("bf16").is_none());
        let (p, q) = (
            ru_bpb(&bf16).unwrap_or(0.0),
            ru_bpb(&trained).unwrap_or(0.0),
        );
        ensure!(
            p != q && (p - q).abs() < 0.01 * q,
            "bits per byte: bf16 {p} vs {q}"
        );
    } else {
        let args = eval_args("facts/model", "trained-bf16.json", "16", &["--bf16"]);
        let error = run_fails(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        ensure!(error.contains("AVX512-BF16"), "{error}");
    }

    // Perplexity is exp of the trainer's mean held-out loss on the same rows.
    let stage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs.join("facts/stage.json"))?)?;
    let trainer_loss = stage["heldout_after"].as_f64().unwrap();
    let eval_loss = trained["perplexity"]["facts"]["mean_loss"]
        .as_f64()
        .unwrap();
    let perplexity = trained["perplexity"]["facts"]["perplexity"]
        .as_f64()
        .unwrap();
    ensure!(
        (eval_loss - trainer_loss).abs() < 1e-5 * trainer_loss.max(1e-3),
        "{eval_loss} vs {trainer_loss}"
    );
    ensure!((perplexity - trainer_loss.exp()).abs() < 1e-4 * perplexity);
    let groups = &trained["bits_per_byte"];
    ensure!(
        groups["ru/fortunes-ru"]["documents"] == 200 && groups["ru/fortunes"]["documents"] == 50,
        "{groups}"
    );
    let nll = |k: &str| groups[k]["nll"].as_f64().unwrap();
    ensure!((nll("ru/fortunes-ru") + nll("ru/fortunes") - nll("ru")).abs() < 1e-6 * nll("ru"));
    let bpb = trained["bits_per_byte"]["ru"]["bits_per_byte"]
        .as_f64()
        .unwrap();
    ensure!(bpb > 0.5 && bpb < 20.0, "{bpb}");
    let generation = &trained["generation"];
    ensure!(generation["outputs"].as_array().unwrap().len() == 3);
    let rate = generation["lang_swap"]["rate"].as_f64().unwrap();
    ensure!((0.0..=1.0).contains(&rate));

    // A LoRA adapter applied at evaluation gives the merged model's results.
    let task = format!("planted={}", d.join("planted.jsonl").display());
    let with_adapter = d.join("adapter.json");
    run_ok(&[
        "eval",
        "--model",
        runs.join("facts/model").to_str().unwrap(),
        "--adapter",
        runs.join("lora/adapter").to_str().unwrap(),
        "--task",
        &task,
        "--device",
        "cpu",
        "--out",
        with_adapter.to_str().unwrap(),
    ])?;
    let merged = d.join("merged.json");
    run_ok(&[
        "eval",
        "--model",
        runs.join("lora/model").to_str().unwrap(),
        "--task",
        &task,
        "--device",
        "cpu",
        "--out",
        merged.to_str().unwrap(),
    ])?;
    let (a, m) = (eval_json(&with_adapter)?, eval_json(&merged)?);
    ensure!(a["adapter"].is_string());
    for (x, y) in a["tasks"]["planted"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .zip(m["tasks"]["planted"]["details"].as_array().unwrap())
    {
        for (p, q) in x["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["logprobs"].as_array().unwrap())
        {
            ensure!(
                (p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-4,
                "adapter vs merged: {p} vs {q}"
            );
        }
    }
    // A real BIG-bench task file, zero- and few-shot.
    let bigbench = test_data().join("tasks/bigbench/general_knowledge/task.json");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bigbench)?)?;
    let multiple_choice = file["examples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_scores"].is_object())
        .count();
    // `dapt eval` of the trained model on the BIG-bench task, with extra flags; returns its JSON.
    let model = runs.join("facts/model");
    let task = format!("gk={}", bigbench.display());
    let eval_gk = |name: &str, extra: &[&str]| -> Result<serde_json::Value> {
        let out = d.join(format!("{name}.json"));
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--task",
            &task,
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_ok(&args)?;
        eval_json(&out)
    };
    let mut shots = Vec::new();
    for k in ["0", "2"] {
        shots.push(eval_gk(
            &format!("gk{k}"),
            &["--num-fewshot", k, "--limit", "20"],
        )?);
    }
    ensure!(multiple_choice >= 20 && shots[0]["tasks"]["gk"]["examples"] == 20);
    ensure!(shots[1]["tasks"]["gk"]["num_fewshot"] == 2);
    ensure!(
        shots[0]["tasks"]["gk"]["details"][0]["context"]
            != shots[1]["tasks"]["gk"]["details"][0]["context"],
        "few-shot examples change the context (the 64-token model sees its end only)"
    );
    // eval.json records what was scored: BIG-bench's rendering, two shots, the choices appended.
    let detail = &shots[1]["tasks"]["gk"]["details"][0];
    ensure!(
        detail["context"]
            .as_str()
            .is_some_and(|c| c.starts_with("Q: ")
                && c.matches("\nA:").count() == 3
                && c.ends_with("\nA:")
                && c.contains("\n  choice: ")),
        "{detail}"
    );
    ensure!(
        detail["continuations"][0]
            .as_str()
            .is_some_and(|c| c.starts_with(' ')),
        "{detail}"
    );
    // `--prefix-token` takes a token of the vocabulary or its id, with the same result.
    let vocabulary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json"))?)?;
    let eos_id = vocabulary["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["content"] == "<|endoftext|>")
        .and_then(|t| t["id"].as_u64())
        .unwrap()
        .to_string();
    let by_token = eval_gk(
        "prefix-token",
        &["--limit", "5", "--prefix-token", "<|endoftext|>"],
    )?;
    let by_id = eval_gk("prefix-id", &["--limit", "5", "--prefix-token", &eos_id])?;
    ensure!(
        by_token["tasks"]["gk"]["details"] == by_id["tasks"]["gk"]["details"],
        "token and id give one prefix"
    );
    let stderr = run_fails(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        &task,
        "--prefix-token",
        "<|no such token|>",
        "--out",
        d.join("never.json").to_str().unwrap(),
    ])?;
    ensure!(stderr.contains("<|no such token|>"), "{stderr}");

    // The report: base vs trained, charts, a red flag where a metric fell.
    let report = d.join("report/report.md");
    let stdout = run_ok(&[
        "report",
        d.join("base.json").to_str().unwrap(),
        d.join("trained.json").to_str().unwrap(),
        "--train-log",
        &format!("facts={}", runs.join("facts/train_log.jsonl").display()),
        "--out",
        report.to_str().unwrap(),
    ])?;
    ensure!(stdout.starts_with("2 checkpoints"), "{stdout}");
    let text = std::fs::read_to_string(&report)?;
    ensure!(
        text.contains("| metric | init | facts |") && text.contains("acc/planted"),
        "{text}"
    );
    ensure!(
        d.join("report/plots/training_loss.svg").exists()
            && d.join("report/plots/acc_planted.svg").exists()
    );
    let html = d.join("report.html");
    run_ok(&[
        "report",
        d.join("trained.json").to_str().unwrap(),
        d.join("base.json").to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ])?;
    let page = std::fs::read_to_string(&html)?;
    ensure!(
        page.contains("<svg") && page.contains("Red flags") && page.contains("acc/planted"),
        "trained → base: accuracy fell"
    );

    // The completions endpoint gives dapt eval's log-likelihoods.
    let mut server = crate::common::dapt_command()
        .args([
            "serve",
            "--model",
            runs.join("facts/model").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cpu",
        ])
        .env("DAPT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|r| r.strip_suffix("/v1/completions"))
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_string();
        let (status, models) = http(&address, "GET", "/v1/models", &serde_json::json!({}))?;
        ensure!(status == 200 && models["data"][0]["id"] == "facts");
        let tok = dapt_packer::TokenizerFile::load(&tokenizer)?;
        let questions: Vec<serde_json::Value> = std::fs::read_to_string(d.join("planted.jsonl"))?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let details = trained["tasks"]["planted"]["details"].as_array().unwrap();
        for (q, detail) in questions.iter().zip(details).take(5) {
            let context = q["context"].as_str().unwrap();
            for (c, choice) in q["choices"].as_array().unwrap().iter().enumerate() {
                let whole = tok.encode("t", &format!("{context} {}", choice.as_str().unwrap()))?;
                let head = tok.encode("t", context)?;
                ensure!(
                    whole[..head.len()] == head[..],
                    "the context tokens are a prefix here"
                );
                let prompt = whole.clone();
                let (status, response) = http(
                    &address,
                    "POST",
                    "/v1/completions",
                    &serde_json::json!({"model": "facts", "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1}),
                )?;
                ensure!(status == 200, "{response}");
                let logprobs = &response["choices"][0]["logprobs"];
                let token_logprobs = logprobs["token_logprobs"].as_array().unwrap();
                ensure!(token_logprobs.len() == prompt.len() && token_logprobs[0].is_null());
                let sum: f64 = token_logprobs[head.len()..]
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .sum();
                let expected = detail["logprobs"][c].as_f64().unwrap();
                ensure!(
                    (sum - expected).abs() < 1e-4,
                    "served {sum} vs eval {expected}"
                );
            }
        }
        // lm-eval's loglikelihood request shape (max_tokens 1) and a plain generation.
        let (status, response) = http(
            &address,
            "POST",
            "/v1/completions",
            &serde_json::json!({"prompt": ["The country of"], "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}),
        )?;
        ensure!(status == 200);
        let prompt_tokens = response["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
        ensure!(
            response["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap()
                .len()
                == prompt_tokens + 1
        );
        let (status, response) = http(
            &address,
            "POST",
            "/v1/completions",
            &serde_json::json!({"prompt": "The country of", "max_tokens": 5, "temperature": 0}),
        )?;
        ensure!(
            status == 200 && response["choices"][0]["text"].is_string(),
            "{response}"
        );
        let (status, response) = http(
            &address,
            "POST",
            "/v1/completions",
            &serde_json::json!({"max_tokens": 5}),
        )?;
        ensure!(
            status == 400
                && response["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("prompt")
        );
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// A model without its tokenizer, or with one larger than its vocabulary, is an error that says what to do.
#[test]
fn eval_errors_name_the_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fixtures =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/qwen3");
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model)?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(f), model.join(f))?;
    }
    let model = model.to_str().unwrap();
    let stderr = run_fails(&["eval", "--model", model, "--out", "x.json"])?;
    ensure!(
        stderr.contains("tokenizer.json") && stderr.contains("--tokenizer"),
        "{stderr}"
    );
    // A tokenizer with more tokens than the model's embeddings.
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let stderr = run_fails(&[
        "eval",
        "--model",
        model,
        "--tokenizer",
        qwen.to_str().unwrap(),
        "--out",
        "x.json",
    ])?;
    ensure!(
        stderr.contains("vocab_size 128") && stderr.contains("resize"),
        "{stderr}"
    );
    Ok(())
}
