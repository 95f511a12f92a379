//! What to measure of one checkpoint, and the one function that measures it: [`EvalPlan::execute`].
//! `dapt eval`, the demo pipeline (`dapt run`) and `dapt sweep` build a plan and call it, so perplexity,
//! bits-per-byte, multiple choice and the generation + lang-swap loop each run through one path.
use std::collections::BTreeMap;
use std::path::Path;

use dapt_core::{Location, PackedMetadata};
use dapt_encoder::TokenizerFile;
use dapt_trainer::tch::Device;
use dapt_trainer::CausalLm;

use crate::{
    Error, EvalResults, GenerateOptions, GenerationRecord, GenerationResults, McExample, Result,
    Scorer,
};

/// How a text set is also scored in groups.
#[derive(Clone, Debug, PartialEq)]
pub enum Grouping {
    /// The whole set only, under its name.
    None,
    /// Also per value of a field (one key per text): `NAME/VALUE`.
    Keys(Vec<String>),
    /// Also per language (`dapt_core::lang::lang_id`): `NAME/LANG`.
    Language,
    /// Per language only, under the language code, for languages with at least this many texts.
    LanguageOnly {
        /// The minimum.
        min_texts: usize,
    },
}

/// Held-out texts for bits-per-byte.
#[derive(Clone, Debug)]
pub struct TextSet {
    /// Name in the results (`bits_per_byte.NAME`).
    pub name: String,
    /// The texts.
    pub texts: Vec<String>,
    /// Extra groups to score separately.
    pub grouping: Grouping,
}

/// A multiple-choice task.
#[derive(Clone, Debug)]
pub struct TaskSet {
    /// Name in the results (`tasks.NAME`).
    pub name: String,
    /// The questions.
    pub examples: Vec<McExample>,
}

/// A task file's format: scored by log-likelihood or generated and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyFormat {
    /// Multiple choice.
    Choice(crate::TaskFormat),
    /// Generative.
    Generative(crate::GenFormat),
}

impl std::str::FromStr for AnyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Self::Generative)
            .or_else(|_| s.parse().map(Self::Choice))
            .map_err(|_: String| {
                format!(
                    "unknown task format {s:?} (multiple choice: dapt, hellaswag, arc, mmlu, bigbench, mera-choice; \
                     generative: humaneval, gsm8k, bigbench-gen, mera, basket)"
                )
            })
    }
}

/// A task read from its file.
#[derive(Clone, Debug)]
pub enum AnyTask {
    /// Multiple choice.
    Choice(TaskSet),
    /// Generative.
    Generative(crate::GenTaskSet),
}

/// Reads the task `name` from `path` in `format` (default: BIG-bench for `.json`, dapt JSONL
/// otherwise), keeping its first `limit` examples when given.
pub fn load_any_task(
    name: &str,
    path: &Path,
    format: Option<AnyFormat>,
    limit: Option<usize>,
) -> Result<AnyTask> {
    let format = format.unwrap_or_else(|| AnyFormat::Choice(crate::TaskFormat::guess(path)));
    Ok(match format {
        AnyFormat::Choice(format) => {
            let mut examples = crate::load_task(path, format)?;
            if let Some(limit) = limit {
                examples.truncate(limit);
            }
            AnyTask::Choice(TaskSet {
                name: name.to_string(),
                examples,
            })
        }
        AnyFormat::Generative(format) => {
            let mut task = crate::load_generative_task(name, path, format)?;
            if let Some(limit) = limit {
                task.examples.truncate(limit);
            }
            AnyTask::Generative(task)
        }
    })
}

/// Prompts to generate from, and the language their continuations should be in.
#[derive(Clone, Debug)]
pub struct PromptSet {
    /// The prompts.
    pub prompts: Vec<String>,
    /// How to generate.
    pub options: GenerateOptions,
    /// The language continuations should be in (ISO 639-1).
    pub target_language: String,
    /// Lang-swap: spans with fewer letters are not judged.
    pub min_letters: usize,
}

/// Everything to measure of one checkpoint.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    /// Name of the checkpoint in reports.
    pub label: String,
    /// Where the model came from (recorded in `eval.json`).
    pub model: String,
    /// The adapter applied on the model, if any (recorded in `eval.json`).
    pub adapter: Option<String>,
    /// Packed held-out rows for perplexity: name → a `dapt pack` output.
    pub packed: Vec<(String, Location)>,
    /// Held-out texts for bits-per-byte.
    pub texts: Vec<TextSet>,
    /// Multiple-choice tasks.
    pub tasks: Vec<TaskSet>,
    /// Few-shot examples per question, drawn from the task's other examples.
    pub num_fewshot: usize,
    /// Prompts for generation and lang-swap.
    pub prompts: Option<PromptSet>,
    /// Generative tasks (code, math, baskets).
    pub generative: Vec<crate::GenTaskSet>,
    /// How their completions are generated (`max_length` is the plan's).
    pub generative_settings: crate::GenerativeSettings,
    /// Where code runs; needed when a generative task runs code.
    pub sandbox: Option<crate::Sandbox>,
    /// Generative prompts (few-shot examples included) are sent as one user message rendered with
    /// this chat template, the assistant's turn opened (for instruct models).
    pub chat_template: Option<std::sync::Arc<dapt_packer::ChatTemplate>>,
    /// Requests per forward pass (results do not depend on it).
    pub batch_size: usize,
    /// Longest scored input in tokens.
    pub max_length: usize,
    /// Token that conditions the first token of a text (and stands in for an empty context).
    pub prefix: u32,
    /// Seed of few-shot draws and sampling.
    pub seed: u64,
    /// Run the model under bf16 autocast: matrix products and attention in bf16 (on a CPU, one
    /// with AMX or AVX512-BF16; refused elsewhere). Scores move by about 0.1% and the CPU runs
    /// about 1.8× as fast.
    pub bf16: bool,
}

impl EvalPlan {
    /// A plan that measures nothing yet, for `model` with the defaults of `dapt eval`.
    pub fn new(label: &str, model: &str, prefix: u32, max_length: usize) -> Self {
        Self {
            label: label.to_string(),
            model: model.to_string(),
            adapter: None,
            packed: Vec::new(),
            texts: Vec::new(),
            tasks: Vec::new(),
            num_fewshot: 0,
            prompts: None,
            generative: Vec::new(),
            generative_settings: crate::GenerativeSettings {
                options: GenerateOptions {
                    max_tokens: 256,
                    ..GenerateOptions::default()
                },
                samples: 1,
                num_fewshot: 0,
                max_length,
                batch_size: 8,
            },
            sandbox: None,
            chat_template: None,
            batch_size: 16,
            max_length,
            prefix,
            seed: 0,
            bf16: false,
        }
    }

    /// Whether the plan measures anything.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
            && self.texts.is_empty()
            && self.tasks.is_empty()
            && self.prompts.is_none()
            && self.generative.is_empty()
    }

    /// Measures `model` with `tokenizer`; `on_prompt` is called after each generation (lang-swap
    /// prompts and generative problems alike).
    pub fn execute(
        &self,
        model: &CausalLm,
        tokenizer: &TokenizerFile,
        device: Device,
        on_prompt: impl FnMut(usize, usize),
    ) -> Result<EvalResults> {
        if self.bf16 && !device.is_cuda() {
            dapt_trainer::autocast::check_cpu_bf16("bf16")?;
        }
        dapt_trainer::autocast::autocast(device, self.bf16, || {
            self.execute_all(model, tokenizer, device, on_prompt)
        })
    }

    fn execute_all(
        &self,
        model: &CausalLm,
        tokenizer: &TokenizerFile,
        device: Device,
        mut on_prompt: impl FnMut(usize, usize),
    ) -> Result<EvalResults> {
        if self.is_empty() {
            return Err(Error::Empty {
                what: "the plan names no packed rows, texts, tasks or prompts".into(),
            });
        }
        let scorer = Scorer {
            model,
            device,
            max_length: self.max_length,
            batch_size: self.batch_size,
        };
        let mut results = EvalResults {
            label: self.label.clone(),
            model: self.model.clone(),
            adapter: self.adapter.clone(),
            tokenizer_sha256: tokenizer.sha256().to_string(),
            bf16: self.bf16,
            ..Default::default()
        };
        for (name, location) in &self.packed {
            let rows = packed_rows(location, model, tokenizer)?;
            let p = crate::perplexity(model, &rows, self.batch_size, device)?;
            tracing::info!(
                name,
                perplexity = p.perplexity,
                tokens = p.tokens,
                "perplexity"
            );
            results.perplexity.insert(name.clone(), p);
        }
        for set in &self.texts {
            for (group, texts) in set.groups() {
                let score = crate::score_texts(&scorer, tokenizer, &texts, self.prefix)?;
                tracing::info!(
                    group,
                    bits_per_byte = score.bits_per_byte,
                    documents = score.documents,
                    "bits per byte"
                );
                results.bits_per_byte.insert(group, score);
            }
        }
        for task in &self.tasks {
            let result = crate::evaluate_task(
                &scorer,
                tokenizer,
                &task.examples,
                self.num_fewshot,
                self.seed,
                self.prefix,
            )?;
            tracing::info!(
                name = task.name,
                acc = result.acc,
                acc_norm = result.acc_norm,
                examples = result.examples,
                "task"
            );
            results.tasks.insert(task.name.clone(), result);
        }
        for task in &self.generative {
            let settings = crate::GenerativeSettings {
                max_length: self.max_length,
                batch_size: self.batch_size,
                ..self.generative_settings.clone()
            };
            if crate::needs_sandbox(task) && self.sandbox.is_none() {
                return Err(Error::Setting {
                    key: "sandbox".into(),
                    reason: format!("task {} runs code: a sandbox is needed", task.name),
                });
            }
            let mut contexts = crate::contexts(task, settings.num_fewshot, self.seed);
            if let Some(template) = &self.chat_template {
                for context in &mut contexts {
                    *context = template
                        .render(
                            &[dapt_packer::Message {
                                role: "user".into(),
                                content: std::mem::take(context),
                            }],
                            true,
                        )
                        .map_err(|e| Error::Setting {
                            key: "chat_template".into(),
                            reason: e.to_string(),
                        })?;
                }
            }
            let mut done = 0;
            let total = task.examples.len();
            let completions = crate::generate_completions(
                model,
                tokenizer,
                task,
                &contexts,
                &settings,
                self.prefix,
                device,
                &mut || {
                    done += 1;
                    on_prompt(done, total);
                },
            )?;
            let result = crate::score_completions(
                task,
                &contexts,
                &completions,
                settings.num_fewshot,
                self.sandbox.as_ref(),
            )?;
            tracing::info!(
                name = task.name,
                metric = result.metric,
                score = result.headline(),
                examples = result.examples,
                samples = result.samples,
                "generative task"
            );
            results.generative.insert(task.name.clone(), result);
        }
        if let Some(prompts) = &self.prompts {
            results.generation = Some(generate_all(
                model,
                tokenizer,
                prompts,
                self.prefix,
                device,
                &mut on_prompt,
            )?);
        }
        Ok(results)
    }
}

impl TextSet {
    /// The named groups of texts this set is scored as.
    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let languages = || {
            self.texts
                .iter()
                .map(|t| dapt_core::lang::lang_id(t).unwrap_or("unknown").to_string())
                .collect::<Vec<_>>()
        };
        match &self.grouping {
            Grouping::None => {
                groups.insert(self.name.clone(), self.texts.clone());
            }
            Grouping::Keys(keys) => {
                groups.insert(self.name.clone(), self.texts.clone());
                for (key, text) in keys.iter().zip(&self.texts) {
                    groups
                        .entry(format!("{}/{key}", self.name))
                        .or_default()
                        .push(text.clone());
                }
            }
            Grouping::Language => {
                groups.insert(self.name.clone(), self.texts.clone());
                for (key, text) in languages().into_iter().zip(&self.texts) {
                    groups
                        .entry(format!("{}/{key}", self.name))
                        .or_default()
                        .push(text.clone());
                }
            }
            Grouping::LanguageOnly { min_texts } => {
                for text in &self.texts {
                    if let Some(language) = dapt_core::lang::lang_id(text) {
                        groups
                            .entry(language.to_string())
                            .or_default()
                            .push(text.clone());
                    }
                }
                groups.retain(|_, texts| texts.len() >= *min_texts);
            }
        }
        groups
    }
}

/// Every row of a packed output, after checking that it fits the model and tokenizer.
fn packed_rows(
    location: &Location,
    model: &CausalLm,
    tokenizer: &TokenizerFile,
) -> Result<Vec<dapt_core::PackedRow>> {
    let shards = dapt_trainer::PackedShards::open(location.clone(), 0, 4096)?;
    let metadata: &PackedMetadata = shards.metadata();
    let url = location.url();
    metadata
        .check_vocab(model.config().vocab_size, &url)
        .map_err(dapt_trainer::Error::from)?;
    metadata
        .check_tokenizer(tokenizer.sha256(), "the checkpoint's tokenizer", &url)
        .map_err(dapt_trainer::Error::from)?;
    Ok(shards.into_rows()?)
}

/// Generates a continuation of every prompt (an empty prompt starts from `prefix`) and measures how
/// often the model leaves the target language: the one generation + lang-swap loop.
pub fn generate_all(
    model: &CausalLm,
    tokenizer: &TokenizerFile,
    prompts: &PromptSet,
    prefix: u32,
    device: Device,
    on_prompt: &mut dyn FnMut(usize, usize),
) -> Result<GenerationResults> {
    let mut outputs = Vec::with_capacity(prompts.prompts.len());
    for (i, prompt) in prompts.prompts.iter().enumerate() {
        let mut ids = tokenizer.encode(&format!("prompt {i}"), prompt)?;
        if ids.is_empty() {
            ids.push(prefix);
        }
        let generation = crate::generate(model, tokenizer, &ids, &prompts.options, device)?;
        outputs.push(GenerationRecord {
            prompt: prompt.clone(),
            output: generation.text,
            finish_reason: generation.finish_reason,
        });
        on_prompt(i + 1, prompts.prompts.len());
    }
    let pairs: Vec<(String, String)> = outputs
        .iter()
        .map(|o| (o.prompt.clone(), o.output.clone()))
        .collect();
    let lang_swap = crate::lang_swap(&pairs, &prompts.target_language, prompts.min_letters);
    tracing::info!(
        rate = lang_swap.rate,
        generations = lang_swap.generations,
        "lang-swap"
    );
    Ok(GenerationResults {
        options: prompts.options.clone(),
        lang_swap,
        outputs,
    })
}

/// A string field of every non-empty line of a JSONL file; a line without it is an error naming the
/// file and line.
pub fn read_jsonl_field(path: &Path, field: &str) -> Result<Vec<String>> {
    let text = crate::files::read_text(path)?;
    crate::files::jsonl_rows(path, &text)?
        .into_iter()
        .map(|(line, value)| {
            value
                .get(field)
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    crate::files::row_error(path, line, format!("no string field `{field}`"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sets_are_grouped_as_asked() {
        let texts: Vec<String> = vec![
            "Это русский текст о погоде и о том, как идёт дождь весь день.".into(),
            "This is an English sentence about the weather and the rain today.".into(),
            "Ещё один русский текст, чтобы языковая группа была больше одного.".into(),
        ];
        let set = |grouping| TextSet {
            name: "held".into(),
            texts: texts.clone(),
            grouping,
        };
        let keys = |g: BTreeMap<String, Vec<String>>| {
            g.into_iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
        };
        assert_eq!(keys(set(Grouping::None).groups()), vec![("held".into(), 3)]);
        assert_eq!(
            keys(set(Grouping::Keys(vec!["a".into(), "b".into(), "a".into()])).groups()),
            vec![
                ("held".into(), 3),
                ("held/a".into(), 2),
                ("held/b".into(), 1)
            ]
        );
        assert_eq!(
            keys(set(Grouping::Language).groups()),
            vec![
                ("held".into(), 3),
                ("held/en".into(), 1),
                ("held/ru".into(), 2)
            ]
        );
        assert_eq!(
            keys(set(Grouping::LanguageOnly { min_texts: 2 }).groups()),
            vec![("ru".into(), 2)]
        );
    }

    #[test]
    fn jsonl_fields_are_read_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n{\"other\": 1}\n",
        )
        .unwrap();
        let err = read_jsonl_field(&path, "text").unwrap_err().to_string();
        assert!(err.contains("t.jsonl:4") && err.contains("`text`"), "{err}");
        std::fs::write(&path, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(read_jsonl_field(&path, "text").unwrap(), vec!["a", "b"]);
    }
}
