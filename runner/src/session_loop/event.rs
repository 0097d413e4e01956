//! What the session loop tells its caller, and how it reads for a user.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::supervise::describe_status;

/// Something that happened; `Display` gives the line to show the user,
/// `Serialize` the object `tpr up --output json` prints (the `event` names
/// are part of tpr's interface: README "Machine-readable output").
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SessionEvent {
    /// A process started (first start or restart).
    #[serde(rename = "process_started")]
    Started {
        #[serde(rename = "process")]
        name: String,
        pid: u32,
    },
    /// The process passed its readiness check (`[process.ready]`), this
    /// long after it started.
    #[serde(rename = "process_ready")]
    Ready {
        #[serde(rename = "process")]
        name: String,
        seconds: f64,
    },
    /// Files changed: the process is being restarted.
    #[serde(rename = "restarting")]
    Changed {
        #[serde(rename = "process")]
        name: String,
        paths: Vec<PathBuf>,
    },
    /// The process exited by itself.
    #[serde(rename = "process_exited")]
    Exited {
        #[serde(rename = "process")]
        name: String,
        #[serde(serialize_with = "status_json")]
        status: ExitStatus,
        /// `Some`: restarting after this delay; `None`: waiting for a change.
        #[serde(rename = "restart_in_ms", serialize_with = "millis_json")]
        restart_in: Option<Duration>,
    },
    /// The process could not be started; waiting for a change.
    #[serde(rename = "process_start_failed")]
    StartFailed {
        #[serde(rename = "process")]
        name: String,
        error: String,
    },
    /// Watching broke (e.g. the inotify limit hit on a new directory).
    WatchFailed {
        #[serde(rename = "process")]
        name: String,
        error: String,
    },
    /// A project file edit or a new environment was applied.
    #[serde(rename = "processes_reloaded")]
    Reloaded {
        cause: ReloadCause,
        started: Vec<String>,
        restarted: Vec<String>,
        stopped: Vec<String>,
    },
    /// A project file edit was invalid; the running state is kept.
    ReloadFailed { error: String },
    /// Shutting down; `graceful: false` once the grace period is skipped.
    Stopping { graceful: bool },
}

/// Why the processes were reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadCause {
    /// The project file changed.
    ProjectFile,
    /// The caller sent new specs ([`super::SessionHandle::update`]): for
    /// `tpr up`, an intercept's environment came, changed or went.
    Update,
}

/// `{"code": 3}` or `{"signal": "SIGKILL"}`.
fn status_json<S: Serializer>(status: &ExitStatus, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    use std::os::unix::process::ExitStatusExt;
    let mut map = s.serialize_map(Some(1))?;
    match (status.code(), status.signal()) {
        (Some(code), _) => map.serialize_entry("code", &code)?,
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| signal.to_string());
            map.serialize_entry("signal", &name)?
        }
        (None, None) => map.serialize_entry("code", &None::<i32>)?,
    }
    map.end()
}

fn millis_json<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .serialize(s)
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
            SessionEvent::Ready { name, seconds } => {
                write!(
                    f,
                    "process {name} is ready ({seconds:.2} s after its start)"
                )
            }
            SessionEvent::StartFailed { name: _, error } => {
                write!(f, "{error} (waiting for a change to retry)")
            }
            SessionEvent::WatchFailed { name, error } => {
                write!(f, "watching files for {name}: {error}")
            }
            SessionEvent::Reloaded {
                cause,
                started,
                restarted,
                stopped,
            } => {
                let what = match cause {
                    ReloadCause::ProjectFile => "project file reloaded",
                    ReloadCause::Update => "intercept environment changed",
                };
                if started.is_empty() && restarted.is_empty() && stopped.is_empty() {
                    return write!(f, "{what}: no process affected");
                }
                write!(f, "{what}:")?;
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
