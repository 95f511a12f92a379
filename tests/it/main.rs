//! End-to-end tests of the `dapt` binary, driven as a user drives it: a config file, the CLI, and the
//! files it writes, read back and checked.
// The data-only build (no `torch`) leaves helpers of the torch tests unused.
#![cfg_attr(not(feature = "torch"), allow(dead_code, unused_imports))]
#[cfg(feature = "torch")]
mod adapt;
mod cluster_cli;
mod common;
mod configs;
mod dedup_cli;
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

/// `dapt` links no LibTorch even in the full build: a data command loads no LibTorch library, and
/// the torch commands are handed to `dapt-torch` (which links it) with their own help and errors.
#[cfg(feature = "torch")]
#[test]
fn dapt_links_no_libtorch_and_hands_torch_commands_to_dapt_torch() {
    let needed = |binary: &str| {
        let ldd = std::process::Command::new("ldd")
            .arg(binary)
            .output()
            .expect("ldd runs");
        assert!(ldd.status.success(), "{ldd:?}");
        String::from_utf8_lossy(&ldd.stdout).to_string()
    };
    let front = needed(env!("CARGO_BIN_EXE_dapt"));
    assert!(
        !front.contains("libtorch") && !front.contains("libc10"),
        "{front}"
    );
    assert!(needed(env!("CARGO_BIN_EXE_dapt-torch")).contains("libtorch_cpu"));

    // What the dynamic loader loads for a query: no LibTorch.
    let query = common::dapt_command()
        .args(["sql", "-e", "SELECT 40 + 2 AS answer"])
        .env("LD_DEBUG", "libs")
        .output()
        .expect("dapt runs");
    let loads = String::from_utf8_lossy(&query.stderr);
    assert!(query.status.success(), "{loads}");
    assert!(String::from_utf8_lossy(&query.stdout).contains("42"));
    assert!(loads.contains("libc.so"), "LD_DEBUG shows nothing: {loads}");
    // (Library names, not directories: LD_LIBRARY_PATH may name LibTorch's directory, whose name the
    // loader prints in its search paths.)
    assert!(
        !loads.contains("libtorch_cpu.so") && !loads.contains("libc10.so"),
        "{loads}"
    );

    // The top-level help lists both kinds of command; a torch command's help and its argument
    // errors come from dapt-torch.
    let help = common::dapt(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for name in ["sql", "pack", "train", "eval", "run"] {
        assert!(help.contains(&format!("\n  {name} ")), "{name}: {help}");
    }
    let train = common::dapt(&["train", "--help"]);
    let train_help = String::from_utf8_lossy(&train.stdout);
    assert!(
        train.status.success() && train_help.contains("--nproc"),
        "{train_help}"
    );
    let same = common::dapt(&["help", "train"]);
    assert_eq!(String::from_utf8_lossy(&same.stdout), train_help);
    let bad = common::dapt(&["eval", "--no-such-flag"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));

    // A DAPT_TORCH_BIN that names no file is an error that says so, before anything runs.
    let missing = common::dapt_command()
        .args(["train", "--help"])
        .env("DAPT_TORCH_BIN", "/nonexistent/dapt-torch")
        .output()
        .expect("dapt runs");
    assert!(!missing.status.success());
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(
        error.contains("DAPT_TORCH_BIN names /nonexistent/dapt-torch"),
        "{error}"
    );
}
