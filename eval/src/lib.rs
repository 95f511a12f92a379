//! dapt-eval: did the adaptation help, and what did it break? Its job is to score trained models:
//! here, perplexity on held-out packed rows (mean next-token loss over the same targets the trainer
//! uses, and its exponent). Its input is a model from `dapt-trainer` and packed rows from `dapt-core`;
//! its output is a serialisable result that reports compare across checkpoints.

mod error;
mod perplexity;

pub use error::{Error, Result};
pub use perplexity::{perplexity, Perplexity};
