//! A tokenizer file with its encoding backend.
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Error, FastEncoder, Result};

/// Which backend encodes text (`--encoder`, `encoder = "…"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    /// The fast backend where it reproduces the tokenizer exactly, HF otherwise (reason logged).
    #[default]
    Auto,
    /// HF `tokenizers`, for any tokenizer.
    Hf,
    /// The fast backend; an error for a tokenizer it does not reproduce.
    Fast,
}

impl FromStr for EncoderChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "hf" => Ok(Self::Hf),
            "fast" => Ok(Self::Fast),
            other => Err(format!("unknown encoder {other:?} (auto, hf or fast)")),
        }
    }
}

impl fmt::Display for EncoderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Hf => "hf",
            Self::Fast => "fast",
        })
    }
}

/// A tokenizer with the bytes of its `tokenizer.json` (so that outputs can record its sha256) and
/// the backend that encodes with it (HF unless [`TokenizerFile::with_encoder`] chose otherwise).
pub struct TokenizerFile {
    tokenizer: Arc<Tokenizer>,
    fast: Option<FastEncoder>,
    json: Vec<u8>,
    sha256: String,
    what: String,
}

impl fmt::Debug for TokenizerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizerFile")
            .field("what", &self.what)
            .field("sha256", &self.sha256)
            .field("encoder", &self.encoder_name())
            .finish()
    }
}

impl TokenizerFile {
    /// Loads an HF `tokenizer.json` (HF backend).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let json = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(json, &path.display().to_string())
    }

    /// Loads an HF `tokenizer.json` with the chosen backend.
    pub fn load_with(path: &std::path::Path, choice: EncoderChoice) -> Result<Self> {
        Self::load(path)?.with_encoder(choice)
    }

    /// Parses the bytes of a `tokenizer.json`; `what` names it in errors (HF backend).
    pub fn from_json(json: Vec<u8>, what: &str) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(&json).map_err(|source| Error::Parse {
            what: what.to_string(),
            source,
        })?;
        Ok(Self {
            tokenizer: Arc::new(tokenizer),
            fast: None,
            sha256: dapt_core::hash::sha256_hex(&json),
            json,
            what: what.to_string(),
        })
    }

    /// Chooses the encoding backend. Both give the same ids; `auto` takes the fast one where it
    /// reproduces this tokenizer and logs why not otherwise; `fast` fails there.
    pub fn with_encoder(mut self, choice: EncoderChoice) -> Result<Self> {
        self.fast = match choice {
            EncoderChoice::Hf => None,
            EncoderChoice::Auto | EncoderChoice::Fast => self.fast_encoder(choice)?,
        };
        Ok(self)
    }

    fn fast_encoder(&self, choice: EncoderChoice) -> Result<Option<FastEncoder>> {
        Ok(match FastEncoder::new(&self.json, self.tokenizer.clone()) {
            Ok(fast) => {
                tracing::debug!("{}: fast encoder", self.what);
                Some(fast)
            }
            Err(reason) if choice == EncoderChoice::Auto => {
                tracing::info!("{}: HF encoder ({reason})", self.what);
                None
            }
            Err(reason) => {
                return Err(Error::Tokenizer {
                    what: self.what.clone(),
                    reason: format!("the fast encoder cannot reproduce it: {reason}"),
                })
            }
        })
    }

    /// The backend in use: `"fast"` or `"hf"`.
    pub fn encoder_name(&self) -> &'static str {
        if self.fast.is_some() {
            "fast"
        } else {
            "hf"
        }
    }

    /// The HF tokenizer behind this file (decoding, vocabulary look-ups).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The `tokenizer.json` bytes.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// sha256 of the `tokenizer.json` bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The name used in errors (usually the path).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token that must exist (EOS, pad).
    pub fn id_of(&self, token: &str) -> Result<u32> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::Tokenizer {
                what: self.what.clone(),
                reason: format!("has no token {token:?}"),
            })
    }

    /// Token ids of one text (no special tokens added; special tokens in the text are matched).
    /// `id` names the document in errors.
    pub fn encode(&self, id: &str, text: &str) -> Result<Vec<u32>> {
        if let Some(fast) = &self.fast {
            match fast.encode(text) {
                Ok(ids) => return Ok(ids),
                Err(reason) => tracing::warn!("document {id:?}: fast encoder: {reason}; using HF"),
            }
        }
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|source| Error::Encode {
                id: id.to_string(),
                source,
            })
    }

    /// Token ids of each text, in parallel over texts. `ids[i]` names document `i` in errors.
    pub fn encode_all(&self, ids: &[String], texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .zip(ids.par_iter())
            .map(|(text, id)| self.encode(id, text))
            .collect()
    }

    /// Decodes ids back to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|source| Error::Parse {
                what: format!("{}: cannot decode", self.what),
                source,
            })
    }
}
