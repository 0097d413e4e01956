//! What the session loop tells its caller, and how it reads for a user.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::supervise::describe_status;

/// Something that happened; `Display` gives the line to show the user.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A process started (first start or restart).
    Started { name: String, pid: u32 },
    /// Files changed: the process is being restarted.
    Changed { name: String, paths: Vec<PathBuf> },
    /// The process exited by itself.
    Exited {
        name: String,
        status: ExitStatus,
        /// `Some`: restarting after this delay; `None`: waiting for a change.
        restart_in: Option<Duration>,
    },
    /// The process could not be started; waiting for a change.
    StartFailed { name: String, error: String },
    /// Watching broke (e.g. the inotify limit hit on a new directory).
    WatchFailed { name: String, error: String },
    /// A project file edit was applied.
    Reloaded {
        started: Vec<String>,
        restarted: Vec<String>,
        stopped: Vec<String>,
    },
    /// A project file edit was invalid; the running state is kept.
    ReloadFailed { error: String },
    /// Shutting down; `graceful: false` once the grace period is skipped.
    Stopping { graceful: bool },
}

impl fmt::Display for SessionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEvent::Started { name, pid } => write!(f, "process {name} started (pid {pid})"),
            SessionEvent::Changed { name, paths } => {
                let first = paths
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                match paths.len() {
                    0 | 1 => write!(f, "{first} changed: restarting {name}"),
                    n => write!(f, "{first} and {} more changed: restarting {name}", n - 1),
                }
            }
            SessionEvent::Exited {
                name,
                status,
                restart_in,
            } => {
                let status = describe_status(*status);
                match restart_in {
                    None => write!(
                        f,
                        "process {name} exited with {status} (waiting for a change to restart)"
                    ),
                    Some(delay) => write!(
                        f,
                        "process {name} exited with {status} (restarting in {} ms)",
                        delay.as_millis()
                    ),
                }
            }
            SessionEvent::StartFailed { name: _, error } => {
                write!(f, "{error} (waiting for a change to retry)")
            }
            SessionEvent::WatchFailed { name, error } => {
                write!(f, "watching files for {name}: {error}")
            }
            SessionEvent::Reloaded {
                started,
                restarted,
                stopped,
            } => {
                if started.is_empty() && restarted.is_empty() && stopped.is_empty() {
                    return write!(f, "project file reloaded: no process affected");
                }
                write!(f, "project file reloaded:")?;
                for (verb, names) in [
                    ("started", started),
                    ("restarted", restarted),
                    ("stopped", stopped),
                ] {
                    if !names.is_empty() {
                        write!(f, " {verb} {}", names.join(", "))?;
                    }
                }
                Ok(())
            }
            SessionEvent::ReloadFailed { error } => {
                write!(
                    f,
                    "project file not applied, still running the previous version: {error}"
                )
            }
            SessionEvent::Stopping { graceful: true } => {
                write!(f, "stopping (press Ctrl-C again to stop at once)")
            }
            SessionEvent::Stopping { graceful: false } => write!(f, "stopping at once"),
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ctrl-C.
    Interrupted,
    /// SIGTERM.
    Terminated,
    /// Asked through [`super::SessionHandle::shutdown`].
    Shutdown,
    /// In `once` mode: this process exited (or could not start: 127).
    Exited { name: String, status: ExitStatus },
}

impl Outcome {
    /// The exit code tpr should end with: the process's status in `once`
    /// mode (128+N for a signal, as shells do), 130/143 for Ctrl-C/SIGTERM.
    pub fn exit_code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Outcome::Interrupted => 130,
            Outcome::Terminated => 143,
            Outcome::Shutdown => 0,
            Outcome::Exited { status, .. } => status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1),
        }
    }
}
