//! Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness does: each choice is a
//! continuation of the prompt (few-shot examples, then the question); `acc` takes the most likely
//! choice, `acc_norm` the most likely per character of the choice (its log-likelihood divided by the
//! choice's length in characters, as lm-eval does). Loaders turn the common formats into
//! [`McExample`]s: dapt's own JSONL, HellaSwag, ARC, MMLU (JSONL rows as the HF datasets hold them) and
//! BIG-bench `task.json` (multiple-choice examples with `target_scores`).
use std::path::Path;
use std::str::FromStr;

use dapt_encoder::TokenizerFile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scorer::{Request, Scorer};
use crate::{Error, Result};

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct McExample {
    /// Question id.
    pub id: String,
    /// The prompt the choices continue.
    pub context: String,
    /// The choices.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
    /// What joins the context and a choice (lm-eval's `target_delimiter`): a space, or nothing when
    /// the task's output prefix ends the context.
    #[serde(default = "space")]
    pub delimiter: String,
}

fn space() -> String {
    " ".into()
}

/// File formats of tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskFormat {
    /// JSONL: `{"id"?, "context", "choices": [..], "gold": index}`.
    Dapt,
    /// JSONL: `activity_label`?, `ctx` (or `ctx_a` + `ctx_b`), `endings`, `label`.
    Hellaswag,
    /// JSONL: `question`, `choices: {text: [..], label: [..]}`, `answerKey`.
    Arc,
    /// JSONL: `question`, `choices: [..]`, `answer` (index or letter); choices shown as A–D.
    Mmlu,
    /// BIG-bench `task.json`: `examples` with `input` and `target_scores`.
    Bigbench,
    /// MERA task files (see [`crate::load_mera`]) scored by log-likelihood: the choices are the
    /// distinct answers of the file (`A`–`D`, `1`/`2`, …), each after a space.
    MeraChoice,
}

impl FromStr for TaskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "dapt" => Self::Dapt,
            "hellaswag" => Self::Hellaswag,
            "arc" => Self::Arc,
            "mmlu" => Self::Mmlu,
            "bigbench" => Self::Bigbench,
            "mera-choice" => Self::MeraChoice,
            other => {
                return Err(format!(
                "unknown task format {other:?} (dapt, hellaswag, arc, mmlu, bigbench, mera-choice)"
            ))
            }
        })
    }
}

impl TaskFormat {
    /// The format a file name suggests: `task.json` → BIG-bench, else dapt JSONL.
    pub fn guess(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e == "json") {
            Self::Bigbench
        } else {
            Self::Dapt
        }
    }
}

use crate::files::row_error as bad;

fn string(v: &Value, key: &str, path: &Path, row: usize) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(path, row, format!("no string `{key}`")))
}

fn strings(v: Option<&Value>, key: &str, path: &Path, row: usize) -> Result<Vec<String>> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad(path, row, format!("no list `{key}`")))?;
    list.iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(bad(path, row, format!("`{key}` holds a non-string"))),
        })
        .collect()
}

fn index(v: Option<&Value>, choices: usize, key: &str, path: &Path, row: usize) -> Result<usize> {
    let i = match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
        Some(Value::String(s)) => s.trim().parse::<usize>().ok().or_else(|| {
            let c = s.trim().chars().next()?;
            c.is_ascii_uppercase().then(|| (c as u8 - b'A') as usize)
        }),
        _ => None,
    };
    match i {
        Some(i) if i < choices => Ok(i),
        _ => Err(bad(
            path,
            row,
            format!("`{key}` is not an index into {choices} choices"),
        )),
    }
}

/// A BIG-bench `task.json`'s multiple-choice examples rendered as BIG-bench renders them: the task's
/// `example_input_prefix` (default `"\nQ: "`), the input, with `append_choices_to_input` (default
/// true) each choice after `choice_prefix` (default `"\n  choice: "`) in the file's order, then
/// `example_output_prefix` (default `"\nA: "`); leading whitespace of the whole is dropped, and a
/// space ending the output prefix becomes the delimiter before the choice.
fn load_bigbench(path: &Path, text: &str) -> Result<Vec<McExample>> {
    #[derive(Deserialize)]
    struct Task {
        examples: Vec<Example>,
        example_input_prefix: Option<String>,
        example_output_prefix: Option<String>,
        choice_prefix: Option<String>,
        append_choices_to_input: Option<bool>,
    }
    #[derive(Deserialize)]
    struct Example {
        input: Option<String>,
        target_scores: Option<OrderedScores>,
    }
    let task: Task = serde_json::from_str(text).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })?;
    let input_prefix = task.example_input_prefix.as_deref().unwrap_or("\nQ: ");
    let output_prefix = task.example_output_prefix.as_deref().unwrap_or("\nA: ");
    let choice_prefix = task.choice_prefix.as_deref().unwrap_or("\n  choice: ");
    let append = task.append_choices_to_input.unwrap_or(true);
    let mut out = Vec::new();
    for (i, e) in task.examples.into_iter().enumerate() {
        let Some(OrderedScores(scores)) = e.target_scores else {
            continue; // a generative example
        };
        let input = e
            .input
            .ok_or_else(|| bad(path, i + 1, "no string `input`"))?;
        let gold = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
            .ok_or_else(|| bad(path, i + 1, "empty target_scores"))?;
        let choices: Vec<String> = scores.into_iter().map(|(k, _)| k).collect();
        let mut context = format!("{input_prefix}{input}");
        if append {
            for choice in &choices {
                context.push_str(choice_prefix);
                context.push_str(choice);
            }
        }
        context.push_str(output_prefix);
        let mut context = context.trim_start().to_string();
        let delimiter = if context.ends_with(' ') {
            context.truncate(context.trim_end_matches(' ').len());
            space()
        } else {
            String::new()
        };
        if choices.len() < 2 {
            return Err(bad(path, i + 1, "fewer than two choices"));
        }
        out.push(McExample {
            id: format!("{i}"),
            context,
            choices,
            gold,
            delimiter,
        });
    }
    Ok(out)
}

/// `target_scores` in the file's key order (BIG-bench lists choices in it).
struct OrderedScores(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for OrderedScores {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedScores;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of choice → score")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut scores = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, f64>()? {
                    scores.push((key, value));
                }
                Ok(OrderedScores(scores))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Reads a task file.
pub fn load_task(path: &Path, format: TaskFormat) -> Result<Vec<McExample>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    if format == TaskFormat::Bigbench {
        return load_bigbench(path, &text);
    }
    if format == TaskFormat::MeraChoice {
        let rows = crate::load_mera(path)?;
        let mut choices: Vec<String> = rows.iter().map(|r| r.output.clone()).collect();
        choices.sort();
        choices.dedup();
        if choices.len() < 2 {
            return Err(bad(
                path,
                0,
                "fewer than two distinct answers: not a multiple-choice task",
            ));
        }
        return Ok(rows
            .into_iter()
            .map(|r| McExample {
                gold: choices.iter().position(|c| *c == r.output).unwrap_or(0),
                id: r.id,
                context: r.prompt,
                choices: choices.clone(),
                delimiter: space(),
            })
            .collect());
    }
    for (line_no, line) in text.lines().enumerate() {
        let row = line_no + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|source| Error::Json {
            what: format!("{} row {row}", path.display()),
            source,
        })?;
        let id = v
            .get("id")
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .unwrap_or_else(|| format!("{line_no}"));
        let example = match format {
            TaskFormat::Dapt => {
                let choices = strings(v.get("choices"), "choices", path, row)?;
                let gold = index(v.get("gold"), choices.len(), "gold", path, row)?;
                McExample {
                    id,
                    context: string(&v, "context", path, row)?,
                    choices,
                    gold,
                    delimiter: space(),
                }
            }
            TaskFormat::Hellaswag => {
                let ctx = match v.get("ctx").and_then(Value::as_str) {
                    Some(c) => c.to_string(),
                    None => {
                        let b = string(&v, "ctx_b", path, row)?;
                        let mut chars = b.chars();
                        let b = match chars.next() {
                            Some(c) => c.to_uppercase().collect::<String>() + chars.as_str(),
                            None => String::new(),
                        };
                        format!("{} {b}", string(&v, "ctx_a", path, row)?)
                    }
                };
                let context = match v.get("activity_label").and_then(Value::as_str) {
                    Some(label) => format!("{label}: {ctx}"),
                    None => ctx,
                };
                let choices = strings(v.get("endings"), "endings", path, row)?;
                let gold = index(v.get("label"), choices.len(), "label", path, row)?;
                McExample {
                    id,
                    context,
                    choices,
                    gold,
                    delimiter: space(),
                }
            }
            TaskFormat::Arc => {
                let choices_obj = v.get("choices");
                let texts = strings(
                    choices_obj.and_then(|c| c.get("text")),
                    "choices.text",
                    path,
                    row,
                )?;
                let labels = strings(
                    choices_obj.and_then(|c| c.get("label")),
                    "choices.label",
                    path,
                    row,
                )?;
                let key = string(&v, "answerKey", path, row)?;
                let gold = labels
                    .iter()
                    .position(|l| *l == key)
                    .ok_or_else(|| bad(path, row, format!("answerKey {key:?} is not a label")))?;
                McExample {
                    id,
                    context: format!("Question: {}\nAnswer:", string(&v, "question", path, row)?),
                    choices: texts,
                    gold,
                    delimiter: space(),
                }
            }
            TaskFormat::Mmlu => {
                let options = strings(v.get("choices"), "choices", path, row)?;
                let gold = index(v.get("answer"), options.len(), "answer", path, row)?;
                let letters: Vec<String> = (0..options.len())
                    .map(|i| ((b'A' + i as u8) as char).to_string())
                    .collect();
                let listed: Vec<String> = options
                    .iter()
                    .zip(&letters)
                    .map(|(o, l)| format!("{l}. {o}"))
                    .collect();
                McExample {
                    id,
                    context: format!(
                        "{}\n{}\nAnswer:",
                        string(&v, "question", path, row)?.trim(),
                        listed.join("\n")
                    ),
                    choices: letters,
                    gold,
                    delimiter: space(),
                }
            }
            TaskFormat::Bigbench | TaskFormat::MeraChoice => unreachable!("read above"),
        };
        if example.choices.len() < 2 {
            return Err(bad(path, row, "fewer than two choices"));
        }
        out.push(example);
    }
    Ok(out)
}

/// Results of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Questions asked.
    pub examples: usize,
    /// Few-shot examples per question.
    pub num_fewshot: usize,
    /// Accuracy: the choice with the highest log-likelihood.
    pub acc: f64,
    /// Accuracy with log-likelihoods divided by the choices' lengths in characters (lm-eval's).
    pub acc_norm: f64,
    /// Accuracy of always guessing: mean of 1 / choices.
    pub chance: f64,
    /// Per example: id, choice picked by acc, gold, log-likelihood of each choice.
    pub details: Vec<ExampleResult>,
}

/// One question's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    /// Question id.
    pub id: String,
    /// The context scored (few-shot examples included).
    #[serde(default)]
    pub context: String,
    /// The continuations scored, each the delimiter and a choice.
    #[serde(default)]
    pub continuations: Vec<String>,
    /// Choice picked by `acc`.
    pub predicted: usize,
    /// The right choice.
    pub gold: usize,
    /// Log-likelihood of each choice (nats).
    pub logprobs: Vec<f64>,
}

/// Few-shot examples for example `i`: `k` others, picked by a seeded hash of their ids.
fn fewshot(examples: &[McExample], i: usize, k: usize, seed: u64) -> Vec<&McExample> {
    if k == 0 {
        return Vec::new();
    }
    let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
    dapt_core::order::ordered(seed, "fewshot", i as u64, &ids)
        .into_iter()
        .filter(|&j| j != i)
        .take(k)
        .map(|j| &examples[j])
        .collect()
}

/// Token ids of `continuation` after `context`, as lm-eval splits them: encode the whole and take what
/// follows the context's tokens (falling back to encoding the continuation alone).
fn split_tokens(
    tokenizer: &TokenizerFile,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let whole = tokenizer.encode("task", &format!("{context}{continuation}"))?;
    let head = tokenizer.encode("task", context)?;
    if whole.len() > head.len() && whole[..head.len()] == head[..] {
        Ok((head.clone(), whole[head.len()..].to_vec()))
    } else {
        Ok((head, tokenizer.encode("task", continuation)?))
    }
}

/// Scores a task. Contexts are scored as they tokenise (as lm-evaluation-harness does, no BOS added);
/// `prefix` (a BOS/EOS id) stands in for an empty context.
pub fn evaluate_task(
    scorer: &Scorer,
    tokenizer: &TokenizerFile,
    examples: &[McExample],
    num_fewshot: usize,
    seed: u64,
    prefix: u32,
) -> Result<TaskResult> {
    if examples.is_empty() {
        return Err(Error::Empty {
            what: "a task without examples".into(),
        });
    }
    let mut requests = Vec::new();
    let mut contexts = Vec::with_capacity(examples.len());
    for (i, example) in examples.iter().enumerate() {
        let shots: Vec<String> = fewshot(examples, i, num_fewshot, seed)
            .into_iter()
            .map(|e| format!("{}{}{}", e.context, e.delimiter, e.choices[e.gold]))
            .collect();
        let context = if shots.is_empty() {
            example.context.clone()
        } else {
            format!("{}\n\n{}", shots.join("\n\n"), example.context)
        };
        for choice in &example.choices {
            let (mut head, tail) = split_tokens(
                tokenizer,
                &context,
                &format!("{}{choice}", example.delimiter),
            )?;
            if head.is_empty() {
                head.push(prefix);
            }
            requests.push(Request {
                context: head,
                continuation: tail,
            });
        }
        contexts.push(context);
    }
    let scores = scorer.loglikelihoods(&requests)?;
    let mut at = 0;
    let (mut correct, mut correct_norm, mut chance) = (0usize, 0usize, 0.0);
    let mut details = Vec::with_capacity(examples.len());
    let argmax = |values: &[f64]| {
        values
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0
    };
    for (example, context) in examples.iter().zip(contexts) {
        let n = example.choices.len();
        let logprobs: Vec<f64> = scores[at..at + n].iter().map(|s| s.logprob).collect();
        at += n;
        let normalised: Vec<f64> = logprobs
            .iter()
            .zip(&example.choices)
            .map(|(l, c)| l / c.chars().count().max(1) as f64)
            .collect();
        let predicted = argmax(&logprobs);
        correct += usize::from(predicted == example.gold);
        correct_norm += usize::from(argmax(&normalised) == example.gold);
        chance += 1.0 / n as f64;
        details.push(ExampleResult {
            id: example.id.clone(),
            context,
            continuations: example
                .choices
                .iter()
                .map(|c| format!("{}{c}", example.delimiter))
                .collect(),
            predicted,
            gold: example.gold,
            logprobs,
        });
    }
    let count = examples.len() as f64;
    Ok(TaskResult {
        examples: examples.len(),
        num_fewshot,
        acc: correct as f64 / count,
        acc_norm: correct_norm as f64 / count,
        chance: chance / count,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigbench_tasks_render_with_their_own_prefixes_and_choices() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/bigbench/general_knowledge/task.json");
        let e = &load_task(&path, TaskFormat::Bigbench).unwrap()[0];
        // The default prefixes, the choices appended in the file's order.
        assert_eq!(
            e.context,
            "Q: How many legs do horses have?\n  choice: two\n  choice: four\n  choice: six\n  choice: three\n  choice: one\n  choice: none\nA:"
        );
        assert_eq!(
            (e.choices[1].as_str(), e.gold, e.delimiter.as_str()),
            ("four", 1, " ")
        );
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("task.json");
        std::fs::write(
            &custom,
            r#"{"example_input_prefix": "\nEnglish: ", "example_output_prefix": "\nRussian:\n",
                "append_choices_to_input": false,
                "examples": [{"input": "cat", "target_scores": {"собака": 0, "кошка": 1}}]}"#,
        )
        .unwrap();
        let e = &load_task(&custom, TaskFormat::Bigbench).unwrap()[0];
        assert_eq!(e.context, "English: cat\nRussian:\n");
        assert_eq!(
            (e.choices.clone(), e.gold, e.delimiter.as_str()),
            (vec!["собака".to_string(), "кошка".to_string()], 1, "")
        );
    }

    #[test]
    fn formats_load_into_examples() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let arc = write(
            "arc.jsonl",
            r#"{"id":"a1","question":"What is hot?","choices":{"text":["ice","fire"],"label":["A","B"]},"answerKey":"B"}"#,
        );
        let e = &load_task(&arc, TaskFormat::Arc).unwrap()[0];
        assert_eq!(
            (e.gold, e.context.as_str()),
            (1, "Question: What is hot?\nAnswer:")
        );
        let mmlu = write(
            "mmlu.jsonl",
            r#"{"question":"2+2?","choices":["3","4","5","6"],"answer":1}"#,
        );
        let e = &load_task(&mmlu, TaskFormat::Mmlu).unwrap()[0];
        assert_eq!(e.choices, ["A", "B", "C", "D"]);
        assert!(e.context.contains("B. 4") && e.gold == 1);
        let hs = write(
            "hs.jsonl",
            r#"{"activity_label":"Cooking","ctx_a":"He cuts onions.","ctx_b":"then he","endings":["a","b","c","d"],"label":"2"}"#,
        );
        let e = &load_task(&hs, TaskFormat::Hellaswag).unwrap()[0];
        assert_eq!(e.context, "Cooking: He cuts onions. Then he");
        assert_eq!(e.gold, 2);
        let broken = write(
            "bad.jsonl",
            "{\"context\":\"x\",\"choices\":[\"a\",\"b\"],\"gold\":5}\n",
        );
        let error = load_task(&broken, TaskFormat::Dapt)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bad.jsonl:1") && error.contains("gold"),
            "{error}"
        );
    }
}
