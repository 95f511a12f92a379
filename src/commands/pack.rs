//! `dapt pack`: tokenise documents and pack them into fixed-length training rows (Parquet).
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dapt_packer::{Overlong, PackOptions, PackSettings};
use dapt_pipeline::pack::{PackInput, PackJob, PackMode, PackOutcome};

/// Arguments of `dapt pack`.
#[derive(Args)]
pub struct PackArgs {
    /// Query returning the documents (`id` and `text` columns), e.g. "SELECT id, text FROM mix".
    #[arg(
        short = 'e',
        long = "execute",
        conflicts_with = "input",
        required_unless_present = "input"
    )]
    query: Option<String>,
    /// Instead of a query: a Document Parquet directory (a `dapt ingest` output), packed whole.
    #[arg(long)]
    input: Option<String>,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the -e query on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); the rows, and so the output, are the same.
    #[arg(long, value_name = "df://HOST:PORT", requires = "query")]
    cluster: Option<String>,
    /// The HF tokenizer.json to tokenise with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Encoder: auto (the fast backend where it gives HF's ids exactly, else HF), hf, or fast.
    #[arg(long, default_value = "auto")]
    encoder: dapt_packer::EncoderChoice,
    /// Tokens per row.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Token appended after each document.
    #[arg(long, default_value = "<|endoftext|>")]
    eos_token: String,
    /// Token filling the end of the last row (default: the EOS token).
    #[arg(long)]
    pad_token: Option<String>,
    /// Rows per Parquet shard.
    #[arg(long, default_value_t = 8192)]
    rows_per_shard: usize,
    /// Seed for the document order (the packing order of `dapt_core::order`, shared with `dapt run`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (URL) for the packed shards and `_manifest.json`.
    #[arg(long)]
    out: String,
    /// Replace the output already in --out (of other inputs or settings, finished or not) instead of
    /// refusing or reusing it: its manifest goes first, then its shards, so readers never see a mix.
    #[arg(long)]
    overwrite: bool,
    /// As a job array: pack only job INDEX of COUNT (e.g. 3/8) — the documents (CPT), examples
    /// (SFT) or pairs (preference) whose id hashes to INDEX, or with --input the Document files
    /// whose name does — into this job's shards (`part-I-of-N-*.parquet`) and manifest; the last job
    /// to finish merges the manifests into `_manifest.json`. `env` takes the index from Slurm, a Kubernetes
    /// Indexed Job, AWS Batch or DAPT_SHARD_INDEX/DAPT_SHARD_COUNT. A rerun of a job redoes only its
    /// unpublished shards.
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<String>,
    /// cpt: documents, EOS-separated, split across rows; sft: chats (a `messages` column of JSON
    /// [{role, content}], or `prompt` and `response` columns), packed whole, loss on assistant turns;
    /// preference: pairs for `objective = "dpo"`/`"simpo"` (`prompt`, `chosen`, `rejected` columns, or
    /// `chosen` and `rejected` as JSON message lists that differ only in the last, assistant, turn),
    /// each pair as two adjacent segments of one row, loss on the final responses.
    #[arg(long, value_enum, default_value = "cpt")]
    mode: Mode,
    /// SFT and preference: a tokenizer_config.json with the chat template, or `chatml`; default:
    /// the tokenizer_config.json beside --tokenizer.
    #[arg(long)]
    chat_template: Option<String>,
    /// SFT and preference: examples (pairs) considered together by best-fit-decreasing packing.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// SFT: what to do with an example longer than a row (a preference pair longer than a row is
    /// always dropped).
    #[arg(long, value_enum, default_value = "drop")]
    overlong: OverlongArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Cpt,
    Sft,
    Preference,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OverlongArg {
    Drop,
    Truncate,
}

pub fn run(args: PackArgs) -> anyhow::Result<()> {
    let settings = PackSettings::try_from(PackOptions {
        seq_len: args.seq_len,
        heldout_fraction: 0.0,
        rows_per_shard: args.rows_per_shard,
        pad_token: args
            .pad_token
            .clone()
            .unwrap_or_else(|| args.eos_token.clone()),
        eos_token: args.eos_token.clone(),
    })?;
    let input = match (&args.query, &args.input) {
        (Some(query), _) => PackInput::Query {
            query: query.clone(),
            sources: args.config.clone(),
            cluster: args.cluster.clone(),
        },
        (None, Some(url)) => PackInput::Documents { url: url.clone() },
        (None, None) => anyhow::bail!("give -e SQL or --input DIR"),
    };
    let mode = match args.mode {
        Mode::Cpt => PackMode::Cpt,
        Mode::Sft => PackMode::Sft {
            chat_template: args.chat_template.clone(),
            window: args.window,
            overlong: match args.overlong {
                OverlongArg::Drop => Overlong::Drop,
                OverlongArg::Truncate => Overlong::Truncate,
            },
        },
        Mode::Preference => {
            if matches!(args.overlong, OverlongArg::Truncate) {
                anyhow::bail!(
                    "--overlong truncate does not apply to --mode preference: a pair longer than a row is dropped (raise --seq-len to keep it)"
                );
            }
            PackMode::Preference {
                chat_template: args.chat_template.clone(),
                window: args.window,
            }
        }
    };
    let job = PackJob {
        input,
        tokenizer: args.tokenizer.clone(),
        encoder: args.encoder,
        settings,
        seed: args.seed,
        out: args.out.clone(),
        overwrite: args.overwrite,
        mode,
        shard: match &args.shard {
            Some(text) => dapt_ingest::Job::parse(text)?,
            None => dapt_ingest::Job::ALL,
        },
    };
    let bar = dapt_pipeline::progress::spinner("    pack {spinner} {msg} {elapsed}");
    let started = std::time::Instant::now();
    let progress_bar = bar.clone();
    let progress: dapt_packer::PackProgress = Arc::new(move |documents, bytes| {
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        progress_bar.set_message(format!(
            "{documents} documents, {:.1} MB, {:.2} MB/s",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / seconds
        ));
        progress_bar.tick();
    });
    let outcome = job.run(progress).context("packing failed")?;
    bar.finish_and_clear();
    match outcome {
        PackOutcome::Cpt {
            stats,
            encoder,
            merged,
        } => println!(
            "packed {} documents, {} tokens into {} rows of {} ({:.2}% filled) with the {} encoder in {:.1} s; peak RSS {} MB; wrote {}{}",
            stats.documents,
            stats.tokens,
            stats.rows,
            args.seq_len,
            100.0 * stats.fill,
            encoder,
            started.elapsed().as_secs_f64(),
            dapt_pipeline::peak_rss_mb().map_or("?".into(), |m| m.to_string()),
            args.out,
            match (&args.shard, merged) {
                (None, _) => String::new(),
                (Some(_), true) => " (this job's shards; every job done: _manifest.json merged)".into(),
                (Some(_), false) => " (this job's shards; other jobs not done yet)".into(),
            }
        ),
        PackOutcome::Sft(stats) => println!(
            "packed {} examples ({} target tokens of {}) into {} rows of {} ({:.2}% filled), {} dropped, {} truncated; wrote {}{}",
            stats.examples, stats.target_tokens, stats.tokens, stats.rows, args.seq_len,
            100.0 * stats.fill, stats.dropped, stats.truncated, args.out,
            if args.shard.is_some() { " (this job's examples and shards)" } else { "" }
        ),
        PackOutcome::Preference(stats) => println!(
            "packed {} pairs ({} response tokens of {}) into {} rows of {} ({:.2}% filled), {} dropped as longer than a row; wrote {}{}",
            stats.examples, stats.target_tokens, stats.tokens, stats.rows, args.seq_len,
            100.0 * stats.fill, stats.dropped, args.out,
            if args.shard.is_some() { " (this job's pairs and shards)" } else { "" }
        ),
    }
    Ok(())
}
