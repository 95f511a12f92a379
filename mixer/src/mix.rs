//! Mix definitions: a TOML file of SQL components with token-budget weights, and pipelines of
//! stages that each point at a mix with a token budget.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dapt_encoder::EncoderChoice;
use dapt_sql::{SourceOptions, SourcesOptions};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A mix file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixOptions {
    /// Seed of every sampling decision.
    #[serde(default)]
    pub seed: u64,
    /// Tokens in the mix (a pipeline stage's `tokens` overrides it).
    #[serde(default)]
    pub total_tokens: Option<u64>,
    /// The tokenizer.json that counts tokens (relative to the mix file).
    pub tokenizer: PathBuf,
    /// Encoder backend: auto, hf or fast.
    #[serde(default)]
    pub encoder: EncoderChoice,
    /// Language the adaptation targets (ISO 639-1, e.g. "ru"): the lang-swap attribution reports the
    /// share of each component in other languages.
    #[serde(default)]
    pub target_language: Option<String>,
    /// Documents shuffled together in the output (bounded window).
    #[serde(default = "default_window")]
    pub shuffle_window: usize,
    /// Documents per output shard.
    #[serde(default = "default_shard")]
    pub documents_per_shard: usize,
    /// Tables, as in a sources file (relative local URLs are relative to the mix file).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceOptions>,
    /// Object-store settings.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// Tokenizers for `token_count` in component SQL.
    #[serde(default)]
    pub tokenizers: BTreeMap<String, PathBuf>,
    /// Classifiers for `classify` in component SQL.
    #[serde(default)]
    pub classifiers: BTreeMap<String, PathBuf>,
    /// The components.
    #[serde(default, rename = "component")]
    pub components: Vec<ComponentOptions>,
}

fn default_window() -> usize {
    4096
}

fn default_shard() -> usize {
    50_000
}

/// One component of a mix.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentOptions {
    /// Name (letters, digits, `_`, `-`), unique in the mix.
    pub name: String,
    /// Share of the mix's tokens (normalised over components).
    pub weight: f64,
    /// Query returning `id` and `text` (and optionally `source`, or a QA `answer` column).
    #[serde(default)]
    pub sql: Option<String>,
    /// Or a file holding the query (relative to the mix file).
    #[serde(default)]
    pub sql_file: Option<PathBuf>,
    /// Cap on repetition: the component's documents are used at most this many times.
    #[serde(default)]
    pub max_epochs: Option<f64>,
    /// Fewer available tokens than this is an error.
    #[serde(default)]
    pub min_tokens: u64,
    /// `qa` or `instruct`: checked by the QA grounding report against earlier stages.
    #[serde(default)]
    pub kind: Option<String>,
    /// With `kind = "qa"|"instruct"` in a later stage: answers whose grounding in earlier stages'
    /// text is below this (0–1) are left out (synthetic QA keeps to what Stage 1 taught).
    #[serde(default)]
    pub min_grounding: Option<f64>,
}

/// A validated component.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// Component name (a `component` column value in the output).
    pub name: String,
    /// Normalised weight.
    pub weight: f64,
    /// Read-only SQL returning `id`, `text` (and optionally `source`, `answer`).
    pub sql: String,
    /// Most epochs over the component a stage may take (none: no limit).
    pub max_epochs: Option<f64>,
    /// Fewest tokens the component must offer (fewer: an error).
    pub min_tokens: u64,
    /// A QA/instruct component whose answers are checked against earlier stages' text.
    pub qa: bool,
    /// Answers grounded less than this are left out (QA/instruct components only).
    pub min_grounding: Option<f64>,
}

/// A validated mix.
#[derive(Clone, Debug, Serialize)]
pub struct Mix {
    /// The file it came from.
    pub path: String,
    /// Seed of the sampling.
    pub seed: u64,
    /// Tokens of the mix (a pipeline's stage sets its own).
    pub total_tokens: Option<u64>,
    /// `tokenizer.json` that counts tokens.
    pub tokenizer: PathBuf,
    /// Encoder backend of that tokenizer.
    pub encoder: EncoderChoice,
    /// Language the model is adapted to, for the lang-swap attribution.
    pub target_language: Option<String>,
    /// Documents shuffled together in the output.
    pub shuffle_window: usize,
    /// Documents per output shard.
    pub documents_per_shard: usize,
    /// The tables the components' SQL reads.
    pub sources: SourcesOptions,
    /// The components, weights normalised.
    pub components: Vec<Component>,
}

fn setting(path: &Path, key: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        key: format!("{}: {key}", path.display()),
        reason: reason.into(),
    }
}

fn relative(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl Mix {
    /// Reads and validates a mix file; errors name the file, key and reason.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let options: MixOptions = toml::from_str(&text).map_err(|source| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        Self::from_options(options, path)
    }

    /// Validates options read from `path`.
    pub fn from_options(options: MixOptions, path: &Path) -> Result<Self> {
        let base = path.parent().unwrap_or(Path::new("."));
        if options.components.is_empty() {
            return Err(setting(
                path,
                "component",
                "a mix needs at least one [[component]]",
            ));
        }
        if options.shuffle_window == 0 || options.documents_per_shard == 0 {
            return Err(setting(
                path,
                "shuffle_window/documents_per_shard",
                "must be positive",
            ));
        }
        if let Some(language) = &options.target_language {
            if dapt_sql::functions::lang::parse_language(language).is_none() {
                return Err(setting(
                    path,
                    "target_language",
                    format!("unknown language {language:?}"),
                ));
            }
        }
        let total_weight: f64 = options.components.iter().map(|c| c.weight).sum();
        let mut components = Vec::new();
        for (i, c) in options.components.iter().enumerate() {
            let key = |k: &str| format!("component[{i}].{k}");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(setting(
                    path,
                    &key("name"),
                    format!("{:?}: use letters, digits, _ and -", c.name),
                ));
            }
            if components.iter().any(|o: &Component| o.name == c.name) {
                return Err(setting(
                    path,
                    &key("name"),
                    format!("{:?} appears twice", c.name),
                ));
            }
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(setting(path, &key("weight"), "must be a positive number"));
            }
            if let Some(epochs) = c.max_epochs {
                if !(epochs.is_finite() && epochs > 0.0) {
                    return Err(setting(path, &key("max_epochs"), "must be positive"));
                }
            }
            let sql = match (&c.sql, &c.sql_file) {
                (Some(sql), None) => sql.clone(),
                (None, Some(file)) => {
                    let file = relative(base, file);
                    std::fs::read_to_string(&file).map_err(|e| {
                        setting(path, &key("sql_file"), format!("{}: {e}", file.display()))
                    })?
                }
                _ => {
                    return Err(setting(
                        path,
                        &key("sql"),
                        "give exactly one of sql and sql_file",
                    ))
                }
            };
            let qa = match c.kind.as_deref() {
                None | Some("pretrain") => false,
                Some("qa") | Some("instruct") => true,
                Some(other) => {
                    return Err(setting(
                        path,
                        &key("kind"),
                        format!("{other:?}: use pretrain, qa or instruct"),
                    ))
                }
            };
            if let Some(min) = c.min_grounding {
                if !qa {
                    return Err(setting(
                        path,
                        &key("min_grounding"),
                        "applies to kind = \"qa\" or \"instruct\" components",
                    ));
                }
                if !(0.0..=1.0).contains(&min) {
                    return Err(setting(
                        path,
                        &key("min_grounding"),
                        format!("must be between 0 and 1, is {min}"),
                    ));
                }
            }
            components.push(Component {
                name: c.name.clone(),
                weight: c.weight / total_weight,
                sql: sql.trim().trim_end_matches(';').to_string(),
                max_epochs: c.max_epochs,
                min_tokens: c.min_tokens,
                qa,
                min_grounding: c.min_grounding,
            });
        }
        if (total_weight - 1.0).abs() > 1e-6 {
            tracing::warn!(
                "{}: component weights sum to {total_weight}; normalised to 1",
                path.display()
            );
        }
        let mut sources = SourcesOptions {
            sources: options.sources.clone(),
            storage: options.storage.clone(),
            tokenizers: options.tokenizers.clone(),
            encoder: options.encoder,
            classifiers: options.classifiers.clone(),
            cluster: None,
        };
        for file in sources
            .tokenizers
            .values_mut()
            .chain(sources.classifiers.values_mut())
        {
            *file = relative(base, file);
        }
        for (name, source) in &mut sources.sources {
            if source.url.is_empty() {
                return Err(setting(path, &format!("sources.{name}.url"), "missing"));
            }
            if !source.url.contains("://") && !Path::new(&source.url).is_absolute() {
                let joined = relative(base, Path::new(&source.url));
                let joined = std::fs::canonicalize(&joined).unwrap_or(joined);
                let mut url = joined.display().to_string();
                if source.url.ends_with('/') && !url.ends_with('/') {
                    url.push('/');
                }
                source.url = url;
            }
        }
        Ok(Self {
            path: path.display().to_string(),
            seed: options.seed,
            total_tokens: options.total_tokens,
            tokenizer: relative(base, &options.tokenizer),
            encoder: options.encoder,
            target_language: options.target_language,
            shuffle_window: options.shuffle_window,
            documents_per_shard: options.documents_per_shard,
            sources,
            components,
        })
    }
}

/// A pipeline file: stages run in order, each a mix with a token budget.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineOptions {
    /// Seed of every stage (overrides the mixes' seeds, so that a component shared by two stages
    /// continues in the same order).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The stages, in order.
    #[serde(rename = "stage")]
    pub stages: Vec<StageOptions>,
}

/// One stage of a pipeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOptions {
    /// Stage name (the output subdirectory).
    pub name: String,
    /// The mix file (relative to the pipeline file).
    pub mix: PathBuf,
    /// Tokens in this stage.
    pub tokens: u64,
}

/// A validated pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Stage names and their mixes, in order.
    pub stages: Vec<(String, Mix)>,
}

impl Pipeline {
    /// Reads a pipeline file, or a single mix file as a one-stage pipeline named `mix`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: toml::Value = toml::from_str(&text).map_err(|source| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        if value.get("stage").is_none() {
            let mix = Mix::load(path)?;
            if mix.total_tokens.is_none() {
                return Err(setting(path, "total_tokens", "missing"));
            }
            return Ok(Self {
                stages: vec![("mix".to_string(), mix)],
            });
        }
        // Parsed again from the text (not the value) so that errors keep their line numbers.
        let options: PipelineOptions = toml::from_str(&text).map_err(|source| Error::Toml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut stages: Vec<(String, Mix)> = Vec::new();
        for (i, stage) in options.stages.iter().enumerate() {
            if stage.tokens == 0 {
                return Err(setting(
                    path,
                    &format!("stage[{i}].tokens"),
                    "must be positive",
                ));
            }
            if stages.iter().any(|(name, _)| name == &stage.name) || stage.name.is_empty() {
                return Err(setting(
                    path,
                    &format!("stage[{i}].name"),
                    format!("{:?} is empty or appears twice", stage.name),
                ));
            }
            let mut mix = Mix::load(&relative(base, &stage.mix))?;
            mix.total_tokens = Some(stage.tokens);
            if let Some(seed) = options.seed {
                mix.seed = seed;
            }
            stages.push((stage.name.clone(), mix));
        }
        if stages.is_empty() {
            return Err(setting(
                path,
                "stage",
                "a pipeline needs at least one [[stage]]",
            ));
        }
        Ok(Self { stages })
    }
}
