//! dapt-pipeline: the data stages as jobs. Its job is orchestration of the single-stage jobs the CLI
//! runs — ingest, pack, mix, dedup, generate, tokenizer extension — with typed settings whose
//! [`identity`](identity::identity) (a content hash) binds every output to what produced it, so
//! reruns reuse finished steps. Its input is config files and settings; its output is the stages'
//! directories and summaries. It needs no LibTorch; the recipes that train and evaluate models
//! (`dapt-recipes`) build on it.
#![warn(missing_docs)]

pub mod dedup;
mod error;
pub mod generate;
pub mod identity;
pub mod ingest;
pub mod measure;
pub mod mix;
pub mod mix_array;
pub mod pack;
pub mod progress;
pub mod tokenizer;
pub mod work;

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
