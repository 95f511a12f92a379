//! Generative tasks: the model writes, a program checks. Formats: HumanEval (`task_id`, `prompt`,
//! `test`, `entry_point`; the completion and the tests run in the [`Sandbox`]), GSM8K-style JSONL
//! (`question`, `answer` ending in `#### N`; few-shot chain-of-thought, the final answer compared as a
//! number), BIG-bench `task.json` as generation (the task's own prefixes and `output_regex`), and the
//! "basket" format for a team's own tasks (`prompt`, `reference`, `metric`: exact, contains, regex,
//! chrf, math). Scores: pass@k (unbiased, over `samples` completions per problem), exact match, or
//! the mean metric score.
use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answers::{answers_match, chrf, extract_answer, pass_at_k, AnswerMetric};
use crate::files::{jsonl_rows, read_text, row_error as bad};
use crate::{Error, Result, RunOutcome, Sandbox};

/// How a completion is checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Check {
    /// `prompt + completion + "\n" + test + "\ncheck(entry_point)"` runs in the sandbox; exit 0 passes.
    Program {
        /// The problem's tests (defining `check(candidate)`).
        test: String,
        /// The function under test.
        entry_point: String,
    },
    /// The completion's answer is compared with the reference.
    Answer {
        /// How.
        metric: AnswerMetric,
        /// The answer is the first match of this regular expression in the completion (BIG-bench's
        /// `output_regex`), instead of [`extract_answer`]'s rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_regex: Option<String>,
    },
}

/// One generative problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenExample {
    /// Problem id (`task_id` of HumanEval).
    pub id: String,
    /// What the model continues, few-shot examples aside.
    pub prompt: String,
    /// What follows the prompt when this problem is a few-shot example (a worked solution).
    pub demonstration: String,
    /// The reference answer (for code: the canonical solution).
    pub reference: String,
    /// How a completion is checked.
    pub check: Check,
}

/// A generative task.
#[derive(Clone, Debug)]
pub struct GenTaskSet {
    /// Name in the results (`generative.NAME`).
    pub name: String,
    /// The problems.
    pub examples: Vec<GenExample>,
    /// Strings that end a completion (the format's own; more can be added per run).
    pub stop: Vec<String>,
}

/// Formats of generative task files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenFormat {
    /// HumanEval JSONL (plain or `.gz`).
    Humaneval,
    /// GSM8K-style JSONL: `question`, `answer` (worked solution ending in `#### N`).
    Gsm8k,
    /// BIG-bench `task.json` examples with `target` (or the best of `target_scores`), generated.
    BigbenchGen,
    /// JSONL rows `{"id"?, "prompt", "reference", "metric"?}`; metric exact (default), contains,
    /// regex, chrf or math.
    Basket,
    /// MERA's task files (see [`crate::load_mera`]): the formatted instruction, the first line of
    /// the completion compared with `outputs` after trimming, as MERA's harness does.
    Mera,
}

impl std::str::FromStr for GenFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "humaneval" => Self::Humaneval,
            "gsm8k" => Self::Gsm8k,
            "bigbench-gen" => Self::BigbenchGen,
            "basket" => Self::Basket,
            "mera" => Self::Mera,
            other => {
                return Err(format!(
                    "unknown generative format {other:?} (humaneval, gsm8k, bigbench-gen, basket, mera)"
                ))
            }
        })
    }
}

impl GenFormat {
    /// The strings that end a completion in this format (HumanEval's are Codex's).
    pub fn stop(self) -> Vec<String> {
        let list: &[&str] = match self {
            Self::Humaneval => &["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
            Self::Gsm8k => &["Question:", "\n\n"],
            Self::BigbenchGen | Self::Mera => &["\n"],
            Self::Basket => &[],
        };
        list.iter().map(|s| (*s).to_string()).collect()
    }
}

fn field(v: &Value, key: &str, path: &Path, row: usize) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(bad(path, row, format!("no string `{key}`"))),
    }
}

/// Reads a generative task file; `name` names the task in errors and results.
pub fn load_generative_task(name: &str, path: &Path, format: GenFormat) -> Result<GenTaskSet> {
    let mut examples = Vec::new();
    if format == GenFormat::Mera {
        for row in crate::load_mera(path)? {
            examples.push(GenExample {
                id: row.id,
                demonstration: format!(" {}\n\n", row.output),
                prompt: row.prompt,
                reference: row.output,
                check: Check::Answer {
                    metric: AnswerMetric::Exact,
                    output_regex: None,
                },
            });
        }
        return Ok(GenTaskSet {
            name: name.to_string(),
            examples,
            stop: format.stop(),
        });
    }
    let text = read_text(path)?;
    match format {
        GenFormat::Humaneval => {
            for (row, v) in jsonl_rows(path, &text)? {
                let prompt = field(&v, "prompt", path, row)?;
                let reference = field(&v, "canonical_solution", path, row).unwrap_or_default();
                examples.push(GenExample {
                    id: field(&v, "task_id", path, row)?,
                    demonstration: format!("{reference}\n\n"),
                    prompt,
                    reference,
                    check: Check::Program {
                        test: field(&v, "test", path, row)?,
                        entry_point: field(&v, "entry_point", path, row)?,
                    },
                });
            }
        }
        GenFormat::Gsm8k => {
            for (row, v) in jsonl_rows(path, &text)? {
                let answer = field(&v, "answer", path, row)?;
                let Some(final_answer) = answer.rfind("####").map(|at| answer[at + 4..].trim())
                else {
                    return Err(bad(path, row, "`answer` has no final `#### N`"));
                };
                let id = v
                    .get("id")
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .unwrap_or_else(|| format!("{}", row - 1));
                examples.push(GenExample {
                    id,
                    prompt: format!("Question: {}\nAnswer:", field(&v, "question", path, row)?),
                    demonstration: format!(" {}\n\n", answer.trim()),
                    reference: final_answer.to_string(),
                    check: Check::Answer {
                        metric: AnswerMetric::Math,
                        output_regex: None,
                    },
                });
            }
        }
        GenFormat::BigbenchGen => {
            let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                what: path.display().to_string(),
                source,
            })?;
            let prefix = |key: &str, default: &str| {
                json.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_string()
            };
            let (input_prefix, output_prefix) = (
                prefix("example_input_prefix", "\nQ: "),
                prefix("example_output_prefix", "\nA: "),
            );
            let output_regex = json
                .get("output_regex")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(pattern) = &output_regex {
                regex::Regex::new(pattern)
                    .map_err(|e| bad(path, 0, format!("output_regex: {e}")))?;
            }
            let list = json
                .get("examples")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(path, 0, "no `examples` list"))?;
            for (i, e) in list.iter().enumerate() {
                let input = field(e, "input", path, i + 1)?;
                let target = match e.get("target") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(a)) => a
                        .first()
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| bad(path, i + 1, "empty `target` list"))?,
                    _ => e
                        .get("target_scores")
                        .and_then(Value::as_object)
                        .and_then(|s| {
                            s.iter()
                                .max_by(|a, b| {
                                    let x = a.1.as_f64().unwrap_or(0.0);
                                    x.total_cmp(&b.1.as_f64().unwrap_or(0.0))
                                })
                                .map(|(k, _)| k.clone())
                        })
                        .ok_or_else(|| bad(path, i + 1, "no `target` or `target_scores`"))?,
                };
                examples.push(GenExample {
                    id: format!("{i}"),
                    prompt: format!("{input_prefix}{input}{output_prefix}")
                        .trim_start()
                        .to_string(),
                    demonstration: format!("{target}\n"),
                    reference: target,
                    check: Check::Answer {
                        metric: if output_regex.is_some() {
                            AnswerMetric::Exact
                        } else {
                            AnswerMetric::Math
                        },
                        output_regex: output_regex.clone(),
                    },
                });
            }
        }
        GenFormat::Basket => {
            for (row, v) in jsonl_rows(path, &text)? {
                let metric: AnswerMetric = match v.get("metric").and_then(Value::as_str) {
                    Some(m) => m.parse().map_err(|e: String| bad(path, row, e))?,
                    None => AnswerMetric::Exact,
                };
                let reference = field(&v, "reference", path, row)?;
                if metric == AnswerMetric::Regex {
                    regex::Regex::new(&reference)
                        .map_err(|e| bad(path, row, format!("`reference` regex: {e}")))?;
                }
                let id = v
                    .get("id")
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .unwrap_or_else(|| format!("{}", row - 1));
                examples.push(GenExample {
                    id,
                    prompt: field(&v, "prompt", path, row)?,
                    demonstration: format!("{reference}\n\n"),
                    reference,
                    check: Check::Answer {
                        metric,
                        output_regex: None,
                    },
                });
            }
        }
        GenFormat::Mera => unreachable!("read above"),
    }
    if examples.is_empty() {
        return Err(bad(path, 0, "no examples"));
    }
    Ok(GenTaskSet {
        name: name.to_string(),
        examples,
        stop: format.stop(),
    })
}

/// One completion and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The completion.
    pub completion: String,
    /// 1 passed, 0 failed; chrF is in between.
    pub score: f64,
    /// The answer taken from the completion (answer checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    /// How the program ran (code checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunOutcome>,
}

/// One problem's completions and verdicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerativeDetail {
    /// Problem id.
    pub id: String,
    /// The context the model continued (few-shot examples included).
    pub context: String,
    /// The reference answer.
    pub reference: String,
    /// Each sample.
    pub samples: Vec<SampleResult>,
}

/// Results of one generative task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerativeResult {
    /// Problems scored.
    pub examples: usize,
    /// Completions per problem.
    pub samples: usize,
    /// Few-shot examples per problem.
    pub num_fewshot: usize,
    /// The headline score's name: `pass@1` (code), `exact_match` (math answers) or `score`.
    pub metric: String,
    /// The scores: the headline, and `pass@k` for k in 1, 10, 100 up to `samples`.
    pub scores: BTreeMap<String, f64>,
    /// Per problem.
    pub details: Vec<GenerativeDetail>,
}

impl GenerativeResult {
    /// The headline score.
    pub fn headline(&self) -> f64 {
        self.scores.get(&self.metric).copied().unwrap_or(f64::NAN)
    }
}

/// Whether any problem of the task runs code (and so needs a sandbox).
pub fn needs_sandbox(task: &GenTaskSet) -> bool {
    task.examples
        .iter()
        .any(|e| matches!(e.check, Check::Program { .. }))
}

/// Few-shot contexts: for problem `i`, `k` other problems (a seeded draw by id) with their
/// demonstrations, then its own prompt.
pub fn contexts(task: &GenTaskSet, num_fewshot: usize, seed: u64) -> Vec<String> {
    let ids: Vec<&str> = task.examples.iter().map(|e| e.id.as_str()).collect();
    task.examples
        .iter()
        .enumerate()
        .map(|(i, example)| {
            if num_fewshot == 0 {
                return example.prompt.clone();
            }
            let mut context = String::new();
            for j in dapt_core::order::ordered(seed, "fewshot", i as u64, &ids)
                .into_iter()
                .filter(|&j| j != i)
                .take(num_fewshot)
            {
                let shot = &task.examples[j];
                context.push_str(&shot.prompt);
                context.push_str(&shot.demonstration);
            }
            context.push_str(&example.prompt);
            context
        })
        .collect()
}

/// Checks one completion.
fn check(
    example: &GenExample,
    completion: &str,
    sandbox: Option<&Sandbox>,
) -> Result<SampleResult> {
    let mut result = SampleResult {
        completion: completion.to_string(),
        score: 0.0,
        extracted: None,
        run: None,
    };
    match &example.check {
        Check::Program { test, entry_point } => {
            let sandbox = sandbox.ok_or_else(|| Error::Setting {
                key: "sandbox".into(),
                reason: format!("problem {} runs code, but no sandbox was given", example.id),
            })?;
            let program = format!(
                "{}{completion}\n{test}\ncheck({entry_point})\n",
                example.prompt
            );
            let outcome = sandbox.run_python(&program)?;
            result.score = f64::from(u8::from(outcome.passed()));
            result.run = Some(outcome);
        }
        Check::Answer {
            metric,
            output_regex,
        } => {
            let answer = match output_regex {
                Some(pattern) => regex::Regex::new(pattern)
                    .ok()
                    .and_then(|re| re.find(completion).map(|m| m.as_str().to_string())),
                None if *metric == AnswerMetric::Math => extract_answer(completion),
                None => Some(completion.trim().to_string()),
            };
            let reference = &example.reference;
            result.score = match (metric, &answer) {
                (_, None) => 0.0,
                (AnswerMetric::Math, Some(a)) => f64::from(u8::from(answers_match(a, reference))),
                (AnswerMetric::Exact, Some(a)) => f64::from(u8::from(a.trim() == reference.trim())),
                (AnswerMetric::Contains, Some(a)) => {
                    f64::from(u8::from(a.contains(reference.as_str())))
                }
                (AnswerMetric::Regex, Some(a)) => f64::from(u8::from(
                    regex::Regex::new(reference).is_ok_and(|re| re.is_match(a)),
                )),
                (AnswerMetric::Chrf, Some(a)) => chrf(a, reference),
            };
            result.extracted = answer;
        }
    }
    Ok(result)
}

/// Scores completions (`completions[i]`: the samples of problem `i`; problems with none are left
/// out). Program checks run in parallel on `sandbox`; the results do not depend on the order they
/// finish in.
pub fn score_completions(
    task: &GenTaskSet,
    contexts: &[String],
    completions: &[Vec<String>],
    num_fewshot: usize,
    sandbox: Option<&Sandbox>,
) -> Result<GenerativeResult> {
    let jobs: Vec<(usize, usize)> = completions
        .iter()
        .enumerate()
        .flat_map(|(i, samples)| (0..samples.len()).map(move |s| (i, s)))
        .collect();
    if jobs.is_empty() {
        return Err(Error::Empty {
            what: format!("task {}: no completions to score", task.name),
        });
    }
    let checked: Vec<SampleResult> = jobs
        .par_iter()
        .map(|&(i, s)| check(&task.examples[i], &completions[i][s], sandbox))
        .collect::<Result<_>>()?;
    let mut checked = checked.into_iter();
    let mut details = Vec::new();
    for (i, samples) in completions.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let example = &task.examples[i];
        details.push(GenerativeDetail {
            id: example.id.clone(),
            context: contexts[i].clone(),
            reference: example.reference.clone(),
            samples: checked.by_ref().take(samples.len()).collect(),
        });
    }
    let samples = details.iter().map(|d| d.samples.len()).min().unwrap_or(0);
    let binary = details
        .iter()
        .flat_map(|d| &d.samples)
        .all(|s| s.score == 0.0 || s.score == 1.0);
    let mut scores = BTreeMap::new();
    let mean_score = details
        .iter()
        .map(|d| d.samples.iter().map(|s| s.score).sum::<f64>() / d.samples.len() as f64)
        .sum::<f64>()
        / details.len() as f64;
    if binary {
        for k in [1, 10, 100] {
            if k > samples {
                break;
            }
            let value = details
                .iter()
                .map(|d| {
                    let c = d.samples.iter().filter(|s| s.score == 1.0).count();
                    pass_at_k(d.samples.len(), c, k)
                })
                .sum::<f64>()
                / details.len() as f64;
            scores.insert(format!("pass@{k}"), value);
        }
    }
    let metric = if needs_sandbox(task) {
        "pass@1".to_string()
    } else if task.examples.iter().all(|e| {
        matches!(
            e.check,
            Check::Answer {
                metric: AnswerMetric::Math | AnswerMetric::Exact,
                ..
            }
        )
    }) {
        "exact_match".to_string()
    } else {
        "score".to_string()
    };
    scores.insert(metric.clone(), mean_score);
    Ok(GenerativeResult {
        examples: details.len(),
        samples,
        num_fewshot,
        metric,
        scores,
        details,
    })
}

/// Completions a user brings, in HumanEval's samples format: JSONL rows with `task_id` and
/// `completion`; grouped by problem in the task's order. Unknown ids are errors naming the line.
pub fn read_completions(path: &Path, task: &GenTaskSet) -> Result<Vec<Vec<String>>> {
    let text = read_text(path)?;
    let index: BTreeMap<&str, usize> = task
        .examples
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut out = vec![Vec::new(); task.examples.len()];
    for (row, v) in jsonl_rows(path, &text)? {
        let id = field(&v, "task_id", path, row)?;
        let i = *index.get(id.as_str()).ok_or_else(|| {
            bad(
                path,
                row,
                format!("task_id {id:?} is not a problem of {}", task.name),
            )
        })?;
        out[i].push(field(&v, "completion", path, row)?);
    }
    Ok(out)
}

/// How completions are generated for generative tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerativeSettings {
    /// Generation options; the task's stop strings are added to `stop`.
    pub options: crate::GenerateOptions,
    /// Completions per problem (pass@k needs sampling: `temperature` > 0 when above 1).
    pub samples: usize,
    /// Few-shot examples per problem.
    pub num_fewshot: usize,
    /// Longest prompt plus completion in tokens; longer prompts keep their end.
    pub max_length: usize,
    /// Completions generated at once (problems × samples, prompts padded on the left).
    pub batch_size: usize,
}

/// Generates `settings.samples` completions of every problem's context, `settings.batch_size` rows
/// (problem, sample) at a time (sample `s` of problem `i` draws with a seed of (seed, i, s));
/// `on_problem` is called after each problem.
#[allow(clippy::too_many_arguments)]
pub fn generate_completions(
    model: &dapt_trainer::CausalLm,
    tokenizer: &dapt_encoder::TokenizerFile,
    task: &GenTaskSet,
    contexts: &[String],
    settings: &GenerativeSettings,
    prefix: u32,
    device: tch::Device,
    on_problem: &mut dyn FnMut(),
) -> Result<Vec<Vec<String>>> {
    if settings.samples == 0 {
        return Err(Error::Setting {
            key: "samples".into(),
            reason: "must be at least 1".into(),
        });
    }
    if settings.samples > 1 && settings.options.temperature <= 0.0 {
        return Err(Error::Setting {
            key: "samples".into(),
            reason: format!(
                "{} samples with greedy decoding would all be the same: set a temperature above 0",
                settings.samples
            ),
        });
    }
    let mut options = settings.options.clone();
    for stop in &task.stop {
        if !options.stop.contains(stop) {
            options.stop.push(stop.clone());
        }
    }
    let budget = settings
        .max_length
        .saturating_sub(options.max_tokens)
        .max(1);
    let started = std::time::Instant::now();
    let mut generated = 0usize;
    // Every (problem, sample) row with its prompt and seed, generated a batch at a time.
    let mut prompts = Vec::with_capacity(contexts.len());
    for (i, context) in contexts.iter().enumerate() {
        let mut ids = tokenizer.encode(&format!("{} problem {i}", task.name), context)?;
        if ids.is_empty() {
            ids.push(prefix);
        }
        if ids.len() > budget {
            ids.drain(..ids.len() - budget);
        }
        prompts.push(ids);
    }
    let rows: Vec<(usize, u64)> = (0..contexts.len())
        .flat_map(|i| {
            (0..settings.samples).map(move |s| {
                (
                    i,
                    settings.options.seed
                        ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (s as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
                )
            })
        })
        .collect();
    let mut out: Vec<Vec<String>> = vec![Vec::with_capacity(settings.samples); contexts.len()];
    for chunk in rows.chunks(settings.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&(i, _)| prompts[i].clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|&(_, seed)| seed).collect();
        let generations =
            crate::generate_batch(model, tokenizer, &batch, &options, &seeds, device)?;
        for (&(i, _), generation) in chunk.iter().zip(generations) {
            generated += generation.tokens.len();
            out[i].push(generation.text);
            if out[i].len() == settings.samples {
                on_problem();
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        task = task.name,
        problems = contexts.len(),
        samples = settings.samples,
        tokens = generated,
        seconds,
        tokens_per_second = generated as f64 / seconds.max(1e-9),
        "generated"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One completion per problem.
    fn one_each(texts: &[&str]) -> Vec<Vec<String>> {
        texts.iter().map(|t| vec![(*t).to_string()]).collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn gsm8k_rows_become_few_shot_chain_of_thought_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "gsm.jsonl",
            "{\"question\": \"Tom has 2 apples and buys 3. How many?\", \"answer\": \"2 + 3 = 5\\n#### 5\"}\n\
             {\"question\": \"A box holds 4 eggs. How many in 3 boxes?\", \"answer\": \"4 * 3 = 12\\n#### 12\"}\n",
        );
        let task = load_generative_task("gsm", &path, GenFormat::Gsm8k).unwrap();
        assert_eq!(task.examples[1].reference, "12");
        let contexts = contexts(&task, 1, 0);
        assert_eq!(
            contexts[1],
            "Question: Tom has 2 apples and buys 3. How many?\nAnswer: 2 + 3 = 5\n#### 5\n\n\
             Question: A box holds 4 eggs. How many in 3 boxes?\nAnswer:"
        );
        let completions = one_each(&[" 2 + 3 = 5\n#### 5", " 4 * 3 = 13\n#### 13"]);
        let result = score_completions(&task, &contexts, &completions, 1, None).unwrap();
        assert_eq!(result.metric, "exact_match");
        assert_eq!(result.scores["exact_match"], 0.5);
        assert_eq!(
            result.details[1].samples[0].extracted.as_deref(),
            Some("13")
        );
        let err = load_generative_task(
            "gsm",
            &write(
                dir.path(),
                "bad.jsonl",
                "{\"question\": \"q\", \"answer\": \"5\"}\n",
            ),
            GenFormat::Gsm8k,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad.jsonl:1") && err.contains("####"), "{err}");
    }

    #[test]
    fn basket_rows_use_their_own_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "basket.jsonl",
            "{\"id\": \"capital\", \"prompt\": \"Столица Франции — \", \"reference\": \"Париж\", \"metric\": \"contains\"}\n\
             {\"id\": \"year\", \"prompt\": \"Год: \", \"reference\": \"^19[0-9]{2}\", \"metric\": \"regex\"}\n\
             {\"id\": \"tr\", \"prompt\": \"Переведи: cat\", \"reference\": \"кошка\", \"metric\": \"chrf\"}\n\
             {\"id\": \"ex\", \"prompt\": \"2+2=\", \"reference\": \"4\"}\n",
        );
        let task = load_generative_task("basket", &path, GenFormat::Basket).unwrap();
        let contexts = contexts(&task, 0, 0);
        let completions = one_each(&["Это Париж.", "1961 год", "кошка", " 4 "]);
        let result = score_completions(&task, &contexts, &completions, 0, None).unwrap();
        assert_eq!(result.metric, "score");
        assert_eq!(result.scores["score"], 1.0);
        let wrong = one_each(&["Лион", "в 2024", "собака", "5"]);
        let result = score_completions(&task, &contexts, &wrong, 0, None).unwrap();
        let scores: Vec<f64> = result.details.iter().map(|d| d.samples[0].score).collect();
        assert_eq!([scores[0], scores[1], scores[3]], [0.0, 0.0, 0.0]);
        assert!(scores[2] > 0.0 && scores[2] < 0.3, "{scores:?}");
        let err = load_generative_task(
            "b",
            &write(
                dir.path(),
                "m.jsonl",
                "{\"prompt\": \"p\", \"reference\": \"r\", \"metric\": \"bleu\"}\n",
            ),
            GenFormat::Basket,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("m.jsonl:1") && err.contains("bleu"), "{err}");
    }

    #[test]
    fn mera_tasks_generate_and_score_by_trimmed_exact_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "simplear.jsonl",
            "{\"instruction\": \"Вычисли: {inputs}\\nОтвет:\", \"inputs\": \"2 + 3\", \"outputs\": \"5\", \"meta\": {\"id\": 0}}\n\
             {\"instruction\": \"Вычисли: {inputs}\\nОтвет:\", \"inputs\": \"4 + 4\", \"outputs\": \"8\", \"meta\": {\"id\": 1}}\n",
        );
        let task = load_generative_task("simplear", &path, GenFormat::Mera).unwrap();
        assert_eq!(task.examples[0].prompt, "Вычисли: 2 + 3\nОтвет:");
        let contexts = contexts(&task, 1, 0);
        assert_eq!(
            contexts[0],
            "Вычисли: 4 + 4\nОтвет: 8\n\nВычисли: 2 + 3\nОтвет:"
        );
        let completions = one_each(&[" 5 ", " 9"]);
        let result = score_completions(&task, &contexts, &completions, 1, None).unwrap();
        assert_eq!(result.scores["exact_match"], 0.5);
        let choice = crate::load_task(&path, crate::TaskFormat::MeraChoice).unwrap();
        assert_eq!(choice[1].choices, ["5", "8"]);
        assert_eq!(choice[1].gold, 1);
    }

    #[test]
    fn bigbench_tasks_generate_with_their_prefixes_and_output_regex() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "task.json",
            r#"{"name": "add", "output_regex": "[-+]?\\d+", "examples": [
                {"input": "What is 1 plus 2?", "target": "3", "target_scores": {"3": 1, "4": 0}},
                {"input": "What is 5 plus 2?", "target": "7"}]}"#,
        );
        let task = load_generative_task("add", &path, GenFormat::BigbenchGen).unwrap();
        assert_eq!(task.examples[0].prompt, "Q: What is 1 plus 2?\nA: ");
        assert_eq!(task.stop, vec!["\n"]);
        let completions = one_each(&["3 apples", "the answer: 8"]);
        let result =
            score_completions(&task, &contexts(&task, 0, 0), &completions, 0, None).unwrap();
        assert_eq!(result.scores["exact_match"], 0.5);
    }
}
