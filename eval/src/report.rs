//! Side-by-side reports across checkpoints (base, after CPT-1, CPT-2, SFT …): one table of every
//! metric with the delta against the first checkpoint, red flags where a metric got worse (seed §6.2.3:
//! general benchmarks that fall), bar charts of each metric and the training loss curves, as Markdown
//! (charts as SVG files beside it) or one self-contained HTML page (charts inline).
use std::collections::BTreeSet;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::results::EvalResults;

/// A training loss curve (from a `train_log.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossCurve {
    /// Name of the stage or run.
    pub name: String,
    /// (step, loss).
    pub points: Vec<(f64, f64)>,
}

/// What counts as a regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportOptions {
    /// Metric names (substrings) whose fall is a red flag; empty: every metric.
    pub general: Vec<String>,
    /// An accuracy or rate that moves the wrong way by more than this (absolute) is flagged.
    pub absolute_tolerance: f64,
    /// Bits-per-byte or perplexity that grows by more than this share is flagged.
    pub relative_tolerance: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            general: Vec::new(),
            absolute_tolerance: 0.01,
            relative_tolerance: 0.01,
        }
    }
}

/// One flagged regression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedFlag {
    /// The checkpoint's label.
    pub checkpoint: String,
    /// The metric.
    pub metric: String,
    /// Its value for the first (base) checkpoint.
    pub base: f64,
    /// Its value for this checkpoint.
    pub value: f64,
}

/// A rendered report: the document and the SVG charts it refers to (`plots/NAME.svg`).
#[derive(Clone, Debug)]
pub struct Report {
    /// Markdown or HTML.
    pub document: String,
    /// (name, SVG) of each chart.
    pub charts: Vec<(String, String)>,
    /// The regressions flagged.
    pub red_flags: Vec<RedFlag>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn file_name(metric: &str) -> String {
    metric
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

const COLOURS: [&str; 8] = [
    "#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
];

/// A bar chart (SVG) of one metric across checkpoints or variants.
pub fn bar_chart(metric: &str, labels: &[String], values: &[Option<f64>]) -> String {
    let (width, height, left, bottom) = (120 + 90 * labels.len(), 240, 60.0, 50.0);
    let max = values
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(*v))
        .max(1e-12);
    let plot_height = f64::from(height) - bottom - 30.0;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<text x="{}" y="16" text-anchor="middle" font-size="13">{}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/>
"##,
        width / 2,
        escape(metric),
        f64::from(height) - bottom,
        width as f64 - 10.0,
        f64::from(height) - bottom
    );
    for (i, (label, value)) in labels.iter().zip(values).enumerate() {
        let x = left + 20.0 + 90.0 * i as f64;
        if let Some(v) = value {
            let h = plot_height * v / max;
            let y = f64::from(height) - bottom - h;
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{y:.1}" width="50" height="{h:.1}" fill="{}"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
"#,
                COLOURS[i % COLOURS.len()],
                x + 25.0,
                y - 4.0,
                format_value(*v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + 25.0,
            f64::from(height) - bottom + 16.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Loss curves on one chart.
fn loss_chart(curves: &[LossCurve]) -> String {
    let (width, height, left, right, top, bottom) = (640.0, 300.0, 60.0, 150.0, 30.0, 40.0);
    let points = curves.iter().flat_map(|c| c.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1e-9f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let span = (y_max - y_min).max(1e-9);
    let px = |x: f64| left + (width - left - right) * x / x_max;
    let py = |y: f64| top + (height - top - bottom) * (1.0 - (y - y_min) / span);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<text x="{}" y="16" text-anchor="middle" font-size="13">training loss</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#333"/>
<text x="{}" y="{}" text-anchor="end">{y_max:.3}</text>
<text x="{}" y="{}" text-anchor="end">{y_min:.3}</text>
<text x="{}" y="{}" text-anchor="end">step {x_max:.0}</text>
"##,
        width / 2.0,
        height - bottom,
        width - right,
        height - bottom,
        height - bottom,
        left - 4.0,
        top + 4.0,
        left - 4.0,
        height - bottom,
        width - right,
        height - bottom + 16.0,
    );
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = curve
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>
<text x="{}" y="{}" fill="{colour}">{}</text>
"#,
            path.join(" "),
            width - right + 8.0,
            top + 14.0 * (i as f64 + 1.0),
            escape(&curve.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// Builds the comparison: metric rows × checkpoint columns, deltas against the first checkpoint,
/// regressions flagged.
pub fn build(
    results: &[EvalResults],
    curves: &[LossCurve],
    options: &ReportOptions,
    html: bool,
) -> Report {
    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    let per_checkpoint: Vec<Vec<(String, f64, bool)>> = results
        .iter()
        .map(super::results::EvalResults::metrics)
        .collect();
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    for metrics in &per_checkpoint {
        for (name, _, higher) in metrics {
            if seen.insert(name.clone()) {
                names.push((name.clone(), *higher));
            }
        }
    }
    let value = |i: usize, name: &str| {
        per_checkpoint[i]
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    };
    let mut red_flags = Vec::new();
    let mut rows = Vec::new();
    for (name, higher) in &names {
        let base = value(0, name);
        let mut cells = Vec::new();
        for (i, label) in labels.iter().enumerate() {
            let v = value(i, name);
            let mut cell = v.map(format_value).unwrap_or_else(|| "–".into());
            if let (Some(b), Some(v), true) = (base, v, i > 0) {
                let delta = v - b;
                cell.push_str(&format!(
                    " ({}{})",
                    if delta >= 0.0 { "+" } else { "" },
                    format_value(delta)
                ));
                let relative = name.starts_with("bpb/") || name.starts_with("ppl/");
                let worse = if *higher {
                    b - v > options.absolute_tolerance
                } else if relative {
                    v > b * (1.0 + options.relative_tolerance)
                } else {
                    v - b > options.absolute_tolerance
                };
                let watched = options.general.is_empty()
                    || options.general.iter().any(|g| name.contains(g.as_str()));
                if worse && watched {
                    cell.push_str(" ⚠");
                    red_flags.push(RedFlag {
                        checkpoint: label.clone(),
                        metric: name.clone(),
                        base: b,
                        value: v,
                    });
                }
            }
            cells.push(cell);
        }
        rows.push((name.clone(), *higher, cells));
    }
    let mut charts: Vec<(String, String)> = names
        .iter()
        .map(|(name, _)| {
            let values: Vec<Option<f64>> = (0..results.len()).map(|i| value(i, name)).collect();
            (file_name(name), bar_chart(name, &labels, &values))
        })
        .collect();
    if !curves.is_empty() {
        charts.insert(0, ("training_loss".into(), loss_chart(curves)));
    }

    let mut doc = String::new();
    if html {
        let _ = write!(
            doc,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dapt report</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}.flag{{color:#c00}}</style></head><body>\n<h1>dapt report</h1>\n"
        );
        if red_flags.is_empty() {
            doc.push_str("<p>No regressions against the first checkpoint.</p>\n");
        } else {
            doc.push_str("<h2 class=\"flag\">Red flags</h2>\n<ul>\n");
            for f in &red_flags {
                let _ = writeln!(
                    doc,
                    "<li class=\"flag\">{}: {} {} → {}</li>",
                    escape(&f.checkpoint),
                    escape(&f.metric),
                    format_value(f.base),
                    format_value(f.value)
                );
            }
            doc.push_str("</ul>\n");
        }
        doc.push_str("<h2>Metrics</h2>\n<table><tr><th>metric</th>");
        for l in &labels {
            let _ = write!(doc, "<th>{}</th>", escape(l));
        }
        doc.push_str("</tr>\n");
        for (name, higher, cells) in &rows {
            let _ = write!(
                doc,
                "<tr><td>{} {}</td>",
                escape(name),
                if *higher { "↑" } else { "↓" }
            );
            for c in cells {
                let class = if c.contains('⚠') {
                    " class=\"flag\""
                } else {
                    ""
                };
                let _ = write!(doc, "<td{class}>{}</td>", escape(c));
            }
            doc.push_str("</tr>\n");
        }
        doc.push_str("</table>\n<h2>Charts</h2>\n");
        for (_, svg) in &charts {
            doc.push_str(svg);
        }
        doc.push_str("</body></html>\n");
        return Report {
            document: doc,
            charts: Vec::new(),
            red_flags,
        };
    }
    doc.push_str("# dapt report\n\n");
    if red_flags.is_empty() {
        doc.push_str("No regressions against the first checkpoint.\n\n");
    } else {
        doc.push_str("## Red flags\n\n");
        for f in &red_flags {
            let _ = writeln!(
                doc,
                "- ⚠ **{}**: `{}` {} → {}",
                f.checkpoint,
                f.metric,
                format_value(f.base),
                format_value(f.value)
            );
        }
        doc.push('\n');
    }
    doc.push_str("## Metrics\n\n| metric |");
    for l in &labels {
        let _ = write!(doc, " {l} |");
    }
    doc.push_str("\n|---|");
    doc.push_str(&"---:|".repeat(labels.len()));
    doc.push('\n');
    for (name, higher, cells) in &rows {
        let _ = write!(doc, "| {name} {} |", if *higher { "↑" } else { "↓" });
        for c in cells {
            let _ = write!(doc, " {c} |");
        }
        doc.push('\n');
    }
    doc.push_str("\n## Charts\n\n");
    for (name, _) in &charts {
        let _ = writeln!(doc, "![{name}](plots/{name}.svg)");
    }
    Report {
        document: doc,
        charts,
        red_flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskResult, TextScore};

    fn results(label: &str, acc: f64, bpb: f64) -> EvalResults {
        let mut r = EvalResults {
            label: label.into(),
            ..Default::default()
        };
        r.tasks.insert(
            "general".into(),
            TaskResult {
                examples: 10,
                num_fewshot: 0,
                acc,
                acc_norm: acc,
                chance: 0.25,
                details: Vec::new(),
            },
        );
        r.bits_per_byte.insert(
            "ru".into(),
            TextScore {
                documents: 1,
                bytes: 100,
                tokens: 30,
                nll: 0.0,
                bits_per_byte: bpb,
                perplexity: 1.0,
            },
        );
        r
    }

    #[test]
    fn falling_metrics_are_flagged_and_charted() {
        let all = [results("base", 0.60, 1.50), results("cpt", 0.50, 1.20)];
        let curves = [LossCurve {
            name: "cpt".into(),
            points: vec![(0.0, 5.0), (10.0, 3.0)],
        }];
        let report = build(&all, &curves, &ReportOptions::default(), false);
        assert_eq!(
            report.red_flags.len(),
            2,
            "acc and acc_norm fell; bpb improved"
        );
        assert!(report
            .red_flags
            .iter()
            .all(|f| f.metric.contains("general")));
        assert!(
            report
                .document
                .contains("| bpb/ru ↓ | 1.5000 | 1.2000 (-0.3000) |"),
            "{}",
            report.document
        );
        assert!(report
            .document
            .contains("![training_loss](plots/training_loss.svg)"));
        assert_eq!(report.charts.len(), 1 + 3);
        assert!(report.charts[0].1.contains("<polyline"));
        let html = build(&all, &curves, &ReportOptions::default(), true);
        assert!(html.document.contains("<svg") && html.document.contains("class=\"flag\""));
        let watched = ReportOptions {
            general: vec!["bpb".into()],
            ..Default::default()
        };
        assert!(build(&all, &curves, &watched, false).red_flags.is_empty());
    }
}
