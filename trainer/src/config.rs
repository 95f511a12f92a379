//! Model configuration in HF `config.json` terms: the Llama 3, Mistral, Qwen2, Qwen3, Gemma 2,
//! Gemma 3 (text) and Phi-3 families. Keys the model
//! does not use are kept (`extra`) and written back, so a saved `config.json` is the one that was read.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The `model_type`s dapt builds.
pub const SUPPORTED_MODEL_TYPES: [&str; 7] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
];

/// A token id or a list of them (Llama 3.1 lists several `eos_token_id`s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// Every id.
    pub fn ids(&self) -> Vec<i64> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// The fields of an HF `config.json` that the model uses; written back as a `config.json` that HF
/// `transformers` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// HF class names (`LlamaForCausalLM`, …).
    pub architectures: Vec<String>,
    /// One of [`SUPPORTED_MODEL_TYPES`].
    pub model_type: String,
    /// Rows of the embedding table.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Size of one attention head; `hidden_size / num_attention_heads` when absent (Qwen3 sets it apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: i64,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4 layout); `rope_parameters.rope_theta` wins when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4 layout): `{rope_type|type, factor, …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// RoPE settings (transformers 5 layout): `{rope_type, rope_theta, factor, …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Whether the output head shares the input embedding table.
    pub tie_word_embeddings: bool,
    /// MLP activation (`silu`); Gemma names it `hidden_activation` (see [`ModelConfig::activation`]).
    /// Written back only when the file had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    /// Biases on the attention projections (Llama: q/k/v/o; Qwen3: q/k/v/o). Qwen2 always has q/k/v biases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Biases on the MLP projections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    pub pad_token_id: Option<TokenIds>,
    /// Every other key of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: None,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            rope_theta: Some(10000.0),
            rope_scaling: None,
            rope_parameters: None,
            tie_word_embeddings: false,
            hidden_act: Some("silu".into()),
            initializer_range: 0.02,
            attention_bias: Some(false),
            mlp_bias: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra: Map::new(),
        }
    }
}

/// How rotary frequencies are derived from the base ones.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Phi-3's LongRoPE: per-frequency divisors, `short_factor` while the longest position stays
    /// within the original context and `long_factor` beyond it, and the cosines and sines scaled by
    /// `attention_factor`.
    LongRope {
        /// Divisors within the original context.
        short_factor: Vec<f64>,
        /// Divisors beyond it.
        long_factor: Vec<f64>,
        /// The context length before scaling.
        original_max_position_embeddings: f64,
        /// Factor of the cosines and sines.
        attention_factor: f64,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        /// Overall context extension factor.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length before scaling.
        original_max_position_embeddings: f64,
    },
}

/// Resolved RoPE settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// RoPE base.
    pub theta: f64,
    /// How frequencies are scaled.
    pub scaling: RopeScaling,
}

impl ModelConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections have biases.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias.unwrap_or(false)
    }

    /// Whether the output projection has a bias.
    pub fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias.unwrap_or(false)
    }

    /// Whether this is a Gemma 2 or Gemma 3 model: embeddings scaled by √hidden, `(1 + weight)` norms,
    /// norms after attention and the MLP as well as before, `query_pre_attn_scalar`, soft-capping and
    /// layers of two kinds (sliding and full).
    pub fn is_gemma(&self) -> bool {
        matches!(self.model_type.as_str(), "gemma2" | "gemma3_text")
    }

    /// The sliding window size, when some layer uses one (Mistral's and Gemma's `sliding_window`;
    /// `null`: none). Queries of those layers attend to keys whose position within the segment is
    /// greater than their own minus the window, as in transformers.
    pub fn attention_window(&self) -> Option<i64> {
        matches!(
            self.model_type.as_str(),
            "mistral" | "gemma2" | "gemma3_text" | "phi3"
        )
        .then(|| self.extra.get("sliding_window").and_then(Value::as_i64))
        .flatten()
        .filter(|&w| w > 0)
    }

    /// Whether layer `layer` is a sliding-window layer: every Mistral layer; Gemma's `layer_types`
    /// (`sliding_attention`), or without them Gemma 2's alternation (even layers slide) and Gemma 3's
    /// `sliding_window_pattern` (every sixth layer is full).
    pub fn layer_is_sliding(&self, layer: i64) -> bool {
        if self.attention_window().is_none() {
            return false;
        }
        if let Some(types) = self.extra.get("layer_types").and_then(Value::as_array) {
            return types.get(layer as usize).and_then(Value::as_str) == Some("sliding_attention");
        }
        let pattern = match self.model_type.as_str() {
            "gemma2" => 2,
            "gemma3_text" => self
                .extra
                .get("sliding_window_pattern")
                .and_then(Value::as_i64)
                .unwrap_or(6),
            _ => return true,
        };
        (layer + 1) % pattern.max(1) != 0
    }

    /// The factor of the input embeddings (Gemma: √hidden).
    pub fn embedding_scale(&self) -> Option<f64> {
        self.is_gemma().then(|| (self.hidden_size as f64).sqrt())
    }

    /// The attention logits' factor: Gemma's `query_pre_attn_scalar^-½` (default 256), otherwise
    /// `None` (`head_dim^-½`).
    pub fn attention_scale(&self) -> Option<f64> {
        self.is_gemma().then(|| {
            let scalar = self
                .extra
                .get("query_pre_attn_scalar")
                .and_then(Value::as_f64)
                .unwrap_or(256.0);
            scalar.powf(-0.5)
        })
    }

    /// A Gemma soft-capping value (`tanh(x / cap) · cap`): `null` is none; absent, Gemma 2's defaults.
    fn softcap(&self, key: &str, gemma2_default: f64) -> Option<f64> {
        match self.extra.get(key) {
            Some(value) => value.as_f64(),
            None => (self.model_type == "gemma2").then_some(gemma2_default),
        }
        .filter(|&cap| cap > 0.0)
    }

    /// Soft-capping of the attention logits (Gemma 2's `attn_logit_softcapping`).
    pub fn attention_softcap(&self) -> Option<f64> {
        self.softcap("attn_logit_softcapping", 50.0)
    }

    /// Soft-capping of the output logits (Gemma 2's `final_logit_softcapping`).
    pub fn final_softcap(&self) -> Option<f64> {
        self.softcap("final_logit_softcapping", 30.0)
    }

    /// The MLP activation: Gemma's `hidden_activation` (default `gelu_pytorch_tanh`; transformers
    /// ignores `hidden_act` there), elsewhere `hidden_act` (default `silu`).
    pub fn activation(&self) -> &str {
        if self.is_gemma() {
            self.extra
                .get("hidden_activation")
                .and_then(Value::as_str)
                .unwrap_or("gelu_pytorch_tanh")
        } else {
            self.hidden_act.as_deref().unwrap_or("silu")
        }
    }

    /// Whether q/k/v and gate/up are fused into `qkv_proj` and `gate_up_proj` (Phi-3), as in the
    /// checkpoint and PEFT's names.
    pub fn fused_projections(&self) -> bool {
        self.model_type == "phi3"
    }

    /// `partial_rotary_factor` (in `rope_parameters`, or beside it in the transformers 4 layout;
    /// default 1).
    pub fn partial_rotary_factor(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("partial_rotary_factor"))
            .or_else(|| self.extra.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .unwrap_or(1.0)
    }

    /// Leading dimensions of each head that RoPE rotates (`head_dim · partial_rotary_factor`).
    pub fn rotary_dim(&self) -> i64 {
        (self.head_dim() as f64 * self.partial_rotary_factor()) as i64
    }

    /// Whether q and k are RMS-normalised per head before RoPE (Qwen3, Gemma 3).
    pub fn qk_norm(&self) -> bool {
        matches!(self.model_type.as_str(), "qwen3" | "gemma3_text")
    }

    /// The end-of-sequence ids.
    pub fn eos_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::ids)
            .unwrap_or_default()
    }

    fn bad(key: &str, reason: String) -> Error {
        Error::Setting {
            key: format!("model.{key}"),
            reason,
        }
    }

    /// RoPE base and scaling from either config layout.
    pub fn rope(&self) -> Result<Rope> {
        self.rope_of(false)
    }

    /// RoPE of the sliding-window layers (`sliding`) or the others: Gemma 3 gives each kind its own
    /// settings (`rope_parameters.{sliding,full}_attention`, or in the transformers 4 layout
    /// `rope_local_base_freq` for the sliding layers and `rope_theta`/`rope_scaling` for the full ones,
    /// with its defaults 10⁴ and 10⁶); every other family has one.
    pub fn rope_of(&self, sliding: bool) -> Result<Rope> {
        if self.model_type == "gemma3_text" {
            let kind = if sliding {
                "sliding_attention"
            } else {
                "full_attention"
            };
            let nested = self
                .rope_parameters
                .as_ref()
                .and_then(|p| p.get(kind))
                .filter(|p| p.is_object());
            return match nested {
                Some(p) => self.rope_from(&format!("rope_parameters.{kind}"), Some(p), 10000.0),
                None if sliding => {
                    let theta = self
                        .extra
                        .get("rope_local_base_freq")
                        .and_then(Value::as_f64)
                        .unwrap_or(10000.0);
                    Ok(Rope {
                        theta,
                        scaling: RopeScaling::None,
                    })
                }
                None => {
                    let scaling = self.rope_scaling.as_ref().filter(|s| !s.is_null());
                    self.rope_from("rope_scaling", scaling, 1_000_000.0)
                }
            };
        }
        match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => self.rope_from("rope_parameters", Some(p), 10000.0),
            (None, Some(s)) if !s.is_null() => self.rope_from("rope_scaling", Some(s), 10000.0),
            _ => self.rope_from("rope_scaling", None, 10000.0),
        }
    }

    /// RoPE from the settings object at `key` (`rope_theta` there, else the file's, else
    /// `default_theta`).
    fn rope_from(&self, key: &str, parameters: Option<&Value>, default_theta: f64) -> Result<Rope> {
        let number = |name: &str| -> Result<Option<f64>> {
            match parameters.and_then(|p| p.get(name)) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    Self::bad(&format!("{key}.{name}"), format!("{v} is not a number"))
                }),
            }
        };
        let theta = number("rope_theta")?
            .or(self.rope_theta)
            .unwrap_or(default_theta);
        let kind = parameters
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let required = |name: &str| -> Result<f64> {
            number(name)?.ok_or_else(|| {
                Self::bad(
                    &format!("{key}.{name}"),
                    format!("required by rope_type {kind:?}"),
                )
            })
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "longrope" | "su" => {
                let factors = |name: &str| -> Result<Vec<f64>> {
                    let values = parameters
                        .and_then(|p| p.get(name))
                        .and_then(Value::as_array)
                        .ok_or_else(|| {
                            Self::bad(
                                &format!("{key}.{name}"),
                                "a list of numbers is required by rope_type \"longrope\"".into(),
                            )
                        })?;
                    let numbers: Option<Vec<f64>> = values.iter().map(Value::as_f64).collect();
                    let numbers = numbers.ok_or_else(|| {
                        Self::bad(&format!("{key}.{name}"), "holds a non-number".into())
                    })?;
                    let wanted = self.rotary_dim() / 2;
                    if numbers.len() as i64 != wanted {
                        return Err(Self::bad(
                            &format!("{key}.{name}"),
                            format!(
                                "has {} factors; the rotary dimensions need {wanted}",
                                numbers.len()
                            ),
                        ));
                    }
                    Ok(numbers)
                };
                let original = number("original_max_position_embeddings")?
                    .or_else(|| {
                        self.extra
                            .get("original_max_position_embeddings")
                            .and_then(Value::as_f64)
                    })
                    .unwrap_or(self.max_position_embeddings as f64);
                let factor =
                    number("factor")?.unwrap_or(self.max_position_embeddings as f64 / original);
                let attention_factor = number("attention_factor")?.unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / original.ln()).sqrt()
                });
                RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }
            }
            "linear" => RopeScaling::Linear {
                factor: required("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: required("factor")?,
                low_freq_factor: required("low_freq_factor")?,
                high_freq_factor: required("high_freq_factor")?,
                original_max_position_embeddings: required("original_max_position_embeddings")?,
            },
            other => {
                return Err(Self::bad(
                    &format!("{key}.rope_type"),
                    format!(
                        "{other:?} is not supported (default, linear, llama3 and longrope are)"
                    ),
                ))
            }
        };
        Ok(Rope { theta, scaling })
    }

    /// Checks the shape relations the model relies on; errors name the key.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
        ] {
            if value <= 0 {
                return Err(Self::bad(key, format!("must be positive, is {value}")));
            }
        }
        if !SUPPORTED_MODEL_TYPES.contains(&self.model_type.as_str()) {
            let hint = if self.model_type == "gemma3" {
                " (a multimodal Gemma 3 checkpoint: its text model is gemma3_text)"
            } else {
                ""
            };
            return Err(Self::bad(
                "model_type",
                format!(
                    "{:?} is not supported{hint} ({} are)",
                    self.model_type,
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
            ));
        }
        if self.model_type.starts_with("qwen")
            && self.extra.get("use_sliding_window") == Some(&Value::Bool(true))
        {
            return Err(Self::bad(
                "use_sliding_window",
                "Qwen's sliding-window layers are not supported; set it to false".into(),
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return Err(Self::bad(
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.rotary_dim() <= 0 || self.rotary_dim() % 2 != 0 {
            return Err(Self::bad(
                "partial_rotary_factor",
                format!(
                    "rotates {} dimensions of each head; RoPE needs a positive even number",
                    self.rotary_dim()
                ),
            ));
        }
        if self.head_dim() <= 0 || self.head_dim() % 2 != 0 {
            return Err(Self::bad(
                "head_dim",
                format!("{} must be positive and even for RoPE", self.head_dim()),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Self::bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !matches!(self.activation(), "silu" | "gelu_pytorch_tanh") {
            return Err(Self::bad(
                if self.is_gemma() {
                    "hidden_activation"
                } else {
                    "hidden_act"
                },
                format!(
                    "{:?} is not supported (silu and gelu_pytorch_tanh are)",
                    self.activation()
                ),
            ));
        }
        if self.extra.get("use_bidirectional_attention") == Some(&Value::Bool(true)) {
            return Err(Self::bad(
                "use_bidirectional_attention",
                "bidirectional attention (an embedding model) is not supported".into(),
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(Self::bad("mlp_bias", "MLP biases are not supported".into()));
        }
        if self.extra.get("use_sliding_window") == Some(&Value::Bool(true)) {
            return Err(Self::bad(
                "use_sliding_window",
                "sliding-window attention is not supported".into(),
            ));
        }
        self.rope_of(false)?;
        self.rope_of(true)?;
        Ok(())
    }

    /// Reads an HF `config.json`.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        let config: Self =
            serde_json::from_str(&text).map_err(crate::error::json_error(path.display()))?;
        config
            .validate()
            .map_err(crate::error::invalid(path.display()))?;
        Ok(config)
    }

    /// Writes `config.json` into `dir`.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        let path = dir.join("config.json");
        let json =
            serde_json::to_string_pretty(self).map_err(crate::error::json_error(path.display()))?;
        crate::weights::write_atomically(&path, (json + "\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rope_layouts_resolve() {
        let v4: ModelConfig = serde_json::from_str(
            r#"{"model_type":"llama","rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},
            "eos_token_id":[1,2],"some_key":7}"#,
        )
        .unwrap();
        let v5: ModelConfig = serde_json::from_str(
            r#"{"model_type":"llama","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        assert_eq!(v4.rope().unwrap(), v5.rope().unwrap());
        assert_eq!(v4.rope().unwrap().theta, 500000.0);
        assert_eq!(v4.eos_ids(), [1, 2]);
        let written = serde_json::to_value(&v4).unwrap();
        assert_eq!(written["some_key"], 7, "unknown keys are written back");
        let yarn: ModelConfig =
            serde_json::from_str(r#"{"rope_scaling":{"rope_type":"yarn","factor":4.0}}"#).unwrap();
        let error = yarn.validate().unwrap_err().to_string();
        assert!(
            error.contains("rope_scaling.rope_type") && error.contains("yarn"),
            "{error}"
        );
    }
}

/// A proxy model initialised at random: `[init]` of a train config, `[model]` of `dapt run` and
/// `dapt sweep`. Unlike [`ModelConfig`] (an HF `config.json`, whose unknown keys are kept), these
/// options refuse unknown keys — a typo such as `num_layers` is an error naming it — and default to a
/// small model (≈0.5M parameters without embeddings), never to a 7B shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyModelOptions {
    /// `llama`, `qwen2` or `qwen3`. Default `llama`.
    pub model_type: String,
    /// Vocabulary size. Default: the tokenizer's where the recipe has one (`dapt run`, `dapt sweep`),
    /// else 32000.
    pub vocab_size: Option<i64>,
    /// Default 128.
    pub hidden_size: i64,
    /// Default 344.
    pub intermediate_size: i64,
    /// Default 2.
    pub num_hidden_layers: i64,
    /// Default 4.
    pub num_attention_heads: i64,
    /// Default 2.
    pub num_key_value_heads: i64,
    /// Size of one attention head. Default `hidden_size / num_attention_heads`.
    pub head_dim: Option<i64>,
    /// Longest sequence. Default: the recipe's sequence length where it has one, else 4096.
    pub max_position_embeddings: Option<i64>,
    /// Default 1e-6.
    pub rms_norm_eps: f64,
    /// RoPE base. Default 10000.
    pub rope_theta: f64,
    /// Output head shares the input embeddings. Default false.
    pub tie_word_embeddings: bool,
    /// Default: the recipe's tokenizer's where it has one, else none.
    pub bos_token_id: Option<i64>,
    /// Default: the recipe's tokenizer's EOS where it has one, else none.
    pub eos_token_id: Option<i64>,
    /// Default: the recipe's pad token where it has one, else none.
    pub pad_token_id: Option<i64>,
}

impl Default for ProxyModelOptions {
    fn default() -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size: None,
            hidden_size: 128,
            intermediate_size: 344,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            max_position_embeddings: None,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

/// What a recipe knows that fills a proxy's unset keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyDefaults {
    /// The tokenizer's vocabulary size.
    pub vocab_size: Option<i64>,
    /// The packed rows' length.
    pub max_position_embeddings: Option<i64>,
    /// The tokenizer's end-of-sequence id.
    pub eos_token_id: Option<i64>,
    /// The tokenizer's padding id.
    pub pad_token_id: Option<i64>,
}

impl ProxyModelOptions {
    /// The `config.json` of the proxy, unset keys filled from `defaults`; validated.
    pub fn to_config(&self, defaults: ProxyDefaults) -> Result<ModelConfig> {
        let architecture = match self.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            "mistral" => "MistralForCausalLM",
            "gemma2" => "Gemma2ForCausalLM",
            "gemma3_text" => "Gemma3ForCausalLM",
            "phi3" => "Phi3ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let config = ModelConfig {
            architectures: vec![architecture.into()],
            model_type: self.model_type.clone(),
            vocab_size: self.vocab_size.or(defaults.vocab_size).unwrap_or(32000),
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            max_position_embeddings: self
                .max_position_embeddings
                .or(defaults.max_position_embeddings)
                .unwrap_or(4096),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: Some(self.rope_theta),
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: (!self.model_type.starts_with("gemma")).then(|| "silu".into()),
            bos_token_id: self.bos_token_id.map(TokenIds::One),
            eos_token_id: self
                .eos_token_id
                .or(defaults.eos_token_id)
                .map(TokenIds::One),
            pad_token_id: self
                .pad_token_id
                .or(defaults.pad_token_id)
                .map(TokenIds::One),
            ..ModelConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    #[test]
    fn a_misspelt_proxy_key_is_refused_by_name_and_defaults_are_small() {
        let err = toml::from_str::<ProxyModelOptions>("num_layers = 2\nhidden_size = 64\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_layers"), "{err}");
        let config = toml::from_str::<ProxyModelOptions>("")
            .unwrap()
            .to_config(ProxyDefaults {
                vocab_size: Some(300),
                max_position_embeddings: Some(128),
                eos_token_id: Some(2),
                pad_token_id: None,
            })
            .unwrap();
        assert_eq!(config.vocab_size, 300);
        assert_eq!(config.hidden_size, 128);
        assert_eq!(config.num_hidden_layers, 2);
        assert_eq!(config.max_position_embeddings, 128);
        assert_eq!(config.eos_token_id, Some(TokenIds::One(2)));
        let qwen = ProxyModelOptions {
            model_type: "qwen3".into(),
            head_dim: Some(16),
            ..Default::default()
        }
        .to_config(ProxyDefaults::default())
        .unwrap();
        assert_eq!(qwen.architectures, vec!["Qwen3ForCausalLM".to_string()]);
        assert_eq!(qwen.head_dim, Some(16));
        let bad = ProxyModelOptions {
            model_type: "gpt5".into(),
            ..Default::default()
        };
        assert!(bad
            .to_config(ProxyDefaults::default())
            .unwrap_err()
            .to_string()
            .contains("gpt5"));
    }

    /// A Gemma 3 text config in the transformers 4 layout (as on the Hub): every sixth layer is full,
    /// the sliding layers turn on `rope_local_base_freq`, the full ones on `rope_theta` with
    /// `rope_scaling`; Gemma 2's soft-capping defaults apply when its keys are absent.
    #[test]
    fn gemma_layouts_resolve() {
        let gemma3: ModelConfig = serde_json::from_str(
            r#"{"model_type":"gemma3_text","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":1,
                "num_hidden_layers":12,"head_dim":16,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
                "rope_scaling":{"rope_type":"linear","factor":8.0},"sliding_window":512,"sliding_window_pattern":6,
                "query_pre_attn_scalar":256,"hidden_activation":"gelu_pytorch_tanh"}"#,
        )
        .unwrap();
        gemma3.validate().unwrap();
        let sliding: Vec<i64> = (0..12).filter(|&i| !gemma3.layer_is_sliding(i)).collect();
        assert_eq!(sliding, vec![5, 11], "full layers");
        assert_eq!(gemma3.rope_of(true).unwrap().theta, 10000.0);
        assert_eq!(gemma3.rope_of(true).unwrap().scaling, RopeScaling::None);
        assert_eq!(
            gemma3.rope_of(false).unwrap(),
            Rope {
                theta: 1e6,
                scaling: RopeScaling::Linear { factor: 8.0 }
            }
        );
        assert_eq!(gemma3.attention_scale(), Some(1.0 / 16.0));
        assert_eq!(gemma3.embedding_scale(), Some(8.0));
        assert_eq!(
            (gemma3.attention_softcap(), gemma3.final_softcap()),
            (None, None)
        );
        let gemma2: ModelConfig = serde_json::from_str(
            r#"{"model_type":"gemma2","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":1,
                "num_hidden_layers":4,"head_dim":16,"sliding_window":4096}"#,
        )
        .unwrap();
        gemma2.validate().unwrap();
        assert_eq!(
            (gemma2.attention_softcap(), gemma2.final_softcap()),
            (Some(50.0), Some(30.0))
        );
        assert!(gemma2.layer_is_sliding(0) && !gemma2.layer_is_sliding(1));
        assert_eq!(gemma2.activation(), "gelu_pytorch_tanh");
        assert!(!gemma2.qk_norm() && gemma3.qk_norm());

        let multimodal = ModelConfig {
            model_type: "gemma3".into(),
            ..ModelConfig::default()
        };
        let error = multimodal.validate().unwrap_err().to_string();
        assert!(
            error.contains("gemma3_text") && error.contains("llama, mistral, qwen2"),
            "{error}"
        );
    }
}
