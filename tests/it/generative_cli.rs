//! Generative evaluation as a user runs it: completions brought from elsewhere scored by
//! `dapt eval-completions` on the real HumanEval problems (the sandbox stops loops, fork bombs and
//! network access), and `dapt eval` generating code and math answers with a model that learned planted
//! solutions: its pass@1 and exact match go from 0 to 1, sampling is seeded, and the side-by-side
//! report shows both.
use std::path::Path;

use crate::common::{run_fails, run_ok, test_data};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

fn read_json(path: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn humaneval() -> Result<Vec<Value>> {
    let path = test_data().join("tasks/human-eval/HumanEval.jsonl.gz");
    let mut text = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(std::fs::File::open(&path)?).read_to_string(&mut text)?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| r.to_string() + "\n").collect()
}

#[test]
fn humaneval_completions_run_in_a_sandbox() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let problems = humaneval()?;
    ensure!(problems.len() == 164);
    let task = format!(
        "he={}:humaneval",
        test_data()
            .join("tasks/human-eval/HumanEval.jsonl.gz")
            .display()
    );
    let score = |completions: &[Value], out: &str, timeout: &str| -> Result<Value> {
        let samples = d.join(format!("{out}.jsonl"));
        std::fs::write(&samples, jsonl(completions))?;
        let stdout = run_ok(&[
            "eval-completions",
            "--task",
            &task,
            "--completions",
            samples.to_str().unwrap(),
            "--run-timeout",
            timeout,
            "--out",
            d.join(out).to_str().unwrap(),
        ])?;
        ensure!(stdout.contains("pass@1/he"), "{stdout}");
        read_json(&d.join(out))
    };
    // The canonical solutions of all 164 problems pass.
    let canonical: Vec<Value> = problems
        .iter()
        .map(|p| json!({"task_id": p["task_id"], "completion": p["canonical_solution"]}))
        .collect();
    let result = score(&canonical, "canonical.json", "10")?;
    ensure!(
        result["pass@1"] == 1.0 && result["examples"] == 164,
        "{}",
        result["pass@1"]
    );

    // Five samples for each of three problems: one right, then a wrong answer, an endless loop, a
    // fork bomb, and the right answer guarded by a connection to a server on the host's loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut samples = Vec::new();
    for p in &problems[..3] {
        let id = &p["task_id"];
        let right = p["canonical_solution"].as_str().context("solution")?;
        samples.push(json!({"task_id": id, "completion": right}));
        samples.push(json!({"task_id": id, "completion": "    return None\n"}));
        samples.push(json!({"task_id": id, "completion": "    while True:\n        pass\n"}));
        samples.push(json!({"task_id": id, "completion":
            "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"}));
        samples.push(json!({"task_id": id, "completion": format!(
            "    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n{right}")}));
    }
    let started = std::time::Instant::now();
    let result = score(&samples, "planted.json", "2")?;
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "limits end the runs: {:?}",
        started.elapsed()
    );
    ensure!(result["examples"] == 3 && result["samples"] == 5);
    ensure!(
        (result["pass@1"].as_f64().unwrap_or(-1.0) - 0.2).abs() < 1e-12,
        "one of five passes: {}",
        result["pass@1"]
    );
    ensure!(result.get("pass@10").is_none());
    for detail in result["details"].as_array().context("details")? {
        let runs: Vec<&Value> = detail["samples"]
            .as_array()
            .context("samples")?
            .iter()
            .map(|s| &s["run"])
            .collect();
        let kind = |i: usize| runs[i]["status"]["kind"].as_str().unwrap_or("").to_string();
        ensure!(kind(0) == "passed", "{:?}", runs[0]);
        ensure!(kind(1) == "failed", "{:?}", runs[1]);
        ensure!(
            kind(2) == "timed_out" || kind(2) == "killed",
            "{:?}",
            runs[2]
        );
        ensure!(
            kind(3) == "timed_out" || kind(3) == "killed",
            "{:?}",
            runs[3]
        );
        ensure!(
            kind(4) == "failed"
                && runs[4]["stderr_tail"]
                    .as_str()
                    .is_some_and(|s| s.contains("unreachable") || s.contains("refused")),
            "the network is out of reach: {:?}",
            runs[4]
        );
        ensure!(detail["context"]
            .as_str()
            .is_some_and(|c| c.contains("def ")));
    }

    // Unknown problems are named with the line.
    std::fs::write(
        d.join("bad.jsonl"),
        jsonl(&[json!({"task_id": "HumanEval/9999", "completion": "x"})]),
    )?;
    let stderr = run_fails(&[
        "eval-completions",
        "--task",
        &task,
        "--completions",
        d.join("bad.jsonl").to_str().unwrap(),
        "--out",
        d.join("bad.json").to_str().unwrap(),
    ])?;
    ensure!(
        stderr.contains("bad.jsonl:1") && stderr.contains("HumanEval/9999"),
        "{stderr}"
    );
    Ok(())
}

/// Four small functions in HumanEval's format and four word problems in GSM8K's.
fn planted(d: &Path) -> Result<()> {
    let functions = [
        (
            "add",
            "x, y",
            " x + y",
            "assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0",
        ),
        (
            "square",
            "n",
            " n * n",
            "assert candidate(3) == 9\n    assert candidate(-4) == 16",
        ),
        (
            "greet",
            "name",
            " 'hello ' + name",
            "assert candidate('bob') == 'hello bob'",
        ),
        (
            "is_even",
            "n",
            " n % 2 == 0",
            "assert candidate(4)\n    assert not candidate(7)",
        ),
    ];
    let mut problems = Vec::new();
    let mut documents = Vec::new();
    for (i, (name, parameters, body, asserts)) in functions.iter().enumerate() {
        let prompt = format!("def {name}({parameters}):\n    return");
        problems.push(json!({
            "task_id": format!("planted/{i}"),
            "prompt": prompt,
            "canonical_solution": format!("{body}\n"),
            "test": format!("def check(candidate):\n    {asserts}\n"),
            "entry_point": name,
        }));
        for copy in 0..6 {
            documents.push(
                json!({"id": format!("code{i}-{copy}"), "text": format!("{prompt}{body}\n")}),
            );
        }
    }
    let sums = [(2, 3), (4, 4), (7, 1), (3, 6)];
    let mut questions = Vec::new();
    for (i, (a, b)) in sums.iter().enumerate() {
        let question = format!("Ann has {a} pens and gets {b} more. How many pens?");
        let answer = format!("{a} + {b} = {}\n#### {}", a + b, a + b);
        questions.push(json!({"question": question, "answer": answer}));
        for copy in 0..6 {
            documents.push(json!({"id": format!("math{i}-{copy}"),
                "text": format!("Question: {question}\nAnswer: {answer}")}));
        }
    }
    std::fs::write(d.join("code.jsonl"), jsonl(&problems))?;
    std::fs::write(d.join("math.jsonl"), jsonl(&questions))?;
    std::fs::write(d.join("docs.jsonl"), jsonl(&documents))?;
    Ok(())
}

#[test]
fn a_model_that_learned_the_answers_passes_code_and_math() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    planted(d)?;
    let fortunes = test_data().canonicalize()?.join("corpus/en/fortunes.jsonl");
    std::fs::write(
        d.join("sources.toml"),
        format!(
            "[sources.docs]\nurl = {:?}\n[sources.en]\nurl = {:?}\n",
            d.join("docs.jsonl"),
            fortunes
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
        "SELECT text FROM docs UNION ALL SELECT text FROM en",
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
        "SELECT id, text FROM docs",
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--seq-len",
        "64",
        "--out",
        d.join("packed").to_str().unwrap(),
    ])?;
    let vocab = dapt_packer::TokenizerFile::load(&tokenizer)?.vocab_size();
    let eos = dapt_packer::TokenizerFile::load(&tokenizer)?.id_of("<|endoftext|>")?;
    std::fs::write(
        d.join("train.toml"),
        format!(
            "seed = 5\ndevice = \"cpu\"\n[init]\nmodel_type = \"llama\"\nvocab_size = {vocab}\nhidden_size = 64\n\
             intermediate_size = 128\nnum_hidden_layers = 2\nnum_attention_heads = 4\nnum_key_value_heads = 2\n\
             tie_word_embeddings = true\neos_token_id = {eos}\nmax_position_embeddings = 128\n\
             [[stage]]\nname = \"planted\"\ndata = \"packed\"\n\
             [stage.train]\nsteps = 400\nbatch_size = 8\nlearning_rate = 1e-2\nwarmup_steps = 10\nweight_decay = 0.0\n"
        ),
    )?;
    run_ok(&[
        "train",
        d.join("train.toml").to_str().unwrap(),
        "--out",
        d.join("runs").to_str().unwrap(),
    ])?;
    let runs = d.join("runs");
    for model in ["init/model", "planted/model"] {
        std::fs::copy(&tokenizer, runs.join(model).join("tokenizer.json"))?;
    }
    let code = format!("code={}:humaneval", d.join("code.jsonl").display());
    let math = format!("math={}:gsm8k", d.join("math.jsonl").display());
    let evaluate = |model: &str, out: &str, extra: &[&str]| -> Result<Value> {
        let model = runs.join(model);
        let out = d.join(out);
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--task",
            &code,
            "--task",
            &math,
            "--max-tokens",
            "20",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_ok(&args)?;
        read_json(&out)
    };
    let base = evaluate("init/model", "base.json", &[])?;
    let trained = evaluate("planted/model", "trained.json", &[])?;
    let score = |v: &Value, task: &str, metric: &str| {
        v["generative"][task]["scores"][metric]
            .as_f64()
            .unwrap_or(-1.0)
    };
    ensure!(
        score(&base, "code", "pass@1") == 0.0,
        "{}",
        base["generative"]
    );
    ensure!(
        score(&base, "math", "exact_match") == 0.0,
        "{}",
        base["generative"]
    );
    ensure!(
        score(&trained, "code", "pass@1") >= 0.75,
        "the learned functions pass their tests: {}",
        trained["generative"]["code"]
    );
    ensure!(
        score(&trained, "math", "exact_match") >= 0.75,
        "the learned answers match: {}",
        trained["generative"]["math"]
    );
    let first = &trained["generative"]["code"]["details"][0];
    ensure!(first["context"] == "def add(x, y):\n    return", "{first}");
    ensure!(first["samples"][0]["run"]["status"]["kind"].is_string());
    ensure!(trained["generative"]["math"]["details"][0]["samples"][0]["extracted"].is_string());

    // Sampling: pass@k over seeded samples, the same twice; greedy sampling of several is refused.
    let sampled = ["--samples", "4", "--temperature", "1.0", "--seed", "7"];
    let a = evaluate("planted/model", "sampled-a.json", &sampled)?;
    let b = evaluate("planted/model", "sampled-b.json", &sampled)?;
    ensure!(a["generative"] == b["generative"], "seeded samples repeat");
    ensure!(a["generative"]["code"]["samples"] == 4);
    let (p1, p4) = (score(&a, "code", "pass@1"), score(&a, "code", "pass@4"));
    ensure!(p4 == -1.0 && (0.0..=1.0).contains(&p1), "{p1} {p4}");
    let stderr = run_fails(&[
        "eval",
        "--model",
        runs.join("planted/model").to_str().unwrap(),
        "--task",
        &code,
        "--samples",
        "3",
        "--out",
        d.join("x.json").to_str().unwrap(),
    ])?;
    ensure!(stderr.contains("temperature"), "{stderr}");

    // The real HumanEval file through the same path (the toy model fails it; what matters is that
    // every problem's program ran).
    let real = format!(
        "real={}:humaneval",
        test_data()
            .join("tasks/human-eval/HumanEval.jsonl.gz")
            .display()
    );
    run_ok(&[
        "eval",
        "--model",
        runs.join("planted/model").to_str().unwrap(),
        "--task",
        &real,
        "--limit",
        "2",
        "--max-tokens",
        "8",
        "--out",
        d.join("real.json").to_str().unwrap(),
    ])?;
    let real = read_json(&d.join("real.json"))?;
    let details = real["generative"]["real"]["details"]
        .as_array()
        .context("details")?;
    ensure!(details.len() == 2 && details[0]["id"] == "HumanEval/0");
    for detail in details {
        ensure!(
            detail["samples"][0]["run"]["status"]["kind"].is_string(),
            "{detail}"
        );
    }

    // The side-by-side report carries both metrics.
    let report = d.join("report.md");
    run_ok(&[
        "report",
        d.join("base.json").to_str().unwrap(),
        d.join("trained.json").to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ])?;
    let text = std::fs::read_to_string(&report)?;
    ensure!(
        text.contains("pass@1/code") && text.contains("exact_match/math"),
        "{text}"
    );
    Ok(())
}

/// A real OpenAI client (the `openai` Python package) asks the real SmolLM2-135M-Instruct a question
/// through `/v1/chat/completions`; `dapt eval` with the model's chat template generates the same text
/// for the same question as a basket task.
#[test]
fn a_chat_client_gets_what_dapt_eval_generates_from_the_real_model() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let model = crate::common::import_smollm2(d)?;
    let question = "What is the capital of France?";
    std::fs::write(
        d.join("basket.jsonl"),
        jsonl(&[
            json!({"id": "fr", "prompt": question, "reference": "Paris", "metric": "contains"}),
        ]),
    )?;
    run_ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        &format!("basket={}:basket", d.join("basket.jsonl").display()),
        "--chat-template",
        "auto",
        "--max-tokens",
        "24",
        "--device",
        "cpu",
        "--out",
        d.join("eval.json").to_str().unwrap(),
    ])?;
    let eval = read_json(&d.join("eval.json"))?;
    let detail = &eval["generative"]["basket"]["details"][0];
    ensure!(
        detail["context"].as_str().is_some_and(|c| c
            .contains("<|im_start|>user\nWhat is the capital of France?<|im_end|>")
            && c.ends_with("<|im_start|>assistant\n")),
        "{detail}"
    );
    let generated = detail["samples"][0]["completion"]
        .as_str()
        .context("completion")?
        .to_string();
    ensure!(
        eval["generative"]["basket"]["scores"]["score"] == 1.0,
        "the real model knows: {generated:?}"
    );

    let (mut server, base) = crate::common::serve(&model)?;
    let result = (|| -> Result<()> {
        let url = format!("{base}/v1");
        let client = "import json, sys\nfrom openai import OpenAI\n\
            client = OpenAI(base_url=sys.argv[1], api_key='unused', max_retries=0)\n\
            r = client.chat.completions.create(model='smollm2', messages=[{'role': 'user', 'content': sys.argv[2]}], max_tokens=24, temperature=0)\n\
            print(json.dumps({'text': r.choices[0].message.content, 'finish': r.choices[0].finish_reason, \
            'tokens': r.usage.completion_tokens, 'role': r.choices[0].message.role}))\n";
        let output = std::process::Command::new("python3")
            .args(["-c", client, &url, question])
            .output()?;
        ensure!(
            output.status.success(),
            "the openai client (scripts/setup installs it): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Value = serde_json::from_slice(&output.stdout)?;
        ensure!(answer["role"] == "assistant", "{answer}");
        ensure!(
            answer["text"].as_str() == Some(generated.as_str()),
            "client {:?} vs dapt eval {generated:?}",
            answer["text"]
        );
        ensure!(answer["tokens"].as_u64().is_some_and(|t| t > 0 && t <= 24));
        Ok(())
    })();
    server.kill()?;
    server.wait()?;
    result
}
