//! `dapt run CONFIG`: a recipe — the adaptation of a pretrained model (`recipe = "adapt"`, see
//! `dapt_recipes::adapt`) or the demo pipeline (see `dapt_recipes::run`).
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dapt_recipes::adapt::AdaptSettings;
use dapt_recipes::run::RunSettings;
use dapt_trainer::DeviceChoice;

/// Arguments of `dapt run`.
#[derive(Args)]
pub struct RunArgs {
    /// Recipe config (TOML): configs/ru-adapt.toml (a real model adapted to Russian) or
    /// configs/demo.toml (the demo pipeline).
    config: PathBuf,
    /// Output directory; default `out/<config name>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the adaptation recipe trains and evaluates (overrides the config's `device`).
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Run the recipe's SQL (measurement, extension text, mixes, SFT and evaluation queries; the
    /// demo's selection) on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); executors need the sources and tokenizers reachable. The outputs are the
    /// same.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// CUDA when LibTorch sees a device, else CPU.
    Auto,
    Cpu,
    Cuda,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("out").join(args.config.file_stem().unwrap_or_default()));
    if dapt_recipes::adapt::is_adapt_config(&args.config)? {
        let mut settings = AdaptSettings::load(&args.config)?;
        settings.cluster = args.cluster.clone();
        let device = args.device.map(|d| match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        });
        let report = dapt_recipes::adapt::run(&settings, &out, device)?;
        let compared = report
            .checkpoints
            .iter()
            .position(|c| *c == report.compared)
            .unwrap_or_default();
        for (name, change) in &report.bits_per_byte_change {
            let values = &report.bits_per_byte[name];
            println!(
                "bits-per-byte {name}: base {:.4} -> {} {:.4} ({:+.1}%)",
                values[0],
                report.compared,
                values[compared],
                100.0 * change
            );
        }
        println!(
            "{} red flags; report: {} ({})",
            report.red_flags.len(),
            report.report_md.display(),
            report.report_html.display()
        );
        return Ok(());
    }
    if args.device.is_some() {
        anyhow::bail!("--device is for the adaptation recipe (recipe = \"adapt\"); the demo pipeline picks CUDA when available");
    }
    let mut settings = RunSettings::load(&args.config)?;
    settings.cluster = args.cluster.clone();
    let report = dapt_recipes::run::run(&settings, &args.config, &out)?;
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
