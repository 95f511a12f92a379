//! Decoder-only causal LMs of the Llama 3 / Qwen2 / Qwen3 families: RMSNorm, RoPE (with the config's
//! theta and scaling), grouped-query attention, SwiGLU, tied or untied embeddings, Qwen2's q/k/v biases,
//! Qwen3's per-head q/k norms. Variable names equal HF checkpoint keys
//! (`model.layers.0.self_attn.q_proj.weight`, …), so `model.safetensors` loads and saves without
//! renaming, and a saved directory is one HF `transformers` loads.
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::batch::{Batch, IGNORE_INDEX};
use crate::config::{Rope, RopeScaling};
use crate::error::io_error;
use crate::lora::{LoraInit, LoraOptions};
use crate::weights::{load_into, save_safetensors, weight_files};
use crate::{Error, ModelConfig, Result};

/// Root-mean-square layer norm. `weight: [size]`.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
    /// Gemma's form: the factor is `1 + weight` (the weight starts at zero), applied in float32
    /// before the cast back.
    gemma: bool,
}

impl RmsNorm {
    fn new(path: nn::Path, size: i64, c: &ModelConfig) -> Self {
        let gemma = c.is_gemma();
        let start = if gemma { 0.0 } else { 1.0 };
        Self {
            weight: path.var("weight", &[size], Init::Const(start)),
            eps: c.rms_norm_eps,
            gemma,
        }
    }

    /// `x: [.., size]` → same shape; computed in float32 like HF.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x * (variance + self.eps).rsqrt();
        if self.gemma {
            (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
        } else {
            normed.to_kind(kind) * &self.weight
        }
    }
}

/// A LoRA update beside a linear layer: `dropout(x)·Aᵀ·Bᵀ·scale`. `a: [r, in]`, `b: [out, r]`.
#[derive(Debug)]
struct LoraAdapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
    /// Shared with the model: off, the layer computes the frozen base alone (the reference of
    /// preference training, without a second copy of the weights).
    enabled: Arc<AtomicBool>,
}

/// `y = x·Wᵀ + b` (+ LoRA). `weight: [out, in]`, `bias: [out]`.
#[derive(Debug)]
struct Linear {
    /// HF name of the module (`model.layers.0.self_attn.q_proj`).
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
}

thread_local! {
    /// Set while `load`/`load_adapter` build variables that the files overwrite.
    static LOADING: Cell<bool> = const { Cell::new(false) };
}

/// `init` for a fresh variable, or zeros while loading: a loaded model draws nothing from LibTorch's
/// process-wide generator, so loading neither costs a random fill of every weight nor moves the draws
/// of a seeded run (or of another thread's).
fn drawn(init: Init) -> Init {
    if LOADING.with(Cell::get) {
        Init::Const(0.0)
    } else {
        init
    }
}

/// Marks this thread as loading until dropped.
struct Loading;

impl Loading {
    fn start() -> Self {
        LOADING.with(|l| l.set(true));
        Loading
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        LOADING.with(|l| l.set(false));
    }
}

impl Linear {
    fn new(path: nn::Path, name: &str, inputs: i64, outputs: i64, bias: bool, std: f64) -> Self {
        let full = format!("{}.{name}", path.components().collect::<Vec<_>>().join("."));
        let path = &path / name;
        Self {
            name: full,
            weight: path.var(
                "weight",
                &[outputs, inputs],
                drawn(Init::Randn {
                    mean: 0.0,
                    stdev: std,
                }),
            ),
            bias: bias.then(|| path.var("bias", &[outputs], Init::Const(0.0))),
            lora: None,
        }
    }

    fn forward(&self, x: &Tensor, training: bool) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) if lora.enabled.load(Ordering::Relaxed) => {
                let input = if training && lora.dropout > 0.0 {
                    x.dropout(lora.dropout, true)
                } else {
                    x.shallow_clone()
                };
                y + input
                    .linear::<Tensor>(&lora.a, None)
                    .linear::<Tensor>(&lora.b, None)
                    * lora.scale
            }
            _ => y,
        }
    }

    /// Adds an adapter below `root` (the adapter VarStore's root) under PEFT's name.
    fn attach(&mut self, root: &nn::Path, options: &LoraOptions, enabled: &Arc<AtomicBool>) {
        let mut path = root / "base_model" / "model";
        for part in self.name.split('.') {
            path = &path / part;
        }
        let (outputs, inputs) = (self.weight.size()[0], self.weight.size()[1]);
        let a_init = match options.init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (inputs as f64).sqrt();
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                }
            }
            LoraInit::Gaussian => Init::Randn {
                mean: 0.0,
                stdev: 1.0 / options.r as f64,
            },
        };
        self.lora = Some(LoraAdapter {
            a: (&path / "lora_A").var("weight", &[options.r, inputs], drawn(a_init)),
            b: (&path / "lora_B").var("weight", &[outputs, options.r], Init::Const(0.0)),
            scale: options.scale(),
            dropout: options.dropout,
            enabled: enabled.clone(),
        });
    }

    /// Folds the adapter into the weight: `W += B·A·scale`.
    fn merge(&mut self) {
        if let Some(lora) = self.lora.take() {
            tch::no_grad(|| {
                let update = lora.b.matmul(&lora.a) * lora.scale;
                let _ = self.weight.g_add_(&update.to_kind(self.weight.kind()));
            });
        }
    }
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
    /// `q_proj`, `k_proj`, `v_proj`, or Phi-3's fused `qkv_proj` alone.
    qkv: Vec<Linear>,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// Factor of the attention logits (`None`: `head_dim^-½`).
    scale: Option<f64>,
    /// Soft-capping of the attention logits (Gemma 2).
    softcap: Option<f64>,
    /// A sliding-window layer (its mask and RoPE are the local ones).
    sliding: bool,
    /// Leading dimensions of each head that RoPE rotates (`partial_rotary_factor`).
    rotary_dim: i64,
}

impl Attention {
    fn new(path: nn::Path, c: &ModelConfig, layer: i64) -> Self {
        let hd = c.head_dim();
        let std = c.initializer_range;
        let (h, kv, hidden) = (c.num_attention_heads, c.num_key_value_heads, c.hidden_size);
        let norm = |name: &str| c.qk_norm().then(|| RmsNorm::new(&path / name, hd, c));
        let linear = |name: &str, outputs: i64| {
            Linear::new(path.clone(), name, hidden, outputs, c.qkv_bias(), std)
        };
        let qkv = if c.fused_projections() {
            vec![linear("qkv_proj", (h + 2 * kv) * hd)]
        } else {
            vec![
                linear("q_proj", h * hd),
                linear("k_proj", kv * hd),
                linear("v_proj", kv * hd),
            ]
        };
        Self {
            qkv,
            o_proj: Linear::new(path.clone(), "o_proj", h * hd, hidden, c.o_bias(), std),
            q_norm: norm("q_norm"),
            k_norm: norm("k_norm"),
            heads: h,
            kv_heads: kv,
            head_dim: hd,
            scale: c.attention_scale(),
            softcap: c.attention_softcap(),
            sliding: c.layer_is_sliding(layer),
            rotary_dim: c.rotary_dim(),
        }
    }

    fn linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.qkv.iter_mut().chain(std::iter::once(&mut self.o_proj))
    }

    fn linear_refs(&self) -> impl Iterator<Item = &Linear> {
        self.qkv.iter().chain(std::iter::once(&self.o_proj))
    }

    /// RoPE on the first `rotary_dim` dimensions of each head of `x: [b, heads, t, head_dim]`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        if self.rotary_dim == self.head_dim {
            return x * cos + rotate_half(x) * sin;
        }
        let rotated = x.narrow(-1, 0, self.rotary_dim);
        let rest = x.narrow(-1, self.rotary_dim, self.head_dim - self.rotary_dim);
        Tensor::cat(&[&rotated * cos + rotate_half(&rotated) * sin, rest], -1)
    }

    /// Queries, keys and values after norms and RoPE: `[b, heads|kv_heads, t, head_dim]`.
    fn project(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        training: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let split = |y: Tensor, heads: i64, norm: &Option<RmsNorm>| {
            let y = y.view([b, t, heads, self.head_dim]);
            let y = match norm {
                Some(norm) => norm.forward(&y),
                None => y,
            };
            y.transpose(1, 2)
        };
        let (q, k, v) = match self.qkv.as_slice() {
            [fused] => {
                let y = fused.forward(x, training);
                let (q_width, kv_width) =
                    (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                (
                    y.narrow(-1, 0, q_width),
                    y.narrow(-1, q_width, kv_width),
                    y.narrow(-1, q_width + kv_width, kv_width),
                )
            }
            [q, k, v] => (
                q.forward(x, training),
                k.forward(x, training),
                v.forward(x, training),
            ),
            _ => unreachable!("attention has q, k and v projections or a fused one"),
        };
        let q = split(q.contiguous(), self.heads, &self.q_norm);
        let k = split(k.contiguous(), self.kv_heads, &self.k_norm);
        let v = split(v.contiguous(), self.kv_heads, &None);
        (self.rotate(&q, cos, sin), self.rotate(&k, cos, sin), v)
    }

    /// Attention of `q: [b, heads, t, d]` over `k`, `v: [b, kv_heads, s, d]` where `mask: [b|1, 1, t, s]`
    /// allows, then the output projection → `[b, t, hidden]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, training: bool) -> Tensor {
        let size = q.size();
        let (b, t) = (size[0], size[2]);
        let (k, v) = if self.kv_heads != self.heads {
            let repeats = self.heads / self.kv_heads;
            (
                k.repeat_interleave_self_int(repeats, Some(1), None),
                v.repeat_interleave_self_int(repeats, Some(1), None),
            )
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let y = match self.softcap {
            None => Tensor::scaled_dot_product_attention(
                q,
                &k,
                &v,
                Some(mask),
                0.0,
                false,
                self.scale,
                false,
            ),
            Some(cap) => {
                // Soft-capped logits, which no fused kernel takes: the attention written out, the
                // softmax in float32 as transformers' eager attention.
                let scale = self.scale.unwrap_or((self.head_dim as f64).powf(-0.5));
                let logits = q.matmul(&k.transpose(-2, -1)) * scale;
                let logits = (logits / cap).tanh() * cap;
                logits
                    .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
                    .softmax(-1, Kind::Float)
                    .to_kind(q.kind())
                    .matmul(&v)
            }
        };
        let y = y
            .transpose(1, 2)
            .contiguous()
            .view([b, t, self.heads * self.head_dim]);
        self.o_proj.forward(&y, training)
    }

    /// `x: [b, t, hidden]`, `cos`/`sin: [b, 1, t, head_dim]` → `[b, t, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attend: &Attend,
        training: bool,
    ) -> Tensor {
        let (q, k, v) = self.project(x, cos, sin, training);
        match attend {
            Attend::Mask { .. } => self.attend(&q, &k, &v, attend.mask(self.sliding), training),
            #[cfg(feature = "cuda")]
            Attend::Varlen {
                cu_seqlens,
                max_seqlen,
                mask,
            } => match self.attend_varlen(&q, &k, &v, cu_seqlens, *max_seqlen, training) {
                Some(y) => y,
                None => self.attend(&q, &k, &v, mask, training),
            },
        }
    }

    /// As [`Attention::attend`] with the variable-length flash kernel over the flattened batch, in
    /// bf16 (the kernel's precision; the trainer asks for it under bf16 autocast only). `None` where
    /// the kernel does not take these inputs or fails (logged), for the caller to use the mask.
    #[cfg(feature = "cuda")]
    fn attend_varlen(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cu_seqlens: &Tensor,
        max_seqlen: i64,
        training: bool,
    ) -> Option<Tensor> {
        let size = q.size();
        let (b, t) = (size[0], size[2]);
        let flat = |x: &Tensor| {
            let x = x.transpose(1, 2).to_kind(Kind::BFloat16);
            let heads = x.size()[2];
            x.contiguous().view([b * t, heads, self.head_dim])
        };
        let (fq, fk, fv) = (flat(q), flat(k), flat(v));
        if !crate::flash::supported(&fq) {
            return None;
        }
        match crate::flash::varlen_attention(&fq, &fk, &fv, cu_seqlens, max_seqlen) {
            Ok(y) => {
                let y = y.view([b, t, self.heads * self.head_dim]).to_kind(q.kind());
                Some(self.o_proj.forward(&y, training))
            }
            Err(e) => {
                tracing::warn!("flash attention failed, using the mask: {e}");
                None
            }
        }
    }
}

/// How attention keeps to the segments of packed rows.
enum Attend<'a> {
    /// `[b|1, 1, t, s]` bool: true where a query may attend to a key, for the full layers and for the
    /// sliding-window layers (the same mask where the model has no window).
    Mask { full: &'a Tensor, local: &'a Tensor },
    /// The flash kernel over the flattened batch (the mask where the kernel cannot run).
    #[cfg(feature = "cuda")]
    Varlen {
        cu_seqlens: &'a Tensor,
        max_seqlen: i64,
        mask: &'a Tensor,
    },
}

/// Gated feed-forward block: SwiGLU, or GeGLU with tanh-GELU (Gemma).
#[derive(Debug)]
struct Mlp {
    /// `gate_proj`, `up_proj`, or Phi-3's fused `gate_up_proj` alone (gate first).
    gate_up: Vec<Linear>,
    down_proj: Linear,
    /// tanh-approximated GELU on the gate instead of SiLU.
    gelu: bool,
}

impl Mlp {
    fn new(path: nn::Path, c: &ModelConfig) -> Self {
        let std = c.initializer_range;
        let (hidden, inner) = (c.hidden_size, c.intermediate_size);
        let linear =
            |name: &str, outputs: i64| Linear::new(path.clone(), name, hidden, outputs, false, std);
        let gate_up = if c.fused_projections() {
            vec![linear("gate_up_proj", 2 * inner)]
        } else {
            vec![linear("gate_proj", inner), linear("up_proj", inner)]
        };
        Self {
            gate_up,
            down_proj: Linear::new(path, "down_proj", inner, hidden, false, std),
            gelu: c.activation() == "gelu_pytorch_tanh",
        }
    }

    fn linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.gate_up
            .iter_mut()
            .chain(std::iter::once(&mut self.down_proj))
    }

    fn linear_refs(&self) -> impl Iterator<Item = &Linear> {
        self.gate_up.iter().chain(std::iter::once(&self.down_proj))
    }

    fn forward(&self, x: &Tensor, training: bool) -> Tensor {
        let (gate, up) = match self.gate_up.as_slice() {
            [fused] => {
                let y = fused.forward(x, training);
                let inner = y.size().last().copied().unwrap_or(0) / 2;
                (y.narrow(-1, 0, inner), y.narrow(-1, inner, inner))
            }
            [gate, up] => (gate.forward(x, training), up.forward(x, training)),
            _ => unreachable!("the MLP has gate and up projections or a fused one"),
        };
        let gate = if self.gelu {
            gate.gelu("tanh")
        } else {
            gate.silu()
        };
        self.down_proj.forward(&(gate * up), training)
    }
}

impl Attend<'_> {
    /// The boolean mask of a sliding-window layer or a full one (every way of attending has one to
    /// fall back on; flash runs only for models without a window).
    fn mask(&self, sliding: bool) -> &Tensor {
        match self {
            Attend::Mask { full, local } => {
                if sliding {
                    local
                } else {
                    full
                }
            }
            #[cfg(feature = "cuda")]
            Attend::Varlen { mask, .. } => mask,
        }
    }
}

/// One transformer block: pre-norm attention and pre-norm MLP, each added to the residual stream.
/// Gemma normalises each block's output as well: `post_attention_layernorm` follows attention, and
/// `pre_feedforward_layernorm`/`post_feedforward_layernorm` surround the MLP (elsewhere
/// `post_attention_layernorm` is the MLP's input norm).
#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// Gemma's norms around the MLP.
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
    mlp: Mlp,
}

/// Keys and values of earlier tokens a layer attends to besides the new ones (generation).
enum Past<'a> {
    /// Only the tokens of this call (training, scoring).
    None,
    /// These earlier keys and values (`None`: no token yet); the layer returns them extended.
    Cached(Option<&'a (Tensor, Tensor)>),
}

impl DecoderLayer {
    /// The block under `path` (HF names: `input_layernorm`, `self_attn`, `post_attention_layernorm`,
    /// `mlp`).
    fn new(path: nn::Path, c: &ModelConfig, layer: i64) -> Self {
        let norm = |name: &str| RmsNorm::new(&path / name, c.hidden_size, c);
        Self {
            input_layernorm: norm("input_layernorm"),
            self_attn: Attention::new(&path / "self_attn", c, layer),
            post_attention_layernorm: norm("post_attention_layernorm"),
            feedforward_norms: c.is_gemma().then(|| {
                (
                    norm("pre_feedforward_layernorm"),
                    norm("post_feedforward_layernorm"),
                )
            }),
            mlp: Mlp::new(&path / "mlp", c),
        }
    }

    /// `x: [b, t, hidden]`, `rope`: the (`cos`, `sin`) `[b|1, 1, t, head_dim]` of the full layers and
    /// of the sliding ones → `[b, t, hidden]`, and with [`Past::Cached`] the keys and values of the
    /// earlier and new tokens.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rotary,
        attend: &Attend,
        past: Past,
        training: bool,
    ) -> (Tensor, Option<(Tensor, Tensor)>) {
        let (cos, sin) = rope.of(self.self_attn.sliding);
        let normed = self.input_layernorm.forward(x);
        let (h, keys) = match past {
            Past::None => (
                self.self_attn.forward(&normed, cos, sin, attend, training),
                None,
            ),
            Past::Cached(earlier) => {
                let (q, k, v) = self.self_attn.project(&normed, cos, sin, training);
                let (k, v) = match earlier {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2)),
                    None => (k, v),
                };
                let mask = attend.mask(self.self_attn.sliding);
                let h = self.self_attn.attend(&q, &k, &v, mask, training);
                (h, Some((k, v)))
            }
        };
        match &self.feedforward_norms {
            None => {
                let x = x + h;
                let h = self
                    .mlp
                    .forward(&self.post_attention_layernorm.forward(&x), training);
                (&x + &h, keys)
            }
            Some((pre, post)) => {
                let x = x + self.post_attention_layernorm.forward(&h);
                let h = self.mlp.forward(&pre.forward(&x), training);
                (&x + post.forward(&h), keys)
            }
        }
    }
}

/// Logits computed at once by the losses and by [`CausalLm::score_targets`] (2²⁵ floats, 128 MB): the
/// bound on their working set, whatever the batch, sequence length or vocabulary.
pub const LOGIT_CHUNK_ELEMENTS: i64 = 1 << 25;

/// What [`CausalLm::score_targets`] gives for the `m` scored positions, in flat `b·t` order (CPU).
#[derive(Debug)]
pub struct TargetScores {
    /// `[m]` int64: the flat position (`row · t + column`) of each score.
    pub index: Tensor,
    /// `[m]` float32 log-probability of the target.
    pub logprob: Tensor,
    /// `[m]` bool: the target is the most likely token.
    pub greedy: Tensor,
    /// `([m, k]` float32 log-probabilities, `[m, k]` int64 ids`)` of the `k` most likely tokens.
    pub top: Option<(Tensor, Tensor)>,
}

/// Keys and values of the tokens seen so far, per layer (`[b, kv_heads, seen, head_dim]` each), for
/// generation that feeds one new token at a time.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    seen: i64,
    /// Left padding of each row (prompts of different lengths in one batch); empty: none.
    pads: Vec<i64>,
}

impl KvCache {
    /// Tokens seen so far.
    pub fn len(&self) -> i64 {
        self.seen
    }

    /// True before any position was cached.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// An empty cache for a batch whose row `b` starts with `pads[b]` padding tokens (prompts of
    /// different lengths, padded on the left so that they end together): the padding is never
    /// attended to and each row's positions count from its first real token.
    pub fn left_padded(pads: Vec<i64>) -> Self {
        Self {
            pads,
            ..Self::default()
        }
    }
}

/// A decoder-only causal language model (Llama 3, Qwen2, Qwen3).
#[derive(Debug)]
pub struct CausalLm {
    config: ModelConfig,
    /// `[vocab, hidden]`.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `[vocab, hidden]`; `None` when tied to the input embeddings.
    lm_head: Option<Tensor>,
    /// `[head_dim / 2]` rotary inverse frequencies.
    inv_freq: Tensor,
    /// Those of the sliding-window layers where they differ (Gemma 3's local base).
    inv_freq_local: Option<Tensor>,
    /// LongRoPE's long-context frequencies (Phi-3).
    inv_freq_long: Option<LongFrequencies>,
    /// Factor of the cosines and sines (LongRoPE's `attention_factor`; 1 otherwise).
    rope_factor: f64,
    /// Trainable rows of the embedding tables (see [`CausalLm::attach_token_rows`]).
    token_rows: Option<TokenRows>,
    /// Whether LoRA adapters and trainable embedding rows take part (see
    /// [`CausalLm::set_adapters_enabled`]).
    adapters_enabled: Arc<AtomicBool>,
    training: Cell<bool>,
    /// Flash varlen attention for batches on CUDA (see [`CausalLm::set_flash_attention`]).
    #[cfg(feature = "cuda")]
    flash: Cell<bool>,
}

/// The embedding rows from `first` on, held apart from the frozen tables so that they train while the
/// rest stays fixed (PEFT's "trainable tokens" beside LoRA: after a vocabulary extension the new
/// tokens' rows learn, the old ones do not move).
#[derive(Debug)]
struct TokenRows {
    first: i64,
    /// `[vocab - first, hidden]` rows of the input embeddings (and of the tied output embeddings).
    input: Tensor,
    /// `[vocab - first, hidden]` rows of the untied output embeddings.
    output: Option<Tensor>,
}

/// PEFT's key of the trainable rows of a table (`base_model.model.<module>.token_adapter.trainable_tokens_delta`),
/// whose values are the rows themselves.
const TOKEN_ROWS_PARTS: [&str; 2] = ["token_adapter", "trainable_tokens_delta"];

/// LongRoPE's frequencies beyond the original context: used for a call whose highest position
/// reaches past `original` (transformers decides per forward pass the same way).
#[derive(Debug)]
struct LongFrequencies {
    inv_freq: Tensor,
    original: f64,
}

/// The rotary angles' cosines and sines `[b|1, 1, t, head_dim]` of the full layers and of the
/// sliding-window layers (the same where the model gives both kinds one RoPE).
struct Rotary {
    full: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

impl Rotary {
    fn of(&self, sliding: bool) -> (&Tensor, &Tensor) {
        let (cos, sin) = match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.full,
        };
        (cos, sin)
    }
}

/// `theta^(2i/d)` over the rotary dimensions `d`.
fn wavelength_bases(c: &ModelConfig, theta: f64, device: Device) -> Tensor {
    let d = c.rotary_dim();
    let exponents =
        Tensor::arange_start_step(0, d, 2, (Kind::Int64, device)).to_kind(Kind::Float) / d as f64;
    Tensor::pow_scalar(theta, &exponents)
}

/// LongRoPE's inverse frequencies `1 / (factor_i · theta^(2i/d))` for `factors`.
fn longrope_frequencies(c: &ModelConfig, theta: f64, factors: &[f64], device: Device) -> Tensor {
    let factors = Tensor::from_slice(factors)
        .to_kind(Kind::Float)
        .to_device(device);
    (factors * wavelength_bases(c, theta, device)).reciprocal()
}

/// Rotary inverse frequencies as HF computes them (`1 / theta^(2i/d)`), then scaled (LongRoPE: the
/// short factors; see [`LongFrequencies`]).
fn inverse_frequencies(c: &ModelConfig, rope: Rope, device: Device) -> Tensor {
    let inv_freq = wavelength_bases(c, rope.theta, device).reciprocal();
    match rope.scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::LongRope { short_factor, .. } => {
            longrope_frequencies(c, rope.theta, &short_factor, device)
        }
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
            let smooth = ((wavelen.reciprocal() * old) - low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen
                .ge(high_freq_wavelen)
                .logical_and(&wavelen.le(low_freq_wavelen));
            smoothed.where_self(&medium, &scaled)
        }
    }
}

impl CausalLm {
    /// Creates the variables below `root` (the VarStore root) with HF names and initialises them like
    /// HF (`normal(0, initializer_range)`, norms at one, biases at zero).
    pub fn new(root: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let model = root / "model";
        let std = c.initializer_range;
        let embed_tokens = (&model / "embed_tokens").var(
            "weight",
            &[c.vocab_size, c.hidden_size],
            drawn(Init::Randn {
                mean: 0.0,
                stdev: std,
            }),
        );
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::new(&model / "layers" / i, c, i))
            .collect();
        let norm = RmsNorm::new(&model / "norm", c.hidden_size, c);
        let device = root.device();
        let (full, local) = (c.rope_of(false)?, c.rope_of(true)?);
        let sliding_layers = (0..c.num_hidden_layers).any(|i| c.layer_is_sliding(i));
        let inv_freq_local = (sliding_layers && local != full)
            .then(|| inverse_frequencies(c, local.clone(), device));
        let (inv_freq_long, rope_factor) = match &full.scaling {
            RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            } => (
                Some(LongFrequencies {
                    inv_freq: longrope_frequencies(c, full.theta, long_factor, device),
                    original: *original_max_position_embeddings,
                }),
                *attention_factor,
            ),
            _ => (None, 1.0),
        };
        let lm_head = (!c.tie_word_embeddings).then(|| {
            (root / "lm_head").var(
                "weight",
                &[c.vocab_size, c.hidden_size],
                drawn(Init::Randn {
                    mean: 0.0,
                    stdev: std,
                }),
            )
        });
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq: inverse_frequencies(c, full, device),
            inv_freq_local,
            inv_freq_long,
            rope_factor,
            token_rows: None,
            adapters_enabled: Arc::new(AtomicBool::new(true)),
            training: Cell::new(false),
            #[cfg(feature = "cuda")]
            flash: Cell::new(false),
        })
    }

    /// The model's `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Dropout (in LoRA adapters) is active only in training mode.
    pub fn set_training(&self, training: bool) {
        self.training.set(training);
    }

    /// Whether dropout is active.
    pub fn is_training(&self) -> bool {
        self.training.get()
    }

    /// `[vocab, hidden]` input embeddings (a view of the variable).
    pub fn input_embeddings(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// `[vocab, hidden]` output embeddings, unless tied.
    pub fn output_embeddings(&self) -> Option<&Tensor> {
        self.lm_head.as_ref()
    }

    fn linears(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            out.extend(layer.self_attn.linears());
            out.extend(layer.mlp.linears());
        }
        out
    }

    /// Adds LoRA adapters to the targeted linear layers, their variables below `root` (the root of the
    /// adapter VarStore) under PEFT's names. Returns how many layers got one.
    ///
    /// Separate projection names on a model with fused ones (Phi-3) are read as the fused names (see
    /// [`LoraOptions::for_model`]).
    pub fn attach_lora(&mut self, root: &nn::Path, options: &LoraOptions) -> Result<usize> {
        options.validate()?;
        let options = &options.for_model(self.config.fused_projections())?;
        let mut count = 0;
        let enabled = self.adapters_enabled.clone();
        for linear in self.linears() {
            let module = linear.name.rsplit('.').next().unwrap_or("");
            if options.targets(module) {
                linear.attach(root, options, &enabled);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Turns the LoRA adapters and the trainable embedding rows off (`false`) or on again: off, the
    /// model computes what its frozen base computes, the reference of preference training with no
    /// second copy of the weights in memory (PEFT's `disable_adapter`).
    pub fn set_adapters_enabled(&self, enabled: bool) {
        self.adapters_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether adapters take part (see [`CausalLm::set_adapters_enabled`]).
    pub fn adapters_enabled(&self) -> bool {
        self.adapters_enabled.load(Ordering::Relaxed)
    }

    /// Whether any adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| {
            l.self_attn
                .linear_refs()
                .chain(l.mlp.linear_refs())
                .any(|x| x.lora.is_some())
        })
    }

    /// Folds every adapter into its base weight (`W += B·A·alpha/r`) and removes it; trainable
    /// embedding rows go back into their tables.
    pub fn merge_lora(&mut self) {
        for linear in self.linears() {
            linear.merge();
        }
        self.merge_token_rows();
    }

    /// Makes the embedding rows from `first` to the end of the vocabulary trainable apart from the
    /// (frozen) tables: their current values are copied into variables below `root` (the adapter
    /// VarStore's root) under PEFT's trainable-tokens names
    /// (`base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`, and
    /// `base_model.model.lm_head.…` when the output embeddings are untied). Returns how many rows train.
    pub fn attach_token_rows(&mut self, root: &nn::Path, first: i64) -> Result<i64> {
        let vocab = self.config.vocab_size;
        if first <= 0 || first >= vocab {
            return Err(Error::Setting {
                key: "freeze_embeddings_below".into(),
                reason: format!(
                    "must be between 1 and the vocabulary size {vocab} (exclusive) to train the rows above it, is {first}"
                ),
            });
        }
        let rows = vocab - first;
        let variable = |path: nn::Path, table: &Tensor| {
            let path = &path / TOKEN_ROWS_PARTS[0];
            let var = path.var(
                TOKEN_ROWS_PARTS[1],
                &[rows, self.config.hidden_size],
                Init::Const(0.0),
            );
            tch::no_grad(|| {
                var.shallow_clone().copy_(&table.narrow(0, first, rows));
            });
            var
        };
        let input = variable(
            root / "base_model" / "model" / "model" / "embed_tokens",
            &self.embed_tokens,
        );
        let output = self
            .lm_head
            .as_ref()
            .map(|head| variable(root / "base_model" / "model" / "lm_head", head));
        self.token_rows = Some(TokenRows {
            first,
            input,
            output,
        });
        Ok(rows)
    }

    /// The first trainable embedding row, when [`CausalLm::attach_token_rows`] made some trainable.
    pub fn token_rows_from(&self) -> Option<i64> {
        self.token_rows.as_ref().map(|rows| rows.first)
    }

    /// Copies the trainable embedding rows back into the tables and drops them.
    fn merge_token_rows(&mut self) {
        if let Some(rows) = self.token_rows.take() {
            let count = rows.input.size()[0];
            tch::no_grad(|| {
                self.embed_tokens
                    .narrow(0, rows.first, count)
                    .copy_(&rows.input.to_kind(self.embed_tokens.kind()));
                if let (Some(head), Some(output)) = (&self.lm_head, &rows.output) {
                    head.narrow(0, rows.first, count)
                        .copy_(&output.to_kind(head.kind()));
                }
            });
        }
    }

    /// `input_ids`, `positions: [b, t]` int64, `mask: [b, 1, t, t]` bool → logits `[b, t, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, positions: &Tensor, mask: &Tensor) -> Tensor {
        let local = self.windowed(mask, positions);
        let attend = Attend::Mask {
            full: mask,
            local: &local,
        };
        self.forward_with(input_ids, positions, &attend)
    }

    /// `mask` (`[b, 1, t, t]`, queries and keys at `positions: [b, t]`) limited to the model's sliding
    /// window (a key at most `window − 1` positions before its query), for the sliding layers; the
    /// mask itself where the model has no window.
    fn windowed(&self, mask: &Tensor, positions: &Tensor) -> Tensor {
        match self.config.attention_window() {
            None => mask.shallow_clone(),
            Some(window) => {
                let distance = positions.unsqueeze(2) - positions.unsqueeze(1);
                mask.logical_and(&distance.lt(window).unsqueeze(1))
            }
        }
    }

    /// Logits of a batch. With the `cuda` feature, on CUDA, when flash attention is on (see
    /// [`CausalLm::set_flash_attention`]), attention runs the variable-length flash kernel over the
    /// batch's segments; otherwise scaled-dot-product attention with the batch's mask.
    pub fn forward_batch(&self, batch: &Batch) -> Tensor {
        self.head(&self.hidden_batch(batch))
    }

    /// The final hidden states `[b, t, hidden]` of a batch (before the output head).
    fn hidden_batch(&self, batch: &Batch) -> Tensor {
        // (A sliding window is applied to the mask; the flash path takes whole segments with the
        // default softmax scale and no soft-capping.)
        #[cfg(feature = "cuda")]
        if self.flash.get()
            && batch.input_ids.device().is_cuda()
            && self.config.attention_window().is_none()
            && self.config.attention_scale().is_none()
            && self.config.attention_softcap().is_none()
        {
            let cu_seqlens =
                Tensor::from_slice(&batch.cu_seqlens).to_device(batch.input_ids.device());
            let attend = Attend::Varlen {
                cu_seqlens: &cu_seqlens,
                max_seqlen: batch.max_seqlen,
                mask: &batch.mask,
            };
            return self.decode(
                &batch.input_ids,
                &batch.positions,
                &attend,
                None,
                self.training.get(),
            );
        }
        let local = self.windowed(&batch.mask, &batch.positions);
        self.decode(
            &batch.input_ids,
            &batch.positions,
            &Attend::Mask {
                full: &batch.mask,
                local: &local,
            },
            None,
            self.training.get(),
        )
    }

    /// Logits `[…, vocab]` of final hidden states `[…, hidden]`.
    /// (Gemma 2's soft-capping included.)
    fn head(&self, hidden: &Tensor) -> Tensor {
        let logits = self.head_products(hidden);
        match self.config.final_softcap() {
            None => logits,
            Some(cap) => (logits / cap).tanh() * cap,
        }
    }

    fn head_products(&self, hidden: &Tensor) -> Tensor {
        let table = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        match self.token_rows.as_ref().filter(|_| self.adapters_enabled()) {
            None => hidden.linear::<Tensor>(table, None),
            Some(rows) => {
                // The frozen rows and the trainable ones as two products, so that no gradient of
                // the frozen table is formed.
                let trained = rows.output.as_ref().unwrap_or(&rows.input);
                Tensor::cat(
                    &[
                        hidden.linear::<Tensor>(&table.narrow(0, 0, rows.first), None),
                        hidden.linear::<Tensor>(trained, None),
                    ],
                    -1,
                )
            }
        }
    }

    /// Input embeddings of `input_ids` (from the trainable rows where they are held apart), times
    /// Gemma's √hidden rounded to the table's dtype as transformers rounds it.
    fn embed(&self, input_ids: &Tensor) -> Tensor {
        let x = self.embedding_rows(input_ids);
        match self.config.embedding_scale() {
            None => x,
            // A scalar, not a tensor moved to the device on every call.
            Some(scale) => {
                let scale = scale as f32;
                let rounded = match x.kind() {
                    Kind::BFloat16 => half::bf16::from_f32(scale).to_f32(),
                    Kind::Half => half::f16::from_f32(scale).to_f32(),
                    _ => scale,
                };
                x * f64::from(rounded)
            }
        }
    }

    fn embedding_rows(&self, input_ids: &Tensor) -> Tensor {
        match self.token_rows.as_ref().filter(|_| self.adapters_enabled()) {
            None => Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false),
            Some(rows) => {
                let old = input_ids.lt(rows.first);
                let frozen = Tensor::embedding(
                    &self.embed_tokens,
                    &input_ids.clamp_max(rows.first - 1),
                    -1,
                    false,
                    false,
                );
                let trained = Tensor::embedding(
                    &rows.input,
                    &(input_ids - rows.first).clamp_min(0),
                    -1,
                    false,
                    false,
                );
                frozen.where_self(&old.unsqueeze(-1), &trained)
            }
        }
    }

    /// Positions whose logits are computed at once by the losses and [`CausalLm::score_targets`]: the
    /// logits held at any time are at most [`LOGIT_CHUNK_ELEMENTS`] floats, whatever the batch size,
    /// length or vocabulary.
    fn chunk_positions(&self) -> i64 {
        (LOGIT_CHUNK_ELEMENTS / self.config.vocab_size.max(1)).max(1)
    }

    /// For `targets: [b, t]` int64 (a token id to score at each position, [`IGNORE_INDEX`] where none),
    /// the log-probability of each target under the next-token distribution at its position and the
    /// `top` most likely tokens there — computed only at the scored positions, in chunks, so that
    /// memory stays bounded by [`LOGIT_CHUNK_ELEMENTS`] logits. Call it under `no_grad`.
    pub fn score_targets(&self, batch: &Batch, targets: &Tensor, top: i64) -> TargetScores {
        let hidden = self.hidden_batch(batch);
        let width = hidden.size()[2];
        let flat_targets = targets.to_device(hidden.device()).view([-1]);
        let index = flat_targets.ne(IGNORE_INDEX).nonzero().view([-1]);
        let chosen = flat_targets.index_select(0, &index);
        let n = index.size()[0];
        // Within one chunk: the logits of every position at once (one product, as a whole forward pass
        // computes them), of which the scored rows are kept. Beyond it: the scored positions' hidden
        // states, whose logits are computed a chunk at a time.
        let whole = flat_targets.size()[0] <= self.chunk_positions();
        let (rows, chunk) = if whole {
            let logits = self.head(&hidden);
            let vocab = logits.size()[2];
            (logits.view([-1, vocab]).index_select(0, &index), n.max(1))
        } else {
            (
                hidden.view([-1, width]).index_select(0, &index),
                self.chunk_positions(),
            )
        };
        let (mut logprobs, mut greedy, mut top_values, mut top_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let part = rows.narrow(0, start, len);
            let logits = if whole { part } else { self.head(&part) }
                .to_kind(Kind::Float)
                .log_softmax(-1, Kind::Float);
            let wanted = chosen.narrow(0, start, len).unsqueeze(1);
            logprobs.push(
                logits
                    .gather(1, &wanted, false)
                    .squeeze_dim(1)
                    .to_device(Device::Cpu),
            );
            greedy.push(
                logits
                    .argmax(1, false)
                    .eq_tensor(&wanted.squeeze_dim(1))
                    .to_device(Device::Cpu),
            );
            if top > 0 {
                let (values, ids) = logits.topk(top, -1, true, true);
                top_values.push(values.to_device(Device::Cpu));
                top_ids.push(ids.to_device(Device::Cpu));
            }
            start += len;
        }
        let cat = |parts: Vec<Tensor>, empty: Tensor| {
            if parts.is_empty() {
                empty
            } else {
                Tensor::cat(&parts, 0)
            }
        };
        let cpu = Device::Cpu;
        TargetScores {
            index: index.to_device(cpu),
            logprob: cat(logprobs, Tensor::zeros([0], (Kind::Float, cpu))),
            greedy: cat(greedy, Tensor::zeros([0], (Kind::Bool, cpu))),
            top: (top > 0).then(|| {
                (
                    cat(top_values, Tensor::zeros([0, top], (Kind::Float, cpu))),
                    cat(top_ids, Tensor::zeros([0, top], (Kind::Int64, cpu))),
                )
            }),
        }
    }

    /// Uses the variable-length flash kernel (bf16) for batches on CUDA when the crate is built with
    /// the `cuda` feature (the trainer turns it on under bf16 autocast); a no-op otherwise.
    pub fn set_flash_attention(&self, on: bool) {
        #[cfg(feature = "cuda")]
        self.flash.set(on);
        #[cfg(not(feature = "cuda"))]
        let _ = on;
    }

    fn forward_with(&self, input_ids: &Tensor, positions: &Tensor, attend: &Attend) -> Tensor {
        self.head(&self.decode(input_ids, positions, attend, None, self.training.get()))
    }

    /// Logits `[b, t, vocab]` of `input_ids: [b, t]` that follow the tokens in `cache` (positions go on
    /// from `cache.len()`); the new keys and values are appended to the cache.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        self.head(&self.hidden_cached(input_ids, cache))
    }

    /// Logits `[b, vocab]` of the next token after `input_ids: [b, t]` (which follow the tokens in
    /// `cache`): [`CausalLm::forward_cached`] with the output head applied to the last position only,
    /// so a long prompt costs no `[t, vocab]` logits.
    pub fn next_token_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        self.head(&self.hidden_cached(input_ids, cache).select(1, -1))
    }

    /// The final hidden states `[b, t, hidden]` (after the last norm, before the output head) of
    /// `input_ids: [b, t]` read from position 0, without gradients' bookkeeping of training.
    pub fn final_hidden(&self, input_ids: &Tensor) -> Tensor {
        self.hidden_cached(input_ids, &mut KvCache::default())
    }

    fn hidden_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        let size = input_ids.size();
        let (b, t) = (size[0], size[1]);
        let device = input_ids.device();
        let past = cache.seen;
        let columns = Tensor::arange_start(past, past + t, (Kind::Int64, device));
        // Query i (at column past + i) sees keys 0..=past + i.
        let query = columns.unsqueeze(1);
        let key = Tensor::arange(past + t, (Kind::Int64, device)).unsqueeze(0);
        let causal = key.le_tensor(&query);
        let pads =
            (!cache.pads.is_empty()).then(|| Tensor::from_slice(&cache.pads).to_device(device));
        let positions = match &pads {
            None => columns.unsqueeze(0).expand([b, t], false),
            // Row r: positions count from its first real column.
            Some(pads) => (columns.unsqueeze(0) - pads.unsqueeze(1)).clamp_min(0),
        };
        let masked = |causal: &Tensor| match &pads {
            None => causal.unsqueeze(0).unsqueeze(0),
            Some(pads) => {
                // Padding keys are masked (a padding query sees itself, so that no row of the
                // softmax is empty).
                let real_key = key.ge_tensor(&pads.unsqueeze(1)).unsqueeze(1);
                let itself = key.eq_tensor(&query).unsqueeze(0);
                causal
                    .unsqueeze(0)
                    .logical_and(&real_key.logical_or(&itself))
                    .unsqueeze(1)
            }
        };
        let full = masked(&causal);
        // Columns advance with positions in every row (padding only shifts where they start).
        let local = match self.config.attention_window() {
            Some(window) => masked(&causal.logical_and(&key.gt_tensor(&(&query - window)))),
            None => full.shallow_clone(),
        };
        let hidden = self.decode(
            input_ids,
            &positions,
            &Attend::Mask {
                full: &full,
                local: &local,
            },
            Some(cache),
            false,
        );
        cache.seen = past + t;
        hidden
    }

    /// The one forward path: embeddings, rotary angles of `positions`, every block (extending `cache`
    /// when given) and the final norm; the output head is [`CausalLm::head`].
    fn decode(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        attend: &Attend,
        mut cache: Option<&mut KvCache>,
        training: bool,
    ) -> Tensor {
        let mut x = self.embed(input_ids);
        let kind = x.kind();
        let factor = self.rope_factor;
        let angles = |inv_freq: &Tensor| {
            let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
            let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
            if factor == 1.0 {
                (angles.cos().to_kind(kind), angles.sin().to_kind(kind))
            } else {
                (
                    (angles.cos() * factor).to_kind(kind),
                    (angles.sin() * factor).to_kind(kind),
                )
            }
        };
        let inv_freq = match &self.inv_freq_long {
            Some(long) if positions.numel() > 0 => {
                let longest = positions.max().int64_value(&[]) + 1;
                if longest as f64 > long.original {
                    &long.inv_freq
                } else {
                    &self.inv_freq
                }
            }
            _ => &self.inv_freq,
        };
        let rope = Rotary {
            full: angles(inv_freq),
            local: self.inv_freq_local.as_ref().map(angles),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let past = match cache.as_deref() {
                Some(cache) => Past::Cached(cache.layers.get(i)),
                None => Past::None,
            };
            let (y, keys) = layer.forward(&x, &rope, attend, past, training);
            x = y;
            if let (Some(cache), Some(keys)) = (cache.as_deref_mut(), keys) {
                if i < cache.layers.len() {
                    cache.layers[i] = keys;
                } else {
                    cache.layers.push(keys);
                }
            }
        }
        self.norm.forward(&x)
    }

    /// Next-token cross-entropy of every position (`Reduction::None`, flat `[b·t]`) or its sum, over
    /// chunks of positions: without gradients the logits held at once stay within
    /// [`LOGIT_CHUNK_ELEMENTS`] floats (with gradients each chunk's are kept for the backward pass, as
    /// one whole computation would keep them).
    fn cross_entropy(&self, batch: &Batch, reduction: tch::Reduction) -> Tensor {
        let hidden = self.hidden_batch(batch);
        let targets = batch.targets.view([-1]);
        let n = targets.size()[0];
        let chunk = self.chunk_positions();
        let loss = |logits: Tensor, targets: &Tensor| {
            logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
                targets,
                None,
                reduction,
                IGNORE_INDEX,
                0.0,
            )
        };
        if n <= chunk {
            // One chunk: the whole batch's logits at once.
            let logits = self.head(&hidden);
            let vocab = logits.size()[2];
            return loss(logits.view([-1, vocab]), &targets);
        }
        let width = hidden.size()[2];
        let hidden = hidden.view([-1, width]);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            parts.push(loss(
                self.head(&hidden.narrow(0, start, len)),
                &targets.narrow(0, start, len),
            ));
            start += len;
        }
        match reduction {
            tch::Reduction::Sum => Tensor::stack(&parts, 0).sum(Kind::Float),
            _ => Tensor::cat(&parts, 0),
        }
    }

    /// Per-position next-token cross-entropy `[b, t]` (zero where the target is ignored).
    pub fn token_losses(&self, batch: &Batch) -> Tensor {
        self.cross_entropy(batch, tch::Reduction::None)
            .view_as(&batch.targets)
    }

    /// Sum of next-token cross-entropy over the batch's counted targets (a scalar float tensor).
    pub fn loss_sum(&self, batch: &Batch) -> Tensor {
        self.cross_entropy(batch, tch::Reduction::Sum)
    }

    /// Attaches the LoRA adapter in a PEFT directory (`adapter_config.json`,
    /// `adapter_model.safetensors`); its variables live in the returned VarStore. Returns the store,
    /// the adapter's options and how many layers got one.
    pub fn load_adapter(
        &mut self,
        dir: &Path,
        device: Device,
    ) -> Result<(nn::VarStore, LoraOptions, usize)> {
        let (options, tokens) = LoraOptions::load_peft_with_tokens(dir)?;
        let adapters = nn::VarStore::new(device);
        let loading = Loading::start();
        let layers = self.attach_lora(&adapters.root(), &options)?;
        if let Some((first, count)) = tokens {
            if first + count != self.config.vocab_size {
                return Err(Error::File {
                    path: dir.join("adapter_config.json").display().to_string(),
                    reason: format!(
                        "trainable_token_indices {first}..{} do not end at the model's vocabulary size {}",
                        first + count,
                        self.config.vocab_size
                    ),
                });
            }
            self.attach_token_rows(&adapters.root(), first)?;
        }
        drop(loading);
        load_into(
            &adapters.variables(),
            &[dir.join("adapter_model.safetensors")],
            &|_| false,
        )?;
        Ok((adapters, options, layers))
    }

    /// Writes `config.json` and `model.safetensors` (the base VarStore `vs`, without adapters) into
    /// `dir` (created if needed): a directory that HF `transformers` loads.
    pub fn save(&self, vs: &nn::VarStore, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut config = self.config.clone();
        config
            .extra
            .insert("dtype".into(), dtype_name(self.embed_tokens.kind()).into());
        config.extra.remove("torch_dtype");
        config.save(dir)?;
        let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        save_safetensors(&dir.join("model.safetensors"), &tensors)
    }

    /// Loads an HF model directory (`config.json` + `model.safetensors` or sharded safetensors) in
    /// `kind` (float32 for training on CPU; the checkpoint's dtype is converted).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<(nn::VarStore, Self)> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = {
            let _loading = Loading::start();
            Self::new(&vs.root(), &config)?
        };
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let tied = config.tie_word_embeddings;
        load_into(&vs.variables(), &weight_files(dir)?, &|name| {
            tied && name == "lm_head.weight"
        })?;
        Ok((vs, model))
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
