//! Map stages as job arrays, 1 and 2 processes, each pinned to a core of its own (`taskset`, where
//! there is one): the counting of `dapt mix plan` (`--shard i/n --work W`, then the plan from the
//! parts), `dapt tokenizer measure` (`--shard i/n --work W`) and the whole `dapt mix run` (count,
//! route and write arrays against one process), over the test corpus (ru, en, code, math) with the
//! Qwen3 tokenizer. Prints each one's seconds, the speed-up, and checks that the array's plan,
//! table and output files equal one process's.
//!
//! Run: `cargo bench --profile dev --bench arrays`; `DAPT_BENCH_ROUNDS` (default 3), best round.
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dapt_test_data::path("tokenizers/qwen3/tokenizer.json");
    let corpus = dapt_test_data::path("corpus");
    let mut sources = String::new();
    let mut components = String::new();
    let mut bytes = 0u64;
    for (name, file) in [
        ("ru", "ru/fortunes-ru.jsonl"),
        ("handbook", "ru/debian-handbook-ru.jsonl"),
        ("en", "en/fortunes.jsonl"),
        ("code", "code/rust-src.jsonl"),
        ("math", "math/maxima-doc.jsonl"),
    ] {
        let path = corpus.join(file);
        bytes += std::fs::metadata(&path).unwrap().len();
        sources.push_str(&format!("[sources.{name}]\nurl = {path:?}\n"));
        components.push_str(&format!(
            "[[component]]\nname = \"{name}\"\nweight = 0.2\n\
             sql = \"SELECT concat(path, '#', CAST(i AS VARCHAR)) AS id, text FROM {name}\"\n"
        ));
    }
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        format!(
            "seed = 1\ntotal_tokens = 1000000\ntokenizer = {tokenizer:?}\ntarget_language = \"ru\"\ndocuments_per_shard = 500\n{sources}{components}"
        ),
    )
    .unwrap();
    let config = dir.path().join("sources.toml");
    std::fs::write(&config, &sources).unwrap();
    println!(
        "corpus: 5 JSON-lines files, {:.1} MB; Qwen3 tokenizer",
        bytes as f64 / 1e6
    );
    let mix = mix.display().to_string();
    let config = config.display().to_string();
    let qwen = format!("qwen3={}", tokenizer.display());
    let measure_query = "SELECT text, lang_id(text) AS lang FROM ru UNION ALL SELECT text, lang_id(text) FROM handbook \
                         UNION ALL SELECT text, lang_id(text) FROM en UNION ALL SELECT text, lang_id(text) FROM code \
                         UNION ALL SELECT text, lang_id(text) FROM math";
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let stages: [(&str, Vec<&str>); 2] = [
        ("mix plan (counting)", vec!["mix", "plan", &mix]),
        (
            "tokenizer measure",
            vec![
                "tokenizer",
                "measure",
                "--config",
                &config,
                "--tokenizer",
                &qwen,
                "-e",
                measure_query,
                "--group-by",
                "lang",
            ],
        ),
    ];
    for (name, args) in stages {
        let mut best = [f64::MAX; 2];
        let mut outputs = [String::new(), String::new()];
        for round in 0..rounds {
            // One process.
            let started = Instant::now();
            outputs[0] = run(pinned(taskset, 0).args(&args));
            best[0] = best[0].min(started.elapsed().as_secs_f64());
            // Two jobs, then (for the mix) the plan from their parts.
            let work = dir.path().join(format!("work-{}-{round}", name.len()));
            let work = work.display().to_string();
            let started = Instant::now();
            let children: Vec<_> = (0..2)
                .map(|i| {
                    pinned(taskset, i)
                        .args(&args)
                        .args(["--shard", &format!("{i}/2"), "--work", &work])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let mut last = String::new();
            for child in children {
                let output = child.wait_with_output().unwrap();
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let text = String::from_utf8(output.stdout).unwrap();
                if !text.contains("done") {
                    last = text;
                }
            }
            if args[0] == "mix" {
                last = run(pinned(taskset, 0).args(&args).args(["--work", &work]));
            } else {
                // Each job publishes its part before it looks for the others', so the later one
                // always prints the table.
                assert!(!last.is_empty(), "{name}: no job printed the table");
            }
            best[1] = best[1].min(started.elapsed().as_secs_f64());
            outputs[1] = last;
        }
        assert_eq!(outputs[0], outputs[1], "{name}: the array's result differs");
        println!(
            "{name:<22} 1 process {:.2} s, 2 processes {:.2} s: {:.2}x ({}, best of {rounds}; same result)",
            best[0],
            best[1],
            best[0] / best[1],
            if taskset {
                "one core per process"
            } else {
                "not pinned: no taskset"
            }
        );
    }
    mix_run(dir.path(), &mix, taskset, rounds);
}

/// The whole `dapt mix run`: one process against the count, route and write arrays of 2 jobs; the
/// outputs must be equal file by file.
fn mix_run(dir: &std::path::Path, mix: &str, taskset: bool, rounds: usize) {
    let mut best = [f64::MAX; 2];
    let mut steps = [f64::MAX; 3];
    for round in 0..rounds {
        let one = dir.join(format!("run-one-{round}"));
        let one_url = one.display().to_string();
        let started = Instant::now();
        run(pinned(taskset, 0).args(["mix", "run", mix, "--out", &one_url]));
        best[0] = best[0].min(started.elapsed().as_secs_f64());

        let work = dir.join(format!("run-work-{round}")).display().to_string();
        let array = dir.join(format!("run-array-{round}"));
        let array_url = array.display().to_string();
        let started = Instant::now();
        let mut step_times = [0.0; 3];
        for (step, args) in [
            vec!["mix", "plan", mix, "--work", &work],
            vec!["mix", "route", mix, "--work", &work],
            vec!["mix", "run", mix, "--work", &work, "--out", &array_url],
        ]
        .into_iter()
        .enumerate()
        {
            let step_started = Instant::now();
            let children: Vec<_> = (0..2)
                .map(|i| {
                    pinned(taskset, i)
                        .args(&args)
                        .args(["--shard", &format!("{i}/2")])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for child in children {
                let output = child.wait_with_output().unwrap();
                assert!(
                    output.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            step_times[step] = step_started.elapsed().as_secs_f64();
        }
        let total = started.elapsed().as_secs_f64();
        if total < best[1] {
            best[1] = total;
            steps = step_times;
        }
        let mut names: Vec<String> = std::fs::read_dir(&one)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        assert!(names.len() > 3, "{names:?}");
        for name in names {
            assert!(
                std::fs::read(one.join(&name)).unwrap()
                    == std::fs::read(array.join(&name)).unwrap(),
                "mix run: {name} differs between one process and the arrays"
            );
        }
    }
    println!(
        "{:<22} 1 process {:.2} s, 2 processes {:.2} s: {:.2}x (count {:.2} s, route {:.2} s, write {:.2} s; best of {rounds}; same files)",
        "mix run (3 arrays)",
        best[0],
        best[1],
        best[0] / best[1],
        steps[0],
        steps[1],
        steps[2],
    );
}

/// `dapt`, on core `core` where `taskset` exists, with one thread of each pool.
fn pinned(taskset: bool, core: usize) -> Command {
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let mut command = if taskset {
        let mut command = Command::new("taskset");
        command.args(["-c", &core.to_string(), dapt]);
        command
    } else {
        Command::new(dapt)
    };
    command
        .env("DAPT_LOG", "warn")
        .env("RAYON_NUM_THREADS", "1")
        .env("TOKIO_WORKER_THREADS", "1");
    command
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
