//! The workstation side of tpr, as a library so that tests and benchmarks can
//! drive each part on its own. `main.rs` only parses arguments and runs.
pub mod tunnel;
