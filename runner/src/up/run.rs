//! `tpr up` from start to end: set up the intercepts, run the processes
//! until Ctrl-C, `tpr down` or (with `--once`) their exit, reconcile file
//! edits and lost sessions on the way, then end the sessions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tpr_schema::{LOCAL_FILE, Project};

use crate::k8s::{Cluster, ClusterOptions};
use crate::outbound::{self, Outbound};
use crate::session_loop::{self, SessionHandle, SessionOptions};
use crate::supervise::ProcessSpec;

use super::control::{self, Incoming, Request};
use super::event::{Events, UpEvent};
use super::interrupt::Interrupt;
use super::state::{StatePaths, pid_alive};
use super::{Manager, UpError, processes};

/// How `tpr up` runs.
pub struct UpOptions {
    /// The project file.
    pub file: PathBuf,
    /// End when a process exits, with its status.
    pub once: bool,
    /// Where what happens is told: people or programs (JSON lines).
    pub events: Events,
}

/// Connects to the cluster of `project` (its context; KUBECONFIG honoured).
pub async fn connect(project: &Project) -> Result<Cluster, UpError> {
    let cluster = Cluster::connect(&ClusterOptions {
        context: project.cluster.context.clone(),
        ..Default::default()
    })
    .await?;
    cluster.check().await?;
    Ok(cluster)
}

/// Refuses a second `tpr up` for the project; tells about a crashed one.
fn check_not_running(paths: &StatePaths, file: &Path, events: Events) -> Result<(), UpError> {
    let Some(state) = paths.read() else {
        return Ok(());
    };
    if pid_alive(state.pid) && state.pid != std::process::id() {
        return Err(UpError::AlreadyRunning {
            pid: state.pid,
            project: file.display().to_string(),
        });
    }
    events.emit(UpEvent::StaleSession { pid: state.pid });
    paths.remove();
    Ok(())
}

enum ToManager {
    Reload(Box<Project>),
    Control(Incoming),
    /// A process passed its readiness check.
    Ready(String),
}

/// Runs `tpr up`; returns the exit code. `interrupt` has listened for
/// Ctrl-C since the command started.
pub async fn up(
    project: Project,
    options: UpOptions,
    interrupt: Interrupt,
) -> Result<i32, UpError> {
    let events = options.events;
    let guard = interrupt.guard();
    events.emit(UpEvent::Validated {
        file: options.file.clone(),
        intercepts: project.intercepts.iter().map(|i| i.name.clone()).collect(),
        processes: project.processes.iter().map(|p| p.name.clone()).collect(),
    });
    let paths = StatePaths::for_project(&options.file)?;
    check_not_running(&paths, &options.file, events)?;
    // The outbound probe (a namespace and a TUN device, some 30 ms) runs
    // beside the start. A file that asks for outbound waits for it before
    // the cluster changes, so where it cannot be had nothing changes; by
    // default a failure only warns, and the start does not wait for it.
    let probe = {
        let (network, has_intercepts) = (project.network.clone(), !project.intercepts.is_empty());
        let state = outbound::state_path(&paths.file);
        tokio::task::spawn_blocking(move || Outbound::new(&network, has_intercepts, events, state))
    };
    let (outbound, probe, cluster) = if project.network.outbound == Some(true) {
        let (outbound, cluster) = tokio::join!(probe_result(probe), guard.run(connect(&project)));
        (outbound?, None, cluster)
    } else {
        (None, Some(probe), guard.run(connect(&project)).await)
    };
    let cluster = match cluster {
        Err(UpError::Interrupted) => return Ok(interrupt.code().unwrap_or(130)),
        other => other?,
    };
    let install_id = super::install_id::install_id()?;
    events.emit(UpEvent::Connected {
        context: cluster.context().to_owned(),
        server: cluster.url().to_owned(),
        install_id: install_id.clone(),
    });
    let mut manager = Manager::new(
        cluster,
        install_id,
        paths.clone(),
        options.file.clone(),
        events,
    )
    .with_guard(guard);
    manager.hold_until_ready(true);
    let applied = manager.apply(&project).await;
    manager.hold_until_ready(false);
    if let Err(e) = applied {
        manager.shutdown().await;
        return match interrupt.code() {
            // Interrupted: the error says what became of a rollout.
            Some(code) => {
                if !matches!(e, UpError::Interrupted) {
                    events.emit(UpEvent::Warning {
                        message: e.to_string(),
                    });
                }
                Ok(code)
            }
            None => Err(e),
        };
    }
    let outbound = match probe {
        Some(probe) => match probe_result(probe).await {
            Ok(o) => o,
            Err(e) => {
                manager.shutdown().await;
                return Err(e);
            }
        },
        None => outbound,
    };
    if let Some(o) = &outbound {
        o.set_channels(manager.egress_channels());
        if let Err(e) = o.prepare(&project).await {
            manager.shutdown().await;
            return Err(e.into());
        }
    }
    let envs = Arc::new(Mutex::new(manager.envs()));
    let specs = match specs_for(&project, &manager.envs(), outbound.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            manager.shutdown().await;
            return Err(e);
        }
    };
    let once = options.once || processes::stops_on_exit(&project);
    if project.processes.is_empty() {
        if once {
            manager.shutdown().await;
            return Ok(0);
        }
        events.emit(UpEvent::NoProcesses);
    }

    let (tx, rx) = mpsc::channel::<ToManager>(16);
    let (control_tx, mut control_rx) = mpsc::channel::<Incoming>(16);
    if let Err(e) = control::serve(&paths.socket, control_tx) {
        manager.shutdown().await;
        return Err(e);
    }
    let forward = tx.clone();
    let ready_tx = tx.clone();
    tokio::spawn(async move {
        while let Some(req) = control_rx.recv().await {
            if forward.send(ToManager::Control(req)).await.is_err() {
                break;
            }
        }
    });

    let (handle, control) = session_loop::control_channel();
    let mut session_options = SessionOptions::new()?;
    session_options.once = once;
    session_options.control = Some(control);
    session_options.stdout_to_stderr = events.is_json();
    session_options.project_files = vec![
        options.file.clone(),
        options
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(LOCAL_FILE),
    ];
    session_options.ignored_files = project
        .intercepts
        .iter()
        .filter_map(|i| i.env.file.clone())
        .chain([paths.file.clone(), paths.socket.clone()])
        .collect();

    let (stop, stopped) = tokio::sync::oneshot::channel();
    let manager_task = tokio::spawn(manage(
        manager,
        project.clone(),
        rx,
        stopped,
        handle.clone(),
        envs.clone(),
        events,
        outbound.clone(),
    ));
    let file = options.file.clone();
    let reload_envs = envs.clone();
    let reload_outbound = outbound.clone();
    let reload = move || {
        let project = tpr_schema::load(&file).map_err(render_load_error)?;
        let specs = specs_for(
            &project,
            &reload_envs.lock().unwrap_or_else(|e| e.into_inner()),
            reload_outbound.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let _ = tx.try_send(ToManager::Reload(Box::new(project)));
        Ok(specs)
    };
    // From here the supervisor handles Ctrl-C: its listeners exist before
    // the start-up's stop, so no signal falls between the two (one that
    // came during the last steps ends the run the usual way).
    session_options.signals = Some(session_loop::Signals::listen()?);
    if let Some(code) = interrupt.code() {
        drop(handle);
        let _ = stop.send(());
        let _ = manager_task.await;
        return Ok(code);
    }
    interrupt.disarm();
    let outcome = session_loop::run_session(specs, reload, session_options, |event| {
        events.emit(UpEvent::Process(event.clone()));
        if let session_loop::SessionEvent::Ready { name, .. } = event {
            let _ = ready_tx.try_send(ToManager::Ready(name.clone()));
        }
    })
    .await;
    drop(handle);
    let _ = stop.send(());
    let _ = manager_task.await;
    if let Some(o) = &outbound {
        o.remove_state();
    }
    Ok(outcome?.exit_code())
}

/// What the outbound probe found: outbound on, off, or not to be had.
async fn probe_result(
    probe: tokio::task::JoinHandle<Result<Option<Arc<Outbound>>, outbound::OutboundError>>,
) -> Result<Option<Arc<Outbound>>, UpError> {
    // The probe's thread only ends by returning or panicking.
    let result = probe
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Ok(result?)
}

/// The process specs, each in its outbound namespace when outbound is on.
fn specs_for(
    project: &Project,
    envs: &BTreeMap<String, BTreeMap<String, String>>,
    outbound: Option<&Outbound>,
) -> Result<Vec<ProcessSpec>, UpError> {
    let mut specs = processes::specs(project, envs)?;
    if let Some(o) = outbound {
        o.assign(project, &mut specs)?;
    }
    Ok(specs)
}

fn render_load_error(e: tpr_schema::LoadError) -> String {
    crate::report::render(&miette::Report::new(e))
}

/// The manager's loop: file reloads, control requests, lost sessions.
// One argument per thing the loop drives; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn manage(
    mut manager: Manager,
    initial: Project,
    mut rx: mpsc::Receiver<ToManager>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    handle: SessionHandle,
    envs: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    events: Events,
    outbound: Option<Arc<Outbound>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut project = Some(initial);
    // A new environment (an intercept came, went or reconnected to a new
    // pod) restarts the processes that take it.
    let publish = |manager: &Manager, project: &Option<Project>| {
        let now = manager.envs();
        let mut shared = envs.lock().unwrap_or_else(|e| e.into_inner());
        if *shared != now {
            *shared = now;
            if let Some(p) = project
                && let Ok(specs) = specs_for(p, &shared, outbound.as_deref())
            {
                handle.update(specs);
            }
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            msg = rx.recv() => match msg {
                None => break,
                Some(ToManager::Reload(p)) => {
                    match manager.apply(&p).await {
                        Ok(changed) => {
                            if let Some(o) = &outbound {
                                o.set_channels(manager.egress_channels());
                                if let Err(e) = o.prepare(&p).await {
                                    events.emit(UpEvent::ReconcileFailed { error: e.to_string() });
                                }
                            }
                            if changed {
                                events.emit(UpEvent::Reconciled);
                            }
                            project = Some(*p);
                            publish(&manager, &project);
                        }
                        Err(e) => events.emit(UpEvent::ReconcileFailed { error: e.to_string() }),
                    }
                }
                Some(ToManager::Ready(process)) => manager.process_ready(&process),
                Some(ToManager::Control((req, reply))) => {
                    let answer = match req {
                        Request::Status => Ok(serde_json::to_string(&manager.state()).expect("state serializes")),
                        Request::Leave(name) => match manager.leave(&name).await {
                            Ok(()) => {
                                // Its processes must not keep its env.
                                publish(&manager, &project);
                                Ok(format!("ended intercept {name}"))
                            }
                            Err(e) => Err(e.to_string()),
                        },
                        Request::RotatePreview(name) => {
                            manager.rotate_preview(&name).await.map_err(|e| e.to_string())
                        }
                        Request::Down => {
                            handle.shutdown(true);
                            Ok("stopping".into())
                        }
                    };
                    let _ = reply.send(answer);
                }
            },
            _ = tick.tick() => {
                if manager.check_links().await {
                    publish(&manager, &project);
                }
                // A reconnected agent is the one outbound dials through.
                if let Some(o) = &outbound {
                    o.set_channels(manager.egress_channels());
                    o.write_state();
                }
            }
        }
    }
    manager.shutdown().await;
}

/// The agent's Health answer: its sessions and active intercepts (with
/// their holders).
pub async fn agent_health(
    cluster: &Cluster,
    pod: &crate::k8s::AgentPod,
) -> Result<tpr_schema::proto::HealthResponse, UpError> {
    let channel = super::link::channel(cluster, pod).await?;
    let health = tpr_schema::proto::agent_client::AgentClient::new(channel)
        .health(tpr_schema::proto::HealthRequest {})
        .await
        .map_err(|status| {
            UpError::agent(
                pod,
                crate::tunnel::TunnelError::Call {
                    call: "Health",
                    status,
                },
            )
        })?;
    Ok(health.into_inner())
}
