//! One module per command that trains, evaluates or serves models: the commands of `dapt-torch`,
//! the binary that links LibTorch (`dapt` hands them to it).
pub mod eval;
pub mod model;
pub mod run;
pub mod sweep;
pub mod train;
