//! Handing a torch command (`train`, `eval`, `run`, …) to `dapt-torch`: the same arguments, the same
//! process (exec), so launchers (`torchrun --no-python dapt train …`), signals and exit statuses see
//! one program.
//!
//! Where `dapt-torch` is: `$DAPT_TORCH_BIN` if set, else beside this executable. Under `cargo run`
//! (cargo's environment names this package) it is built first with the profile, target and features
//! of this executable — `cargo run` builds only `dapt` — which is a no-op when it is up to date.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::cli::TORCH_COMMANDS;

/// The arguments to hand over when the command line names a torch command (`dapt train …`,
/// `dapt help train`), else `None`.
pub fn torch_command() -> Option<Vec<OsString>> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let named = |i: usize| {
        args.get(i)
            .and_then(|a| a.to_str())
            .is_some_and(|a| TORCH_COMMANDS.iter().any(|(name, _)| *name == a))
    };
    let help = args.first().is_some_and(|a| a == "help");
    (named(0) || (help && named(1))).then_some(args)
}

/// Runs `dapt-torch` with `args` in place of this process; returns only on failure.
pub fn exec_torch(args: Vec<OsString>) -> anyhow::Error {
    match locate() {
        Ok(torch) => {
            tracing::debug!("handing over to {}", torch.display());
            exec(&torch, args)
        }
        Err(error) => error,
    }
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DAPT_TORCH_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "DAPT_TORCH_BIN names {}, which is not a file (the dapt-torch binary)",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding the dapt executable")?;
    let torch = exe.with_file_name(format!("dapt-torch{}", std::env::consts::EXE_SUFFIX));
    if run_by_cargo() {
        build_with_cargo(&exe)?;
    }
    if !torch.is_file() {
        bail!(
            "the commands that train, evaluate or serve models ({}) are in the binary dapt-torch, which \
             is not beside {} (build it with `cargo build --bin dapt-torch`, or set DAPT_TORCH_BIN)",
            TORCH_COMMANDS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "),
            exe.display()
        );
    }
    Ok(torch)
}

/// Whether cargo runs this executable for this package (`cargo run`), so that it can build
/// `dapt-torch`.
fn run_by_cargo() -> bool {
    std::env::var_os("CARGO").is_some()
        && std::env::var_os("CARGO_MANIFEST_DIR")
            .is_some_and(|dir| dir == env!("CARGO_MANIFEST_DIR"))
}

/// `cargo build --bin dapt-torch` with this executable's profile (its directory), target and
/// features, into its target directory.
fn build_with_cargo(exe: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").context("CARGO is not set")?;
    let profile_dir = exe.parent().context("the executable has no directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .context("the executable's directory has no name")?;
    let mut target_dir = profile_dir
        .parent()
        .context("the executable is not in a target directory")?;
    let mut command = Command::new(cargo);
    // Without the variables `cargo run` sets for the program it runs: cargo fingerprints some of
    // them (`ring`'s build script reads CARGO_MANIFEST_DIR and OUT_DIR), so the nested build would
    // otherwise see a changed environment and rebuild half of the dependencies, and the next plain
    // build undo it.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                &*key,
                "CARGO"
                    | "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(&*key);
        }
    }
    command.args(["build", "--quiet", "--bin", "dapt-torch", "--manifest-path"]);
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let triple = env!("DAPT_BUILD_TARGET");
    if target_dir.file_name().is_some_and(|name| name == triple) {
        command.args(["--target", triple]);
        target_dir = target_dir.parent().context("no target directory")?;
    }
    command.arg("--target-dir").arg(target_dir);
    command.args([
        "--features",
        if cfg!(feature = "cuda") {
            "torch,cuda"
        } else {
            "torch"
        },
    ]);
    tracing::debug!("building dapt-torch: {command:?}");
    let status = command
        .status()
        .context("running cargo to build dapt-torch")?;
    if !status.success() {
        bail!("`cargo build --bin dapt-torch` (the binary of the torch commands) failed: {status}");
    }
    Ok(())
}

#[cfg(unix)]
fn exec(torch: &Path, args: Vec<OsString>) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let error = Command::new(torch).args(args).exec();
    anyhow::Error::new(error).context(format!("running {}", torch.display()))
}

#[cfg(not(unix))]
fn exec(torch: &Path, args: Vec<OsString>) -> anyhow::Error {
    match Command::new(torch).args(args).status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(error) => anyhow::Error::new(error).context(format!("running {}", torch.display())),
    }
}
