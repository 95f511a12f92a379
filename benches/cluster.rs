//! SQL on a Ballista cluster of dapt processes (`dapt cluster scheduler|executor`, `dapt sql
//! --cluster`) with 1 and 2 executors of one thread each on this machine: the speed-up 1 → 2 processes,
//! beside one local `dapt sql` process on all cores. The test corpus as 8 JSON-lines files of even size;
//! the query runs dapt's functions over every document (`lang_id`, `token_count` with the Qwen3
//! tokenizer, `gopher_quality`) and groups by language (a shuffle between the executors). Every result
//! must equal the local one.
//!
//! Run: `cargo bench --profile dev --bench cluster` (or release); `DAPT_BENCH_MB` caps the corpus,
//! `DAPT_BENCH_ROUNDS` (default 3) rounds per setting, the best compared.
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 8;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cap = std::env::var("DAPT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(usize::MAX, |mb| mb * 1_000_000);
    let rounds: usize = std::env::var("DAPT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("jsonl");
    std::fs::create_dir_all(&corpus).unwrap();
    let (documents, bytes) = write_corpus(&corpus, cap);
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.docs]\nurl = \"{}/\"\nformat = \"jsonl\"\n[tokenizers]\nqwen3 = \"{}\"\n",
            corpus.display(),
            dapt_test_data::path("tokenizers/qwen3/tokenizer.json").display()
        ),
    )
    .unwrap();
    println!(
        "corpus: {documents} documents, {:.1} MB of text, {FILES} JSON-lines files",
        bytes as f64 / 1e6
    );
    let query = "SELECT lang_id(text) AS lang, count(*) AS docs, \
                 sum(token_count(text, 'qwen3')) AS tokens, \
                 sum(CASE WHEN gopher_quality(text) THEN 1 ELSE 0 END) AS gopher \
                 FROM docs GROUP BY lang_id(text) ORDER BY lang";
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let sql = |cluster: Option<&str>| -> (f64, String) {
        let mut command = Command::new(dapt);
        command
            .args(["sql", "--format", "csv", "--config"])
            .arg(&config)
            .args(["-e", query])
            .env("DAPT_LOG", "warn");
        if let Some(url) = cluster {
            command.args(["--cluster", url]);
        }
        let started = Instant::now();
        let output = command.output().unwrap();
        let seconds = started.elapsed().as_secs_f64();
        succeeded(&output);
        (seconds, String::from_utf8(output.stdout).unwrap())
    };
    let best = |run: &dyn Fn() -> (f64, String)| -> (f64, String) {
        (0..rounds)
            .map(|_| run())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
    };
    let (local_s, expected) = best(&|| sql(None));
    let rate = |seconds: f64| bytes as f64 / 1e6 / seconds;
    println!(
        "local dapt sql (all cores)        {local_s:>6.2} s {:>6.2} MB/s",
        rate(local_s)
    );
    let mut times = Vec::new();
    for executors in [1, 2] {
        let cluster = Cluster::start(dapt, dir.path(), executors, &config);
        let (seconds, result) = best(&|| sql(Some(&cluster.url)));
        assert_eq!(
            result, expected,
            "the cluster's result differs from the local one"
        );
        println!(
            "cluster, {executors} executor(s) × 1 thread  {seconds:>6.2} s {:>6.2} MB/s",
            rate(seconds)
        );
        times.push(seconds);
    }
    println!(
        "speed-up 1 → 2 executors: {:.2}× (best of {rounds}; results equal the local one)",
        times[0] / times[1]
    );
}

/// A scheduler and executors on 127.0.0.1, killed when dropped.
struct Cluster {
    children: Vec<Child>,
    url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start(dapt: &str, dir: &Path, executors: usize, config: &Path) -> Self {
        let port = free_port();
        let logs = dir.join(format!("logs-{executors}"));
        std::fs::create_dir_all(&logs).unwrap();
        let spawn = |name: &str, args: Vec<String>| -> Child {
            Command::new(dapt)
                .args(args)
                .env("DAPT_LOG", "info")
                // One thread per process: the UDFs' own rayon pools too.
                .env("RAYON_NUM_THREADS", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(logs.join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap()
        };
        let mut children = vec![spawn(
            "scheduler",
            vec![
                "cluster".into(),
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
            ],
        )];
        for index in 0..executors {
            children.push(spawn(
                &format!("executor-{index}"),
                vec![
                    "cluster".into(),
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{port}"),
                    "--bind-host".into(),
                    "127.0.0.1".into(),
                    "--flight-port".into(),
                    free_port().to_string(),
                    "--grpc-port".into(),
                    free_port().to_string(),
                    "--concurrent-tasks".into(),
                    "1".into(),
                    "--config".into(),
                    config.display().to_string(),
                ],
            ));
        }
        let started = Instant::now();
        for index in 0..executors {
            let log = logs.join(format!("executor-{index}.log"));
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("registration succeed")
            {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "executor {index} did not register"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self {
            children,
            url: format!("df://127.0.0.1:{port}"),
        }
    }
}

fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The test corpus, round-robin into `FILES` JSON-lines files (even sizes), up to `cap` bytes of text.
fn write_corpus(dir: &Path, cap: usize) -> (usize, usize) {
    let mut outs: Vec<_> = (0..FILES)
        .map(|i| {
            std::io::BufWriter::new(
                std::fs::File::create(dir.join(format!("part-{i}.jsonl"))).unwrap(),
            )
        })
        .collect();
    let (mut documents, mut bytes) = (0, 0);
    'files: for f in &dapt_test_data::corpus_files() {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            if bytes >= cap {
                break 'files;
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            bytes += text.len();
            let row = serde_json::json!({ "id": format!("{documents:08}"), "text": text });
            writeln!(outs[documents % FILES], "{row}").unwrap();
            documents += 1;
        }
    }
    for out in &mut outs {
        out.flush().unwrap();
    }
    (documents, bytes)
}
