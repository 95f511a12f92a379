//! `dapt ingest` as a user runs it: shards of real text on disk, the CLI, the output read back; a run
//! killed with SIGKILL and rerun gives exactly the output of an uninterrupted run.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::test_data;
use anyhow::{ensure, Result};

/// Twelve zstd-compressed shards cut from the test corpus (about 12 MB of text).
fn write_inputs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let sources = [
        "en/python3.11-doc.jsonl",
        "ru/gimp-help-ru.jsonl",
        "en/postgresql-doc-15.jsonl",
    ];
    let mut index = 0;
    for source in sources {
        let text = std::fs::read_to_string(test_data().join("corpus").join(source))?;
        let lines: Vec<&str> = text.lines().collect();
        for chunk in lines.chunks(lines.len().div_ceil(4)).take(4) {
            let mut plain = chunk.join("\n");
            plain.push('\n');
            plain.truncate(plain.len().min(1 << 20) - 1);
            let plain = &plain[..plain.rfind('\n').unwrap_or(0) + 1];
            let path = dir.join(format!("shard-{index:02}.jsonl.zst"));
            let mut child = Command::new("zstd")
                .args(["-q", "-3", "-o"])
                .arg(&path)
                .stdin(Stdio::piped())
                .spawn()?;
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), plain.as_bytes())?;
            drop(child.stdin.take());
            ensure!(child.wait()?.success(), "zstd failed");
            index += 1;
        }
    }
    Ok(())
}

fn ingest_command(input: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dapt"));
    command
        .arg("ingest")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--concurrency", "1"])
        .env("DAPT_LOG", "warn");
    command
}

/// Files of a directory (recursively) with their bytes' sha256, except object-store staging files
/// (`name#N`), which readers never see.
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.contains('#') {
            continue;
        }
        out.insert(
            name,
            dapt_core::hash::sha256_hex(&std::fs::read(&path).unwrap()),
        );
    }
    out
}

#[test]
fn killed_ingest_reruns_to_identical_output() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    write_inputs(&input)?;

    let clean = dir.path().join("clean");
    let output = ingest_command(&input, &clean).output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    ensure!(stdout.contains("ingested 12 of 12 files"), "{stdout}");
    ensure!(
        stdout.contains("0 skipped") && stdout.contains("MB/s"),
        "{stdout}"
    );
    let manifest: dapt_core::Manifest =
        serde_json::from_slice(&std::fs::read(clean.join("_manifest.json"))?)?;
    ensure!(manifest.complete && manifest.shards.len() == 12);

    // Kill a run once it has published some shards but not all.
    let killed = dir.path().join("killed");
    let mut child = ingest_command(&input, &killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let mut was_partial = false;
    loop {
        if let Ok(bytes) = std::fs::read(killed.join("_manifest.json")) {
            if let Ok(m) = serde_json::from_slice::<dapt_core::Manifest>(&bytes) {
                if !m.shards.is_empty() {
                    was_partial = !m.complete;
                    break;
                }
            }
        }
        if child.try_wait()?.is_some() || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("killed while partial: {was_partial}");
    child.kill()?; // SIGKILL
    child.wait()?;
    let rerun = ingest_command(&input, &killed).output()?;
    ensure!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let stdout = String::from_utf8(rerun.stdout)?;
    if was_partial {
        ensure!(
            !stdout.contains("ingested 12 of 12"),
            "the rerun skipped finished files: {stdout}"
        );
    }
    ensure!(
        digests(&killed) == digests(&clean),
        "outputs differ after kill + rerun"
    );
    Ok(())
}

#[test]
fn ingest_help_and_bad_flags() {
    let help = Command::new(env!("CARGO_BIN_EXE_dapt"))
        .args(["ingest", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--out",
        "--format",
        "--preset",
        "--text-field",
        "--on-error",
        "--shard",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_dapt"))
        .args(["ingest", "x.jsonl", "--out", "o", "--shard", "3/3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INDEX/COUNT"));
}
