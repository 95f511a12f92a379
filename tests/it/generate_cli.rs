//! `dapt generate` against `dapt serve` with the real SmolLM2-135M-Instruct (the test data's GGUF),
//! directly and through a fault-injecting proxy on 127.0.0.1 (5xx, 429, dropped connections, a hung
//! answer past the client's timeout): the output is the same, a rerun asks nothing, an interrupted
//! run resumes where it stopped, and the API key goes only into the requests' headers.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::common::{import_smollm2, read_request, run_ok, serve, test_data};

const KEY: &str = "sk-dapt-test-7f3a9c";

/// What the proxy does with a request (by its number, from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Pass,
    ServerError,
    TooManyRequests,
    Drop,
    Hang,
}

/// A proxy in front of `upstream` that answers request `n` as `schedule(n)` says.
struct Proxy {
    address: String,
    requests: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: String, schedule: fn(usize) -> Fault) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(AtomicUsize::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (requests.clone(), headers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (upstream, seen) = (upstream.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &upstream, schedule(n), &seen);
                });
            }
        });
        Ok(Self {
            address,
            requests,
            headers,
        })
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve_one(
    mut client: TcpStream,
    upstream: &str,
    fault: Fault,
    seen: &Mutex<Vec<String>>,
) -> Result<()> {
    let (head, body) = read_request(&client)?;
    seen.lock().unwrap().push(head.clone());
    let reply = |client: &mut TcpStream, status: &str, extra: &str| -> Result<()> {
        let body = r#"{"error":{"message":"injected"}}"#;
        write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    };
    match fault {
        Fault::ServerError => return reply(&mut client, "503 Service Unavailable", ""),
        Fault::TooManyRequests => {
            return reply(&mut client, "429 Too Many Requests", "Retry-After: 0\r\n")
        }
        Fault::Drop => return Ok(()),
        Fault::Hang => {
            std::thread::sleep(Duration::from_secs(35));
            return Ok(());
        }
        Fault::Pass => {}
    }
    let mut server = TcpStream::connect(upstream.trim_start_matches("http://"))?;
    // The request as it came, but for a fresh connection to the server.
    let mut lines = head.lines();
    let request_line = lines.next().context("request line")?;
    write!(server, "{request_line}\r\n")?;
    for line in lines.filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
        write!(server, "{line}\r\n")?;
    }
    write!(server, "Connection: close\r\n\r\n")?;
    server.write_all(&body)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    client.write_all(&response)?;
    Ok(())
}

/// `dapt generate` over `rows.jsonl` in `dir`: its stdout and stderr, and whether it succeeded.
fn generate(
    dir: &Path,
    endpoint: &str,
    out: &str,
    cache: &str,
    extra: &[&str],
) -> Result<(bool, String, String)> {
    generate_to(
        dir,
        endpoint,
        dir.join(out).to_str().unwrap(),
        dir.join(cache).to_str().unwrap(),
        extra,
        &[],
    )
}

/// As [`generate`] with the output and cache URLs as they are and more environment variables.
fn generate_to(
    dir: &Path,
    endpoint: &str,
    out: &str,
    cache: &str,
    extra: &[&str],
    envs: &[(&str, String)],
) -> Result<(bool, String, String)> {
    let query = format!(
        "SELECT id, question FROM '{}'",
        dir.join("rows.jsonl").display()
    );
    let output = crate::common::dapt_command()
        .args([
            "generate",
            "-e",
            &query,
            "--template",
            dir.join("ask.jinja").to_str().unwrap(),
            "--endpoint",
            &format!("{endpoint}/v1"),
            "--model",
            "smollm2",
            "--out",
            out,
            "--cache",
            cache,
            "--max-tokens",
            "16",
            "--backoff-ms",
            "20",
            "--price-prompt",
            "0.5",
            "--price-completion",
            "1.5",
        ])
        .args(extra)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("OPENAI_API_KEY", KEY)
        .env("DAPT_LOG", "info")
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

/// The rows of an output directory's shards, in order.
fn rows(dir: &Path) -> Result<Vec<Value>> {
    let out = run_ok(&[
        "sql",
        "-e",
        &format!("SELECT * FROM '{}/*.parquet' ORDER BY id", dir.display()),
        "--format",
        "jsonl",
    ])?;
    out.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// Every file below `dir` as bytes.
fn files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push((path.clone(), std::fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// The shards and manifest of an output, by file name.
fn output_bytes(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(files(dir)?
        .into_iter()
        .map(|(p, b)| (p.file_name().unwrap().to_string_lossy().into_owned(), b))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect())
}

#[test]
fn generate_survives_faults_reuses_its_cache_resumes_and_keeps_the_key_out() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let model = import_smollm2(d)?;
    let questions = [
        ("q1", "What is the capital of France?"),
        ("q2", "Name a primary colour."),
        ("q3", "What is 2 + 2?"),
        ("q4", "What do bees make?"),
        ("q5", "Which planet do we live on?"),
        ("q6", "What is the opposite of hot?"),
    ];
    let mut lines = String::new();
    for (id, question) in questions {
        lines.push_str(&(json!({"id": id, "question": question}).to_string() + "\n"));
    }
    std::fs::write(d.join("rows.jsonl"), lines)?;
    std::fs::write(d.join("ask.jinja"), "Answer in a few words. {{ question }}")?;
    let (mut server, url) = serve(&model)?;
    let result = (|| -> Result<()> {
        // 1. Straight to the server.
        let (ok, stdout, stderr) =
            generate(d, &url, "direct", "cache-direct", &["--timeout-s", "300"])?;
        ensure!(ok, "{stderr}");
        ensure!(
            stdout.contains("generated 6 rows (0 from the cache"),
            "{stdout}"
        );
        ensure!(stdout.contains("6 requests, 0 retried"), "{stdout}");
        ensure!(stdout.contains("about $"), "{stdout}");
        let direct = rows(&d.join("direct"))?;
        ensure!(direct.len() == 6);
        for (row, (id, question)) in direct.iter().zip(questions) {
            ensure!(row["id"] == id, "{row}");
            ensure!(
                row["prompt"] == format!("Answer in a few words. {question}"),
                "{row}"
            );
            ensure!(
                row["response"]
                    .as_str()
                    .is_some_and(|r| !r.trim().is_empty()),
                "{row}"
            );
            ensure!(
                matches!(row["finish_reason"].as_str(), Some("stop" | "length")),
                "{row}"
            );
            ensure!(
                row["prompt_tokens"].as_u64().is_some_and(|t| t > 5),
                "{row}"
            );
            ensure!(
                row["completion_tokens"]
                    .as_u64()
                    .is_some_and(|t| t > 0 && t <= 16),
                "{row}"
            );
        }
        ensure!(
            direct[0]["response"].as_str().unwrap().contains("Paris"),
            "the real model knows: {}",
            direct[0]
        );

        // The output is an SFT set as it stands (id, prompt, response).
        let packed = run_ok(&[
            "pack",
            "--mode",
            "sft",
            "-e",
            &format!(
                "SELECT id, prompt, response FROM '{}/*.parquet'",
                d.join("direct").display()
            ),
            "--tokenizer",
            model.join("tokenizer.json").to_str().unwrap(),
            "--seq-len",
            "256",
            "--eos-token",
            "<|im_end|>",
            "--out",
            d.join("sft").to_str().unwrap(),
        ])?;
        ensure!(packed.contains("packed 6 examples"), "{packed}");

        // 2. Through faults: a 503, a 429, a dropped connection and an answer that hangs past the
        // client's time limit before the proxy passes requests on (one request at a time, so that
        // the time limit only ever meets the hung one). Same output, byte for byte.
        let proxy = Proxy::start(url.clone(), |n| match n {
            0 => Fault::ServerError,
            1 => Fault::TooManyRequests,
            2 => Fault::Drop,
            3 => Fault::Hang,
            _ => Fault::Pass,
        })?;
        let (ok, stdout, stderr) = generate(
            d,
            &proxy.address,
            "faulty",
            "cache-faulty",
            &["--concurrency", "1", "--timeout-s", "30"],
        )?;
        ensure!(ok, "{stderr}");
        ensure!(
            output_bytes(&d.join("faulty"))? == output_bytes(&d.join("direct"))?,
            "the faults changed the output"
        );
        // Four faults, four retries at least (a loaded machine may add a slow answer's time-out).
        let counts = stdout.split_once(" requests, ").and_then(|(head, tail)| {
            let requests = head.rsplit(' ').next()?.parse::<usize>().ok()?;
            let retried = tail.split(' ').next()?.parse::<usize>().ok()?;
            Some((requests, retried))
        });
        let (requests, retried) = counts.with_context(|| format!("no counts in {stdout:?}"))?;
        ensure!(retried >= 4 && requests == 6 + retried, "{stdout}");
        ensure!(proxy.count() == requests, "{} requests", proxy.count());
        ensure!(
            stderr.matches("request failed; retrying").count() == retried,
            "retries are logged: {stderr}"
        );

        // 3. A rerun into a new output with the same cache asks nothing and writes the same.
        let before = proxy.count();
        let (ok, stdout, stderr) = generate(d, &proxy.address, "again", "cache-faulty", &[])?;
        ensure!(ok, "{stderr}");
        ensure!(proxy.count() == before, "the rerun made requests");
        ensure!(stdout.contains("(6 from the cache"), "{stdout}");
        ensure!(output_bytes(&d.join("again"))? == output_bytes(&d.join("direct"))?);

        // 4. An endpoint that fails for good after three answers: the run stops naming the row
        // and the error; a rerun asks only for the three rows it lacks.
        let broken = Proxy::start(url.clone(), |n| {
            if n < 3 {
                Fault::Pass
            } else {
                Fault::ServerError
            }
        })?;
        let (ok, _, stderr) = generate(
            d,
            &broken.address,
            "resumed",
            "cache-resumed",
            &["--concurrency", "1", "--retries", "1"],
        )?;
        ensure!(!ok, "the broken endpoint made it fail");
        ensure!(
            stderr.contains("row q4")
                && stderr.contains("503")
                && stderr.contains("after 2 attempts"),
            "{stderr}"
        );
        let healthy = Proxy::start(url.clone(), |_| Fault::Pass)?;
        let (ok, stdout, stderr) = generate(
            d,
            &healthy.address,
            "resumed",
            "cache-resumed",
            &["--concurrency", "1", "--retries", "1"],
        )?;
        ensure!(ok, "{stderr}");
        ensure!(
            healthy.count() == 3,
            "{} requests on resume",
            healthy.count()
        );
        ensure!(stdout.contains("(3 from the cache"), "{stdout}");
        ensure!(output_bytes(&d.join("resumed"))? == output_bytes(&d.join("direct"))?);

        // 5. Output and cache on an S3 server (moto on 127.0.0.1): the same output, and a rerun
        // asks nothing.
        let s3 = crate::common::S3Server::start()?;
        let bucket = s3.bucket("generated")?;
        let on_s3 = |out: &str| {
            generate_to(
                d,
                &healthy.address,
                &format!("{bucket}/{out}"),
                &format!("{bucket}/cache"),
                &[],
                &s3.env(),
            )
        };
        let before = healthy.count();
        let (ok, stdout, stderr) = on_s3("first")?;
        ensure!(ok, "{stderr}");
        ensure!(healthy.count() == before + 6, "{stdout}");
        let (ok, stdout, stderr) = on_s3("second")?;
        ensure!(ok, "{stderr}");
        ensure!(
            healthy.count() == before + 6,
            "the rerun asked again: {stdout}"
        );
        ensure!(stdout.contains("(6 from the cache"), "{stdout}");
        std::fs::write(
            d.join("s3.toml"),
            format!("[sources.generated]\nurl = \"{bucket}/second/\"\nformat = \"parquet\"\n"),
        )?;
        let listed = crate::common::dapt_command()
            .args([
                "sql",
                "--config",
                d.join("s3.toml").to_str().unwrap(),
                "-e",
                "SELECT * FROM generated ORDER BY id",
                "--format",
                "jsonl",
            ])
            .envs(s3.env())
            .env("DAPT_LOG", "warn")
            .output()?;
        ensure!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let from_s3: Vec<Value> = String::from_utf8(listed.stdout)?
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?;
        ensure!(from_s3 == direct, "S3 {from_s3:?} vs local {direct:?}");

        // 6. The key went out in the Authorization header only.
        let heads = proxy.headers.lock().unwrap().clone();
        ensure!(heads
            .iter()
            .all(|h| h.contains(&format!("authorization: Bearer {KEY}"))
                || h.contains(&format!("Authorization: Bearer {KEY}"))));
        for out in [
            "direct",
            "faulty",
            "again",
            "resumed",
            "cache-direct",
            "cache-faulty",
        ] {
            for (path, bytes) in files(&d.join(out))? {
                ensure!(
                    !String::from_utf8_lossy(&bytes).contains(KEY),
                    "the key is in {}",
                    path.display()
                );
            }
        }
        ensure!(!stdout.contains(KEY) && !stderr.contains(KEY));
        Ok(())
    })();
    server.kill()?;
    server.wait()?;
    result
}

/// The system message the README gives for the synth-qa recipe.
const SYNTH_QA_SYSTEM: &str =
    "You write quiz questions. Always reply with two lines: 'Question: ...' and 'Answer: ...'.";

fn config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/generate")
        .join(name)
}

/// The synth-qa recipe end to end: SmolLM2 writes a question and answer about each Stage-1
/// document (`configs/generate/synth-qa.jinja`), `synth-qa.sql` parses the responses into
/// (id, source_id, question, answer, text), and a Stage-2 mix takes them as a `kind = "qa"`
/// component with `min_grounding`: its report checks every answer against Stage 1's text and leaves
/// out the ungrounded ones.
#[test]
fn synthetic_qa_from_stage_one_goes_into_a_stage_two_mix_with_its_grounding() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let facts = [
        "The Volga is the longest river in Europe. It flows through central Russia into the Caspian Sea and is about 3,530 kilometres long.",
        "Python is a programming language created by Guido van Rossum. Its first version was released in 1991.",
        "Mount Elbrus is the highest mountain in Europe. It is a dormant volcano in the Caucasus, 5,642 metres high.",
        "Lake Baikal in Siberia is the deepest lake in the world. It holds about a fifth of the fresh water on the surface of the Earth.",
        "The Trans-Siberian Railway connects Moscow with Vladivostok. It is the longest railway line in the world, over 9,000 kilometres.",
        "Honey bees make honey from the nectar of flowers. A colony has one queen, thousands of workers and a few hundred drones.",
        "Water boils at 100 degrees Celsius at sea level. At higher altitudes it boils at a lower temperature because the air pressure is lower.",
        "The Moon orbits the Earth about once every 27 days. Its gravity causes the tides of the oceans.",
        "Saint Petersburg was founded by Peter the Great in 1703. It was the capital of Russia for about two hundred years.",
        "The cheetah is the fastest land animal. It can run at about 110 kilometres per hour over short distances.",
        "Rust is a programming language focused on memory safety. Its compiler checks the lifetimes of references.",
        "The Amazon rainforest covers much of the Amazon basin in South America. It is home to millions of species of insects.",
    ];
    let mut lines = String::new();
    for (i, text) in facts.iter().enumerate() {
        lines.push_str(&(json!({"id": format!("fact{i}"), "text": text}).to_string() + "\n"));
    }
    std::fs::write(d.join("stage1.jsonl"), lines)?;
    let (mut server, url) = serve(&import_smollm2(d)?)?;
    let generated = run_ok(&[
        "generate",
        "-e",
        &format!(
            "SELECT id, text FROM '{}'",
            d.join("stage1.jsonl").display()
        ),
        "--template",
        config("synth-qa.jinja").to_str().unwrap(),
        "--system",
        SYNTH_QA_SYSTEM,
        "--endpoint",
        &format!("{url}/v1"),
        "--model",
        "smollm2",
        "--max-tokens",
        "48",
        "--out",
        d.join("qa_raw").to_str().unwrap(),
        "--cache",
        d.join("cache").to_str().unwrap(),
    ]);
    server.kill()?;
    server.wait()?;
    let generated = generated?;
    ensure!(generated.contains("generated 12 rows"), "{generated}");

    // The parsed pairs, as the recipe's SQL gives them.
    let sources = d.join("sources.toml");
    std::fs::write(
        &sources,
        format!("[sources.qa_raw]\nurl = {:?}\n", d.join("qa_raw").display()),
    )?;
    let parsed: Vec<Value> = run_ok(&[
        "sql",
        "--config",
        sources.to_str().unwrap(),
        "-f",
        config("synth-qa.sql").to_str().unwrap(),
        "--format",
        "jsonl",
    ])?
    .lines()
    .map(serde_json::from_str)
    .collect::<std::result::Result<_, _>>()?;
    ensure!(
        parsed.len() >= 2,
        "SmolLM2 follows the form for some documents: {parsed:?}"
    );
    for pair in &parsed {
        let source = pair["source_id"].as_str().context("source_id")?;
        ensure!(pair["id"] == format!("{source}#qa"), "{pair}");
        ensure!(
            pair["text"]
                == format!(
                    "{}\n{}",
                    pair["question"].as_str().unwrap(),
                    pair["answer"].as_str().unwrap()
                ),
            "{pair}"
        );
        ensure!(
            !pair["answer"].as_str().unwrap().contains("Question:"),
            "{pair}"
        );
    }

    // Stage 1 teaches the facts; Stage 2 mixes them with the synthetic QA, grounded answers only.
    let tokenizer = test_data().join("tokenizers/qwen3/tokenizer.json");
    let head = format!(
        "seed = 5\ntokenizer = {tokenizer:?}\ntarget_language = \"en\"\n[sources.facts]\nurl = {:?}\n[sources.qa_raw]\nurl = {:?}\n",
        d.join("stage1.jsonl"),
        d.join("qa_raw"),
    );
    std::fs::write(
        d.join("stage1.toml"),
        format!("{head}[[component]]\nname = \"facts\"\nweight = 1.0\nmax_epochs = 1\nsql = \"SELECT id, text FROM facts\"\n"),
    )?;
    // Beside the model's pairs, two planted ones make sure both sides of the threshold are seen: an
    // answer copied from a Stage-1 document and an invented one.
    let planted = [
        json!({"id": "planted-grounded#qa", "source_id": "fact3", "question": "Which lake is the deepest?",
               "answer": facts[3], "text": format!("Which lake is the deepest?\n{}", facts[3])}),
        json!({"id": "planted-invented#qa", "source_id": "fact0", "question": "Who built the Volga?",
               "answer": "Quantum penguins carved the Volga out of marmalade on Jupiter.",
               "text": "Who built the Volga?\nQuantum penguins carved the Volga out of marmalade on Jupiter."}),
    ];
    std::fs::write(
        d.join("planted.jsonl"),
        planted
            .iter()
            .map(|p| p.to_string() + "\n")
            .collect::<String>(),
    )?;
    let recipe = std::fs::read_to_string(config("synth-qa.sql"))?;
    std::fs::write(
        d.join("stage2.toml"),
        format!(
            "{head}[sources.planted]\nurl = {:?}\n[[component]]\nname = \"facts\"\nweight = 0.5\nsql = \"SELECT id, text FROM facts\"\n\
             [[component]]\nname = \"qa\"\nweight = 0.5\nkind = \"qa\"\nmax_epochs = 1\nmin_grounding = 0.5\n\
             sql = \'\'\'{recipe}\nUNION ALL SELECT id, source_id, question, answer, text FROM planted\'\'\'\n",
            d.join("planted.jsonl")
        ),
    )?;
    std::fs::write(
        d.join("pipeline.toml"),
        "seed = 5\n[[stage]]\nname = \"stage1\"\nmix = \"stage1.toml\"\ntokens = 250\n\
         [[stage]]\nname = \"stage2\"\nmix = \"stage2.toml\"\ntokens = 1000\n",
    )?;
    run_ok(&[
        "mix",
        "run",
        d.join("pipeline.toml").to_str().unwrap(),
        "--out",
        d.join("mix").to_str().unwrap(),
    ])?;
    let report: Value =
        serde_json::from_slice(&std::fs::read(d.join("mix/stage2/mix_report.json"))?)?;
    let qa = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "qa")
        .context("the qa component")?;
    let grounding = &qa["grounding"];
    let checked = grounding["answers"].as_u64().context("answers checked")?;
    ensure!(checked == parsed.len() as u64 + 2, "{qa:#}");
    let dropped = qa["dropped_ungrounded"].as_u64().unwrap_or(0);
    ensure!(
        qa["documents"].as_u64() == Some(checked - dropped),
        "kept + dropped = checked: {qa:#}"
    );
    let below: u64 = parsed
        .iter()
        .chain(&planted)
        .filter(|p| {
            grounding["least_grounded"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == p["id"] && e["grounding"].as_f64().unwrap() < 0.5)
        })
        .count() as u64;
    ensure!(
        dropped == below,
        "dropped {dropped}, below 0.5 {below}: {qa:#}"
    );
    let score = |id: &str| {
        grounding["least_grounded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .and_then(|e| e["grounding"].as_f64())
    };
    ensure!(score("planted-invented#qa") == Some(0.0), "{grounding:#}");
    ensure!(
        score("planted-grounded#qa").is_none_or(|g| g >= 0.5) && dropped >= 1,
        "the copied answer is kept, the invented one dropped: {grounding:#}"
    );
    // The kept pairs are in the stage's shards, the dropped ones are not.
    let kept: Vec<Value> = run_ok(&[
        "sql",
        "-e",
        &format!(
            "SELECT id FROM '{}/*.parquet' WHERE component = 'qa' ORDER BY id",
            d.join("mix/stage2").display()
        ),
        "--format",
        "jsonl",
    ])?
    .lines()
    .map(serde_json::from_str)
    .collect::<std::result::Result<_, _>>()?;
    ensure!(kept.len() as u64 == checked - dropped, "{kept:?}");
    ensure!(
        kept.iter().any(|k| k["id"] == "qa/planted-grounded#qa"),
        "{kept:?}"
    );
    ensure!(
        !kept.iter().any(|k| k["id"] == "qa/planted-invented#qa"),
        "{kept:?}"
    );
    Ok(())
}
