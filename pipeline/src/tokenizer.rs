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

/// Extends `base` with up to `new_tokens` merges learned on `texts` (pairs seen fewer than
/// `min_frequency` times are not merged) and writes `dir/tokenizer.json`, `dir/new_tokens.json` (what
/// `dapt model resize-embeddings` reads) and the companions found beside the base in `base_dir`. Old
/// ids are unchanged.
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
    }
}
