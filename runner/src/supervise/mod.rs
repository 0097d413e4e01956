//! Process supervision: each local process runs under a small shim (see
//! [`shim`]) in its own process group, is stopped with a signal and a grace
//! period, then SIGKILL, and never outlives tpr.

mod env;
mod process;
mod shim;
mod spec;

use std::path::PathBuf;

pub use env::{EnvFilter, env_merge, own_env};
pub use process::{Output, Running, describe_status, wait_child};
pub use shim::{SHIM_ARG, shim_main_if_requested};
pub use spec::{Backoff, ProcessSpec, parse_signal};

/// What can go wrong starting or supervising a local process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An include/exclude pattern for the imported env is not a valid glob.
    #[error("invalid env pattern `{pattern}`: {source}")]
    EnvPattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    /// The working directory does not exist.
    #[error("process {name}: working directory {} does not exist; create it or fix `workdir`", path.display())]
    Workdir { name: String, path: PathBuf },
    /// The command is empty.
    #[error("process {name}: the command is empty; give the program to run")]
    EmptyCommand { name: String },
    /// The program is not on the process's PATH (or not executable).
    #[error(
        "process {name}: program `{program}` not found on its PATH or not executable; install it or fix the command"
    )]
    ProgramNotFound { name: String, program: String },
    /// Forking the shim failed (out of processes or memory).
    #[error("process {name}: cannot start: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a process with this pid is alive (and not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}
