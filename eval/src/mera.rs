//! MERA's task files (the Russian benchmark's instruction format): rows with an `instruction` holding
//! Python `str.format` placeholders, `inputs` (a string, filling `{inputs}`, or an object whose keys
//! fill `{key}`), `outputs` (the answer; empty where the split's answers are hidden) and `meta.id`.
//! A file is MERA's `task.json` (`{"data": {"train": [...], "test": [...]}}`; the first of test,
//! validation, train whose answers are given is used) or JSONL rows. The prompt is the formatted
//! instruction, stripped, as MERA's own harness builds it.
use std::path::Path;

use serde_json::Value;

use crate::files::{jsonl_rows, read_text, row_error as bad};
use crate::Result;

/// One MERA row: id, prompt, answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeraRow {
    /// `meta.id`, else the row's index.
    pub id: String,
    /// The formatted instruction.
    pub prompt: String,
    /// The answer (`outputs`).
    pub output: String,
}

/// Python's `str.format` with named fields only: `{name}` from `fields`, `{{` and `}}` escaped.
pub fn python_format(
    template: &str,
    fields: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err("an unclosed `{` in the instruction".into()),
                    }
                }
                let key = name.split([':', '!']).next().unwrap_or("");
                out.push_str(&fields(key).ok_or_else(|| {
                    format!("the instruction names {{{key}}}, which `inputs` lacks")
                })?);
            }
            '}' => return Err("a single `}` in the instruction".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Reads a MERA task file.
pub fn load_mera(path: &Path) -> Result<Vec<MeraRow>> {
    let text = read_text(path)?;
    let rows: Vec<(usize, Value)> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) if object.contains_key("data") => {
            let data = &object["data"];
            let answered = |split: &str| {
                data.get(split)
                    .and_then(Value::as_array)
                    .filter(|rows| {
                        !rows.is_empty()
                            && rows
                                .iter()
                                .all(|r| !text_of(&r["outputs"]).trim().is_empty())
                    })
                    .cloned()
            };
            ["test", "validation", "train"]
                .iter()
                .find_map(|split| answered(split))
                .map(|rows| rows.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect())
                .ok_or_else(|| bad(path, 0, "no split of `data` (test, validation, train) has every answer in `outputs`"))?
        }
        _ => jsonl_rows(path, &text)?,
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, (n, row)) in rows.iter().enumerate() {
        let n = *n;
        let instruction = row["instruction"]
            .as_str()
            .ok_or_else(|| bad(path, n, "no string `instruction`"))?;
        let inputs = &row["inputs"];
        let fields = |key: &str| match inputs {
            Value::Object(map) => map.get(key).map(text_of),
            Value::String(s) if key == "inputs" => Some(s.clone()),
            _ => None,
        };
        let prompt = python_format(instruction, &fields).map_err(|e| bad(path, n, e))?;
        let output = text_of(&row["outputs"]).trim().to_string();
        if output.is_empty() {
            return Err(bad(
                path,
                n,
                "empty `outputs`: this split's answers are hidden",
            ));
        }
        let id = match &row["meta"]["id"] {
            Value::Null => format!("{i}"),
            other => text_of(other),
        };
        out.push(MeraRow {
            id,
            prompt: prompt.trim().to_string(),
            output,
        });
    }
    if out.is_empty() {
        return Err(bad(path, 0, "no rows"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_formatted_as_python_does() {
        let fields = |k: &str| (k == "text").then(|| "x = 2".to_string());
        assert_eq!(
            python_format("Задача: {text}\n{{Ответ}}:", &fields).unwrap(),
            "Задача: x = 2\n{Ответ}:"
        );
        assert!(python_format("{other}", &fields)
            .unwrap_err()
            .contains("{other}"));
        assert!(python_format("{text", &fields).is_err());
    }

    #[test]
    fn task_json_uses_the_first_split_with_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.json");
        std::fs::write(
            &path,
            r#"{"data": {
                "train": [{"instruction": "Реши: {inputs}\nОтвет:", "inputs": "2 + 2", "outputs": "4", "meta": {"id": 7}}],
                "test": [{"instruction": "Реши: {inputs}", "inputs": "1 + 1", "outputs": "", "meta": {"id": 0}}]}}"#,
        )
        .unwrap();
        let rows = load_mera(&path).unwrap();
        assert_eq!(
            rows,
            vec![MeraRow {
                id: "7".into(),
                prompt: "Реши: 2 + 2\nОтвет:".into(),
                output: "4".into()
            }]
        );
        let jsonl = dir.path().join("rows.jsonl");
        std::fs::write(
            &jsonl,
            "{\"instruction\": \"{text}\", \"inputs\": {\"text\": \"a\"}, \"outputs\": \"\"}\n",
        )
        .unwrap();
        let err = load_mera(&jsonl).unwrap_err().to_string();
        assert!(
            err.contains("rows.jsonl:1") && err.contains("hidden"),
            "{err}"
        );
    }
}
