//! The workstation side of tpr, as a library so that tests and benchmarks can
//! drive each part on its own. `main.rs` only parses arguments and runs.

pub mod cli;
pub mod envfile;
pub mod k8s;
pub mod outbound;
pub mod project_file;
pub mod report;
pub mod session_loop;
pub mod supervise;
pub mod tunnel;
pub mod up;
pub mod watch;
