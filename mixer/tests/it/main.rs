//! Integration tests of dapt-mixer's dedup on real documents from the test corpus with planted
//! near-duplicates at measured Jaccard similarities.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use dapt_mixer::{near_duplicates, Duplicate, NearOptions};
use dapt_sql::functions::minhash::MinHasher;

/// The test corpus (built by `scripts/test-data`; a missing folder fails naming that command).
fn corpus() -> PathBuf {
    dapt_test_data::corpus("")
}

/// Real documents of 150+ words from several sources, exact duplicates within the corpus removed.
fn documents(n: usize) -> Vec<String> {
    let files = [
        "ru/debian-handbook-ru.jsonl",
        "en/gnu-standards.jsonl",
        "ru/gimp-help-ru.jsonl",
        "en/python3.11-doc.jsonl",
        "ru/kicad-doc-ru.jsonl",
        "en/postgresql-doc-15.jsonl",
        "code/rust-src.jsonl",
        "math/maxima-doc.jsonl",
        "en/debian-handbook-en.jsonl",
    ];
    let quota = n.div_ceil(files.len());
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(corpus().join(file)).unwrap();
        let mut taken = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap();
            let words = t.split_whitespace().count();
            if (150..3000).contains(&words) && seen.insert(t.to_string()) {
                out.push(t.to_string());
                taken += 1;
                if taken == quota {
                    break;
                }
            }
        }
    }
    out.truncate(n);
    out
}

fn jaccard(hasher: &MinHasher, a: &str, b: &str) -> f64 {
    let (x, y) = (hasher.shingles(a), hasher.shingles(b));
    let common = x.iter().filter(|v| y.binary_search(v).is_ok()).count();
    common as f64 / (x.len() + y.len() - common) as f64
}

/// A copy of `text` with words replaced at pseudo-random positions, as many as make its Jaccard
/// similarity to `text` the closest to `target` from above (`at_least`) or from below; returns the
/// copy and its similarity.
fn edit_to(
    hasher: &MinHasher,
    text: &str,
    target: f64,
    at_least: bool,
    seed: u64,
) -> (String, f64) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut positions: Vec<usize> = (0..words.len()).collect();
    let mut state = seed;
    for i in (1..positions.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        positions.swap(i, (state >> 33) as usize % (i + 1));
    }
    let copy = |m: usize| {
        let mut edited: Vec<String> = words.iter().map(std::string::ToString::to_string).collect();
        for (step, &p) in positions.iter().take(m).enumerate() {
            edited[p] = format!("правка{seed}x{step}");
        }
        let edited = edited.join(" ");
        let j = jaccard(hasher, text, &edited);
        (edited, j)
    };
    // Similarity falls as more words are replaced: find the boundary by bisection.
    let (mut low, mut high) = (0, words.len());
    while low < high {
        let middle = (low + high).div_ceil(2);
        if copy(middle).1 >= target {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    if at_least {
        copy(low)
    } else {
        copy((low + 1).min(words.len()))
    }
}

fn batch(rows: &[(String, String)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )
    .unwrap()
}

fn run(rows: &[(String, String)], threads: usize, options: &NearOptions) -> Vec<Duplicate> {
    let batches: Vec<Result<RecordBatch, String>> = rows.chunks(97).map(|c| Ok(batch(c))).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(near_duplicates(
                futures::stream::iter(batches),
                "id",
                "text",
                options,
            ))
            .unwrap()
    })
}

#[test]
fn planted_near_duplicates_are_found_precisely_and_deterministically() {
    let options = NearOptions::default();
    let hasher = MinHasher::new(options.k, 1, options.seed);
    // Base documents are mutually dissimilar (estimated Jaccard < 0.3): the corpus has near duplicates
    // of its own (e.g. source files sharing boilerplate), which would blur what was planted.
    let signer = MinHasher::new(options.k, 128, options.seed);
    let mut docs: Vec<String> = Vec::new();
    let mut signatures: Vec<Vec<u64>> = Vec::new();
    for doc in documents(400) {
        let signature = signer.signature(&doc);
        if signatures
            .iter()
            .all(|s| dapt_sql::functions::minhash::estimated_jaccard(s, &signature) < 0.3)
        {
            docs.push(doc);
            signatures.push(signature);
        }
    }
    assert!(docs.len() >= 250, "{} documents", docs.len());
    let mut rows: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("doc-{i:04}"), t.clone()))
        .collect();
    // Planted copies: near duplicates at 0.80–1.0, and distractors at 0.5 or below.
    let mut planted = BTreeMap::new();
    let targets = [1.0, 0.95, 0.9, 0.85, 0.8, 0.5, 0.4];
    for (i, doc) in docs.iter().enumerate().take(210) {
        let target = targets[i % targets.len()];
        let (copy, j) = edit_to(&hasher, doc, target, target >= 0.8, i as u64 + 1);
        let copy_id = format!("copy-{i:04}");
        // Pairs are kept in key order, as the predicted ones are.
        planted.insert((copy_id.clone(), format!("doc-{i:04}")), j);
        rows.push((copy_id, copy));
    }
    let found = run(&rows, 2, &options);

    // Pairs in the same cluster.
    let mut clusters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in &found {
        clusters.entry(&d.cluster_id).or_default().push(&d.id);
    }
    let mut predicted = BTreeSet::new();
    for members in clusters.values() {
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                predicted.insert((a.min(b).to_string(), a.max(b).to_string()));
            }
        }
    }
    let text: BTreeMap<&str, &str> = rows
        .iter()
        .map(|(id, t)| (id.as_str(), t.as_str()))
        .collect();
    let positives: Vec<_> = planted.iter().filter(|(_, j)| **j >= 0.8).collect();
    let recalled = positives
        .iter()
        .filter(|(pair, _)| predicted.contains(*pair))
        .count();
    let recall = recalled as f64 / positives.len() as f64;
    let correct = predicted
        .iter()
        .filter(|(a, b)| jaccard(&hasher, text[a.as_str()], text[b.as_str()]) >= 0.7)
        .count();
    let precision = correct as f64 / predicted.len().max(1) as f64;
    let distractors_found = planted
        .iter()
        .filter(|(pair, j)| **j <= 0.5 && predicted.contains(*pair))
        .count();
    println!(
        "near dedup: {} documents, {} planted pairs at J >= 0.8, recall {recall:.3}, precision {precision:.3} \
         over {} predicted pairs, {distractors_found} of {} distractors (J <= 0.5) clustered",
        rows.len(),
        positives.len(),
        predicted.len(),
        planted.values().filter(|j| **j <= 0.5).count()
    );
    assert!(positives.len() >= 140);
    assert!(recall >= 0.95, "recall {recall}");
    assert!(precision >= 0.95, "precision {precision}");
    assert_eq!(distractors_found, 0);
    for members in clusters.values() {
        let kept: Vec<_> = found
            .iter()
            .filter(|d| members.contains(&d.id.as_str()) && d.kept)
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].id,
            *members.iter().min().unwrap(),
            "the smallest key is kept"
        );
    }

    // The same rows in another order, on one thread: the same result.
    let mut shuffled = rows.clone();
    shuffled.reverse();
    shuffled.rotate_left(123);
    assert_eq!(run(&shuffled, 1, &options), found);
}

/// Components that several stages share are tokenised once per run: the demo pipeline's stage 2
/// repeats three of stage 1's components, so only its new QA component is counted again.
#[tokio::test]
async fn shared_components_are_tokenised_once_per_run() {
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/mixes");
    let pipeline = dapt_mixer::Pipeline::load(&configs.join("demo-pipeline.toml")).unwrap();
    let mut cache = dapt_mixer::InventoryCache::default();
    let plans = dapt_mixer::plan_pipeline_with(&pipeline, &mut cache)
        .await
        .unwrap();
    let documents = |stage: usize, names: &[&str]| -> u64 {
        plans[stage]
            .1
            .components
            .iter()
            .filter(|(c, _, _)| names.contains(&c.name.as_str()))
            .map(|(_, _, p)| p.available_documents)
            .sum()
    };
    let stage1 = documents(0, &["ru_2001", "ru_2002", "en_computers", "en_art"]);
    let qa = documents(1, &["qa"]);
    assert!(stage1 > 0 && qa > 0);
    assert_eq!(cache.documents_tokenised, stage1 + qa);
}
