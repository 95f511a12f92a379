//! `dapt mix plan|run|route`: mixtures defined as SQL components with token-budget weights, in stages.
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Arguments of `dapt mix`.
#[derive(Args)]
pub struct MixArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Count each component's documents and tokens (nothing is written) and print, per stage and
    /// component, the weight, target tokens, epochs needed and what max_epochs caps.
    Plan {
        /// A mix file (with total_tokens) or a pipeline file ([[stage]] name, mix, tokens).
        file: PathBuf,
        /// This job of a counting array: INDEX/COUNT or `env` (Slurm, a Kubernetes Indexed Job, AWS
        /// Batch, DAPT_SHARD_INDEX/DAPT_SHARD_COUNT). The job tokenises the documents whose id hashes
        /// to it in every component and publishes the counts under --work; `mix plan|run --work`
        /// then use them instead of counting.
        #[arg(long, requires = "work")]
        shard: Option<String>,
        /// Work directory (URL) of a counting array: with --shard this job's counts go there;
        /// without, the plan comes from the finished array's counts.
        #[arg(long)]
        work: Option<String>,
        /// Run the component queries on an Apache DataFusion Ballista cluster: df://HOST:PORT of
        /// its scheduler (`dapt cluster`); executors need the mix's tokenizer and sources reachable.
        #[arg(long, value_name = "df://HOST:PORT")]
        cluster: Option<String>,
    },
    /// Materialise the mix (or every stage of a pipeline, into OUT/<stage>/) as Parquet shards with
    /// a `component` column, `_manifest.json` and `mix_report.json`; deterministic and resumable.
    Run {
        /// A mix file (with total_tokens) or a pipeline file ([[stage]] name, mix, tokens).
        file: PathBuf,
        /// Output directory (URL).
        #[arg(long)]
        out: String,
        /// Replace each stage's output already in --out (of another configuration, finished or not)
        /// instead of refusing it: its manifest goes first, then its shards.
        #[arg(long)]
        overwrite: bool,
        /// Work directory (URL) of a finished counting array (`mix plan --shard i/n --work URL`):
        /// its counts are used instead of tokenising every document here; the output is the same.
        #[arg(long)]
        work: Option<String>,
        /// This job of a write array: INDEX/COUNT or `env` (as `mix plan --shard`). After the
        /// route array (`mix route --shard` with the same COUNT) the job writes shards INDEX,
        /// INDEX + COUNT, … of every stage from the documents routed to it; the job that finds
        /// every other one done writes each stage's `_manifest.json` and `mix_report.json`. The
        /// output equals one process's byte for byte.
        #[arg(long, requires = "work", conflicts_with_all = ["overwrite", "cluster"])]
        shard: Option<String>,
        /// Run the component queries on an Apache DataFusion Ballista cluster: df://HOST:PORT of
        /// its scheduler (`dapt cluster`); executors need the mix's tokenizer and sources reachable.
        #[arg(long, value_name = "df://HOST:PORT")]
        cluster: Option<String>,
    },
    /// One job of a route array, between counting (`mix plan --shard`) and writing (`mix run
    /// --shard`): runs every component query restricted to the ids that hash to this job and sends
    /// each document the plan takes to the job that writes its shard (runs sorted by output
    /// position under --work), with the n-grams of each stage for the grounding of later ones.
    /// A job already done is not run again. Refused for a stage that leaves out ungrounded answers
    /// (`min_grounding` after the first stage): that depends on text, not counts.
    Route {
        /// The mix or pipeline file the counting array counted.
        file: PathBuf,
        /// INDEX/COUNT or `env` (Slurm, a Kubernetes Indexed Job, AWS Batch,
        /// DAPT_SHARD_INDEX/DAPT_SHARD_COUNT); the write array must use the same COUNT.
        #[arg(long)]
        shard: String,
        /// Work directory (URL) of a finished counting array.
        #[arg(long)]
        work: String,
        /// Run the component queries on an Apache DataFusion Ballista cluster: df://HOST:PORT of
        /// its scheduler (`dapt cluster`).
        #[arg(long, value_name = "df://HOST:PORT")]
        cluster: Option<String>,
    },
}

pub fn run(args: MixArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Plan {
            file,
            shard: Some(shard),
            work: Some(work),
            cluster,
        } => {
            let job = dapt_ingest::Job::parse(&shard)?;
            let record = dapt_pipeline::mix::count_mix(&file, cluster.as_deref(), job, &work)?;
            println!(
                "count {}/{} {}: {} components, {} documents, {} tokens; work: {work}",
                record.index,
                record.count,
                if record.reused { "up to date" } else { "done" },
                record.components,
                record.documents,
                record.tokens
            );
        }
        Mode::Plan {
            file,
            work,
            cluster,
            ..
        } => {
            let plans = dapt_pipeline::mix::plan_mix(&file, cluster.as_deref(), work.as_deref())?;
            println!(
                "{:<10} {:<20} {:>7} {:>10} {:>12} {:>12} {:>8} {:>10}",
                "stage",
                "component",
                "weight",
                "documents",
                "available",
                "target",
                "epochs",
                "max_epochs"
            );
            for (stage, plan) in &plans {
                for (_, inventory, p) in &plan.components {
                    println!(
                        "{:<10} {:<20} {:>7.4} {:>10} {:>12} {:>12} {:>8.3} {:>10}{}",
                        stage,
                        p.name,
                        p.weight,
                        inventory.ids.len(),
                        p.available_tokens,
                        p.target_tokens,
                        p.epochs_needed,
                        p.max_epochs.map_or("-".to_string(), |m| m.to_string()),
                        if p.capped {
                            "  WARNING: needs more epochs than max_epochs allows"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Mode::Route {
            file,
            shard,
            work,
            cluster,
        } => {
            let job = dapt_ingest::Job::parse(&shard)?;
            let record =
                dapt_pipeline::mix_array::route_mix(&file, cluster.as_deref(), job, &work)?;
            println!(
                "route {}/{} {}: {} documents, {} bytes of text, {} runs; work: {work}",
                record.index,
                record.count,
                if record.reused { "up to date" } else { "done" },
                record.documents,
                record.bytes,
                record.runs.len()
            );
        }
        Mode::Run {
            file,
            out,
            work: Some(work),
            shard: Some(shard),
            ..
        } => {
            let job = dapt_ingest::Job::parse(&shard)?;
            let record = dapt_pipeline::mix_array::write_mix(&file, &out, job, &work)?;
            println!(
                "write {}/{} {}: {} shards, {} documents{}; out: {out}",
                record.index,
                record.count,
                if record.reused { "up to date" } else { "done" },
                record.shards,
                record.documents,
                if record.merged.is_empty() {
                    String::new()
                } else {
                    format!("; completed {}", record.merged.join(", "))
                }
            );
        }
        Mode::Run {
            file,
            out,
            overwrite,
            work,
            cluster,
            ..
        } => {
            let reports = dapt_pipeline::mix::run_mix(
                &file,
                &out,
                overwrite,
                cluster.as_deref(),
                work.as_deref(),
            )?;
            for report in &reports {
                println!(
                    "stage {}: {} documents, {} tokens (target {}); max share error {:.3} points",
                    report.stage,
                    report.documents,
                    report.tokens,
                    report.total_tokens,
                    report.max_share_error_points
                );
                for c in &report.components {
                    println!(
                        "  {:<20} target {:>6.2}% achieved {:>6.2}%  {} docs, {} seen in earlier stages{}",
                        c.plan.name,
                        100.0 * c.target_share,
                        100.0 * c.achieved_share,
                        c.documents,
                        c.seen_in_earlier_stages,
                        c.grounding
                            .as_ref()
                            .map_or(String::new(), |g| format!(", grounded {:.1}%", 100.0 * g.grounded_share))
                    );
                }
            }
            println!("wrote {out}");
        }
    }
    Ok(())
}
