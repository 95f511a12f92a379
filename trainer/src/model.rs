//! Llama-style decoder. Variable names equal HF checkpoint keys (`model.layers.0.self_attn.q_proj.weight`,
//! …), so `model.safetensors` files load and save without renaming.
use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::batch::{Batch, IGNORE_INDEX};
use crate::{Error, ModelConfig, Result};

/// Parameter group for the optimiser: weights that decay.
pub const GROUP_DECAY: usize = 0;
/// Parameter group for the optimiser: norms (and biases), which do not decay.
pub const GROUP_NO_DECAY: usize = 1;

/// Root-mean-square layer norm. `weight: [hidden]`.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(path: nn::Path, size: i64, eps: f64) -> Self {
        let path = path.set_group(GROUP_NO_DECAY);
        Self {
            weight: path.ones("weight", &[size]),
            eps,
        }
    }

    /// `x: [.., hidden]` → same shape.
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (variance + self.eps).rsqrt() * &self.weight
    }
}

fn linear(path: nn::Path, inputs: i64, outputs: i64, std: f64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: None,
        bias: false,
    };
    nn::linear(path.set_group(GROUP_DECAY), inputs, outputs, config)
}

/// Rotates the two halves of the last dimension: `[x1, x2]` → `[-x2, x1]`.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// Grouped-query self-attention with rotary position embeddings.
#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(path: nn::Path, c: &ModelConfig) -> Self {
        let hd = c.head_dim();
        let std = c.initializer_range;
        Self {
            q_proj: linear(
                &path / "q_proj",
                c.hidden_size,
                c.num_attention_heads * hd,
                std,
            ),
            k_proj: linear(
                &path / "k_proj",
                c.hidden_size,
                c.num_key_value_heads * hd,
                std,
            ),
            v_proj: linear(
                &path / "v_proj",
                c.hidden_size,
                c.num_key_value_heads * hd,
                std,
            ),
            o_proj: linear(
                &path / "o_proj",
                c.num_attention_heads * hd,
                c.hidden_size,
                std,
            ),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        }
    }

    /// `x: [b, t, hidden]`, `cos`/`sin: [b, 1, t, head_dim]`, `mask: [b, 1, t, t]` → `[b, t, hidden]`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("[batch, seq, hidden]");
        let split = |y: Tensor, heads: i64| y.view([b, t, heads, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(x), self.heads);
        let k = split(self.k_proj.forward(x), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads);
        let q = &q * cos + rotate_half(&q) * sin;
        let mut k = &k * cos + rotate_half(&k) * sin;
        let mut v = v;
        if self.kv_heads != self.heads {
            let repeats = self.heads / self.kv_heads;
            k = k.repeat_interleave_self_int(repeats, Some(1), None);
            v = v.repeat_interleave_self_int(repeats, Some(1), None);
        }
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let y = y
            .transpose(1, 2)
            .contiguous()
            .view([b, t, self.heads * self.head_dim]);
        self.o_proj.forward(&y)
    }
}

/// SwiGLU feed-forward block.
#[derive(Debug)]
struct Mlp {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl Mlp {
    fn new(path: nn::Path, c: &ModelConfig) -> Self {
        let std = c.initializer_range;
        Self {
            gate_proj: linear(&path / "gate_proj", c.hidden_size, c.intermediate_size, std),
            up_proj: linear(&path / "up_proj", c.hidden_size, c.intermediate_size, std),
            down_proj: linear(&path / "down_proj", c.intermediate_size, c.hidden_size, std),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A Llama-family causal language model.
#[derive(Debug)]
pub struct Llama {
    config: ModelConfig,
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<nn::Linear>,
    /// `[head_dim / 2]` rotary inverse frequencies.
    inv_freq: Tensor,
}

impl Llama {
    /// Creates the variables below `root` (the VarStore root) with HF names and initialises them like
    /// HF (`normal(0, initializer_range)`, norms at one).
    pub fn new(root: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let model = root / "model";
        let embed_tokens = nn::embedding(
            (&model / "embed_tokens").set_group(GROUP_DECAY),
            c.vocab_size,
            c.hidden_size,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: c.initializer_range,
                },
                ..Default::default()
            },
        );
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let layer = &model / "layers" / i;
                DecoderLayer {
                    input_layernorm: RmsNorm::new(
                        &layer / "input_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    self_attn: Attention::new(&layer / "self_attn", c),
                    post_attention_layernorm: RmsNorm::new(
                        &layer / "post_attention_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    mlp: Mlp::new(&layer / "mlp", c),
                }
            })
            .collect();
        let norm = RmsNorm::new(&model / "norm", c.hidden_size, c.rms_norm_eps);
        let lm_head = (!c.tie_word_embeddings).then(|| {
            linear(
                root / "lm_head",
                c.hidden_size,
                c.vocab_size,
                c.initializer_range,
            )
        });
        let hd = c.head_dim();
        let inv_freq = (Tensor::arange_start_step(0, hd, 2, (Kind::Float, root.device()))
            / hd as f64
            * c.rope_theta.ln())
        .exp()
        .reciprocal();
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// `input_ids`, `positions: [b, t]` int64, `mask: [b, 1, t, t]` bool → logits `[b, t, vocab]` float.
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, mask: &Tensor) -> Tensor {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let (cos, sin) = (angles.cos(), angles.sin());
        let mut x = self.embed_tokens.forward(input_ids);
        for layer in &self.layers {
            let h = layer
                .self_attn
                .forward(&layer.input_layernorm.forward(&x), &cos, &sin, mask);
            x = &x + &h;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x));
            x = &x + &h;
        }
        let x = self.norm.forward(&x);
        match &self.lm_head {
            Some(head) => head.forward(&x),
            None => x.matmul(&self.embed_tokens.ws.tr()),
        }
    }

    /// Sum of next-token cross-entropy over the batch's counted targets (a scalar float tensor).
    pub fn loss_sum(&self, batch: &Batch) -> Tensor {
        let logits = self.forward(&batch.input_ids, &batch.positions, &batch.mask);
        let vocab = self.config.vocab_size;
        logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
            &batch.targets.view([-1]),
            None,
            tch::Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        )
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed): a directory that
    /// HF `transformers` loads.
    pub fn save(&self, vs: &nn::VarStore, dir: &Path) -> Result<()> {
        let file_error = |path: &Path, reason: String| Error::File {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e.to_string()))?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.config)
            .map_err(|e| file_error(&config_path, e.to_string()))?;
        std::fs::write(&config_path, json + "\n")
            .map_err(|e| file_error(&config_path, e.to_string()))?;
        let weights = dir.join("model.safetensors");
        vs.save(&weights).map_err(|source| Error::Torch {
            what: format!("saving {}", weights.display()),
            source,
        })
    }

    /// Loads a model directory written by [`Llama::save`] (or an HF Llama checkpoint in one file).
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root(), &config)?;
        let weights = dir.join("model.safetensors");
        vs.load(&weights).map_err(|source| Error::Torch {
            what: format!("loading {}", weights.display()),
            source,
        })?;
        Ok((vs, model))
    }
}
