//! Document statistics, computed in one pass over lines and words; the quality rules read them.
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StructArray, UInt64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Fields};

/// Statistics of one document. Words are whitespace-separated; lines are non-empty lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextStats {
    /// Characters.
    pub chars: u64,
    /// Whitespace-separated words.
    pub words: u64,
    /// Lines.
    pub lines: u64,
    /// Mean length in characters of words, punctuation around them stripped.
    pub mean_word_length: f64,
    /// `#` characters per word.
    pub hash_word_ratio: f64,
    /// Ellipses (`...`, `…`) per word.
    pub ellipsis_word_ratio: f64,
    /// Share of lines that start with a bullet (`•`, `-`, `*`, `‣`, `●`, `▪`, `◦`).
    pub bullet_line_fraction: f64,
    /// Share of lines that end with an ellipsis.
    pub ellipsis_line_fraction: f64,
    /// Share of lines that end with terminal punctuation (`.`, `!`, `?`, `"`, `'`, `»`, `…`, `:`, `;`).
    pub punct_end_line_fraction: f64,
    /// Share of lines shorter than 30 characters.
    pub short_line_fraction: f64,
    /// Share of lines that repeat an earlier line.
    pub duplicate_line_fraction: f64,
    /// Share of characters (of all lines) in lines that repeat an earlier line.
    pub duplicate_line_char_fraction: f64,
    /// Share of words with at least one letter.
    pub alpha_word_fraction: f64,
    /// Newlines per word.
    pub newline_ratio: f64,
}

const BULLETS: &[char] = &['•', '-', '*', '‣', '●', '▪', '◦', '–'];
const TERMINAL: &[char] = &['.', '!', '?', '"', '\'', '»', '…', ':', ';'];

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl TextStats {
    /// The statistics of `text`.
    pub fn of(text: &str) -> Self {
        let mut stats = TextStats {
            chars: text.chars().count() as u64,
            ..Default::default()
        };
        let (mut word_chars, mut alpha_words, mut hashes, mut ellipses) = (0u64, 0u64, 0u64, 0u64);
        for word in text.split_whitespace() {
            stats.words += 1;
            let stripped = word.trim_matches(|c: char| !c.is_alphanumeric());
            word_chars += stripped.chars().count() as u64;
            if word.chars().any(char::is_alphabetic) {
                alpha_words += 1;
            }
            hashes += word.matches('#').count() as u64;
            ellipses += (word.matches("...").count() + word.matches('…').count()) as u64;
        }
        let (mut bullets, mut ellipsis_lines, mut punct, mut short) = (0u64, 0u64, 0u64, 0u64);
        let (mut duplicate_lines, mut duplicate_chars, mut line_chars) = (0u64, 0u64, 0u64);
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            stats.lines += 1;
            let length = line.chars().count() as u64;
            line_chars += length;
            if line.starts_with(BULLETS) {
                bullets += 1;
            }
            if line.ends_with("...") || line.ends_with('…') {
                ellipsis_lines += 1;
            }
            if line.ends_with(TERMINAL) {
                punct += 1;
            }
            if length < 30 {
                short += 1;
            }
            if seen.insert(line, ()).is_some() {
                duplicate_lines += 1;
                duplicate_chars += length;
            }
        }
        stats.mean_word_length = ratio(word_chars, stats.words);
        stats.hash_word_ratio = ratio(hashes, stats.words);
        stats.ellipsis_word_ratio = ratio(ellipses, stats.words);
        stats.bullet_line_fraction = ratio(bullets, stats.lines);
        stats.ellipsis_line_fraction = ratio(ellipsis_lines, stats.lines);
        stats.punct_end_line_fraction = ratio(punct, stats.lines);
        stats.short_line_fraction = ratio(short, stats.lines);
        stats.duplicate_line_fraction = ratio(duplicate_lines, stats.lines);
        stats.duplicate_line_char_fraction = ratio(duplicate_chars, line_chars);
        stats.alpha_word_fraction = ratio(alpha_words, stats.words);
        stats.newline_ratio = ratio(text.matches('\n').count() as u64, stats.words);
        stats
    }
}

const COUNT_FIELDS: [&str; 3] = ["chars", "words", "lines"];
const RATIO_FIELDS: [&str; 11] = [
    "mean_word_length",
    "hash_word_ratio",
    "ellipsis_word_ratio",
    "bullet_line_fraction",
    "ellipsis_line_fraction",
    "punct_end_line_fraction",
    "short_line_fraction",
    "duplicate_line_fraction",
    "duplicate_line_char_fraction",
    "alpha_word_fraction",
    "newline_ratio",
];

/// The struct fields of `text_stats`.
pub fn fields() -> Fields {
    let mut fields: Vec<(&str, DataType)> = COUNT_FIELDS
        .iter()
        .map(|n| (*n, DataType::UInt64))
        .collect();
    fields.extend(RATIO_FIELDS.iter().map(|n| (*n, DataType::Float64)));
    super::struct_fields(fields)
}

/// A struct array of statistics (NULL where the text was NULL).
pub fn to_struct_array(stats: &[Option<TextStats>]) -> StructArray {
    let default = TextStats::default();
    let get = |i: usize| stats[i].as_ref().unwrap_or(&default);
    let counts: [fn(&TextStats) -> u64; 3] = [|s| s.chars, |s| s.words, |s| s.lines];
    let ratios: [fn(&TextStats) -> f64; 11] = [
        |s| s.mean_word_length,
        |s| s.hash_word_ratio,
        |s| s.ellipsis_word_ratio,
        |s| s.bullet_line_fraction,
        |s| s.ellipsis_line_fraction,
        |s| s.punct_end_line_fraction,
        |s| s.short_line_fraction,
        |s| s.duplicate_line_fraction,
        |s| s.duplicate_line_char_fraction,
        |s| s.alpha_word_fraction,
        |s| s.newline_ratio,
    ];
    let mut columns: Vec<ArrayRef> = counts
        .iter()
        .map(|f| {
            Arc::new(UInt64Array::from_iter_values(
                (0..stats.len()).map(|i| f(get(i))),
            )) as ArrayRef
        })
        .collect();
    columns.extend(ratios.iter().map(|f| {
        Arc::new(Float64Array::from_iter_values(
            (0..stats.len()).map(|i| f(get(i))),
        )) as ArrayRef
    }));
    let nulls = NullBuffer::from(stats.iter().map(Option::is_some).collect::<Vec<_>>());
    StructArray::new(fields(), columns, Some(nulls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_fractions() {
        let text = "Первая строка текста.\n- пункт списка\n- пункт списка\nКонец...";
        let s = TextStats::of(text);
        assert_eq!(s.chars, text.chars().count() as u64);
        assert_eq!((s.words, s.lines), (10, 4));
        assert_eq!(s.bullet_line_fraction, 0.5);
        assert_eq!(s.ellipsis_line_fraction, 0.25);
        assert_eq!(s.punct_end_line_fraction, 0.5);
        assert_eq!(s.duplicate_line_fraction, 0.25);
        assert_eq!(s.short_line_fraction, 1.0);
        assert_eq!(s.ellipsis_word_ratio, 0.1);
        assert_eq!(s.alpha_word_fraction, 0.8);
        assert_eq!(TextStats::of(""), TextStats::default());
    }
}
