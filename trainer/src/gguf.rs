//! GGUF (llama.cpp's model file) in HF terms: the model's `config.json` from the `<arch>.*` metadata keys,
//! its tensors dequantised (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K…Q6_K, by the `rlx-gguf`
//! crate, which follows ggml's reference dequantisation) under HF checkpoint names, with llama.cpp's
//! row permutation of the Llama family's Q/K projections undone, and written as one `model.safetensors`
//! tensor by tensor (memory: the largest tensor, not the model). Architectures: `llama`, `qwen2`,
//! `qwen3`, `gemma2`, `gemma3` (llama.cpp's converter stores Gemma's norm weights plus one; subtracted
//! again) and `phi3` (LongRoPE factors stored as tensors, read back into the config); any other
//! architecture, tensor or quantisation type is refused by name.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rlx_gguf::{GgmlType, GgufFile, MetaValue};
use serde_json::{json, Value};

use crate::weights::{file_error, safetensors_header, TensorEntry};
use crate::{Error, ModelConfig, Result, TokenIds};

/// The quantisation types dapt dequantises.
const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// The element type of the written weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    /// Exactly the dequantised values.
    #[default]
    F32,
    /// Rounded to nearest-even bfloat16 (half the size; what `torch.Tensor.to(torch.bfloat16)` gives).
    Bf16,
}

impl WeightType {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

/// `general.architecture` values dapt imports.
const ARCHITECTURES: [Architecture; 6] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Qwen3,
    Architecture::Gemma2,
    Architecture::Gemma3,
    Architecture::Phi3,
];

/// LongRoPE's factors, stored by llama.cpp as tensors (read into the config, not the weights).
const ROPE_FACTOR_TENSORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

impl Architecture {
    fn key(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }

    /// HF's `model_type`.
    fn model_type(self) -> &'static str {
        match self {
            Self::Gemma3 => "gemma3_text",
            other => other.key(),
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
            Self::Phi3 => "Phi3ForCausalLM",
        }
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

/// How a GGUF tensor becomes its HF counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reorder {
    None,
    /// llama.cpp permuted the rows of each of `heads` heads for its rotary layout; undo it.
    Unpermute {
        heads: usize,
    },
    /// A Gemma norm weight, stored as `1 + weight`.
    MinusOne,
}

/// One tensor of the output: where it comes from and what it becomes.
#[derive(Clone, Debug)]
struct Planned {
    gguf: String,
    hf: String,
    /// HF shape (GGUF's dimensions reversed).
    shape: Vec<usize>,
    reorder: Reorder,
}

/// A GGUF model file, opened (memory-mapped) and checked: architecture, metadata and tensors.
pub struct GgufModel {
    path: PathBuf,
    file: GgufFile,
    architecture: Architecture,
}

/// What [`GgufModel::write_weights`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WeightsReport {
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// Quantisation types of the source tensors and how many of each.
    pub source_types: BTreeMap<String, usize>,
    /// Bytes of `model.safetensors`.
    pub bytes: u64,
}

/// The shortest decimal that round-trips `value` as f32 (GGUF stores floats as f32: 1e-5 is read back as
/// 9.99999974e-6, which HF's own config would spell 1e-05).
fn f32_decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

impl GgufModel {
    /// Opens a GGUF file (v2/v3) and checks that dapt can convert its architecture.
    pub fn open(path: &Path) -> Result<Self> {
        // A vocabulary-only file (llama.cpp ships them for its tokenizer tests) ends with its metadata,
        // before the aligned data offset that mapping insists on: its header is the whole file.
        let header =
            GgufFile::header_from_path(path).map_err(|e| file_error(path, format!("{e:#}")))?;
        let file = if header.tensors.is_empty() {
            header
        } else {
            GgufFile::from_path_mmap(path).map_err(|e| file_error(path, format!("{e:#}")))?
        };
        let architecture = match file.metadata.get("general.architecture") {
            Some(MetaValue::String(name)) => {
                match ARCHITECTURES.iter().find(|a| a.key() == name.as_str()) {
                    Some(architecture) => *architecture,
                    None => {
                        return Err(file_error(
                            path,
                            format!(
                                "general.architecture {name:?} is not supported (supported: {})",
                                ARCHITECTURES
                                    .iter()
                                    .map(|a| a.key())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ))
                    }
                }
            }
            _ => {
                return Err(file_error(
                    path,
                    "metadata general.architecture: missing or not a string",
                ))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            architecture,
        })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> &'static str {
        self.architecture.key()
    }

    /// The GGUF format version.
    pub fn version(&self) -> u32 {
        self.file.version
    }

    fn value(&self, key: &str) -> Option<&MetaValue> {
        self.file.metadata.get(key)
    }

    fn missing(&self, key: &str, what: &str) -> Error {
        file_error(&self.path, format!("metadata {key}: {what}"))
    }

    /// A string metadata value; absent or of another type is an error naming the key.
    pub fn string(&self, key: &str) -> Result<String> {
        self.optional_string(key)?
            .ok_or_else(|| self.missing(key, "missing"))
    }

    /// A string metadata value, if present.
    pub fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.missing(key, "not a string")),
        }
    }

    /// An unsigned integer metadata value, if present.
    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.value(key) {
            None => Ok(None),
            Some(value) => match value {
                MetaValue::U8(v) => Ok(Some(u64::from(*v))),
                MetaValue::U16(v) => Ok(Some(u64::from(*v))),
                MetaValue::I8(v) if *v >= 0 => Ok(Some(*v as u64)),
                MetaValue::I16(v) if *v >= 0 => Ok(Some(*v as u64)),
                MetaValue::I32(v) if *v >= 0 => Ok(Some(*v as u64)),
                other => other
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| self.missing(key, "not a non-negative integer")),
            },
        }
    }

    fn u64(&self, key: &str) -> Result<u64> {
        self.optional_u64(key)?
            .ok_or_else(|| self.missing(key, "missing"))
    }

    fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(*v)),
            Some(MetaValue::F64(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(self.missing(key, "not a float")),
        }
    }

    /// A boolean metadata value, if present.
    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::Bool(v)) => Ok(Some(*v)),
            Some(_) => Err(self.missing(key, "not a boolean")),
        }
    }

    /// An array whose items `item` reads (`Err(what the item is not)` otherwise), if present.
    fn optional_array<T>(
        &self,
        key: &str,
        item: impl Fn(&MetaValue) -> std::result::Result<T, &'static str>,
    ) -> Result<Option<Vec<T>>> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    item(value).map_err(|e| self.missing(key, &format!("item {i} {e}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.missing(key, "not an array")),
        }
    }

    /// An array of strings, if present.
    pub fn optional_strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.optional_array(key, |item| {
            item.as_str().map(str::to_string).ok_or("is not a string")
        })
    }

    /// An array of floats, if present.
    pub fn optional_f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.optional_array(key, |item| match item {
            MetaValue::F32(v) => Ok(*v),
            MetaValue::F64(v) => Ok(*v as f32),
            _ => Err("is not a float"),
        })
    }

    /// An array of integers, if present.
    pub fn optional_i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.optional_array(key, |item| match item {
            MetaValue::I32(v) => Ok(*v),
            MetaValue::U32(v) => i32::try_from(*v).map_err(|_| "is out of range"),
            MetaValue::U8(v) => Ok(i32::from(*v)),
            MetaValue::I8(v) => Ok(i32::from(*v)),
            _ => Err("is not an integer"),
        })
    }

    fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.architecture.key())
    }

    /// The HF `config.json` of the model (`dtype` as written by [`Self::write_weights`]).
    pub fn config(&self, weights: WeightType) -> Result<ModelConfig> {
        let hidden = self.u64(&self.arch_key("embedding_length"))?;
        let heads = self.u64(&self.arch_key("attention.head_count"))?;
        let kv_heads = self
            .optional_u64(&self.arch_key("attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(self.missing(
                &self.arch_key("attention.head_count_kv"),
                &format!("{kv_heads} key/value heads for {heads} heads"),
            ));
        }
        let tokens = self
            .optional_strings("tokenizer.ggml.tokens")?
            .map(|t| t.len() as u64);
        let vocab = match self.optional_u64(&self.arch_key("vocab_size"))? {
            Some(v) => v,
            None => match self.file.tensors.get("token_embd.weight") {
                Some(t) if t.shape.len() == 2 => t.shape[1] as u64,
                _ => tokens.ok_or_else(|| self.missing(&self.arch_key("vocab_size"), "missing"))?,
            },
        };
        let head_dim = self.optional_u64(&self.arch_key("attention.key_length"))?;
        let default_head_dim = hidden / heads;
        let scaling = self.optional_string(&self.arch_key("rope.scaling.type"))?;
        let longrope = self.file.tensors.contains_key(ROPE_FACTOR_TENSORS[0]);
        let rope_scaling = match scaling.as_deref() {
            None | Some("none") if !longrope => None,
            Some("linear") => {
                let key = self.arch_key("rope.scaling.factor");
                let factor = self
                    .optional_f32(&key)?
                    .ok_or_else(|| self.missing(&key, "missing (required by linear scaling)"))?;
                Some(json!({"rope_type": "linear", "factor": f32_decimal(factor)}))
            }
            None | Some("longrope") if longrope => Some(self.longrope()?),
            _ => None,
        };
        if self.file.tensors.contains_key("rope_freqs.weight")
            || (scaling.is_some() && scaling.as_deref() != Some("none") && rope_scaling.is_none())
        {
            return Err(file_error(
                &self.path,
                format!(
                    "RoPE frequency scaling {} is not supported by the GGUF import (linear and Phi-3's \
                     longrope are)",
                    scaling.as_deref().unwrap_or("by a rope_freqs tensor, as in Llama 3.1")
                ),
            ));
        }
        let id = |key: &str| -> Result<Option<TokenIds>> {
            Ok(self.optional_u64(key)?.map(|v| TokenIds::One(v as i64)))
        };
        let mut extra = serde_json::Map::new();
        extra.insert("dtype".into(), json!(weights.torch_name()));
        let layers = self.u64(&self.arch_key("block_count"))?;
        let head_dim = head_dim.unwrap_or(default_head_dim);
        self.architecture_settings(&mut extra, layers, hidden / heads, head_dim)?;
        let config = ModelConfig {
            architectures: vec![self.architecture.hf_class().into()],
            model_type: self.architecture.model_type().into(),
            vocab_size: vocab as i64,
            hidden_size: hidden as i64,
            intermediate_size: self.u64(&self.arch_key("feed_forward_length"))? as i64,
            num_hidden_layers: layers as i64,
            num_attention_heads: heads as i64,
            num_key_value_heads: kv_heads as i64,
            head_dim: Some(head_dim as i64),
            max_position_embeddings: self
                .optional_u64(&self.arch_key("context_length"))?
                .unwrap_or(2048) as i64,
            rms_norm_eps: f32_decimal(
                self.optional_f32(&self.arch_key("attention.layer_norm_rms_epsilon"))?
                    .unwrap_or(1e-6),
            ),
            rope_theta: Some(f32_decimal(
                self.optional_f32(&self.arch_key("rope.freq_base"))?
                    .unwrap_or(10_000.0),
            )),
            rope_scaling,
            rope_parameters: None,
            tie_word_embeddings: !self.file.tensors.contains_key("output.weight"),
            hidden_act: (!self.architecture.is_gemma()).then(|| "silu".into()),
            initializer_range: 0.02,
            // Qwen2 always has q/k/v biases; the others say whether they have any.
            attention_bias: (self.architecture != Architecture::Qwen2).then(|| {
                self.file.tensors.contains_key("blk.0.attn_q.bias")
                    || self.file.tensors.contains_key("blk.0.attn_qkv.bias")
            }),
            mlp_bias: Some(false),
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
            pad_token_id: id("tokenizer.ggml.padding_token_id")?,
            extra,
        };
        Ok(config)
    }

    /// The config keys of Gemma and Phi-3 that live in `extra`, as llama.cpp reads the file: Gemma's
    /// GGUF has no `query_pre_attn_scalar` (llama.cpp takes `head_dim`, or `hidden / heads` for the
    /// 27B models: 46 layers for Gemma 2, 62 for Gemma 3) and no layer pattern unless written
    /// (`attention.sliding_window_pattern`; otherwise Gemma 2 alternates, Gemma 3 has every sixth
    /// layer full); Phi-3's rotary dimensions give `partial_rotary_factor`.
    fn architecture_settings(
        &self,
        extra: &mut serde_json::Map<String, Value>,
        layers: u64,
        hidden_per_head: u64,
        head_dim: u64,
    ) -> Result<()> {
        let window = self
            .optional_u64(&self.arch_key("attention.sliding_window"))?
            .filter(|&w| w > 0);
        match self.architecture {
            Architecture::Gemma2 | Architecture::Gemma3 => {
                let big = match self.architecture {
                    Architecture::Gemma2 => layers == 46,
                    _ => layers == 62,
                };
                let scalar = if big { hidden_per_head } else { head_dim };
                extra.insert("query_pre_attn_scalar".into(), json!(scalar));
                extra.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
                let default_window = (self.architecture == Architecture::Gemma2).then_some(4096);
                extra.insert("sliding_window".into(), json!(window.or(default_window)));
                let pattern_key = self.arch_key("attention.sliding_window_pattern");
                match self.value(&pattern_key) {
                    None => {}
                    Some(MetaValue::Array(items)) => {
                        let types: Vec<&str> = items
                            .iter()
                            .map(|item| match item {
                                MetaValue::Bool(true) => "sliding_attention",
                                _ => "full_attention",
                            })
                            .collect();
                        extra.insert("layer_types".into(), json!(types));
                    }
                    Some(_) => {
                        let pattern = self.u64(&pattern_key)?;
                        let types: Vec<&str> = (0..layers)
                            .map(|i| {
                                if pattern > 0 && (i + 1) % pattern != 0 {
                                    "sliding_attention"
                                } else {
                                    "full_attention"
                                }
                            })
                            .collect();
                        extra.insert("layer_types".into(), json!(types));
                    }
                }
                let softcap = |name: &str| -> Result<Value> {
                    Ok(match self.optional_f32(&self.arch_key(name))? {
                        Some(v) if v > 0.0 => json!(f32_decimal(v)),
                        _ => Value::Null,
                    })
                };
                extra.insert(
                    "final_logit_softcapping".into(),
                    softcap("final_logit_softcapping")?,
                );
                if self.architecture == Architecture::Gemma2 {
                    extra.insert(
                        "attn_logit_softcapping".into(),
                        softcap("attn_logit_softcapping")?,
                    );
                } else {
                    let local = self
                        .optional_f32(&self.arch_key("rope.freq_base_swa"))?
                        .unwrap_or(10_000.0);
                    extra.insert("rope_local_base_freq".into(), json!(f32_decimal(local)));
                }
            }
            Architecture::Phi3 => {
                extra.insert("sliding_window".into(), json!(window));
                if let Some(dims) = self.optional_u64(&self.arch_key("rope.dimension_count"))? {
                    if dims != head_dim {
                        extra.insert(
                            "partial_rotary_factor".into(),
                            json!(dims as f64 / head_dim as f64),
                        );
                    }
                }
                if let Some(original) =
                    self.optional_u64(&self.arch_key("rope.scaling.original_context_length"))?
                {
                    extra.insert("original_max_position_embeddings".into(), json!(original));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Phi-3's `rope_scaling` from the factor tensors and `rope.scaling.*` keys.
    fn longrope(&self) -> Result<Value> {
        let mut factors = Vec::new();
        for name in ROPE_FACTOR_TENSORS {
            let tensor =
                self.file.tensors.get(name).ok_or_else(|| {
                    file_error(&self.path, format!("LongRoPE without tensor {name}"))
                })?;
            let bytes = self
                .file
                .tensor_bytes(tensor)
                .map_err(|e| file_error(&self.path, format!("{e:#}")))?;
            let values = rlx_gguf::dequant_typed(tensor.dtype, bytes, tensor.n_elements(), name)
                .map_err(|e| file_error(&self.path, format!("tensor {name}: {e:#}")))?;
            factors.push(values.into_iter().map(f32_decimal).collect::<Vec<f64>>());
        }
        let mut scaling = json!({
            "rope_type": "longrope",
            "long_factor": factors[0],
            "short_factor": factors[1],
        });
        if let Some(factor) = self.optional_f32(&self.arch_key("rope.scaling.attn_factor"))? {
            scaling["attention_factor"] = json!(f32_decimal(factor));
        }
        Ok(scaling)
    }

    /// `generation_config.json`: the special token ids.
    pub fn generation_config(&self) -> Result<Value> {
        let mut config = serde_json::Map::new();
        for (name, key) in [
            ("bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("eos_token_id", "tokenizer.ggml.eos_token_id"),
            ("pad_token_id", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = self.optional_u64(key)? {
                config.insert(name.into(), json!(id));
            }
        }
        Ok(Value::Object(config))
    }

    /// The HF name and reordering of a GGUF tensor, or `None` for a name the architecture lacks.
    fn hf_name(&self, name: &str, heads: usize, kv_heads: usize) -> Option<(String, Reorder)> {
        let global = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(hf) = global {
            let reorder = if self.architecture.is_gemma() && name == "output_norm.weight" {
                Reorder::MinusOne
            } else {
                Reorder::None
            };
            return Some((hf.to_string(), reorder));
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        // Q and K carry rotary heads; llama.cpp permuted their rows for the Llama family only.
        let qk_norm = matches!(
            self.architecture,
            Architecture::Qwen3 | Architecture::Gemma3
        );
        let gemma = self.architecture.is_gemma();
        let phi3 = self.architecture == Architecture::Phi3;
        let (hf, rotary_heads) = match part {
            "attn_norm.weight" => ("input_layernorm.weight", None),
            "ffn_norm.weight" if gemma => ("pre_feedforward_layernorm.weight", None),
            "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
            "post_attention_norm.weight" if gemma => ("post_attention_layernorm.weight", None),
            "post_ffw_norm.weight" if gemma => ("post_feedforward_layernorm.weight", None),
            "attn_qkv.weight" if phi3 => ("self_attn.qkv_proj.weight", None),
            "ffn_up.weight" if phi3 => ("mlp.gate_up_proj.weight", None),
            "attn_q.weight" => ("self_attn.q_proj.weight", Some(heads)),
            "attn_q.bias" => ("self_attn.q_proj.bias", Some(heads)),
            "attn_k.weight" => ("self_attn.k_proj.weight", Some(kv_heads)),
            "attn_k.bias" => ("self_attn.k_proj.bias", Some(kv_heads)),
            "attn_v.weight" => ("self_attn.v_proj.weight", None),
            "attn_v.bias" => ("self_attn.v_proj.bias", None),
            "attn_output.weight" => ("self_attn.o_proj.weight", None),
            "attn_output.bias" => ("self_attn.o_proj.bias", None),
            "attn_q_norm.weight" if qk_norm => ("self_attn.q_norm.weight", None),
            "attn_k_norm.weight" if qk_norm => ("self_attn.k_norm.weight", None),
            "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
            "ffn_up.weight" => ("mlp.up_proj.weight", None),
            "ffn_down.weight" => ("mlp.down_proj.weight", None),
            _ => return None,
        };
        let reorder = match rotary_heads {
            Some(heads) if self.architecture == Architecture::Llama => Reorder::Unpermute { heads },
            _ if gemma && part.ends_with("norm.weight") => Reorder::MinusOne,
            _ => Reorder::None,
        };
        Some((format!("model.layers.{layer}.{hf}"), reorder))
    }

    /// Every tensor of the file, mapped and checked (type, shape, placement), in HF name order.
    fn plan(&self) -> Result<Vec<Planned>> {
        let config = self.config(WeightType::F32)?;
        let (heads, kv_heads) = (
            config.num_attention_heads as usize,
            config.num_key_value_heads as usize,
        );
        let mut plan = Vec::with_capacity(self.file.tensors.len());
        let mut names: Vec<&String> = self.file.tensors.keys().collect();
        names.sort();
        for name in names {
            if self.architecture == Architecture::Phi3
                && ROPE_FACTOR_TENSORS.contains(&name.as_str())
            {
                continue;
            }
            let tensor = &self.file.tensors[name];
            let fail = |reason: String| file_error(&self.path, format!("tensor {name}: {reason}"));
            if !SUPPORTED_TYPES.contains(&tensor.dtype) {
                return Err(fail(format!(
                    "quantisation type {:?} is not supported (supported: {})",
                    tensor.dtype,
                    SUPPORTED_TYPES
                        .iter()
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let Some((hf, reorder)) = self.hf_name(name, heads, kv_heads) else {
                return Err(fail(format!(
                    "no HF counterpart in a {} model",
                    self.architecture.key()
                )));
            };
            if tensor.shape.is_empty() || tensor.shape.len() > 2 {
                return Err(fail(format!("{} dimensions", tensor.shape.len())));
            }
            let elements = tensor
                .shape
                .iter()
                .try_fold(1usize, |n, d| n.checked_mul(*d))
                .ok_or_else(|| fail(format!("shape {:?} overflows", tensor.shape)))?;
            if elements == 0 {
                return Err(fail("no elements".into()));
            }
            if !tensor.offset.is_multiple_of(self.file.alignment.max(1)) {
                return Err(fail(format!(
                    "data offset {} is not aligned to {}",
                    tensor.offset, self.file.alignment
                )));
            }
            let shape: Vec<usize> = tensor.shape.iter().rev().copied().collect();
            if let Reorder::Unpermute { heads } = reorder {
                if !shape[0].is_multiple_of(2 * heads) {
                    return Err(fail(format!(
                        "{} rows cannot be split into {heads} rotary heads",
                        shape[0]
                    )));
                }
            }
            plan.push(Planned {
                gguf: name.clone(),
                hf,
                shape,
                reorder,
            });
        }
        if !plan.iter().any(|p| p.hf == "model.embed_tokens.weight") {
            return Err(file_error(&self.path, "no token_embd.weight tensor"));
        }
        plan.sort_by(|a, b| a.hf.cmp(&b.hf));
        Ok(plan)
    }

    /// One tensor dequantised to f32 in HF layout (row-major, HF shape).
    fn dequantise(&self, planned: &Planned) -> Result<Vec<f32>> {
        let tensor = &self.file.tensors[&planned.gguf];
        let bytes = self
            .file
            .tensor_bytes(tensor)
            .map_err(|e| file_error(&self.path, format!("{e:#}")))?;
        let values =
            rlx_gguf::dequant_typed(tensor.dtype, bytes, tensor.n_elements(), &planned.gguf)
                .map_err(|e| file_error(&self.path, format!("tensor {}: {e:#}", planned.gguf)))?;
        Ok(match planned.reorder {
            Reorder::None => values,
            Reorder::Unpermute { heads } => unpermute(&values, &planned.shape, heads),
            Reorder::MinusOne => values.into_iter().map(|v| v - 1.0).collect(),
        })
    }

    /// Dequantises every tensor into HF names and writes `path` (safetensors, names sorted, written
    /// through a temporary name): one tensor in memory at a time. `progress(done, total)` is called
    /// after each tensor.
    pub fn write_weights(
        &self,
        path: &Path,
        weights: WeightType,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<WeightsReport> {
        let plan = self.plan()?;
        let entries: Vec<TensorEntry> = plan
            .iter()
            .map(|p| TensorEntry {
                name: p.hf.clone(),
                dtype: weights.name(),
                shape: p.shape.iter().map(|&d| d as i64).collect(),
                bytes: p.shape.iter().product::<usize>() * weights.bytes(),
            })
            .collect();
        let header = safetensors_header(&entries)?;
        let tmp = path.with_extension("safetensors.tmp");
        let mut source_types = BTreeMap::new();
        let mut parameters = 0u64;
        let bytes = header.len() as u64 + entries.iter().map(|e| e.bytes as u64).sum::<u64>();
        let file = std::fs::File::create(&tmp).map_err(crate::error::io_error(&tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header)
            .map_err(crate::error::io_error(&tmp))?;
        let mut buffer = Vec::new();
        for (i, planned) in plan.iter().enumerate() {
            let values = self.dequantise(planned)?;
            *source_types
                .entry(format!("{:?}", self.file.tensors[&planned.gguf].dtype))
                .or_insert(0) += 1;
            parameters += values.len() as u64;
            buffer.clear();
            match weights {
                WeightType::F32 => {
                    buffer.reserve(values.len() * 4);
                    for v in &values {
                        buffer.extend_from_slice(&v.to_le_bytes());
                    }
                }
                WeightType::Bf16 => {
                    buffer.reserve(values.len() * 2);
                    for v in &values {
                        buffer.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                    }
                }
            }
            out.write_all(&buffer)
                .map_err(crate::error::io_error(&tmp))?;
            progress(i + 1, plan.len());
        }
        let file = out
            .into_inner()
            .map_err(|e| file_error(&tmp, e.error().to_string()))?;
        file.sync_all().map_err(crate::error::io_error(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(crate::error::io_error(path))?;
        Ok(WeightsReport {
            tensors: plan.len(),
            parameters,
            source_types,
            bytes,
        })
    }
}

/// Undoes llama.cpp's rotary permutation of a Q or K projection ([rows, cols], `heads` heads): GGUF row
/// `h·2d + 2j + i` is HF row `h·2d + i·d + j` (`d` = rows / heads / 2, `i` ∈ {0, 1}, `j` < `d`).
fn unpermute(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let cols = shape.get(1).copied().unwrap_or(1);
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * 2 * half + i * half + j;
                let gguf_row = h * 2 * half + 2 * j + i;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&values[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's permutation as convert_hf_to_gguf writes it in numpy:
    /// `w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn permute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        let half = (rows / heads / 2) as i64;
        let (rows, cols, heads) = (rows as i64, cols as i64, heads as i64);
        let permuted = tch::Tensor::from_slice(values)
            .reshape([heads, 2, half, cols])
            .transpose(1, 2)
            .reshape([rows * cols]);
        Vec::<f32>::try_from(&permuted).unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_rotary_permutation() {
        let (rows, cols, heads) = (12, 3, 2);
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let gguf = permute(&hf, rows, cols, heads);
        assert_ne!(gguf, hf);
        // Head 0, GGUF row 1 is HF row 3 (the first of the second half): rows interleave by halves.
        assert_eq!(&gguf[cols..2 * cols], &hf[3 * cols..4 * cols]);
        assert_eq!(unpermute(&gguf, &[rows, cols], heads), hf);
    }

    #[test]
    fn f32_metadata_reads_as_the_decimal_it_was_written_from() {
        assert_eq!(f32_decimal(1e-5f32), 1e-5);
        assert_eq!(f32_decimal(100000.0f32), 100000.0);
        assert_eq!(f32_decimal(1e-6f32), 1e-6);
    }

    #[test]
    fn files_that_are_not_gguf_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, b"not a gguf file at all").unwrap();
        let err = GgufModel::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("model.gguf") && err.contains("not a GGUF"),
            "{err}"
        );
        std::fs::write(&path, b"GGUF").unwrap();
        assert!(GgufModel::open(&path).is_err());
    }
}
