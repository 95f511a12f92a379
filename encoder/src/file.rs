//! A tokenizer file with its encoding backend.
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

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
///
/// With the fast backend the HF `Tokenizer` is parsed only when something needs it (decoding, a
/// document the fast backend gives up on): building it takes ≈0.5 s for a 150k vocabulary, more
/// than `dapt pack` spends encoding 20 MB.
pub struct TokenizerFile {
    tokenizer: OnceLock<Arc<Tokenizer>>,
    fast: Option<FastEncoder>,
    /// Vocabulary size including added tokens (from whichever backend was built first).
    vocab_size: usize,
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
        let json = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_with(json, &path.display().to_string(), choice)
    }

    /// Parses the bytes of a `tokenizer.json`; `what` names it in errors (HF backend).
    pub fn from_json(json: Vec<u8>, what: &str) -> Result<Self> {
        let tokenizer = parse_hf(&json, what)?;
        let file = Self::unparsed(json, what, None, tokenizer.get_vocab_size(true));
        file.tokenizer.get_or_init(|| Arc::new(tokenizer));
        Ok(file)
    }

    /// As [`TokenizerFile::from_json`] with the chosen backend.
    pub fn from_json_with(json: Vec<u8>, what: &str, choice: EncoderChoice) -> Result<Self> {
        if choice == EncoderChoice::Hf {
            return Self::from_json(json, what);
        }
        match fast_encoder(&json, what, choice)? {
            Some(fast) => {
                let vocab_size = fast.vocab_size();
                Ok(Self::unparsed(json, what, Some(fast), vocab_size))
            }
            None => Self::from_json(json, what),
        }
    }

    fn unparsed(json: Vec<u8>, what: &str, fast: Option<FastEncoder>, vocab_size: usize) -> Self {
        Self {
            tokenizer: OnceLock::new(),
            fast,
            vocab_size,
            sha256: dapt_core::hash::sha256_hex(&json),
            json,
            what: what.to_string(),
        }
    }

    /// Chooses the encoding backend. Both give the same ids; `auto` takes the fast one where it
    /// reproduces this tokenizer and logs why not otherwise; `fast` fails there.
    pub fn with_encoder(mut self, choice: EncoderChoice) -> Result<Self> {
        self.fast = match choice {
            EncoderChoice::Hf => None,
            EncoderChoice::Auto | EncoderChoice::Fast => {
                fast_encoder(&self.json, &self.what, choice)?
            }
        };
        if self.fast.is_none() {
            self.hf()?;
        }
        Ok(self)
    }

    /// The HF tokenizer, parsed on first use.
    fn hf(&self) -> Result<&Arc<Tokenizer>> {
        if let Some(tokenizer) = self.tokenizer.get() {
            return Ok(tokenizer);
        }
        let tokenizer = Arc::new(parse_hf(&self.json, &self.what)?);
        Ok(self.tokenizer.get_or_init(|| tokenizer))
    }

    /// The backend in use: `"fast"` or `"hf"`.
    pub fn encoder_name(&self) -> &'static str {
        if self.fast.is_some() {
            "fast"
        } else {
            "hf"
        }
    }

    /// The HF tokenizer behind this file (decoding, vocabulary look-ups), parsed on first use.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.hf().map(AsRef::as_ref)
    }

    /// Whether the HF tokenizer has been parsed (always with the HF backend; with the fast one only
    /// once something needed it).
    pub fn hf_parsed(&self) -> bool {
        self.tokenizer.get().is_some()
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
        self.vocab_size
    }

    /// The id of a token that must exist (EOS, pad).
    pub fn id_of(&self, token: &str) -> Result<u32> {
        let id = match &self.fast {
            Some(fast) => fast.token_to_id(token),
            None => self.hf()?.token_to_id(token),
        };
        id.ok_or_else(|| Error::Tokenizer {
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
        self.hf()?
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
        self.hf()?
            .decode(ids, false)
            .map_err(|source| Error::Parse {
                what: format!("{}: cannot decode", self.what),
                source,
            })
    }
}

fn parse_hf(json: &[u8], what: &str) -> Result<Tokenizer> {
    Tokenizer::from_bytes(json).map_err(|source| Error::Parse {
        what: what.to_string(),
        source,
    })
}

/// The fast backend for `choice` (`auto` or `fast`): `None` where `auto` falls back to HF (reason
/// logged), an error where `fast` cannot be had.
fn fast_encoder(json: &[u8], what: &str, choice: EncoderChoice) -> Result<Option<FastEncoder>> {
    Ok(match FastEncoder::from_json(json) {
        Ok(fast) => {
            tracing::debug!("{what}: fast encoder");
            Some(fast)
        }
        Err(reason) if choice == EncoderChoice::Auto => {
            tracing::info!("{what}: HF encoder ({reason})");
            None
        }
        Err(reason) => {
            return Err(Error::Tokenizer {
                what: what.to_string(),
                reason: format!("the fast encoder cannot reproduce it: {reason}"),
            })
        }
    })
}
