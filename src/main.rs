//! `dapt`: the command line of the dapt data engine and trainer. Each subcommand is a module in
//! `commands/` (data) or `torch/` (training, evaluation, serving) that parses its arguments, builds
//! settings and calls one library function (most in `dapt_pipeline`).
//!
//! This binary runs the data commands and links no LibTorch, so they start at once and run where
//! LibTorch is not installed. It hands the commands that need LibTorch to `dapt-torch` (built beside
//! it; see [`launch`]). Without the default `torch` feature there is no `dapt-torch` and no torch
//! command.
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

mod cli;
mod commands;
#[cfg(feature = "torch")]
mod launch;

/// dapt: domain adaptation of LLMs, from raw shards to an evaluated adapted model.
#[derive(Parser)]
#[command(name = "dapt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: cli::DataCommand,
}

fn main() -> ExitCode {
    cli::init();
    #[cfg(feature = "torch")]
    if let Some(args) = launch::torch_command() {
        return cli::exit(Err(launch::exec_torch(args)));
    }
    cli::exit(parse().command.run())
}

/// The data commands, with the torch commands listed in `--help` (they never reach this parser).
fn parse() -> Cli {
    #[allow(unused_mut)]
    let mut command = Cli::command();
    #[cfg(feature = "torch")]
    for (name, about) in cli::TORCH_COMMANDS {
        command = command.subcommand(clap::Command::new(*name).about(*about));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}
