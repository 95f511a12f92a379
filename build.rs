// Link-time settings shared by every package that links LibTorch (the `dapt-torch` binary, `dapt-trainer`,
// `dapt-eval`; the latter two `include!` this file): an rpath to `$LIBTORCH/lib` so binaries and tests
// run without `LD_LIBRARY_PATH`, and on CUDA builds of LibTorch a forced link of `torch_cuda`, which the
// linker would otherwise drop as unused (leaving CUDA unavailable at run time).
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    if package == "dapt" {
        // `dapt` builds `dapt-torch` for this target under `cargo run` (src/launch.rs).
        println!(
            "cargo:rustc-env=DAPT_BUILD_TARGET={}",
            std::env::var("TARGET").unwrap_or_default()
        );
    }
    // The data-only `dapt` and `dapt-pipeline` (no `torch` feature) link no LibTorch.
    if (package == "dapt" || package == "dapt-pipeline")
        && std::env::var_os("CARGO_FEATURE_TORCH").is_none()
    {
        return;
    }
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup (see README.md)");
        return;
    };
    let lib = Path::new(&libtorch).join("lib");
    // In the `dapt` package the `dapt` binary links no LibTorch (it hands torch commands to
    // `dapt-torch`): the settings go to `dapt-torch`, tests and benches only.
    let link_arg = |arg: &str| {
        if package == "dapt" {
            println!("cargo:rustc-link-arg-bin=dapt-torch={arg}");
            println!("cargo:rustc-link-arg-tests={arg}");
            println!("cargo:rustc-link-arg-benches={arg}");
        } else {
            println!("cargo:rustc-link-arg={arg}");
        }
    };
    link_arg(&format!("-Wl,-rpath,{}", lib.display()));
    if lib.join("libtorch_cuda.so").exists() {
        link_arg("-Wl,--no-as-needed");
        link_arg("-ltorch_cuda");
        link_arg("-Wl,--as-needed");
    }
}
