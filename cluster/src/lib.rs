//! dapt-cluster: dapt's SQL on Apache DataFusion Ballista. Its job is the three processes of a
//! Ballista cluster with dapt inside: a scheduler ([`run_scheduler`]) and executors ([`run_executor`])
//! that know dapt's SQL functions (`lang_id`, `minhash`, `token_count`, the quality rules, …) and
//! object stores. Clients are ordinary dapt sessions whose sources name the cluster
//! ([`SqlSession::remote`], `--cluster df://HOST:PORT`). Its input is addresses and a sources file
//! (tokenizers and classifiers, `[storage]`); its output is running processes.
//!
//! What must be reachable from every process: the scheduler's address (executors and clients), each
//! executor's Flight port (other executors and the client fetch results from it), the tables' object
//! stores (the scheduler lists files, executors read them) with the same credentials (the environment
//! or the sources file's `[storage]`), and the tokenizer and classifier files the sources file names
//! (executors load them at start; give every executor the client's `--config`).
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use dapt_sql::{SourcesOptions, SqlSession};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionConfig;

/// Errors of the cluster processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Ballista refused a setting or failed to serve.
    #[error("{what}: {source}")]
    Ballista {
        /// What was being done.
        what: String,
        /// Ballista's error.
        #[source]
        source: ballista_core::error::BallistaError,
    },
    /// A DataFusion session could not be built.
    #[error("{what}: {source}")]
    DataFusion {
        /// What was being done.
        what: String,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The sources file's models or tables could not be loaded.
    #[error(transparent)]
    Sql(#[from] dapt_sql::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a scheduler listens, and how quickly it gives up on a silent executor.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Address to bind, e.g. `0.0.0.0:50050`.
    pub bind: SocketAddr,
    /// Host name executors and clients reach this scheduler by (default: the bound address, or
    /// `localhost` when that is 0.0.0.0).
    pub external_host: Option<String>,
    /// An executor silent for this long is dead: its tasks run elsewhere.
    pub executor_timeout_s: u64,
    /// Object-store settings over the environment (a sources file's `[storage]`).
    pub storage: BTreeMap<String, String>,
}

/// Where an executor listens and which scheduler it serves.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// Host to bind its two ports on.
    pub bind_host: String,
    /// Host name other processes reach this executor by (default: `bind_host`).
    pub external_host: Option<String>,
    /// Arrow Flight port (results and shuffle data are fetched from it).
    pub flight_port: u16,
    /// gRPC port (the scheduler sends tasks to it).
    pub grpc_port: u16,
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// Tasks run at once (0: one per core).
    pub concurrent_tasks: usize,
    /// Directory for shuffle files (default: a temporary directory).
    pub work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_s: u64,
    /// Tokenizers, classifiers and `[storage]`: the client's sources file.
    pub sources: SourcesOptions,
}

/// Every function a dapt session has (DataFusion's, Ballista's and dapt's, with these models'
/// tokenizers and classifiers) registered on `state`.
fn with_dapt_functions(mut state: SessionState, functions: &[Arc<ScalarUDF>]) -> SessionState {
    for function in functions {
        // Registering replaces a function of the same name; nothing to do with the old one.
        let _ = state.register_udf(Arc::clone(function));
    }
    state
}

fn dapt_functions(sources: &SourcesOptions) -> Result<Vec<Arc<ScalarUDF>>> {
    let models = dapt_sql::load_models(sources)?;
    Ok(dapt_sql::functions::functions_with_models(models)
        .into_iter()
        .map(Arc::new)
        .collect())
}

fn runtime(storage: &BTreeMap<String, String>) -> Result<Arc<RuntimeEnv>> {
    dapt_sql::stores::runtime_env(storage).map_err(|source| Error::DataFusion {
        what: "the object-store runtime".into(),
        source,
    })
}

/// Runs a Ballista scheduler whose sessions know dapt's functions and build object stores from table
/// URLs; returns when the server stops.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<()> {
    let runtime = runtime(&options.storage)?;
    // The scheduler plans; it needs the functions' signatures, not the models behind them.
    let functions = dapt_functions(&SourcesOptions::default())?;
    let mut config = SchedulerConfig::default()
        .with_hostname(options.external_host.clone().unwrap_or_else(|| {
            if options.bind.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                options.bind.ip().to_string()
            }
        }))
        .with_port(options.bind.port())
        .with_override_config_producer(Arc::new(|| SqlSession::config().upgrade_for_ballista()))
        .with_override_session_builder(Arc::new(move |config: SessionConfig| {
            let state = ballista_core::utils::default_session_builder(config)?;
            let state = SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(Arc::clone(&runtime))
                .build();
            Ok(with_dapt_functions(state, &functions))
        }));
    config.bind_host = options.bind.ip().to_string();
    config.executor_timeout_seconds = options.executor_timeout_s;
    config.expire_dead_executor_interval_seconds = (options.executor_timeout_s / 4).max(1);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|source| Error::Ballista {
            what: "the scheduler's cluster state".into(),
            source,
        })?;
    start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(|source| Error::Ballista {
            what: format!("the scheduler on {}", options.bind),
            source,
        })
}

/// Runs a Ballista executor that registers with the scheduler, runs tasks with dapt's functions
/// (`token_count` and `classify` with the sources file's models) and reads tables through object
/// stores built from their URLs; returns when the executor stops.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    let runtime = runtime(&options.sources.storage)?;
    // Every function a local session has (DataFusion's default features include the nested and
    // other function packages Ballista's default registry leaves out), then dapt's.
    let mut registry = BallistaFunctionRegistry::default();
    let local = SessionStateBuilder::new().with_default_features().build();
    for (name, function) in local.scalar_functions() {
        registry
            .scalar_functions
            .insert(name.clone(), Arc::clone(function));
    }
    for (name, function) in local.aggregate_functions() {
        registry
            .aggregate_functions
            .insert(name.clone(), Arc::clone(function));
    }
    for (name, function) in local.window_functions() {
        registry
            .window_functions
            .insert(name.clone(), Arc::clone(function));
    }
    for function in dapt_functions(&options.sources)? {
        registry
            .scalar_functions
            .insert(function.name().to_string(), function);
    }
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.0.clone(),
        scheduler_port: options.scheduler.1,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrent_tasks,
        work_dir: options.work_dir.clone(),
        executor_heartbeat_interval_seconds: options.heartbeat_s.max(1),
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(move |_config: &SessionConfig| {
            Ok(Arc::clone(&runtime))
        })),
        override_config_producer: Some(Arc::new(|| SqlSession::config().upgrade_for_ballista())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|source| Error::Ballista {
            what: format!(
                "the executor on {}:{} (scheduler {}:{})",
                options.bind_host, options.flight_port, options.scheduler.0, options.scheduler.1
            ),
            source,
        })
}
