//! The adaptation recipe (`dapt run CONFIG` with `recipe = "adapt"`): a pretrained model adapted to a
//! language end to end, every step cached by the content hash of its inputs and settings.
//!
//! 1. **import** the model (a GGUF file is imported once; an HF directory is used in place);
//! 2. **measure** its tokenizer on held-out text of the target and a reference language; when the
//!    target needs `extend_above` times the reference's tokens per word, the tokenizer is extended;
//! 3. **extend** the tokenizer with merges learned on target-language text, and **resize** the
//!    embeddings (new rows = mean of their old sub-token rows);
//! 4. **mix** each CPT stage from SQL components with token budgets (the mixer; stage 2 continues
//!    stage 1's components and checks its QA answers against stage 1's text), **pack** it;
//! 5. **train** CPT stage 1, CPT stage 2 and SFT (the model's chat template, loss on assistant turns)
//!    with LoRA, the new embedding rows trainable beside the adapters and the old ones frozen;
//! 6. **evaluate** the base, the extended untrained model and every trained stage (bits-per-byte by
//!    text set, multiple-choice tasks, generative tasks — code run in a sandbox, checked answers —,
//!    lang-swap of greedy generations) and write one side-by-side
//!    report with red flags where a watched metric got worse.
//!
//! ```text
//! OUT/base/                  the imported model (HF layout)
//! OUT/measure.json           compression of the base tokenizer and the decision to extend
//! OUT/tokenizer/             the extended tokenizer (tokenizer.json, new_tokens.json, compression.json)
//! OUT/extended/              the model with resized embeddings
//! OUT/mix/<stage>/           each CPT stage's documents; OUT/mix/reports.json (shares, grounding)
//! OUT/packed/<stage>/        packed rows of each stage (and of SFT)
//! OUT/train/<stage>/         model/, adapter/, train_log.jsonl, stage.json
//! OUT/eval/<checkpoint>.json what was measured of each checkpoint
//! OUT/report.md, report.html, plots/, report.json
//! OUT/run.json               the run manifest: version, seed, every step's identity and timing
//! ```
//!
//! A step whose identity is unchanged is skipped; one whose inputs or settings changed is redone with
//! everything that depends on it, and its old outputs are removed first.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dapt_core::hash::sub_seed;
use dapt_eval::{EvalPlan, EvalResults, Grouping, PromptSet, TextSet};
use dapt_mixer::mix::ComponentOptions;
use dapt_mixer::{Mix, MixOptions, MixReport, Pipeline};
use dapt_packer::{Compression, EncoderChoice, Overlong, PackOptions, PackSettings, TokenizerFile};
use dapt_sql::{SourceOptions, SourcesOptions, SqlSession};
use dapt_trainer::tch::Kind;
use dapt_trainer::{
    CausalLm, DeviceChoice, LoraOptions, Method, Objective, ResizeInit, StageOptions, StageReport,
    TrainConfig, TrainConfigOptions, TrainOptions, TrainSettings, Trainable,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{invalid, io_error, setting, write_json};
use crate::identity::{file_identity, identity};
use crate::pack::{PackInput, PackJob, PackMode, PackOutcome};
use crate::{Error, Result};

/// The recipe's name in a config's `recipe` key.
pub const RECIPE: &str = "adapt";

/// An adaptation run, as written in TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptOptions {
    /// `"adapt"`: selects this recipe.
    pub recipe: String,
    /// The run's one seed; every random decision derives from it. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The pretrained model: a `.gguf` file (imported once) or an HF model directory, relative to the
    /// config file.
    pub model: PathBuf,
    /// Where training and evaluation run: auto (CUDA when available), cpu or cuda. Default auto.
    #[serde(default)]
    pub device: DeviceChoice,
    /// bf16 autocast for training and evaluation on a CPU: `off`, `on` (refused on a processor
    /// without AMX or AVX512-BF16) or `auto` (on where the processor has them). CUDA stages train
    /// under their own `bf16` key either way. Default off.
    #[serde(default)]
    pub bf16_cpu: CpuBf16,
    /// The language the model is adapted to (ISO 639-1). Default "ru".
    #[serde(default = "default_target")]
    pub target_language: String,
    /// Tables for every query of the recipe (relative local URLs are relative to the config file).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceOptions>,
    /// Object-store settings for the sources (`aws_endpoint`, `aws_region`, …).
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// `[measure]`: the tokenizer check that decides whether to extend.
    pub measure: MeasureOptions,
    /// `[extend]`: how the tokenizer is extended (when the measurement says so).
    pub extend: ExtendOptions,
    /// `[pack]`: sequence length, EOS and pad tokens of the training rows.
    #[serde(default)]
    pub pack: PackOptions,
    /// `[[stage]]`: the continual-pretraining stages, in order.
    #[serde(rename = "stage")]
    pub stages: Vec<CptStageOptions>,
    /// `[sft]`: supervised fine-tuning after the last stage. Default none.
    #[serde(default)]
    pub sft: Option<SftOptions>,
    /// `[align]`: preference training (DPO or SimPO) after SFT. Default none.
    #[serde(default)]
    pub align: Option<AlignOptions>,
    /// `[eval]`: what is measured of every checkpoint.
    pub eval: AdaptEvalOptions,
}

/// The recipe's `bf16_cpu`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuBf16 {
    /// float32 on a CPU.
    #[default]
    Off,
    /// bf16 autocast on a CPU; refused on a processor without native bf16 instructions.
    On,
    /// bf16 autocast on a CPU that has AMX or AVX512-BF16, float32 on one without.
    Auto,
}

impl CpuBf16 {
    /// Whether a CPU run autocasts (false on CUDA): `on` is refused, naming the key, on a processor
    /// without native bf16 instructions.
    pub fn resolve(self, device: dapt_trainer::tch::Device) -> Result<bool> {
        if device.is_cuda() {
            return Ok(false);
        }
        Ok(match self {
            Self::Off => false,
            Self::On => {
                dapt_trainer::autocast::check_cpu_bf16("bf16_cpu")?;
                true
            }
            Self::Auto => dapt_trainer::autocast::cpu_bf16_native(),
        })
    }
}

fn default_target() -> String {
    "ru".into()
}

/// `[measure]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureOptions {
    /// Held-out text of the target language: a query returning `text` (measured, never learned from).
    pub target: String,
    /// Held-out text of the reference language (the one the model knows well): a query returning `text`.
    pub reference: String,
    /// Extend when the target's tokens per word exceed the reference's by this factor. Default 1.5.
    #[serde(default = "default_extend_above")]
    pub extend_above: f64,
}

fn default_extend_above() -> f64 {
    1.5
}

/// `[extend]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendOptions {
    /// Target-language text the new merges are learned on: a query returning `text`.
    pub sql: String,
    /// Merges (tokens) to add. Default 8000.
    #[serde(default = "default_new_tokens")]
    pub new_tokens: usize,
    /// A pair must occur this often to be merged. Default 2.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// How new embedding rows start: `mean` (of their old sub-token rows), `random`, or `frequency`
    /// (mean input rows; an untied output head biased by how often each new token follows its first
    /// piece in the extension text). Default mean.
    #[serde(default)]
    pub init: ResizeInit,
}

fn default_new_tokens() -> usize {
    8000
}

fn default_min_frequency() -> u64 {
    2
}

/// One `[[stage]]` of continual pretraining.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CptStageOptions {
    /// Name (a directory name).
    pub name: String,
    /// Tokens of the stage's mix (counted with the recipe's tokenizer).
    pub tokens: u64,
    /// `[[stage.component]]`: the mix's SQL components and their weights (see `dapt mix`); a
    /// component with the same name and SQL as one of an earlier stage continues where it stopped.
    #[serde(rename = "component")]
    pub components: Vec<ComponentOptions>,
    /// lora (default) or full.
    #[serde(default = "default_method")]
    pub method: Method,
    /// `[stage.train]`: steps, batch, learning rate and schedule.
    #[serde(default)]
    pub train: TrainOptions,
    /// `[stage.lora]`: rank, alpha and target modules.
    #[serde(default)]
    pub lora: LoraOptions,
}

fn default_method() -> Method {
    Method::Lora
}

/// `[sft]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftOptions {
    /// Chats: a query returning `id` and `messages` (JSON `[{role, content}]`) or `id`, `prompt` and
    /// `response`.
    pub sql: String,
    /// Examples packed together by best-fit-decreasing. Default 64.
    #[serde(default = "default_window")]
    pub window: usize,
    /// An example longer than a row: drop (default) or truncate.
    #[serde(default)]
    pub overlong: Overlong,
    /// lora (default) or full.
    #[serde(default = "default_method")]
    pub method: Method,
    /// `[sft.train]` (the objective is always `sft`: loss on assistant turns).
    #[serde(default)]
    pub train: TrainOptions,
    /// `[sft.lora]`.
    #[serde(default)]
    pub lora: LoraOptions,
}

fn default_window() -> usize {
    64
}

/// `[align]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignOptions {
    /// Preference pairs: a query returning `id`, `prompt`, `chosen` and `rejected` (or `id`,
    /// `chosen` and `rejected` as JSON message lists that differ only in the last turn), rendered
    /// in the model's chat template.
    pub sql: String,
    /// Held-out pairs (same columns): reward accuracy and margin before and after, in the report.
    #[serde(default)]
    pub heldout_sql: Option<String>,
    /// Pairs packed together by best-fit-decreasing. Default 64.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Tokens per row of pairs (a pair is two chats side by side). Default: twice `pack.seq_len`.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// lora (default: the reference is the same weights with the adapters off) or full.
    #[serde(default = "default_method")]
    pub method: Method,
    /// `[align.train]`: `objective = "dpo"` (default) or `"simpo"`, `beta`, `loss`,
    /// `label_smoothing`, `simpo_gamma` and the usual keys.
    #[serde(default)]
    pub train: TrainOptions,
    /// `[align.lora]`.
    #[serde(default)]
    pub lora: LoraOptions,
}

impl AlignOptions {
    /// The training options with a preference objective (`dpo` unless `simpo` is given).
    fn train_options(&self) -> Result<TrainOptions> {
        let objective = match self.train.objective {
            Objective::Cpt => Objective::Dpo,
            o if o.is_preference() => o,
            other => {
                return Err(setting(
                    "align.train.objective",
                    format!("{other:?}: alignment trains `dpo` or `simpo`"),
                ))
            }
        };
        Ok(TrainOptions {
            objective,
            ..self.train.clone()
        })
    }
}

/// `[eval]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptEvalOptions {
    /// Held-out texts for bits-per-byte: name → a query returning `text` (`bpb/NAME` in the report).
    #[serde(default)]
    pub texts: BTreeMap<String, String>,
    /// Tasks: name → the task file, its format and how many of its examples to use. Multiple-choice
    /// tasks report accuracy; generative ones (humaneval, gsm8k, bigbench-gen, mera, basket) pass@1
    /// or exact match.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskOptions>,
    /// Generative tasks: tokens generated per problem at most. Default 128.
    #[serde(default = "default_task_tokens")]
    pub task_max_new_tokens: usize,
    /// Generative tasks: Python interpreter that runs generated code in the sandbox. Default
    /// `python3`.
    #[serde(default = "default_python")]
    pub python: String,
    /// Generative tasks: wall-clock seconds per sandboxed program. Default 10.
    #[serde(default = "default_run_timeout")]
    pub run_timeout: u64,
    /// Target-language prompts whose greedy continuations are checked for lang-swap and shown.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Tokens generated per prompt. Default 32.
    #[serde(default = "default_new_tokens_per_prompt")]
    pub max_new_tokens: usize,
    /// Longest scored input in tokens. Default 1024.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Requests per forward pass (results do not depend on it). Default 8.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Metrics (substrings of their names) whose worsening against the base is a red flag. Default
    /// `["/en"]`: what the model knew.
    #[serde(default = "default_watch")]
    pub watch: Vec<String>,
    /// A watched bits-per-byte may grow by this share before it is flagged. Default 0.03.
    #[serde(default = "default_relative_tolerance")]
    pub relative_tolerance: f64,
    /// A watched accuracy may fall by this much (absolute) before it is flagged. Default 0.05.
    #[serde(default = "default_absolute_tolerance")]
    pub absolute_tolerance: f64,
}

/// One task of `[eval.tasks]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// The task file, relative to the config file.
    pub path: PathBuf,
    /// Its format: a multiple-choice one (dapt, hellaswag, arc, mmlu, bigbench, mera-choice) or a
    /// generative one (humaneval, gsm8k, bigbench-gen, mera, basket). Default: bigbench for `.json`,
    /// dapt for other files.
    #[serde(default)]
    pub format: Option<String>,
    /// Use the first this many examples (0: all). Default 0.
    #[serde(default)]
    pub limit: usize,
}

fn default_task_tokens() -> usize {
    128
}

fn default_python() -> String {
    "python3".into()
}

fn default_run_timeout() -> u64 {
    10
}

fn default_new_tokens_per_prompt() -> usize {
    32
}

fn default_max_length() -> usize {
    1024
}

fn default_eval_batch() -> usize {
    8
}

fn default_watch() -> Vec<String> {
    vec!["/en".into()]
}

fn default_relative_tolerance() -> f64 {
    0.03
}

fn default_absolute_tolerance() -> f64 {
    0.05
}

/// A validated adaptation run.
#[derive(Clone, Debug)]
pub struct AdaptSettings {
    /// The options as read (paths resolved later, against the config's directory).
    pub options: AdaptOptions,
    /// The config file (named in the report).
    pub config: PathBuf,
    /// Its directory: relative paths resolve against it.
    pub base_dir: PathBuf,
    /// The Ballista cluster (`df://HOST:PORT`) the recipe's queries run on, or none (here); not
    /// part of any step's identity: the rows are the same.
    pub cluster: Option<String>,
}

/// Whether a config file names this recipe (`recipe = "adapt"`).
pub fn is_adapt_config(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let value: toml::Value = toml::from_str(&text).map_err(|source| Error::Config {
        path: path.to_path_buf(),
        source,
    })?;
    match value.get("recipe") {
        None => Ok(false),
        Some(toml::Value::String(name)) if name == RECIPE => Ok(true),
        Some(other) => Err(setting(
            format!("{}: recipe", path.display()),
            format!("{other} is not a recipe; the recipes are \"{RECIPE}\" and (without `recipe`) the demo pipeline"),
        )),
    }
}

impl AdaptSettings {
    /// Reads and validates a config file; errors name the file and key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let options: AdaptOptions = toml::from_str(&text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let settings = Self {
            options,
            config: path.to_path_buf(),
            base_dir,
            cluster: None,
        };
        settings.validate().map_err(|e| match e {
            Error::Setting { key, reason } => Error::Setting {
                key: format!("{}: {key}", path.display()),
                reason,
            },
            other => other,
        })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<()> {
        let o = &self.options;
        if o.recipe != RECIPE {
            return Err(setting("recipe", format!("must be \"{RECIPE}\"")));
        }
        if dapt_core::lang::parse_language(&o.target_language).is_none() {
            return Err(setting(
                "target_language",
                format!("unknown language {:?}", o.target_language),
            ));
        }
        for (key, sql) in [
            ("measure.target", &o.measure.target),
            ("measure.reference", &o.measure.reference),
            ("extend.sql", &o.extend.sql),
        ] {
            if sql.trim().is_empty() {
                return Err(setting(key, "must not be empty"));
            }
        }
        if !(o.measure.extend_above.is_finite() && o.measure.extend_above > 0.0) {
            return Err(setting("measure.extend_above", "must be a positive number"));
        }
        if o.extend.new_tokens == 0 {
            return Err(setting("extend.new_tokens", "must be positive"));
        }
        PackSettings::try_from(o.pack.clone())?;
        if o.stages.is_empty() {
            return Err(setting("stage", "the recipe needs at least one [[stage]]"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, stage) in o.stages.iter().enumerate() {
            let key = |k: &str| format!("stage[{i}].{k}");
            if stage.name.is_empty()
                || stage.name == "sft"
                || stage.name == "align"
                || stage.name == "mix"
                || !stage
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(setting(
                    key("name"),
                    format!(
                        "{:?}: use letters, digits, _ and - (and none of \"sft\", \"align\", \"mix\")",
                        stage.name
                    ),
                ));
            }
            if !names.insert(stage.name.as_str()) {
                return Err(setting(
                    key("name"),
                    format!("{:?} is used twice", stage.name),
                ));
            }
            if stage.tokens == 0 {
                return Err(setting(key("tokens"), "must be positive"));
            }
            TrainSettings::try_from(stage.train.clone()).map_err(invalid(key("train")))?;
            stage.lora.validate().map_err(invalid(key("lora")))?;
        }
        if let Some(sft) = &o.sft {
            if sft.sql.trim().is_empty() {
                return Err(setting("sft.sql", "must not be empty"));
            }
            if sft.window == 0 {
                return Err(setting("sft.window", "must be positive"));
            }
            TrainSettings::try_from(sft.train.clone()).map_err(invalid("sft.train"))?;
            sft.lora.validate().map_err(invalid("sft.lora"))?;
        }
        if let Some(align) = &o.align {
            if align.sql.trim().is_empty() {
                return Err(setting("align.sql", "must not be empty"));
            }
            if align.window == 0 {
                return Err(setting("align.window", "must be positive"));
            }
            if align.seq_len == Some(0) {
                return Err(setting("align.seq_len", "must be positive"));
            }
            TrainSettings::try_from(align.train_options()?).map_err(invalid("align.train"))?;
            align.lora.validate().map_err(invalid("align.lora"))?;
        }
        let e = &o.eval;
        if e.texts.is_empty() && e.tasks.is_empty() && e.prompts.is_empty() {
            return Err(setting(
                "eval",
                "names no texts, tasks or prompts to measure",
            ));
        }
        if e.batch_size == 0 || e.max_length < 2 {
            return Err(setting(
                "eval",
                "batch_size must be positive and max_length at least 2",
            ));
        }
        for (name, task) in &e.tasks {
            let path = self.resolve(&task.path);
            if !path.is_file() {
                return Err(setting(
                    format!("eval.tasks.{name}.path"),
                    format!("{} is not a file", path.display()),
                ));
            }
            if let Some(format) = &task.format {
                format
                    .parse::<dapt_eval::AnyFormat>()
                    .map_err(|reason| setting(format!("eval.tasks.{name}.format"), reason))?;
            }
        }
        if e.task_max_new_tokens == 0 || e.run_timeout == 0 {
            return Err(setting(
                "eval",
                "task_max_new_tokens and run_timeout must be positive",
            ));
        }
        Ok(())
    }

    /// A path of the config, relative to its directory (absolute, `..` resolved lexically).
    fn resolve(&self, path: &Path) -> PathBuf {
        dapt_core::location::resolve_local(&self.base_dir.join(path))
    }

    /// The recipe's sources with local paths resolved (relative ones against the config's directory).
    fn sources(&self) -> SourcesOptions {
        let mut sources = SourcesOptions {
            storage: self.options.storage.clone(),
            cluster: self.cluster.clone(),
            ..Default::default()
        };
        for (name, source) in &self.options.sources {
            let mut source = source.clone();
            if !source.url.contains("://") {
                source.url = self.resolve(Path::new(&source.url)).display().to_string();
            }
            sources.sources.insert(name.clone(), source);
        }
        sources
    }
}

/// The identity of the sources' contents: local files (and the files a local `dir/*.ext` glob
/// matches) by their bytes; anything else (object-store URLs, directories) by its URL.
fn sources_identity(sources: &SourcesOptions) -> Result<String> {
    let mut parts = Vec::new();
    for (name, source) in &sources.sources {
        let path = Path::new(&source.url);
        let mut contents = Vec::new();
        if path.is_file() {
            contents.push(file_identity(path)?);
        } else if let (false, Some(dir), Some(pattern)) = (
            source.url.contains("://"),
            path.parent(),
            path.file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.contains('*')),
        ) {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io_error(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| wildcard(pattern, n))
                })
                .collect();
            files.sort();
            for file in files {
                contents.push(format!("{}:{}", file.display(), file_identity(&file)?));
            }
        } else {
            contents.push(source.url.clone());
        }
        parts.push((name, contents, &source.format, &source.columns));
    }
    Ok(identity(
        "the recipe's sources",
        &(parts, &sources.storage),
    )?)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if pieces.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// One step of the run as the manifest records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step name (`import`, `measure`, `extend`, `mix stage1`, …).
    pub name: String,
    /// Content hash of the step's inputs and settings.
    pub identity: String,
    /// True when a finished step with this identity was reused.
    pub reused: bool,
    /// Wall time of the step in this run.
    pub seconds: f64,
}

/// The run's steps: which are done (by identity), timing, the manifest's list.
struct Steps {
    dir: PathBuf,
    total: usize,
    records: Vec<StepRecord>,
}

impl Steps {
    /// Runs `work` unless the step is recorded with `identity`; before it runs, the step's `outputs`
    /// (files or directories) are removed when they were written for another identity.
    fn run(
        &mut self,
        name: &str,
        identity: &str,
        outputs: &[&Path],
        work: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let record = self.dir.join(format!("{name}.json"));
        let index = self.records.len() + 1;
        let done = std::fs::read_to_string(&record)
            .ok()
            .and_then(|text| serde_json::from_str::<StepRecord>(&text).ok())
            .filter(|r| r.identity == identity);
        if let Some(previous) = done {
            tracing::info!(step = name, "step {index}/{}: up to date", self.total);
            self.records.push(StepRecord {
                reused: true,
                ..previous
            });
            return Ok(());
        }
        tracing::info!(step = name, "step {index}/{}", self.total);
        // An output of another identity (or of an interrupted step of another identity) goes.
        let started_identity = self.dir.join(format!("{name}.started"));
        let started = std::fs::read_to_string(&started_identity).ok();
        if started.as_deref() != Some(identity) {
            for output in outputs {
                remove(output)?;
            }
            std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
            std::fs::write(&started_identity, identity).map_err(io_error(&started_identity))?;
        }
        let clock = Instant::now();
        work()?;
        let record_value = StepRecord {
            name: name.to_string(),
            identity: identity.to_string(),
            reused: false,
            seconds: clock.elapsed().as_secs_f64(),
        };
        write_json(&record, &record_value)?;
        let _ = std::fs::remove_file(&started_identity);
        tracing::info!(
            step = name,
            seconds = record_value.seconds as u64,
            "step done"
        );
        self.records.push(record_value);
        Ok(())
    }
}

fn remove(path: &Path) -> Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).map_err(io_error(path))
    } else if path.exists() {
        std::fs::remove_file(path).map_err(io_error(path))
    } else {
        Ok(())
    }
}

/// The base tokenizer's compression on held-out text and the decision, as `OUT/measure.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// The language adapted to.
    pub target_language: String,
    /// Compression on the held-out target-language text.
    pub target: CompressionFigures,
    /// Compression on the held-out reference-language text.
    pub reference: CompressionFigures,
    /// Target tokens per word over reference tokens per word.
    pub ratio: f64,
    /// The config's threshold for `ratio`.
    pub extend_above: f64,
    /// Whether the tokenizer is extended (`ratio > extend_above`).
    pub extend: bool,
}

/// The figures of [`Compression`] that the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompressionFigures {
    /// Documents measured.
    pub documents: u64,
    /// Their whitespace-separated words.
    pub words: u64,
    /// Their tokens.
    pub tokens: u64,
    /// Characters per token.
    pub chars_per_token: f64,
    /// Tokens per word.
    pub tokens_per_word: f64,
}

impl From<&Compression> for CompressionFigures {
    fn from(c: &Compression) -> Self {
        Self {
            documents: c.documents,
            words: c.words,
            tokens: c.tokens,
            chars_per_token: c.chars_per_token,
            tokens_per_word: c.tokens_per_word,
        }
    }
}

/// The extended tokenizer's compression on the same held-out text, as `OUT/tokenizer/compression.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Extension {
    /// Tokens appended.
    pub new_tokens: usize,
    /// Vocabulary size after the extension.
    pub vocab_size: usize,
    /// Compression on the held-out target-language text.
    pub target: CompressionFigures,
    /// Compression on the held-out reference-language text.
    pub reference: CompressionFigures,
}

/// What a run did (`OUT/report.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdaptReport {
    /// The config file.
    pub config: String,
    /// The run's seed.
    pub seed: u64,
    /// The tokenizer measurement and the decision.
    pub measurement: Measurement,
    /// The extension, when the tokenizer was extended.
    pub extension: Option<Extension>,
    /// Checkpoints in order (base, extended, stages…, sft).
    pub checkpoints: Vec<String>,
    /// `bpb/NAME` of every checkpoint, by text set.
    pub bits_per_byte: BTreeMap<String, Vec<f64>>,
    /// Relative change of every text set's bits-per-byte from the base to the last CPT stage.
    pub bits_per_byte_change: BTreeMap<String, f64>,
    /// The checkpoint `bits_per_byte_change` compares the base with (the last CPT stage).
    pub compared: String,
    /// Accuracy of every task, per checkpoint.
    pub accuracy: BTreeMap<String, Vec<f64>>,
    /// Lang-swap rate per checkpoint (when prompts were given).
    pub lang_swap: Vec<f64>,
    /// Watched metrics that got worse than the base beyond the tolerances.
    pub red_flags: Vec<dapt_eval::RedFlag>,
    /// Every CPT stage's mix report.
    pub mix: Vec<MixReport>,
    /// Every training stage's report.
    pub stages: Vec<StageReport>,
    /// `OUT/report.md`.
    pub report_md: PathBuf,
    /// `OUT/report.html`.
    pub report_html: PathBuf,
}

/// One model to evaluate.
struct Checkpoint {
    label: String,
    dir: PathBuf,
    identity: String,
}

/// Texts of a query over the sources.
fn texts(
    runtime: &tokio::runtime::Runtime,
    sources: &SourcesOptions,
    query: &str,
) -> Result<Vec<String>> {
    let rows = runtime.block_on(async {
        let session = SqlSession::over_sources(sources, None).await?;
        dapt_sql::string_rows(&session, query, &[&["text"]]).await
    })?;
    Ok(rows.1.into_iter().map(|mut row| row.remove(0)).collect())
}

/// Runs the recipe into `out`; `device` overrides the config's.
pub fn run(
    settings: &AdaptSettings,
    out: &Path,
    device: Option<DeviceChoice>,
) -> Result<AdaptReport> {
    let o = &settings.options;
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let out = std::path::absolute(out).map_err(io_error(out))?;
    let device_choice = device.unwrap_or(o.device);
    let device = device_choice.device()?;
    // Part of every training stage's and evaluation's identity (through their options).
    let bf16_cpu = o.bf16_cpu.resolve(device)?;
    tracing::info!(config = %settings.config.display(), out = %out.display(), seed = o.seed, ?device, bf16_cpu, "adapt");
    let runtime = crate::runtime()?;
    let sources = settings.sources();
    let sources_id = sources_identity(&sources)?;
    let checkpoints_count =
        o.stages.len() + usize::from(o.sft.is_some()) + usize::from(o.align.is_some()) + 2;
    let align_packs = o
        .align
        .as_ref()
        .map_or(0, |a| 1 + usize::from(a.heldout_sql.is_some()));
    let mut steps = Steps {
        dir: out.join("steps"),
        // import, measure, extend, resize, a mix and a pack per stage, the chats, the pairs,
        // train, evals
        total: 4
            + 2 * o.stages.len()
            + usize::from(o.sft.is_some())
            + align_packs
            + 1
            + checkpoints_count,
        records: Vec::new(),
    };

    // 1. The base model.
    let model_path = settings.resolve(&o.model);
    let base_dir = out.join("base");
    let (base_dir, base_identity) = if model_path.is_file() {
        let import = crate::import::ImportSettings {
            gguf: model_path.clone(),
            out: base_dir.clone(),
            weights: dapt_trainer::WeightType::F32,
        };
        let clock = Instant::now();
        let bar = crate::progress::bar(0, "import", "tensors");
        let report = crate::import::import_gguf(&import, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        steps.records.push(StepRecord {
            name: "import".into(),
            identity: report.identity.clone(),
            reused: report.reused,
            seconds: clock.elapsed().as_secs_f64(),
        });
        (base_dir, report.identity)
    } else if model_path.join("config.json").is_file() {
        let mut parts = vec![file_identity(&model_path.join("config.json"))?];
        for file in dapt_trainer::weights::weight_files(&model_path)? {
            parts.push(file_identity(&file)?);
        }
        let id = identity("the base model", &parts)?;
        steps.records.push(StepRecord {
            name: "import".into(),
            identity: id.clone(),
            reused: true,
            seconds: 0.0,
        });
        (model_path.clone(), id)
    } else {
        return Err(setting(
            "model",
            format!(
                "{} is neither a .gguf file nor an HF model directory (with config.json)",
                model_path.display()
            ),
        ));
    };
    let base_tokenizer_path = base_dir.join("tokenizer.json");
    let base_tokenizer = TokenizerFile::load_with(&base_tokenizer_path, EncoderChoice::Auto)?;
    let base_vocab = dapt_trainer::ModelConfig::load(&base_dir.join("config.json"))?.vocab_size;

    // 2. Measure.
    let measure_path = out.join("measure.json");
    let measure_id = identity(
        "the measurement",
        &(base_tokenizer.sha256(), &o.measure, &sources_id),
    )?;
    let target_texts = texts(&runtime, &sources, &o.measure.target)?;
    let reference_texts = texts(&runtime, &sources, &o.measure.reference)?;
    steps.run("measure", &measure_id, &[&measure_path], || {
        let target = dapt_packer::measure(&base_tokenizer, &target_texts)?;
        let reference = dapt_packer::measure(&base_tokenizer, &reference_texts)?;
        let ratio = target.tokens_per_word / reference.tokens_per_word.max(f64::MIN_POSITIVE);
        let measurement = Measurement {
            target_language: o.target_language.clone(),
            target: (&target).into(),
            reference: (&reference).into(),
            ratio,
            extend_above: o.measure.extend_above,
            extend: ratio > o.measure.extend_above,
        };
        write_json(&measure_path, &measurement)
    })?;
    let measurement: Measurement = read_json(&measure_path)?;
    tracing::info!(
        target = measurement.target.tokens_per_word,
        reference = measurement.reference.tokens_per_word,
        ratio = measurement.ratio,
        extend = measurement.extend,
        "tokens per word of the base tokenizer on held-out text"
    );

    // 3. Extend + resize.
    let tokenizer_dir = out.join("tokenizer");
    let extended_dir = out.join("extended");
    let (model_dir, model_identity, tokenizer_path, extension) = if measurement.extend {
        let extend_id = identity(
            "the tokenizer extension",
            &(
                base_tokenizer.sha256(),
                &o.extend.sql,
                o.extend.new_tokens,
                o.extend.min_frequency,
                &sources_id,
                &measure_id,
                // The extension directory holds token_counts.json since this marker.
                "token_counts",
            ),
        )?;
        steps.run("extend", &extend_id, &[&tokenizer_dir], || {
            let learn = texts(&runtime, &sources, &o.extend.sql)?;
            tracing::info!(
                texts = learn.len(),
                new_tokens = o.extend.new_tokens,
                "extending the tokenizer"
            );
            let extended = crate::tokenizer::extend_into(
                &base_tokenizer,
                Some(&base_dir),
                &learn,
                o.extend.new_tokens,
                o.extend.min_frequency,
                &tokenizer_dir,
            )?;
            let tokenizer = extended.tokenizer;
            let figures = Extension {
                new_tokens: extended.new_tokens.len(),
                vocab_size: tokenizer.vocab_size(),
                target: (&dapt_packer::measure(&tokenizer, &target_texts)?).into(),
                reference: (&dapt_packer::measure(&tokenizer, &reference_texts)?).into(),
            };
            write_json(&tokenizer_dir.join("compression.json"), &figures)
        })?;
        let extension: Extension = read_json(&tokenizer_dir.join("compression.json"))?;
        let tokenizer_path = tokenizer_dir.join("tokenizer.json");
        let resize_id = identity(
            "the embedding resize",
            &(&base_identity, &extend_id, o.extend.init, o.seed),
        )?;
        steps.run("resize", &resize_id, &[&extended_dir], || {
            let tmp = out.join("extended.tmp");
            remove(&tmp)?;
            let settings = crate::model::ResizeSettings {
                model: base_dir.clone(),
                tokenizer: tokenizer_dir.clone(),
                new_tokens: None,
                init: o.extend.init,
                seed: sub_seed(o.seed, "resize", 0),
            };
            crate::model::resize_into(&settings, &tmp)?;
            std::fs::rename(&tmp, &extended_dir).map_err(io_error(&extended_dir))
        })?;
        (
            extended_dir.clone(),
            resize_id,
            tokenizer_path,
            Some(extension),
        )
    } else {
        steps.records.push(StepRecord {
            name: "extend".into(),
            identity: "not needed".into(),
            reused: false,
            seconds: 0.0,
        });
        (
            base_dir.clone(),
            base_identity.clone(),
            base_tokenizer_path.clone(),
            None,
        )
    };
    let tokenizer = std::sync::Arc::new(TokenizerFile::load_with(
        &tokenizer_path,
        EncoderChoice::Auto,
    )?);

    // 4. Mix every CPT stage, then pack each.
    let mix_dir = out.join("mix");
    let pipeline = Pipeline {
        stages: o
            .stages
            .iter()
            .map(|stage| {
                let options = MixOptions {
                    seed: o.seed,
                    total_tokens: Some(stage.tokens),
                    tokenizer: tokenizer_path.clone(),
                    encoder: EncoderChoice::Auto,
                    target_language: Some(o.target_language.clone()),
                    shuffle_window: 4096,
                    documents_per_shard: 50_000,
                    sources: BTreeMap::new(),
                    storage: BTreeMap::new(),
                    tokenizers: BTreeMap::new(),
                    classifiers: BTreeMap::new(),
                    components: stage.components.clone(),
                };
                let mut mix = Mix::from_options(options, &settings.config)
                    .map_err(invalid(format_args!("stage {}", stage.name)))?;
                // Named by the stage, not the config file, so that identities follow the contents.
                mix.path = format!("stage {}", stage.name);
                mix.sources = sources.clone();
                Ok((stage.name.clone(), mix))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    // Stage k's documents are bound to the mixes of stages 0..=k (a later stage's weights leave them
    // be); every stage is replayed so that the next one continues where it stopped.
    let mut mix_ids = Vec::new();
    let mut mix_reports: Vec<MixReport> = Vec::new();
    let mut state = dapt_mixer::run::PipelineState::default();
    // Every stage's mix has this tokenizer (same path and encoder).
    let mut tokenizers = match pipeline.stages.first() {
        Some((_, mix)) => dapt_mixer::run::TokenizerCache::with(mix, tokenizer.clone()),
        None => dapt_mixer::run::TokenizerCache::default(),
    };
    for (k, (name, mix)) in pipeline.stages.iter().enumerate() {
        let id = identity(
            "the mix",
            &(
                tokenizer.sha256(),
                &pipeline.stages[..=k],
                &sources_id,
                o.seed,
            ),
        )?;
        let dir = mix_dir.join(name);
        let manifest = std::fs::read(dir.join(dapt_core::manifest::MANIFEST_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<dapt_core::Manifest>(&bytes).ok());
        let reused = manifest
            .as_ref()
            .is_some_and(|m| m.complete && m.config_hash == id);
        if manifest.is_some() && !reused {
            remove(&dir)?;
        }
        tracing::info!(step = %format!("mix-{name}"), reused, "mixing");
        let clock = Instant::now();
        let report = runtime.block_on(async {
            let location = dapt_core::Location::parse(&dir.display().to_string())?;
            let mut output = dapt_core::OutputDir::open(location, "mix", &id).await?;
            Ok::<_, Error>(
                dapt_mixer::run::run_stage(name, mix, &mut tokenizers, &mut output, &mut state)
                    .await?,
            )
        })?;
        for component in &report.components {
            if let Some(g) = &component.grounding {
                tracing::info!(
                    stage = %name,
                    component = %component.plan.name,
                    grounded_share = g.grounded_share,
                    "QA answers found in earlier stages' text"
                );
            }
        }
        steps.records.push(StepRecord {
            name: format!("mix-{name}"),
            identity: id.clone(),
            reused,
            seconds: clock.elapsed().as_secs_f64(),
        });
        mix_ids.push(id);
        mix_reports.push(report);
    }
    write_json(&mix_dir.join("reports.json"), &mix_reports)?;
    let pack_settings = PackSettings::try_from(o.pack.clone())?;
    let mut packed = Vec::new();
    for (stage, mix_id) in o.stages.iter().zip(&mix_ids) {
        let dir = out.join("packed").join(&stage.name);
        let job = PackJob {
            input: PackInput::Documents {
                url: mix_dir.join(&stage.name).display().to_string(),
            },
            tokenizer: tokenizer_path.clone(),
            encoder: EncoderChoice::Auto,
            settings: pack_settings.clone(),
            seed: o.seed,
            out: dir.display().to_string(),
            mode: PackMode::Cpt,
            overwrite: false,
            shard: dapt_ingest::Job::ALL,
        };
        let pack_id = identity("the packed stage", &(mix_id, job.identity(&tokenizer)?))?;
        steps.run(&format!("pack-{}", stage.name), &pack_id, &[&dir], || {
            let outcome = job.run(std::sync::Arc::new(|_, _| {}))?;
            if let PackOutcome::Cpt { stats, .. } = outcome {
                tracing::info!(stage = %stage.name, rows = stats.rows, "packed");
            }
            Ok(())
        })?;
        packed.push(dir);
    }
    // Chats and preference pairs, rendered in the model's chat template and packed whole.
    let template = model_dir.join("tokenizer_config.json");
    let template_id = if template.is_file() {
        Some(file_identity(&template)?)
    } else {
        None
    };
    let chat_template = template.is_file().then(|| template.display().to_string());
    let mut pack_whole = |step: &str,
                          what: &str,
                          query: &str,
                          dir: &Path,
                          settings: PackSettings,
                          mode: PackMode|
     -> Result<()> {
        let job = PackJob {
            input: PackInput::Inline {
                query: query.to_string(),
                sources: sources.clone(),
            },
            tokenizer: tokenizer_path.clone(),
            encoder: EncoderChoice::Auto,
            settings,
            seed: o.seed,
            out: dir.display().to_string(),
            mode,
            overwrite: false,
            shard: dapt_ingest::Job::ALL,
        };
        let pack_id = identity(
            what,
            &(job.identity(&tokenizer)?, &sources_id, &template_id),
        )?;
        steps.run(step, &pack_id, &[dir], || {
            if let PackOutcome::Sft(stats) | PackOutcome::Preference(stats) =
                job.run(std::sync::Arc::new(|_, _| {}))?
            {
                tracing::info!(
                    step,
                    examples = stats.examples,
                    dropped = stats.dropped,
                    rows = stats.rows,
                    "packed whole"
                );
            }
            Ok(())
        })
    };
    let sft_dir = out.join("packed").join("sft");
    if let Some(sft) = &o.sft {
        pack_whole(
            "pack-sft",
            "the packed chats",
            &sft.sql,
            &sft_dir,
            pack_settings.clone(),
            PackMode::Sft {
                chat_template: chat_template.clone(),
                window: sft.window,
                overlong: sft.overlong,
            },
        )?;
    }
    let align_dir = out.join("packed").join("align");
    let align_heldout_dir = out.join("packed").join("align-heldout");
    if let Some(align) = &o.align {
        let mut parts = vec![("pack-align", &align.sql, &align_dir)];
        if let Some(query) = &align.heldout_sql {
            parts.push(("pack-align-heldout", query, &align_heldout_dir));
        }
        for (step, query, dir) in parts {
            pack_whole(
                step,
                "the packed pairs",
                query,
                dir,
                PackSettings {
                    seq_len: align.seq_len.unwrap_or(2 * pack_settings.seq_len),
                    ..pack_settings.clone()
                },
                PackMode::Preference {
                    chat_template: chat_template.clone(),
                    window: align.window,
                },
            )?;
        }
    }

    // 5. Train: every CPT stage, then SFT, each from the one before.
    let train_dir = out.join("train");
    let freeze = measurement.extend.then_some(base_vocab);
    let mut stage_options: Vec<StageOptions> = o
        .stages
        .iter()
        .zip(&packed)
        .map(|(stage, dir)| StageOptions {
            name: stage.name.clone(),
            data: dir.display().to_string(),
            heldout: None,
            method: stage.method,
            trainable: Trainable::All,
            freeze_embeddings_below: freeze,
            train: stage.train.clone(),
            lora: stage.lora.clone(),
        })
        .collect();
    if let Some(sft) = &o.sft {
        stage_options.push(StageOptions {
            name: "sft".into(),
            data: sft_dir.display().to_string(),
            heldout: None,
            method: sft.method,
            trainable: Trainable::All,
            freeze_embeddings_below: freeze,
            train: TrainOptions {
                objective: Objective::Sft,
                ..sft.train.clone()
            },
            lora: sft.lora.clone(),
        });
    }
    if let Some(align) = &o.align {
        stage_options.push(StageOptions {
            name: "align".into(),
            data: align_dir.display().to_string(),
            heldout: align
                .heldout_sql
                .is_some()
                .then(|| align_heldout_dir.display().to_string()),
            method: align.method,
            trainable: Trainable::All,
            freeze_embeddings_below: freeze,
            train: align.train_options()?,
            lora: align.lora.clone(),
        });
    }
    for stage in &mut stage_options {
        stage.train.bf16_cpu |= bf16_cpu;
    }
    let train_config = TrainConfig {
        options: TrainConfigOptions {
            seed: sub_seed(o.seed, "train", 0),
            model: Some(model_dir.clone()),
            init: None,
            device: device_choice,
            prefetch_rows: 4096,
            storage: BTreeMap::new(),
            stages: stage_options.clone(),
        },
        base_dir: out.clone(),
        replace_stale: true,
        dist: None,
        zero1: false,
        keep_final_checkpoint: false,
    };
    let clock = Instant::now();
    let mut bars: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    let stage_reports = dapt_trainer::run_stages(&train_config, &train_dir, |stage, metrics| {
        let steps_of = stage_options
            .iter()
            .find(|s| s.name == stage)
            .map_or(0, |s| s.train.steps);
        let bar = bars.entry(stage.to_string()).or_insert_with(|| {
            let bar = crate::progress::bar(steps_of as u64, stage, "steps");
            bar.set_position(metrics.step as u64);
            bar
        });
        crate::progress::train_step(bar, stage, metrics, steps_of);
        if metrics.step + 1 == steps_of {
            bar.finish_and_clear();
        }
    })?;
    let trained_now: f64 = stage_reports.iter().map(|r| r.seconds).sum();
    steps.records.push(StepRecord {
        name: "train".into(),
        identity: identity(
            "the trained stages",
            &stage_reports.iter().map(|r| &r.hash).collect::<Vec<_>>(),
        )?,
        // Skipped stages report the seconds they took when they trained.
        reused: clock.elapsed().as_secs_f64() < 0.5 * trained_now,
        seconds: clock.elapsed().as_secs_f64(),
    });
    crate::log_peak_rss("train");

    // 6. Evaluate every checkpoint.
    let mut checkpoints = vec![Checkpoint {
        label: "base".into(),
        dir: base_dir.clone(),
        identity: base_identity.clone(),
    }];
    if measurement.extend {
        checkpoints.push(Checkpoint {
            label: "extended".into(),
            dir: extended_dir.clone(),
            identity: model_identity.clone(),
        });
    }
    for report in &stage_reports {
        checkpoints.push(Checkpoint {
            label: report.name.clone(),
            dir: train_dir.join(&report.name).join("model"),
            identity: report.hash.clone(),
        });
    }
    let eval_texts: Vec<TextSet> = o
        .eval
        .texts
        .iter()
        .map(|(name, query)| {
            Ok(TextSet {
                name: name.clone(),
                texts: texts(&runtime, &sources, query)?,
                grouping: Grouping::None,
            })
        })
        .collect::<Result<_>>()?;
    let mut tasks = Vec::new();
    let mut generative = Vec::new();
    let mut task_ids = Vec::new();
    for (name, task) in &o.eval.tasks {
        let path = settings.resolve(&task.path);
        let format = task
            .format
            .as_deref()
            .map(str::parse::<dapt_eval::AnyFormat>)
            .transpose()
            .map_err(|reason| setting(format!("eval.tasks.{name}.format"), reason))?;
        let limit = (task.limit > 0).then_some(task.limit);
        match dapt_eval::load_any_task(name, &path, format, limit)? {
            dapt_eval::AnyTask::Choice(set) => tasks.push(set),
            dapt_eval::AnyTask::Generative(set) => generative.push(set),
        }
        task_ids.push((
            name.clone(),
            file_identity(&path)?,
            task.limit,
            task.format.clone(),
        ));
    }
    let sandbox = if generative.iter().any(dapt_eval::needs_sandbox) {
        Some(dapt_eval::Sandbox::new(
            &o.eval.python,
            dapt_eval::SandboxLimits {
                wall_seconds: o.eval.run_timeout,
                cpu_seconds: o.eval.run_timeout,
                ..Default::default()
            },
        )?)
    } else {
        None
    };
    // What the measurements depend on (the tasks by their contents, not their paths; the report's
    // tolerances are applied later).
    let e = &o.eval;
    let eval_id = identity(
        "the evaluation",
        &(
            (
                &e.texts,
                &e.prompts,
                e.max_new_tokens,
                e.max_length,
                e.batch_size,
                (e.task_max_new_tokens, e.run_timeout),
            ),
            &o.pack.eos_token,
            &o.target_language,
            &sources_id,
            &task_ids,
            o.seed,
            bf16_cpu,
        ),
    )?;
    let eval_dir = out.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(io_error(&eval_dir))?;
    let mut results = Vec::new();
    for checkpoint in &checkpoints {
        let path = eval_dir.join(format!("{}.json", checkpoint.label));
        let id = identity(
            "the checkpoint's evaluation",
            &(&checkpoint.identity, &eval_id),
        )?;
        steps.run(&format!("eval-{}", checkpoint.label), &id, &[&path], || {
            let (_vs, model) = CausalLm::load(&checkpoint.dir, device, Kind::Float)?;
            let tokenizer = TokenizerFile::load_with(
                &checkpoint.dir.join("tokenizer.json"),
                EncoderChoice::Auto,
            )?;
            let prefix = tokenizer.id_of(&o.pack.eos_token)?;
            let mut plan = EvalPlan::new(
                &checkpoint.label,
                &checkpoint.dir.display().to_string(),
                prefix,
                o.eval.max_length,
            );
            plan.batch_size = o.eval.batch_size;
            plan.seed = o.seed;
            plan.bf16 = bf16_cpu;
            plan.texts = eval_texts.clone();
            plan.tasks = tasks.clone();
            plan.generative = generative.clone();
            plan.sandbox = sandbox.clone();
            plan.generative_settings.options.max_tokens = o.eval.task_max_new_tokens;
            if !o.eval.prompts.is_empty() {
                plan.prompts = Some(PromptSet {
                    prompts: o.eval.prompts.clone(),
                    options: dapt_eval::GenerateOptions {
                        max_tokens: o.eval.max_new_tokens,
                        ..Default::default()
                    },
                    target_language: o.target_language.clone(),
                    min_letters: 12,
                });
            }
            let prompts = (o.eval.prompts.len()
                + generative.iter().map(|t| t.examples.len()).sum::<usize>())
                as u64;
            let bar = crate::progress::bar(prompts, &checkpoint.label, "prompts");
            let evaluation = plan.execute(&model, &tokenizer, device, |done, _| {
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            write_json(&path, &evaluation)
        })?;
        results.push(EvalResults::load(&path)?);
    }
    crate::log_peak_rss("eval");

    // 7. The report.
    let report = write_report(
        settings,
        &out,
        &measurement,
        extension.as_ref(),
        &mix_reports,
        &stage_reports,
        &results,
        &train_dir,
    )?;
    let manifest = json!({
        "dapt": env!("CARGO_PKG_VERSION"),
        "config": settings.config.display().to_string(),
        "config_sha256": file_identity(&settings.config)?,
        "seed": o.seed,
        "device": format!("{device:?}"),
        "bf16_cpu": bf16_cpu,
        "base_model": base_dir.display().to_string(),
        "tokenizer_sha256": tokenizer.sha256(),
        "sources": sources_id,
        "steps": steps.records,
        "peak_rss_mb": crate::peak_rss_mb(),
    });
    write_json(&out.join("run.json"), &manifest)?;
    Ok(report)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })
}

fn percent(from: f64, to: f64) -> f64 {
    100.0 * (to - from) / from
}

/// Writes `report.md` (charts in `plots/`), `report.html` and `report.json`.
#[allow(clippy::too_many_arguments)]
fn write_report(
    settings: &AdaptSettings,
    out: &Path,
    measurement: &Measurement,
    extension: Option<&Extension>,
    mix_reports: &[MixReport],
    stage_reports: &[StageReport],
    results: &[EvalResults],
    train_dir: &Path,
) -> Result<AdaptReport> {
    let o = &settings.options;
    let curves: Vec<dapt_eval::LossCurve> = stage_reports
        .iter()
        .map(|stage| {
            let log = train_dir.join(&stage.name).join("train_log.jsonl");
            let text = std::fs::read_to_string(&log).map_err(io_error(&log))?;
            let points = text
                .lines()
                .filter_map(|l| serde_json::from_str::<dapt_trainer::StepMetrics>(l).ok())
                .map(|m| (m.step as f64, m.loss))
                .collect();
            Ok(dapt_eval::LossCurve {
                name: stage.name.clone(),
                points,
            })
        })
        .collect::<Result<_>>()?;
    let options = dapt_eval::ReportOptions {
        general: o.eval.watch.clone(),
        absolute_tolerance: o.eval.absolute_tolerance,
        relative_tolerance: o.eval.relative_tolerance,
    };
    let markdown = dapt_eval::build_report(results, &curves, &options, false);
    let html = dapt_eval::build_report(results, &curves, &options, true);

    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    let mut bits_per_byte: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for name in o.eval.texts.keys() {
        bits_per_byte.insert(
            name.clone(),
            results
                .iter()
                .map(|r| {
                    r.bits_per_byte
                        .get(name)
                        .map_or(f64::NAN, |s| s.bits_per_byte)
                })
                .collect(),
        );
    }
    // Base against the last CPT stage (before SFT changes the model's register).
    let last_cpt = labels
        .iter()
        .rposition(|l| o.stages.iter().any(|s| &s.name == l))
        .unwrap_or(labels.len() - 1);
    let bits_per_byte_change: BTreeMap<String, f64> = bits_per_byte
        .iter()
        .map(|(name, values)| (name.clone(), percent(values[0], values[last_cpt]) / 100.0))
        .collect();
    let mut accuracy: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for name in o.eval.tasks.keys() {
        let generative = results.iter().any(|r| r.generative.contains_key(name));
        let values = results
            .iter()
            .map(|r| match (r.tasks.get(name), r.generative.get(name)) {
                (Some(t), _) => t.acc,
                (None, Some(g)) => g.headline(),
                (None, None) => f64::NAN,
            })
            .collect();
        let key = match results.iter().find_map(|r| r.generative.get(name)) {
            Some(g) if generative => format!("{name} ({})", g.metric),
            _ => name.clone(),
        };
        accuracy.insert(key, values);
    }
    let lang_swap: Vec<f64> = results
        .iter()
        .filter_map(|r| r.generation.as_ref().map(|g| g.lang_swap.rate))
        .collect();

    // The recipe's summary above the comparison.
    let mut summary = String::new();
    summary.push_str(&format!(
        "# Adapting {} to `{}`\n\nConfig `{}`, seed {}.\n\n## Tokenizer\n\n",
        o.model.display(),
        o.target_language,
        settings.config.display(),
        o.seed
    ));
    summary.push_str(&format!(
        "Base tokenizer on held-out text: {} tokens/word in `{}` ({} documents), {:.3} in the reference ({} documents); ratio {:.2} {} the threshold {:.2}: **{}**.\n\n",
        format_args!("{:.3}", measurement.target.tokens_per_word),
        o.target_language,
        measurement.target.documents,
        measurement.reference.tokens_per_word,
        measurement.reference.documents,
        measurement.ratio,
        if measurement.extend { "above" } else { "within" },
        measurement.extend_above,
        if measurement.extend { "extended" } else { "not extended" },
    ));
    if let Some(e) = extension {
        summary.push_str(&format!(
            "| held-out text | base tokens/word | extended tokens/word | change |\n|---|---|---|---|\n| {} | {:.3} | {:.3} | {:+.1}% |\n| reference | {:.3} | {:.3} | {:+.1}% |\n\n{} tokens added (vocabulary {}).\n\n",
            o.target_language,
            measurement.target.tokens_per_word,
            e.target.tokens_per_word,
            percent(measurement.target.tokens_per_word, e.target.tokens_per_word),
            measurement.reference.tokens_per_word,
            e.reference.tokens_per_word,
            percent(measurement.reference.tokens_per_word, e.reference.tokens_per_word),
            e.new_tokens,
            e.vocab_size,
        ));
    }
    summary.push_str("## Outcome\n\n");
    for (name, values) in &bits_per_byte {
        summary.push_str(&format!(
            "- bits-per-byte `{name}`: base {:.4} → {} {:.4} ({:+.1}%)\n",
            values[0],
            labels[last_cpt],
            values[last_cpt],
            100.0 * bits_per_byte_change[name]
        ));
    }
    for (name, values) in &accuracy {
        let cells: Vec<String> = labels
            .iter()
            .zip(values)
            .map(|(l, v)| format!("{l} {v:.3}"))
            .collect();
        summary.push_str(&format!("- accuracy `{name}`: {}\n", cells.join(", ")));
    }
    if !lang_swap.is_empty() {
        let cells: Vec<String> = labels
            .iter()
            .zip(&lang_swap)
            .map(|(l, v)| format!("{l} {v:.3}"))
            .collect();
        summary.push_str(&format!(
            "- lang-swap rate of greedy continuations: {}\n",
            cells.join(", ")
        ));
    }
    summary.push_str("\n## Training\n\n| stage | method | steps | target tokens | trainable parameters | first loss | last loss | seconds |\n|---|---|---|---|---|---|---|---|\n");
    for s in stage_reports {
        summary.push_str(&format!(
            "| {} | {:?} | {} | {} | {} | {:.4} | {:.4} | {:.0} |\n",
            s.name,
            s.method,
            s.steps,
            s.target_tokens,
            s.trainable_parameters,
            s.first_loss,
            s.last_loss,
            s.seconds
        ));
    }
    for s in stage_reports {
        if let (Some(before), Some(after)) =
            (&s.heldout_preference_before, &s.heldout_preference_after)
        {
            summary.push_str(&format!(
                "\nPreference training `{}` on {} held-out pairs: reward accuracy {:.3} → {:.3}, reward margin {:.3} → {:.3}, chosen log-probability {:.2} → {:.2}, rejected {:.2} → {:.2}.\n",
                s.name,
                after.pairs,
                before.reward_accuracy,
                after.reward_accuracy,
                before.reward_margin,
                after.reward_margin,
                before.chosen_logps,
                after.chosen_logps,
                before.rejected_logps,
                after.rejected_logps
            ));
        }
    }
    summary.push_str("\n## Mixes\n\n| stage | component | documents | tokens | target share | achieved share | QA grounded in earlier stages |\n|---|---|---|---|---|---|---|\n");
    for m in mix_reports {
        for c in &m.components {
            summary.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} | {:.3} | {} |\n",
                m.stage,
                c.plan.name,
                c.documents,
                c.tokens,
                c.target_share,
                c.achieved_share,
                c.grounding.as_ref().map_or("–".to_string(), |g| format!(
                    "{:.1}% of {} answers",
                    100.0 * g.grounded_share,
                    g.answers
                )),
            ));
        }
    }
    summary.push_str("\n## Sample generations\n\n");
    for r in results {
        if let Some(g) = &r.generation {
            summary.push_str(&format!(
                "**{}** (lang-swap rate {:.3})\n\n",
                r.label, g.lang_swap.rate
            ));
            for record in g.outputs.iter().take(3) {
                summary.push_str(&format!(
                    "- `{}` → {}\n",
                    record.prompt.replace('`', "'"),
                    record.output.replace('\n', " ").trim()
                ));
            }
            summary.push('\n');
        }
    }
    let md_path = out.join("report.md");
    let document = format!(
        "{summary}\n{}",
        markdown
            .document
            .replacen("# dapt report", "## Side by side", 1)
    );
    std::fs::write(&md_path, document).map_err(io_error(&md_path))?;
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(io_error(&plots))?;
    for (name, svg) in &markdown.charts {
        let path = plots.join(format!("{name}.svg"));
        std::fs::write(&path, svg).map_err(io_error(&path))?;
    }
    let html_path = out.join("report.html");
    let summary_html = format!(
        "<pre style=\"white-space:pre-wrap\">{}</pre>\n",
        escape_html(&summary)
    );
    let page = html.document.replacen(
        "<h1>dapt report</h1>\n",
        &format!("<h1>dapt report</h1>\n{summary_html}"),
        1,
    );
    std::fs::write(&html_path, page).map_err(io_error(&html_path))?;

    let compared = labels[last_cpt].clone();
    let report = AdaptReport {
        config: settings.config.display().to_string(),
        seed: o.seed,
        measurement: measurement.clone(),
        extension: extension.cloned(),
        checkpoints: labels,
        bits_per_byte,
        bits_per_byte_change,
        compared,
        accuracy,
        lang_swap,
        red_flags: markdown.red_flags,
        mix: mix_reports.to_vec(),
        stages: stage_reports.to_vec(),
        report_md: md_path,
        report_html: html_path,
    };
    write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell_glob_of_one_directory() {
        assert!(wildcard("*.jsonl", "manpages-ru.jsonl"));
        assert!(wildcard(
            "part-*-of-*.parquet",
            "part-00001-of-00004.parquet"
        ));
        assert!(!wildcard("*.jsonl", "manpages-ru.jsonl.gz"));
        assert!(!wildcard("a*b*c", "acb"));
        assert!(wildcard("exact", "exact") && !wildcard("exact", "exactly"));
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("recipe.toml");
        std::fs::write(&path, text).unwrap_or_default();
        path
    }

    const MINIMAL: &str = r#"
recipe = "adapt"
model = "model.gguf"
[measure]
target = "SELECT text FROM ru"
reference = "SELECT text FROM en"
[extend]
sql = "SELECT text FROM ru"
[[stage]]
name = "stage1"
tokens = 1000
[[stage.component]]
name = "ru"
weight = 1.0
sql = "SELECT id, text FROM ru"
[eval]
prompts = ["Привет"]
"#;

    #[test]
    fn configs_are_told_apart_and_bad_keys_are_named() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_error("a temporary directory"))?;
        let path = write(dir.path(), MINIMAL);
        assert!(is_adapt_config(&path)?);
        let settings = AdaptSettings::load(&path)?;
        assert_eq!(settings.options.extend.new_tokens, 8000);
        assert_eq!(settings.options.stages[0].method, Method::Lora);
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.toml");
        assert!(!is_adapt_config(&demo)?);
        // The shipped recipes load (their task files come with the test data).
        for name in [
            "ru-adapt.toml",
            "ru-adapt-small.toml",
            "code-math-adapt.toml",
        ] {
            let config = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            let settings = AdaptSettings::load(&config)?;
            assert!(!settings.options.eval.tasks.is_empty(), "{name}");
        }
        let code_math = AdaptSettings::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/code-math-adapt.toml"),
        )?;
        assert_eq!(
            code_math.options.eval.tasks["humaneval"].format.as_deref(),
            Some("humaneval")
        );
        let bad_format = write(
            dir.path(),
            &MINIMAL.replace(
                "[eval]\n",
                "[eval]\ntasks.t = { path = \"recipe.toml\", format = \"humaneva\" }\n",
            ),
        );
        let error = AdaptSettings::load(&bad_format).unwrap_err().to_string();
        assert!(
            error.contains("eval.tasks.t.format") && error.contains("humaneva"),
            "{error}"
        );

        let misspelt = write(
            dir.path(),
            &MINIMAL.replace("tokens = 1000", "tokenz = 1000"),
        );
        let error = AdaptSettings::load(&misspelt)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(error.contains("recipe.toml"), "{error}");
        let source = AdaptSettings::load(&misspelt)
            .err()
            .and_then(|e| std::error::Error::source(&e).map(std::string::ToString::to_string));
        assert!(source.unwrap_or_default().contains("tokenz"));

        let reserved = write(
            dir.path(),
            &MINIMAL.replace("name = \"stage1\"", "name = \"sft\""),
        );
        let error = AdaptSettings::load(&reserved)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("stage[0].name"), "{error}");

        let other = write(
            dir.path(),
            &MINIMAL.replace("recipe = \"adapt\"", "recipe = \"cook\""),
        );
        let error = is_adapt_config(&other)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("\"cook\" is not a recipe"), "{error}");
        Ok(())
    }
}
