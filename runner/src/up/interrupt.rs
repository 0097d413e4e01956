//! Ctrl-C and SIGTERM while `tpr up` starts: from its first instruction
//! until the process supervisor takes the signals over. The first signal
//! cancels the start-up: a rollout under way stops and its template is
//! rolled back, waits end, and `tpr up` exits with 130 (SIGINT) or 143
//! (SIGTERM) after ending what it opened. A second signal exits at once and
//! says what may be left and the command that cleans it.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::UpError;
use super::event::{Events, UpEvent};
use crate::session_loop::SessionEvent;

/// The start-up's signal handler; dropped (or [`disarmed`](Self::disarm))
/// when the supervisor takes over.
pub struct Interrupt {
    token: CancellationToken,
    state: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// The exit code of the first signal.
    code: Option<i32>,
    /// What a hard stop now would leave, and how to clean it.
    leftover: Option<String>,
}

/// What the start-up's steps hold: they stop when it is cancelled, and say
/// what a hard stop would leave.
#[derive(Clone)]
pub struct StartGuard {
    token: CancellationToken,
    state: Arc<Mutex<Shared>>,
}

impl Interrupt {
    /// Starts listening for SIGINT and SIGTERM.
    pub fn listen(events: Events) -> Result<Self, UpError> {
        let io = |source| UpError::Io {
            what: "cannot listen for Ctrl-C".into(),
            source,
        };
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        let token = CancellationToken::new();
        let state = Arc::new(Mutex::new(Shared::default()));
        let (t, s) = (token.clone(), state.clone());
        let task = tokio::spawn(async move {
            loop {
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                let mut shared = s.lock().unwrap_or_else(|e| e.into_inner());
                if shared.code.is_none() {
                    shared.code = Some(code);
                    drop(shared);
                    events.emit(UpEvent::Process(SessionEvent::Stopping { graceful: true }));
                    t.cancel();
                    continue;
                }
                events.emit(UpEvent::Process(SessionEvent::Stopping { graceful: false }));
                let left = shared.leftover.clone();
                if let Some(left) = left {
                    events.emit(UpEvent::Warning { message: left });
                }
                events.emit(UpEvent::Stopped { exit_code: code });
                std::process::exit(code);
            }
        });
        Ok(Interrupt { token, state, task })
    }

    /// The handle the start-up's steps hold.
    pub fn guard(&self) -> StartGuard {
        StartGuard {
            token: self.token.clone(),
            state: self.state.clone(),
        }
    }

    /// The exit code of the signal that cancelled the start-up, if one did.
    pub fn code(&self) -> Option<i32> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).code
    }

    /// Stops listening: the supervisor handles the signals from now on.
    pub fn disarm(self) {
        self.task.abort();
    }
}

impl StartGuard {
    /// A guard that is never cancelled (commands other than `tpr up`).
    pub fn none() -> Self {
        StartGuard {
            token: CancellationToken::new(),
            state: Arc::default(),
        }
    }

    /// The token a rollout watches.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Fails with [`UpError::Interrupted`] once cancelled.
    pub fn check(&self) -> Result<(), UpError> {
        if self.is_cancelled() {
            return Err(UpError::Interrupted);
        }
        Ok(())
    }

    /// Runs `step` unless cancelled first: for steps that change nothing
    /// (connecting, waiting for a pod), which may simply be dropped.
    pub async fn run<T>(
        &self,
        step: impl Future<Output = Result<T, UpError>>,
    ) -> Result<T, UpError> {
        tokio::select! {
            biased;
            _ = self.token.cancelled() => Err(UpError::Interrupted),
            r = step => r,
        }
    }

    /// Says what a hard stop during the next step would leave (`None`
    /// once it is done).
    pub fn leftover(&self, what: Option<String>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leftover = what;
    }
}
