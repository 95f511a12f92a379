//! dapt-encoder: text to token ids, the step that dominates every data stage. Its input is an HF
//! `tokenizer.json` and text; its output is the ids HF `tokenizers` gives (`add_special_tokens =
//! false`), from one of two backends behind [`TokenizerFile`]: HF itself (any model type, the
//! reference) or [`FastEncoder`] (byte-level BPE, same ids, several times faster). `auto` picks the
//! fast backend exactly when it reproduces the tokenizer and logs why not otherwise. It sits under
//! `sql` (the `token_count` function), `mixer` (token budgets) and `packer` (tokenise + pack).
#![warn(missing_docs)]

mod bpe;
mod error;
mod fast;
mod file;
mod scan;

pub use error::{Error, Result};
pub use fast::{byte_level_alphabet, byte_level_inverse, FastEncoder};
pub use file::{EncoderChoice, TokenizerFile};
