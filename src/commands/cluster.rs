//! `dapt cluster scheduler|executor`: the processes of an Apache DataFusion Ballista cluster that runs
//! dapt's SQL (`dapt sql --cluster df://HOST:PORT`); each knows dapt's functions and object stores.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use dapt_cluster::{ExecutorOptions, SchedulerOptions};
use dapt_sql::SourcesOptions;

/// Arguments of `dapt cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Run a Ballista scheduler: plans the queries clients send and hands their tasks to executors.
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor: registers with a scheduler and runs tasks with dapt's functions.
    Executor(ExecutorArgs),
}

/// Arguments of `dapt cluster scheduler`.
#[derive(Args)]
struct SchedulerArgs {
    /// Address to listen on (clients connect with `--cluster df://HOST:PORT`).
    #[arg(long, default_value = "0.0.0.0:50050")]
    bind: std::net::SocketAddr,
    /// Host name executors and clients reach this scheduler by (default: the bound address, or
    /// localhost when that is 0.0.0.0).
    #[arg(long)]
    external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks run elsewhere.
    #[arg(long, default_value_t = 60)]
    executor_timeout_s: u64,
    /// Sources file whose `[storage]` settings apply to the object stores the scheduler lists.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Arguments of `dapt cluster executor`.
#[derive(Args)]
struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Host to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_host: String,
    /// Host name other processes reach this executor by (default: the bind host).
    #[arg(long)]
    external_host: Option<String>,
    /// Arrow Flight port: results and shuffle data are fetched from it (a second executor on one
    /// host needs other ports).
    #[arg(long, default_value_t = 50051)]
    flight_port: u16,
    /// gRPC port: the scheduler sends tasks to it.
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Tasks run at once (0: one per core).
    #[arg(long, default_value_t = 0)]
    concurrent_tasks: usize,
    /// Directory for shuffle files (default: a new temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler (keep it well under the scheduler's
    /// --executor-timeout-s).
    #[arg(long, default_value_t = 15)]
    heartbeat_s: u64,
    /// The clients' sources file: its tokenizers and classifiers (for token_count and classify) are
    /// loaded here, and its `[storage]` settings apply to the object stores tasks read.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn sources(config: Option<&PathBuf>) -> anyhow::Result<SourcesOptions> {
    Ok(match config {
        Some(path) => SourcesOptions::load(path)?,
        None => SourcesOptions::default(),
    })
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    // Deep plans recurse: Ballista's own binaries give their threads 32 MB stacks.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        ClusterCommand::Scheduler(args) => {
            let sources = sources(args.config.as_ref())?;
            if args.executor_timeout_s == 0 {
                anyhow::bail!("--executor-timeout-s must be at least 1");
            }
            runtime.block_on(dapt_cluster::run_scheduler(SchedulerOptions {
                bind: args.bind,
                external_host: args.external_host,
                executor_timeout_s: args.executor_timeout_s,
                storage: sources.storage,
            }))?;
        }
        ClusterCommand::Executor(args) => {
            let (host, port) = args
                .scheduler
                .rsplit_once(':')
                .with_context(|| format!("--scheduler {:?} is not HOST:PORT", args.scheduler))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("--scheduler {:?}: bad port", args.scheduler))?;
            if args.flight_port == args.grpc_port {
                anyhow::bail!("--flight-port and --grpc-port must differ");
            }
            let work_dir = match args.work_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    Some(dir.display().to_string())
                }
                None => None,
            };
            runtime.block_on(dapt_cluster::run_executor(ExecutorOptions {
                bind_host: args.bind_host,
                external_host: args.external_host,
                flight_port: args.flight_port,
                grpc_port: args.grpc_port,
                scheduler: (host.to_string(), port),
                concurrent_tasks: args.concurrent_tasks,
                work_dir,
                heartbeat_s: args.heartbeat_s,
                sources: sources(args.config.as_ref())?,
            }))?;
        }
    }
    Ok(())
}
