//! `dapt sweep SWEEP.toml`: ablations over mixtures (seed §7.2). The components of a mix are tokenised
//! **once** into `OUT/components/<name>/` (Parquet, one row per document, cached by the hash of the
//! component's SQL, sources and tokenizer); each variant's data is assembled from those token ids by
//! deterministic sampling to its weights (no re-tokenisation), packed, a small proxy model is trained on
//! it for a fixed budget and evaluated; `OUT/sweep_results.json` and `OUT/sweep.md` (table, charts, a
//! regression of the objective on the weights and its predicted best mixture) summarise the sweep. A
//! rerun reuses everything finished: components, packed variants, trained proxies, evaluations.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use arrow::array::{Array, AsArray};
use clap::Args;
use dapt_core::hash::{sha256_hex, sub_seed, unit_interval};
use dapt_core::{Location, OutputDir, PackedRow};
use dapt_eval::EvalResults;
use dapt_mixer::Mix;
use dapt_packer::TokenizerFile;
use dapt_trainer::tch::{Device, Kind};
use dapt_trainer::{ModelConfig, TrainConfig, TrainConfigOptions, TrainOptions};
use serde::{Deserialize, Serialize};

/// Arguments of `dapt sweep`.
#[derive(Args)]
pub struct SweepArgs {
    /// Sweep file (TOML): `mix` (a mix file whose components are swept), `tokens` per variant,
    /// `[[variant]]` entries (`name`, `weights = { component = share, … }`), `[model]` (the proxy),
    /// `[train]`, `[eval]` (`texts`, `tasks`, `objective`).
    file: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

/// One mixture to try.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantOptions {
    name: String,
    /// Share of tokens per component (normalised); components left out get none.
    weights: BTreeMap<String, f64>,
}

/// `[eval]` of a sweep.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SweepEvalOptions {
    /// Held-out texts for bits-per-byte: name → JSONL with `text` (relative to the sweep file).
    texts: BTreeMap<String, PathBuf>,
    /// Multiple-choice tasks: name → task file (dapt JSONL or BIG-bench task.json).
    tasks: BTreeMap<String, PathBuf>,
    /// The metric the regression models (e.g. `bpb/ru`, `acc/planted`); default: the first one.
    objective: Option<String>,
    /// Longest scored input in tokens.
    max_length: Option<usize>,
}

/// A sweep file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepOptions {
    #[serde(default)]
    seed: u64,
    /// The mix whose components are swept (its weights are ignored).
    mix: PathBuf,
    /// Training tokens assembled per variant.
    tokens: u64,
    #[serde(default = "default_seq_len")]
    seq_len: usize,
    #[serde(default = "default_eos")]
    eos_token: String,
    #[serde(default)]
    pad_token: Option<String>,
    #[serde(rename = "variant")]
    variants: Vec<VariantOptions>,
    /// The proxy model trained from scratch (`config.json` keys; `vocab_size` defaults to the
    /// tokenizer's) …
    #[serde(default)]
    model: Option<ModelConfig>,
    /// … or an HF model directory (relative to the sweep file) that each variant adapts, fully or with
    /// LoRA (`method`, `[lora]`).
    #[serde(default)]
    base: Option<PathBuf>,
    #[serde(default)]
    method: dapt_trainer::Method,
    #[serde(default)]
    lora: dapt_trainer::LoraOptions,
    #[serde(default)]
    train: TrainOptions,
    #[serde(default)]
    eval: SweepEvalOptions,
}

fn default_seq_len() -> usize {
    512
}

fn default_eos() -> String {
    "<|endoftext|>".into()
}

/// One tokenised document of a component.
struct TokenisedDocument {
    id: String,
    tokens: Vec<u32>,
}

/// What the data stage of the sweep did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DataCost {
    /// Components tokenised in this run (the others came from the cache).
    components_tokenised: usize,
    /// Documents and UTF-8 bytes that went through the tokenizer in this run.
    documents_tokenised: u64,
    bytes_tokenised: u64,
    /// Bytes of all component texts (what one pass of tokenisation costs).
    component_bytes: u64,
    tokenise_seconds: f64,
    assemble_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VariantResult {
    name: String,
    weights: BTreeMap<String, f64>,
    /// Share of assembled tokens per component.
    shares: BTreeMap<String, f64>,
    tokens: u64,
    metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Regression {
    objective: String,
    higher_is_better: bool,
    /// Objective ≈ Σ coefficient × weight (a Scheffé linear mixture model).
    coefficients: BTreeMap<String, f64>,
    r_squared: f64,
    /// The best mixture on a 5% grid within the weights tried, and its predicted objective.
    predicted_best: BTreeMap<String, f64>,
    predicted_objective: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SweepResults {
    components: Vec<String>,
    data: DataCost,
    variants: Vec<VariantResult>,
    regression: Option<Regression>,
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let options: SweepOptions = toml::from_str(&text)
        .with_context(|| format!("{}: invalid sweep file", args.file.display()))?;
    let base_dir = args.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mix = Mix::load(&resolve(&base_dir, &options.mix))?;
    let names: Vec<String> = mix.components.iter().map(|c| c.name.clone()).collect();
    ensure!(
        !options.variants.is_empty(),
        "{}: no [[variant]]",
        args.file.display()
    );
    for (i, v) in options.variants.iter().enumerate() {
        for key in v.weights.keys() {
            ensure!(
                names.contains(key),
                "{}: variant[{i}] ({}) weights component {key:?}, which the mix does not have ({})",
                args.file.display(),
                v.name,
                names.join(", ")
            );
        }
        let total: f64 = v.weights.values().sum();
        ensure!(
            total > 0.0 && v.weights.values().all(|w| *w >= 0.0),
            "{}: variant[{i}] ({}) weights must be non-negative with a positive sum",
            args.file.display(),
            v.name
        );
    }
    options.train.validate()?;
    let out = std::path::absolute(&args.out)?;
    std::fs::create_dir_all(&out)?;
    let tokenizer = TokenizerFile::load_with(&mix.tokenizer, mix.encoder)?;
    let eos = tokenizer.id_of(&options.eos_token)?;
    let pad = tokenizer.id_of(options.pad_token.as_deref().unwrap_or(&options.eos_token))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. Components, tokenised once.
    let mut cost = DataCost::default();
    let started = Instant::now();
    let mut components: BTreeMap<String, Vec<TokenisedDocument>> = BTreeMap::new();
    for component in &mix.components {
        let hash = sha256_hex(&serde_json::to_vec(&(
            &component.sql,
            tokenizer.sha256(),
            format!("{:?}", mix.sources),
        ))?);
        let dir = out.join("components").join(&component.name);
        let (documents, tokenised) = runtime.block_on(tokenised_component(
            &mix,
            &component.sql,
            &tokenizer,
            &dir,
            &hash,
            &mut cost,
        ))?;
        ensure!(
            !documents.is_empty(),
            "component {} selects no documents",
            component.name
        );
        if tokenised {
            cost.components_tokenised += 1;
        }
        components.insert(component.name.clone(), documents);
    }
    cost.tokenise_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        tokenised = cost.components_tokenised,
        cached = mix.components.len() - cost.components_tokenised,
        "components ready"
    );

    // 2–4. Per variant: assemble + pack, train the proxy, evaluate.
    let (init, base) = match (&options.model, &options.base) {
        (Some(model), None) => {
            let mut model = model.clone();
            if model.vocab_size <= 0 || model.vocab_size == ModelConfig::default().vocab_size {
                model.vocab_size = tokenizer.vocab_size() as i64;
            }
            if model.eos_token_id.is_none() {
                model.eos_token_id = Some(dapt_trainer::TokenIds::One(eos as i64));
            }
            (Some(model), None)
        }
        (None, Some(base)) => {
            let base = resolve(&base_dir, base);
            let config = ModelConfig::load(&base.join("config.json"))?;
            ensure!(
                config.vocab_size >= tokenizer.vocab_size() as i64,
                "{}: vocab_size {} is smaller than the mix tokenizer's {} tokens",
                base.display(),
                config.vocab_size,
                tokenizer.vocab_size()
            );
            (None, Some(base))
        }
        _ => bail!(
            "{}: give either [model] (a proxy trained from scratch) or `base` (a model directory)",
            args.file.display()
        ),
    };
    let mut results = Vec::new();
    for variant in &options.variants {
        let dir = out.join("variants").join(&variant.name);
        let assemble = Instant::now();
        let (shares, tokens) = runtime.block_on(assemble_variant(
            &options,
            variant,
            &components,
            &tokenizer,
            eos,
            pad,
            &dir.join("packed"),
        ))?;
        cost.assemble_seconds += assemble.elapsed().as_secs_f64();
        let train = TrainConfig {
            options: TrainConfigOptions {
                seed: sub_seed(options.seed, "sweep-train", 0),
                model: base.clone(),
                init: init.clone(),
                device: dapt_trainer::DeviceChoice::Auto,
                prefetch_rows: 4096,
                storage: BTreeMap::new(),
                stages: vec![dapt_trainer::StageOptions {
                    name: "train".into(),
                    data: dir.join("packed").display().to_string(),
                    heldout: None,
                    method: options.method,
                    trainable: dapt_trainer::Trainable::All,
                    freeze_embeddings_below: None,
                    train: options.train.clone(),
                    lora: options.lora.clone(),
                }],
            },
            base_dir: base_dir.clone(),
        };
        let reports = dapt_trainer::run_stages(&train, &dir.join("run"), |_, _| {})?;
        tracing::info!(variant = %variant.name, loss = reports[0].last_loss, "proxy trained");
        let eval_path = dir.join("eval.json");
        let evaluation = match EvalResults::load(&eval_path) {
            Ok(done) => done,
            Err(_) => {
                let results = evaluate(
                    &options,
                    &base_dir,
                    &variant.name,
                    &dir.join("run/train/model"),
                    &tokenizer,
                    eos,
                )?;
                std::fs::write(&eval_path, serde_json::to_string_pretty(&results)? + "\n")?;
                results
            }
        };
        let total: f64 = variant.weights.values().sum();
        results.push(VariantResult {
            name: variant.name.clone(),
            weights: names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        variant.weights.get(n).copied().unwrap_or(0.0) / total,
                    )
                })
                .collect(),
            shares,
            tokens,
            metrics: evaluation
                .metrics()
                .into_iter()
                .map(|(n, v, _)| (n, v))
                .collect(),
        });
    }

    // 5. Summary and regression.
    let objective = options.eval.objective.clone().or_else(|| {
        results
            .first()
            .and_then(|r| r.metrics.keys().next().cloned())
    });
    let regression = objective.and_then(|o| regress(&names, &results, &o));
    let summary = SweepResults {
        components: names.clone(),
        data: cost,
        variants: results,
        regression,
    };
    std::fs::write(
        out.join("sweep_results.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let (document, charts) = render(&summary);
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots)?;
    for (name, svg) in charts {
        std::fs::write(plots.join(format!("{name}.svg")), svg)?;
    }
    std::fs::write(out.join("sweep.md"), &document)?;
    print!("{document}");
    Ok(())
}

/// Reads a component's tokens from `dir`, or runs its query, tokenises every document once and writes
/// them there. Returns the documents and whether they were tokenised now.
async fn tokenised_component(
    mix: &Mix,
    sql: &str,
    tokenizer: &TokenizerFile,
    dir: &Path,
    hash: &str,
    cost: &mut DataCost,
) -> anyhow::Result<(Vec<TokenisedDocument>, bool)> {
    let location = Location::parse(&dir.display().to_string())?;
    let mut output = OutputDir::open(location, "tokenized-component", hash).await?;
    if output.manifest().complete {
        let mut documents = Vec::new();
        for (name, bytes) in output.read_shards().await? {
            let (batches, _) = dapt_core::parquet_io::decode(bytes, &name)?;
            for batch in &batches {
                for row in dapt_core::packed::batch_to_rows(batch)? {
                    documents.push(TokenisedDocument {
                        id: row.segment_sources.first().cloned().unwrap_or_default(),
                        tokens: row.input_ids.iter().map(|&t| t as u32).collect(),
                    });
                }
            }
        }
        cost.component_bytes += output.manifest().summary["bytes"].as_u64().unwrap_or(0);
        return Ok((documents, false));
    }
    let session = dapt_sql::SqlSession::over_sources(&mix.sources, Some(256 << 20)).await?;
    let inner = sql.trim().trim_end_matches(';');
    let ordered = format!(
        "SELECT CAST(id AS VARCHAR) AS id, text FROM ({inner}) AS c ORDER BY CAST(id AS VARCHAR)"
    );
    let batches: Vec<_> = futures::TryStreamExt::try_collect(
        session
            .query(&ordered)
            .await
            .with_context(|| format!("a component query must return `id` and `text`: {sql}"))?,
    )
    .await?;
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for batch in &batches {
        let id = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        let text = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Utf8)?;
        let (id, text) = (id.as_string::<i32>(), text.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if id.is_valid(i) && text.is_valid(i) && !text.value(i).is_empty() {
                ids.push(id.value(i).to_string());
                texts.push(text.value(i).to_string());
            }
        }
    }
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let token_lists = tokenizer.encode_all(&ids, &texts)?;
    cost.documents_tokenised += ids.len() as u64;
    cost.bytes_tokenised += bytes;
    cost.component_bytes += bytes;
    let documents: Vec<TokenisedDocument> = ids
        .into_iter()
        .zip(token_lists)
        .map(|(id, tokens)| TokenisedDocument { id, tokens })
        .collect();
    for (index, chunk) in documents.chunks(20_000).enumerate() {
        let rows: Vec<PackedRow> = chunk
            .iter()
            .map(|d| PackedRow {
                input_ids: d.tokens.iter().map(|&t| t as i32).collect(),
                segment_lengths: vec![d.tokens.len() as i32],
                loss_mask: vec![true; d.tokens.len()],
                segment_sources: vec![d.id.clone()],
            })
            .collect();
        let batch = dapt_core::packed::rows_to_batch(&rows)?;
        let encoded = dapt_core::parquet_io::encode_packed(
            batch.schema(),
            &[batch],
            &BTreeMap::new(),
            "component",
        )?;
        output
            .publish(
                &format!("part-{index:05}.parquet"),
                encoded,
                rows.len() as u64,
            )
            .await?;
    }
    output
        .finish(serde_json::json!({ "documents": documents.len(), "bytes": bytes, "tokenizer_sha256": tokenizer.sha256() }))
        .await?;
    Ok((documents, true))
}

/// Samples each component to its share of `tokens` (documents in a seeded hash order, epochs when a
/// component is short; a document is taken while the component is below its target), shuffles the
/// picks by a seeded hash, packs and writes them. Returns the token shares and the total.
async fn assemble_variant(
    options: &SweepOptions,
    variant: &VariantOptions,
    components: &BTreeMap<String, Vec<TokenisedDocument>>,
    tokenizer: &TokenizerFile,
    eos: u32,
    pad: u32,
    dir: &Path,
) -> anyhow::Result<(BTreeMap<String, f64>, u64)> {
    let total_weight: f64 = variant.weights.values().sum();
    let mut picks: Vec<(f64, &str, &TokenisedDocument)> = Vec::new();
    let mut shares = BTreeMap::new();
    let mut total = 0u64;
    for (name, documents) in components {
        let weight = variant.weights.get(name).copied().unwrap_or(0.0) / total_weight;
        let target = (weight * options.tokens as f64).round() as u64;
        let mut taken = 0u64;
        let mut epoch = 0u64;
        while taken < target {
            let before = taken;
            let seed = sub_seed(options.seed, &format!("sweep-{name}"), epoch);
            let mut order: Vec<(f64, usize)> = documents
                .iter()
                .enumerate()
                .map(|(i, d)| (unit_interval(seed, &d.id), i))
                .collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (_, i) in order {
                let d = &documents[i];
                let size = d.tokens.len() as u64 + 1;
                // Midpoint rule: take a document when that lands nearer the target (skipping ones
                // that would overshoot by more than they fill).
                if taken + size / 2 > target {
                    continue;
                }
                let key = unit_interval(
                    sub_seed(options.seed, "sweep-shuffle", epoch),
                    &format!("{name}/{}", d.id),
                );
                picks.push((key, name.as_str(), d));
                taken += size;
            }
            epoch += 1;
            if taken == before {
                // Every remaining document overshoots: the component ends as near its target as it gets.
                break;
            }
            if epoch > 10_000 {
                bail!("component {name} cannot reach {target} tokens");
            }
        }
        shares.insert(name.clone(), taken as f64);
        total += taken;
    }
    for share in shares.values_mut() {
        *share /= total.max(1) as f64;
    }
    let location = Location::parse(&dir.display().to_string())?;
    let hash = sha256_hex(&serde_json::to_vec(&(
        variant,
        options.tokens,
        options.seq_len,
        options.seed,
        tokenizer.sha256(),
    ))?);
    let mut output = OutputDir::open(location, "pack", &hash).await?;
    if output.manifest().complete {
        return Ok((shares, total));
    }
    picks.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.cmp(b.1))
            .then(a.2.id.cmp(&b.2.id))
    });
    let documents: Vec<Vec<u32>> = picks.iter().map(|(_, _, d)| d.tokens.clone()).collect();
    let sources: Vec<String> = picks.iter().map(|(_, n, _)| n.to_string()).collect();
    let (rows, stats) = dapt_packer::pack_cpt(&documents, &sources, eos, pad, options.seq_len);
    dapt_packer::write_packed(
        &mut output,
        &rows,
        4096,
        options.seq_len,
        pad,
        tokenizer.sha256(),
        options.seed,
        &hash,
        serde_json::json!({ "documents": stats.documents, "tokens": stats.tokens, "rows": stats.rows, "shares": shares }),
    )
    .await?;
    Ok((shares, total))
}

fn evaluate(
    options: &SweepOptions,
    base_dir: &Path,
    label: &str,
    model_dir: &Path,
    tokenizer: &TokenizerFile,
    eos: u32,
) -> anyhow::Result<EvalResults> {
    let device = Device::cuda_if_available();
    let (_vs, model) = dapt_trainer::CausalLm::load(model_dir, device, Kind::Float)?;
    let scorer = dapt_eval::Scorer {
        model: &model,
        device,
        max_length: options.eval.max_length.unwrap_or(options.seq_len),
        batch_size: 16,
    };
    let mut results = EvalResults {
        label: label.into(),
        model: model_dir.display().to_string(),
        tokenizer_sha256: tokenizer.sha256().to_string(),
        ..Default::default()
    };
    for (name, path) in &options.eval.texts {
        let path = resolve(base_dir, path);
        let texts: Vec<String> = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_string))
                    .with_context(|| format!("{}: a line without a `text` string", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        results.bits_per_byte.insert(
            name.clone(),
            dapt_eval::score_texts(&scorer, tokenizer, &texts, eos)?,
        );
    }
    for (name, path) in &options.eval.tasks {
        let path = resolve(base_dir, path);
        let examples = dapt_eval::load_task(&path, dapt_eval::TaskFormat::guess(&path))?;
        results.tasks.insert(
            name.clone(),
            dapt_eval::evaluate_task(&scorer, tokenizer, &examples, 0, options.seed, eos)?,
        );
    }
    if results.bits_per_byte.is_empty() && results.tasks.is_empty() {
        bail!("[eval] names no texts or tasks");
    }
    Ok(results)
}

/// Least squares of the objective on the weights (no intercept: the weights sum to one), with a small
/// ridge so that fewer variants than components still give an answer.
fn regress(names: &[String], results: &[VariantResult], objective: &str) -> Option<Regression> {
    let rows: Vec<(Vec<f64>, f64)> = results
        .iter()
        .filter_map(|r| {
            let y = r.metrics.get(objective)?;
            Some((
                names
                    .iter()
                    .map(|n| r.weights.get(n).copied().unwrap_or(0.0))
                    .collect(),
                *y,
            ))
        })
        .collect();
    if rows.len() < 2 {
        return None;
    }
    let k = names.len();
    let mut a = vec![vec![0.0; k + 1]; k];
    for (x, y) in &rows {
        for i in 0..k {
            for j in 0..k {
                a[i][j] += x[i] * x[j];
            }
            a[i][k] += x[i] * y;
        }
    }
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-6;
    }
    // Gauss–Jordan elimination with partial pivoting.
    for col in 0..k {
        let pivot = (col..k).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            return None;
        }
        for value in &mut a[col][col..] {
            *value /= p;
        }
        let pivot_row = a[col].clone();
        for (i, row) in a.iter_mut().enumerate() {
            if i != col {
                let f = row[col];
                for (value, pivot_value) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *value -= f * pivot_value;
                }
            }
        }
    }
    let beta: Vec<f64> = a.iter().map(|row| row[k]).collect();
    let predict = |x: &[f64]| x.iter().zip(&beta).map(|(w, b)| w * b).sum::<f64>();
    let mean = rows.iter().map(|(_, y)| y).sum::<f64>() / rows.len() as f64;
    let total: f64 = rows.iter().map(|(_, y)| (y - mean).powi(2)).sum();
    let residual: f64 = rows.iter().map(|(x, y)| (y - predict(x)).powi(2)).sum();
    let higher = objective.starts_with("acc");
    // Search a 5% grid of the simplex within the range of weights tried per component.
    let low: Vec<f64> = (0..k)
        .map(|i| rows.iter().map(|(x, _)| x[i]).fold(f64::INFINITY, f64::min))
        .collect();
    let high: Vec<f64> = (0..k)
        .map(|i| {
            rows.iter()
                .map(|(x, _)| x[i])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let mut best: Option<(Vec<f64>, f64)> = None;
    let steps = 20usize;
    let mut point = vec![0usize; k];
    loop {
        if point.iter().sum::<usize>() == steps {
            let x: Vec<f64> = point.iter().map(|&p| p as f64 / steps as f64).collect();
            let inside = x
                .iter()
                .enumerate()
                .all(|(i, w)| *w >= low[i] - 1e-9 && *w <= high[i] + 1e-9);
            if inside {
                let y = predict(&x);
                let better = best
                    .as_ref()
                    .is_none_or(|(_, b)| if higher { y > *b } else { y < *b });
                if better {
                    best = Some((x, y));
                }
            }
        }
        // Next grid point (odometer over 0..=steps per component).
        let mut i = 0;
        loop {
            if i == k {
                let (x, y) = best?;
                return Some(Regression {
                    objective: objective.to_string(),
                    higher_is_better: higher,
                    coefficients: names.iter().cloned().zip(beta.iter().copied()).collect(),
                    r_squared: if total > 0.0 {
                        1.0 - residual / total
                    } else {
                        1.0
                    },
                    predicted_best: names.iter().cloned().zip(x).collect(),
                    predicted_objective: y,
                });
            }
            point[i] += 1;
            if point[i] <= steps {
                break;
            }
            point[i] = 0;
            i += 1;
        }
    }
}

/// `sweep.md` and its charts.
fn render(summary: &SweepResults) -> (String, Vec<(String, String)>) {
    use std::fmt::Write;
    let mut doc = String::from("# dapt sweep\n\n");
    let _ = writeln!(
        doc,
        "Data: {} of {} components tokenised in this run ({} documents, {:.1} MB; all components: {:.1} MB), \
         tokenise {:.1} s, assemble + pack {:.1} s.\n",
        summary.data.components_tokenised,
        summary.components.len(),
        summary.data.documents_tokenised,
        summary.data.bytes_tokenised as f64 / 1e6,
        summary.data.component_bytes as f64 / 1e6,
        summary.data.tokenise_seconds,
        summary.data.assemble_seconds
    );
    let metrics: Vec<String> = summary
        .variants
        .first()
        .map(|v| v.metrics.keys().cloned().collect())
        .unwrap_or_default();
    doc.push_str("| variant |");
    for c in &summary.components {
        let _ = write!(doc, " {c} |");
    }
    for m in &metrics {
        let _ = write!(doc, " {m} |");
    }
    doc.push_str("\n|---|");
    doc.push_str(&"---:|".repeat(summary.components.len() + metrics.len()));
    doc.push('\n');
    for v in &summary.variants {
        let _ = write!(doc, "| {} |", v.name);
        for c in &summary.components {
            let _ = write!(
                doc,
                " {:.2} ({:.2}) |",
                v.weights.get(c).copied().unwrap_or(0.0),
                v.shares.get(c).copied().unwrap_or(0.0)
            );
        }
        for m in &metrics {
            let _ = write!(
                doc,
                " {:.4} |",
                v.metrics.get(m).copied().unwrap_or(f64::NAN)
            );
        }
        doc.push('\n');
    }
    doc.push_str("\nWeights as asked (token shares as assembled).\n");
    if let Some(r) = &summary.regression {
        let _ = writeln!(
            doc,
            "\n## Regression\n\n`{}` ≈ {} (R² {:.3}).\n\nPredicted best mixture within the weights tried: {} → {:.4}.",
            r.objective,
            r.coefficients
                .iter()
                .map(|(c, b)| format!("{b:.4}·{c}"))
                .collect::<Vec<_>>()
                .join(" + "),
            r.r_squared,
            r.predicted_best
                .iter()
                .map(|(c, w)| format!("{c} {w:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.predicted_objective
        );
    }
    let labels: Vec<String> = summary.variants.iter().map(|v| v.name.clone()).collect();
    let mut charts = Vec::new();
    for m in &metrics {
        let values: Vec<Option<f64>> = summary
            .variants
            .iter()
            .map(|v| v.metrics.get(m).copied())
            .collect();
        let name: String = m
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let _ = writeln!(doc, "\n![{m}](plots/{name}.svg)");
        charts.push((name, dapt_eval::bar_chart(m, &labels, &values)));
    }
    (doc, charts)
}
