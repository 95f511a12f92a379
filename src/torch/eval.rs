//! `dapt eval`, `dapt report`, `dapt serve`: score a checkpoint, compare checkpoints, serve one.
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use dapt_eval::{
    read_jsonl_field, AnyFormat, AnyTask, EvalPlan, EvalResults, GenerateOptions, Grouping,
    LossCurve, PromptSet, ReportOptions, Sandbox, SandboxLimits, TextSet,
};
use dapt_packer::TokenizerFile;
use dapt_trainer::tch::{nn, Device, Kind};
use dapt_trainer::CausalLm;

/// The model, its tokenizer and where they came from.
pub struct Checkpoint {
    pub _vs: nn::VarStore,
    pub model: CausalLm,
    pub tokenizer: TokenizerFile,
    pub device: Device,
}

/// Arguments shared by the commands that load a checkpoint.
#[derive(Args, Clone)]
pub struct CheckpointArgs {
    /// HF model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (PEFT layout) applied on top (merged in memory).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// tokenizer.json (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

impl CheckpointArgs {
    fn tokenizer_path(&self) -> PathBuf {
        self.tokenizer
            .clone()
            .unwrap_or_else(|| self.model.join("tokenizer.json"))
    }

    /// A chat template: `chatml`, a tokenizer_config.json, or `auto` (the one beside the tokenizer).
    pub fn chat_template(&self, spec: &str) -> anyhow::Result<dapt_packer::ChatTemplate> {
        let config = match spec {
            "chatml" => {
                return Ok(dapt_packer::ChatTemplate::new(
                    dapt_packer::CHATML,
                    "",
                    "<|im_end|>",
                )?)
            }
            "auto" => self
                .tokenizer_path()
                .parent()
                .map(|p| p.join("tokenizer_config.json"))
                .unwrap_or_default(),
            path => PathBuf::from(path),
        };
        dapt_packer::ChatTemplate::from_tokenizer_config(&config)
            .with_context(|| format!("--chat-template {spec}"))
    }

    pub fn load(&self) -> anyhow::Result<Checkpoint> {
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            "auto" => Device::cuda_if_available(),
            other => bail!("--device {other:?}: expected cpu, cuda or auto"),
        };
        let (vs, mut model) = CausalLm::load(&self.model, device, Kind::Float)?;
        if let Some(adapter) = &self.adapter {
            model.load_adapter(adapter, device)?;
            model.merge_lora();
        }
        let tokenizer_path = self.tokenizer_path();
        let tokenizer = TokenizerFile::load(&tokenizer_path).with_context(|| {
            format!(
                "the model's tokenizer ({}); pass --tokenizer",
                tokenizer_path.display()
            )
        })?;
        if tokenizer.vocab_size() as i64 > model.config().vocab_size {
            bail!(
                "{}: {} tokens, more than the model's vocab_size {} (resize the embeddings first)",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                model.config().vocab_size
            );
        }
        Ok(Checkpoint {
            _vs: vs,
            model,
            tokenizer,
            device,
        })
    }
}

/// Arguments of `dapt eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Task: NAME=PATH[:FORMAT]. Multiple choice: dapt, hellaswag, arc, mmlu, bigbench,
    /// mera-choice (default: bigbench for .json, dapt for .jsonl). Generative: humaneval (code run in
    /// a sandbox; pass@k), gsm8k (worked answers ending in `#### N`; exact match of the final
    /// number), bigbench-gen (BIG-bench task.json generated, with its prefixes and output_regex),
    /// mera (MERA's instruction format; exact match), basket (JSONL `prompt`, `reference`, `metric`:
    /// exact, contains, regex, chrf, math). Repeatable.
    #[arg(long = "task")]
    tasks: Vec<String>,
    /// Generative tasks: completions per problem (pass@k for k = 1, 10, 100 up to it; above 1 needs
    /// --temperature > 0).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Generative tasks: send each prompt as a user message rendered with this chat template (an
    /// HF tokenizer_config.json, `chatml`, or `auto`: the tokenizer_config.json beside the
    /// tokenizer), for instruct models.
    #[arg(long)]
    chat_template: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Few-shot examples per question (drawn from the task's other examples).
    #[arg(long, default_value_t = 0)]
    num_fewshot: usize,
    /// Questions per task at most (the first ones).
    #[arg(long)]
    limit: Option<usize>,
    /// Held-out text for bits-per-byte: NAME=PATH (JSONL with a `text` field). Repeatable.
    #[arg(long = "text")]
    texts: Vec<String>,
    /// Also score the held-out texts per value of this JSONL field (`component`, `source`, …), or per
    /// language with `lang` (the SQL `lang_id`): NAME/VALUE entries beside NAME.
    #[arg(long)]
    group_by: Option<String>,
    /// Packed held-out rows for perplexity: NAME=DIR (a `dapt pack` output). Repeatable.
    #[arg(long = "packed")]
    packed: Vec<String>,
    /// Prompts to generate from for the lang-swap rate: JSONL with a `prompt` field.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Language the generations should be in.
    #[arg(long, default_value = "ru")]
    target_language: String,
    /// Generation (lang-swap prompts and generative tasks): tokens at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Generation: 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Generation: stop strings (repeatable), besides a generative task's own.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Lang-swap: spans with fewer letters are not judged.
    #[arg(long, default_value_t = 12)]
    min_letters: usize,
    /// Requests per forward pass (log-likelihoods do not depend on it), and completions generated
    /// at once for generative tasks.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longest input in tokens (default: the model's max_position_embeddings, at most 2048).
    #[arg(long)]
    max_length: Option<usize>,
    /// Token that conditions the first token of a held-out text (and stands in for an empty context):
    /// an id (`0`) or a token of the vocabulary (`<|endoftext|>`); default: BOS, else the first EOS id.
    #[arg(long)]
    prefix_token: Option<String>,
    /// Seed of few-shot draws and of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the model under bf16 autocast (matrix products and attention in bf16): about 1.8× as
    /// fast on a CPU with AMX or AVX512-BF16 (refused on one without), scores within about 0.1%.
    #[arg(long)]
    bf16: bool,
    /// Name of the checkpoint in reports (default: the model directory's name, or its parent's when
    /// it is called `model`).
    #[arg(long)]
    label: Option<String>,
    /// Where eval.json goes.
    #[arg(long)]
    out: PathBuf,
}

/// Where and under which limits generated code runs.
#[derive(Args, Clone)]
pub struct SandboxArgs {
    /// Python interpreter that runs generated code (inside the sandbox: no network, a fresh /tmp,
    /// the host read-only).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Wall-clock seconds per program before it and its children are killed.
    #[arg(long, default_value_t = 10)]
    run_timeout: u64,
    /// Address space per sandboxed process, MiB.
    #[arg(long, default_value_t = 1024)]
    run_memory_mb: u64,
    /// Processes a sandboxed program may have at once.
    #[arg(long, default_value_t = 16)]
    run_processes: u64,
}

impl SandboxArgs {
    fn sandbox(&self) -> anyhow::Result<Sandbox> {
        let limits = SandboxLimits {
            wall_seconds: self.run_timeout,
            cpu_seconds: self.run_timeout,
            memory_bytes: self.run_memory_mb << 20,
            processes: self.run_processes,
            ..SandboxLimits::default()
        };
        Ok(Sandbox::new(&self.python, limits)?)
    }
}

/// A task spec NAME=PATH[:FORMAT] read: a multiple-choice or a generative task.
fn load_task_spec(spec: &str, limit: Option<usize>) -> anyhow::Result<AnyTask> {
    let (name, rest) = named(spec, "task")?;
    let (path, format) = match rest.rsplit_once(':') {
        Some((path, format)) if format.parse::<AnyFormat>().is_ok() => {
            (path.to_string(), format.parse::<AnyFormat>().ok())
        }
        _ => (rest, None),
    };
    Ok(dapt_eval::load_any_task(
        &name,
        Path::new(&path),
        format,
        limit,
    )?)
}

fn named(spec: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("--{what} {spec:?}: expected NAME=PATH"))?;
    Ok((name.to_string(), rest.to_string()))
}

fn default_label(model: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let canonical = model.canonicalize().unwrap_or_else(|_| model.to_path_buf());
    if name(&canonical) == "model" {
        canonical.parent().map(name).unwrap_or_default()
    } else {
        name(&canonical)
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let checkpoint = args.checkpoint.load()?;
    let (model, tokenizer, device) = (&checkpoint.model, &checkpoint.tokenizer, checkpoint.device);
    let config = model.config();
    let max_length = args
        .max_length
        .unwrap_or_else(|| (config.max_position_embeddings.max(1) as usize).min(2048));
    let prefix = match args.prefix_token.as_deref() {
        Some(token) => match token.parse::<u32>() {
            Ok(id) => id,
            Err(_) => tokenizer.id_of(token)?,
        },
        None => config
            .bos_token_id
            .as_ref()
            .map(|b| b.ids())
            .and_then(|ids| ids.first().copied())
            .or_else(|| config.eos_ids().first().copied())
            .map(|id| id as u32)
            .context("the model config has no bos_token_id or eos_token_id: pass --prefix-token")?,
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| default_label(&args.checkpoint.model));
    let mut plan = EvalPlan::new(
        &label,
        &args.checkpoint.model.display().to_string(),
        prefix,
        max_length,
    );
    plan.adapter = args
        .checkpoint
        .adapter
        .as_ref()
        .map(|a| a.display().to_string());
    plan.batch_size = args.batch_size;
    plan.num_fewshot = args.num_fewshot;
    plan.seed = args.seed;
    plan.bf16 = args.bf16;
    for spec in &args.packed {
        let (name, dir) = named(spec, "packed")?;
        plan.packed.push((name, dapt_core::Location::parse(&dir)?));
    }
    for spec in &args.texts {
        let (name, path) = named(spec, "text")?;
        let path = PathBuf::from(path);
        let texts = read_jsonl_field(&path, "text")?;
        let grouping = match args.group_by.as_deref() {
            None => Grouping::None,
            Some("lang") => Grouping::Language,
            Some(field) => Grouping::Keys(read_jsonl_field(&path, field)?),
        };
        plan.texts.push(TextSet {
            name,
            texts,
            grouping,
        });
    }
    for spec in &args.tasks {
        match load_task_spec(spec, args.limit)? {
            AnyTask::Choice(task) => plan.tasks.push(task),
            AnyTask::Generative(task) => plan.generative.push(task),
        }
    }
    let generate_options = GenerateOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
    };
    plan.generative_settings = dapt_eval::GenerativeSettings {
        options: generate_options.clone(),
        samples: args.samples,
        num_fewshot: args.num_fewshot,
        max_length,
        batch_size: args.batch_size,
    };
    if let Some(spec) = &args.chat_template {
        plan.chat_template = Some(std::sync::Arc::new(args.checkpoint.chat_template(spec)?));
    }
    if plan.generative.iter().any(dapt_eval::needs_sandbox) {
        plan.sandbox = Some(args.sandbox.sandbox()?);
    }
    if let Some(path) = &args.prompts {
        plan.prompts = Some(PromptSet {
            prompts: read_jsonl_field(path, "prompt")?,
            options: generate_options,
            target_language: args.target_language.clone(),
            min_letters: args.min_letters,
        });
    }
    if plan.is_empty() {
        bail!("nothing to evaluate: give --task, --text, --packed or --prompts");
    }
    let generations = plan.prompts.as_ref().map_or(0, |p| p.prompts.len())
        + plan
            .generative
            .iter()
            .map(|t| t.examples.len())
            .sum::<usize>();
    let bar = (generations > 0)
        .then(|| dapt_pipeline::progress::bar(generations as u64, "generate", "prompts"));
    let results = plan.execute(model, tokenizer, device, |_, _| {
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    for (name, value, _) in results.metrics() {
        println!("{:<32} {value:.4}", name);
    }
    dapt_pipeline::log_peak_rss("eval");
    Ok(())
}

/// Arguments of `dapt eval-completions`.
#[derive(Args)]
pub struct EvalCompletionsArgs {
    /// The task: NAME=PATH:FORMAT (humaneval, gsm8k, bigbench-gen, mera, basket).
    #[arg(long)]
    task: String,
    /// Completions: JSONL rows with `task_id` and `completion` (HumanEval's samples format; for the
    /// other formats `task_id` is the problem's id). Several rows per problem give pass@k.
    #[arg(long)]
    completions: PathBuf,
    /// Few-shot examples the completions were made with (recorded contexts only).
    #[arg(long, default_value_t = 0)]
    num_fewshot: usize,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Where the scores go (JSON: `pass@1`, `pass@k`, … and every sample's verdict).
    #[arg(long)]
    out: PathBuf,
}

pub fn eval_completions(args: EvalCompletionsArgs) -> anyhow::Result<()> {
    let AnyTask::Generative(task) = load_task_spec(&args.task, None)? else {
        bail!(
            "--task {:?}: expected NAME=PATH:FORMAT with a generative format (humaneval, gsm8k, bigbench-gen, mera, basket)",
            args.task
        );
    };
    let name = task.name.clone();
    let completions = dapt_eval::read_completions(&args.completions, &task)?;
    let missing = completions.iter().filter(|c| c.is_empty()).count();
    if missing > 0 {
        tracing::warn!(
            missing,
            problems = task.examples.len(),
            "problems without completions are left out"
        );
    }
    let sandbox = if dapt_eval::needs_sandbox(&task) {
        Some(args.sandbox.sandbox()?)
    } else {
        None
    };
    let contexts = dapt_eval::contexts(&task, args.num_fewshot, 0);
    let result = dapt_eval::score_completions(
        &task,
        &contexts,
        &completions,
        args.num_fewshot,
        sandbox.as_ref(),
    )?;
    let mut json = serde_json::to_value(&result)?;
    if let Some(object) = json.as_object_mut() {
        object.insert("task".into(), name.clone().into());
        for (metric, value) in &result.scores {
            object.insert(metric.clone(), (*value).into());
        }
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    for (metric, value) in &result.scores {
        println!("{:<32} {value:.4}", format!("{metric}/{name}"));
    }
    dapt_pipeline::log_peak_rss("eval-completions");
    Ok(())
}

/// Arguments of `dapt report`.
#[derive(Args)]
pub struct ReportArgs {
    /// eval.json files, the first one the baseline (e.g. base, cpt1, cpt2, sft).
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Training logs to plot: NAME=train_log.jsonl (repeatable; plotted one after another).
    #[arg(long = "train-log")]
    train_logs: Vec<String>,
    /// Metrics (substrings of names) whose fall is a red flag; default: all.
    #[arg(long = "general")]
    general: Vec<String>,
    /// report.md (charts written to plots/ beside it) or report.html (self-contained).
    #[arg(long)]
    out: PathBuf,
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let results = args
        .results
        .iter()
        .map(|p| EvalResults::load(p))
        .collect::<dapt_eval::Result<Vec<_>>>()?;
    let mut curves = Vec::new();
    let mut offset = 0.0;
    for spec in &args.train_logs {
        let (name, path) = named(spec, "train-log")?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mut points = Vec::new();
        for line in text.lines() {
            let m: dapt_trainer::StepMetrics = serde_json::from_str(line)
                .with_context(|| format!("{path}: not a train log line"))?;
            points.push((offset + m.step as f64, m.loss));
        }
        offset += points.len() as f64;
        curves.push(LossCurve { name, points });
    }
    let html = args.out.extension().is_some_and(|e| e == "html");
    let options = ReportOptions {
        general: args.general.clone(),
        ..Default::default()
    };
    let report = dapt_eval::build_report(&results, &curves, &options, html);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
        if !report.charts.is_empty() {
            let plots = parent.join("plots");
            std::fs::create_dir_all(&plots)?;
            for (name, svg) in &report.charts {
                std::fs::write(plots.join(format!("{name}.svg")), svg)?;
            }
        }
    }
    std::fs::write(&args.out, &report.document)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "{} checkpoints, {} red flags; report: {}",
        results.len(),
        report.red_flags.len(),
        args.out.display()
    );
    for flag in &report.red_flags {
        println!(
            "red flag: {} {} {:.4} → {:.4}",
            flag.checkpoint, flag.metric, flag.base, flag.value
        );
    }
    Ok(())
}

/// Arguments of `dapt serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Longest input in tokens for log-probabilities.
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    /// Model name clients see.
    #[arg(long)]
    name: Option<String>,
    /// Chat template of /v1/chat/completions: an HF tokenizer_config.json or `chatml` (default: the
    /// tokenizer_config.json beside the tokenizer, when it has one; else chat is refused).
    #[arg(long)]
    chat_template: Option<String>,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let checkpoint = args.checkpoint.load()?;
    let chat_template = match &args.chat_template {
        Some(spec) => Some(args.checkpoint.chat_template(spec)?),
        None => args.checkpoint.chat_template("auto").ok(),
    };
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let server = dapt_eval::Server {
        model: &checkpoint.model,
        tokenizer: &checkpoint.tokenizer,
        name: args
            .name
            .clone()
            .unwrap_or_else(|| default_label(&args.checkpoint.model)),
        device: checkpoint.device,
        max_length: args.max_length,
        chat_template,
    };
    // A closed stdout (a caller that read the address and went away) must not end the server.
    use std::io::Write;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{address}/v1/completions");
    if server.chat_template.is_some() {
        let _ = writeln!(stdout, "listening on http://{address}/v1/chat/completions");
    }
    let _ = stdout.flush();
    server.run(listener, &|| false)?;
    Ok(())
}
