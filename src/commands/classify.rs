//! `dapt classify train|eval`: fastText-style domain / quality classifiers from labelled SQL.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dapt_sql::functions::classifier::{Classifier, Metrics, TrainOptions};

/// Arguments of `dapt classify`.
#[derive(Args)]
pub struct ClassifyArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Train on positives and negatives (queries returning a `text` column); report held-out metrics.
    Train {
        #[command(flatten)]
        data: Labelled,
        /// Model file to write (use it in SQL through `[classifiers] NAME = "FILE"`).
        #[arg(long)]
        out: PathBuf,
        /// Share of examples held out for the reported metrics (chosen by text hash and seed).
        #[arg(long, default_value_t = 0.2)]
        heldout: f64,
        /// Training epochs.
        #[arg(long, default_value_t = TrainOptions::default().epochs)]
        epochs: usize,
        /// Feature buckets as a power of two.
        #[arg(long, default_value_t = TrainOptions::default().bits)]
        bits: u32,
        /// Seed for the split and the training order.
        #[arg(long, default_value_t = TrainOptions::default().seed)]
        seed: u64,
    },
    /// Score labelled data with a trained model; print precision, recall, accuracy and AUC.
    Eval {
        #[command(flatten)]
        data: Labelled,
        /// Model file from `dapt classify train`.
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(Args)]
struct Labelled {
    /// Query returning positive examples (a `text` column).
    #[arg(long)]
    positive: String,
    /// Query returning negative examples (a `text` column).
    #[arg(long)]
    negative: String,
    /// Sources file (TOML), as for `dapt sql`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the queries on an Apache DataFusion Ballista cluster: df://HOST:PORT of its scheduler
    /// (`dapt cluster`); the model is the same (examples are ordered by their text, not by the
    /// order the rows arrive in).
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

/// The labelled examples, sorted by text and label: the training order (a seeded shuffle of this)
/// and so the model do not depend on the order the query's rows arrive in, which varies with
/// partitions, threads and cluster executors.
fn load(data: &Labelled) -> anyhow::Result<Vec<(String, bool)>> {
    let mut examples = Vec::new();
    for (query, label) in [(&data.positive, true), (&data.negative, false)] {
        let rows = super::query_strings(
            data.config.as_deref(),
            query,
            &["text"],
            data.cluster.as_deref(),
        )?;
        examples.extend(rows.into_iter().map(|mut row| (row.remove(0), label)));
    }
    examples.sort_unstable();
    Ok(examples)
}

fn print(what: &str, m: &Metrics) {
    println!(
        "{what}: {} examples ({} positive): precision {:.3}, recall {:.3}, accuracy {:.3}, AUC {:.3}",
        m.examples, m.positives, m.precision, m.recall, m.accuracy, m.auc
    );
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Train {
            data,
            out,
            heldout,
            epochs,
            bits,
            seed,
        } => {
            if !(0.0..1.0).contains(&heldout) {
                bail!("--heldout must be in [0, 1)");
            }
            let examples = load(&data)?;
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for example in examples {
                if dapt_core::order::fraction(dapt_core::order::document_key(
                    seed,
                    "classify-heldout",
                    0,
                    &example.0,
                )) < heldout
                {
                    test.push(example);
                } else {
                    train.push(example);
                }
            }
            let options = TrainOptions {
                epochs,
                bits,
                seed,
                ..TrainOptions::default()
            };
            tracing::info!(
                train = train.len(),
                heldout = test.len(),
                "training a classifier"
            );
            let model = Classifier::train(&train, &options);
            model
                .save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            print("train", &model.evaluate(&train));
            if !test.is_empty() {
                print("held-out", &model.evaluate(&test));
            }
            println!("model: {}", out.display());
        }
        Mode::Eval { data, model } => {
            let classifier = Classifier::load(&model).map_err(anyhow::Error::msg)?;
            print("eval", &classifier.evaluate(&load(&data)?));
        }
    }
    Ok(())
}
