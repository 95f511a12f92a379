//! dapt-eval: did the adaptation help, and what did it break? Its job is to score models: perplexity
//! on held-out packed rows, bits-per-byte on held-out text (comparable across tokenizers),
//! multiple-choice tasks by log-likelihood (lm-evaluation-harness style, batch-size independent),
//! generative tasks checked by programs (HumanEval code run in a sandbox, math answers, MERA,
//! baskets), generation with a KV cache and the lang-swap rate of generations, side-by-side reports across
//! checkpoints, and an OpenAI-compatible completions endpoint. Its input is a model from
//! `dapt-trainer`, a tokenizer, packed rows, texts and task files; its output is serialisable results,
//! reports (Markdown/HTML with SVG plots) and HTTP responses.
#![warn(missing_docs)]

mod answers;
mod error;
mod files;
mod generate;
mod generative;
mod langswap;
mod mera;
mod perplexity;
mod plan;
mod regression;
mod report;
mod results;
mod sandbox;
mod scorer;
mod serve;
mod tasks;
mod text;

pub use answers::{answers_match, chrf, extract_answer, pass_at_k, AnswerMetric};
pub use error::{Error, Result};
pub use generate::{generate, generate_batch, FinishReason, GenerateOptions, Generation};
pub use generative::{
    contexts, generate_completions, load_generative_task, needs_sandbox, read_completions,
    score_completions, Check, GenExample, GenFormat, GenTaskSet, GenerativeDetail,
    GenerativeResult, GenerativeSettings, SampleResult,
};
pub use langswap::{foreign_spans, lang_swap, ForeignSpan, LangSwapExample, LangSwapReport};
pub use mera::{load_mera, python_format, MeraRow};
pub use perplexity::{perplexity, Perplexity};
pub use plan::{
    generate_all, load_any_task, read_jsonl_field, AnyFormat, AnyTask, EvalPlan, Grouping,
    PromptSet, TaskSet, TextSet,
};
pub use regression::{regress, Observation, Regression};
pub use report::{bar_chart, build as build_report, LossCurve, RedFlag, Report, ReportOptions};
pub use results::{EvalResults, GenerationRecord, GenerationResults};
pub use sandbox::{RunOutcome, RunStatus, Sandbox, SandboxLimits};
pub use scorer::{LogLikelihood, Request, Scorer, TokenScore};
pub use serve::Server;
pub use tasks::{evaluate_task, load_task, ExampleResult, McExample, TaskFormat, TaskResult};
pub use text::{score_texts, TextScore};
