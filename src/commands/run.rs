//! `dapt run CONFIG`: the whole pipeline on one config. Stages meet through files in the output
//! directory, each with a manifest bound to the hash of the settings that produced it:
//!
//! ```text
//! OUT/documents/        ingest: one Document Parquet shard per input file
//! OUT/selected/         the SQL query's result
//! OUT/tokenizer/        tokenizer.json (given or trained on the training documents)
//! OUT/packed/train/     packed rows for training
//! OUT/packed/heldout/   packed rows of the held-out documents
//! OUT/model/            config.json + model.safetensors (HF layout)
//! OUT/base/model/       the model before training (with tokenizer.json)
//! OUT/train_log.jsonl   per-step metrics
//! OUT/eval/             eval.json of the base and the adapted model
//! OUT/report.json       held-out perplexity before and after training
//! OUT/report.md         base vs adapted side by side (perplexity, bits-per-byte, lang-swap), plots/
//! ```
//!
//! A rerun reuses finished data stages and publishes nothing twice.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use clap::Args;
use dapt_core::hash::sub_seed;
use dapt_core::{parquet_io, Location, OutputDir, PackedRow};
use dapt_packer::{pack_documents, read_packed, split_heldout, TokenizerFile};
use dapt_trainer::tch::{self, nn, Device};
use dapt_trainer::{CausalLm, InMemoryRows, Trainer};
use serde_json::json;

use crate::config::{RunSettings, TokenizerSource};
use crate::progress;

/// Arguments of `dapt run`.
#[derive(Args)]
pub struct RunArgs {
    /// Pipeline config (TOML), e.g. configs/demo.toml.
    config: PathBuf,
    /// Output directory; default `out/<config name>`.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = RunSettings::load(&args.config)?;
    let out = match args.out {
        Some(out) => out,
        None => {
            let stem = args.config.file_stem().unwrap_or_default();
            PathBuf::from("out").join(stem)
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    tracing::info!(config = %args.config.display(), out = %out.display(), seed = settings.seed, "run");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    // 1. Ingest.
    let ingest_hash = RunSettings::hash_of(&settings.ingest);
    let documents = location(&out.join("documents"))?;
    super::ingest::run_ingest(
        &runtime,
        &settings.ingest,
        documents.clone(),
        &ingest_hash,
        dapt_ingest::Job::ALL,
    )?;

    // 2. SQL.
    let select_hash = RunSettings::hash_of(&(&ingest_hash, &settings.query));
    let (ids, texts) = runtime.block_on(select(&settings.query, &documents, &out, &select_hash))?;
    tracing::info!(documents = ids.len(), "SQL selected documents");

    // The held-out split is a function of (seed, document id); packing orders documents the same way.
    let heldout = split_heldout(settings.seed, settings.pack.heldout_fraction, &ids);
    let (mut train_ids, mut train_texts, mut heldout_ids, mut heldout_texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, is_heldout) in heldout.iter().enumerate() {
        if *is_heldout {
            heldout_ids.push(ids[i].clone());
            heldout_texts.push(texts[i].clone());
        } else {
            train_ids.push(ids[i].clone());
            train_texts.push(texts[i].clone());
        }
    }
    if train_ids.is_empty() || heldout_ids.is_empty() {
        bail!(
            "the split left {} training and {} held-out documents; select more documents or change pack.heldout_fraction",
            train_ids.len(),
            heldout_ids.len()
        );
    }

    // 3. Tokenizer.
    let tokenizer = std::sync::Arc::new(
        tokenizer(&settings, &train_texts, &out.join("tokenizer"))?
            .with_encoder(dapt_packer::EncoderChoice::Auto)?,
    );
    let eos_id = tokenizer.id_of(&settings.pack.eos_token)?;
    let pad_id = tokenizer.id_of(&settings.pack.pad_token)?;
    tracing::info!(vocab = tokenizer.vocab_size(), sha256 = %tokenizer.sha256(), "tokenizer ready");

    // 4. Tokenise + pack.
    let pack_hash = RunSettings::hash_of(&(
        &select_hash,
        tokenizer.sha256(),
        &settings.pack,
        settings.seed,
    ));
    let mut split_rows = Vec::new();
    for (split, split_ids, split_texts) in [
        ("train", &train_ids, &train_texts),
        ("heldout", &heldout_ids, &heldout_texts),
    ] {
        let rows = runtime.block_on(pack_split(
            &tokenizer,
            split_ids,
            split_texts,
            &settings,
            pad_id,
            &out.join("packed").join(split),
            &pack_hash,
        ))?;
        split_rows.push(rows);
    }
    let heldout_rows = split_rows.pop().unwrap_or_default();
    let train_rows = split_rows.pop().unwrap_or_default();

    // 5. Train, with held-out perplexity before and after.
    tch::manual_seed(sub_seed(settings.seed, "model-init", 0) as i64);
    let device = Device::cuda_if_available();
    let config = settings.model_config(tokenizer.vocab_size(), eos_id, pad_id);
    let vs = nn::VarStore::new(device);
    let model = CausalLm::new(&vs.root(), &config)?;
    let parameters: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    tracing::info!(parameters, ?device, "model initialised");
    let before = dapt_eval::perplexity(&model, &heldout_rows, settings.eval.batch_size, device)?;
    save_with_tokenizer(&model, &vs, &tokenizer, &out.join("base").join("model"))?;
    let base_eval = evaluate(
        &model,
        &tokenizer,
        &heldout_rows,
        &heldout_texts,
        "base",
        settings.eval.batch_size,
        eos_id,
        device,
    )?;
    tracing::info!(
        perplexity = before.perplexity,
        tokens = before.tokens,
        "held-out perplexity before training"
    );

    let log_path = out.join("train_log.jsonl");
    let bar = progress::bar(settings.train.steps as u64, "train", "steps");
    let mut data = InMemoryRows::new(train_rows, settings.seed)?;
    let trainer = Trainer {
        log_path: Some(log_path),
        ..Trainer::new(&model, &vs, &settings.train, settings.seed)
    };
    let steps = settings.train.steps;
    let outcome = trainer.run(&mut data, false, |m| {
        progress::train_step(&bar, "train", m, steps)
    })?;
    let history = outcome.history;
    bar.finish_and_clear();
    save_with_tokenizer(&model, &vs, &tokenizer, &out.join("model"))?;
    let after = dapt_eval::perplexity(&model, &heldout_rows, settings.eval.batch_size, device)?;
    let adapted_eval = evaluate(
        &model,
        &tokenizer,
        &heldout_rows,
        &heldout_texts,
        "adapted",
        settings.eval.batch_size,
        eos_id,
        device,
    )?;
    let eval_dir = out.join("eval");
    std::fs::create_dir_all(&eval_dir)?;
    for results in [&base_eval, &adapted_eval] {
        std::fs::write(
            eval_dir.join(format!("{}.json", results.label)),
            serde_json::to_string_pretty(results)? + "\n",
        )?;
    }
    let curve = dapt_eval::LossCurve {
        name: "train".into(),
        points: history.iter().map(|m| (m.step as f64, m.loss)).collect(),
    };
    let comparison = dapt_eval::build_report(
        &[base_eval, adapted_eval],
        &[curve],
        &dapt_eval::ReportOptions::default(),
        false,
    );
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots)?;
    for (name, svg) in &comparison.charts {
        std::fs::write(plots.join(format!("{name}.svg")), svg)?;
    }
    let comparison_path = out.join("report.md");
    std::fs::write(&comparison_path, &comparison.document)
        .with_context(|| format!("cannot write {}", comparison_path.display()))?;

    let report = json!({
        "config": args.config.display().to_string(),
        "seed": settings.seed,
        "documents": { "train": train_ids.len(), "heldout": heldout_ids.len() },
        "tokenizer": { "sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size() },
        "model": { "parameters": parameters },
        "train": {
            "steps": history.len(),
            "first_loss": history.first().map(|m| m.loss),
            "last_loss": history.last().map(|m| m.loss),
        },
        "heldout": { "before": before, "after": after },
        "comparison": comparison_path.display().to_string(),
    });
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!(
        "held-out perplexity: before {:.2}, after {:.2} ({} tokens, {} documents); report: {}; base vs adapted: {}",
        before.perplexity,
        after.perplexity,
        after.tokens,
        heldout_ids.len(),
        report_path.display(),
        comparison_path.display()
    );
    Ok(())
}

/// Writes the model with its tokenizer: a complete HF model directory.
fn save_with_tokenizer(
    model: &CausalLm,
    vs: &nn::VarStore,
    tokenizer: &TokenizerFile,
    dir: &Path,
) -> anyhow::Result<()> {
    model.save(vs, dir)?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.json())?;
    Ok(())
}

/// The demo's evaluation of one checkpoint: perplexity on the held-out rows, bits-per-byte of the
/// held-out documents by language, and the lang-swap rate of greedy continuations of Russian openings.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    model: &CausalLm,
    tokenizer: &TokenizerFile,
    heldout_rows: &[PackedRow],
    heldout_texts: &[String],
    label: &str,
    batch_size: usize,
    eos_id: u32,
    device: Device,
) -> anyhow::Result<dapt_eval::EvalResults> {
    let mut results = dapt_eval::EvalResults {
        label: label.into(),
        model: label.into(),
        tokenizer_sha256: tokenizer.sha256().to_string(),
        ..Default::default()
    };
    results.perplexity.insert(
        "heldout".into(),
        dapt_eval::perplexity(model, heldout_rows, batch_size, device)?,
    );
    let scorer = dapt_eval::Scorer {
        model,
        device,
        max_length: model.config().max_position_embeddings.max(2) as usize,
        batch_size,
    };
    let mut by_language: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for text in heldout_texts {
        if let Some(language) = dapt_core::lang::lang_id(text) {
            by_language.entry(language).or_default().push(text.clone());
        }
    }
    for (language, texts) in &by_language {
        if texts.len() >= 3 {
            let score = dapt_eval::score_texts(&scorer, tokenizer, texts, eos_id)?;
            results.bits_per_byte.insert((*language).to_string(), score);
        }
    }
    // Openings of Russian held-out documents: does the model go on in Russian?
    let prompts: Vec<String> = by_language
        .get("ru")
        .map(|texts| {
            texts
                .iter()
                .take(8)
                .map(|t| t.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
                .collect()
        })
        .unwrap_or_default();
    if !prompts.is_empty() {
        let options = dapt_eval::GenerateOptions {
            max_tokens: 24,
            ..Default::default()
        };
        let mut outputs = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(&format!("prompt {i}"), prompt)?;
            let generation = dapt_eval::generate(model, tokenizer, &ids, &options, device)?;
            outputs.push(dapt_eval::GenerationRecord {
                prompt: prompt.clone(),
                output: generation.text,
                finish_reason: generation.finish_reason,
            });
        }
        let pairs: Vec<(String, String)> = outputs
            .iter()
            .map(|o| (o.prompt.clone(), o.output.clone()))
            .collect();
        let lang_swap = dapt_eval::lang_swap(&pairs, "ru", 12);
        results.generation = Some(dapt_eval::GenerationResults {
            options,
            lang_swap,
            outputs,
        });
    }
    Ok(results)
}

fn location(path: &Path) -> anyhow::Result<Location> {
    Ok(Location::parse(&path.display().to_string())?)
}

/// Runs the query over the ingested documents; materialises its result in `OUT/selected/` (reused by
/// a rerun with the same inputs and query); returns ids and texts.
async fn select(
    query: &str,
    documents: &Location,
    out: &Path,
    hash: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut output = OutputDir::open(location(&out.join("selected"))?, "select", hash).await?;
    let name = "part-00000.parquet";
    if !output.is_published(name) {
        let session = dapt_sql::SqlSession::new();
        session.register_parquet("documents", documents).await?;
        // Row order of a query depends on partition timing; the stage's output must not.
        let ordered = format!(
            "SELECT * FROM ({}) AS selection ORDER BY id, text",
            query.trim().trim_end_matches(';')
        );
        let batches = session.query_collect(&ordered).await?;
        let Some(first) = batches.first() else {
            bail!("the query selected no documents: {query}");
        };
        let schema = first.schema();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut metadata = BTreeMap::new();
        metadata.insert("dapt.query".to_string(), query.to_string());
        let bytes = parquet_io::encode(schema, &batches, &metadata, "selected documents")?;
        output.publish(name, bytes, rows as u64).await?;
        output.finish(json!({ "documents": rows })).await?;
    }
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for (shard, bytes) in output.read_shards().await? {
        let (batches, _) = parquet_io::decode(bytes, &shard)?;
        for batch in batches {
            let column = |name: &str| -> anyhow::Result<_> {
                let column = batch
                    .column_by_name(name)
                    .with_context(|| format!("the query must return a {name:?} column: {query}"))?;
                let column = arrow::compute::cast(column, &DataType::Utf8)?;
                Ok(column)
            };
            let (id, text) = (column("id")?, column("text")?);
            let (id, text) = (id.as_string::<i32>(), text.as_string::<i32>());
            for i in 0..batch.num_rows() {
                if id.is_null(i) || text.is_null(i) {
                    bail!("row {i} of the query result has a null id or text");
                }
                ids.push(id.value(i).to_string());
                texts.push(text.value(i).to_string());
            }
        }
    }
    Ok((ids, texts))
}

/// Loads the configured tokenizer or trains one on the training texts; writes it to `dir`.
fn tokenizer(
    settings: &RunSettings,
    train_texts: &[String],
    dir: &Path,
) -> anyhow::Result<TokenizerFile> {
    std::fs::create_dir_all(dir)?;
    let tokenizer = match &settings.tokenizer {
        TokenizerSource::File(path) => TokenizerFile::load(path)?,
        TokenizerSource::Train(options) => {
            // A trained tokenizer is reused when options and training texts are unchanged.
            let path = dir.join("tokenizer.json");
            let hash_path = dir.join("trained_from.sha256");
            let hash = RunSettings::hash_of(&(options, train_texts));
            if std::fs::read_to_string(&hash_path).is_ok_and(|h| h.trim() == hash) {
                TokenizerFile::load(&path)?
            } else {
                tracing::info!(
                    vocab_size = options.vocab_size,
                    documents = train_texts.len(),
                    "training a byte-level BPE tokenizer"
                );
                let trained = dapt_packer::train_bpe(train_texts, options)?;
                std::fs::write(&path, trained.json())?;
                std::fs::write(&hash_path, &hash)?;
                return Ok(trained);
            }
        }
    };
    std::fs::write(dir.join("tokenizer.json"), tokenizer.json())?;
    Ok(tokenizer)
}

/// Tokenises and packs one split into `dir` (reusing a finished output), returning its rows.
async fn pack_split(
    tokenizer: &std::sync::Arc<TokenizerFile>,
    ids: &[String],
    texts: &[String],
    settings: &RunSettings,
    pad_id: u32,
    dir: &Path,
    hash: &str,
) -> anyhow::Result<Vec<PackedRow>> {
    let mut output = OutputDir::open(location(dir)?, "pack", hash).await?;
    pack_documents(
        &mut output,
        tokenizer.clone(),
        ids,
        texts,
        &[],
        &settings.pack,
        settings.seed,
        hash,
    )
    .await?;
    Ok(read_packed(&output, settings.pack.seq_len, pad_id as i32).await?)
}
