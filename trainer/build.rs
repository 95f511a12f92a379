// The shared LibTorch link settings; the c10d shim for data-parallel training and the per-device
// autocast switch (always); and (feature
// `cuda`) the variable-length flash-attention shim.
mod libtorch {
    include!("../build.rs");
}

use std::path::{Path, PathBuf};

/// A C++ build against LibTorch's headers, as LibTorch itself was built (C++17, the new ABI).
fn shim(libtorch: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1");
    build
}

fn main() {
    libtorch::main();
    println!("cargo:rerun-if-changed=csrc/flash_varlen.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let root = PathBuf::from(libtorch);
    // ProcessGroupGloo.hpp includes gloo's headers, which LibTorch does not ship: Debian's
    // libgloo-dev has them (scripts/setup installs it), or GLOO_INCLUDE_DIR names a directory that
    // holds `gloo/`.
    let gloo = std::env::var("GLOO_INCLUDE_DIR")
        .map_or_else(|_| PathBuf::from("/usr/include"), PathBuf::from);
    if !gloo.join("gloo/config.h").exists() {
        panic!(
            "gloo's headers are not in {}: run scripts/setup (it installs Debian's libgloo-dev), \
             or set GLOO_INCLUDE_DIR to a directory that holds gloo/",
            gloo.display()
        );
    }
    let mut dist = shim(&root);
    dist.define("USE_C10D_GLOO", None);
    if gloo.as_path() != Path::new("/usr/include") {
        dist.include(&gloo);
    }
    dist.file("csrc/dist.cpp").compile("dapt_dist");
    shim(&root)
        .file("csrc/autocast.cpp")
        .compile("dapt_autocast");
    #[cfg(feature = "cuda")]
    shim(&root)
        .file("csrc/flash_varlen.cpp")
        .compile("dapt_flash_varlen");
    // The shims call into LibTorch: link it after them.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!(
        "cargo:rustc-link-search=native={}",
        root.join("lib").display()
    );
}
