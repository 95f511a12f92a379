//! dapt-trainer: training on LibTorch (tch). Its job is Llama-style decoder models whose variables carry
//! the HF checkpoint names (so `config.json` + `model.safetensors` load and save without renaming),
//! batches built from packed rows with positions that restart in every segment and a block-diagonal
//! causal mask (no token attends across documents), and a training loop (AdamW with decoupled weight
//! decay, warmup + cosine schedule, gradient clipping). Its input is packed Parquet rows from the
//! packer (via `dapt-core`); its output is a model directory and per-step metrics.

mod batch;
mod config;
mod error;
mod model;
mod train;

pub use batch::Batch;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use model::Llama;
/// The tch version the trainer is built with, for callers that handle devices and seeds.
pub use tch;
pub use train::{train, StepMetrics, TrainOptions, TrainSettings};
