//! Near dedup as job arrays (`dapt dedup near-signatures|near-links|near-clusters`) against the S3
//! server: the same table, byte for byte, as one `dapt dedup near` process, for any numbers of
//! shards and partitions; missing jobs named, finished ones not redone, other settings refused.
use std::process::{Command, Output};

use anyhow::{ensure, Result};

use crate::common::demo_data;

/// Documents with near duplicates: fortunes, copies with a word changed or a sentence added, and
/// chains (a copy of a copy) so that clusters join through several buckets.
fn write_corpus(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let original = std::fs::read_to_string(demo_data().join("fortunes-en.jsonl"))?;
    let texts: Vec<String> = original
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .filter(|t| t.split_whitespace().count() >= 12)
        .take(400)
        .collect();
    let mut files = [String::new(), String::new(), String::new()];
    for (i, text) in texts.iter().enumerate() {
        let mut push = |id: String, text: &str| {
            let line = serde_json::json!({"id": id, "text": text}).to_string();
            let file = xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as usize % 3;
            files[file].push_str(&line);
            files[file].push('\n');
        };
        push(format!("doc-{i:04}"), text);
        if i % 3 == 0 {
            let edited = format!("{text} And one more sentence here.");
            push(format!("copy-{i:04}"), &edited);
            if i % 6 == 0 {
                let words: Vec<&str> = edited.split_whitespace().collect();
                let chained = words[1..].join(" ") + " Indeed.";
                push(format!("chain-{i:04}"), &chained);
            }
        }
    }
    for (i, content) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{i}.jsonl")), content)?;
    }
    Ok(())
}

#[test]
fn sharded_near_dedup_equals_one_process_for_any_shards_and_partitions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let corpus = dir.path().join("corpus");
    write_corpus(&corpus)?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!("[sources.docs]\nurl = \"{}/\"\n", corpus.display()),
    )?;
    let server = crate::common::S3Server::start()?;
    let bucket = server.bucket("dedup")?;
    let dapt = env!("CARGO_BIN_EXE_dapt");
    let config = config.display().to_string();
    let query = "SELECT id, text FROM docs";
    let near = ["--k", "3", "--threshold", "0.6"];
    let run = |args: &[&str], env: &[(&str, &str)]| -> Result<Output> {
        Ok(Command::new(args[0])
            .args(&args[1..])
            .envs(server.env())
            .envs(env.iter().copied())
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
    let fails = |output: Output| -> Result<String> {
        ensure!(
            !output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let one = format!("{bucket}/one/duplicates.parquet");
    let mut args = vec![
        dapt, "dedup", "near", "--config", &config, "-e", query, "--out", &one,
    ];
    args.extend(near);
    let printed = ok(run(&args, &[])?)?;
    ensure!(printed.contains("clusters of duplicates"), "{printed}");

    let runtime = tokio::runtime::Runtime::new()?;
    // The test's own S3 client, for the same server.
    let storage = server.storage();
    let location = |url: &str| dapt_core::Location::parse_with(url, &storage);
    let read = |url: &str| -> Result<Vec<u8>> {
        let (parent, name) = url.rsplit_once('/').unwrap_or_default();
        Ok(runtime.block_on(location(parent)?.read(name))?.to_vec())
    };
    let expected = read(&one)?;
    // Clusters of 2 and 3 (chains) were found.
    let table = dir.path().join("one.parquet");
    std::fs::write(&table, &expected)?;
    let counts = ok(run(
        &[
            dapt,
            "sql",
            "--format",
            "csv",
            "-e",
            &format!(
                "CREATE EXTERNAL TABLE d STORED AS PARQUET LOCATION '{}'; \
                 SELECT count(*) AS docs, sum(CASE WHEN kept THEN 1 ELSE 0 END) AS clusters, \
                 sum(CASE WHEN id LIKE 'chain-%' THEN 1 ELSE 0 END) AS chains FROM d",
                table.display()
            ),
        ],
        &[],
    )?)?;
    let figures: Vec<u64> = counts
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    ensure!(
        figures.len() == 3 && figures[1] >= 100 && figures[0] > 2 * figures[1] && figures[2] >= 50,
        "docs, clusters, chains: {counts}"
    );

    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/cluster/local-array.sh")
        .display()
        .to_string();
    let logs = dir.path().join("logs").display().to_string();
    for (shards, partitions) in [(1usize, 1usize), (3, 4)] {
        let work = format!("{bucket}/work-{shards}-{partitions}/");
        let out = format!("{bucket}/sharded-{shards}-{partitions}/duplicates.parquet");
        let (shards_text, partitions_text) = (shards.to_string(), partitions.to_string());
        // Step 1 as an array of local processes (`--shard env`).
        let mut args = vec![
            script.as_str(),
            "--logs",
            &logs,
            shards_text.as_str(),
            "--",
            dapt,
            "dedup",
            "near-signatures",
            "--config",
            &config,
            "-e",
            query,
            "--work",
            &work,
            "--shard",
            "env",
            "--partitions",
            &partitions_text,
        ];
        args.extend(near);
        ok(run(&args, &[])?)?;
        if shards == 3 {
            // A shard lost (its record gone): step 2 names it; rerunning that index alone mends it.
            let work_location = location(work.trim_end_matches('/'))?;
            runtime.block_on(work_location.delete("_done/signatures-00001-of-00003.json"))?;
            let message = fails(run(
                &[
                    dapt,
                    "dedup",
                    "near-links",
                    "--work",
                    &work,
                    "--partition",
                    "0/4",
                ],
                &[],
            )?)?;
            ensure!(
                message.contains("[1]") && message.contains("--shard I/3"),
                "{message}"
            );
            // `dapt status` says so: shard 1 not done, link job 0 failed with that error.
            let status: serde_json::Value =
                serde_json::from_str(&ok(run(&[dapt, "status", &work, "--json"], &[])?)?)?;
            let states: Vec<String> = status["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| {
                    format!(
                        "{} {} {}",
                        j["step"].as_str().unwrap_or("?"),
                        j["index"],
                        j["state"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            ensure!(
                states.len() == 3 + 4 + 1
                    && states[..4]
                        == [
                            "signatures 0 done",
                            "signatures 1 not done",
                            "signatures 2 done",
                            "links 0 failed"
                        ]
                    && status["jobs"][3]["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("[1]"),
                "{status}"
            );
            let mut again = vec![
                dapt,
                "dedup",
                "near-signatures",
                "--config",
                &config,
                "-e",
                query,
                "--work",
                &work,
                "--shard",
                "1/3",
                "--partitions",
                "4",
            ];
            again.extend(near);
            let printed = ok(run(&again, &[])?)?;
            ensure!(printed.contains("signatures 1/3 done"), "{printed}");
            // A finished shard is not redone.
            let printed = ok(run(&again, &[])?)?;
            ensure!(printed.contains("up to date"), "{printed}");
            // Other settings into the same work directory are refused.
            let mut other = again.clone();
            let last = other.len() - 1;
            other[last] = "0.7";
            let message = fails(run(&other, &[])?)?;
            ensure!(message.contains("other settings"), "{message}");
            // Step 3 before step 2 names the missing partitions.
            let message = fails(run(
                &[
                    dapt,
                    "dedup",
                    "near-clusters",
                    "--work",
                    &work,
                    "--out",
                    &out,
                ],
                &[],
            )?)?;
            ensure!(message.contains("[0, 1, 2, 3]"), "{message}");
        }
        // Step 2 as an array (`DAPT_SHARD_COUNT` set by the script is the partition count).
        ok(run(
            &[
                script.as_str(),
                "--logs",
                &logs,
                partitions_text.as_str(),
                "--",
                dapt,
                "dedup",
                "near-links",
                "--work",
                &work,
                "--partition",
                "env",
            ],
            &[],
        )?)?;
        ok(run(
            &[
                dapt,
                "dedup",
                "near-clusters",
                "--work",
                &work,
                "--out",
                &out,
            ],
            &[],
        )?)?;
        ensure!(
            read(&out)? == expected,
            "{shards} shards × {partitions} partitions differ from one process"
        );
        let status = ok(run(&[dapt, "status", &work], &[])?)?;
        let jobs = shards + partitions + 1;
        ensure!(
            status.contains(&format!("{jobs} of {jobs} job(s) done")) && !status.contains("failed"),
            "{status}"
        );
    }
    Ok(())
}
