//! How the session is configured and controlled from outside.

use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::supervise::ProcessSpec;
use crate::watch::WatchError;

/// How the session runs.
#[derive(Debug)]
pub struct SessionOptions {
    /// The binary that acts as the supervisor shim: tpr itself by default
    /// (its `main` calls `supervise::shim_main_if_requested` first).
    pub shim_exe: PathBuf,
    /// Return when a process exits, with its status (`tpr up --once`).
    pub once: bool,
    /// telepresence.toml and telepresence.local.toml: a change calls the
    /// reload callback; never a restart trigger by themselves.
    pub project_files: Vec<PathBuf>,
    /// Files tpr writes itself (the env file): never a restart trigger.
    pub ignored_files: Vec<PathBuf>,
    /// Handle SIGINT and SIGTERM (off for callers that do it themselves and
    /// use [`SessionHandle`]).
    pub handle_signals: bool,
    /// Where updates and shutdown requests come from, besides signals.
    pub control: Option<SessionControl>,
    /// Send the processes' stdout to tpr's stderr, keeping tpr's stdout
    /// for machine-readable output (`tpr up --output json`).
    pub stdout_to_stderr: bool,
    /// SIGINT and SIGTERM listeners made before the session starts (by a
    /// caller that handled the signals itself until then); else the
    /// session makes its own.
    pub signals: Option<super::Signals>,
}

impl SessionOptions {
    /// Defaults: tpr itself as the shim, signals handled, not `once`.
    pub fn new() -> Result<Self, SessionError> {
        // /proc/self/exe rather than the path: it still runs this very
        // binary after an upgrade replaced or deleted the file.
        let own = PathBuf::from("/proc/self/exe");
        if !own.exists() {
            let err = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "/proc/self/exe is missing (is /proc mounted?)",
            );
            return Err(SessionError::OwnBinary(err));
        }
        Ok(SessionOptions {
            shim_exe: own,
            once: false,
            project_files: Vec::new(),
            ignored_files: Vec::new(),
            handle_signals: true,
            control: None,
            stdout_to_stderr: false,
            signals: None,
        })
    }
}

/// Errors that end a session before or instead of running.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// tpr cannot find its own binary to start the supervisor shim.
    #[error("cannot find tpr's own executable to supervise processes: {0}")]
    OwnBinary(#[source] std::io::Error),
    /// Two processes share a name.
    #[error("two processes are named `{0}`; give each a unique name")]
    DuplicateName(String),
    /// Watching could not start (a missing path, the inotify limit...).
    #[error("process {name}: {source}")]
    Watch {
        name: String,
        #[source]
        source: WatchError,
    },
    /// Watching the project file could not start.
    #[error("watching the project file: {0}")]
    ProjectWatch(#[source] WatchError),
    /// Signal handlers could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Sends updates to a running session (e.g. a new imported env).
#[derive(Debug, Clone)]
pub struct SessionHandle(mpsc::UnboundedSender<Control>);

/// The receiving end, given to [`SessionOptions::control`].
#[derive(Debug)]
pub struct SessionControl(pub(super) mpsc::UnboundedReceiver<Control>);

/// A handle and its receiver.
pub fn control_channel() -> (SessionHandle, SessionControl) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SessionHandle(tx), SessionControl(rx))
}

impl SessionHandle {
    /// Reconciles to `specs` as for a valid project file edit.
    pub fn update(&self, specs: Vec<ProcessSpec>) {
        let _ = self.0.send(Control::Update(specs));
    }

    /// Stops everything; `graceful: false` skips the grace period.
    pub fn shutdown(&self, graceful: bool) {
        let _ = self.0.send(Control::Shutdown { graceful });
    }
}

#[derive(Debug)]
pub(super) enum Control {
    Update(Vec<ProcessSpec>),
    Shutdown { graceful: bool },
}
