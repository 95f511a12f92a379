//! One module per subcommand.
pub mod ingest;
pub mod run;
pub mod sql;
