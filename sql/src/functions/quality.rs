//! Published heuristic quality rules, as booleans (true = keep).
//!
//! Sources of the thresholds:
//! - **Gopher**: Rae et al. 2021, *Scaling Language Models: Methods, Analysis & Insights from Training
//!   Gopher*, appendix A.1.1 (quality filter) and table A1 (repetition removal); the same defaults as
//!   datatrove's `GopherQualityFilter` / `GopherRepetitionFilter`.
//! - **C4**: Raffel et al. 2020, *Exploring the Limits of Transfer Learning with a Unified Text-to-Text
//!   Transformer*, §2.2.
//! - **FineWeb**: Penedo et al. 2024, *The FineWeb Datasets*, §3.4 (custom filters), plus datatrove's
//!   `FineWebQualityFilter` newline ratio.
use std::collections::HashMap;

use super::stats::TextStats;

/// Gopher's English stop words (at least 2 must occur); `ru` uses the most frequent Russian function
/// words in the same role (a dapt extension, the paper defines English only); `none` skips the rule.
pub fn stop_words(language: &str) -> Option<&'static [&'static str]> {
    match language.trim().to_ascii_lowercase().as_str() {
        "en" | "eng" => Some(&["the", "be", "to", "of", "and", "that", "have", "with"]),
        "ru" | "rus" => Some(&["и", "в", "не", "на", "что", "с", "как", "по"]),
        "none" => Some(&[]),
        _ => None,
    }
}

/// Gopher quality filter and repetition removal.
///
/// Quality (A.1.1): 50 ≤ words ≤ 100,000; 3 ≤ mean word length ≤ 10; `#` per word < 0.1; ellipses
/// per word < 0.1; lines starting with a bullet ≤ 90%; lines ending with an ellipsis ≤ 30%; at least
/// 80% of words contain a letter; at least 2 stop words.
/// Repetition (table A1): duplicate lines < 30% of lines and < 20% of characters; duplicate paragraphs
/// < 30% of paragraphs and < 20% of characters; the most frequent 2/3/4-gram covers < 20/18/16% of
/// word characters; duplicated 5…10-grams cover < 15/14/13/12/11/10% of word characters.
pub fn gopher(text: &str, stop_words: &[&str]) -> bool {
    let s = TextStats::of(text);
    let quality = (50..=100_000).contains(&s.words)
        && (3.0..=10.0).contains(&s.mean_word_length)
        && s.hash_word_ratio < 0.1
        && s.ellipsis_word_ratio < 0.1
        && s.bullet_line_fraction <= 0.9
        && s.ellipsis_line_fraction <= 0.3
        && s.alpha_word_fraction >= 0.8
        && (stop_words.is_empty() || {
            let found = text
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .filter(|w| stop_words.contains(&w.as_str()))
                .take(2)
                .count();
            found >= 2
        });
    quality && gopher_repetition(text, &s)
}

fn gopher_repetition(text: &str, s: &TextStats) -> bool {
    if s.duplicate_line_fraction >= 0.3 || s.duplicate_line_char_fraction >= 0.2 {
        return false;
    }
    let paragraphs: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut seen = HashMap::new();
    let (mut duplicates, mut duplicate_chars, mut chars) = (0usize, 0usize, 0usize);
    for paragraph in &paragraphs {
        let length = paragraph.chars().count();
        chars += length;
        if seen.insert(*paragraph, ()).is_some() {
            duplicates += 1;
            duplicate_chars += length;
        }
    }
    if !paragraphs.is_empty()
        && (duplicates as f64 / paragraphs.len() as f64 >= 0.3
            || duplicate_chars as f64 / chars.max(1) as f64 >= 0.2)
    {
        return false;
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let word_chars: usize = words.iter().map(|w| w.chars().count()).sum();
    if word_chars == 0 {
        return true;
    }
    for (n, limit) in [(2, 0.20), (3, 0.18), (4, 0.16)] {
        if top_ngram_char_fraction(&words, n, word_chars) >= limit {
            return false;
        }
    }
    for (n, limit) in [
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    ] {
        if duplicate_ngram_char_fraction(&words, n, word_chars) >= limit {
            return false;
        }
    }
    true
}

/// Characters covered by the most frequent n-gram (its length × its count) over all word characters.
fn top_ngram_char_fraction(words: &[&str], n: usize, word_chars: usize) -> f64 {
    if words.len() < n {
        return 0.0;
    }
    let mut counts: HashMap<&[&str], usize> = HashMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    let Some((gram, count)) = counts
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
    else {
        return 0.0;
    };
    let length: usize = gram.iter().map(|w| w.chars().count()).sum();
    (length * count) as f64 / word_chars as f64
}

/// Characters of words covered by n-grams that occur more than once, each word counted once.
fn duplicate_ngram_char_fraction(words: &[&str], n: usize, word_chars: usize) -> f64 {
    if words.len() < n {
        return 0.0;
    }
    let mut first: HashMap<&[&str], usize> = HashMap::new();
    let mut covered = vec![false; words.len()];
    for (start, gram) in words.windows(n).enumerate() {
        match first.get(gram) {
            Some(&earlier) => {
                for flag in covered.iter_mut().skip(earlier).take(n) {
                    *flag = true;
                }
                for flag in covered.iter_mut().skip(start).take(n) {
                    *flag = true;
                }
            }
            None => {
                first.insert(gram, start);
            }
        }
    }
    let chars: usize = words
        .iter()
        .zip(&covered)
        .filter(|(_, c)| **c)
        .map(|(w, _)| w.chars().count())
        .sum();
    chars as f64 / word_chars as f64
}

/// C4 page rules: lines are kept when they end in terminal punctuation (`.`, `!`, `?`, `"`), have at
/// least 5 words, and mention neither "javascript" nor a cookie/terms-of-use policy; the page is kept
/// when it contains neither "lorem ipsum" nor `{` and its kept lines hold at least 3 sentences.
pub fn c4(text: &str) -> bool {
    let lower = text.to_lowercase();
    if lower.contains("lorem ipsum") || text.contains('{') {
        return false;
    }
    const POLICY: &[&str] = &[
        "terms of use",
        "privacy policy",
        "cookie policy",
        "uses cookies",
        "use of cookies",
        "use cookies",
    ];
    let mut sentences = 0;
    for line in lower.lines().map(str::trim) {
        let kept = line.ends_with(['.', '!', '?', '"'])
            && line.split_whitespace().count() >= 5
            && !line.contains("javascript")
            && !POLICY.iter().any(|p| line.contains(p));
        if kept {
            sentences += line
                .split_inclusive(['.', '!', '?'])
                .filter(|s| {
                    s.trim_end().ends_with(['.', '!', '?']) && s.split_whitespace().count() > 0
                })
                .count()
                .max(1);
        }
    }
    sentences >= 3
}

/// FineWeb custom rules: at least 12% of lines end with punctuation; characters in duplicated lines are
/// less than 10%; lines shorter than 30 characters are at most 67%; newlines per word at most 0.3.
pub fn fineweb(text: &str) -> bool {
    let s = TextStats::of(text);
    s.lines > 0
        && s.punct_end_line_fraction >= 0.12
        && s.duplicate_line_char_fraction < 0.1
        && s.short_line_fraction <= 0.67
        && s.newline_ratio <= 0.3
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSE: &str = "The history of the project began with a small group of volunteers who wanted \
        to build a free operating system. They worked with care and attention, and that spirit has \
        remained with the community to this day. Over the years the distribution grew to include \
        thousands of packages, and the developers have maintained a strong commitment to free software. \
        The social contract describes the promises made to users and to the wider free software \
        community, and the constitution defines how decisions are made within the project.";

    #[test]
    fn prose_passes_every_rule() {
        assert!(gopher(PROSE, stop_words("en").unwrap()));
        assert!(c4(PROSE));
        assert!(fineweb(PROSE));
    }

    #[test]
    fn each_rule_rejects_its_case() {
        assert!(!gopher(
            "too short to be a document",
            stop_words("en").unwrap()
        ));
        let repeated = format!("{PROSE}\n").repeat(5);
        assert!(
            !gopher(&repeated, stop_words("en").unwrap()),
            "duplicate lines"
        );
        let spam = "buy cheap pills now ".repeat(40);
        assert!(!gopher(&spam, stop_words("none").unwrap()), "top n-gram");
        assert!(!c4(&format!("{PROSE} lorem ipsum dolor sit amet.")));
        assert!(!c4(&format!("{PROSE}\nfunction f() {{ return 1; }}")));
        assert!(!c4("One short line."));
        let menu = "Home\nAbout\nContact\nProducts\nNews\nBlog\nLogin\n".repeat(3);
        assert!(!fineweb(&menu));
    }

    #[test]
    fn russian_stop_words() {
        let ru = "История проекта началась с небольшой группы добровольцев, которые хотели создать \
            свободную операционную систему. Они работали с большой заботой и вниманием, и этот дух \
            сохранился в сообществе до сих пор. С годами дистрибутив вырос и включил тысячи пакетов, \
            а разработчики сохранили приверженность свободному программному обеспечению, как и \
            раньше. Общественный договор описывает обещания пользователям и сообществу.";
        assert!(gopher(ru, stop_words("ru").unwrap()));
        assert!(
            !gopher(ru, stop_words("en").unwrap()),
            "no English stop words"
        );
        assert!(stop_words("xx").is_none());
    }
}
