//! `dapt tokenizer train|measure|extend`: tokenizer adaptation on text selected with SQL.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use dapt_packer::{BpeTrainOptions, TokenizerFile, UnigramTrainOptions};

/// Arguments of `dapt tokenizer`.
#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args)]
struct Texts {
    /// Query returning the texts (a `text` column), e.g. "SELECT text FROM docs WHERE lang_id(text) = 'ru'".
    #[arg(short = 'e', long = "execute")]
    query: String,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    /// Byte-level BPE (GPT-2 / Llama 3 / Qwen style).
    Bpe,
    /// Unigram (SentencePiece style).
    Unigram,
}

#[derive(Subcommand)]
enum Mode {
    /// Train a new tokenizer; writes an HF tokenizer.json.
    Train {
        #[command(flatten)]
        texts: Texts,
        /// Tokenizer model to train.
        #[arg(long, value_enum, default_value = "bpe")]
        model: Model,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 32000)]
        vocab_size: usize,
        /// Special tokens (repeatable); default <|endoftext|>, <|pad|> (Unigram: <unk> first).
        #[arg(long = "special-token")]
        special_tokens: Vec<String>,
        /// BPE: pairs seen fewer times are not merged.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Output tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compression of tokenizers on texts, per group: chars/token, bytes/token, tokens/word, fallback.
    Measure {
        #[command(flatten)]
        texts: Texts,
        /// NAME=PATH of a tokenizer.json (repeatable).
        #[arg(long = "tokenizer", required = true)]
        tokenizers: Vec<String>,
        /// Column of the query to group by (language, component, source).
        #[arg(long)]
        group_by: Option<String>,
        /// Encoder: auto (the fast backend where it gives HF's ids exactly, else HF), hf, or fast.
        #[arg(long, default_value = "auto")]
        encoder: dapt_packer::EncoderChoice,
    },
    /// Append tokens learned on domain text to an existing BPE tokenizer (old ids unchanged).
    Extend {
        #[command(flatten)]
        texts: Texts,
        /// The tokenizer.json to extend.
        #[arg(long)]
        base: PathBuf,
        /// Tokens to add.
        #[arg(long)]
        new_tokens: usize,
        /// Pairs seen fewer times are not merged.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Directory for tokenizer.json, new_tokens.json (and the base's tokenizer_config.json).
        #[arg(long)]
        out: PathBuf,
    },
}

fn texts(texts: &Texts, extra: Option<&str>) -> anyhow::Result<Vec<Vec<String>>> {
    let mut columns = vec!["text"];
    columns.extend(extra);
    super::query_strings(texts.config.as_deref(), &texts.query, &columns)
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Train {
            texts: input,
            model,
            vocab_size,
            special_tokens,
            min_frequency,
            out,
        } => {
            let texts: Vec<String> = texts(&input, None)?
                .into_iter()
                .map(|mut r| r.remove(0))
                .collect();
            let tokenizer = match model {
                Model::Bpe => {
                    let mut options = BpeTrainOptions {
                        vocab_size,
                        min_frequency,
                        ..Default::default()
                    };
                    if !special_tokens.is_empty() {
                        options.special_tokens = special_tokens;
                    }
                    dapt_packer::train_bpe(&texts, &options)?
                }
                Model::Unigram => {
                    let mut options = UnigramTrainOptions {
                        vocab_size: vocab_size as u32,
                        ..Default::default()
                    };
                    if !special_tokens.is_empty() {
                        options.special_tokens = special_tokens;
                    }
                    dapt_packer::train_unigram(&texts, &options)?
                }
            };
            std::fs::write(&out, tokenizer.json())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "trained a {}-token tokenizer on {} texts: {}",
                tokenizer.vocab_size(),
                texts.len(),
                out.display()
            );
        }
        Mode::Measure {
            texts: input,
            tokenizers,
            group_by,
            encoder,
        } => {
            let mut loaded = Vec::new();
            for spec in &tokenizers {
                let Some((name, path)) = spec.split_once('=') else {
                    bail!("--tokenizer {spec:?} is not NAME=PATH");
                };
                loaded.push((
                    name.to_string(),
                    TokenizerFile::load_with(std::path::Path::new(path), encoder)?,
                ));
            }
            let rows = texts(&input, group_by.as_deref())?;
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for mut row in rows {
                let group = if row.len() > 1 {
                    row.remove(1)
                } else {
                    "all".to_string()
                };
                groups.entry(group).or_default().push(row.remove(0));
            }
            println!(
                "{:<20} {:<16} {:>9} {:>11} {:>11} {:>11} {:>10}",
                group_by.as_deref().unwrap_or("group"),
                "tokenizer",
                "documents",
                "chars/tok",
                "bytes/tok",
                "tok/word",
                "fallback"
            );
            for (group, texts) in &groups {
                for (name, tokenizer) in &loaded {
                    let c = dapt_packer::measure(tokenizer, texts)?;
                    println!(
                        "{group:<20} {name:<16} {:>9} {:>11.3} {:>11.3} {:>11.3} {:>9.2}%",
                        c.documents,
                        c.chars_per_token,
                        c.bytes_per_token,
                        c.tokens_per_word,
                        100.0 * c.fallback_share
                    );
                }
            }
        }
        Mode::Extend {
            texts: input,
            base,
            new_tokens,
            min_frequency,
            out,
        } => {
            let texts: Vec<String> = texts(&input, None)?
                .into_iter()
                .map(|mut r| r.remove(0))
                .collect();
            let base_tokenizer = TokenizerFile::load_with(&base, dapt_packer::EncoderChoice::Auto)?;
            let extension = dapt_pipeline::tokenizer::extend_into(
                &base_tokenizer,
                base.parent(),
                &texts,
                new_tokens,
                min_frequency,
                &out,
            )?;
            let (before, after) = (
                dapt_packer::measure(&base_tokenizer, &texts)?,
                dapt_packer::measure(&extension.tokenizer, &texts)?,
            );
            println!(
                "added {} tokens (ids {}..); on the input texts tokens/word {:.3} -> {:.3}; wrote {}",
                extension.new_tokens.len(),
                extension.new_tokens.first().map_or(0, |t| t.id),
                before.tokens_per_word,
                after.tokens_per_word,
                out.display()
            );
        }
    }
    Ok(())
}
