//! `dapt ingest` as a job: settings in, a Document Parquet output with its manifest out, with a
//! progress bar (bytes, documents per second) on stderr.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dapt_core::Location;
use dapt_ingest::{IngestSettings, IngestSummary, Job, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Result;

/// The identity of an ingest output: its settings (inputs, format, columns, policy).
pub fn ingest_identity(settings: &IngestSettings) -> Result<String> {
    crate::identity::identity("the ingest settings", settings)
}

/// Runs job `job` of ingest into `out` with a progress bar.
pub fn run_ingest(
    runtime: &tokio::runtime::Runtime,
    settings: &IngestSettings,
    out: Location,
    job: Job,
) -> Result<IngestSummary> {
    let hash = ingest_identity(settings)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "    ingest [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let documents = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = {
        let bar = bar.clone();
        let documents = Arc::clone(&documents);
        Arc::new(move |event: Progress| match event {
            Progress::Planned { bytes, .. } => bar.set_length(bytes),
            Progress::Documents(n) => {
                let total = documents.fetch_add(n, Ordering::Relaxed) + n;
                let rate = total as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{total} docs ({rate:.0}/s)"));
            }
            Progress::File {
                url,
                bytes,
                documents,
            } => {
                bar.inc(bytes);
                tracing::info!(%url, documents, bytes, "ingested");
            }
        })
    };
    let summary = runtime.block_on(dapt_ingest::ingest(settings, out, &hash, job, progress))?;
    bar.finish_and_clear();
    tracing::info!(
        files = summary.files,
        read = summary.files_read,
        documents = summary.documents,
        skipped = summary.skipped,
        "ingest done"
    );
    Ok(summary)
}
