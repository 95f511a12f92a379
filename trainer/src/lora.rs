//! LoRA (Hu et al. 2021): a low-rank update `B·A·alpha/r` beside chosen linear layers, the base frozen.
//! Adapters live in their own VarStore under PEFT's names
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) and are saved in PEFT's layout
//! (`adapter_config.json` + `adapter_model.safetensors`), so HF PEFT loads them and dapt loads PEFT's.
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn;

use crate::error::{invalid, io_error, json_error};
use crate::weights::{save_safetensors, write_atomically};
use crate::{Error, Result};

/// The linear layers of a decoder block, by HF name.
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Phi-3's fused projections and the separate ones each replaces.
pub const FUSED_LINEAR: [(&str, &[&str]); 2] = [
    ("qkv_proj", &["q_proj", "k_proj", "v_proj"]),
    ("gate_up_proj", &["gate_proj", "up_proj"]),
];

/// How `A` starts (`B` starts at zero, so a fresh adapter leaves the model unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// PEFT's default: Kaiming-uniform with `a = √5`, i.e. `U(-1/√in, 1/√in)`.
    #[default]
    Kaiming,
    /// `N(0, 1/r)`.
    Gaussian,
}

/// `[lora]` of a training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraOptions {
    /// Rank of the update.
    pub r: i64,
    /// Scale numerator: the update is multiplied by `alpha / r` (`alpha / √r` with `rslora`).
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Module names (`q_proj`, …, `down_proj`) or `["all-linear"]`.
    pub target_modules: Vec<String>,
    /// Initialisation of `A`.
    pub init: LoraInit,
    /// Rank-stabilised scaling `alpha / √r`.
    pub rslora: bool,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: ALL_LINEAR
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            init: LoraInit::Kaiming,
            rslora: false,
        }
    }
}

/// A bad `[lora]` setting.
fn bad(key: &str, reason: String) -> Error {
    Error::Setting {
        key: format!("lora.{key}"),
        reason,
    }
}

impl LoraOptions {
    /// Checks the options; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.r <= 0 {
            return Err(bad("r", format!("must be positive, is {}", self.r)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(
                "dropout",
                format!("must be in [0, 1), is {}", self.dropout),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(bad("target_modules", "names no module".into()));
        }
        for name in &self.target_modules {
            let fused = FUSED_LINEAR.iter().any(|(f, _)| f == name);
            if name != "all-linear" && !fused && !ALL_LINEAR.contains(&name.as_str()) {
                return Err(bad(
                    "target_modules",
                    format!(
                        "{name:?} is not one of all-linear, {}, qkv_proj, gate_up_proj",
                        ALL_LINEAR.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// These options with `target_modules` named as the model names its layers: for a model with
    /// fused projections (Phi-3), `q_proj`+`k_proj`+`v_proj` become `qkv_proj` and
    /// `gate_proj`+`up_proj` become `gate_up_proj` (so the default targets every linear layer there
    /// too, and the saved adapter names what PEFT finds); part of a fused group is refused, as are
    /// fused names on a model without them.
    pub fn for_model(&self, fused_projections: bool) -> Result<Self> {
        let targeted = |name: &str| self.target_modules.iter().any(|t| t == name);
        let mut names: Vec<String> = Vec::new();
        for name in &self.target_modules {
            let group = FUSED_LINEAR
                .iter()
                .find(|(fused, parts)| fused == name || parts.contains(&name.as_str()));
            let Some((fused, parts)) = group else {
                names.push(name.clone());
                continue;
            };
            if !fused_projections {
                if name == fused {
                    return Err(bad(
                        "target_modules",
                        format!(
                            "{name:?} exists only in models with fused projections (Phi-3); this model has {}",
                            parts.join(", ")
                        ),
                    ));
                }
                names.push(name.clone());
                continue;
            }
            if name != fused && !parts.iter().all(|p| targeted(p)) {
                return Err(bad(
                    "target_modules",
                    format!(
                        "this model fuses {} into {fused}: target {fused} (or all of {})",
                        parts.join(", "),
                        parts.join(", ")
                    ),
                ));
            }
            if !names.iter().any(|n| n == fused) {
                names.push((*fused).to_string());
            }
        }
        Ok(Self {
            target_modules: names,
            ..self.clone()
        })
    }

    /// Whether a module (by its last name component) gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| t == "all-linear" || t == module)
    }

    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Reads PEFT's `adapter_config.json`: the options and the first of the trainable embedding rows
    /// (`trainable_token_indices`, which dapt supports as one range up to the end of the vocabulary).
    pub fn load_peft(dir: &Path) -> Result<Self> {
        Ok(Self::load_peft_with_tokens(dir)?.0)
    }

    /// [`LoraOptions::load_peft`] with the trainable embedding rows: `(first, count)`.
    pub fn load_peft_with_tokens(dir: &Path) -> Result<(Self, Option<(i64, i64)>)> {
        let path = dir.join("adapter_config.json");
        let fail = |reason: String| Error::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let json: Value = serde_json::from_str(&text).map_err(json_error(path.display()))?;
        if json.get("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(fail("peft_type is not LORA".into()));
        }
        for (key, unsupported) in [("use_dora", true), ("fan_in_fan_out", true)] {
            if json.get(key).and_then(Value::as_bool) == Some(unsupported) {
                return Err(fail(format!("{key} = true is not supported")));
            }
        }
        if json.get("bias").and_then(Value::as_str).unwrap_or("none") != "none" {
            return Err(fail("bias other than \"none\" is not supported".into()));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if json
                .get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(fail(format!("{key} is not supported")));
            }
        }
        let target_modules = match json.get("target_modules") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => {
                let mut names: Vec<String> = list
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                names.sort();
                names
            }
            _ => return Err(fail("target_modules missing".into())),
        };
        let options = Self {
            r: json.get("r").and_then(Value::as_i64).unwrap_or(8),
            alpha: json
                .get("lora_alpha")
                .and_then(Value::as_f64)
                .unwrap_or(8.0),
            dropout: json
                .get("lora_dropout")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            target_modules,
            init: LoraInit::Kaiming,
            rslora: json
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        options.validate().map_err(invalid(path.display()))?;
        let tokens = match json.get("trainable_token_indices") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                let unsupported: Vec<&String> = map
                    .keys()
                    .filter(|k| !matches!(k.as_str(), "embed_tokens" | "lm_head"))
                    .collect();
                if !unsupported.is_empty() {
                    return Err(fail(format!(
                        "trainable_token_indices of {unsupported:?} are not supported (only embed_tokens and lm_head)"
                    )));
                }
                if map.get("lm_head").is_some_and(|head| Some(head) != map.get("embed_tokens")) {
                    return Err(fail(
                        "trainable_token_indices: lm_head must list the same ids as embed_tokens".into(),
                    ));
                }
                let ids: Vec<i64> = map
                    .get("embed_tokens")
                    .and_then(Value::as_array)
                    .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                let first = ids.first().copied().unwrap_or(0);
                let contiguous = ids.iter().enumerate().all(|(i, &id)| id == first + i as i64);
                if ids.is_empty() || !contiguous {
                    return Err(fail(
                        "trainable_token_indices.embed_tokens must be one ascending run of ids".into(),
                    ));
                }
                Some((first, ids.len() as i64))
            }
            Some(Value::Array(_)) => {
                return Err(fail(
                    "trainable_token_indices as a list is not supported; give {\"embed_tokens\": [...]}".into(),
                ))
            }
            Some(other) => return Err(fail(format!("trainable_token_indices is {other}"))),
        };
        Ok((options, tokens))
    }

    /// PEFT's `adapter_config.json` for these options.
    pub fn peft_config(&self, base_model: Option<&str>) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "bias": "none",
            "init_lora_weights": match self.init { LoraInit::Kaiming => json!(true), LoraInit::Gaussian => json!("gaussian") },
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }
}

/// Embedding rows trained beside the adapters (PEFT's `trainable_token_indices`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainableTokens {
    /// The trainable row ids.
    pub rows: std::ops::Range<i64>,
    /// The untied output table's rows train too (`lm_head`).
    pub output_table: bool,
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (the adapter VarStore's variables,
/// whose names are PEFT's keys) into `dir`. `trainable_tokens` names the embedding rows trained
/// beside the adapters, if any.
pub fn save_adapter(
    dir: &Path,
    adapters: &nn::VarStore,
    options: &LoraOptions,
    base_model: Option<&str>,
    trainable_tokens: Option<&TrainableTokens>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut config = options.peft_config(base_model);
    if let Some(tokens) = trainable_tokens {
        let ids: Vec<i64> = tokens.rows.clone().collect();
        config["trainable_token_indices"] = if tokens.output_table {
            json!({ "embed_tokens": ids, "lm_head": ids })
        } else {
            json!({ "embed_tokens": ids })
        };
    }
    let config =
        serde_json::to_string_pretty(&config).map_err(json_error("adapter_config.json"))?;
    write_atomically(&dir.join("adapter_config.json"), (config + "\n").as_bytes())?;
    let tensors: Vec<(String, tch::Tensor)> = adapters.variables().into_iter().collect();
    save_safetensors(&dir.join("adapter_model.safetensors"), &tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(names: &[&str]) -> LoraOptions {
        LoraOptions {
            target_modules: names.iter().map(|n| (*n).to_string()).collect(),
            ..Default::default()
        }
    }

    /// On a model with fused projections whole groups become the fused names (the default targets
    /// every linear layer); part of a group, or a fused name elsewhere, is refused by name.
    #[test]
    fn targets_follow_the_models_projections() {
        let fused = LoraOptions::default().for_model(true).unwrap();
        assert_eq!(
            fused.target_modules,
            ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        );
        assert_eq!(
            LoraOptions::default().for_model(false).unwrap(),
            LoraOptions::default()
        );
        let given = targets(&["qkv_proj", "down_proj"]);
        assert_eq!(given.for_model(true).unwrap(), given);
        let error = targets(&["q_proj", "v_proj"])
            .for_model(true)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("lora.target_modules") && error.contains("qkv_proj"),
            "{error}"
        );
        let error = targets(&["gate_up_proj"])
            .for_model(false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("gate_proj, up_proj"), "{error}");
        assert!(targets(&["qkv_proj"]).validate().is_ok());
        assert!(targets(&["qkv"]).validate().is_err());
    }
}
