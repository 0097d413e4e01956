//! The local side of `tpr up`: runs the processes, restarts each one when
//! its files change, re-reads the project file when it changes, and stops
//! everything on Ctrl-C (a second one skips the grace period) or SIGTERM.
//!
//! The loop owns every process handle; dropping the future (an error or a
//! panic elsewhere in tpr) closes the shims' control pipes and the shims
//! kill their process trees, so no path out of tpr leaves one running.

mod control;
mod event;
mod ready;
mod reconcile;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::supervise::{Output, ProcessSpec, Running, pid_alive, wait_child};
use crate::watch::{WatchError, WatchSpec, Watcher};

pub use control::{SessionControl, SessionError, SessionHandle, SessionOptions, control_channel};
pub use event::{Outcome, ReloadCause, SessionEvent};
pub use ready::Readiness;

use control::Control;

enum Msg {
    Changed {
        name: String,
        watch_id: u64,
        result: Result<Vec<PathBuf>, WatchError>,
    },
    ProjectChanged(Result<Vec<PathBuf>, WatchError>),
    Exited {
        name: String,
        run_id: u64,
        status: ExitStatus,
    },
    BackoffDue {
        name: String,
        run_id: u64,
    },
    Ready {
        name: String,
        run_id: u64,
        after: Duration,
    },
}

/// What to do when a stopping process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Restart,
    Remove,
}

struct Slot {
    spec: ProcessSpec,
    /// Generation of the current (or last) run; stale messages are dropped.
    run_id: u64,
    watch_id: u64,
    watcher: Option<Watcher>,
    running: Option<Running>,
    /// The next run, started gated while the current one stops.
    next: Option<Running>,
    /// Set while a stop we asked for is in progress.
    after_stop: Option<AfterStop>,
    /// Quick exits in a row, for the backoff.
    attempts: u32,
}

/// Runs `specs` until Ctrl-C, SIGTERM, a shutdown request or, with `once`,
/// the first exit. `reload` re-reads the project file: `Ok` with the new
/// specs, or `Err` with the message to show (the state is then kept).
/// `on_event` receives everything worth telling the user.
pub async fn run_session<R, E>(
    specs: Vec<ProcessSpec>,
    reload: R,
    options: SessionOptions,
    on_event: E,
) -> Result<Outcome, SessionError>
where
    R: FnMut() -> Result<Vec<ProcessSpec>, String>,
    E: FnMut(&SessionEvent),
{
    let mut session = Session::new(options, reload, on_event)?;
    session.start(specs)?;
    session.run().await
}

struct Session<R, E> {
    options: SessionOptions,
    reload: R,
    on_event: E,
    slots: BTreeMap<String, Slot>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    next_id: u64,
    _project_watcher: Option<Watcher>,
    shutdown: Option<Outcome>,
    /// Made before any process starts: a signal is never lost in between.
    signals: Option<Signals>,
}

/// The session's SIGINT and SIGTERM listeners. A signal delivered while no
/// listener exists is lost (tokio keeps its handler installed), so whoever
/// hands the signals over makes these first and stops listening after.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening.
    pub fn listen() -> Result<Self, SessionError> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(SessionError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(SessionError::Signals)?,
        })
    }
}

impl<R, E> Session<R, E>
where
    R: FnMut() -> Result<Vec<ProcessSpec>, String>,
    E: FnMut(&SessionEvent),
{
    fn new(mut options: SessionOptions, reload: R, on_event: E) -> Result<Self, SessionError> {
        let signals = match options.signals.take() {
            Some(s) => Some(s),
            None if options.handle_signals => Some(Signals::listen()?),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let project_watcher = if options.project_files.is_empty() {
            None
        } else {
            let project_tx = tx.clone();
            let spec = WatchSpec {
                paths: options.project_files.clone(),
                patterns_root: PathBuf::from("/"),
                patterns: Vec::new(),
                ignored_files: Vec::new(),
                debounce: Duration::from_millis(50),
                max_wait: Duration::from_secs(1),
                allow_missing_files: true,
            };
            let watcher = Watcher::start(&spec, move |result| {
                let _ = project_tx.send(Msg::ProjectChanged(result));
            })
            .map_err(SessionError::ProjectWatch)?;
            Some(watcher)
        };
        Ok(Session {
            options,
            reload,
            on_event,
            slots: BTreeMap::new(),
            tx,
            rx,
            next_id: 0,
            _project_watcher: project_watcher,
            shutdown: None,
            signals,
        })
    }

    fn start(&mut self, specs: Vec<ProcessSpec>) -> Result<(), SessionError> {
        check_names(&specs)?;
        for spec in specs {
            let (watch_id, watcher) =
                self.watcher_for(&spec)
                    .map_err(|source| SessionError::Watch {
                        name: spec.name.clone(),
                        source,
                    })?;
            self.slots.insert(
                spec.name.clone(),
                Slot {
                    spec,
                    run_id: 0,
                    watch_id,
                    watcher,
                    running: None,
                    next: None,
                    after_stop: None,
                    attempts: 0,
                },
            );
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.spawn(&name);
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<Outcome, SessionError> {
        let (mut interrupts, mut terminates) = match self.signals.take() {
            Some(s) => (Some(s.interrupt), Some(s.terminate)),
            None => (None, None),
        };
        let mut control = self.options.control.take();
        loop {
            if let Some(outcome) = &self.shutdown
                && self.slots.values().all(|s| s.running.is_none())
            {
                return Ok(outcome.clone());
            }
            tokio::select! {
                Some(msg) = self.rx.recv() => self.handle(msg),
                Some(()) = recv_signal(&mut interrupts) => self.stop_all(Outcome::Interrupted),
                Some(()) = recv_signal(&mut terminates) => self.stop_all(Outcome::Terminated),
                Some(request) = recv_control(&mut control) => match request {
                    Control::Update(specs) => self.reconcile(specs, ReloadCause::Update),
                    Control::Shutdown { graceful: true } => self.stop_all(Outcome::Shutdown),
                    Control::Shutdown { graceful: false } => {
                        self.stop_all(Outcome::Shutdown);
                        self.stop_all(Outcome::Shutdown);
                    }
                },
            }
        }
    }

    fn emit(&mut self, event: SessionEvent) {
        (self.on_event)(&event);
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn watch_spec(&self, spec: &ProcessSpec) -> WatchSpec {
        let mut ignored_files = self.options.ignored_files.clone();
        ignored_files.extend(self.options.project_files.iter().cloned());
        WatchSpec {
            paths: spec.watch.iter().map(|p| spec.workdir.join(p)).collect(),
            patterns_root: spec.workdir.clone(),
            patterns: spec.ignore.clone(),
            ignored_files,
            debounce: spec.debounce,
            max_wait: spec.max_wait,
            allow_missing_files: false,
        }
    }

    /// A watcher sending tagged changes for `spec`, if it watches anything.
    fn watcher_for(&mut self, spec: &ProcessSpec) -> Result<(u64, Option<Watcher>), WatchError> {
        let watch_id = self.next_id();
        if spec.watch.is_empty() {
            return Ok((watch_id, None));
        }
        let tx = self.tx.clone();
        let name = spec.name.clone();
        let watcher = Watcher::start(&self.watch_spec(spec), move |result| {
            let _ = tx.send(Msg::Changed {
                name: name.clone(),
                watch_id,
                result,
            });
        })?;
        Ok((watch_id, Some(watcher)))
    }

    fn output(&self) -> Output {
        Output {
            prefixed: self.slots.len() > 1,
            stdout_to_stderr: self.options.stdout_to_stderr,
        }
    }

    /// Starts `name`, through its prepared next run if there is one.
    fn spawn(&mut self, name: &str) {
        if self.shutdown.is_some() {
            return;
        }
        let run_id = self.next_id();
        let output = self.output();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.run_id = run_id;
        let started = match slot.next.take() {
            Some(mut prepared) => {
                prepared.go();
                Ok(prepared)
            }
            None => Running::spawn(&slot.spec, &self.options.shim_exe, output, false),
        };
        match started {
            Ok(mut running) => {
                let pid = running.pid;
                if let Some(child) = running.take_child() {
                    let tx = self.tx.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        let status = wait_child(child).await;
                        let _ = tx.send(Msg::Exited {
                            name,
                            run_id,
                            status,
                        });
                    });
                }
                if let Some(check) = slot.spec.ready.clone() {
                    let tx = self.tx.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        let alive = || !tx.is_closed() && pid_alive(pid);
                        if let Some(after) = ready::wait_ready(&check, alive).await {
                            let _ = tx.send(Msg::Ready {
                                name,
                                run_id,
                                after,
                            });
                        }
                    });
                }
                slot.running = Some(running);
                self.emit(SessionEvent::Started {
                    name: name.to_string(),
                    pid,
                });
            }
            Err(err) => {
                self.emit(SessionEvent::StartFailed {
                    name: name.to_string(),
                    error: err.to_string(),
                });
                if self.options.once {
                    self.shutdown = Some(Outcome::Exited {
                        name: name.to_string(),
                        status: ExitStatus::from_raw(127 << 8),
                    });
                    self.stop_everything(true);
                }
            }
        }
    }

    /// Starts the next run of `name` gated, so that the restart after the
    /// current run's exit costs one exec, not a shim start too. A failure
    /// here is left for [`Session::spawn`] to report.
    fn prepare(&mut self, name: &str) {
        let output = self.output();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if self.shutdown.is_none() && slot.next.is_none() {
            slot.next = Running::spawn(&slot.spec, &self.options.shim_exe, output, true).ok();
        }
    }

    /// Asks a running process to stop gracefully, then `after` it.
    fn stop(&mut self, name: &str, after: AfterStop) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.after_stop.is_none()
            && let Some(running) = slot.running.as_mut()
        {
            running.stop(slot.spec.stop_signal, slot.spec.stop_timeout);
        }
        if slot.after_stop != Some(AfterStop::Remove) {
            slot.after_stop = Some(after);
        }
        match slot.after_stop {
            Some(AfterStop::Restart) => self.prepare(name),
            _ => slot.next = None,
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Ready {
                name,
                run_id,
                after,
            } => {
                let current = self
                    .slots
                    .get(&name)
                    .is_some_and(|s| s.run_id == run_id && s.running.is_some());
                if current && self.shutdown.is_none() {
                    self.emit(SessionEvent::Ready {
                        name,
                        seconds: (after.as_secs_f64() * 100.0).round() / 100.0,
                    });
                }
            }
            Msg::Changed {
                name,
                watch_id,
                result,
            } => {
                let current = self
                    .slots
                    .get(&name)
                    .is_some_and(|s| s.watch_id == watch_id);
                if !current || self.shutdown.is_some() {
                    return;
                }
                match result {
                    Ok(paths) => self.changed(&name, paths),
                    Err(err) => self.emit(SessionEvent::WatchFailed {
                        name,
                        error: err.to_string(),
                    }),
                }
            }
            Msg::ProjectChanged(result) => {
                if self.shutdown.is_some() {
                    return;
                }
                match result {
                    Ok(_) => match (self.reload)() {
                        Ok(specs) => self.reconcile(specs, ReloadCause::ProjectFile),
                        Err(error) => self.emit(SessionEvent::ReloadFailed { error }),
                    },
                    Err(err) => self.emit(SessionEvent::WatchFailed {
                        name: "project file".into(),
                        error: err.to_string(),
                    }),
                }
            }
            Msg::Exited {
                name,
                run_id,
                status,
            } => self.exited(&name, run_id, status),
            Msg::BackoffDue { name, run_id } => {
                let due = self
                    .slots
                    .get(&name)
                    .is_some_and(|s| s.run_id == run_id && s.running.is_none());
                if due && self.shutdown.is_none() {
                    self.spawn(&name);
                }
            }
        }
    }

    fn changed(&mut self, name: &str, paths: Vec<PathBuf>) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.attempts = 0;
        if slot.running.is_some() {
            if slot.after_stop.is_none() {
                self.emit(SessionEvent::Changed {
                    name: name.to_string(),
                    paths,
                });
            }
            self.stop(name, AfterStop::Restart);
        } else {
            self.spawn(name);
        }
    }

    fn exited(&mut self, name: &str, run_id: u64, status: ExitStatus) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.run_id != run_id {
            return;
        }
        let ran_for = slot
            .running
            .take()
            .map(|r| r.started.elapsed())
            .unwrap_or_default();
        if self.shutdown.is_some() {
            return;
        }
        match slot.after_stop.take() {
            Some(AfterStop::Restart) => self.spawn(name),
            Some(AfterStop::Remove) => {
                self.slots.remove(name);
            }
            None => {
                // Exited by itself.
                if self.options.once {
                    self.emit(SessionEvent::Exited {
                        name: name.to_string(),
                        status,
                        restart_in: None,
                    });
                    self.shutdown = Some(Outcome::Exited {
                        name: name.to_string(),
                        status,
                    });
                    self.stop_everything(true);
                    return;
                }
                let restart_in = slot.spec.restart_on_exit.map(|backoff| {
                    if ran_for > backoff.max {
                        slot.attempts = 0;
                    }
                    let delay = backoff.delay(slot.attempts);
                    slot.attempts += 1;
                    delay
                });
                if let Some(delay) = restart_in {
                    let tx = self.tx.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Msg::BackoffDue { name, run_id });
                    });
                }
                self.emit(SessionEvent::Exited {
                    name: name.to_string(),
                    status,
                    restart_in,
                });
            }
        }
    }

    /// First call: graceful stop of everything. Second: kill at once.
    fn stop_all(&mut self, outcome: Outcome) {
        let graceful = self.shutdown.is_none();
        if graceful {
            self.shutdown = Some(outcome);
        }
        self.emit(SessionEvent::Stopping { graceful });
        self.stop_everything(graceful);
    }

    fn stop_everything(&mut self, graceful: bool) {
        for slot in self.slots.values_mut() {
            slot.watcher = None;
            slot.next = None;
            if let Some(running) = slot.running.as_mut() {
                if graceful {
                    running.stop(slot.spec.stop_signal, slot.spec.stop_timeout);
                } else {
                    running.kill();
                }
            }
        }
    }
}

fn check_names(specs: &[ProcessSpec]) -> Result<(), SessionError> {
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        if !seen.insert(spec.name.as_str()) {
            return Err(SessionError::DuplicateName(spec.name.clone()));
        }
    }
    Ok(())
}

async fn recv_signal(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_control(control: &mut Option<SessionControl>) -> Option<Control> {
    match control {
        Some(SessionControl(rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}
