//! `dapt sql` as a user runs it: a sources file over ingested Parquet and raw JSON lines, results as
//! table, CSV, JSON lines and Parquet (read back by pyarrow), CREATE EXTERNAL TABLE, refusals.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{dapt, demo_data, test_data};
use anyhow::{ensure, Result};

/// Ingests the demo data and writes a raw JSON-lines file whose text column is called `body`.
fn fixtures(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let docs = dir.join("docs");
    crate::common::ingest(&demo_data(), &docs)?;
    let raw = dir.join("raw.jsonl");
    let lines: String = std::fs::read_to_string(demo_data().join("fortunes-ru.jsonl"))?
        .lines()
        .take(100)
        .enumerate()
        .map(|(n, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"body": v["text"], "n": n}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&raw, lines)?;
    Ok((docs, raw))
}

#[test]
fn sources_queries_and_every_output_format() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (docs, raw) = fixtures(dir.path())?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.docs]\nurl = \"{}/\"\n\n[sources.raw]\nurl = \"{}\"\n[sources.raw.columns]\ntext = \"body\"\n",
            docs.display(),
            raw.display()
        ),
    )?;
    let config = config.to_str().unwrap();
    let query = "SELECT source, count(*) AS n, sum(CASE WHEN lang_id(text) = 'ru' THEN 1 ELSE 0 END) AS ru \
                 FROM docs GROUP BY source ORDER BY source";

    let table = dapt(&["sql", "--config", config, "-e", query]);
    ensure!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let table = String::from_utf8(table.stdout)?;
    ensure!(
        table.contains("| fortunes-ru ") && table.contains("| 1500 "),
        "{table}"
    );

    let csv = dapt(&["sql", "--config", config, "-e", query, "--format", "csv"]);
    let csv = String::from_utf8(csv.stdout)?;
    let lines: Vec<&str> = csv.lines().collect();
    ensure!(lines[0] == "source,n,ru", "{csv}");
    ensure!(lines.len() == 5, "four sources: {csv}");
    let ru_row = lines
        .iter()
        .find(|l| l.starts_with("fortunes-ru,"))
        .unwrap();
    let ru: Vec<u64> = ru_row
        .split(',')
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    ensure!(
        ru[0] == 1500 && ru[1] > 1350,
        "most Russian fortunes are Russian: {ru_row}"
    );

    // The renamed JSON-lines source answers to `text`.
    let jsonl = dapt(&[
        "sql",
        "--config",
        config,
        "--format",
        "jsonl",
        "-e",
        "SELECT n, character_length(text) AS chars FROM raw WHERE n < 3 ORDER BY n",
    ]);
    ensure!(
        jsonl.status.success(),
        "{}",
        String::from_utf8_lossy(&jsonl.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(jsonl.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    ensure!(
        rows.len() == 3 && rows[0]["n"] == 0 && rows[0]["chars"].as_u64().unwrap() > 10,
        "{rows:?}"
    );

    // Parquet out, read back by an independent reader.
    let out = dir.path().join("result/quality.parquet");
    let written = dapt(&[
        "sql",
        "--config",
        config,
        "--out",
        out.to_str().unwrap(),
        "-e",
        "SELECT id, text_stats(text)['words'] AS words, fineweb_quality(text) AS fineweb, \
         minhash(text, 5, 16, 1) AS sig FROM docs WHERE source = 'debian-history-en'",
    ]);
    ensure!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let check = Command::new("python3")
        .args(["-c", "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); \
                      print(t.num_rows, t.column_names, len(t.column('sig')[0]), t.column('words')[0].as_py())"])
        .arg(&out)
        .output()?;
    ensure!(
        check.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let printed = String::from_utf8(check.stdout)?;
    ensure!(
        printed.starts_with("1 ['id', 'words', 'fineweb', 'sig'] 16 "),
        "{printed}"
    );
    let words: u64 = printed.split_whitespace().last().unwrap().parse()?;
    ensure!(words > 5000, "{printed}");
    Ok(())
}

#[test]
fn create_external_table_and_refusals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (docs, _) = fixtures(dir.path())?;
    let script = dir.path().join("q.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE d STORED AS PARQUET LOCATION '{}/';\n\
             SELECT count(*) AS n FROM d WHERE gopher_quality(text, 'none');",
            docs.display()
        ),
    )?;
    let out = dapt(&["sql", "-f", script.to_str().unwrap(), "--format", "csv"]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout)?;
    let n: u64 = csv.lines().nth(1).unwrap().parse()?;
    ensure!((1..3004).contains(&n), "{csv}");

    for sql in [
        "DROP TABLE x",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO t VALUES (1)",
        &format!("COPY (SELECT 1) TO '{}/x.csv'", dir.path().display()),
        "SET datafusion.execution.batch_size = 1",
    ] {
        let out = dapt(&["sql", "-e", sql]);
        ensure!(!out.status.success(), "{sql} ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains("read-only"), "{sql}: {stderr}");
    }
    Ok(())
}

/// `dapt dedup` over a query, and the duplicates table joined back in SQL.
#[test]
fn dedup_commands_write_a_joinable_table() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (docs, _) = fixtures(dir.path())?;
    // A second copy of one shard, with edits, under another source name: exact and near duplicates.
    let original = std::fs::read_to_string(demo_data().join("fortunes-en.jsonl"))?;
    let copies: String = original
        .lines()
        .take(300)
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = v["text"].as_str().unwrap();
            let text = if i % 2 == 0 {
                text.to_uppercase()
            } else {
                format!("{text} Extra words at the end.")
            };
            serde_json::json!({"id": format!("copy-{i}"), "text": text, "source": "copies"})
                .to_string()
                + "\n"
        })
        .collect();
    let more = dir.path().join("more");
    std::fs::create_dir_all(&more)?;
    std::fs::write(more.join("copies.jsonl"), copies)?;
    let out = dapt(&[
        "ingest",
        more.to_str().unwrap(),
        "--out",
        docs.to_str().unwrap(),
    ]);
    ensure!(
        !out.status.success(),
        "another configuration into the same directory is refused"
    );
    let docs2 = dir.path().join("docs2");
    crate::common::ingest(&more, &docs2)?;
    let config = dir.path().join("sources.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.a]\nurl = \"{}/\"\n[sources.b]\nurl = \"{}/\"\n",
            docs.display(),
            docs2.display()
        ),
    )?;
    let query = "SELECT id, text FROM a WHERE source = 'fortunes' UNION ALL SELECT id, text FROM b";
    let exact = dir.path().join("exact.parquet");
    let run = dapt(&[
        "dedup",
        "exact",
        "--config",
        config.to_str().unwrap(),
        "-e",
        query,
        "--out",
        exact.to_str().unwrap(),
    ]);
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let near = dir.path().join("near.parquet");
    let run = dapt(&[
        "dedup",
        "near",
        "--config",
        config.to_str().unwrap(),
        "-e",
        query,
        "--out",
        near.to_str().unwrap(),
        "--k",
        "2",
        "--threshold",
        "0.5",
    ]);
    ensure!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Read back: how many rows does each table drop (one per duplicate beyond the kept one)?
    let count = |table: &Path| -> Result<u64> {
        let sql = format!(
            "CREATE EXTERNAL TABLE d STORED AS PARQUET LOCATION '{}'; \
             SELECT count(*) FROM d WHERE NOT kept",
            table.display()
        );
        let out = dapt(&["sql", "--format", "csv", "-e", &sql]);
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .nth(1)
            .unwrap_or("0")
            .parse()?)
    };
    let (exact_drops, near_drops) = (count(&exact)?, count(&near)?);
    // Upper-cased copies are exact duplicates after normalisation; appended sentences are near ones.
    ensure!((140..=150).contains(&exact_drops), "exact: {exact_drops}");
    ensure!(
        near_drops > exact_drops + 50,
        "near finds the edited copies too: {near_drops}"
    );
    Ok(())
}

/// A domain classifier trained from SQL over real text (PostgreSQL manual vs fortunes and Debian
/// docs), used from SQL with `classify`, next to `token_count` with the real Qwen3 tokenizer.
#[test]
fn classifier_and_token_count_from_sql() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let corpus = test_data().join("corpus");
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw)?;
    for (file, n) in [
        ("en/postgresql-doc-15.jsonl", 400),
        ("en/fortunes.jsonl", 600),
        ("en/debian-reference-en.jsonl", 200),
    ] {
        let text: String = std::fs::read_to_string(corpus.join(file))?
            .lines()
            .take(n)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(raw.join(Path::new(file).file_name().unwrap()), text)?;
    }
    let docs = dir.path().join("docs");
    crate::common::ingest(&raw, &docs)?;
    let config = dir.path().join("sources.toml");
    let write_config = |classifier: bool| -> Result<()> {
        let mut text = format!(
            "[sources.docs]\nurl = \"{}/\"\n[tokenizers]\nqwen3 = \"{}\"\n",
            docs.display(),
            test_data()
                .join("tokenizers/qwen3/tokenizer.json")
                .display()
        );
        if classifier {
            text.push_str("[classifiers]\npostgres = \"postgres.bin\"\n");
        }
        Ok(std::fs::write(&config, text)?)
    };
    write_config(false)?;
    let model = dir.path().join("postgres.bin");
    let train = dapt(&[
        "classify",
        "train",
        "--config",
        config.to_str().unwrap(),
        "--positive",
        "SELECT text FROM docs WHERE source = 'postgresql-doc-15'",
        "--negative",
        "SELECT text FROM docs WHERE source <> 'postgresql-doc-15'",
        "--out",
        model.to_str().unwrap(),
    ]);
    ensure!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let report = String::from_utf8(train.stdout)?;
    let heldout = report
        .lines()
        .find(|l| l.starts_with("held-out"))
        .unwrap_or_default();
    let figure = |name: &str| -> f64 {
        heldout
            .split(&format!("{name} "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c == ',' || c.is_whitespace()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    ensure!(
        figure("AUC") > 0.97 && figure("accuracy") > 0.95,
        "{report}"
    );
    println!("{report}");

    write_config(true)?;
    let sql = "SELECT source, avg(classify(text, 'postgres')) AS score, \
               sum(token_count(text, 'qwen3')) AS tokens, sum(octet_length(text)) AS bytes \
               FROM docs GROUP BY source ORDER BY score DESC";
    let out = dapt(&[
        "sql",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "csv",
        "-e",
        sql,
    ]);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout)?;
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    ensure!(
        rows[0][0] == "postgresql-doc-15",
        "the domain scores highest: {csv}"
    );
    for row in &rows {
        let (tokens, bytes): (f64, f64) = (row[2].parse()?, row[3].parse()?);
        let bytes_per_token = bytes / tokens;
        ensure!(
            (2.5..6.0).contains(&bytes_per_token),
            "English bytes per Qwen3 token: {csv}"
        );
    }
    let missing = dapt(&[
        "sql",
        "--config",
        config.to_str().unwrap(),
        "-e",
        "SELECT classify(text, 'nope') FROM docs",
    ]);
    ensure!(String::from_utf8_lossy(&missing.stderr).contains("no classifier \"nope\""));
    Ok(())
}

/// Sources a user writes first (#18): a directory and a glob of JSON-lines files, a relative path
/// with `..` (resolved against the working directory), and file paths as tables in the query itself.
#[test]
fn json_lines_directories_globs_relative_paths_and_file_tables() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("work/data");
    std::fs::create_dir_all(&data)?;
    let fortunes: Vec<String> = std::fs::read_to_string(demo_data().join("fortunes-ru.jsonl"))?
        .lines()
        .take(30)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
        .collect();
    for (part, chunk) in fortunes.chunks(10).enumerate() {
        let lines: String = chunk
            .iter()
            .enumerate()
            .map(|(i, text)| format!("{{\"id\": \"{part}-{i}\", \"text\": {text}}}\n"))
            .collect();
        std::fs::write(data.join(format!("part-{part}.jsonl")), lines)?;
    }
    let cwd = dir.path().join("work/queries");
    std::fs::create_dir_all(&cwd)?;
    std::fs::write(
        cwd.join("sources.toml"),
        "[sources.by_dir]\nurl = \"../data/\"\n[sources.by_glob]\nurl = \"../data/part-*.jsonl\"\n\
         [sources.one]\nurl = \"../queries/../data/part-1.jsonl\"\n",
    )?;
    let query = |sql: &str, config: bool| -> Result<String> {
        let mut args = vec!["sql", "-e", sql, "--format", "csv"];
        if config {
            args.extend(["--config", "sources.toml"]);
        }
        let out = crate::common::dapt_command()
            .args(&args)
            .env("DAPT_LOG", "warn")
            .current_dir(&cwd)
            .output()?;
        ensure!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let counts = query(
        "SELECT (SELECT count(*) FROM by_dir) AS d, (SELECT count(*) FROM by_glob) AS g, \
         (SELECT count(*) FROM one) AS o",
        true,
    )?;
    ensure!(counts.lines().nth(1) == Some("30,30,10"), "{counts}");
    let first = query(
        "SELECT text FROM '../data/part-0.jsonl' WHERE id = '0-0'",
        false,
    )?;
    let expected: String = serde_json::from_str(&fortunes[0])?;
    ensure!(
        first.contains(expected.lines().next().unwrap_or_default()),
        "{first}"
    );
    let whole = query("SELECT count(*) AS n FROM '../data/'", false)?;
    ensure!(whole.lines().nth(1) == Some("30"), "{whole}");
    Ok(())
}

/// `dapt sql --config SOURCES -f configs/generate/NAME.sql`: the result's rows as JSON.
fn recipe_rows(dir: &Path, sources: &str, name: &str) -> Result<Vec<serde_json::Value>> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, sources)?;
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/generate")
        .join(format!("{name}.sql"));
    let output = dapt(&[
        "sql",
        "--config",
        config.to_str().unwrap(),
        "-f",
        file.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    ensure!(
        output.status.success(),
        "{name}.sql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows: Vec<serde_json::Value> = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    rows.sort_by_key(|r| r["id"].as_str().unwrap_or_default().to_string());
    Ok(rows)
}

/// Share of the rows at `url` (a quoted path) that lang_id does not read as Russian.
fn recipe_share(dir: &Path, url: &str) -> Result<f64> {
    let config = dir.join("share.toml");
    std::fs::write(&config, format!("[sources.rows]\nurl = {url}\n"))?;
    let output = dapt(&[
        "sql",
        "--config",
        config.to_str().unwrap(),
        "-e",
        "SELECT avg(CASE WHEN lang_id(text) IS DISTINCT FROM 'ru' THEN 1.0 ELSE 0.0 END) AS share FROM rows",
        "--format",
        "jsonl",
    ]);
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    row["share"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("{row}"))
}

fn jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<String> {
    std::fs::write(
        path,
        rows.iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>(),
    )?;
    Ok(format!("{path:?}"))
}

/// The guards of the translate and rewrite recipes (`configs/generate/`), over `dapt generate`-shaped
/// tables: a translation is kept when it finished, reads as Russian and is 0.5–2× the source's length;
/// rows flagged as not Russian are replaced by a Russian rewrite or dropped, and the share of
/// non-Russian rows falls from before to after.
#[test]
fn translate_and_rewrite_recipes_keep_what_passes_their_guards() -> Result<()> {
    use serde_json::json;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let english = "Write a short poem about the sea and the wind at night.";
    let source = jsonl(
        &d.join("source.jsonl"),
        &[
            json!({"id": "a", "text": english}),
            json!({"id": "b", "text": english}),
            json!({"id": "c", "text": english}),
            json!({"id": "d", "text": english}),
            json!({"id": "e", "text": english}),
        ],
    )?;
    let russian = "Напиши короткое стихотворение о море и ночном ветре.";
    let answer = |id: &str, response: &str, finish: &str| {
        json!({"id": id, "prompt": format!("Translate … {english}"), "response": response,
               "finish_reason": finish, "prompt_tokens": 20, "completion_tokens": 12})
    };
    let translated = jsonl(
        &d.join("translated.jsonl"),
        &[
            answer("a", russian, "stop"),
            answer("b", english, "stop"),
            answer("c", "Напиши.", "stop"),
            answer("d", &format!("{russian} {russian} {russian}"), "stop"),
            answer("e", russian, "length"),
        ],
    )?;
    let kept = recipe_rows(
        d,
        &format!("[sources.source]\nurl = {source}\n[sources.translated]\nurl = {translated}\n"),
        "translate",
    )?;
    ensure!(
        kept == vec![json!({"id": "a", "text": russian, "source_text": english})],
        "only the finished Russian translation of a plausible length: {kept:?}"
    );

    let component = jsonl(
        &d.join("component.jsonl"),
        &[
            json!({"id": "r1", "text": "Москва — столица России, крупнейший город страны."}),
            json!({"id": "r2", "text": "Санкт-Петербург стоит на Неве и был столицей двести лет."}),
            json!({"id": "x1", "text": "This paragraph slipped into the Russian component in English."}),
            json!({"id": "x2", "text": "Another English paragraph that the attribution pointed at."}),
        ],
    )?;
    let flagged = recipe_rows(
        d,
        &format!("[sources.component]\nurl = {component}\n"),
        "rewrite-flagged",
    )?;
    let ids: Vec<&str> = flagged.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ensure!(ids == ["x1", "x2"], "{flagged:?}");
    let rewritten = jsonl(
        &d.join("rewritten.jsonl"),
        &[
            json!({"id": "x1", "prompt": "…", "response": "Этот абзац попал в русский компонент на английском языке.",
                   "finish_reason": "stop"}),
            json!({"id": "x2", "prompt": "…", "response": "Another English paragraph, unchanged by the model.",
                   "finish_reason": "stop"}),
        ],
    )?;
    let after = recipe_rows(
        d,
        &format!(
            "[sources.component]\nurl = {component}\n[sources.rewritten]\nurl = {rewritten}\n"
        ),
        "rewrite",
    )?;
    let ids: Vec<&str> = after.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ensure!(ids == ["r1", "r2", "x1"], "{after:?}");
    ensure!(
        after[2]["text"] == "Этот абзац попал в русский компонент на английском языке.",
        "{after:?}"
    );
    ensure!(after[0]["text"] == "Москва — столица России, крупнейший город страны.");
    // The component's share of rows that are not Russian: 2 of 4 before, none after.
    let share = |url: &str| -> Result<f64> {
        let rows = recipe_share(d, url)?;
        Ok(rows)
    };
    let after_url = jsonl(&d.join("after.jsonl"), &after)?;
    ensure!(share(&component)? == 0.5);
    ensure!(share(&after_url)? == 0.0);
    Ok(())
}
