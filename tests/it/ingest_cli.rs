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
    let mut command = crate::common::dapt_command();
    command
        .arg("ingest")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--concurrency", "1"])
        .env("DAPT_LOG", "warn");
    command
}

/// Files of a directory with their bytes' sha256, object-store staging files (`name#N`) included:
/// a rerun removes those a killed write left.
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
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
    let help = crate::common::dapt_command()
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
    let bad = crate::common::dapt_command()
        .args(["ingest", "x.jsonl", "--out", "o", "--shard", "3/3"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INDEX/COUNT"));
}

/// #18.3: two writers, one output. A second `dapt ingest` into a directory another ingest is writing
/// is refused (the first holds the output's lock), and the output holds exactly the first's documents.
#[test]
fn a_second_writer_of_one_output_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut first = ingest_command(&test_data().join("corpus/en"), &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The lock file appears when the first run opens its output, before it reads anything.
    let started = Instant::now();
    while !out.join("._manifest.json.lock").exists() {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the first ingest never opened its output"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ingest_command(&test_data().join("corpus/ru"), &out).output()?;
    let still_running = first.try_wait()?.is_none();
    let first_status = first.wait()?;
    ensure!(first_status.success(), "the first writer failed");
    ensure!(!second.status.success(), "the second writer was let in");
    let stderr = String::from_utf8_lossy(&second.stderr);
    ensure!(
        if still_running {
            stderr.contains("another process is writing this output now")
        } else {
            stderr.contains("choose another output directory")
        },
        "{stderr}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_manifest.json"))?)?;
    ensure!(manifest["complete"] == true);
    let listed: Vec<String> = manifest["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&out)?
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    on_disk.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    ensure!(on_disk == listed_sorted, "{on_disk:?} vs {listed:?}");
    ensure!(
        listed.iter().all(|n| !n.contains("ru")),
        "a shard of the second input: {listed:?}"
    );
    Ok(())
}

/// Whether `key` exists in `bucket` of the moto server (listed by an unsigned request, which moto
/// answers).
fn s3_object_exists(server: &crate::common::S3Server, bucket: &str, key: &str) -> Result<bool> {
    use std::io::{Read, Write};
    let host = server.endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(
        stream,
        "GET /{bucket}?list-type=2&prefix={key} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(
        response.starts_with("HTTP/1.1 200"),
        "listing {bucket}: {response}"
    );
    Ok(response.contains(&format!("<Key>{key}</Key>")))
}

fn wait_for_lease(server: &crate::common::S3Server, key: &str) -> Result<()> {
    let started = Instant::now();
    while !s3_object_exists(server, "leases", key)? {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the first ingest never took its lease {key}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// #18.3 for object stores: a writer of an `s3://` output holds a lease object beside its manifest
/// (conditional puts against a real S3 server); a second writer is refused while the first lives,
/// the lease is gone once the output is finished, and a writer killed with SIGKILL does not keep its
/// rerun on the same host waiting.
#[test]
fn a_second_writer_of_one_s3_output_is_refused_and_a_killed_writers_lease_is_taken_over(
) -> Result<()> {
    let server = crate::common::S3Server::start()?;
    let bucket = server.bucket("leases")?;
    let ingest = |input: &Path, out: &str| {
        let mut command = crate::common::dapt_command();
        command
            .arg("ingest")
            .arg(input)
            .args(["--out", out, "--concurrency", "1"])
            .envs(server.env())
            .env("DAPT_LOG", "warn");
        command
    };
    let out = format!("{bucket}/out/");
    let mut first = ingest(&test_data().join("corpus"), &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for_lease(&server, "out/._manifest.json.lease")?;
    // The same job again (the same identity): only the lease stands between them.
    let second = ingest(&test_data().join("corpus"), &out).output()?;
    let still_running = first.try_wait()?.is_none();
    let first = first.wait_with_output()?;
    ensure!(
        first.status.success(),
        "the first writer failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    ensure!(
        still_running,
        "the first writer finished before the second one was answered; the test needs a longer input"
    );
    ensure!(!second.status.success(), "the second writer was let in");
    let stderr = String::from_utf8_lossy(&second.stderr);
    ensure!(
        stderr.contains("is writing this output now")
            && stderr.contains("out/._manifest.json.lease"),
        "{stderr}"
    );
    ensure!(
        !s3_object_exists(&server, "leases", "out/._manifest.json.lease")?,
        "the finished writer left its lease behind"
    );

    // A writer killed while it holds the lease: its rerun takes the lease over at once and finishes.
    let killed = format!("{bucket}/killed/");
    let mut victim = ingest(&test_data().join("corpus"), &killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for_lease(&server, "killed/._manifest.json.lease")?;
    ensure!(
        victim.try_wait()?.is_none(),
        "the writer finished before it could be killed"
    );
    victim.kill()?; // SIGKILL
    victim.wait()?;
    ensure!(s3_object_exists(
        &server,
        "leases",
        "killed/._manifest.json.lease"
    )?);
    let rerun = ingest(&test_data().join("corpus"), &killed).output()?;
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    ensure!(rerun.status.success(), "{stderr}");
    ensure!(
        stderr.contains("took over the output's lease") && stderr.contains("no longer runs"),
        "{stderr}"
    );
    ensure!(!s3_object_exists(
        &server,
        "leases",
        "killed/._manifest.json.lease"
    )?);
    Ok(())
}

/// `--overwrite` replaces an output of other inputs: the directory then holds exactly what ingesting
/// the new inputs alone gives (the old shards are gone); a job of an array may not overwrite.
#[test]
fn overwrite_replaces_an_output_of_other_inputs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let alone = dir.path().join("alone");
    let (en, ru) = (
        test_data().join("corpus/en/fortunes.jsonl"),
        test_data().join("corpus/ru/fortunes-ru.jsonl"),
    );
    ensure!(ingest_command(&en, &out).output()?.status.success());
    let refused = ingest_command(&ru, &out).output()?;
    ensure!(!refused.status.success());
    ensure!(String::from_utf8_lossy(&refused.stderr).contains("choose another output directory"));
    let array = ingest_command(&ru, &out)
        .args(["--overwrite", "--shard", "0/2"])
        .output()?;
    ensure!(!array.status.success());
    ensure!(
        String::from_utf8_lossy(&array.stderr).contains("ingest.overwrite"),
        "{}",
        String::from_utf8_lossy(&array.stderr)
    );
    let replaced = ingest_command(&ru, &out).arg("--overwrite").output()?;
    ensure!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    ensure!(ingest_command(&ru, &alone).output()?.status.success());
    let visible = |d: &Path| {
        digests(d)
            .into_iter()
            .filter(|(name, _)| !name.starts_with('.'))
            .collect::<BTreeMap<_, _>>()
    };
    ensure!(
        visible(&out) == visible(&alone),
        "{:?}\nvs\n{:?}",
        visible(&out),
        visible(&alone)
    );

    // The output is bound to its resolved inputs: a rerun after an input grew is refused (its
    // finished shard would stay while the file changed), a file added to the directory too.
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs)?;
    std::fs::copy(&ru, inputs.join("a.jsonl"))?;
    let bound = dir.path().join("bound");
    ensure!(ingest_command(&inputs, &bound).output()?.status.success());
    ensure!(
        ingest_command(&inputs, &bound).output()?.status.success(),
        "a plain rerun"
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(inputs.join("a.jsonl"))?;
    std::io::Write::write_all(&mut file, b"{\"text\": \"one more fortune\"}\n")?;
    drop(file);
    let grown = ingest_command(&inputs, &bound).output()?;
    ensure!(!grown.status.success(), "a grown input was let in");
    ensure!(
        String::from_utf8_lossy(&grown.stderr).contains("choose another output directory"),
        "{}",
        String::from_utf8_lossy(&grown.stderr)
    );
    ensure!(ingest_command(&inputs, &bound)
        .arg("--overwrite")
        .output()?
        .status
        .success());
    std::fs::copy(&en, inputs.join("b.jsonl"))?;
    ensure!(
        !ingest_command(&inputs, &bound).output()?.status.success(),
        "a file added to the input directory was let in"
    );
    Ok(())
}

/// A job array run as local processes by `configs/cluster/local-array.sh` against the S3 server
/// (moto): an index that never ran is missing (a refused run changes nothing), fails and records why
/// when an input is corrupt, is interrupted when killed, and rerunning those indices alone completes an output whose shards are exactly
/// those of a one-process run; `dapt status` says each of these.
#[test]
fn an_array_of_local_processes_against_s3_equals_one_process_and_reports_each_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let local_inputs = dir.path().join("in");
    write_inputs(&local_inputs)?;
    let server = crate::common::S3Server::start()?;
    let bucket = server.bucket("array")?;
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let storage = server.storage();
    let runtime = tokio::runtime::Runtime::new()?;
    // The inputs in the bucket, so that their URLs (and so the jobs' files) are the same every run.
    let inputs = dapt_core::Location::parse_with(&format!("{bucket}/in/"), &storage)?;
    for entry in std::fs::read_dir(&local_inputs)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        runtime.block_on(inputs.write(&name, std::fs::read(&path)?.into()))?;
    }
    let input = format!("{bucket}/in/");
    let one = format!("{bucket}/one/");
    let array = format!("{bucket}/array/");
    let ingest_args = |out: &str| -> Vec<String> {
        vec![
            dapt.into(),
            "ingest".into(),
            input.clone(),
            "--out".into(),
            out.into(),
            "--concurrency".into(),
            "1".into(),
        ]
    };
    let run = |args: &[String], env: &[(&str, &str)]| -> Result<std::process::Output> {
        Ok(Command::new(&args[0])
            .args(&args[1..])
            .envs(server.env())
            .envs(env.iter().copied())
            .env("DAPT_LOG", "warn")
            .output()?)
    };
    let output = run(&ingest_args(&one), &[])?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/cluster/local-array.sh");
    let logs = dir.path().join("logs");
    let array_command = |only: &str| -> Vec<String> {
        let mut args = vec![
            script.display().to_string(),
            "--logs".into(),
            logs.display().to_string(),
            "--only".into(),
            only.into(),
            "3".into(),
            "--".into(),
        ];
        args.extend(ingest_args(&array));
        args.extend(["--shard".into(), "env".into()]);
        args
    };
    let status = || -> Result<serde_json::Value> {
        let output = run(
            &[
                dapt.into(),
                "status".into(),
                array.clone(),
                "--jobs".into(),
                "3".into(),
                "--json".into(),
            ],
            &[],
        )?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let states = |status: &serde_json::Value| -> Vec<String> {
        status["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|j| j["state"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };

    // Index 2 (7 of the 12 files) is the one followed; 0 and 1 run first, so 2 is missing.
    let output = run(&array_command("0,1"), &[])?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let now = status()?;
    ensure!(
        states(&now) == ["done", "done", "missing"] && now["complete"] == false,
        "{now}"
    );

    // A refused run (a misconfigured lease) leaves the output alone: index 2 is still missing.
    let output = run(&array_command("2"), &[("DAPT_LEASE_TTL_S", "soon")])?;
    ensure!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("indices failed: 2"), "{stderr}");
    ensure!(states(&status()?) == ["done", "done", "missing"]);

    // Index 2's first input corrupt (same size, so the output's inputs are unchanged): index 2
    // fails at once and records why, naming the object.
    let location = dapt_core::Location::parse_with(&array, &storage)?;
    let job_manifest = |i: usize| -> Result<dapt_core::Manifest> {
        let name = dapt_core::manifest::job_manifest_name(i, 3);
        Ok(serde_json::from_slice(
            &runtime.block_on(location.read(&name))?,
        )?)
    };
    let taken: Vec<String> = [job_manifest(0)?, job_manifest(1)?]
        .into_iter()
        .flat_map(|m| m.shards.into_iter().map(|s| s.name))
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(&local_inputs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().to_string()))
        .collect::<Result<_>>()?;
    names.sort();
    let mine: Vec<&String> = names
        .iter()
        .filter(|n| {
            let stem = n.split('.').next().unwrap_or_default();
            !taken.iter().any(|t| t.starts_with(&format!("{stem}-")))
        })
        .collect();
    ensure!(
        mine.len() >= 4,
        "index 2 has too few files to follow: {mine:?}"
    );
    let victim = mine[0].clone();
    let original = std::fs::read(local_inputs.join(&victim))?;
    runtime.block_on(inputs.write(&victim, vec![0u8; original.len()].into()))?;
    let output = run(&array_command("2"), &[])?;
    ensure!(!output.status.success());
    runtime.block_on(inputs.write(&victim, original.into()))?;
    let now = status()?;
    ensure!(states(&now) == ["done", "done", "failed"], "{now}");
    let shards_at_failure = now["jobs"][2]["shards"].as_u64().unwrap_or(0);
    ensure!(
        now["jobs"][2]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&victim)),
        "{now}"
    );
    let table = run(
        &[
            dapt.into(),
            "status".into(),
            array.clone(),
            "--jobs".into(),
            "3".into(),
        ],
        &[],
    )?;
    let table = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table.contains("job 2/3  failed") && table.contains("2 of 3 job(s) done"),
        "{table}"
    );

    // Index 2 rerun and killed once it has published a shard more than at the failure: interrupted.
    let mut child = Command::new(&array_command("2")[0])
        .args(&array_command("2")[1..])
        .envs(server.env())
        .env("DAPT_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()?;
    let pid_file = logs.join("job-2.pid");
    let started = Instant::now();
    let killed_while_running = loop {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "index 2 published nothing"
        );
        let name = dapt_core::manifest::job_manifest_name(2, 3);
        let published = runtime
            .block_on(location.read_optional(&name))?
            .map(|bytes| serde_json::from_slice::<dapt_core::Manifest>(&bytes))
            .transpose()?
            .is_some_and(|m| m.shards.len() as u64 > shards_at_failure);
        if published {
            let pid = std::fs::read_to_string(&pid_file)?;
            let killed = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
            break killed.success();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    ensure!(!child.wait()?.success() || !killed_while_running);
    let now = status()?;
    if killed_while_running && states(&now)[2] != "done" {
        ensure!(states(&now) == ["done", "done", "interrupted"], "{now}");
    } else {
        eprintln!("index 2 finished before it could be killed: {now}");
    }

    // Rerun index 2: the output is complete and holds exactly the one-process run's shards.
    let output = run(&array_command("2"), &[])?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let now = status()?;
    ensure!(
        states(&now) == ["done", "done", "done"] && now["complete"] == true,
        "{now}"
    );
    let manifest = |url: &str| -> Result<dapt_core::Manifest> {
        let location = dapt_core::Location::parse_with(url, &storage)?;
        let bytes = runtime.block_on(location.read("_manifest.json"))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let (a, b) = (manifest(&one)?, manifest(&array)?);
    ensure!(
        a.shards.len() == 12 && a.shards == b.shards,
        "shards differ:\n{:?}\n{:?}",
        a.shards,
        b.shards
    );
    ensure!(
        runtime
            .block_on(
                dapt_core::Location::parse_with(&array, &storage)?
                    .read_optional("_failed-00002-of-00003.json")
            )?
            .is_none(),
        "the failure record outlived the success"
    );
    Ok(())
}
