//! Helpers shared by the end-to-end tests.
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `dapt` binary with quiet logs.
pub fn dapt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dapt"))
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
