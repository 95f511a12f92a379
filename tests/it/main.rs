//! End-to-end tests of the `dapt` binary, driven as a user drives it: a config file, the CLI, and the
//! files it writes, read back and checked.
// The data-only build (no `torch`) leaves helpers of the torch tests unused.
#![cfg_attr(not(feature = "torch"), allow(dead_code, unused_imports))]
#[cfg(feature = "torch")]
mod adapt;
mod common;
mod configs;
#[cfg(feature = "torch")]
mod eval_cli;
#[cfg(feature = "torch")]
mod generate_cli;
#[cfg(feature = "torch")]
mod generative_cli;
mod ingest_cli;
mod mix_cli;
#[cfg(feature = "torch")]
mod model_import;
mod pack_cli;
#[cfg(feature = "torch")]
mod pipeline;
#[cfg(feature = "torch")]
mod preference_cli;
mod sql_cli;
#[cfg(feature = "torch")]
mod sweep_cli;
mod tokenizer_cli;
#[cfg(feature = "torch")]
mod train_cli;

/// The data-only build (`--no-default-features`) links no LibTorch and offers no torch command.
#[cfg(not(feature = "torch"))]
#[test]
fn the_data_only_binary_needs_no_libtorch() {
    let ldd = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_dapt"))
        .output()
        .expect("ldd runs");
    let libraries = String::from_utf8_lossy(&ldd.stdout);
    assert!(ldd.status.success(), "{libraries}");
    assert!(!libraries.contains("libtorch"), "{libraries}");
    assert!(!libraries.contains("libc10"), "{libraries}");
    let help = common::dapt(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("ingest") && help.contains("pack") && help.contains("mix"),
        "{help}"
    );
    assert!(
        !help.contains("\n  train ") && !help.contains("\n  eval "),
        "{help}"
    );
}
