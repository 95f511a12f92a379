// The shared LibTorch link settings, plus (feature `cuda`) the variable-length flash-attention shim.
mod libtorch {
    include!("../build.rs");
}

fn main() {
    libtorch::main();
    println!("cargo:rerun-if-changed=csrc/flash_varlen.cpp");
    #[cfg(feature = "cuda")]
    {
        let root = std::path::PathBuf::from(
            std::env::var("LIBTORCH").expect("LIBTORCH must be set for the cuda feature"),
        );
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .file("csrc/flash_varlen.cpp")
            .compile("dapt_flash_varlen");
    }
}
