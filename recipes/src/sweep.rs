//! Ablations over mixtures (`dapt sweep SWEEP.toml`). The components of a mix are tokenised **once**
//! into `OUT/components/<name>/` (the packer's token cache, keyed by the identity of the component's
//! SQL, sources and tokenizer); each variant's data is assembled from those token ids with the
//! mixer's own sampling rule ([`dapt_mixer::run::sample`]) to its weights (no re-tokenisation),
//! shuffled with the mixer's window key, packed, and a small proxy model (or an adapted base model) is
//! trained on it and evaluated with one [`EvalPlan`]; `OUT/sweep_results.json` and `OUT/sweep.md`
//! (table, charts, the mixture regression of `dapt_eval::regress` and its predicted best mixture)
//! summarise the sweep. A rerun reuses everything finished: components, packed variants, trained
//! models, evaluations.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::{Array, AsArray};
use dapt_core::hash::sub_seed;
use dapt_core::{Location, OutputDir};
use dapt_eval::{EvalPlan, EvalResults, Grouping, Regression, TaskSet, TextSet};
use dapt_mixer::Mix;
use dapt_packer::{TokenisedDocument, TokenizerFile};
use dapt_trainer::tch::{Device, Kind};
use dapt_trainer::{
    ModelConfig, ProxyDefaults, ProxyModelOptions, TrainConfig, TrainConfigOptions, TrainOptions,
    TrainSettings,
};
use serde::{Deserialize, Serialize};

use crate::error::{io_error, setting, write_json};
use crate::identity::identity;
use crate::{Error, Result};

/// One mixture to try.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantOptions {
    /// The variant's name (its directory under `OUT/variants/`).
    pub name: String,
    /// Share of tokens per component (normalised); components left out get none.
    pub weights: BTreeMap<String, f64>,
}

/// `[eval]` of a sweep.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepEvalOptions {
    /// Held-out texts for bits-per-byte: name → JSONL with `text` (relative to the sweep file).
    pub texts: BTreeMap<String, PathBuf>,
    /// Multiple-choice tasks: name → task file (dapt JSONL or BIG-bench task.json).
    pub tasks: BTreeMap<String, PathBuf>,
    /// The metric the regression models (e.g. `bpb/ru`, `acc/planted`). Default: the first one.
    pub objective: Option<String>,
    /// Longest scored input in tokens. Default: the sweep's `seq_len`.
    pub max_length: Option<usize>,
}

/// A sweep file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepOptions {
    /// The sweep's one seed. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The mix whose components are swept (its weights are ignored).
    pub mix: PathBuf,
    /// Training tokens assembled per variant.
    pub tokens: u64,
    /// Tokens per packed row. Default 512.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Token appended after each document. Default `<|endoftext|>`.
    #[serde(default = "default_eos")]
    pub eos_token: String,
    /// Token filling the end of rows. Default: the EOS token.
    #[serde(default)]
    pub pad_token: Option<String>,
    /// The mixtures to try (with `[search]` and none given: the mix's own weights, as `mix`).
    #[serde(rename = "variant", default)]
    pub variants: Vec<VariantOptions>,
    /// A hyperparameter search over training keys, for every variant (see [`crate::search`]).
    #[serde(default)]
    pub search: Option<crate::search::SearchOptions>,
    /// The proxy model trained from scratch (its vocabulary defaults to the tokenizer's) …
    #[serde(default)]
    pub model: Option<ProxyModelOptions>,
    /// … or an HF model directory (relative to the sweep file) that each variant adapts, fully or
    /// with LoRA (`method`, `[lora]`).
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// `full` or `lora`. Default `full`.
    #[serde(default)]
    pub method: dapt_trainer::Method,
    /// LoRA settings when `method = "lora"`.
    #[serde(default)]
    pub lora: dapt_trainer::LoraOptions,
    /// Training settings of every variant.
    #[serde(default)]
    pub train: TrainOptions,
    /// What each variant is scored on.
    #[serde(default)]
    pub eval: SweepEvalOptions,
}

fn default_seq_len() -> usize {
    512
}

fn default_eos() -> String {
    "<|endoftext|>".into()
}

/// What the data stage of the sweep did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataCost {
    /// Components tokenised in this run (the others came from the cache).
    pub components_tokenised: usize,
    /// Documents and UTF-8 bytes that went through the tokenizer in this run.
    pub documents_tokenised: u64,
    /// (See `documents_tokenised`.)
    pub bytes_tokenised: u64,
    /// Bytes of all component texts (what one pass of tokenisation costs).
    pub component_bytes: u64,
    /// Seconds spent tokenising.
    pub tokenise_seconds: f64,
    /// Seconds spent assembling variants from token ids.
    pub assemble_seconds: f64,
}

/// One variant's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantResult {
    /// Variant name.
    pub name: String,
    /// Component weights as configured.
    pub weights: BTreeMap<String, f64>,
    /// Share of assembled tokens per component.
    pub shares: BTreeMap<String, f64>,
    /// Tokens assembled.
    pub tokens: u64,
    /// Its evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// What one trial of a search measured after one rung.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RungResult {
    /// Steps trained by then.
    pub steps: usize,
    /// Its evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// One trial of a hyperparameter search.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialResult {
    /// Trial name (its directory under `OUT/trials/`).
    pub name: String,
    /// The variant (mixture) it trained on.
    pub variant: String,
    /// Its training settings.
    pub settings: crate::search::TrialSettings,
    /// What it measured after each rung it reached.
    pub rungs: Vec<RungResult>,
}

impl TrialResult {
    /// A metric after the last rung the trial reached (NaN when it was not measured).
    pub fn latest(&self, metric: &str) -> f64 {
        self.rungs
            .last()
            .and_then(|rung| rung.metrics.get(metric).copied())
            .unwrap_or(f64::NAN)
    }
}

/// The search's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResults {
    /// The metric trials are ranked by.
    pub objective: String,
    /// Whether a higher value is better.
    pub higher_is_better: bool,
    /// Steps of each rung.
    pub rungs: Vec<usize>,
    /// Every trial.
    pub trials: Vec<TrialResult>,
    /// The best trial that trained all its steps.
    pub best: Option<String>,
}

/// `sweep_results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepResults {
    /// Component names.
    pub components: Vec<String>,
    /// What tokenisation cost.
    pub data: DataCost,
    /// Every variant's outcome.
    pub variants: Vec<VariantResult>,
    /// The mixture regression, with three or more variants.
    pub regression: Option<Regression>,
    /// The hyperparameter search, when the sweep has `[search]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchResults>,
}

/// What a finished sweep wrote.
pub struct SweepOutcome {
    /// The results (also `OUT/sweep_results.json`).
    pub results: SweepResults,
    /// The Markdown summary (also `OUT/sweep.md`).
    pub document: String,
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Reads a sweep file.
pub fn load(file: &Path) -> Result<SweepOptions> {
    let text = std::fs::read_to_string(file).map_err(io_error(file))?;
    toml::from_str(&text).map_err(|source| Error::Config {
        path: file.to_path_buf(),
        source,
    })
}

/// Runs the sweep of `file` into `out`; the component queries run on the Ballista cluster
/// `cluster` (`df://HOST:PORT`) when given (the results are the same).
pub fn run(file: &Path, out: &Path, cluster: Option<&str>) -> Result<SweepOutcome> {
    let options = load(file)?;
    let key = |k: String| format!("{}: {k}", file.display());
    let base_dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut mix = Mix::load(&resolve(&base_dir, &options.mix))?;
    // Not part of the components' identities (below): where a query runs changes no row.
    let sources_identity = format!("{:?}", mix.sources);
    mix.sources.cluster = cluster.map(str::to_string);
    let names: Vec<String> = mix.components.iter().map(|c| c.name.clone()).collect();
    let variants: Vec<VariantOptions> = match (&options.search, options.variants.is_empty()) {
        (_, false) => options.variants.clone(),
        (Some(_), true) => vec![VariantOptions {
            name: "mix".into(),
            weights: mix
                .components
                .iter()
                .map(|c| (c.name.clone(), c.weight))
                .collect(),
        }],
        (None, true) => return Err(setting(key("variant".into()), "no [[variant]]")),
    };
    for (i, v) in variants.iter().enumerate() {
        for component in v.weights.keys() {
            if !names.contains(component) {
                return Err(setting(
                    key(format!("variant[{i}] ({}).weights", v.name)),
                    format!(
                        "weights component {component:?}, which the mix does not have ({})",
                        names.join(", ")
                    ),
                ));
            }
        }
        let total: f64 = v.weights.values().sum();
        if !(total > 0.0 && v.weights.values().all(|w| *w >= 0.0)) {
            return Err(setting(
                key(format!("variant[{i}] ({}).weights", v.name)),
                "must be non-negative with a positive sum",
            ));
        }
    }
    TrainSettings::try_from(options.train.clone())?;
    let out = std::path::absolute(out).map_err(io_error(out))?;
    std::fs::create_dir_all(&out).map_err(io_error(&out))?;
    let tokenizer = TokenizerFile::load_with(&mix.tokenizer, mix.encoder)?;
    let eos = tokenizer.id_of(&options.eos_token)?;
    let pad = tokenizer.id_of(options.pad_token.as_deref().unwrap_or(&options.eos_token))?;
    let runtime = crate::runtime()?;

    // 1. Components, tokenised once.
    let mut cost = DataCost::default();
    let started = Instant::now();
    let mut components: BTreeMap<String, Vec<TokenisedDocument>> = BTreeMap::new();
    for component in &mix.components {
        let hash = identity(
            "a sweep component",
            &(&component.sql, tokenizer.sha256(), &sources_identity),
        )?;
        let dir = out.join("components").join(&component.name);
        let (documents, tokenised) = runtime.block_on(tokenised_component(
            &mix,
            &component.sql,
            &tokenizer,
            &dir,
            &hash,
            &mut cost,
        ))?;
        if documents.is_empty() {
            return Err(setting(
                format!("component {}", component.name),
                "its query selects no documents",
            ));
        }
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

    // 2–4. Per variant: assemble + pack, train, evaluate.
    let (init, base) =
        match (&options.model, &options.base) {
            (Some(model), None) => {
                let mut model = model.clone();
                model.vocab_size = model.vocab_size.or(Some(tokenizer.vocab_size() as i64));
                model.eos_token_id = model.eos_token_id.or(Some(i64::from(eos)));
                model.to_config(ProxyDefaults::default())?;
                (Some(model), None)
            }
            (None, Some(base)) => {
                let base = resolve(&base_dir, base);
                let config = ModelConfig::load(&base.join("config.json"))?;
                if config.vocab_size < tokenizer.vocab_size() as i64 {
                    return Err(setting(
                        key("base".into()),
                        format!(
                            "{}: vocab_size {} is smaller than the mix tokenizer's {} tokens",
                            base.display(),
                            config.vocab_size,
                            tokenizer.vocab_size()
                        ),
                    ));
                }
                (None, Some(base))
            }
            _ => return Err(setting(
                key("model".into()),
                "give either [model] (a proxy trained from scratch) or `base` (a model directory)",
            )),
        };
    let trainee = Trainee {
        options: &options,
        base_dir: &base_dir,
        init,
        base,
        tokenizer: &tokenizer,
        eos,
    };
    let mut results = Vec::new();
    let mut packed_variants = Vec::new();
    for variant in &variants {
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
        if options.search.is_some() {
            packed_variants.push((variant.name.clone(), dir.join("packed")));
            continue;
        }
        let evaluation = trainee.train_and_evaluate(
            &variant.name,
            &dir.join("packed"),
            &dir.join("run"),
            &dir.join("eval.json"),
            options.train.clone(),
            options.lora.clone(),
            None,
            false,
        )?;
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

    let search = match &options.search {
        Some(search) => Some(run_search(&trainee, search, &packed_variants, &out)?),
        None => None,
    };

    // 5. Summary and regression.
    let objective = options.eval.objective.clone().or_else(|| {
        results
            .first()
            .and_then(|r| r.metrics.keys().next().cloned())
    });
    let regression = objective.and_then(|o| {
        let observations: Vec<dapt_eval::Observation> = results
            .iter()
            .filter_map(|r| {
                Some(dapt_eval::Observation {
                    weights: &r.weights,
                    objective: *r.metrics.get(&o)?,
                })
            })
            .collect();
        dapt_eval::regress(&names, &observations, &o)
    });
    let summary = SweepResults {
        components: names,
        data: cost,
        variants: results,
        regression,
        search,
    };
    write_json(&out.join("sweep_results.json"), &summary)?;
    let (document, charts) = render(&summary);
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(io_error(&plots))?;
    for (name, svg) in charts {
        let path = plots.join(format!("{name}.svg"));
        std::fs::write(&path, svg).map_err(io_error(&path))?;
    }
    let path = out.join("sweep.md");
    std::fs::write(&path, &document).map_err(io_error(&path))?;
    Ok(SweepOutcome {
        results: summary,
        document,
    })
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
) -> Result<(Vec<TokenisedDocument>, bool)> {
    let location = Location::parse(&dir.display().to_string())?;
    let mut output = OutputDir::open(location, "token-cache", hash).await?;
    if output.manifest().complete {
        let (documents, bytes) = dapt_packer::read_token_cache(&output).await?;
        cost.component_bytes += bytes;
        return Ok((documents, false));
    }
    let session = dapt_sql::SqlSession::over_sources(&mix.sources, Some(256 << 20)).await?;
    let inner = sql.trim().trim_end_matches(';');
    let ordered = format!(
        "SELECT CAST(id AS VARCHAR) AS id, text FROM ({inner}) AS c ORDER BY CAST(id AS VARCHAR)"
    );
    let batches = session.query_collect(&ordered).await?;
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for batch in &batches {
        let id = dapt_sql::rows::string_column(batch, "id", sql)?;
        let text = dapt_sql::rows::string_column(batch, "text", sql)?;
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
    dapt_packer::write_token_cache(&mut output, &documents, tokenizer.sha256(), bytes).await?;
    Ok((documents, true))
}

/// Samples each component to its share of `tokens` with the mixer's rule (a document counts its
/// tokens plus the EOS after it), shuffles the picks by the mixer's window key, packs and writes
/// them. Returns the token shares and the total.
async fn assemble_variant(
    options: &SweepOptions,
    variant: &VariantOptions,
    components: &BTreeMap<String, Vec<TokenisedDocument>>,
    tokenizer: &TokenizerFile,
    eos: u32,
    pad: u32,
    dir: &Path,
) -> Result<(BTreeMap<String, f64>, u64)> {
    let total_weight: f64 = variant.weights.values().sum();
    let mut picks: Vec<(u64, &str, &TokenisedDocument)> = Vec::new();
    let mut shares = BTreeMap::new();
    let mut total = 0u64;
    for (name, documents) in components {
        let weight = variant.weights.get(name).copied().unwrap_or(0.0) / total_weight;
        let target = (weight * options.tokens as f64).round() as u64;
        let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
        let sizes: Vec<u64> = documents
            .iter()
            .map(|d| d.tokens.len() as u64 + 1)
            .collect();
        let mut taken = 0u64;
        for (epoch, indices) in dapt_mixer::run::sample(options.seed, name, &ids, &sizes, 0, target)
        {
            for i in indices {
                let d = &documents[i];
                picks.push((
                    dapt_mixer::run::shuffle_key(options.seed, name, &d.id, epoch),
                    name,
                    d,
                ));
                taken += sizes[i];
            }
        }
        shares.insert(name.clone(), taken as f64);
        total += taken;
    }
    for share in shares.values_mut() {
        *share /= total.max(1) as f64;
    }
    let location = Location::parse(&dir.display().to_string())?;
    let hash = identity(
        "a sweep variant",
        &(
            variant,
            options.tokens,
            options.seq_len,
            options.seed,
            tokenizer.sha256(),
        ),
    )?;
    let mut output = OutputDir::open(location, "pack", &hash).await?;
    if output.manifest().complete {
        return Ok((shares, total));
    }
    picks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)).then(a.2.id.cmp(&b.2.id)));
    let documents: Vec<Vec<u32>> = picks.iter().map(|(_, _, d)| d.tokens.clone()).collect();
    let sources: Vec<String> = picks.iter().map(|(_, n, _)| n.to_string()).collect();
    let (rows, stats) = dapt_packer::pack_cpt(&documents, &sources, eos, pad, options.seq_len);
    dapt_packer::write_packed(
        &mut output,
        &rows,
        "part",
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

/// What every training run of a sweep shares.
struct Trainee<'a> {
    options: &'a SweepOptions,
    base_dir: &'a Path,
    init: Option<ProxyModelOptions>,
    base: Option<PathBuf>,
    tokenizer: &'a TokenizerFile,
    eos: u32,
}

impl Trainee<'_> {
    /// Trains on `packed` into `run_dir` (resuming from the checkpoint of `previous`, a run of the
    /// same trial with fewer steps) and evaluates the model into `eval_path`; both reuse what is
    /// done.
    #[allow(clippy::too_many_arguments)]
    fn train_and_evaluate(
        &self,
        label: &str,
        packed: &Path,
        run_dir: &Path,
        eval_path: &Path,
        train: TrainOptions,
        lora: dapt_trainer::LoraOptions,
        previous: Option<&Path>,
        keep_final_checkpoint: bool,
    ) -> Result<EvalResults> {
        let stage_dir = run_dir.join("train");
        if let Some(previous) = previous {
            let from = previous.join("train");
            if !stage_dir.join("stage.json").exists() && !stage_dir.join("checkpoints").exists() {
                copy_dir(&from.join("checkpoints"), &stage_dir.join("checkpoints"))?;
                let log = from.join("train_log.jsonl");
                std::fs::copy(&log, stage_dir.join("train_log.jsonl")).map_err(io_error(&log))?;
            }
        }
        let config = TrainConfig {
            options: TrainConfigOptions {
                seed: sub_seed(self.options.seed, "sweep-train", 0),
                model: self.base.clone(),
                init: self.init.clone(),
                device: dapt_trainer::DeviceChoice::Auto,
                prefetch_rows: 4096,
                storage: BTreeMap::new(),
                stages: vec![dapt_trainer::StageOptions {
                    name: "train".into(),
                    data: packed.display().to_string(),
                    heldout: None,
                    method: self.options.method,
                    trainable: dapt_trainer::Trainable::All,
                    freeze_embeddings_below: None,
                    train,
                    lora,
                }],
            },
            base_dir: self.base_dir.to_path_buf(),
            replace_stale: false,
            dist: None,
            zero1: false,
            keep_final_checkpoint,
        };
        let reports = dapt_trainer::run_stages(&config, run_dir, |_, _| {})?;
        tracing::info!(run = %label, steps = reports[0].steps, loss = reports[0].last_loss, "trained");
        if let Ok(done) = EvalResults::load(eval_path) {
            return Ok(done);
        }
        let results = evaluate(
            self.options,
            self.base_dir,
            label,
            &stage_dir.join("model"),
            self.tokenizer,
            self.eos,
        )?;
        write_json(eval_path, &results)?;
        Ok(results)
    }
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_error(to))?;
    for entry in std::fs::read_dir(from).map_err(io_error(from))? {
        let entry = entry.map_err(io_error(from))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(io_error(&entry.path()))?;
        }
    }
    Ok(())
}

/// The trials of `[search]` over every variant, by successive halving when asked.
fn run_search(
    trainee: &Trainee,
    search: &crate::search::SearchOptions,
    variants: &[(String, PathBuf)],
    out: &Path,
) -> Result<SearchResults> {
    let options = trainee.options;
    let combinations = crate::search::expand(search, options.seed)?;
    let full = options.train.steps;
    let rungs = crate::search::rungs(search.halving.as_ref(), full)?;
    let eta = search.halving.as_ref().map_or(2, |h| h.eta);
    let mut trials = Vec::new();
    let mut prepared = Vec::new();
    for (variant, packed) in variants {
        for (j, settings) in combinations.iter().enumerate() {
            let (train, lora) = crate::search::apply(&options.train, &options.lora, settings)?;
            let name = if variants.len() == 1 {
                format!("t{j}")
            } else {
                format!("{variant}-t{j}")
            };
            tracing::info!(trial = %name, settings = %crate::search::describe(settings), "trial");
            trials.push(TrialResult {
                name,
                variant: variant.clone(),
                settings: settings.clone(),
                rungs: Vec::new(),
            });
            prepared.push((packed.clone(), train, lora));
        }
    }
    if search.halving.is_some() && prepared.iter().any(|(_, train, _)| train.steps != full) {
        return Err(setting(
            "search.space.steps",
            "successive halving sets each rung's steps itself: search `steps` without [search.halving]",
        ));
    }
    let mut objective: Option<(String, bool)> = None;
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    for (r, &steps) in rungs.iter().enumerate() {
        let last = r + 1 == rungs.len();
        for &t in &alive {
            let (packed, train, lora) = &prepared[t];
            let mut train = train.clone();
            if !last {
                train.schedule_steps = Some(train.steps);
                train.steps = steps;
            }
            let trial_dir = out.join("trials").join(&trials[t].name);
            let run_dir = trial_dir.join(format!("steps-{}", train.steps));
            let previous = (r > 0).then(|| trial_dir.join(format!("steps-{}", rungs[r - 1])));
            let evaluation = trainee.train_and_evaluate(
                &trials[t].name,
                packed,
                &run_dir,
                &run_dir.join("eval.json"),
                train,
                lora.clone(),
                previous.as_deref(),
                !last,
            )?;
            let measured = evaluation.metrics();
            if objective.is_none() {
                let wanted = options.eval.objective.clone();
                objective = measured
                    .iter()
                    .find(|(n, _, _)| wanted.as_deref().is_none_or(|w| w == n))
                    .map(|(n, _, higher)| (n.clone(), *higher));
                if objective.is_none() {
                    return Err(setting(
                        "eval.objective",
                        format!("{wanted:?} is not among the measured metrics"),
                    ));
                }
            }
            trials[t].rungs.push(RungResult {
                steps: if last { prepared[t].1.steps } else { steps },
                metrics: measured.into_iter().map(|(n, v, _)| (n, v)).collect(),
            });
        }
        if !last {
            let (name, higher) = objective.clone().unwrap_or_default();
            let scores: Vec<(usize, f64)> = alive
                .iter()
                .map(|&t| (t, trials[t].latest(&name)))
                .collect();
            alive = crate::search::survivors(&scores, higher, eta);
            tracing::info!(rung = r, steps, kept = alive.len(), "successive halving");
        }
    }
    let (objective, higher_is_better) = objective.unwrap_or_default();
    let finals: Vec<(usize, f64)> = alive
        .iter()
        .map(|&t| (t, trials[t].latest(&objective)))
        .collect();
    let best = crate::search::survivors(&finals, higher_is_better, usize::MAX)
        .first()
        .map(|&t| trials[t].name.clone());
    Ok(SearchResults {
        objective,
        higher_is_better,
        rungs,
        trials,
        best,
    })
}

fn evaluate(
    options: &SweepOptions,
    base_dir: &Path,
    label: &str,
    model_dir: &Path,
    tokenizer: &TokenizerFile,
    eos: u32,
) -> Result<EvalResults> {
    let device = Device::cuda_if_available();
    let (_vs, model) = dapt_trainer::CausalLm::load(model_dir, device, Kind::Float)?;
    let mut plan = EvalPlan::new(
        label,
        &model_dir.display().to_string(),
        eos,
        options.eval.max_length.unwrap_or(options.seq_len),
    );
    plan.seed = options.seed;
    for (name, path) in &options.eval.texts {
        plan.texts.push(TextSet {
            name: name.clone(),
            texts: dapt_eval::read_jsonl_field(&resolve(base_dir, path), "text")?,
            grouping: Grouping::None,
        });
    }
    for (name, path) in &options.eval.tasks {
        let path = resolve(base_dir, path);
        plan.tasks.push(TaskSet {
            name: name.clone(),
            examples: dapt_eval::load_task(&path, dapt_eval::TaskFormat::guess(&path))?,
        });
    }
    if plan.is_empty() {
        return Err(setting("eval", "[eval] names no texts or tasks"));
    }
    Ok(plan.execute(&model, tokenizer, device, |_, _| {})?)
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
    if !summary.variants.is_empty() {
        doc.push_str("\nWeights as asked (token shares as assembled).\n");
    }
    if let Some(search) = &summary.search {
        let _ = writeln!(
            doc,
            "\n## Hyperparameter search\n\n{} trials ranked by `{}` ({} is better); rungs at {} steps.\n",
            search.trials.len(),
            search.objective,
            if search.higher_is_better { "higher" } else { "lower" },
            search
                .rungs
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        doc.push_str("| trial | variant | settings |");
        for steps in &search.rungs {
            let _ = write!(doc, " {} @ {steps} |", search.objective);
        }
        doc.push_str("\n|---|---|---|");
        doc.push_str(&"---:|".repeat(search.rungs.len()));
        doc.push('\n');
        for trial in &search.trials {
            let _ = write!(
                doc,
                "| {} | {} | {} |",
                trial.name,
                trial.variant,
                crate::search::describe(&trial.settings)
            );
            for i in 0..search.rungs.len() {
                match trial
                    .rungs
                    .get(i)
                    .and_then(|r| r.metrics.get(&search.objective))
                {
                    Some(v) => {
                        let _ = write!(doc, " {v:.4} |");
                    }
                    None => doc.push_str(" stopped |"),
                }
            }
            doc.push('\n');
        }
        if let Some(best) = search
            .trials
            .iter()
            .find(|t| Some(&t.name) == search.best.as_ref())
        {
            let _ = writeln!(
                doc,
                "\nBest: **{}** ({}; variant {}): `{}` {:.4}.",
                best.name,
                crate::search::describe(&best.settings),
                best.variant,
                search.objective,
                best.latest(&search.objective)
            );
        }
    }
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
    if let Some(search) = &summary.search {
        // Each trial's objective at the last rung it reached, labelled with its settings.
        let labels: Vec<String> = search
            .trials
            .iter()
            .map(|t| {
                format!(
                    "{}{} ({}) @ {}",
                    if Some(&t.name) == search.best.as_ref() {
                        "★ "
                    } else {
                        ""
                    },
                    t.name,
                    crate::search::describe(&t.settings),
                    t.rungs.last().map_or(0, |r| r.steps)
                )
            })
            .collect();
        let values: Vec<Option<f64>> = search
            .trials
            .iter()
            .map(|t| Some(t.latest(&search.objective)).filter(|v| !v.is_nan()))
            .collect();
        let _ = writeln!(doc, "\n![trials](plots/search.svg)");
        charts.push((
            "search".to_string(),
            dapt_eval::bar_chart(&search.objective, &labels, &values),
        ));
    }
    (doc, charts)
}
