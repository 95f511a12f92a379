//! Supervised fine-tuning examples: chat `messages` (or prompt/response) rendered with the tokenizer's
//! chat template (Jinja from `tokenizer_config.json`, rendered by minijinja with Python string
//! methods) or the built-in ChatML template; the loss mask is true on assistant turns only; examples
//! are packed whole (never split across rows) by best-fit-decreasing within a bounded window.
use serde::{Deserialize, Serialize};

use dapt_core::PackedRow;

use crate::error::json_error;
use crate::{Error, Result, TokenizerFile};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A chat template.
pub struct ChatTemplate {
    environment: minijinja::Environment<'static>,
    /// Values the template may read (`bos_token`, `eos_token`).
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The built-in ChatML template (Qwen, many others).
pub const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn template_error(source: minijinja::Error) -> Error {
    Error::Template {
        what: "rendering".into(),
        source,
    }
}

impl ChatTemplate {
    /// A template from Jinja source.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut environment = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut environment);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(Self {
            environment,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The `chat_template` of an HF `tokenizer_config.json` (a string, or a list with a `default`).
    pub fn from_tokenizer_config(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(json_error(path.display()))?;
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        if source.is_empty() {
            return Err(Error::Tokenizer {
                what: path.display().to_string(),
                reason: "has no chat_template".into(),
            });
        }
        let token = |key: &str| match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            v => v["content"].as_str().unwrap_or_default().to_string(),
        };
        Self::new(&source, &token("bos_token"), &token("eos_token"))
    }

    /// Renders messages; `add_generation_prompt` appends the assistant's turn opening.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(template_error)?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                enable_thinking => false,
            })
            .map_err(template_error)
    }

    /// Token ids of a conversation and its loss mask (true on assistant turns). The text is the
    /// rendering of all messages; each assistant turn is the part that its rendering adds to the
    /// rendering of the messages before it with the generation prompt. Pieces are tokenised one by
    /// one, so mask boundaries fall exactly between tokens.
    pub fn tokenize(
        &self,
        tokenizer: &TokenizerFile,
        messages: &[Message],
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(Error::Tokenizer {
                    what: "chat template".into(),
                    reason: format!(
                        "the template rewrites earlier turns (assistant message {i}); use single-turn examples or the chatml template"
                    ),
                });
            }
            spans.push((before.len(), through.len()));
        }
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut cursor = 0;
        let push =
            |text: &str, target: bool, ids: &mut Vec<u32>, mask: &mut Vec<bool>| -> Result<()> {
                if text.is_empty() {
                    return Ok(());
                }
                let encoded = tokenizer.encode("chat example", text)?;
                mask.extend(std::iter::repeat_n(target, encoded.len()));
                ids.extend(encoded);
                Ok(())
            };
        for (start, end) in spans {
            push(&full[cursor..start], false, &mut ids, &mut mask)?;
            push(&full[start..end], true, &mut ids, &mut mask)?;
            cursor = end;
        }
        push(&full[cursor..], false, &mut ids, &mut mask)?;
        Ok((ids, mask))
    }
}

/// What to do with an example longer than a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep its first `seq_len` tokens.
    Truncate,
    /// Leave it out.
    #[default]
    Drop,
}

/// Facts about an SFT packing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SftStats {
    /// Examples read.
    pub examples: u64,
    /// Rows written.
    pub rows: u64,
    /// Tokens in them, padding excluded.
    pub tokens: u64,
    /// Tokens with loss (assistant turns).
    pub target_tokens: u64,
    /// Examples cut to fit a row (`overlong = "truncate"`).
    pub truncated: u64,
    /// Examples left out because they do not fit a row.
    pub dropped: u64,
    /// Share of row tokens that are not padding.
    pub fill: f64,
}

/// A row being filled: ids, loss mask, segment lengths, segment sources.
type OpenRow = (Vec<u32>, Vec<bool>, Vec<i32>, Vec<String>);

/// A tokenised example: ids and loss mask.
pub type Tokenized = (Vec<u32>, Vec<bool>);

/// One segment of a packing unit: ids, loss mask, source label.
type Segment = (Vec<u32>, Vec<bool>, Option<String>);

/// Packs tokenised examples whole into rows: within each window of `window` examples (in the order
/// given), longest first, each goes into the open row it fills best. `sources` (one per example, or
/// empty) label the segments.
pub fn pack_sft(
    examples: &[(Vec<u32>, Vec<bool>)],
    sources: &[String],
    pad_id: u32,
    seq_len: usize,
    window: usize,
    overlong: Overlong,
) -> (Vec<PackedRow>, SftStats) {
    let mut stats = SftStats::default();
    let units: Vec<Option<Vec<Segment>>> = examples
        .iter()
        .enumerate()
        .map(|(i, (ids, mask))| {
            let source = sources.get(i).cloned();
            if ids.len() > seq_len {
                match overlong {
                    Overlong::Drop => {
                        stats.dropped += 1;
                        return None;
                    }
                    Overlong::Truncate => {
                        stats.truncated += 1;
                        return Some(vec![(
                            ids[..seq_len].to_vec(),
                            mask[..seq_len].to_vec(),
                            source,
                        )]);
                    }
                }
            }
            (!ids.is_empty()).then(|| vec![(ids.clone(), mask.clone(), source)])
        })
        .collect();
    let rows = pack_units(&units, pad_id, seq_len, window, &mut stats);
    (rows, stats)
}

/// Packs preference pairs whole: each (chosen, rejected) pair becomes two adjacent segments of one
/// row, labelled `chosen` and `rejected` (what the trainer's preference objectives read), packed
/// like [`pack_sft`]'s examples. A pair longer than a row is left out (`dropped`): cutting one
/// response would compare a whole answer with a part. `examples` counts pairs.
pub fn pack_pairs(
    pairs: &[(Tokenized, Tokenized)],
    pad_id: u32,
    seq_len: usize,
    window: usize,
) -> (Vec<PackedRow>, SftStats) {
    let mut stats = SftStats::default();
    let units: Vec<Option<Vec<Segment>>> = pairs
        .iter()
        .map(|((chosen, chosen_mask), (rejected, rejected_mask))| {
            if chosen.len() + rejected.len() > seq_len {
                stats.dropped += 1;
                return None;
            }
            Some(vec![
                (chosen.clone(), chosen_mask.clone(), Some("chosen".into())),
                (
                    rejected.clone(),
                    rejected_mask.clone(),
                    Some("rejected".into()),
                ),
            ])
        })
        .collect();
    let rows = pack_units(&units, pad_id, seq_len, window, &mut stats);
    (rows, stats)
}

/// Best-fit-decreasing over windows of `window` units (in the order given; `None`: left out but
/// counted in the window); a unit's segments stay together and in order.
fn pack_units(
    units: &[Option<Vec<Segment>>],
    pad_id: u32,
    seq_len: usize,
    window: usize,
    stats: &mut SftStats,
) -> Vec<PackedRow> {
    let mut rows = Vec::new();
    let window = window.max(1);
    let length = |unit: &[Segment]| unit.iter().map(|s| s.0.len()).sum::<usize>();
    for chunk in units.chunks(window) {
        let items: Vec<&Vec<Segment>> = chunk.iter().flatten().collect();
        // Longest first; ties keep the given order (a stable sort), so the result is deterministic.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| length(items[b]).cmp(&length(items[a])));
        let mut open: Vec<OpenRow> = Vec::new();
        for index in order {
            let unit = items[index];
            let size = length(unit);
            let best = open
                .iter()
                .enumerate()
                .filter(|(_, row)| seq_len - row.0.len() >= size)
                .min_by_key(|(i, row)| (seq_len - row.0.len(), *i))
                .map(|(i, _)| i);
            let row = match best {
                Some(i) => &mut open[i],
                None => {
                    open.push((
                        Vec::with_capacity(seq_len),
                        Vec::with_capacity(seq_len),
                        Vec::new(),
                        Vec::new(),
                    ));
                    open.last_mut().expect("just pushed")
                }
            };
            for (ids, mask, source) in unit {
                row.0.extend_from_slice(ids);
                row.1.extend_from_slice(mask);
                row.2.push(ids.len() as i32);
                if let Some(source) = source {
                    row.3.push(source.clone());
                }
                stats.tokens += ids.len() as u64;
                stats.target_tokens += mask.iter().filter(|m| **m).count() as u64;
            }
            stats.examples += 1;
        }
        for (mut ids, mut mask, segments, labels) in open {
            ids.resize(seq_len, pad_id);
            mask.resize(seq_len, false);
            rows.push(PackedRow {
                input_ids: ids.into_iter().map(|t| t as i32).collect(),
                segment_lengths: segments,
                loss_mask: mask,
                segment_sources: labels,
            });
        }
    }
    stats.rows = rows.len() as u64;
    if stats.rows > 0 {
        stats.fill = stats.tokens as f64 / (stats.rows as f64 * seq_len as f64);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let template = ChatTemplate::new(CHATML, "", "<|endoftext|>").unwrap();
        let messages = vec![
            Message {
                role: "user".into(),
                content: "Привет".into(),
            },
            Message {
                role: "assistant".into(),
                content: "Здравствуйте!".into(),
            },
        ];
        assert_eq!(
            template.render(&messages, false).unwrap(),
            "<|im_start|>user\nПривет<|im_end|>\n<|im_start|>assistant\nЗдравствуйте!<|im_end|>\n"
        );
        assert_eq!(
            template.render(&messages[..1], true).unwrap(),
            "<|im_start|>user\nПривет<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn best_fit_decreasing_keeps_examples_whole() {
        let example = |n: usize, target: usize| {
            (
                (0..n as u32).map(|i| i + 10).collect::<Vec<_>>(),
                (0..n).map(|i| i >= n - target).collect::<Vec<_>>(),
            )
        };
        let examples = vec![
            example(6, 2),
            example(3, 1),
            example(5, 5),
            example(2, 1),
            example(12, 3),
            example(4, 2),
        ];
        let (rows, stats) = pack_sft(&examples, &[], 0, 10, 100, Overlong::Drop);
        assert_eq!(stats.dropped, 1, "12 tokens do not fit in 10");
        assert_eq!(stats.examples, 5);
        // 6+4 and 5+3+2 fill two rows exactly.
        assert_eq!(rows.len(), 2);
        assert_eq!(stats.fill, 1.0);
        for (i, row) in rows.iter().enumerate() {
            row.validate(i, 10, 0).unwrap();
        }
        let (rows, stats) = pack_sft(&examples, &[], 0, 10, 100, Overlong::Truncate);
        assert_eq!((stats.truncated, stats.examples), (1, 6));
        assert!(rows.iter().any(|r| r.segment_lengths == [10]));
    }

    #[test]
    fn pairs_stay_together_in_order_and_overlong_pairs_are_dropped() {
        let example = |n: usize, first: u32| -> (Vec<u32>, Vec<bool>) {
            (
                (first..first + n as u32).collect(),
                (0..n).map(|i| i > 0).collect(),
            )
        };
        let pairs = vec![
            (example(3, 10), example(2, 20)),
            (example(6, 30), example(5, 40)),
            (example(1, 50), example(2, 60)),
        ];
        let (rows, stats) = pack_pairs(&pairs, 0, 10, 100);
        assert_eq!(stats.examples, 2);
        assert_eq!(stats.dropped, 1);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.segment_lengths, [3, 2, 1, 2]);
        assert_eq!(
            row.segment_sources,
            ["chosen", "rejected", "chosen", "rejected"]
        );
        assert_eq!(&row.input_ids[..8], &[10, 11, 12, 20, 21, 50, 60, 61]);
        assert_eq!(&row.input_ids[8..], &[0, 0]);
        assert_eq!(stats.target_tokens, 2 + 1 + 1);
    }
}
