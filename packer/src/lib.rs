//! dapt-packer: from text to training rows. Its job is tokenizers (load an HF `tokenizer.json`, train a
//! byte-level BPE, measure compression, extend a vocabulary with domain tokens) and packing: documents are tokenised in parallel, ended with EOS, concatenated and
//! cut into fixed-length rows that record each document's span as a segment, so that attention never
//! crosses documents. Its input is documents (id + text); its output is Parquet shards in the Packed
//! schema of `dapt-core`, with the tokenizer's sha256, `seq_len`, seed and config hash as metadata.
#![warn(missing_docs)]

mod cpt;
mod error;
mod extend;
mod gguf;
mod measure;
mod order;
mod sft;
mod token_cache;
mod tokenizer;
mod write;

pub use cpt::{pack_cpt, split_heldout, CptPacker, PackOptions, PackSettings, PackStats};
pub use dapt_encoder::{EncoderChoice, FastEncoder, TokenizerFile};
pub use error::{Error, Result};
pub use extend::{extend, Extension, NewToken};
pub use gguf::{GgufVocabulary, SUPPORTED_PRE_TOKENIZERS};
pub use measure::{measure, Compression, Measurer};
pub use order::{DocumentSorter, PACK_ORDER};
pub use sft::{pack_pairs, pack_sft, ChatTemplate, Message, Overlong, SftStats, Tokenized, CHATML};
pub use token_cache::{read_token_cache, token_cache_schema, write_token_cache, TokenisedDocument};
pub use tokenizer::{train_bpe, train_unigram, BpeTrainOptions, UnigramTrainOptions};
pub use write::{
    pack_documents, pack_stream, read_packed, write_packed, PackDocument, PackProgress,
};
