//! The demo pipeline (`dapt run CONFIG`): ingest → SQL → tokenizer → tokenise + pack → train a proxy
//! → evaluate base and adapted side by side. Stages meet through files in the output directory, each
//! bound to the identity (content hash) of the settings and inputs that produced it:
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
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use dapt_core::hash::sub_seed;
use dapt_core::{parquet_io, Location, OutputDir};
use dapt_eval::{EvalPlan, Grouping, PromptSet, TextSet};
use dapt_ingest::{IngestOptions, IngestSettings};
use dapt_packer::{
    pack_documents, split_heldout, BpeTrainOptions, PackOptions, PackSettings, TokenizerFile,
};
use dapt_trainer::tch::{self, nn, Device};
use dapt_trainer::{
    CausalLm, InMemoryRows, ProxyDefaults, ProxyModelOptions, TrainOptions, TrainSettings, Trainer,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{io_error, setting, write_json};
use crate::identity::identity;
use crate::{Error, Result};

/// A pipeline run, as written in TOML.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// The run's one seed; every random decision derives from it. Default 0.
    pub seed: u64,
    /// `[ingest]`: the input shards and how to read them (see `dapt ingest`).
    pub ingest: IngestOptions,
    /// `[sql]`: the query that selects the training documents.
    pub sql: SqlOptions,
    /// `[tokenizer]`: a given tokenizer or one trained on the selection. Default: trained.
    pub tokenizer: TokenizerOptions,
    /// `[pack]`: sequence length, held-out share, EOS and pad tokens.
    pub pack: PackOptions,
    /// `[model]`: the proxy model trained from scratch (its vocabulary is the tokenizer's).
    pub model: ProxyModelOptions,
    /// `[train]`: steps, batch, learning rate and schedule.
    pub train: TrainOptions,
    /// `[eval]`.
    pub eval: EvalOptions,
}

/// `[sql]`: the query that selects training documents from table `documents`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlOptions {
    /// A read-only query over `documents` (id, text, source, url, meta) returning at least `id` and
    /// `text`. Default `SELECT id, text, source FROM documents`.
    pub query: String,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            query: "SELECT id, text, source FROM documents".into(),
        }
    }
}

/// `[tokenizer]`: an existing `tokenizer.json` (`path`) or one trained on the selected documents
/// (`train`). Default: `train` with its defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerOptions {
    /// Path of an HF `tokenizer.json`, relative to the config file. Default none.
    pub path: Option<PathBuf>,
    /// Train a byte-level BPE on the training documents instead. Default none.
    pub train: Option<BpeTrainOptions>,
}

/// `[eval]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// Rows per evaluation batch (results do not depend on it). Default 16.
    pub batch_size: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 16 }
    }
}

/// Where the run's tokenizer comes from.
#[derive(Clone, Debug, Serialize)]
pub enum TokenizerSource {
    /// An existing `tokenizer.json`.
    File(PathBuf),
    /// A byte-level BPE trained on the run's training documents.
    Train(BpeTrainOptions),
}

/// Validated settings of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunSettings {
    seed: u64,
    ingest: IngestSettings,
    query: String,
    tokenizer: TokenizerSource,
    pack: PackSettings,
    model: ProxyModelOptions,
    train: TrainSettings,
    eval: EvalOptions,
    /// The Ballista cluster (`df://HOST:PORT`) the selection query runs on, or none (here); not
    /// part of any identity: the rows are the same.
    #[serde(skip)]
    pub cluster: Option<String>,
}

impl RunSettings {
    /// Reads and validates a config file; relative input paths resolve against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let options: RunOptions = toml::from_str(&text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_options(options, base)
    }

    /// Validates options; relative input paths resolve against `base`.
    pub fn from_options(mut options: RunOptions, base: &Path) -> Result<Self> {
        options.ingest.inputs = options
            .ingest
            .inputs
            .iter()
            .map(|input| resolve_input(base, input))
            .collect();
        let ingest = IngestSettings::try_from(options.ingest)?;
        if options.sql.query.trim().is_empty() {
            return Err(setting("sql.query", "must not be empty"));
        }
        let tokenizer = match (options.tokenizer.path, options.tokenizer.train) {
            (Some(path), None) => TokenizerSource::File(base.join(path)),
            (None, Some(train)) => TokenizerSource::Train(train),
            (None, None) => TokenizerSource::Train(BpeTrainOptions::default()),
            (Some(_), Some(_)) => {
                return Err(setting(
                    "tokenizer",
                    "give either `path` or `train`, not both",
                ))
            }
        };
        let pack = PackSettings::try_from(options.pack)?;
        if pack.heldout_fraction <= 0.0 {
            return Err(setting(
                "pack.heldout_fraction",
                "must be positive, the run reports held-out perplexity",
            ));
        }
        let train = TrainSettings::try_from(options.train)?;
        options.model.to_config(ProxyDefaults {
            vocab_size: Some(256),
            ..Default::default()
        })?;
        Ok(Self {
            seed: options.seed,
            ingest,
            query: options.sql.query,
            tokenizer,
            pack,
            model: options.model,
            train,
            eval: options.eval,
            cluster: None,
        })
    }
}

/// What a run did, as written to `OUT/report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Documents trained on.
    pub train_documents: usize,
    /// Documents held out.
    pub heldout_documents: usize,
    /// Held-out perplexity of the untrained model.
    pub perplexity_before: f64,
    /// Held-out perplexity after training.
    pub perplexity_after: f64,
    /// Held-out target tokens.
    pub heldout_tokens: i64,
    /// `OUT/report.json`.
    pub report_json: PathBuf,
    /// `OUT/report.md`: base against adapted.
    pub comparison: PathBuf,
}

/// A relative local input path is taken relative to the config file; URLs are left alone.
fn resolve_input(base: &Path, input: &str) -> String {
    if input.contains("://") || Path::new(input).is_absolute() {
        input.to_string()
    } else {
        base.join(input).display().to_string()
    }
}

fn location(path: &Path) -> Result<Location> {
    Ok(Location::parse(&path.display().to_string())?)
}

/// Runs the whole pipeline of `settings` into `out` (`config` names the config in the report).
pub fn run(settings: &RunSettings, config: &Path, out: &Path) -> Result<RunReport> {
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let out = std::path::absolute(out).map_err(io_error(out))?;
    tracing::info!(config = %config.display(), out = %out.display(), seed = settings.seed, "run");
    let runtime = crate::runtime()?;

    // 1. Ingest.
    let ingest_hash = crate::ingest::ingest_identity(&settings.ingest)?;
    let documents = location(&out.join("documents"))?;
    crate::ingest::run_ingest(
        &runtime,
        &settings.ingest,
        documents.clone(),
        dapt_ingest::Job::ALL,
    )?;

    // 2. SQL.
    let select_hash = identity("the query", &(&ingest_hash, &settings.query))?;
    let (ids, texts) = runtime.block_on(select(
        &settings.query,
        &documents,
        &out,
        &select_hash,
        settings.cluster.as_deref(),
    ))?;
    tracing::info!(documents = ids.len(), "SQL selected documents");

    // The held-out split is a function of (seed, document id); packing orders documents the same way.
    let heldout = split_heldout(settings.seed, settings.pack.heldout_fraction, &ids);
    let (mut train_ids, mut train_texts, mut heldout_ids, mut heldout_texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((id, text), is_heldout) in ids.into_iter().zip(texts).zip(heldout) {
        if is_heldout {
            heldout_ids.push(id);
            heldout_texts.push(text);
        } else {
            train_ids.push(id);
            train_texts.push(text);
        }
    }
    if train_ids.is_empty() || heldout_ids.is_empty() {
        return Err(setting(
            "pack.heldout_fraction",
            format!(
                "the split left {} training and {} held-out documents; select more documents or change it",
                train_ids.len(),
                heldout_ids.len()
            ),
        ));
    }

    // 3. Tokenizer.
    let tokenizer = Arc::new(
        tokenizer(settings, &train_texts, &out.join("tokenizer"))?
            .with_encoder(dapt_packer::EncoderChoice::Auto)?,
    );
    let eos_id = tokenizer.id_of(&settings.pack.eos_token)?;
    let pad_id = tokenizer.id_of(&settings.pack.pad_token)?;
    tracing::info!(vocab = tokenizer.vocab_size(), sha256 = %tokenizer.sha256(), "tokenizer ready");

    // 4. Tokenise + pack.
    let pack_hash = identity(
        "the pack settings",
        &(
            &select_hash,
            tokenizer.sha256(),
            &settings.pack,
            settings.seed,
        ),
    )?;
    // Both splits are packed; the training rows are read back (checked row by row) for the trainer,
    // the held-out ones are read by the evaluation plan.
    let mut train_rows = Vec::new();
    for (split, split_ids, split_texts) in [
        ("train", &train_ids, &train_texts),
        ("heldout", &heldout_ids, &heldout_texts),
    ] {
        let dir = out.join("packed").join(split);
        runtime.block_on(async {
            let mut output = OutputDir::open(location(&dir)?, "pack", &pack_hash).await?;
            pack_documents(
                &mut output,
                tokenizer.clone(),
                split_ids,
                split_texts,
                &[],
                &settings.pack,
                settings.seed,
                &pack_hash,
            )
            .await?;
            if split == "train" {
                train_rows =
                    dapt_packer::read_packed(&output, settings.pack.seq_len, pad_id as i32).await?;
            }
            Ok::<_, Error>(())
        })?;
    }

    // 5. Train, with the base and the adapted model evaluated by one plan.
    tch::manual_seed(sub_seed(settings.seed, "model-init", 0) as i64);
    let device = Device::cuda_if_available();
    let model_config = settings.model.to_config(ProxyDefaults {
        vocab_size: Some(tokenizer.vocab_size() as i64),
        max_position_embeddings: Some(settings.pack.seq_len as i64),
        eos_token_id: Some(i64::from(eos_id)),
        pad_token_id: Some(i64::from(pad_id)),
    })?;
    let vs = nn::VarStore::new(device);
    let model = CausalLm::new(&vs.root(), &model_config)?;
    let parameters: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    tracing::info!(parameters, ?device, "model initialised");
    save_with_tokenizer(&model, &vs, &tokenizer, &out.join("base").join("model"))?;
    let plan = eval_plan(
        &model,
        &location(&out.join("packed").join("heldout"))?,
        &heldout_texts,
        eos_id,
        settings.eval.batch_size,
    );
    let base_eval = EvalPlan {
        label: "base".into(),
        model: "base".into(),
        ..plan.clone()
    }
    .execute(&model, &tokenizer, device, |_, _| {})?;

    let log_path = out.join("train_log.jsonl");
    let bar = crate::progress::bar(settings.train.steps as u64, "train", "steps");
    let mut data = InMemoryRows::new(train_rows, settings.seed)?;
    let trainer = Trainer {
        log_path: Some(log_path),
        ..Trainer::new(&model, &vs, &settings.train, settings.seed)
    };
    let steps = settings.train.steps;
    let outcome = trainer.run(&mut data, false, |m| {
        crate::progress::train_step(&bar, "train", m, steps);
    })?;
    let history = outcome.history;
    bar.finish_and_clear();
    save_with_tokenizer(&model, &vs, &tokenizer, &out.join("model"))?;
    let adapted_eval = EvalPlan {
        label: "adapted".into(),
        model: "adapted".into(),
        ..plan
    }
    .execute(&model, &tokenizer, device, |_, _| {})?;
    let eval_dir = out.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(io_error(&eval_dir))?;
    for results in [&base_eval, &adapted_eval] {
        write_json(&eval_dir.join(format!("{}.json", results.label)), results)?;
    }
    let before = base_eval.perplexity["heldout"].clone();
    let after = adapted_eval.perplexity["heldout"].clone();
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
    std::fs::create_dir_all(&plots).map_err(io_error(&plots))?;
    for (name, svg) in &comparison.charts {
        let path = plots.join(format!("{name}.svg"));
        std::fs::write(&path, svg).map_err(io_error(&path))?;
    }
    let comparison_path = out.join("report.md");
    std::fs::write(&comparison_path, &comparison.document).map_err(io_error(&comparison_path))?;
    let report = json!({
        "config": config.display().to_string(),
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
    write_json(&report_path, &report)?;
    Ok(RunReport {
        train_documents: train_ids.len(),
        heldout_documents: heldout_ids.len(),
        perplexity_before: before.perplexity,
        perplexity_after: after.perplexity,
        heldout_tokens: after.tokens,
        report_json: report_path,
        comparison: comparison_path,
    })
}

/// The demo's evaluation of a checkpoint: perplexity on the held-out rows, bits-per-byte of the
/// held-out documents by language, and the lang-swap rate of greedy continuations of Russian
/// openings.
fn eval_plan(
    model: &CausalLm,
    heldout: &Location,
    heldout_texts: &[String],
    eos_id: u32,
    batch_size: usize,
) -> EvalPlan {
    let mut plan = EvalPlan::new(
        "base",
        "base",
        eos_id,
        model.config().max_position_embeddings.max(2) as usize,
    );
    plan.batch_size = batch_size;
    plan.packed.push(("heldout".into(), heldout.clone()));
    plan.texts.push(TextSet {
        name: "heldout".into(),
        texts: heldout_texts.to_vec(),
        grouping: Grouping::LanguageOnly { min_texts: 3 },
    });
    // Openings of Russian held-out documents: does the model go on in Russian?
    let prompts: Vec<String> = heldout_texts
        .iter()
        .filter(|t| dapt_core::lang::lang_id(t) == Some("ru"))
        .take(8)
        .map(|t| t.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect();
    if !prompts.is_empty() {
        plan.prompts = Some(PromptSet {
            prompts,
            options: dapt_eval::GenerateOptions {
                max_tokens: 24,
                ..Default::default()
            },
            target_language: "ru".into(),
            min_letters: 12,
        });
    }
    plan
}

/// Writes the model with its tokenizer: a complete HF model directory.
fn save_with_tokenizer(
    model: &CausalLm,
    vs: &nn::VarStore,
    tokenizer: &TokenizerFile,
    dir: &Path,
) -> Result<()> {
    model.save(vs, dir)?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.json()).map_err(io_error(&path))
}

/// `batch` with string views as plain strings: a local session reads Parquet strings as views, a
/// Ballista cluster returns plain ones, and the selection's bytes must not depend on where it ran.
fn plain_strings(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::datatypes::{DataType, Field, Schema};
    let arrow_error = |source| Error::Data {
        what: "the query result".into(),
        reason: format!("{source}"),
    };
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    let columns = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(arrow_error)?;
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).map_err(arrow_error)
}

/// Runs the query over the ingested documents (on the Ballista cluster `cluster` if given);
/// materialises its result in `OUT/selected/` (reused by
/// a rerun with the same inputs and query); returns ids and texts.
async fn select(
    query: &str,
    documents: &Location,
    out: &Path,
    hash: &str,
    cluster: Option<&str>,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut output = OutputDir::open(location(&out.join("selected"))?, "select", hash).await?;
    let name = "part-00000.parquet";
    if !output.is_published(name) {
        let session = match cluster {
            Some(url) => dapt_sql::SqlSession::remote(url, &BTreeMap::new()).await?,
            None => dapt_sql::SqlSession::new(),
        };
        session.register_parquet("documents", documents).await?;
        // Row order of a query depends on partition timing; the stage's output must not.
        let ordered = format!(
            "SELECT * FROM ({}) AS selection ORDER BY id, text",
            query.trim().trim_end_matches(';')
        );
        let batches = session
            .query_collect(&ordered)
            .await?
            .iter()
            .map(plain_strings)
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = batches.first() else {
            return Err(setting(
                "sql.query",
                format!("the query selected no documents: {query}"),
            ));
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
            let id = dapt_sql::rows::string_column(&batch, "id", query)?;
            let text = dapt_sql::rows::string_column(&batch, "text", query)?;
            let (id, text) = (id.as_string::<i32>(), text.as_string::<i32>());
            for i in 0..batch.num_rows() {
                if id.is_null(i) || text.is_null(i) {
                    return Err(Error::Data {
                        what: format!("row {i} of the query result"),
                        reason: "a null id or text".into(),
                    });
                }
                ids.push(id.value(i).to_string());
                texts.push(text.value(i).to_string());
            }
        }
    }
    Ok((ids, texts))
}

/// Loads the configured tokenizer or trains one on the training texts; writes it to `dir`.
fn tokenizer(settings: &RunSettings, train_texts: &[String], dir: &Path) -> Result<TokenizerFile> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join("tokenizer.json");
    let tokenizer = match &settings.tokenizer {
        TokenizerSource::File(file) => TokenizerFile::load(file)?,
        TokenizerSource::Train(options) => {
            // A trained tokenizer is reused when options and training texts are unchanged.
            let hash_path = dir.join("trained_from.sha256");
            let hash = identity("the tokenizer training", &(options, train_texts))?;
            if std::fs::read_to_string(&hash_path).is_ok_and(|h| h.trim() == hash) {
                TokenizerFile::load(&path)?
            } else {
                tracing::info!(
                    vocab_size = options.vocab_size,
                    documents = train_texts.len(),
                    "training a byte-level BPE tokenizer"
                );
                let trained = dapt_packer::train_bpe(train_texts, options)?;
                std::fs::write(&path, trained.json()).map_err(io_error(&path))?;
                std::fs::write(&hash_path, &hash).map_err(io_error(&hash_path))?;
                return Ok(trained);
            }
        }
    };
    std::fs::write(&path, tokenizer.json()).map_err(io_error(&path))?;
    Ok(tokenizer)
}
