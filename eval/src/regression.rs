//! A Scheffé linear mixture model: an objective (a metric of each variant of a sweep) regressed on the
//! mixture weights, and the best mixture it predicts within the weights tried.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The fitted model and its prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    /// The metric fitted.
    pub objective: String,
    /// Whether a larger objective is better (accuracy) or worse (bits-per-byte).
    pub higher_is_better: bool,
    /// Objective ≈ Σ coefficient × weight (no intercept: the weights sum to one).
    pub coefficients: BTreeMap<String, f64>,
    /// Share of the objective's variance the fit explains.
    pub r_squared: f64,
    /// The best mixture on a 5% grid within the range of weights tried, and its predicted objective.
    pub predicted_best: BTreeMap<String, f64>,
    /// The objective the fit predicts for `predicted_best`.
    pub predicted_objective: f64,
}

/// One observation: the weights of a variant (by component name) and its objective.
pub struct Observation<'a> {
    /// Component weights of the variant.
    pub weights: &'a BTreeMap<String, f64>,
    /// Its measured objective.
    pub objective: f64,
}

/// Least squares of the objective on the weights of `components`, with a small ridge so that fewer
/// observations than components still give an answer; `None` with fewer than two observations or a
/// singular system. Higher is better for objectives named `acc…`, lower otherwise.
pub fn regress(
    components: &[String],
    observations: &[Observation<'_>],
    objective: &str,
) -> Option<Regression> {
    let rows: Vec<(Vec<f64>, f64)> = observations
        .iter()
        .map(|o| {
            (
                components
                    .iter()
                    .map(|n| o.weights.get(n).copied().unwrap_or(0.0))
                    .collect(),
                o.objective,
            )
        })
        .collect();
    if rows.len() < 2 {
        return None;
    }
    let k = components.len();
    let mut normal = vec![vec![0.0; k + 1]; k];
    for (x, y) in &rows {
        for i in 0..k {
            for j in 0..k {
                normal[i][j] += x[i] * x[j];
            }
            normal[i][k] += x[i] * y;
        }
    }
    for (i, row) in normal.iter_mut().enumerate() {
        row[i] += 1e-6;
    }
    let beta = solve(normal)?;
    let predict = |x: &[f64]| x.iter().zip(&beta).map(|(w, b)| w * b).sum::<f64>();
    let mean = rows.iter().map(|(_, y)| y).sum::<f64>() / rows.len() as f64;
    let total: f64 = rows.iter().map(|(_, y)| (y - mean).powi(2)).sum();
    let residual: f64 = rows.iter().map(|(x, y)| (y - predict(x)).powi(2)).sum();
    let higher = objective.starts_with("acc");
    let low: Vec<f64> = (0..k)
        .map(|i| rows.iter().map(|(x, _)| x[i]).fold(f64::INFINITY, f64::min))
        .collect();
    let high: Vec<f64> = (0..k)
        .map(|i| {
            rows.iter()
                .map(|(x, _)| x[i])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let mut best: Option<(Vec<f64>, f64)> = None;
    for x in simplex_grid(k, 20) {
        let inside = x
            .iter()
            .enumerate()
            .all(|(i, w)| *w >= low[i] - 1e-9 && *w <= high[i] + 1e-9);
        if !inside {
            continue;
        }
        let y = predict(&x);
        let better = best
            .as_ref()
            .is_none_or(|(_, b)| if higher { y > *b } else { y < *b });
        if better {
            best = Some((x, y));
        }
    }
    let (x, y) = best?;
    Some(Regression {
        objective: objective.to_string(),
        higher_is_better: higher,
        coefficients: components
            .iter()
            .cloned()
            .zip(beta.iter().copied())
            .collect(),
        r_squared: if total > 0.0 {
            1.0 - residual / total
        } else {
            1.0
        },
        predicted_best: components.iter().cloned().zip(x).collect(),
        predicted_objective: y,
    })
}

/// Solves the augmented system `[A | b]` (k rows of k + 1) by Gauss–Jordan elimination with partial
/// pivoting; `None` when it is singular.
fn solve(mut a: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = a.len();
    for col in 0..k {
        let pivot = (col..k).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            return None;
        }
        for value in &mut a[col][col..] {
            *value /= p;
        }
        let pivot_row = a[col].clone();
        for (i, row) in a.iter_mut().enumerate() {
            if i != col {
                let f = row[col];
                for (value, pivot_value) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *value -= f * pivot_value;
                }
            }
        }
    }
    Some(a.iter().map(|row| row[k]).collect())
}

/// Every point of the simplex in `k` dimensions whose coordinates are multiples of `1 / steps`.
fn simplex_grid(k: usize, steps: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    let mut point = vec![0usize; k];
    loop {
        if point.iter().sum::<usize>() == steps {
            out.push(point.iter().map(|&p| p as f64 / steps as f64).collect());
        }
        let mut i = 0;
        loop {
            if i == k {
                return out;
            }
            point[i] += 1;
            if point[i] <= steps {
                break;
            }
            point[i] = 0;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_planted_linear_mixture_is_recovered_with_its_best_point() {
        // Objective = 2·a + 1·b + 3·c (lower is better): the best mixture within the tried range is as
        // much b as was tried.
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        let tried = [
            weights(&[("a", 0.6), ("b", 0.2), ("c", 0.2)]),
            weights(&[("a", 0.2), ("b", 0.6), ("c", 0.2)]),
            weights(&[("a", 0.2), ("b", 0.2), ("c", 0.6)]),
            weights(&[("a", 0.4), ("b", 0.4), ("c", 0.2)]),
        ];
        let truth = |w: &BTreeMap<String, f64>| 2.0 * w["a"] + w["b"] + 3.0 * w["c"];
        let observations: Vec<Observation> = tried
            .iter()
            .map(|w| Observation {
                weights: w,
                objective: truth(w),
            })
            .collect();
        let r = regress(&names, &observations, "bpb/ru").unwrap();
        assert!(!r.higher_is_better);
        for (name, want) in [("a", 2.0), ("b", 1.0), ("c", 3.0)] {
            assert!(
                (r.coefficients[name] - want).abs() < 1e-3,
                "{name}: {}",
                r.coefficients[name]
            );
        }
        assert!(r.r_squared > 0.999_99, "{}", r.r_squared);
        assert!(
            (r.predicted_best["b"] - 0.6).abs() < 1e-9,
            "{:?}",
            r.predicted_best
        );
        assert!((r.predicted_best.values().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!((r.predicted_objective - (2.0 * 0.2 + 0.6 + 3.0 * 0.2)).abs() < 1e-3);
        // An accuracy is maximised instead: the most c.
        let r = regress(&names, &observations, "acc/task").unwrap();
        assert!(r.higher_is_better);
        assert!(
            (r.predicted_best["c"] - 0.6).abs() < 1e-9,
            "{:?}",
            r.predicted_best
        );
    }

    #[test]
    fn too_few_observations_give_no_model() {
        let names = vec!["a".to_string()];
        let w = weights(&[("a", 1.0)]);
        assert!(regress(
            &names,
            &[Observation {
                weights: &w,
                objective: 1.0
            }],
            "x"
        )
        .is_none());
    }

    #[test]
    fn the_grid_covers_the_simplex() {
        let grid = simplex_grid(3, 20);
        assert_eq!(grid.len(), 231, "C(22, 2) points");
        assert!(grid
            .iter()
            .all(|p| (p.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    }
}
