// Link-time settings shared by every package that links LibTorch (the `dapt` binary, `dapt-trainer`,
// `dapt-eval`; the latter two `include!` this file): an rpath to `$LIBTORCH/lib` so binaries and tests
// run without `LD_LIBRARY_PATH`, and on CUDA builds of LibTorch a forced link of `torch_cuda`, which the
// linker would otherwise drop as unused (leaving CUDA unavailable at run time).
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // The data-only `dapt` and `dapt-pipeline` (no `torch` feature) link no LibTorch.
    if std::env::var("CARGO_PKG_NAME").is_ok_and(|p| p == "dapt" || p == "dapt-pipeline")
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
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
