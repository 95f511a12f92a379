//! dapt-trainer: training on LibTorch (tch). Its job is decoder models of the Llama 3 / Mistral / Qwen2 /
//! Qwen3 families whose variables carry the HF checkpoint names (so HF model directories load and save without
//! renaming), batches built from packed rows with positions that restart in every segment and a
//! block-diagonal causal mask (no token attends across documents), LoRA adapters in PEFT's layout,
//! embedding resizing for extended vocabularies, and a training loop (AdamW with decoupled weight decay,
//! warmup + decay, clipping, accumulation, checkpoints with exact resume). Its input is packed Parquet
//! rows from the packer (via `dapt-core`) and HF model directories; its output is model and adapter
//! directories, checkpoints and per-step metrics.
#![warn(missing_docs)]

pub mod autocast;
mod batch;
mod config;
mod data;
pub mod dist;
mod error;
#[cfg(feature = "cuda")]
mod flash;
pub mod gguf;
mod lora;
mod model;
mod optim;
mod preference;
mod resize;
mod stages;
mod train;
pub mod weights;

pub use batch::{Batch, Objective, IGNORE_INDEX};
pub use config::{ModelConfig, ProxyDefaults, ProxyModelOptions, Rope, RopeScaling, TokenIds};
pub use data::{DataCursor, InMemoryRows, PackedShards, RowSource};
pub use dist::{Dist, Launch, ShardLayout};
pub use error::{Error, Result};
#[cfg(feature = "cuda")]
pub use flash::varlen_attention as flash_varlen_attention;
pub use gguf::{GgufModel, WeightType, WeightsReport};
pub use lora::{save_adapter, LoraInit, LoraOptions, TrainableTokens, ALL_LINEAR};
pub use model::{CausalLm, KvCache, TargetScores, LOGIT_CHUNK_ELEMENTS};
pub use optim::{AdamW, Moments};
pub use preference::{
    check_pair_rows, pair_terms, preference_eval, row_key, segment_logps, PairSums, PairTerms,
    PreferenceLoss, PreferenceMetrics, ReferenceLogps,
};
pub use resize::{
    mean_final_hidden, resize_embeddings, FrequencyStatistics, NewTokenSpec, ResizeInit,
    ResizeReport,
};
pub use stages::{
    copy_companions, read_all_rows, run_stages, DeviceChoice, Method, StageOptions, StageReport,
    TrainConfig, TrainConfigOptions, Trainable,
};
/// The tch version the trainer is built with, for callers that handle devices and seeds.
pub use tch;
pub use train::{
    check_rows, describe_precision, mean_loss, CheckpointState, Schedule, StepMetrics,
    TrainOptions, TrainOutcome, TrainSettings, Trainer,
};
