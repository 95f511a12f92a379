//! `dapt-torch`: every command of dapt, including those that train, evaluate or serve models and so
//! link LibTorch. `dapt` (src/main.rs) runs the data commands itself and hands these to this binary;
//! it can also be run directly (`dapt-torch train …`, `torchrun --no-python dapt-torch train …`).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod commands;
mod torch;

/// dapt: domain adaptation of LLMs, from raw shards to an evaluated adapted model.
#[derive(Parser)]
#[command(name = "dapt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline config end to end: ingest → SQL → tokenise + pack → train → held-out perplexity.
    Run(torch::run::RunArgs),
    #[command(flatten)]
    Data(cli::DataCommand),
    /// Train in stages (CPT → CPT → SFT; full-weight or LoRA) on packed Parquet; resumable.
    Train(torch::train::TrainArgs),
    /// Model files: import a GGUF model, resize embeddings for an extended tokenizer, merge a LoRA adapter.
    Model(torch::model::ModelArgs),
    /// Score a checkpoint: perplexity, bits-per-byte, multiple-choice and generative tasks (code run
    /// in a sandbox, math answers, baskets), generation lang-swap.
    Eval(Box<torch::eval::EvalArgs>),
    /// Score completions brought from any model (HumanEval samples format) on a generative task:
    /// code runs in a sandbox, answers are checked; pass@k into a JSON file.
    EvalCompletions(torch::eval::EvalCompletionsArgs),
    /// Compare eval.json files side by side (Markdown or HTML with SVG charts), flag regressions.
    Report(torch::eval::ReportArgs),
    /// Serve a checkpoint over an OpenAI-compatible /v1/completions endpoint.
    Serve(torch::eval::ServeArgs),
    /// Ablations over mixtures and training settings: components tokenised once, a proxy trained and
    /// evaluated per variant or trial; hyperparameter search by grid, random draw, successive halving.
    Sweep(torch::sweep::SweepArgs),
}

fn main() -> ExitCode {
    cli::init();
    let result = match Cli::parse().command {
        Command::Run(args) => torch::run::run(args),
        Command::Data(command) => command.run(),
        Command::Train(args) => torch::train::run(args),
        Command::Model(args) => torch::model::run(args),
        Command::Eval(args) => torch::eval::run(*args),
        Command::EvalCompletions(args) => torch::eval::eval_completions(args),
        Command::Report(args) => torch::eval::report(args),
        Command::Serve(args) => torch::eval::serve(args),
        Command::Sweep(args) => torch::sweep::run(args),
    };
    cli::exit(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `dapt` lists and hands over exactly this binary's torch commands, with their help lines.
    #[test]
    fn dapt_hands_over_exactly_these_commands() {
        let command = Cli::command();
        let data =
            <cli::DataCommand as Subcommand>::augment_subcommands(clap::Command::new("data"));
        let data: Vec<&str> = data
            .get_subcommands()
            .map(clap::Command::get_name)
            .collect();
        let torch: Vec<(String, String)> = command
            .get_subcommands()
            .filter(|c| !data.contains(&c.get_name()))
            .map(|c| {
                let about = c.get_about().map(ToString::to_string).unwrap_or_default();
                (c.get_name().to_string(), about)
            })
            .collect();
        let listed: Vec<(String, String)> = cli::TORCH_COMMANDS
            .iter()
            .map(|(name, about)| (name.to_string(), about.to_string()))
            .collect();
        assert_eq!(torch, listed);
    }
}
