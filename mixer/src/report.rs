//! The reports that explain a mix: lang-swap attribution per component, and the QA grounding check
//! of instruct/QA components against the text of earlier stages.
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// What one document contributes to its component's attribution.
#[derive(Clone, Copy, Debug, Default)]
pub struct DocumentTraits {
    /// Its detected language is not the target (or undecided).
    pub other_language: bool,
    /// It looks like code.
    pub code: bool,
    /// It looks like math.
    pub math: bool,
}

/// Lang-swap attribution of one component: which share of it is not in the target language, or is
/// code or math — the content that teaches a model to answer in English or switch script.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// The target language, if the mix names one.
    pub target_language: Option<String>,
    /// Documents of the component.
    pub documents: u64,
    /// Their tokens.
    pub tokens: u64,
    /// Shares of documents and tokens whose detected language is another than the target (or
    /// undecided).
    pub other_language_documents: f64,
    /// (See `other_language_documents`.)
    pub other_language_tokens: f64,
    /// Share of documents that look like code.
    pub code_documents: f64,
    /// Share of tokens in them.
    pub code_tokens: f64,
    /// Share of documents that look like math.
    pub math_documents: f64,
    /// Share of tokens in them.
    pub math_tokens: f64,
    /// Detected languages by documents (top ten).
    pub languages: BTreeMap<String, u64>,
}

/// Language, code and math traits of a text.
pub fn traits(text: &str, target: Option<&str>) -> (Option<&'static str>, DocumentTraits) {
    let language = dapt_sql::functions::lang::lang_id(text);
    let other_language = target.is_some_and(|t| language != Some(t));
    (
        language,
        DocumentTraits {
            other_language,
            code: looks_like_code(text),
            math: looks_like_math(text),
        },
    )
}

/// Code: at least 30% of the non-empty lines end like statements or blocks (`;`, `{`, `}`, `)`, `:`
/// after a keyword) or start with a comment or a keyword of a common language.
pub fn looks_like_code(text: &str) -> bool {
    const KEYWORDS: [&str; 16] = [
        "fn ",
        "def ",
        "let ",
        "use ",
        "import ",
        "return ",
        "if (",
        "for (",
        "class ",
        "pub ",
        "#include",
        "const ",
        "var ",
        "struct ",
        "impl ",
        "function ",
    ];
    let (mut lines, mut code) = (0usize, 0usize);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        lines += 1;
        let ends = line.ends_with(';')
            || line.ends_with('{')
            || line.ends_with('}')
            || line.ends_with(");");
        let starts = line.starts_with("//")
            || line.starts_with("/*")
            || KEYWORDS.iter().any(|k| line.starts_with(k));
        if ends || starts {
            code += 1;
        }
    }
    lines >= 3 && code * 10 >= lines * 3
}

/// Math: at least 5 TeX commands or `$` delimiters per 1000 characters.
pub fn looks_like_math(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut markers = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'$' || b == b'\\' && bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
            markers += 1;
        }
    }
    text.len() >= 40 && markers * 1000 >= 5 * text.len()
}

/// Accumulates an [`Attribution`] (whole counts only, so parts add up exactly in any order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributionBuilder {
    target: Option<String>,
    documents: u64,
    tokens: u64,
    other: (u64, u64),
    code: (u64, u64),
    math: (u64, u64),
    languages: BTreeMap<String, u64>,
}

impl AttributionBuilder {
    /// An empty attribution for `target` language.
    pub fn new(target: Option<String>) -> Self {
        Self {
            target,
            ..Default::default()
        }
    }

    /// Counts one document of `tokens` tokens in `language` with `traits`.
    pub fn add(&mut self, language: Option<&str>, traits: DocumentTraits, tokens: u64) {
        self.documents += 1;
        self.tokens += tokens;
        let count = |flag: bool, slot: &mut (u64, u64)| {
            if flag {
                slot.0 += 1;
                slot.1 += tokens;
            }
        };
        count(traits.other_language, &mut self.other);
        count(traits.code, &mut self.code);
        count(traits.math, &mut self.math);
        *self
            .languages
            .entry(language.unwrap_or("und").to_string())
            .or_default() += 1;
    }

    /// Adds the counts of another part of the same component.
    pub fn merge(&mut self, other: &AttributionBuilder) {
        self.documents += other.documents;
        self.tokens += other.tokens;
        for (mine, theirs) in [
            (&mut self.other, other.other),
            (&mut self.code, other.code),
            (&mut self.math, other.math),
        ] {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        for (language, count) in &other.languages {
            *self.languages.entry(language.clone()).or_default() += count;
        }
    }

    /// The shares and the top ten languages.
    pub fn finish(self) -> Attribution {
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let mut languages: Vec<(String, u64)> = self.languages.into_iter().collect();
        languages.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        languages.truncate(10);
        Attribution {
            target_language: self.target,
            documents: self.documents,
            tokens: self.tokens,
            other_language_documents: share(self.other.0, self.documents),
            other_language_tokens: share(self.other.1, self.tokens),
            code_documents: share(self.code.0, self.documents),
            code_tokens: share(self.code.1, self.tokens),
            math_documents: share(self.math.0, self.documents),
            math_tokens: share(self.math.1, self.tokens),
            languages: languages.into_iter().collect(),
        }
    }
}

/// Lower-cased words of a text (letters and digits).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Content n-grams of a text, hashed: word trigrams, or for texts under three words their words of
/// four or more characters.
pub fn content_ngrams(text: &str) -> Vec<u64> {
    let words = words(text);
    if words.len() >= 3 {
        words
            .windows(3)
            .map(|w| xxhash_rust::xxh3::xxh3_64(w.join(" ").as_bytes()))
            .collect()
    } else {
        words
            .iter()
            .filter(|w| w.chars().count() >= 4)
            .map(|w| xxhash_rust::xxh3::xxh3_64(w.as_bytes()))
            .collect()
    }
}

/// The n-grams of earlier stages' text (word trigrams and long words).
#[derive(Default)]
pub struct Knowledge {
    ngrams: HashSet<u64>,
}

impl Knowledge {
    /// Adds one text's n-grams.
    pub fn add(&mut self, text: &str) {
        let words = words(text);
        for w in words.windows(3) {
            self.ngrams
                .insert(xxhash_rust::xxh3::xxh3_64(w.join(" ").as_bytes()));
        }
        for w in words.iter().filter(|w| w.chars().count() >= 4) {
            self.ngrams.insert(xxhash_rust::xxh3::xxh3_64(w.as_bytes()));
        }
    }

    /// Adds another stage's n-grams.
    pub fn extend(&mut self, other: Knowledge) {
        self.ngrams.extend(other.ngrams);
    }

    /// Its n-gram hashes, sorted (a job array's part of a stage's knowledge).
    pub fn hashes(&self) -> Vec<u64> {
        let mut hashes: Vec<u64> = self.ngrams.iter().copied().collect();
        hashes.sort_unstable();
        hashes
    }

    /// Adds n-gram hashes (another job's [`Knowledge::hashes`]).
    pub fn extend_hashes(&mut self, hashes: impl IntoIterator<Item = u64>) {
        self.ngrams.extend(hashes);
    }

    /// True when no text was added.
    pub fn is_empty(&self) -> bool {
        self.ngrams.is_empty()
    }

    /// Share of the answer's content n-grams found in the knowledge (1 for an answer without any).
    pub fn grounding(&self, answer: &str) -> f64 {
        let ngrams = content_ngrams(answer);
        if ngrams.is_empty() {
            return 1.0;
        }
        ngrams.iter().filter(|h| self.ngrams.contains(h)).count() as f64 / ngrams.len() as f64
    }
}

/// One of the least-grounded answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UngroundedExample {
    /// Its id.
    pub id: String,
    /// Share of its n-grams found in earlier stages.
    pub grounding: f64,
    /// The answer.
    pub answer: String,
}

/// The QA grounding check of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Grounding {
    /// Answers checked.
    pub answers: u64,
    /// Mean share of answer n-grams found in earlier stages.
    pub mean: f64,
    /// Share of answers with at least half of their n-grams found.
    pub grounded_share: f64,
    /// The least-grounded answers, lowest first.
    pub least_grounded: Vec<UngroundedExample>,
}

/// Characters of an answer a [`Grounding`] example shows.
pub const SNIPPET_CHARS: usize = 200;

/// Accumulates a [`Grounding`].
#[derive(Default)]
pub struct GroundingBuilder {
    scores: Vec<(f64, String, String)>,
}

impl GroundingBuilder {
    /// Records one answer's grounding.
    pub fn add(&mut self, id: &str, answer: &str, grounding: f64) {
        let snippet: String = answer.chars().take(SNIPPET_CHARS).collect();
        self.scores.push((grounding, id.to_string(), snippet));
    }

    /// The summary, with up to `examples` least-grounded answers.
    pub fn finish(mut self, examples: usize) -> Grounding {
        let answers = self.scores.len() as u64;
        if answers == 0 {
            return Grounding::default();
        }
        let mean = self.scores.iter().map(|s| s.0).sum::<f64>() / answers as f64;
        let grounded = self.scores.iter().filter(|s| s.0 >= 0.5).count() as f64 / answers as f64;
        self.scores
            .sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Grounding {
            answers,
            mean,
            grounded_share: grounded,
            least_grounded: self
                .scores
                .into_iter()
                .take(examples)
                .map(|(grounding, id, answer)| UngroundedExample {
                    id,
                    grounding,
                    answer,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_math_and_grounding_detectors() {
        let rust = "use std::io;\nfn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n";
        assert!(looks_like_code(rust));
        assert!(!looks_like_code(
            "Это обычный текст.\nВторая строка.\nТретья строка."
        ));
        assert!(looks_like_math(
            "Let $x = \\frac{a}{b}$ and $\\alpha \\leq \\beta$ hold."
        ));
        assert!(!looks_like_math(
            "A plain sentence about the weather in Moscow today."
        ));
        let mut knowledge = Knowledge::default();
        knowledge.add("Столица Франции — Париж, крупнейший город страны.");
        assert_eq!(knowledge.grounding("Столица Франции — Париж"), 1.0);
        assert_eq!(knowledge.grounding("Луна сделана из зелёного сыра"), 0.0);
    }
}
