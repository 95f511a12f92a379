//! Lang-swap: a generation for a target-language prompt that slips into another language or script
//! (seed §6: a known side effect of language adaptation). A text is cut into spans (sentences, lines);
//! a span with enough letters is foreign when most of its letters are in a script other than the target
//! language's, or when the language identifier that SQL's `lang_id` uses is sure it is another language.
use dapt_core::lang::{code, parse_language};
use dapt_core::script::{script_ratio, Script};
use serde::{Deserialize, Serialize};

/// A span of a text in another language or script.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForeignSpan {
    /// The span's text.
    pub span: String,
    /// The language detected (ISO 639-1 where there is one), or the script.
    pub detected: String,
}

/// The script a language is written in, for the languages whose script tells them apart.
fn script_of(language: &str) -> Option<Script> {
    Some(match language {
        "ru" | "uk" | "be" | "bg" | "sr" | "mk" | "kk" => Script::Cyrillic,
        "en" | "de" | "fr" | "es" | "it" | "pt" | "nl" | "pl" | "cs" | "sv" | "da" | "fi"
        | "tr" => Script::Latin,
        "el" => Script::Greek,
        "ar" | "fa" | "ur" => Script::Arabic,
        "he" | "yi" => Script::Hebrew,
        "hi" | "mr" | "ne" => Script::Devanagari,
        "zh" => Script::Han,
        "ko" => Script::Hangul,
        "hy" => Script::Armenian,
        "ka" => Script::Georgian,
        "th" => Script::Thai,
        _ => return None,
    })
}

const SCRIPTS: [Script; 7] = [
    Script::Latin,
    Script::Cyrillic,
    Script::Greek,
    Script::Arabic,
    Script::Han,
    Script::Hangul,
    Script::Devanagari,
];

/// Spans of `text` not in `target` (an ISO 639-1/3 code); spans with fewer than `min_letters` letters
/// are not judged.
pub fn foreign_spans(text: &str, target: &str, min_letters: usize) -> Vec<ForeignSpan> {
    let target_lang = parse_language(target);
    let target_code = target_lang.map(code).unwrap_or(target);
    let target_script = script_of(target_code);
    let mut out = Vec::new();
    for span in text.split(['.', '!', '?', '\n', ';', '。']) {
        let span = span.trim();
        let letters = span.chars().filter(|c| c.is_alphabetic()).count();
        if letters < min_letters {
            continue;
        }
        if let Some(expected) = target_script {
            if script_ratio(span, expected) < 0.5 {
                let dominant = SCRIPTS
                    .iter()
                    .copied()
                    .max_by(|a, b| script_ratio(span, *a).total_cmp(&script_ratio(span, *b)));
                // Name the language when the identifier's answer is written in the dominant script.
                let detected = match whatlang::detect(span) {
                    Some(info)
                        if script_of(code(info.lang())).is_none_or(|s| Some(s) == dominant) =>
                    {
                        code(info.lang()).to_string()
                    }
                    _ => dominant.map(|s| format!("{s:?}")).unwrap_or_default(),
                };
                out.push(ForeignSpan {
                    span: span.to_string(),
                    detected,
                });
                continue;
            }
        }
        if let Some(info) = whatlang::detect(span) {
            let same_script_other = Some(info.lang()) != target_lang
                && info.is_reliable()
                && info.confidence() > 0.9
                && target_script.is_none_or(|s| {
                    script_of(code(info.lang())) != Some(s) || letters >= 4 * min_letters
                });
            if same_script_other {
                out.push(ForeignSpan {
                    span: span.to_string(),
                    detected: code(info.lang()).to_string(),
                });
            }
        }
    }
    out
}

/// Lang-swap over a set of generations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LangSwapReport {
    /// The language the generations should be in.
    pub target_language: String,
    /// Generations judged.
    pub generations: usize,
    /// Generations with at least one foreign span.
    pub swapped: usize,
    /// `swapped / generations`.
    pub rate: f64,
    /// Up to ten swapped generations with their foreign spans.
    pub examples: Vec<LangSwapExample>,
}

/// A swapped generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LangSwapExample {
    /// The prompt.
    pub prompt: String,
    /// The generated continuation.
    pub output: String,
    /// Its foreign spans.
    pub spans: Vec<ForeignSpan>,
}

/// The lang-swap rate of `(prompt, output)` pairs.
pub fn lang_swap(pairs: &[(String, String)], target: &str, min_letters: usize) -> LangSwapReport {
    let mut swapped = 0;
    let mut examples = Vec::new();
    for (prompt, output) in pairs {
        let spans = foreign_spans(output, target, min_letters);
        if !spans.is_empty() {
            swapped += 1;
            if examples.len() < 10 {
                examples.push(LangSwapExample {
                    prompt: prompt.clone(),
                    output: output.clone(),
                    spans,
                });
            }
        }
    }
    LangSwapReport {
        target_language: target.to_string(),
        generations: pairs.len(),
        swapped,
        rate: swapped as f64 / pairs.len().max(1) as f64,
        examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_mixed_language_outputs_are_found() {
        let clean = "Пакетный менеджер устанавливает программы и следит за зависимостями. Обновления приходят из репозитория.";
        let latin = "Пакетный менеджер устанавливает программы. The package manager then resolves all dependencies automatically.";
        let german = "Пакетный менеджер устанавливает программы.\nDer Paketmanager installiert Programme und löst Abhängigkeiten auf.";
        assert!(foreign_spans(clean, "ru", 12).is_empty());
        let spans = foreign_spans(latin, "ru", 12);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].detected, "en");
        assert_eq!(foreign_spans(german, "ru", 12)[0].detected, "de");
        let pairs = vec![
            ("p1".to_string(), clean.to_string()),
            ("p2".to_string(), latin.to_string()),
            ("p3".to_string(), german.to_string()),
            ("p4".to_string(), "Да.".to_string()),
        ];
        let report = lang_swap(&pairs, "ru", 12);
        assert_eq!((report.swapped, report.generations), (2, 4));
        assert_eq!(report.examples[0].prompt, "p2");
        // English target: Russian spans are the foreign ones.
        assert_eq!(foreign_spans(latin, "en", 12)[0].detected, "ru");
    }
}
