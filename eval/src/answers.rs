//! Checks of generated answers that need no program run: the final answer of a math solution
//! (`#### N`, `\boxed{…}`, else the last number) compared after numeric normalisation, exact and
//! contains matches, regular expressions, chrF, and the unbiased pass@k estimator.
use serde::{Deserialize, Serialize};

/// How a generated answer is compared with its reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMetric {
    /// The final answer (see [`extract_answer`]) equals the reference's, numbers compared as numbers.
    Math,
    /// The trimmed completion equals the trimmed reference.
    Exact,
    /// The completion contains the reference (case-sensitive).
    Contains,
    /// The completion matches the reference, a regular expression.
    Regex,
    /// chrF (character n-grams up to 6, β = 2) of the completion against the reference, 0–1.
    Chrf,
}

impl std::str::FromStr for AnswerMetric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "math" | "exact_match" | "number" => Self::Math,
            "exact" => Self::Exact,
            "contains" => Self::Contains,
            "regex" => Self::Regex,
            "chrf" => Self::Chrf,
            other => {
                return Err(format!(
                    "unknown metric {other:?} (exact, contains, regex, chrf, math)"
                ))
            }
        })
    }
}

/// The final answer of a solution: after the last `####`, else the last `\boxed{…}`, else the last
/// number; `None` when there is none of these.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(at) = text.rfind("####") {
        let rest = text[at + 4..].trim();
        let line = rest.lines().next().unwrap_or("").trim();
        if !line.is_empty() {
            return Some(line.to_string());
        }
    }
    if let Some(boxed) = last_boxed(text) {
        return Some(boxed);
    }
    last_number(text)
}

/// The content of the last `\boxed{…}`, braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// The last number in `text` (sign, digits with `,` thousands separators, a decimal part).
fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let mut start = i;
            if start > 0 && chars[start - 1] == '-' {
                start -= 1;
            }
            let mut end = i;
            while end < chars.len()
                && (chars[end].is_ascii_digit()
                    || ((chars[end] == ',' || chars[end] == '.')
                        && end + 1 < chars.len()
                        && chars[end + 1].is_ascii_digit()))
            {
                end += 1;
            }
            last = Some(chars[start..end].iter().collect::<String>());
            i = end;
        } else {
            i += 1;
        }
    }
    last
}

/// A number from an answer: `$`, `,`, `%`, spaces and a trailing `.` removed; fractions `a/b`.
fn parse_number(answer: &str) -> Option<f64> {
    let cleaned: String = answer
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| !matches!(c, '$' | ',' | '%' | ' '))
        .collect();
    if let Some((a, b)) = cleaned.split_once('/') {
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Whether two final answers agree: equal numbers (to 1e-9, relative), else equal text after
/// trimming, lower-casing and dropping a trailing `.`.
pub fn answers_match(predicted: &str, reference: &str) -> bool {
    match (parse_number(predicted), parse_number(reference)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        _ => {
            let norm = |s: &str| s.trim().trim_end_matches('.').trim().to_lowercase();
            norm(predicted) == norm(reference)
        }
    }
}

/// chrF (Popović 2015, as sacrebleu computes it by default): character n-grams of orders 1–6 without
/// spaces, precision and recall averaged over orders, F with β = 2; 0–1.
pub fn chrf(hypothesis: &str, reference: &str) -> f64 {
    use std::collections::HashMap;
    let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<Vec<_>>();
    let (h, r) = (strip(hypothesis), strip(reference));
    fn grams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
        let mut counts: HashMap<&[char], usize> = HashMap::new();
        if chars.len() >= n {
            for w in chars.windows(n) {
                *counts.entry(w).or_default() += 1;
            }
        }
        counts
    }
    let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0usize);
    for n in 1..=6 {
        let (hg, rg) = (grams(&h, n), grams(&r, n));
        let (hn, rn): (usize, usize) = (hg.values().sum(), rg.values().sum());
        if hn == 0 || rn == 0 {
            continue;
        }
        let common: usize = hg
            .iter()
            .map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0)))
            .sum();
        precision += common as f64 / hn as f64;
        recall += common as f64 / rn as f64;
        orders += 1;
    }
    if orders == 0 {
        return 0.0;
    }
    let (p, r) = (precision / orders as f64, recall / orders as f64);
    let beta2 = 4.0;
    if p + r == 0.0 {
        0.0
    } else {
        (1.0 + beta2) * p * r / (beta2 * p + r)
    }
}

/// The unbiased estimator of pass@k from `n` samples of which `c` passed (Chen et al. 2021):
/// 1 − C(n−c, k) / C(n, k), computed as a product to stay exact for large `n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || k > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    let mut fail = 1.0;
    for i in (n - c + 1)..=n {
        fail *= 1.0 - k as f64 / i as f64;
    }
    1.0 - fail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_are_extracted_in_order_of_preference() {
        assert_eq!(
            extract_answer("She has 3 + 4 = 7 apples.\n#### 7").as_deref(),
            Some("7")
        );
        assert_eq!(
            extract_answer("So the answer is \\boxed{\\frac{1}{2}} and not 3").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_answer("It costs $1,250.50, then 3 more.").as_deref(),
            Some("3")
        );
        assert_eq!(extract_answer("minus -12 degrees").as_deref(), Some("-12"));
        assert_eq!(extract_answer("no digits here"), None);
    }

    #[test]
    fn answers_are_compared_as_numbers_when_they_are_numbers() {
        assert!(answers_match("$1,250.00", "1250"));
        assert!(answers_match("18.", "18"));
        assert!(answers_match("1/2", "0.5"));
        assert!(!answers_match("18", "19"));
        assert!(answers_match(" Paris. ", "paris"));
        assert!(!answers_match("Lyon", "Paris"));
    }

    #[test]
    fn chrf_is_one_for_equal_texts_and_falls_with_distance() {
        assert!((chrf("кошка сидит на окне", "кошка сидит на окне") - 1.0).abs() < 1e-12);
        let near = chrf("кошка сидит на окне", "кошка спит на окне");
        let far = chrf("собака бежит", "кошка спит на окне");
        assert!(near > 0.5 && near < 1.0, "{near}");
        assert!(far < near, "{far} {near}");
        assert_eq!(chrf("", "abc"), 0.0);
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert_eq!(pass_at_k(10, 10, 5), 1.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // 1 - C(7,2)/C(10,2) = 1 - 21/45
        assert!((pass_at_k(10, 3, 2) - (1.0 - 21.0 / 45.0)).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 1, 5), 1.0);
    }
}
