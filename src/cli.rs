//! What both binaries share: the data commands, process set-up (allocator arenas, logging), how a
//! command's result becomes the exit status, and the names of the torch commands.
//!
//! `dapt` (src/main.rs) links no LibTorch, so that a data command starts in milliseconds (loading
//! LibTorch costs ≈0.3 s and ≈150 MB before `main`) and runs where LibTorch is not installed; it hands
//! the torch commands to `dapt-torch` (src/torch_main.rs), which has every command.
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Subcommand;

use crate::commands;

/// The commands that need no LibTorch.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Read JSON-lines / Parquet shards from object storage into normalised Document Parquet shards.
    Ingest(commands::ingest::IngestArgs),
    /// Query sources with SQL (DataFusion dialect plus dapt functions: lang_id, text_stats, minhash, …).
    Sql(commands::sql::SqlArgs),
    /// Find exact or near duplicates among the rows of a query; writes a table (id, cluster_id, kept).
    Dedup(commands::dedup::DedupArgs),
    /// Where the jobs writing an output stand: done, running, interrupted, failed (with the error) or
    /// missing, per job of an array.
    Status(commands::status::StatusArgs),
    /// Train or evaluate a fastText-style text classifier (used in SQL as classify(text, 'name')).
    Classify(commands::classify::ClassifyArgs),
    /// Tokenizer adaptation: train, measure compression, extend a vocabulary with domain tokens.
    Tokenizer(commands::tokenizer::TokenizerArgs),
    /// Tokenise documents and pack them into fixed-length rows with segment lengths (Parquet).
    Pack(commands::pack::PackArgs),
    /// Ask an OpenAI-compatible endpoint about every row of a query (synthetic QA, translation,
    /// rewriting): a Jinja template per row, bounded concurrency, retries, a response cache; Parquet out.
    Generate(commands::generate::GenerateArgs),
    /// Mixtures: SQL components with token-budget weights, in stages (plan, run).
    Mix(commands::mix::MixArgs),
    /// Run the processes of an Apache DataFusion Ballista cluster for `--cluster df://HOST:PORT`
    /// (a scheduler, executors) with dapt's SQL functions and object stores.
    Cluster(commands::cluster::ClusterArgs),
}

impl DataCommand {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Ingest(args) => commands::ingest::run(args),
            Self::Sql(args) => commands::sql::run(args),
            Self::Dedup(args) => commands::dedup::run(args),
            Self::Status(args) => commands::status::run(args),
            Self::Classify(args) => commands::classify::run(args),
            Self::Tokenizer(args) => commands::tokenizer::run(args),
            Self::Pack(args) => commands::pack::run(args),
            Self::Mix(args) => commands::mix::run(args),
            Self::Generate(args) => commands::generate::run(args),
            Self::Cluster(args) => commands::cluster::run(args),
        }
    }
}

/// The commands of `dapt-torch` that `dapt` hands over, with the one-line help both list them with
/// (`dapt-torch`'s tests check that these are its commands and its lines).
// `dapt-torch` reads it in its tests only; the data-only `dapt` not at all.
#[allow(dead_code)]
pub const TORCH_COMMANDS: &[(&str, &str)] = &[
    (
        "run",
        "Run a pipeline config end to end: ingest → SQL → tokenise + pack → train → held-out perplexity",
    ),
    (
        "train",
        "Train in stages (CPT → CPT → SFT; full-weight or LoRA) on packed Parquet; resumable",
    ),
    (
        "model",
        "Model files: import a GGUF model, resize embeddings for an extended tokenizer, merge a LoRA adapter",
    ),
    (
        "eval",
        "Score a checkpoint: perplexity, bits-per-byte, multiple-choice and generative tasks (code run in a sandbox, math answers, baskets), generation lang-swap",
    ),
    (
        "eval-completions",
        "Score completions brought from any model (HumanEval samples format) on a generative task: code runs in a sandbox, answers are checked; pass@k into a JSON file",
    ),
    (
        "report",
        "Compare eval.json files side by side (Markdown or HTML with SVG charts), flag regressions",
    ),
    (
        "serve",
        "Serve a checkpoint over an OpenAI-compatible /v1/completions endpoint",
    ),
    (
        "sweep",
        "Ablations over mixtures and training settings: components tokenised once, a proxy trained and evaluated per variant or trial; hyperparameter search by grid, random draw, successive halving",
    ),
];

/// Process set-up both binaries do first: allocator arenas, then logging to stderr (`DAPT_LOG`
/// filters; no ANSI codes unless stderr is a terminal).
pub fn init() {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DAPT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The exit status of a command's result; an error is printed as one line of causes.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates concurrently an arena of its own (up to 8 per core) and
/// returns memory freed in one arena to no other: with rayon and tokio threads that raises the peak RSS
/// of a data stage by ≈60 MB (`dapt pack` on the test corpus: 530 → 465 MB) at no measurable cost in
/// speed. One arena per core, unless `MALLOC_ARENA_MAX` says otherwise.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_ARENA_MAX: i32 = -8;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only changes allocator settings; called before any other thread starts.
        unsafe {
            mallopt(M_ARENA_MAX, cores as i32);
        }
    }
}

/// The error and its causes, each printed once: a cause whose message the text already holds (an
/// error that repeats its source's message) is left out.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("query failed: {source}")]
    struct Repeats {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let inner = std::io::Error::other("no column `source`");
        let error = anyhow::Error::new(Repeats { source: inner }).context("packing failed");
        assert_eq!(
            error_chain(&error),
            "packing failed: query failed: no column `source`"
        );
    }
}
