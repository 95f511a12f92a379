//! `dapt tokenizer` as a user runs it: measure per language, extend Qwen3 with Russian tokens, train.
use std::path::PathBuf;

use crate::common::{dapt, test_data};
use anyhow::{ensure, Result};
use dapt_packer::TokenizerFile;

#[test]
fn measure_extend_and_train_from_sql() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/demo/data");
    crate::common::ingest(&data, &docs)?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!("[sources.docs]\nurl = \"{}/\"\n", docs.display()),
    )?;
    let config = config.to_str().unwrap();
    let qwen = test_data().join("tokenizers/qwen3/tokenizer.json");
    let gpt2 = test_data().join("tokenizers/gpt2/tokenizer.json");

    let measure = dapt(&[
        "tokenizer",
        "measure",
        "--config",
        config,
        "--tokenizer",
        &format!("qwen3={}", qwen.display()),
        "--tokenizer",
        &format!("gpt2={}", gpt2.display()),
        "-e",
        "SELECT text, lang_id(text) AS lang FROM docs WHERE lang_id(text) IN ('ru', 'en')",
        "--group-by",
        "lang",
    ]);
    ensure!(
        measure.status.success(),
        "{}",
        String::from_utf8_lossy(&measure.stderr)
    );
    let table = String::from_utf8(measure.stdout)?;
    let tokens_per_word = |group: &str, name: &str| -> f64 {
        table
            .lines()
            .find(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == [group, name])
            .and_then(|l| l.split_whitespace().nth(5))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    ensure!(
        tokens_per_word("ru", "gpt2") > 2.0 * tokens_per_word("ru", "qwen3"),
        "{table}"
    );
    ensure!(
        tokens_per_word("ru", "qwen3") > tokens_per_word("en", "qwen3"),
        "{table}"
    );

    let extended = dir.path().join("qwen3-ru");
    let extend = dapt(&[
        "tokenizer",
        "extend",
        "--config",
        config,
        "--base",
        qwen.to_str().unwrap(),
        "-e",
        "SELECT text FROM docs WHERE lang_id(text) = 'ru'",
        "--new-tokens",
        "300",
        "--out",
        extended.to_str().unwrap(),
    ]);
    ensure!(
        extend.status.success(),
        "{}",
        String::from_utf8_lossy(&extend.stderr)
    );
    let new_tokens: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(extended.join("new_tokens.json"))?)?;
    ensure!(new_tokens.len() == 300 && new_tokens[0]["id"] == 151_669);
    ensure!(
        extended.join("tokenizer_config.json").exists(),
        "chat template travels with it"
    );
    let loaded = TokenizerFile::load(&extended.join("tokenizer.json"))?;
    ensure!(loaded.vocab_size() == 151_669 + 300);
    ensure!(loaded.id_of("<|im_end|>")? == TokenizerFile::load(&qwen)?.id_of("<|im_end|>")?);

    let trained = dir.path().join("unigram.json");
    let train = dapt(&[
        "tokenizer",
        "train",
        "--config",
        config,
        "-e",
        "SELECT text FROM docs",
        "--model",
        "unigram",
        "--vocab-size",
        "1500",
        "--out",
        trained.to_str().unwrap(),
    ]);
    ensure!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let unigram = TokenizerFile::load(&trained)?;
    ensure!(
        unigram.vocab_size() > 1000 && unigram.vocab_size() <= 1500,
        "{}",
        unigram.vocab_size()
    );
    Ok(())
}

/// `dapt tokenizer measure --shard i/n --work URL` as a job array of processes: each job publishes
/// its totals, the last one prints the whole table, equal to one process's; a work directory of
/// another measurement is refused.
#[test]
fn measure_as_a_job_array_equals_one_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/demo/data");
    crate::common::ingest(&data, &docs)?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!("[sources.docs]\nurl = \"{}/\"\n", docs.display()),
    )?;
    let config = config.to_str().unwrap();
    let qwen = format!(
        "qwen3={}",
        test_data()
            .join("tokenizers/qwen3/tokenizer.json")
            .display()
    );
    let gpt2 = format!(
        "gpt2={}",
        test_data().join("tokenizers/gpt2/tokenizer.json").display()
    );
    let query = "SELECT text, source FROM docs";
    let measure = |extra: &[&str]| -> Result<String> {
        let mut args = vec![
            "tokenizer",
            "measure",
            "--config",
            config,
            "--tokenizer",
            &qwen,
            "--tokenizer",
            &gpt2,
            "-e",
            query,
            "--group-by",
            "source",
        ];
        args.extend(extra);
        let output = dapt(&args);
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let one = measure(&[])?;
    ensure!(
        one.lines().count() > 4 && one.contains("qwen3") && one.contains("gpt2"),
        "{one}"
    );
    let work = dir.path().join("work").display().to_string();
    let first = measure(&["--shard", "2/3", "--work", &work])?;
    ensure!(
        first.contains("job 2/3 done") && first.contains("[0, 1]"),
        "{first}"
    );
    let second = measure(&["--shard", "0/3", "--work", &work])?;
    ensure!(second.contains("[1]"), "{second}");
    let status = |work: &str| -> Result<String> {
        let output = dapt(&["status", work]);
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let listed = status(&work)?;
    ensure!(
        listed.contains("2 of 3 job(s) done")
            && listed.contains("measure 1/3  not done")
            && listed.contains("measure 2/3  done"),
        "{listed}"
    );
    let last = measure(&["--shard", "1/3", "--work", &work])?;
    ensure!(
        last == one,
        "the array's table:\n{last}\none process's:\n{one}"
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("work/measure.json"))?)?;
    ensure!(
        written.as_object().is_some_and(|groups| !groups.is_empty()),
        "{written}"
    );
    // A rerun of a finished job gives the table again; another measurement is refused.
    ensure!(measure(&["--shard", "0/3", "--work", &work])? == one);
    // Qwen3 alone over `query`, as job `shard` with work directory `work`.
    let measure_qwen = |query: &str, shard: &str, work: &str| {
        dapt(&[
            "tokenizer",
            "measure",
            "--config",
            config,
            "--tokenizer",
            &qwen,
            "-e",
            query,
            "--shard",
            shard,
            "--work",
            work,
        ])
    };
    let other = measure_qwen(query, "0/3", &work);
    ensure!(!other.status.success());
    let message = String::from_utf8_lossy(&other.stderr);
    ensure!(message.contains("another measurement"), "{message}");

    // A job that fails records its error, which `dapt status` shows.
    let broken = dir.path().join("broken").display().to_string();
    let failed = measure_qwen("SELECT text, source FROM nowhere", "1/2", &broken);
    ensure!(!failed.status.success());
    let listed = status(&broken)?;
    ensure!(
        listed.contains("measure 1/2  failed") && listed.contains("nowhere"),
        "{listed}"
    );
    Ok(())
}
