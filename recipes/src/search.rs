//! Hyperparameter search of `dapt sweep` (`[search]`): training keys (`learning_rate`, `steps`,
//! `warmup_steps`, `weight_decay`, … and `lora.r`, `lora.alpha`, `lora.dropout`,
//! `lora.target_modules`) searched as a grid or as a seeded random draw from that grid, with or
//! without mixture variants, and optionally by successive halving: every trial trains to
//! `min_steps`, the better `1/eta` go on to `eta` times as many steps — resumed from their checkpoint,
//! with the learning-rate schedule of the full run, so a survivor's model is the one a straight run
//! gives — until the configured `steps`.
use std::collections::BTreeMap;

use dapt_trainer::{LoraOptions, TrainOptions, TrainSettings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::setting;
use crate::Result;

/// How trials are drawn from the space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    /// Every combination.
    #[default]
    Grid,
    /// `trials` distinct combinations, drawn with the sweep's seed.
    Random,
}

/// Successive halving.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalvingOptions {
    /// Steps of the first rung.
    pub min_steps: usize,
    /// Each rung keeps the best `1/eta` of the trials and multiplies the steps by `eta`. Default 2.
    #[serde(default = "default_eta")]
    pub eta: usize,
}

fn default_eta() -> usize {
    2
}

/// `[search]` of a sweep file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchOptions {
    /// `grid` (default) or `random`.
    #[serde(default)]
    pub method: SearchMethod,
    /// Random search: how many combinations.
    #[serde(default)]
    pub trials: usize,
    /// Training key → the values to try (`learning_rate = [1e-3, 1e-2]`, `"lora.r" = [4, 16]`).
    pub space: BTreeMap<String, Vec<Value>>,
    /// Successive halving (none: every trial trains all its steps).
    #[serde(default)]
    pub halving: Option<HalvingOptions>,
}

/// One trial's settings: key → value.
pub type TrialSettings = BTreeMap<String, Value>;

/// The combinations to train, in a fixed order.
pub fn expand(options: &SearchOptions, seed: u64) -> Result<Vec<TrialSettings>> {
    if options.space.is_empty() {
        return Err(setting("search.space", "names no training key"));
    }
    for (key, values) in &options.space {
        if values.is_empty() {
            return Err(setting(format!("search.space.{key}"), "has no values"));
        }
    }
    let mut grid: Vec<TrialSettings> = vec![BTreeMap::new()];
    for (key, values) in &options.space {
        grid = grid
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut next = partial.clone();
                    next.insert(key.clone(), v.clone());
                    next
                })
            })
            .collect();
    }
    match options.method {
        SearchMethod::Grid => Ok(grid),
        SearchMethod::Random => {
            if options.trials == 0 {
                return Err(setting("search.trials", "random search needs trials > 0"));
            }
            let ids: Vec<String> = grid.iter().map(describe).collect();
            let mut picked: Vec<usize> = dapt_core::order::ordered(seed, "search", 0, &ids)
                .into_iter()
                .take(options.trials)
                .collect();
            picked.sort_unstable();
            Ok(picked.into_iter().map(|i| grid[i].clone()).collect())
        }
    }
}

/// `key=value, …` of a trial.
pub fn describe(settings: &TrialSettings) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The training and LoRA options with a trial's settings applied; unknown keys and bad values are
/// errors naming the key.
pub fn apply(
    train: &TrainOptions,
    lora: &LoraOptions,
    settings: &TrialSettings,
) -> Result<(TrainOptions, LoraOptions)> {
    let to_value = |what: &str, v: Result<Value, serde_json::Error>| {
        v.map_err(|e| setting(what.to_string(), e.to_string()))
    };
    let mut train_value = to_value("train", serde_json::to_value(train))?;
    let mut lora_value = to_value("lora", serde_json::to_value(lora))?;
    for (key, value) in settings {
        let (target, field) = match key.strip_prefix("lora.") {
            Some(field) => (&mut lora_value, field),
            None => (&mut train_value, key.as_str()),
        };
        let Some(object) = target.as_object_mut() else {
            continue;
        };
        let known = object.contains_key(field) || field == "schedule_steps";
        if !known {
            return Err(setting(
                format!("search.space.{key}"),
                "is not a training key (train.* or lora.*)",
            ));
        }
        object.insert(field.to_string(), value.clone());
    }
    let train: TrainOptions = serde_json::from_value(train_value)
        .map_err(|e| setting("search.space", format!("training keys: {e}")))?;
    let lora: LoraOptions = serde_json::from_value(lora_value)
        .map_err(|e| setting("search.space", format!("lora keys: {e}")))?;
    TrainSettings::try_from(train.clone())?;
    Ok((train, lora))
}

/// The steps of each rung: `min_steps`, × `eta`, …, ending at `steps`.
pub fn rungs(halving: Option<&HalvingOptions>, steps: usize) -> Result<Vec<usize>> {
    let Some(h) = halving else {
        return Ok(vec![steps]);
    };
    if h.eta < 2 || h.min_steps == 0 || h.min_steps >= steps {
        return Err(setting(
            "search.halving",
            format!(
                "needs eta >= 2 and 0 < min_steps < steps ({steps}); got eta {} and min_steps {}",
                h.eta, h.min_steps
            ),
        ));
    }
    let mut out = Vec::new();
    let mut at = h.min_steps;
    while at < steps {
        out.push(at);
        at = at.saturating_mul(h.eta);
    }
    out.push(steps);
    Ok(out)
}

/// The trials that go on: the best `ceil(n / eta)` by score (NaN last; ties by order).
pub fn survivors(scores: &[(usize, f64)], higher_is_better: bool, eta: usize) -> Vec<usize> {
    let mut ranked = scores.to_vec();
    ranked.sort_by(|a, b| {
        let key = |v: f64| {
            if v.is_nan() {
                f64::INFINITY
            } else if higher_is_better {
                -v
            } else {
                v
            }
        };
        key(a.1).total_cmp(&key(b.1)).then(a.0.cmp(&b.0))
    });
    let keep = scores.len().div_ceil(eta.max(1)).max(1);
    let mut kept: Vec<usize> = ranked.into_iter().take(keep).map(|(i, _)| i).collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> SearchOptions {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn grids_random_draws_and_rungs() {
        let grid = options("[space]\nlearning_rate = [1e-3, 1e-2]\n\"lora.r\" = [4, 8, 16]\n");
        let all = expand(&grid, 0).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(describe(&all[0]), "learning_rate=0.001, lora.r=4");
        let random = SearchOptions {
            method: SearchMethod::Random,
            trials: 3,
            ..grid.clone()
        };
        let a = expand(&random, 7).unwrap();
        assert_eq!(a, expand(&random, 7).unwrap());
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|t| all.contains(t)));
        assert_ne!(a, expand(&random, 8).unwrap(), "another seed, another draw");
        let halving = HalvingOptions {
            min_steps: 10,
            eta: 2,
        };
        assert_eq!(rungs(Some(&halving), 40).unwrap(), [10, 20, 40]);
        assert_eq!(rungs(Some(&halving), 30).unwrap(), [10, 20, 30]);
        assert_eq!(rungs(None, 30).unwrap(), [30]);
        assert!(rungs(Some(&halving), 10).is_err());
        assert_eq!(
            survivors(&[(0, 2.0), (1, 1.0), (2, f64::NAN), (3, 1.5)], false, 2),
            [1, 3]
        );
        assert_eq!(survivors(&[(0, 0.2), (1, 0.9), (2, 0.5)], true, 2), [1, 2]);
    }

    #[test]
    fn settings_apply_to_training_and_lora_keys() {
        let settings: TrialSettings = [
            ("learning_rate".to_string(), serde_json::json!(0.02)),
            ("lora.r".to_string(), serde_json::json!(16)),
            ("lora.alpha".to_string(), serde_json::json!(32.0)),
            ("beta".to_string(), serde_json::json!(0.3)),
            ("loss".to_string(), serde_json::json!("ipo")),
            (
                "lora.target_modules".to_string(),
                serde_json::json!(["q_proj", "v_proj"]),
            ),
        ]
        .into();
        let (train, lora) =
            apply(&TrainOptions::default(), &LoraOptions::default(), &settings).unwrap();
        assert_eq!(train.learning_rate, 0.02);
        assert_eq!(lora.r, 16);
        assert_eq!(lora.alpha, 32.0);
        assert_eq!(lora.target_modules, ["q_proj", "v_proj"]);
        assert_eq!(train.beta, 0.3);
        assert_eq!(train.loss, dapt_trainer::PreferenceLoss::Ipo);
        let bad: TrialSettings = [("learnin_rate".to_string(), serde_json::json!(1))].into();
        let err = apply(&TrainOptions::default(), &LoraOptions::default(), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("search.space.learnin_rate"), "{err}");
        let zero: TrialSettings = [("steps".to_string(), serde_json::json!(0))].into();
        assert!(apply(&TrainOptions::default(), &LoraOptions::default(), &zero).is_err());
    }
}
