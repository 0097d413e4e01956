//! What `tpr up` tells its user, in one vocabulary. Every happening is an
//! [`UpEvent`]; [`Events`] shows it either as today's human line (stdout
//! for the results, `tpr: ...` on stderr for the rest) or, with
//! `--output json`, as one JSON object per line on stdout (NDJSON), tagged
//! by its `event` field. The names and fields are an interface (README,
//! "Machine-readable output"): add, never rename.
//!
//! Env values never appear in an event (they are secrets): names and counts
//! only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::k8s::Workload;
use crate::session_loop::SessionEvent;

/// Something `tpr up` did or saw.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum UpEvent {
    /// The project file is valid (nothing in the cluster changed yet).
    Validated {
        file: PathBuf,
        intercepts: Vec<String>,
        processes: Vec<String>,
    },
    /// The cluster answers.
    Connected {
        context: String,
        server: String,
        install_id: String,
    },
    /// A previous `tpr up` of this project ended without cleaning up.
    StaleSession { pid: u32 },
    /// Work on a workload starts: its agent is installed unless present.
    Installing {
        #[serde(flatten)]
        workload: WorkloadRef,
    },
    /// The current state of a slow step (a rollout), replacing the last.
    Progress { message: String },
    /// The agent was installed (the workload's pods were replaced).
    Installed {
        #[serde(flatten)]
        workload: WorkloadRef,
        seconds: f64,
    },
    /// An intercept is registered with the agent: traffic comes here.
    InterceptActive {
        name: String,
        #[serde(flatten)]
        workload: WorkloadRef,
        /// `tcp` or `http`.
        mechanism: &'static str,
        ports: Vec<InterceptPort>,
        /// http: the conditions a request must meet (all of them).
        headers: Vec<HeaderRule>,
        path_prefix: Option<String>,
        /// The pods that route here: every ready pod of the workload.
        pods: Vec<String>,
        /// The preview link (`[intercept.preview]`): its token is a
        /// secret; `null` without a preview.
        preview_url: Option<String>,
    },
    /// Where an intercept's preview link goes: the file's ingress, or the
    /// one detected (said before anything in the cluster changes).
    PreviewIngress {
        intercept: String,
        /// The Ingress it was detected from; `null`: from the file.
        ingress: Option<String>,
        /// The address connected to.
        host: String,
        port: u16,
        tls: bool,
        /// The name in the Host header, SNI and link, when not `host`.
        l5: Option<String>,
        /// Where the link lands.
        path: String,
    },
    /// `tpr preview rotate`: the intercept has a new preview link; the old
    /// one no longer routes here.
    PreviewRotated { name: String, preview_url: String },
    /// The `to_pod` ports of a workload listen on localhost.
    ToPodListening {
        #[serde(flatten)]
        workload: WorkloadRef,
        ports: Vec<u16>,
    },
    /// The pod's mounted files were copied (`TELEPRESENCE_ROOT`).
    VolumesCopied {
        intercept: String,
        dir: PathBuf,
        files: u64,
        bytes: u64,
        /// The mount paths copied.
        copied: Vec<String>,
        /// The mounts not copied: `<path> (<volume kind>)`.
        not_copied: Vec<String>,
    },
    /// An intercept's env file was (re)written, mode 0600.
    EnvWritten {
        intercept: String,
        file: PathBuf,
        /// How many variables it holds.
        variables: usize,
        /// Names left out: not expressible in the file's format.
        skipped: Vec<String>,
        format: String,
    },
    /// An intercept ended while `tpr up` runs.
    InterceptEnded {
        name: String,
        reason: EndReason,
        /// What happened in the cluster, for the cluster's reasons.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Processes that ran with its environment: they are restarted
        /// without it.
        processes: Vec<String>,
    },
    /// The file has no `[[process]]`: only the intercepts run.
    NoProcesses,
    /// A project file edit changed the intercepts.
    Reconciled,
    /// A project file edit could not be applied to the cluster; the
    /// intercepts stay as they were.
    ReconcileFailed { error: String },
    /// The session with an agent was lost; reconnecting.
    ConnectionLost {
        #[serde(flatten)]
        workload: WorkloadRef,
        pod: String,
        reason: String,
    },
    /// Another pod of the workload routes here now (scale-up, rollout,
    /// eviction, restart).
    PodJoined {
        #[serde(flatten)]
        workload: WorkloadRef,
        pod: String,
        /// How many pods route here now.
        pods: usize,
    },
    /// A pod stopped routing here (scaled down, replaced, its session lost);
    /// the others still do.
    PodLeft {
        #[serde(flatten)]
        workload: WorkloadRef,
        pod: String,
        reason: String,
        pods: usize,
    },
    /// A ready pod could not be connected; it is tried again.
    PodPending {
        #[serde(flatten)]
        workload: WorkloadRef,
        pod: String,
        error: String,
    },
    /// Someone else changed the workload's template so that it no longer
    /// carries the agent as installed; tpr re-applies it on their template.
    TemplateDrift {
        #[serde(flatten)]
        workload: WorkloadRef,
        change: String,
    },
    /// Still reconnecting (every 5 s).
    Reconnecting {
        #[serde(flatten)]
        workload: WorkloadRef,
        seconds: u64,
        error: String,
    },
    /// The session is back, with its intercepts.
    ConnectionRestored {
        #[serde(flatten)]
        workload: WorkloadRef,
        pod: String,
        intercepts: usize,
    },
    /// Nothing answers on this machine for an intercept: its requests get
    /// 502 until something does.
    LocalUnreachable {
        intercept: String,
        target: String,
        error: String,
    },
    /// The local target of an intercept answers again.
    LocalReachable { intercept: String, target: String },
    /// The agent's note on an intercept (e.g. TLS passed through).
    AgentNotice { intercept: String, message: String },
    /// The outbound namespace of an intercept is made: its processes (and
    /// `tpr exec`) reach the cluster through it. `mode`: `namespace` (made
    /// as root) or `user_namespace` (without root).
    OutboundReady {
        intercept: String,
        mode: crate::outbound::Mode,
    },
    /// A connection or DNS query of a process in an outbound namespace
    /// failed (`destination` is `ip:port`, `udp ip:port` or `dns <name>`).
    OutboundFailed {
        intercept: String,
        destination: String,
        reason: String,
    },
    /// A problem that does not stop `tpr up`.
    Warning { message: String },
    /// A problem that stops `tpr up` (exit status non-zero).
    Error {
        message: String,
        help: Option<String>,
        /// An invalid project file: each problem, where it is.
        problems: Vec<FileProblem>,
    },
    /// `tpr up` ended, with this exit status.
    Stopped { exit_code: i32 },
    /// Something about a local process: `process_started`, `restarting`,
    /// `process_exited`, ... (see [`SessionEvent`]). Last: serde wants the
    /// untagged variant there; the inner enum writes its own `event`.
    #[serde(untagged)]
    Process(SessionEvent),
}

/// A workload as events name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadRef {
    /// Its name.
    pub workload: String,
    /// Deployment, ReplicaSet or StatefulSet.
    pub kind: String,
    pub namespace: String,
}

impl WorkloadRef {
    pub fn of(w: &Workload) -> Self {
        WorkloadRef {
            workload: w.name().to_owned(),
            kind: w.kind().kind().to_owned(),
            namespace: w.metadata().namespace.clone().unwrap_or_default(),
        }
    }

    /// `deployment/hello`, as kubectl writes it.
    fn display(&self) -> String {
        format!("{}/{}", self.kind.to_lowercase(), self.workload)
    }
}

/// One port of an intercept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterceptPort {
    /// The port on this machine the traffic goes to.
    pub local: u16,
    /// The Service port (name or number) it comes from.
    pub service_port: String,
}

/// An http condition: the header's value matches the regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderRule {
    pub header: String,
    pub regex: String,
}

/// One problem of an invalid project file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

/// Why an intercept ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// It left the project file (or changed, and is registered again).
    LeftFile,
    /// `tpr leave`.
    Leave,
    /// The workload was deleted.
    WorkloadDeleted,
    /// Its Service or Service port is gone, or now targets another port
    /// (then it is registered again for that port).
    ServiceChanged,
    /// The agent could not be put back after someone changed the template.
    AgentLost,
}

/// Where a human line goes.
enum Human {
    Out(String),
    Err(String),
}

impl UpEvent {
    /// The line(s) a person sees, as `tpr up` has always printed them.
    fn human(&self) -> Option<Human> {
        use Human::{Err, Out};
        Some(match self {
            // A person learns these from what follows.
            UpEvent::Validated { .. } | UpEvent::Connected { .. } => return None,
            UpEvent::Reconciled => Err("intercepts reconciled with the project file".into()),
            UpEvent::StaleSession { pid } => Err(format!(
                "the previous tpr up (pid {pid}) ended without cleaning up; its intercepts ended with its session"
            )),
            UpEvent::Installing { workload } => {
                Out(format!("Using {} {}\n", workload.kind, workload.workload))
            }
            UpEvent::Progress { message } => Err(message.clone()),
            UpEvent::Installed { workload, seconds } => Err(format!(
                "installed the traffic agent in {} ({seconds:.1} s)",
                workload.display()
            )),
            UpEvent::InterceptActive { .. } => Out(self.active_block()),
            UpEvent::PreviewIngress {
                intercept,
                ingress,
                host,
                port,
                tls,
                l5,
                ..
            } => {
                let scheme = if *tls { "https" } else { "http" };
                let name = l5.as_deref().unwrap_or(host);
                let from = match ingress {
                    Some(i) => format!("detected ingress/{i}"),
                    None => "[intercept.preview.ingress]".to_owned(),
                };
                let via = if l5.is_some() {
                    format!(" through {host}:{port}")
                } else {
                    String::new()
                };
                let clear = if *tls {
                    ""
                } else {
                    "; plain http: the link's token crosses the network unencrypted"
                };
                Err(format!(
                    "preview of intercept {intercept}: {scheme}://{name}{via} ({from}){clear}"
                ))
            }
            UpEvent::PreviewRotated { name, preview_url } => Out(format!(
                "intercept {name}: new preview URL (the old one no longer routes here)\n    Preview URL            : {preview_url}\n"
            )),
            UpEvent::ToPodListening { workload, ports } => Err(format!(
                "to_pod: localhost:{} reach the pods of {}",
                join(ports),
                workload.display()
            )),
            UpEvent::VolumesCopied {
                intercept,
                dir,
                files,
                bytes,
                copied,
                not_copied,
            } => {
                let mut text = format!(
                    "copied {files} files ({bytes} bytes) of intercept {intercept}'s mounts {} to {} (a read-only copy: TELEPRESENCE_ROOT)",
                    if copied.is_empty() {
                        "(none)".to_owned()
                    } else {
                        copied.join(", ")
                    },
                    dir.display()
                );
                if !not_copied.is_empty() {
                    let _ = write!(
                        text,
                        "; not copied: {} (name them in [intercept.volumes] include)",
                        not_copied.join(", ")
                    );
                }
                Err(text)
            }
            UpEvent::EnvWritten {
                intercept,
                file,
                variables,
                skipped,
                format,
            } => {
                let mut text = format!(
                    "wrote {variables} variables of intercept {intercept} to {}",
                    file.display()
                );
                if !skipped.is_empty() {
                    let _ = write!(
                        text,
                        " (left out {}: not expressible in {format} format)",
                        skipped.join(", ")
                    );
                }
                Err(text)
            }
            UpEvent::InterceptEnded {
                name,
                processes,
                detail,
                ..
            } => {
                let mut text = match detail {
                    Some(why) => format!("ended intercept {name}: {why}\n"),
                    None => format!("ended intercept {name}\n"),
                };
                if !processes.is_empty() {
                    let _ = writeln!(
                        text,
                        "restarting {} without the environment of intercept {name}",
                        processes.join(", ")
                    );
                }
                Out(text)
            }
            UpEvent::NoProcesses => Out(
                "no [[process]] in the file: intercepts stay until Ctrl-C or `tpr down`\n".into(),
            ),
            UpEvent::Process(e) => Err(e.to_string()),
            UpEvent::ReconcileFailed { error } => Err(format!(
                "the project file change was not applied to the cluster: {error}"
            )),
            UpEvent::ConnectionLost { pod, reason, .. } => Err(format!(
                "lost connection to agent in pod {pod} ({reason}); reconnecting"
            )),
            UpEvent::Reconnecting {
                workload,
                seconds,
                error,
            } => Err(format!(
                "still reconnecting to {} ({seconds} s): {error}",
                workload.display()
            )),
            UpEvent::ConnectionRestored {
                workload,
                pod,
                intercepts,
            } => Err(format!(
                "restored {intercepts} intercept(s) of {} through pod {pod}",
                workload.display()
            )),
            UpEvent::PodJoined {
                workload,
                pod,
                pods,
            } => Err(format!(
                "pod {pod} of {} routes here too ({})",
                workload.display(),
                pods_route(*pods)
            )),
            UpEvent::PodLeft {
                workload,
                pod,
                reason,
                pods,
            } => Err(format!(
                "pod {pod} of {} left ({reason}); {} here",
                workload.display(),
                pods_route(*pods)
            )),
            UpEvent::PodPending {
                workload,
                pod,
                error,
            } => Err(format!(
                "pod {pod} of {} is ready but not routing here yet: {error}; retrying",
                workload.display()
            )),
            UpEvent::TemplateDrift { workload, change } => Err(format!(
                "{} was changed by someone else ({change}): re-applying the agent on top of their template",
                workload.display()
            )),
            UpEvent::LocalUnreachable {
                intercept, target, ..
            } => Err(format!(
                "intercept {intercept}: nothing answers on {target}; intercepted requests get 502 until it does"
            )),
            UpEvent::LocalReachable { intercept, target } => {
                Err(format!("intercept {intercept}: {target} answers again"))
            }
            UpEvent::AgentNotice { intercept, message } => {
                Err(format!("intercept {intercept}: {message}"))
            }
            UpEvent::OutboundReady { intercept, mode } => Err(format!(
                "outbound namespace of intercept {intercept} ready ({})",
                mode.describe()
            )),
            UpEvent::OutboundFailed {
                intercept,
                destination,
                reason,
            } => Err(format!(
                "outbound via intercept {intercept}: {destination}: {reason}"
            )),
            UpEvent::Warning { message } => Err(message.clone()),
            // The error itself is rendered as a diagnostic by `main`.
            UpEvent::Error { .. } | UpEvent::Stopped { .. } => return None,
        })
    }

    /// The block Telepresence prints for an active intercept.
    fn active_block(&self) -> String {
        let UpEvent::InterceptActive {
            name,
            workload,
            mechanism,
            ports,
            headers,
            path_prefix,
            pods,
            preview_url,
        } = self
        else {
            return String::new();
        };
        let intercepting = if *mechanism == "tcp" {
            "all TCP connections".to_owned()
        } else {
            let mut out = "HTTP requests that match all of:".to_owned();
            for h in headers {
                let _ = write!(
                    out,
                    "\n      header(\"{}\") ~= regexp(\"{}\")",
                    h.header, h.regex
                );
            }
            if let Some(prefix) = path_prefix {
                let _ = write!(out, "\n      path starts with \"{prefix}\"");
            }
            out
        };
        let destinations: Vec<String> = ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.local))
            .collect();
        let ids: Vec<&str> = ports.iter().map(|p| p.service_port.as_str()).collect();
        let preview = preview_url
            .as_ref()
            .map(|u| format!("    Preview URL            : {u}\n"))
            .unwrap_or_default();
        format!(
            "intercepted\n    Intercept name         : {name}\n    State                  : ACTIVE\n    Workload kind          : {}\n    Destination            : {}\n    Service Port Identifier: {}\n    Pods                   : {}\n    Intercepting           : {intercepting}\n{preview}",
            workload.kind,
            destinations.join(", "),
            ids.join(", "),
            pods.join(", "),
        )
    }

    /// The JSON line (without the newline).
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }

    /// The event for an error that stops `tpr up`.
    /// The message is the error and its causes, each once.
    pub fn error(report: &miette::Report) -> Self {
        let mut message = report.to_string();
        for cause in crate::report::new_causes(report.as_ref()) {
            message.push_str(": ");
            message.push_str(&cause);
        }
        let problems = crate::report::invalid(report)
            .map(|invalid| {
                invalid
                    .problems
                    .iter()
                    .map(|p| FileProblem {
                        file: p.file.clone(),
                        line: p.line,
                        column: p.column,
                        message: p.to_string(),
                        help: p.help_text().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
        UpEvent::Error {
            message,
            help: report.help().map(|h| h.to_string()),
            problems,
        }
    }
}

/// "1 pod routes", "3 pods route".
fn pods_route(n: usize) -> String {
    if n == 1 {
        "1 pod routes".into()
    } else {
        format!("{n} pods route")
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Where events go: people or programs. Cheap to copy into every task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Events {
    /// Lines for a person (results on stdout, the rest on stderr).
    #[default]
    Human,
    /// One JSON object per line on stdout, nothing else there.
    Json,
}

impl Events {
    pub fn emit(self, event: UpEvent) {
        match self {
            Events::Json => {
                let mut line = event.json();
                line.push('\n');
                write_stdout(&line);
            }
            Events::Human => match event.human() {
                Some(Human::Out(text)) => write_stdout(&text),
                Some(Human::Err(text)) => eprintln!("tpr: {text}"),
                None => {}
            },
        }
    }

    /// Whether the output is for programs.
    pub fn is_json(self) -> bool {
        self == Events::Json
    }
}

/// One write per text: lines from several tasks never mix.
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests;
