//! `dapt run CONFIG`: the demo pipeline (see `dapt_pipeline::run`).
use std::path::PathBuf;

use clap::Args;
use dapt_pipeline::run::RunSettings;

/// Arguments of `dapt run`.
#[derive(Args)]
pub struct RunArgs {
    /// Pipeline config (TOML), e.g. configs/demo.toml.
    config: PathBuf,
    /// Output directory; default `out/<config name>`.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = RunSettings::load(&args.config)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("out").join(args.config.file_stem().unwrap_or_default()));
    let report = dapt_pipeline::run::run(&settings, &args.config, &out)?;
    println!(
        "held-out perplexity: before {:.2}, after {:.2} ({} tokens, {} documents); report: {}; base vs adapted: {}",
        report.perplexity_before,
        report.perplexity_after,
        report.heldout_tokens,
        report.heldout_documents,
        report.report_json.display(),
        report.comparison.display()
    );
    Ok(())
}
