//! Tokenizer training: a byte-level BPE or a Unigram on documents.
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer, TokenizerBuilder, TokenizerImpl, Trainer,
};

use crate::error::tokenizers_error;
use crate::{Error, Result, TokenizerFile};

type Pipeline<M> =
    TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// Trains `tokenizer`'s model on `texts` and returns the result as a tokenizer file.
fn train<M, T>(
    mut tokenizer: Pipeline<M>,
    trainer: &mut T,
    texts: &[String],
) -> Result<TokenizerFile>
where
    M: Model<Trainer = T> + Send + Sync + Into<ModelWrapper>,
    T: Trainer<Model = M> + Sync,
{
    tokenizer
        .train(trainer, texts.iter())
        .map_err(tokenizers_error("training"))?;
    let json = Tokenizer::from(tokenizer)
        .to_string(false)
        .map_err(tokenizers_error("training"))?;
    Ok(TokenizerFile::from_json(
        json.into_bytes(),
        "trained tokenizer",
    )?)
}

/// Options for training a byte-level BPE tokenizer (`[tokenizer.train]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpeTrainOptions {
    /// Vocabulary size including the 256 byte tokens and the special tokens.
    pub vocab_size: usize,
    /// Pairs seen fewer times than this are not merged.
    pub min_frequency: u64,
    /// Special tokens, added first (ids 0, 1, …).
    pub special_tokens: Vec<String>,
}

impl Default for BpeTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
            special_tokens: vec!["<|endoftext|>".into(), "<|pad|>".into()],
        }
    }
}

/// Trains a byte-level BPE tokenizer (GPT-2 style pre-tokenisation, no normaliser) on `texts`.
pub fn train_bpe(texts: &[String], options: &BpeTrainOptions) -> Result<TokenizerFile> {
    let minimum = 256 + options.special_tokens.len();
    if options.vocab_size < minimum {
        return Err(Error::Setting {
            key: "tokenizer.train.vocab_size".into(),
            reason: format!("must be at least {minimum} (256 bytes + special tokens)"),
        });
    }
    let special: Vec<AddedToken> = options
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut builder: TokenizerBuilder<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new();
    builder = builder
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
        .with_post_processor(Some(ByteLevel::new(false, true, true).into()))
        .with_decoder(Some(ByteLevel::new(false, true, true).into()));
    let tokenizer = builder.build().map_err(tokenizers_error("training"))?;
    train(tokenizer, &mut trainer, texts)
}

/// Options for training a Unigram tokenizer (SentencePiece-style, `▁` for spaces).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnigramTrainOptions {
    /// Vocabulary size, special tokens included.
    pub vocab_size: u32,
    /// Special tokens, added first; the first one is also the unknown token.
    pub special_tokens: Vec<String>,
}

impl Default for UnigramTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 8000,
            special_tokens: vec!["<unk>".into(), "<|endoftext|>".into(), "<|pad|>".into()],
        }
    }
}

/// Trains a Unigram tokenizer (NFKC, Metaspace pre-tokenisation) on `texts`.
pub fn train_unigram(texts: &[String], options: &UnigramTrainOptions) -> Result<TokenizerFile> {
    use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
    use tokenizers::normalizers::unicode::NFKC;
    use tokenizers::pre_tokenizers::metaspace::Metaspace;
    let special: Vec<AddedToken> = options
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer = UnigramTrainerBuilder::default()
        .vocab_size(options.vocab_size)
        .special_tokens(special)
        .unk_token(options.special_tokens.first().cloned())
        .show_progress(false)
        .build()
        .map_err(|e| tokenizers_error("training")(Box::new(e)))?;
    let builder: TokenizerBuilder<
        Unigram,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(Unigram::default())
        .with_normalizer(Some(NFKC.into()))
        .with_pre_tokenizer(Some(Metaspace::default().into()))
        .with_post_processor(None)
        .with_decoder(Some(Metaspace::default().into()));
    let tokenizer = builder.build().map_err(tokenizers_error("training"))?;
    train(tokenizer, &mut trainer, texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_real_text() {
        let texts: Vec<String> = include_str!("../../configs/demo/data/fortunes-ru.jsonl")
            .lines()
            .take(300)
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let options = BpeTrainOptions {
            vocab_size: 600,
            ..Default::default()
        };
        let file = train_bpe(&texts, &options).unwrap();
        assert_eq!(file.vocab_size(), 600);
        assert_eq!(file.id_of("<|endoftext|>").unwrap(), 0);
        assert_eq!(file.id_of("<|pad|>").unwrap(), 1);
        let ids: Vec<String> = (0..texts.len()).map(|i| i.to_string()).collect();
        let encoded = file.encode_all(&ids, &texts).unwrap();
        for (text, ids) in texts.iter().zip(&encoded) {
            assert_eq!(&file.decode(ids).unwrap(), text);
        }
        // Merges were learned: fewer tokens than bytes.
        let tokens: usize = encoded.iter().map(Vec::len).sum();
        let bytes: usize = texts.iter().map(String::len).sum();
        assert!(tokens * 2 < bytes, "{tokens} tokens for {bytes} bytes");
        // The JSON reloads as the same tokenizer.
        let reloaded = TokenizerFile::from_json(file.json().to_vec(), "reloaded").unwrap();
        assert_eq!(reloaded.encode_all(&ids, &texts).unwrap(), encoded);
        assert_eq!(reloaded.sha256(), file.sha256());

        let unigram = train_unigram(
            &texts,
            &UnigramTrainOptions {
                vocab_size: 800,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            unigram.vocab_size() <= 800 && unigram.vocab_size() > 400,
            "{}",
            unigram.vocab_size()
        );
        assert_eq!(unigram.id_of("<unk>").unwrap(), 0);
        let encoded = unigram.encode_all(&ids, &texts).unwrap();
        // Metaspace decoding gives the words back (whitespace runs may change).
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        for (text, ids) in texts.iter().zip(&encoded) {
            assert_eq!(words(&unigram.decode(ids).unwrap()), words(text));
        }
    }
}
