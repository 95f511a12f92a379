//! Language identification with whatlang's embedded trigram model (no files, no network).
//!
//! Documents are judged on a sample — up to 2,048 characters from the start and 2,048 from the middle
//! — so that the cost per document is bounded however long it is.
use whatlang::Lang;

/// ISO 639-3 (whatlang) ↔ ISO 639-1 codes of the languages that have both.
const ISO_639_1: &[(&str, &str)] = &[
    ("afr", "af"),
    ("aka", "ak"),
    ("amh", "am"),
    ("ara", "ar"),
    ("aze", "az"),
    ("bel", "be"),
    ("ben", "bn"),
    ("bul", "bg"),
    ("cat", "ca"),
    ("ces", "cs"),
    ("cmn", "zh"),
    ("dan", "da"),
    ("deu", "de"),
    ("ell", "el"),
    ("eng", "en"),
    ("epo", "eo"),
    ("est", "et"),
    ("fin", "fi"),
    ("fra", "fr"),
    ("guj", "gu"),
    ("heb", "he"),
    ("hin", "hi"),
    ("hrv", "hr"),
    ("hun", "hu"),
    ("hye", "hy"),
    ("ind", "id"),
    ("ita", "it"),
    ("jav", "jv"),
    ("jpn", "ja"),
    ("kan", "kn"),
    ("kat", "ka"),
    ("khm", "km"),
    ("kor", "ko"),
    ("lat", "la"),
    ("lav", "lv"),
    ("lit", "lt"),
    ("mal", "ml"),
    ("mar", "mr"),
    ("mkd", "mk"),
    ("mya", "my"),
    ("nep", "ne"),
    ("nld", "nl"),
    ("nob", "nb"),
    ("ori", "or"),
    ("pan", "pa"),
    ("pes", "fa"),
    ("pol", "pl"),
    ("por", "pt"),
    ("ron", "ro"),
    ("rus", "ru"),
    ("sin", "si"),
    ("slk", "sk"),
    ("slv", "sl"),
    ("sna", "sn"),
    ("spa", "es"),
    ("srp", "sr"),
    ("swe", "sv"),
    ("tam", "ta"),
    ("tel", "te"),
    ("tgl", "tl"),
    ("tha", "th"),
    ("tuk", "tk"),
    ("tur", "tr"),
    ("ukr", "uk"),
    ("urd", "ur"),
    ("uzb", "uz"),
    ("vie", "vi"),
    ("yid", "yi"),
    ("zul", "zu"),
];

/// Characters sampled from each of the start and the middle of a document.
const SAMPLE_CHARS: usize = 2048;

fn sample(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= 4 * SAMPLE_CHARS {
        return text.into();
    }
    let prefix_end = text
        .char_indices()
        .nth(SAMPLE_CHARS)
        .map_or(text.len(), |(i, _)| i);
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    let rest = &text[middle..];
    let middle_end = rest
        .char_indices()
        .nth(SAMPLE_CHARS)
        .map_or(rest.len(), |(i, _)| i);
    format!("{}\n{}", &text[..prefix_end], &rest[..middle_end]).into()
}

/// The code dapt prints for a language: ISO 639-1 where it exists, else ISO 639-3.
pub fn code(lang: Lang) -> &'static str {
    let three = lang.code();
    ISO_639_1
        .iter()
        .find(|(t, _)| *t == three)
        .map_or(three, |(_, two)| two)
}

/// A language from an ISO 639-1 or 639-3 code (`ru`, `rus`, `zh`, `cmn`).
pub fn parse_language(code: &str) -> Option<Lang> {
    let code = code.trim().to_ascii_lowercase();
    let three = ISO_639_1
        .iter()
        .find(|(_, two)| *two == code)
        .map_or(code.as_str(), |(three, _)| three);
    Lang::from_code(three)
}

/// The language of a text, or `None` when the model cannot decide (no letters, too short).
pub fn lang_id(text: &str) -> Option<&'static str> {
    whatlang::detect(&sample(text)).map(|info| code(info.lang()))
}

/// Confidence in [0, 1] that `text` is in `target`: the model's confidence when `target` is its
/// answer, 0 otherwise.
pub fn lang_score(text: &str, target: Lang) -> f64 {
    match whatlang::detect(&sample(text)) {
        Some(info) if info.lang() == target => info.confidence(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        assert_eq!(parse_language("ru"), Some(Lang::Rus));
        assert_eq!(parse_language("RUS"), Some(Lang::Rus));
        assert_eq!(parse_language("zh"), Some(Lang::Cmn));
        assert_eq!(parse_language("xx"), None);
        assert_eq!(code(Lang::Ukr), "uk");
    }

    #[test]
    fn clear_cases() {
        assert_eq!(
            lang_id("Съешь же ещё этих мягких французских булок, да выпей чаю."),
            Some("ru")
        );
        assert_eq!(
            lang_id("The quick brown fox jumps over the lazy dog near the river bank."),
            Some("en")
        );
        assert_eq!(lang_id("12345 !!!"), None);
        let ru =
            "Это предложение написано по-русски и довольно длинное, чтобы модель уверенно решила.";
        assert!(lang_score(ru, Lang::Rus) > 0.5);
        assert_eq!(lang_score(ru, Lang::Eng), 0.0);
    }

    #[test]
    fn long_texts_are_sampled() {
        let long = "Длинный русский текст о погоде и природе. ".repeat(50_000);
        assert!(long.len() > 2_000_000);
        assert_eq!(lang_id(&long), Some("ru"));
    }
}
