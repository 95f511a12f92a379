//! Helpers shared by the end-to-end tests.
use std::path::PathBuf;
use std::process::{Command, Output};

/// The `dapt` binary as a command. `dapt` hands torch commands to `dapt-torch`; tests name the one
/// this `cargo test` built (`DAPT_TORCH_BIN`) rather than have `dapt` run cargo to build it.
pub fn dapt_command() -> Command {
    #[allow(unused_mut)]
    let mut command = Command::new(env!("CARGO_BIN_EXE_dapt"));
    #[cfg(feature = "torch")]
    command.env("DAPT_TORCH_BIN", env!("CARGO_BIN_EXE_dapt-torch"));
    command
}

/// Runs the `dapt` binary with quiet logs.
pub fn dapt(args: &[&str]) -> Output {
    dapt_command()
        .args(args)
        .env("DAPT_LOG", "warn")
        .output()
        .expect("the dapt binary runs")
}

/// The test data (built by `scripts/test-data`; a missing folder fails naming that command).
pub fn test_data() -> PathBuf {
    dapt_test_data::dir()
}

/// `dapt model import-gguf` of the test data's SmolLM2-135M-Instruct into `dir/smollm2`; its path.
pub fn import_smollm2(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let model = dir.join("smollm2");
    run_ok(&[
        "model",
        "import-gguf",
        test_data()
            .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
            .to_str()
            .unwrap_or_default(),
        "--out",
        model.to_str().unwrap_or_default(),
    ])?;
    Ok(model)
}

/// `dapt serve` of `model` on a free port; its base URL.
pub fn serve(model: &std::path::Path) -> anyhow::Result<(std::process::Child, String)> {
    use anyhow::Context;
    use std::io::BufRead;
    let mut server = dapt_command()
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cpu",
            "--name",
            "smollm2",
        ])
        .env("DAPT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines = std::io::BufReader::new(server.stdout.take().context("stdout")?).lines();
    let first = lines.next().context("first line")??;
    let url = first
        .strip_prefix("listening on ")
        .and_then(|u| u.strip_suffix("/v1/completions"))
        .with_context(|| format!("unexpected line {first:?}"))?
        .to_string();
    // Keep reading what the server prints (a closed pipe would end it at its next line).
    std::thread::spawn(move || lines.for_each(drop));
    Ok((server, url))
}

/// The demo data shipped in the repository.
pub fn demo_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/demo/data")
}

/// `dapt ingest INPUT --out OUT`, failing the test with dapt's stderr if it fails.
pub fn ingest(input: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let output = dapt(&[
        "ingest",
        input.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ]);
    anyhow::ensure!(
        output.status.success(),
        "dapt ingest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Runs `dapt ARGS`, failing with its stderr unless it succeeds; returns its stdout.
pub fn run_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = dapt(args);
    anyhow::ensure!(
        output.status.success(),
        "dapt {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `dapt ARGS`, which must fail; returns its stderr.
pub fn run_fails(args: &[&str]) -> anyhow::Result<String> {
    let output = dapt(args);
    anyhow::ensure!(!output.status.success(), "dapt {args:?} succeeded");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[path = "../support/s3.rs"]
mod s3;
pub use s3::S3Server;

/// Reads one HTTP request (head and body) from `stream`.
pub fn read_request(stream: &std::net::TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((head, body))
}
