//! Writing systems of letters, by Unicode block ranges.

/// Scripts that `script_ratio` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// The Latin script.
    Latin,
    /// The Cyrillic script.
    Cyrillic,
    /// The Greek script.
    Greek,
    /// The Arabic script.
    Arabic,
    /// The Hebrew script.
    Hebrew,
    /// The Devanagari script.
    Devanagari,
    /// The Han script.
    Han,
    /// The Hiragana script.
    Hiragana,
    /// The Katakana script.
    Katakana,
    /// The Hangul script.
    Hangul,
    /// The Armenian script.
    Armenian,
    /// The Georgian script.
    Georgian,
    /// The Thai script.
    Thai,
}

impl Script {
    /// The scripts' names, in the order of the variants.
    pub const NAMES: &'static [&'static str] = &[
        "Latin",
        "Cyrillic",
        "Greek",
        "Arabic",
        "Hebrew",
        "Devanagari",
        "Han",
        "Hiragana",
        "Katakana",
        "Hangul",
        "Armenian",
        "Georgian",
        "Thai",
    ];

    /// Parses a script name (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        use Script::*;
        const ALL: [Script; 13] = [
            Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Han, Hiragana, Katakana, Hangul,
            Armenian, Georgian, Thai,
        ];
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name.trim()))
            .map(|i| ALL[i])
    }

    /// The script of a letter, when it is one of the known ones.
    pub fn of(c: char) -> Option<Self> {
        use Script::*;
        let u = c as u32;
        Some(match u {
            0x41..=0x5A
            | 0x61..=0x7A
            | 0xC0..=0x24F
            | 0x1E00..=0x1EFF
            | 0x2C60..=0x2C7F
            | 0xA720..=0xA7FF
            | 0xFF21..=0xFF3A
            | 0xFF41..=0xFF5A => Latin,
            0x400..=0x52F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Cyrillic,
            0x370..=0x3FF | 0x1F00..=0x1FFF => Greek,
            0x600..=0x6FF | 0x750..=0x77F | 0x8A0..=0x8FF | 0xFB50..=0xFDFF | 0xFE70..=0xFEFF => {
                Arabic
            }
            0x590..=0x5FF | 0xFB1D..=0xFB4F => Hebrew,
            0x900..=0x97F | 0xA8E0..=0xA8FF => Devanagari,
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF => Han,
            0x3040..=0x309F => Hiragana,
            0x30A0..=0x30FF | 0x31F0..=0x31FF => Katakana,
            0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => Hangul,
            0x530..=0x58F => Armenian,
            0x10A0..=0x10FF => Georgian,
            0xE00..=0xE7F => Thai,
            _ => return None,
        })
    }
}

/// Share of the text's letters (alphabetic characters) that are in `script`; 0 without letters.
pub fn script_ratio(text: &str, script: Script) -> f64 {
    let (mut letters, mut matching) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if Script::of(c) == Some(script) {
            matching += 1;
        }
    }
    if letters == 0 {
        0.0
    } else {
        matching as f64 / letters as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        assert_eq!(script_ratio("Привет", Script::Cyrillic), 1.0);
        assert_eq!(script_ratio("Привет, world", Script::Cyrillic), 6.0 / 11.0);
        assert_eq!(script_ratio("1234 ...", Script::Latin), 0.0);
        assert_eq!(script_ratio("", Script::Latin), 0.0);
        assert_eq!(script_ratio("漢字かなカナ", Script::Han), 2.0 / 6.0);
        assert_eq!(Script::parse("cyrillic"), Some(Script::Cyrillic));
        assert_eq!(Script::parse("Klingon"), None);
    }
}
