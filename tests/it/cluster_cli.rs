//! SQL on a real Apache DataFusion Ballista cluster: `dapt cluster scheduler` and two `dapt cluster
//! executor`s on 127.0.0.1, tables on the S3 server, and `dapt sql --cluster`: the same result as a
//! local `dapt sql`, with dapt's functions running on the executors; an executor killed mid-query
//! ends in a result or a clear error, never a hang.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::common::{demo_data, test_data, S3Server};

/// A free port on 127.0.0.1 (free when asked; the processes bind it a moment later).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The scheduler and executors, killed when dropped; each logs to its own file.
struct Cluster {
    scheduler: Child,
    executors: Vec<Option<Child>>,
    logs: PathBuf,
    url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}

impl Cluster {
    fn start(dir: &Path, env: &[(&'static str, String)], config: &Path) -> Result<Self> {
        let dapt = env!("CARGO_BIN_EXE_dapt");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let spawn = |name: &str, args: &[String]| -> Result<Child> {
            let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
            Ok(Command::new(dapt)
                .args(args)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("DAPT_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?)
        };
        let port = free_port()?;
        let scheduler = spawn(
            "scheduler",
            &[
                "cluster".into(),
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--executor-timeout-s".into(),
                "6".into(),
            ],
        )?;
        let mut cluster = Self {
            scheduler,
            executors: Vec::new(),
            logs: logs.clone(),
            url: format!("df://127.0.0.1:{port}"),
        };
        for index in 0..2 {
            let executor = spawn(
                &format!("executor-{index}"),
                &[
                    "cluster".into(),
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{port}"),
                    "--bind-host".into(),
                    "127.0.0.1".into(),
                    "--flight-port".into(),
                    free_port()?.to_string(),
                    "--grpc-port".into(),
                    free_port()?.to_string(),
                    "--concurrent-tasks".into(),
                    "1".into(),
                    "--heartbeat-s".into(),
                    "1".into(),
                    "--config".into(),
                    config.display().to_string(),
                ],
            )?;
            cluster.executors.push(Some(executor));
        }
        for index in 0..2 {
            cluster.wait_for_log(&format!("executor-{index}"), "registration succeed", 90)?;
        }
        Ok(cluster)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_for_log(&self, name: &str, text: &str, seconds: u64) -> Result<()> {
        let started = Instant::now();
        while !self.log(name).contains(text) {
            if started.elapsed() > Duration::from_secs(seconds) {
                bail!("{name} never logged {text:?}:\n{}", self.log(name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The end of every process's log, for a failure message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["scheduler", "executor-0", "executor-1"] {
            let log = self.log(name);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text.push_str(&format!("--- {name}:\n"));
            for line in tail.iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Tasks an executor ran, as its log counts them.
    fn tasks(&self, index: usize) -> usize {
        self.log(&format!("executor-{index}"))
            .matches("Execute task")
            .count()
    }
}

/// An OpenAI-compatible chat server on 127.0.0.1 whose answer is a hash of the request body, so
/// that equal requests get equal answers; its base URL.
fn echo_server() -> Result<String> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || -> Result<()> {
                let (_, body) = crate::common::read_request(&stream)?;
                let answer = serde_json::json!({
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": format!("echo {:016x}", xxhash_rust::xxh3::xxh3_64(&body))},
                        "finish_reason": "stop"
                    }],
                    "usage": {"prompt_tokens": body.len() / 4, "completion_tokens": 3}
                })
                .to_string();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                )?;
                Ok(())
            });
        }
    });
    Ok(url)
}

/// Waits for a child with a deadline; kills it (and fails) if it runs past it.
fn wait_with_deadline(mut child: Child, seconds: u64) -> Result<Output> {
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > Duration::from_secs(seconds) {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            bail!(
                "dapt sql --cluster hung for {seconds} s: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn queries_with_dapt_functions_on_a_ballista_cluster_equal_local_results() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = S3Server::start()?;
    let bucket = server.bucket("cluster")?;
    let env = server.env();
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let run = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(dapt)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DAPT_LOG", "warn")
            .output()?)
    };
    let ok = |output: Output| -> Result<String> {
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };

    // JSON lines in the bucket (8 objects), and the same documents ingested into Parquet there.
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw)?;
    for language in ["en", "ru"] {
        let text = std::fs::read_to_string(demo_data().join(format!("fortunes-{language}.jsonl")))?;
        let lines: Vec<&str> = text.lines().collect();
        for (part, chunk) in lines.chunks(lines.len().div_ceil(4)).enumerate() {
            std::fs::write(
                raw.join(format!("{language}-{part}.jsonl")),
                chunk.join("\n") + "\n",
            )?;
        }
    }
    let jsonl = format!("{bucket}/jsonl");
    let docs = format!("{bucket}/docs");
    ok(run(&[
        "ingest",
        &raw.display().to_string(),
        "--out",
        &docs,
    ])?)?;
    // The raw files too, through the same S3 client as everything else.
    let runtime = tokio::runtime::Runtime::new()?;
    let storage = server.storage();
    let location = dapt_core::Location::parse_with(&jsonl, &storage)?;
    for entry in std::fs::read_dir(&raw)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        runtime.block_on(location.write(&name, std::fs::read(&path)?.into()))?;
    }
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.docs]\nurl = \"{docs}/\"\n\
             [sources.raw]\nurl = \"{jsonl}/\"\nformat = \"jsonl\"\n\
             [tokenizers]\nqwen3 = \"{}\"\n",
            test_data()
                .join("tokenizers/qwen3/tokenizer.json")
                .display()
        ),
    )?;
    let config_arg = config.display().to_string();

    let cluster = Cluster::start(dir.path(), &env, &config)?;
    let queries = [
        // Parquet: language, tokens, hashes, quality rules, script shares; a shuffle for GROUP BY.
        "SELECT lang_id(text) AS lang, count(*) AS docs, sum(token_count(text, 'qwen3')) AS tokens, \
         sum(CAST(xxhash64(text) % 1000 AS BIGINT)) AS hashes, \
         sum(CASE WHEN gopher_quality(text) THEN 1 ELSE 0 END) AS gopher, \
         round(avg(script_ratio(text, 'Cyrillic')), 9) AS cyrillic \
         FROM docs GROUP BY lang_id(text) ORDER BY lang",
        // JSON lines: MinHash signatures and a join of the two tables.
        "SELECT r.source, r.path, r.i, array_to_string(minhash(r.text, 3, 8, 7), ' ') AS signature, \
         d.id FROM raw r JOIN docs d ON r.text = d.text \
         WHERE r.i % 10 = 7 ORDER BY r.source, r.path, r.i, d.id",
    ];
    for query in queries {
        let local = ok(run(&[
            "sql",
            "--config",
            &config_arg,
            "--format",
            "csv",
            "-e",
            query,
        ])?)?;
        let before: Vec<usize> = (0..2).map(|i| cluster.tasks(i)).collect();
        let remote = ok(run(&[
            "sql",
            "--config",
            &config_arg,
            "--cluster",
            &cluster.url,
            "--format",
            "csv",
            "-e",
            query,
        ])?)
        .with_context(|| cluster.logs())?;
        ensure!(
            remote == local,
            "cluster result differs:\n{remote}\nlocal:\n{local}"
        );
        ensure!(local.lines().count() > 2, "{local}");
        // Both executors ran tasks of this query.
        for (index, count) in before.iter().enumerate() {
            ensure!(
                cluster.tasks(index) > *count,
                "executor {index} ran no task:\n{}",
                cluster.log(&format!("executor-{index}"))
            );
        }
    }
    // The first query's content: every document, most of them English or Russian (fortunes are
    // short; some are in other languages or too short to tell).
    let local = ok(run(&[
        "sql",
        "--config",
        &config_arg,
        "--format",
        "csv",
        "-e",
        queries[0],
    ])?)?;
    let rows: Vec<Vec<&str>> = local
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let docs_of = |lang: &str| -> u64 {
        rows.iter()
            .find(|r| r[0] == lang)
            .and_then(|r| r[1].parse().ok())
            .unwrap_or(0)
    };
    let total: u64 = rows.iter().filter_map(|r| r[1].parse::<u64>().ok()).sum();
    ensure!(
        total == 3000 && docs_of("en") > 1200 && docs_of("ru") > 1200,
        "{local}"
    );

    // `dapt dedup exact` and `dapt mix run` with their queries on the cluster write the same bytes.
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        format!(
            "seed = 3\ntotal_tokens = 20000\ntokenizer = \"{}\"\ntarget_language = \"ru\"\n\
             [sources.raw]\nurl = \"{jsonl}/\"\nformat = \"jsonl\"\n\
             [[component]]\nname = \"ru\"\nweight = 0.7\n\
             sql = \"SELECT concat(path, '#', CAST(i AS VARCHAR)) AS id, text FROM raw WHERE script_ratio(text, 'Cyrillic') > 0.5\"\n\
             [[component]]\nname = \"en\"\nweight = 0.3\n\
             sql = \"SELECT concat(path, '#', CAST(i AS VARCHAR)) AS id, text FROM raw WHERE script_ratio(text, 'Cyrillic') < 0.1\"\n",
            demo_data().join("../tokenizer.json").display()
        ),
    )?;
    let mix_arg = mix.display().to_string();
    let template = dir.path().join("ask.jinja");
    std::fs::write(&template, "Who said this? {{ text }}")?;
    let template = template.display().to_string();
    let endpoint = format!("{}/v1", echo_server()?);
    let mut plans = Vec::new();
    let tokenizer = demo_data().join("../tokenizer.json").display().to_string();
    for (name, cluster_args) in [
        ("local", vec![]),
        ("cluster", vec!["--cluster", cluster.url.as_str()]),
    ] {
        let out = |what: &str| {
            dir.path()
                .join(format!("{name}-{what}"))
                .display()
                .to_string()
        };
        let (dups, mix_out, packed) = (out("dups/duplicates.parquet"), out("mix"), out("packed"));
        let (classifier, generated, cache) =
            (out("classifier.bin"), out("generated"), out("responses"));
        let commands: [Vec<&str>; 6] = [
            vec![
                "dedup",
                "exact",
                "--config",
                &config_arg,
                "-e",
                "SELECT id, text FROM docs",
                "--out",
                &dups,
            ],
            vec!["mix", "run", &mix_arg, "--out", &mix_out],
            vec![
                "pack",
                "--config",
                &config_arg,
                "-e",
                "SELECT id, text FROM docs",
                "--tokenizer",
                &tokenizer,
                "--seq-len",
                "128",
                "--out",
                &packed,
            ],
            vec!["mix", "plan", &mix_arg],
            vec![
                "classify",
                "train",
                "--config",
                &config_arg,
                "--positive",
                "SELECT text FROM docs WHERE script_ratio(text, 'Cyrillic') > 0.5",
                "--negative",
                "SELECT text FROM docs WHERE script_ratio(text, 'Cyrillic') < 0.1",
                "--out",
                &classifier,
            ],
            vec![
                "generate",
                "--config",
                &config_arg,
                "-e",
                "SELECT id, text FROM docs WHERE xxhash64(id) % 100 = 3",
                "--template",
                &template,
                "--endpoint",
                &endpoint,
                "--model",
                "echo",
                "--out",
                &generated,
                "--cache",
                &cache,
            ],
        ];
        for mut args in commands {
            args.extend(cluster_args.iter().copied());
            let before: usize = (0..2).map(|i| cluster.tasks(i)).sum();
            let printed = ok(run(&args)?).with_context(|| cluster.logs())?;
            let after: usize = (0..2).map(|i| cluster.tasks(i)).sum();
            // Each command's query ran on the cluster exactly when it was asked to.
            ensure!(
                (after > before) == (name == "cluster"),
                "{args:?}: {before} → {after} tasks on the cluster"
            );
            if args[1] == "plan" {
                plans.push(printed);
            }
        }
    }
    for relative in [
        "dups/duplicates.parquet",
        "mix/_manifest.json",
        "mix/mix_report.json",
    ] {
        let (directory, file) = relative.split_once('/').context("path")?;
        let read =
            |name: &str| std::fs::read(dir.path().join(format!("{name}-{directory}")).join(file));
        ensure!(read("local")? == read("cluster")?, "{relative} differs");
    }
    ensure!(
        plans[0] == plans[1] && plans[0].contains("ru"),
        "mix plans differ: {plans:?}"
    );
    let files = |name: &str| -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir.path().join(name))? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|e| e == "parquet" || e == "json")
            {
                files.push((
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    std::fs::read(&path)?,
                ));
            }
        }
        files.sort();
        Ok(files)
    };
    ensure!(
        std::fs::read(dir.path().join("local-classifier.bin"))?
            == std::fs::read(dir.path().join("cluster-classifier.bin"))?,
        "the classifiers differ"
    );
    for output in ["mix", "packed", "generated"] {
        let local = files(&format!("local-{output}"))?;
        ensure!(
            local.len() > 1 && local == files(&format!("cluster-{output}"))?,
            "{output}: the files differ"
        );
    }

    // A name the executors do not know is an error, not an empty result.
    let unknown = run(&[
        "sql",
        "--config",
        &config_arg,
        "--cluster",
        &cluster.url,
        "-e",
        "SELECT sum(token_count(text, 'nope')) FROM docs",
    ])?;
    ensure!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    ensure!(message.contains("nope"), "{message}");

    // `dapt run` (the demo pipeline) with its selection query on the cluster: the same files
    // (all but the training log's speeds and the report's own paths).
    #[cfg(feature = "torch")]
    {
        // `dapt COMMAND FILE --out DIR/NAME-local`, then the same with `--cluster` into
        // `NAME-cluster`; tasks ran on the cluster for the second only. The two output directories.
        let local_and_cluster =
            |command: &str, file: &Path, name: &str| -> Result<(PathBuf, PathBuf)> {
                let outs = (
                    dir.path().join(format!("{name}-local")),
                    dir.path().join(format!("{name}-cluster")),
                );
                for (out, remote) in [(&outs.0, false), (&outs.1, true)] {
                    let before: usize = (0..2).map(|i| cluster.tasks(i)).sum();
                    let mut command_line = crate::common::dapt_command();
                    command_line.arg(command).arg(file).arg("--out").arg(out);
                    if remote {
                        command_line.args(["--cluster", cluster.url.as_str()]);
                    }
                    ok(command_line.env("DAPT_LOG", "warn").output()?)
                        .with_context(|| cluster.logs())?;
                    let after: usize = (0..2).map(|i| cluster.tasks(i)).sum();
                    ensure!(
                        (after > before) == remote,
                        "{command} {name}: {before} → {after} tasks on the cluster"
                    );
                }
                Ok(outs)
            };
        let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
        let (local, remote) = local_and_cluster("run", &configs.join("demo.toml"), "demo")?;
        let mut compared = 0;
        let mut pending = vec![local.clone()];
        while let Some(directory) = pending.pop() {
            for entry in std::fs::read_dir(&directory)? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if path.is_dir() {
                    pending.push(path);
                } else if !name.starts_with('.')
                    && name != "report.json"
                    && name != "train_log.jsonl"
                {
                    let relative = path.strip_prefix(&local)?;
                    ensure!(
                        std::fs::read(&path)? == std::fs::read(remote.join(relative))?,
                        "demo: {} differs",
                        relative.display()
                    );
                    compared += 1;
                }
            }
        }
        ensure!(
            compared > 10
                && local.join("selected/part-00000.parquet").exists()
                && local.join("model/model.safetensors").exists(),
            "demo: {compared} files compared"
        );

        // `dapt sweep` (one variant of the demo sweep, 4 steps) with its component queries on the
        // cluster: the same tokenised components, packed variant, trained model and metrics.
        let mut sweep = std::fs::read_to_string(configs.join("sweep.toml"))?
            .replace("mix = \"", &format!("mix = \"{}/", configs.display()))
            .replace("= \"demo/", &format!("= \"{}/demo/", configs.display()))
            .replace("steps = 60", "steps = 4")
            .replace("warmup_steps = 6", "warmup_steps = 1");
        let (first, rest) = sweep
            .split_once("[[variant]]\nname = \"balanced\"")
            .context("the demo sweep's variants")?;
        let model = rest.find("[model]").context("the demo sweep's [model]")?;
        sweep = format!("{first}{}", &rest[model..]);
        let sweep_file = dir.path().join("sweep.toml");
        std::fs::write(&sweep_file, sweep)?;
        let (local, remote) = local_and_cluster("sweep", &sweep_file, "sweep")?;
        for relative in [
            "components/ru_2001/part-00000.parquet",
            "components/en_art/_manifest.json",
            "variants/ru-heavy/packed/part-00000.parquet",
            "variants/ru-heavy/run/train/model/model.safetensors",
        ] {
            ensure!(
                std::fs::read(local.join(relative))? == std::fs::read(remote.join(relative))?,
                "sweep: {relative} differs"
            );
        }
        let metrics = |root: &std::path::Path| -> Result<serde_json::Value> {
            let results: serde_json::Value =
                serde_json::from_slice(&std::fs::read(root.join("sweep_results.json"))?)?;
            Ok(results["variants"][0]["metrics"].clone())
        };
        let (a, b) = (metrics(&local)?, metrics(&remote)?);
        ensure!(
            a == b && a["bpb/ru"].as_f64() > Some(0.0),
            "sweep metrics {a} vs {b}"
        );
    }

    // One executor killed while a long query runs: a result equal to the local one, or a clear
    // error, within a bound.
    let slow = "SELECT source, sum(token_count(repeat(text, 40), 'qwen3')) AS tokens \
                FROM docs GROUP BY source ORDER BY source";
    let local = ok(run(&[
        "sql",
        "--config",
        &config_arg,
        "--format",
        "csv",
        "-e",
        slow,
    ])?)?;
    let mut cluster = cluster;
    let before = cluster.tasks(1);
    let child = Command::new(dapt)
        .args([
            "sql",
            "--config",
            &config_arg,
            "--cluster",
            &cluster.url,
            "--format",
            "csv",
            "-e",
            slow,
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DAPT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while cluster.tasks(1) == before {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "executor 1 never got a task"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = child;
    ensure!(
        child.try_wait()?.is_none(),
        "the query ended before the kill; make it slower"
    );
    let mut victim = cluster.executors[1].take().context("executor 1")?;
    victim.kill()?;
    victim.wait()?;
    let killed_at = started.elapsed();
    let output = wait_with_deadline(child, 180)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        ensure!(
            String::from_utf8(output.stdout)? == local,
            "after the kill the result differs"
        );
    } else {
        ensure!(
            stderr.contains("error:") && stderr.len() < 20_000,
            "unclear failure: {stderr}"
        );
    }
    println!(
        "killed executor 1 {killed_at:?} into the query; the query {} after {:?}: {}",
        if output.status.success() {
            "completed"
        } else {
            "failed"
        },
        started.elapsed(),
        stderr.lines().last().unwrap_or_default()
    );
    Ok(())
}
