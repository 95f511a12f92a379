//! `dapt generate`: ask an OpenAI-compatible endpoint about every row of a query (see
//! `dapt_pipeline::generate`).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dapt_pipeline::generate::{GenerateJob, GenerateParams, RequestPolicy};

/// Arguments of `dapt generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Query returning the rows: an `id` column and the columns the template reads.
    #[arg(short = 'e', long = "execute")]
    execute: String,
    /// Sources file (TOML) the query reads, as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the query on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); the rows, and so the output, are the same.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
    /// Jinja template (minijinja) rendering a row into the user message; the row's columns are its
    /// variables (a column the template names but the row lacks is an error).
    #[arg(long)]
    template: PathBuf,
    /// System message sent before each user message.
    #[arg(long)]
    system: Option<String>,
    /// The server: its base URL (`http://host:8000/v1`) or its chat-completions URL.
    #[arg(long)]
    endpoint: String,
    /// Model name sent with each request.
    #[arg(long)]
    model: String,
    /// Output directory (URL): Parquet shards (id, prompt, response, finish_reason, prompt_tokens,
    /// completion_tokens) sorted by id, and `_manifest.json`.
    #[arg(long)]
    out: String,
    /// Response cache (URL of a directory, local or object store), keyed by the model name, the
    /// messages and the parameters: a rerun asks nothing it has, an interrupted run resumes.
    /// Default: ~/.cache/dapt/responses.
    #[arg(long)]
    cache: Option<String>,
    /// Longest completion in tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: u64,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed sent to the server.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Retries of a request on 429, 5xx, timeouts and dropped connections.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Seconds one attempt may take.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Milliseconds before the first retry; each next one waits twice as long (a Retry-After header
    /// wins).
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// Environment variable holding the API key (sent as a bearer token; never logged or written).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// USD per million prompt tokens, for the cost estimate.
    #[arg(long, requires = "price_completion")]
    price_prompt: Option<f64>,
    /// USD per million completion tokens, for the cost estimate.
    #[arg(long, requires = "price_prompt")]
    price_completion: Option<f64>,
    /// Rows per output shard (a shard is published when all its rows are answered).
    #[arg(long, default_value_t = 1000)]
    rows_per_shard: usize,
    /// Replace an output of other settings in --out instead of refusing it.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let cache = match &args.cache {
        Some(cache) => cache.clone(),
        None => std::env::var_os("HOME")
            .map(|home| {
                PathBuf::from(home)
                    .join(".cache/dapt/responses")
                    .display()
                    .to_string()
            })
            .context("--cache is needed where HOME is not set")?,
    };
    let job = GenerateJob {
        query: args.execute.clone(),
        sources: args.config.clone(),
        template: args.template.clone(),
        system: args.system.clone(),
        endpoint: args.endpoint.clone(),
        model: args.model.clone(),
        out: args.out.clone(),
        cache,
        params: GenerateParams {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            stop: args.stop.clone(),
        },
        rows_per_shard: args.rows_per_shard,
        overwrite: args.overwrite,
        prices: args.price_prompt.zip(args.price_completion),
        cluster: args.cluster.clone(),
    };
    if !(args.timeout_s > 0.0 && args.timeout_s.is_finite()) {
        anyhow::bail!("--timeout-s must be positive");
    }
    let policy = RequestPolicy {
        concurrency: args.concurrency,
        retries: args.retries,
        timeout: Duration::from_secs_f64(args.timeout_s),
        backoff: Duration::from_millis(args.backoff_ms),
        api_key_env: args.api_key_env.clone(),
    };
    let bar = dapt_pipeline::progress::bar(0, "generate", "rows");
    let started = std::time::Instant::now();
    let progress_bar = bar.clone();
    let report = job
        .run(&policy, &move |done, total| {
            progress_bar.set_length(total);
            progress_bar.set_position(done);
        })
        .context("generation failed")?;
    bar.finish_and_clear();
    let cost = report
        .cost_usd
        .map_or(String::new(), |c| format!(", about ${c:.4}"));
    println!(
        "generated {} rows ({} from the cache, {} truncated at --max-tokens): {} requests, {} retried; {} prompt + {} completion tokens{cost} in {:.1} s; peak RSS {} MB; wrote {}",
        report.rows,
        report.cached,
        report.truncated,
        report.requests,
        report.retried,
        report.prompt_tokens,
        report.completion_tokens,
        started.elapsed().as_secs_f64(),
        dapt_pipeline::peak_rss_mb().map_or("?".into(), |m| m.to_string()),
        args.out
    );
    Ok(())
}
