//! dapt-pipeline: the recipes that chain dapt's stages. Its job is orchestration — the demo pipeline
//! (`dapt run`), sweeps over mixtures (`dapt sweep`), and the single-stage jobs the CLI runs (ingest,
//! pack, mix, dedup, tokenizer extension, importing a GGUF model, resizing and merging models) — with typed settings whose [`identity`](identity::identity) (a content hash) binds every
//! output to what produced it, so reruns reuse finished steps. Its input is config files and
//! settings; its output is the stages' directories, reports and summaries. It is the only crate that
//! sees every stage; the `dapt` binary only parses arguments and calls it.
//!
//! Without the default `torch` feature the crate builds without LibTorch: the data recipes (ingest,
//! pack, mix) remain.
#![warn(missing_docs)]

#[cfg(feature = "torch")]
pub mod adapt;
pub mod dedup;
mod error;
pub mod generate;
pub mod identity;
#[cfg(feature = "torch")]
pub mod import;
pub mod ingest;
pub mod mix;
#[cfg(feature = "torch")]
pub mod model;
pub mod pack;
pub mod progress;
#[cfg(feature = "torch")]
pub mod run;
#[cfg(feature = "torch")]
pub mod search;
#[cfg(feature = "torch")]
pub mod sweep;
pub mod tokenizer;

pub use error::{Error, Result};

/// A multi-threaded async runtime for a command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: "the async runtime".into(),
            source,
        })
}

/// Peak resident memory of this process in MB (Linux), from /proc/self/status.
pub fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Logs the peak resident memory of the process at the end of a long command.
pub fn log_peak_rss(command: &str) {
    if let Some(mb) = peak_rss_mb() {
        tracing::info!(command, peak_rss_mb = mb, "done");
    }
}
