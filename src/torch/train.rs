//! `dapt train CONFIG`: training in stages (CPT → CPT → SFT, full-weight or LoRA) on packed Parquet,
//! in one process or data-parallel over several (`--nproc N` here, or ranks a launcher started).
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use dapt_trainer::{run_stages, Dist, Launch, TrainConfig};

use dapt_recipes::progress;

/// Arguments of `dapt train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Training config (TOML): `model` (HF directory) or `[init]`, `seed`, and `[[stage]]` entries with
    /// `name`, `data` (packed Parquet), `method` (full|lora), `[stage.train]`, `[stage.lora]`.
    config: PathBuf,
    /// Output directory: one subdirectory per stage (model/, adapter/, train_log.jsonl, stage.json).
    /// A rerun skips finished stages and resumes an interrupted one from its last checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Data-parallel training on this machine: start N ranks (processes) that split every
    /// micro-batch and sum their gradients over gloo (same losses and weights as one process;
    /// `train.batch_size` must be a multiple of N). Ranks started by a launcher instead
    /// (`torchrun --no-python dapt train …`, Slurm) are found from RANK, WORLD_SIZE, MASTER_ADDR and
    /// MASTER_PORT; DAPT_DIST_TIMEOUT_S (300) bounds how long a rank waits for the others.
    #[arg(long, value_name = "N", default_value_t = 1)]
    nproc: usize,
    /// ZeRO-1: shard the optimiser state over the ranks (each keeps the moments of its share of the
    /// weights; the results do not change, the memory per rank goes down).
    #[arg(long)]
    zero1: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    let launch = Launch::from_env()?;
    if args.nproc > 1 {
        if launch.is_some() {
            bail!("--nproc starts ranks itself; this process is already rank of a launched group (WORLD_SIZE is set)");
        }
        return launch_local(&args);
    }
    let mut config = TrainConfig::load(&args.config)?;
    config.zero1 = args.zero1;
    if let Some(launch) = &launch {
        config.dist = Some(Arc::new(Dist::join(launch)?));
    }
    let leader = launch.as_ref().is_none_or(|l| l.rank == 0);
    let total: usize = config.options.stages.iter().map(|s| s.train.steps).sum();
    let bar = if leader {
        progress::bar(total as u64, "train", "steps")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let steps: std::collections::BTreeMap<String, usize> = config
        .options
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.train.steps))
        .collect();
    let reports = run_stages(&config, &args.out, |stage, m| {
        progress::train_step(&bar, stage, m, steps.get(stage).copied().unwrap_or(0))
    })?;
    bar.finish_and_clear();
    if !leader {
        dapt_pipeline::log_peak_rss("train");
        return Ok(());
    }
    for r in &reports {
        let heldout = match (r.heldout_before, r.heldout_after) {
            (Some(b), Some(a)) => format!(", held-out loss {b:.4} → {a:.4}"),
            _ => String::new(),
        };
        println!(
            "{}: {:?}, {} steps, {} target tokens, {} trainable parameters, loss {:.4} → {:.4}{heldout}; model: {}",
            r.name,
            r.method,
            r.steps,
            r.target_tokens,
            r.trainable_parameters,
            r.first_loss,
            r.last_loss,
            r.model
        );
    }
    dapt_pipeline::log_peak_rss("train");
    Ok(())
}

/// `--nproc N`: starts N ranks of this command on this machine (rank 0 serves the rendezvous on a
/// free loopback port), each with an equal share of the cores, and waits for all. When one fails the
/// others are stopped and the failure is reported by rank.
fn launch_local(args: &TrainArgs) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks' rendezvous")?
        .port();
    let exe = std::env::current_exe().context("finding the dapt executable")?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / args.nproc).max(1);
    tracing::info!(
        ranks = args.nproc,
        port,
        threads,
        "starting data-parallel ranks"
    );
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(args.nproc);
    for rank in 0..args.nproc {
        let mut command = Command::new(&exe);
        command
            .arg("train")
            .arg(&args.config)
            .arg("--out")
            .arg(&args.out)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if args.zero1 {
            command.arg("--zero1");
        }
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", threads.to_string());
        }
        match command.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    // Poll so that the first failure stops the rest at once.
    let mut failure: Option<String> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() && failure.is_none() {
                        failure = Some(format!("rank {rank} failed ({status})"));
                    }
                    children.remove(i);
                }
                Ok(None) => i += 1,
                Err(e) => {
                    failure.get_or_insert(format!("waiting for rank {rank}: {e}"));
                    children.remove(i);
                }
            }
        }
        if failure.is_some() {
            stop_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failure {
        Some(message) => bail!("{message}; the other ranks were stopped"),
        None => Ok(()),
    }
}

fn stop_all(children: &mut Vec<(usize, Child)>) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
    }
    for (_, child) in children.iter_mut() {
        let _ = child.wait();
    }
    children.clear();
}
