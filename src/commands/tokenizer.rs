//! `dapt tokenizer train|measure|extend`: tokenizer adaptation on text selected with SQL.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use dapt_packer::{BpeTrainOptions, TokenizerFile, UnigramTrainOptions};
use dapt_pipeline::measure::{MeasureOutcome, MeasureSettings};

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
    /// Run the query on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); the rows are the same.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
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
        /// This job of an array: INDEX/COUNT (e.g. 0/8), or `env` (Slurm, a Kubernetes Indexed Job,
        /// AWS Batch or DAPT_SHARD_INDEX/DAPT_SHARD_COUNT). The job measures the rows whose text hashes
        /// to it and publishes its totals under --work; the job that finds every part there prints
        /// (and writes WORK/measure.json) the whole table.
        #[arg(long, requires = "work")]
        shard: Option<String>,
        /// Work directory (URL) of a job array's parts.
        #[arg(long)]
        work: Option<String>,
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
    super::query_strings(
        texts.config.as_deref(),
        &texts.query,
        &columns,
        texts.cluster.as_deref(),
    )
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
            shard,
            work,
        } => {
            let mut named = Vec::new();
            for spec in &tokenizers {
                let Some((name, path)) = spec.split_once('=') else {
                    bail!("--tokenizer {spec:?} is not NAME=PATH");
                };
                named.push((name.to_string(), PathBuf::from(path)));
            }
            let mut sources = super::load_sources(input.config.as_deref())?;
            sources.cluster = input.cluster.clone();
            let shard = match &shard {
                Some(text) => dapt_ingest::Job::parse(text)?,
                None => dapt_ingest::Job::ALL,
            };
            let outcome = dapt_pipeline::measure::measure(&MeasureSettings {
                query: input.query.clone(),
                sources,
                group_by: group_by.clone(),
                tokenizers: named,
                encoder,
                shard,
                work: work.clone(),
            })?;
            let table = match outcome {
                MeasureOutcome::Complete(table) => table,
                MeasureOutcome::Waiting { missing } => {
                    println!(
                        "job {}/{} done; the table comes with the last of jobs {missing:?}",
                        shard.index, shard.count
                    );
                    return Ok(());
                }
            };
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
            for (group, sums) in &table {
                for (name, c) in sums {
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
