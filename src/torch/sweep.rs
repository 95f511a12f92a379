//! `dapt sweep SWEEP.toml`: ablations over mixtures (see `dapt_recipes::sweep`).
use std::path::PathBuf;

use clap::Args;

/// Arguments of `dapt sweep`.
#[derive(Args)]
pub struct SweepArgs {
    /// Sweep file (TOML): `mix` (a mix file whose components are swept), `tokens` per variant,
    /// `[[variant]]` entries (`name`, `weights = { component = share, … }`), `[model]` (the proxy) or
    /// `base` (an HF model directory) with `method` and `[lora]`, `[train]`, `[eval]` (`texts`,
    /// `tasks`, `objective`).
    file: PathBuf,
    /// Output directory (components/, variants/, sweep_results.json, sweep.md, plots/).
    #[arg(long)]
    out: PathBuf,
    /// Run the component queries on an Apache DataFusion Ballista cluster: df://HOST:PORT of its
    /// scheduler (`dapt cluster`); the results are the same.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let outcome = dapt_recipes::sweep::run(&args.file, &args.out, args.cluster.as_deref())?;
    print!("{}", outcome.document);
    Ok(())
}
