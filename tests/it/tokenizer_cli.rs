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
