//! End-to-end tests of the `dapt` binary, driven as a user drives it: a config file, the CLI, and the
//! files it writes, read back and checked.
mod common;
mod configs;
mod eval_cli;
mod ingest_cli;
mod mix_cli;
mod pack_cli;
mod pipeline;
mod sql_cli;
mod sweep_cli;
mod tokenizer_cli;
mod train_cli;
