//! Pre-tokenisation without a regex engine for the split patterns most byte-level tokenizers use:
//! GPT-2's, Llama 3's (`\p{N}{1,3}`) and Qwen 2/3's (`\p{N}`). Each is a hand-written scanner
//! that walks the text once, classifying characters through a two-level table built from
//! `regex-syntax`'s own `\p{L}`, `\p{N}` and `\s` (so the classes are the regex's, character for
//! character), and decides each piece the way the pattern's leftmost-first alternation does.
//! The unit test below checks every scanner against the backtracking regex engine on 20,000
//! strings made to hit every alternative and boundary; the packer's identity test checks ids
//! against HF on the whole test corpus.

/// GPT-2's pre-tokenisation regex (ByteLevel with `use_regex`).
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's split regex.
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2 and 3's split regex: Llama 3's with one digit per piece.
pub(crate) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const OTHER: u8 = 0;
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 3;

/// Character classes by code point: a block index per 256 code points into deduplicated blocks.
struct Classes {
    /// The classes of ASCII characters (the first block), looked up without the index.
    ascii: [u8; 128],
    index: Vec<u16>,
    blocks: Vec<u8>,
}

impl Classes {
    fn new() -> Result<Self, String> {
        let mut flat = vec![OTHER; 0x11_0000];
        // Letters and numbers are disjoint general categories; no white-space character is either.
        for (pattern, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (start, end) in unicode_class(pattern)? {
                flat[start as usize..=end as usize].fill(class);
            }
        }
        let mut index = Vec::with_capacity(flat.len() / 256);
        let mut blocks: Vec<u8> = Vec::new();
        let mut seen: std::collections::HashMap<&[u8], u16> = std::collections::HashMap::new();
        for block in flat.chunks(256) {
            let next = seen.len();
            let at = *seen.entry(block).or_insert_with(|| {
                blocks.extend_from_slice(block);
                next as u16
            });
            index.push(at);
        }
        let mut ascii = [OTHER; 128];
        ascii.copy_from_slice(&flat[..128]);
        Ok(Self {
            ascii,
            index,
            blocks,
        })
    }

    #[inline(always)]
    fn of(&self, c: u32) -> u8 {
        let block = self.index[(c >> 8) as usize] as usize;
        self.blocks[(block << 8) | (c & 0xff) as usize]
    }
}

/// The code point ranges of a one-class pattern, as the regex engines read it.
fn unicode_class(pattern: &str) -> Result<Vec<(u32, u32)>, String> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern).map_err(|e| format!("{pattern}: {e}"))?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => Ok(class
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect()),
        _ => Err(format!("{pattern} is not a character class")),
    }
}

/// The code point at `at` (a character boundary of valid UTF-8) and its length in bytes.
#[inline(always)]
fn decode(b: &[u8], at: usize) -> (u32, usize) {
    let b0 = b[at];
    if b0 < 0x80 {
        (u32::from(b0), 1)
    } else if b0 < 0xE0 {
        ((u32::from(b0 & 0x1F) << 6) | u32::from(b[at + 1] & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            (u32::from(b0 & 0x0F) << 12)
                | (u32::from(b[at + 1] & 0x3F) << 6)
                | u32::from(b[at + 2] & 0x3F),
            3,
        )
    } else {
        (
            (u32::from(b0 & 0x07) << 18)
                | (u32::from(b[at + 1] & 0x3F) << 12)
                | (u32::from(b[at + 2] & 0x3F) << 6)
                | u32::from(b[at + 3] & 0x3F),
            4,
        )
    }
}

/// Which pattern a [`Scanner`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gpt2,
    /// Llama 3 (`max_digits` 3) or Qwen 2/3 (1).
    Llama3 {
        max_digits: usize,
    },
}

/// A hand-written splitter for one of the known patterns.
pub(crate) struct Scanner {
    kind: Kind,
    classes: &'static Classes,
}

/// The class table, built once per process (≈1 MB of work) and shared by every scanner.
static CLASSES: std::sync::OnceLock<Result<Classes, String>> = std::sync::OnceLock::new();

impl Scanner {
    /// The scanner for `pattern`, if it is one of the known ones.
    pub(crate) fn for_pattern(pattern: &str) -> Result<Option<Self>, String> {
        let kind = match pattern {
            GPT2_PATTERN => Kind::Gpt2,
            LLAMA3_PATTERN => Kind::Llama3 { max_digits: 3 },
            QWEN2_PATTERN => Kind::Llama3 { max_digits: 1 },
            _ => return Ok(None),
        };
        Ok(Some(Self {
            kind,
            classes: CLASSES
                .get_or_init(Classes::new)
                .as_ref()
                .map_err(Clone::clone)?,
        }))
    }

    /// Calls `piece` with each piece of `text` in order.
    pub(crate) fn split<E>(
        &self,
        text: &str,
        mut piece: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        let b = text.as_bytes();
        let mut at = 0;
        while at < b.len() {
            let end = match self.kind {
                Kind::Gpt2 => self.gpt2(b, at),
                Kind::Llama3 { max_digits } => self.llama3(b, at, max_digits),
            };
            piece(&text[at..end])?;
            at = end;
        }
        Ok(())
    }

    #[inline(always)]
    fn class_at(&self, b: &[u8], at: usize) -> (u32, usize, u8) {
        let b0 = b[at];
        if b0 < 0x80 {
            return (u32::from(b0), 1, self.classes.ascii[b0 as usize]);
        }
        let (c, n) = decode(b, at);
        (c, n, self.classes.of(c))
    }

    /// The end of the run of `class` characters from `at`.
    #[inline(always)]
    fn run(&self, b: &[u8], mut at: usize, class: u8) -> usize {
        while at < b.len() {
            let (_, n, cl) = self.class_at(b, at);
            if cl != class {
                break;
            }
            at += n;
        }
        at
    }

    /// The end of at most `max` `class` characters from `at`.
    #[inline]
    fn run_of_at_most(&self, b: &[u8], mut at: usize, class: u8, max: usize) -> usize {
        for _ in 0..max {
            if at >= b.len() {
                break;
            }
            let (_, n, cl) = self.class_at(b, at);
            if cl != class {
                break;
            }
            at += n;
        }
        at
    }

    /// The run of white space from `at`: its end, the start of its last character, and the end
    /// of its last `\r` or `\n` if it has one.
    #[inline]
    fn space_run(&self, b: &[u8], at: usize) -> (usize, usize, Option<usize>) {
        let (mut end, mut last, mut after_newline) = (at, at, None);
        while end < b.len() {
            let (c, n, cl) = self.class_at(b, end);
            if cl != SPACE {
                break;
            }
            last = end;
            end += n;
            if c == u32::from(b'\r') || c == u32::from(b'\n') {
                after_newline = Some(end);
            }
        }
        (end, last, after_newline)
    }

    /// The end of `\s+(?!\S)|\s+` for the run `at..end` whose last character starts at `last`:
    /// the whole run when the text ends after it or it is one character; else the run without
    /// its last character, which the look-ahead leaves for the next piece.
    #[inline]
    fn spaces(b: &[u8], at: usize, end: usize, last: usize) -> usize {
        if end == b.len() || last == at {
            end
        } else {
            last
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` after the apostrophe at `at`: the length of the suffix matched
    /// (without the apostrophe). `fold`: case-insensitive, as `(?i:…)` reads it (Unicode simple
    /// case folding, so `ſ` is an `s`).
    #[inline]
    fn contraction(b: &[u8], at: usize, fold: bool) -> Option<usize> {
        let lower = |i: usize| -> Option<u8> {
            let c = *b.get(i)?;
            Some(if fold { c.to_ascii_lowercase() } else { c })
        };
        match lower(at + 1)? {
            b's' | b't' | b'm' | b'd' => Some(1),
            b'r' if lower(at + 2)? == b'e' => Some(2),
            b'v' if lower(at + 2)? == b'e' => Some(2),
            b'l' if lower(at + 2)? == b'l' => Some(2),
            // U+017F LATIN SMALL LETTER LONG S folds to s.
            0xC5 if fold && b.get(at + 2) == Some(&0xBF) => Some(2),
            _ => None,
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    #[inline]
    fn gpt2(&self, b: &[u8], at: usize) -> usize {
        let (c, n, class) = self.class_at(b, at);
        if c == u32::from(b'\'') {
            if let Some(m) = Self::contraction(b, at, false) {
                return at + 1 + m;
            }
        }
        if c == u32::from(b' ') && at + 1 < b.len() {
            let (_, n2, next) = self.class_at(b, at + 1);
            if next != SPACE {
                return self.run(b, at + 1 + n2, next);
            }
        }
        match class {
            SPACE => {
                let (end, last, _) = self.space_run(b, at);
                Self::spaces(b, at, end, last)
            }
            _ => self.run(b, at + n, class),
        }
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    #[inline]
    fn llama3(&self, b: &[u8], at: usize, max_digits: usize) -> usize {
        let (c, n, class) = self.class_at(b, at);
        if c == u32::from(b'\'') {
            if let Some(m) = Self::contraction(b, at, true) {
                return at + 1 + m;
            }
        }
        match class {
            LETTER => return self.run(b, at + n, LETTER),
            NUMBER => return self.run_of_at_most(b, at + n, NUMBER, max_digits - 1),
            _ => {}
        }
        let newline = c == u32::from(b'\r') || c == u32::from(b'\n');
        let next = (at + n < b.len()).then(|| self.class_at(b, at + n));
        // One character that is no newline, letter or digit, then letters.
        if let Some((_, n2, LETTER)) = next {
            if !newline {
                return self.run(b, at + n + n2, LETTER);
            }
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let others = match (class, next) {
            (OTHER, _) => Some(at + n),
            (_, Some((_, n2, OTHER))) if c == u32::from(b' ') => Some(at + n + n2),
            _ => None,
        };
        if let Some(from) = others {
            let mut end = self.run(b, from, OTHER);
            while end < b.len() && matches!(b[end], b'\r' | b'\n') {
                end += 1;
            }
            return end;
        }
        // White space: `\s*[\r\n]+` ends after the run's last newline, if it has one.
        let (end, last, after_newline) = self.space_run(b, at);
        after_newline.unwrap_or_else(|| Self::spaces(b, at, end, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Letters, numbers and white space of the table are the regex's, at every code point.
    #[test]
    fn classes_are_the_regex_classes_at_every_code_point() {
        let classes = Classes::new().unwrap();
        let [letter, number, space] =
            [r"^\p{L}$", r"^\p{N}$", r"^\s$"].map(|p| regex_automata::meta::Regex::new(p).unwrap());
        for c in (0..0x11_0000u32).filter_map(char::from_u32) {
            let mut buf = [0; 4];
            let s: &str = c.encode_utf8(&mut buf);
            let expected = if letter.is_match(s) {
                LETTER
            } else if number.is_match(s) {
                NUMBER
            } else if space.is_match(s) {
                SPACE
            } else {
                OTHER
            };
            assert_eq!(
                classes.of(u32::from(c)),
                expected,
                "{c:?} U+{:04X}",
                u32::from(c)
            );
            assert_eq!(decode(s.as_bytes(), 0), (u32::from(c), s.len()));
        }
        assert!(
            classes.blocks.len() < 200 * 256,
            "{} blocks",
            classes.blocks.len() / 256
        );
    }
}
