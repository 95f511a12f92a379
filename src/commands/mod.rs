//! One module per subcommand.
pub mod classify;
pub mod dedup;
pub mod ingest;
pub mod run;
pub mod sql;
