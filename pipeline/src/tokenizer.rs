//! Tokenizer adaptation as a job: extend a base tokenizer with merges learned on domain text and write
//! the result as a tokenizer directory (`tokenizer.json`, `new_tokens.json`, the base's companion files).
//! `dapt tokenizer extend` and the adaptation recipe both write their extension here.
use std::path::{Path, PathBuf};

use dapt_packer::{EncoderChoice, NewToken, TokenizerFile};

use crate::error::{io_error, Error, Result};

/// Files of a model or tokenizer directory that travel with its tokenizer (chat template, special
/// tokens, generation defaults).
pub const TOKENIZER_COMPANIONS: [&str; 4] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// What [`extend_into`] wrote.
pub struct ExtendedTokenizer {
    /// The extended tokenizer (with the fast encoder where it gives HF's ids).
    pub tokenizer: TokenizerFile,
    /// The added tokens, in id order, with their decompositions into old ids.
    pub new_tokens: Vec<NewToken>,
    /// `DIR/tokenizer.json`.
    pub path: PathBuf,
}

/// File beside `new_tokens.json` with how often each token occurs in the extension text.
pub const TOKEN_COUNTS: &str = "token_counts.json";

/// How often each token id occurs in a text tokenised with one tokenizer (`token_counts.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenCounts {
    /// Texts counted.
    pub texts: usize,
    /// Tokens counted.
    pub tokens: u64,
    /// `[id, occurrences]` of every id that occurs, by id.
    pub counts: Vec<(u32, u64)>,
}

impl TokenCounts {
    /// Counts the tokens of `texts` under `tokenizer` (no special tokens).
    pub fn of(tokenizer: &TokenizerFile, texts: &[String]) -> Result<Self> {
        let ids: Vec<String> = (0..texts.len()).map(|i| format!("text {i}")).collect();
        let mut dense = vec![0u64; tokenizer.vocab_size()];
        let mut tokens = 0u64;
        for encoded in tokenizer.encode_all(&ids, texts)? {
            tokens += encoded.len() as u64;
            for id in encoded {
                if let Some(slot) = dense.get_mut(id as usize) {
                    *slot += 1;
                }
            }
        }
        let counts = dense
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(id, &n)| (id as u32, n))
            .collect();
        Ok(Self {
            texts: texts.len(),
            tokens,
            counts,
        })
    }

    /// Reads `token_counts.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// Occurrences by id, `len` long.
    pub fn dense(&self, len: usize) -> Vec<u64> {
        let mut dense = vec![0u64; len];
        for &(id, n) in &self.counts {
            if let Some(slot) = dense.get_mut(id as usize) {
                *slot = n;
            }
        }
        dense
    }
}

/// Extends `base` with up to `new_tokens` merges learned on `texts` (pairs seen fewer than
/// `min_frequency` times are not merged) and writes `dir/tokenizer.json`, `dir/new_tokens.json` (what
/// `dapt model resize-embeddings` reads), `dir/token_counts.json` (how often every token of the
/// extended tokenizer occurs in `texts`, for the `frequency` init) and the companions found beside the
/// base in `base_dir`. Old ids are unchanged.
pub fn extend_into(
    base: &TokenizerFile,
    base_dir: Option<&Path>,
    texts: &[String],
    new_tokens: usize,
    min_frequency: u64,
    dir: &Path,
) -> Result<ExtendedTokenizer> {
    let extension = dapt_packer::extend(base, texts, new_tokens, min_frequency)?;
    let tokenizer = extension.tokenizer.with_encoder(EncoderChoice::Auto)?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.json()).map_err(io_error(&path))?;
    let list = dir.join("new_tokens.json");
    let json = serde_json::to_vec_pretty(&extension.new_tokens).map_err(|source| Error::Json {
        what: list.display().to_string(),
        source,
    })?;
    std::fs::write(&list, json).map_err(io_error(&list))?;
    let counts = dir.join(TOKEN_COUNTS);
    let json =
        serde_json::to_vec(&TokenCounts::of(&tokenizer, texts)?).map_err(|source| Error::Json {
            what: counts.display().to_string(),
            source,
        })?;
    std::fs::write(&counts, json).map_err(io_error(&counts))?;
    if let Some(base_dir) = base_dir {
        copy_files(base_dir, dir, &TOKENIZER_COMPANIONS)?;
    }
    Ok(ExtendedTokenizer {
        tokenizer,
        new_tokens: extension.new_tokens,
        path,
    })
}

/// Copies the files named in `names` that exist in `from` into `to` (others are skipped).
pub fn copy_files(from: &Path, to: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let source = from.join(name);
        if source.is_file() {
            let target = to.join(name);
            std::fs::copy(&source, &target).map_err(io_error(&target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_directory_holds_tokenizer_list_and_companions() {
        let dir = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..200)
            .map(|i| format!("привет мир номер {i} здравствуйте снова привет"))
            .collect();
        let base = dapt_packer::train_bpe(
            &texts,
            &dapt_packer::BpeTrainOptions {
                vocab_size: 300,
                ..Default::default()
            },
        )
        .unwrap();
        let base_dir = dir.path().join("base");
        std::fs::create_dir_all(&base_dir).unwrap();
        std::fs::write(base_dir.join("tokenizer_config.json"), b"{\"x\": 1}").unwrap();
        let out = dir.path().join("extended");
        let extended = extend_into(&base, Some(&base_dir), &texts, 20, 2, &out).unwrap();
        assert!(!extended.new_tokens.is_empty() && extended.new_tokens.len() <= 20);
        assert_eq!(
            extended.tokenizer.vocab_size(),
            base.vocab_size() + extended.new_tokens.len()
        );
        let listed: Vec<NewToken> =
            serde_json::from_slice(&std::fs::read(out.join("new_tokens.json")).unwrap()).unwrap();
        assert_eq!(listed.len(), extended.new_tokens.len());
        assert_eq!(listed[0].id as usize, base.vocab_size());
        assert_eq!(
            std::fs::read(out.join("tokenizer_config.json")).unwrap(),
            b"{\"x\": 1}"
        );
        assert!(!out.join("generation_config.json").exists());
        let reloaded = TokenizerFile::load(&out.join("tokenizer.json")).unwrap();
        assert_eq!(reloaded.vocab_size(), extended.tokenizer.vocab_size());
        // How often each token of the extended tokenizer occurs in the texts.
        let counts = TokenCounts::load(&out.join(TOKEN_COUNTS)).unwrap();
        let ids: Vec<String> = (0..texts.len()).map(|i| i.to_string()).collect();
        let encoded = extended.tokenizer.encode_all(&ids, &texts).unwrap();
        let total: usize = encoded.iter().map(Vec::len).sum();
        assert_eq!((counts.texts, counts.tokens), (200, total as u64));
        assert_eq!(
            counts.counts.iter().map(|(_, n)| n).sum::<u64>(),
            total as u64
        );
        let dense = counts.dense(reloaded.vocab_size());
        let mut new_occurrences = 0;
        for token in &listed {
            let occurrences = encoded
                .iter()
                .flatten()
                .filter(|&&id| id == token.id)
                .count() as u64;
            assert_eq!(dense[token.id as usize], occurrences, "{}", token.text);
            new_occurrences += occurrences;
        }
        assert!(new_occurrences > 0);
    }
}
